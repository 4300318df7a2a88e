//! Embeddings: one vector per text from the final hidden states (after the last norm, before
//! the LM head), pooled over the positions as llama.cpp's `--pooling` does: the mean, the
//! last token's, or the first token's (`cls`). L2-normalized unless asked not to be.
//!
//! Each input runs alone through the model (its own cache, prompt chunks as in generation), so
//! a batch gives exactly the vectors one text at a time gives.

use candle_core::{DType, Tensor};

use crate::model::Llama;
use crate::{Error, Result};

/// How positions' hidden states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    /// The last token's state (decoder embedding models: e5-mistral, gte-Qwen...).
    Last,
    /// The first token's state.
    Cls,
}

impl Pooling {
    /// GGUF `{arch}.pooling_type` (llama.cpp's `llama_pooling_type`): 1 mean, 2 cls, 3 last;
    /// none or rank are no pooling we offer.
    pub fn from_gguf(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Mean),
            2 => Some(Self::Cls),
            3 => Some(Self::Last),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Last => "last",
            Self::Cls => "cls",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "last" => Ok(Self::Last),
            "cls" => Ok(Self::Cls),
            _ => Err(Error::Input(format!(
                "pooling {s:?}: expected mean, last or cls"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EmbedOptions {
    pub pooling: Pooling,
    /// Scale each vector to unit L2 norm.
    pub normalize: bool,
    /// Cut inputs longer than the context to its length instead of refusing them.
    pub truncate: bool,
    /// Positions per forward.
    pub chunk: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: true,
            truncate: false,
            chunk: 512,
        }
    }
}

/// The vector (D) of one tokenized input.
pub fn embed(model: &Llama, ids: &[u32], opts: &EmbedOptions) -> Result<Vec<f32>> {
    let ctx = model.config.max_position_embeddings;
    if ids.is_empty() {
        return Err(Error::Input("an input has no tokens".into()));
    }
    let ids = match (ids.len() > ctx, opts.truncate) {
        (false, _) => ids,
        (true, true) => &ids[..ctx],
        (true, false) => {
            return Err(Error::Input(format!(
                "an input of {} tokens is longer than the model's context of {ctx} tokens; \
                 shorten it or ask for truncation",
                ids.len()
            )))
        }
    };
    let mut cache = model.new_cache(1, ids.len())?;
    let d = model.config.hidden_size;
    let mut sum = vec![0f32; d];
    let mut first = None;
    let mut last = None;
    for part in ids.chunks(opts.chunk.max(1)) {
        let x = Tensor::new(part, model.device())?.unsqueeze(0)?; // (1, t)
        let h = model.forward_hidden(&x, Some(&mut cache))?.squeeze(0)?; // (t, D)
        let h = h.to_dtype(DType::F32)?;
        if first.is_none() {
            first = Some(h.get(0)?.to_vec1::<f32>()?);
        }
        last = Some(h.get(part.len() - 1)?.to_vec1::<f32>()?);
        if opts.pooling == Pooling::Mean {
            for (s, v) in sum.iter_mut().zip(h.sum(0)?.to_vec1::<f32>()?) {
                *s += v;
            }
        }
    }
    let mut v = match opts.pooling {
        Pooling::Mean => sum.into_iter().map(|s| s / ids.len() as f32).collect(),
        Pooling::Last => last.unwrap_or_default(),
        Pooling::Cls => first.unwrap_or_default(),
    };
    if opts.normalize {
        normalize(&mut v);
    }
    Ok(v)
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// OpenAI's `dimensions`: the first `n` components, renormalized (what Matryoshka-trained
/// models are made for; for others a plain cut). `n` larger than the vector is an error.
pub fn shorten(v: &mut Vec<f32>, n: usize, renormalize: bool) -> Result<()> {
    if n == 0 || n > v.len() {
        return Err(Error::Input(format!(
            "dimensions must be 1..={}, got {n}",
            v.len()
        )));
    }
    v.truncate(n);
    if renormalize {
        normalize(v);
    }
    Ok(())
}
