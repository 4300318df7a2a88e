//! PEFT's prompt learning adapters: prompt tuning (`PROMPT_TUNING`) and prefix tuning
//! (`PREFIX_TUNING`) for causal LMs. A directory with `adapter_config.json` and
//! `adapter_model.safetensors` holding one tensor, `prompt_embeddings`: (N, D) input
//! embeddings, or (N, L*2*Hkv*Dh) keys and values (what PEFT saves, a `prefix_projection`
//! encoder's output included). On the model they are [`Virtual`] tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{CONFIG_FILE, WEIGHTS_FILE};
use crate::model::{Llama, Virtual};
use crate::{Error, Result};

/// PEFT's name of the one tensor.
const TENSOR: &str = "prompt_embeddings";

/// Which prompt-learning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    Prompt,
    Prefix,
}

impl PromptKind {
    fn peft_type(self) -> &'static str {
        match self {
            PromptKind::Prompt => "PROMPT_TUNING",
            PromptKind::Prefix => "PREFIX_TUNING",
        }
    }
}

/// The fields of PEFT's `PromptTuningConfig` / `PrefixTuningConfig` read and written here;
/// others are kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromptConfig {
    pub peft_type: String,
    pub num_virtual_tokens: usize,
    /// D (prompt tuning), or Hkv*Dh (prefix tuning, PEFT's grouped-query layout).
    pub token_dim: usize,
    #[serde(default = "one")]
    pub num_transformer_submodules: usize,
    /// H (prompt tuning), Hkv (prefix tuning).
    pub num_attention_heads: usize,
    pub num_layers: usize,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn one() -> usize {
    1
}

impl PromptConfig {
    /// The config PEFT writes for `kind` with `n` virtual tokens on `model`.
    pub fn new(kind: PromptKind, n: usize, model: &Llama) -> Self {
        let c = &model.config;
        let (token_dim, heads) = match kind {
            PromptKind::Prompt => (c.hidden_size, c.num_attention_heads),
            PromptKind::Prefix => (c.num_key_value_heads * c.head_dim, c.num_key_value_heads),
        };
        let mut other = BTreeMap::new();
        other.insert("task_type".into(), "CAUSAL_LM".into());
        other.insert("inference_mode".into(), true.into());
        match kind {
            PromptKind::Prompt => {
                other.insert("prompt_tuning_init".into(), "SAMPLE_VOCAB".into());
            }
            PromptKind::Prefix => {
                other.insert("prefix_projection".into(), false.into());
                other.insert("encoder_hidden_size".into(), token_dim.into());
            }
        }
        Self {
            peft_type: kind.peft_type().into(),
            num_virtual_tokens: n,
            token_dim,
            num_transformer_submodules: 1,
            num_attention_heads: heads,
            num_layers: c.num_hidden_layers,
            other,
        }
    }

    pub fn kind(&self) -> Option<PromptKind> {
        match self.peft_type.as_str() {
            "PROMPT_TUNING" => Some(PromptKind::Prompt),
            "PREFIX_TUNING" => Some(PromptKind::Prefix),
            _ => None,
        }
    }
}

/// A prompt- or prefix-tuning adapter read from disk.
pub struct PromptAdapter {
    pub config: PromptConfig,
    pub kind: PromptKind,
    /// (N, token_dim) or (N, L*2*token_dim).
    pub embeddings: Tensor,
    pub path: PathBuf,
}

impl PromptAdapter {
    /// Reads `dir` (its config already parsed as `config`).
    pub fn load(dir: &Path, config: PromptConfig, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let bad = |m: String| Err(Error::Unsupported(format!("{}: {m}", cfg_path.display())));
        let Some(kind) = config.kind() else {
            return bad(format!(
                "peft_type {} is not prompt learning",
                config.peft_type
            ));
        };
        if let Some(t) = config.other.get("task_type").and_then(|t| t.as_str()) {
            if t != "CAUSAL_LM" {
                return bad(format!("task_type {t}: only CAUSAL_LM prompt learning"));
            }
        }
        if config.num_transformer_submodules != 1 {
            return bad("num_transformer_submodules != 1 (encoder-decoder models)".into());
        }
        let file = dir.join(WEIGHTS_FILE);
        if !file.exists() {
            return Err(Error::io(&file, std::io::ErrorKind::NotFound.into()));
        }
        let mut tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| Error::format(&file, crate::error::candle_message(&e)))?;
        let embeddings = tensors
            .remove(TENSOR)
            .ok_or_else(|| Error::format(&file, format!("no {TENSOR} tensor")))?
            .to_dtype(DType::F32)?;
        let width = match kind {
            PromptKind::Prompt => config.token_dim,
            PromptKind::Prefix => config.num_layers * 2 * config.token_dim,
        };
        if embeddings.dims() != [config.num_virtual_tokens, width] {
            return Err(Error::format(
                &file,
                format!(
                    "{TENSOR} is {:?}; the config says {} virtual tokens of width {width}",
                    embeddings.dims(),
                    config.num_virtual_tokens
                ),
            ));
        }
        Ok(Self {
            config,
            kind,
            embeddings,
            path: dir.to_path_buf(),
        })
    }

    /// Puts the virtual tokens on `model` (one prompt-learning adapter at a time).
    pub fn apply(&self, model: &mut Llama) -> Result<()> {
        if model.virtual_tokens.is_some() {
            return Err(Error::Input(format!(
                "{}: the model already has prompt- or prefix-tuning tokens (one such adapter \
                 at a time)",
                self.path.display()
            )));
        }
        let t = self.embeddings.to_device(model.device())?;
        let v = match self.kind {
            PromptKind::Prompt => Virtual::Prompt(t),
            PromptKind::Prefix => Virtual::Prefix(t),
        };
        v.check(model).map_err(|e| {
            Error::Input(format!(
                "{}: does not fit this model: {e}",
                self.path.display()
            ))
        })?;
        model.virtual_tokens = Some(v);
        Ok(())
    }
}

/// Fresh virtual tokens for training `kind` with `n` tokens, from `n` tokens of the
/// vocabulary drawn with `seed`: prompt tuning starts from their embeddings (PEFT's
/// `SAMPLE_VOCAB`), prefix tuning from their keys and values in every layer (a forward of
/// them: the real-word activations Li & Liang's prefix tuning starts from; PEFT's own
/// `nn.Embedding` default, N(0, 1), takes the model far from itself: on the default model a
/// held-out loss of 10.0 against 4.8 at step 0, measured).
pub fn add_virtual(model: &mut Llama, kind: PromptKind, n: usize, seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    if n == 0 {
        return Err(Error::Input(
            "--num-virtual-tokens must be at least 1".into(),
        ));
    }
    if model.virtual_tokens.is_some() {
        return Err(Error::Input("the model already has virtual tokens".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..model.config.vocab_size as u32))
        .collect();
    let t = match kind {
        PromptKind::Prompt => {
            let ids = Tensor::new(ids, model.device())?.unsqueeze(0)?;
            let rows = model.embed_tokens.forward(&ids)?; // (1, N, D)
            rows.squeeze(0)?.to_dtype(DType::F32)?
        }
        PromptKind::Prefix => {
            let mut cache = model.new_cache(1, n)?;
            model.forward_tokens(&ids, &mut cache, crate::model::Logits::Last)?;
            // Per layer (K, V) (1, Hkv, N, Dh) -> PEFT's (N, L*2*Hkv*Dh).
            let mut parts = Vec::new();
            for (k, v) in cache.read_span(0, n)? {
                for x in [k, v] {
                    parts.push(x.squeeze(0)?.transpose(0, 1)?.to_dtype(DType::F32)?);
                }
            }
            Tensor::stack(&parts, 1)?.reshape((n, ()))?
        }
    };
    let v = match kind {
        PromptKind::Prompt => Virtual::Prompt(t),
        PromptKind::Prefix => Virtual::Prefix(t),
    };
    v.check(model)?;
    model.virtual_tokens = Some(v);
    Ok(())
}

/// The virtual tokens as the one trainable `Var`, under PEFT's name (`prompt_embeddings`).
pub fn trainable_virtual(model: &mut Llama) -> Result<Vec<(String, candle_core::Var)>> {
    let v = model
        .virtual_tokens
        .as_mut()
        .ok_or_else(|| Error::Input("the model has no virtual tokens to train".into()))?;
    let var = candle_core::Var::from_tensor(v.tensor())?;
    *v.tensor_mut() = var.as_tensor().clone();
    Ok(vec![(TENSOR.to_string(), var)])
}

/// Writes the model's virtual tokens as a PEFT adapter directory.
pub fn save_virtual(model: &Llama, config: &PromptConfig, dir: &Path) -> Result<()> {
    let v = model
        .virtual_tokens
        .as_ref()
        .ok_or_else(|| Error::Input("the model has no virtual tokens to save".into()))?;
    crate::weights::atomic::create_dir_all(dir)?;
    let t = v.tensor().detach().to_dtype(DType::F32)?.contiguous()?;
    crate::weights::safetensors::save(&[(TENSOR.to_string(), t)], &dir.join(WEIGHTS_FILE))?;
    crate::weights::atomic::write_json(&dir.join(CONFIG_FILE), config)
}
