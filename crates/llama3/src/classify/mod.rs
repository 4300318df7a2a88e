//! Sequence classification as HF `LlamaForSequenceClassification`: the decoder's final hidden
//! state at each row's last non-pad token, through a bias-free `score` head (labels, D).
//! Loads and saves HF directories (`score.weight`, `id2label`/`label2id`, `pad_token_id`);
//! [`predict`] labels texts with one.

mod predict;

pub use predict::{argmax, encode, PredictOptions, Prediction};

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::loader::{load, LoadOptions};
use crate::model::{Linear, Llama};
use crate::peft::Adapter;
use crate::tokenizer::Tokenizer;
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::WeightSource;
use crate::{Error, Result};

pub const ARCHITECTURE: &str = "LlamaForSequenceClassification";

pub struct Classifier {
    pub model: Llama,
    /// (L, D), no bias.
    pub score: Linear,
    /// Label names by index (`id2label`).
    pub labels: Vec<String>,
    /// Rows are right-padded with this id; the last other token is pooled.
    pub pad_token_id: u32,
}

impl Classifier {
    /// Loads an HF `LlamaForSequenceClassification` directory.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<(Self, Option<Tokenizer>)> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let j: Json =
            serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        let labels = labels_of(&j).map_err(|m| Error::format(&cfg_path, m))?;
        let loaded = load(dir, opts)?;
        let d = loaded.model.config.hidden_size;
        let src = SafetensorsSource::open_dir(dir, opts.dtype, &opts.device)?;
        if !src.contains("score.weight") {
            return Err(Error::MissingTensor {
                name: "score.weight".into(),
                file: dir.to_path_buf(),
            });
        }
        let score = Linear::new(src.get("score.weight", &[labels.len(), d])?);
        let pad_token_id = match j.get("pad_token_id").and_then(Json::as_u64) {
            Some(p) => p as u32,
            None => default_pad(&loaded.model, loaded.tokenizer.as_ref()),
        };
        Ok((
            Self {
                model: loaded.model,
                score,
                labels,
                pad_token_id,
            },
            loaded.tokenizer,
        ))
    }

    /// A classifier from a causal LM and a PEFT sequence-classification adapter (`task_type`
    /// `SEQ_CLS`): its LoRA applied to `model`, its head the `score` (or `classifier`) weight
    /// PEFT saved whole (`modules_to_save`). An adapter has no label names: `labels`, else
    /// HF's `LABEL_i`. The pad id is the base config's (as HF's classifier inherits it), else
    /// the tokenizer's, else EOS ([`default_pad`]).
    pub fn with_adapter(
        mut model: Llama,
        tokenizer: Option<&Tokenizer>,
        adapter: &Adapter,
        labels: Option<Vec<String>>,
    ) -> Result<Self> {
        let d = model.config.hidden_size;
        let head = ["score.weight", "classifier.weight"]
            .iter()
            .find_map(|n| adapter.saved.get(*n))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no classification head (score.weight in modules_to_save): not a \
                     sequence-classification (SEQ_CLS) adapter",
                    adapter.path.display()
                ))
            })?;
        let (l, hd) = head.dims2()?;
        if hd != d || l == 0 {
            return Err(Error::Shape {
                name: "score.weight".into(),
                file: adapter.path.join(crate::peft::WEIGHTS_FILE),
                got: head.dims().to_vec(),
                expected: vec![l.max(1), d],
            });
        }
        let labels = match labels {
            Some(v) if v.len() != l => {
                return Err(Error::Input(format!(
                    "{} label names for a head of {l} labels",
                    v.len()
                )))
            }
            Some(v) => v,
            None => (0..l).map(|i| format!("LABEL_{i}")).collect(),
        };
        adapter.apply_lora(&mut model, 1.0)?;
        let score = head.to_device(model.device())?.to_dtype(model.dtype())?;
        let pad_token_id = default_pad(&model, tokenizer);
        Ok(Self {
            model,
            score: Linear::new(crate::weights::Weight::Dense(score)),
            labels,
            pad_token_id,
        })
    }

    /// (B, T) u32 right-padded ids -> (B, L) logits at each row's last non-pad token (HF:
    /// `(arange(T) * (ids != pad)).argmax(-1)`; a row of pads pools position 0).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let logits = self.score.forward(&self.pooled(ids)?)?; // (B, L)
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// (B, T) u32 right-padded ids -> (B, D) final hidden state at each row's last non-pad
    /// token: what the head reads.
    pub fn pooled(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let rows: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let last: Vec<u32> = rows
            .chunks(t)
            .enumerate()
            .map(|(r, row)| {
                let l = row
                    .iter()
                    .rposition(|&i| i != self.pad_token_id)
                    .unwrap_or(0);
                (r * t + l) as u32
            })
            .collect();
        let hidden = self.model.forward_hidden(ids, None)?; // (B, T, D)
        let idx = Tensor::from_vec(last, b, hidden.device())?;
        Ok(hidden.reshape((b * t, ()))?.index_select(&idx, 0)?) // (B, D)
    }

    /// Right-pads token id rows into a (B, T) batch on `device`.
    pub fn batch(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(rows.len() * t);
        for r in rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(self.pad_token_id, t - r.len()));
        }
        Ok(Tensor::from_vec(flat, (rows.len(), t), device)?)
    }
}

/// `id2label` as a list (indices 0..L), or `num_labels` generic names.
fn labels_of(j: &Json) -> std::result::Result<Vec<String>, String> {
    if let Some(map) = j.get("id2label").and_then(Json::as_object) {
        let mut labels = vec![None; map.len()];
        for (k, v) in map {
            let i: usize = k
                .parse()
                .map_err(|_| format!("id2label key {k:?} is not an index"))?;
            let slot = labels
                .get_mut(i)
                .ok_or_else(|| format!("id2label index {i} out of range"))?;
            *slot = Some(v.as_str().unwrap_or_default().to_string());
        }
        return labels
            .into_iter()
            .map(|l| l.ok_or_else(|| "id2label has gaps".to_string()))
            .collect();
    }
    match j.get("num_labels").and_then(Json::as_u64) {
        Some(n) => Ok((0..n).map(|i| format!("LABEL_{i}")).collect()),
        None => Err(format!(
            "no id2label or num_labels: not a {ARCHITECTURE} config"
        )),
    }
}

/// The pad id when the classifier's config has none: the model config's (HF
/// `pad_token_id`), the tokenizer's pad, else EOS (what HF users set).
pub fn default_pad(model: &Llama, tok: Option<&Tokenizer>) -> u32 {
    model
        .config
        .pad_token_id
        .or_else(|| tok.and_then(|t| t.pad_id().or(t.eos_id())))
        .or(model.config.eos_token_ids.first().copied())
        .unwrap_or(0)
}
