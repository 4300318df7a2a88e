//! `LlamaConfig`: the shape of a Llama-family decoder, read from an HF `config.json`
//! (both the classic `rope_theta` + `rope_scaling` keys and transformers 5's `rope_parameters`)
//! or from GGUF metadata (`llama.*` keys).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::{Error, Result};

/// RoPE frequency scaling, as HF `rope_scaling.rope_type` names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF `linear`, GGUF `rope.scaling.type = linear`).
    Linear { factor: f64 },
    /// Llama 3.1+ frequency-dependent scaling (HF `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// HF `pad_token_id`, GGUF `tokenizer.ggml.padding_token_id`.
    pub pad_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_json(&json).map_err(|e| match e {
            Error::Config(msg) => Error::format(path, msg),
            e => e,
        })
    }

    pub fn from_hf_json(j: &Json) -> Result<Self> {
        let model_type = j.get("model_type").and_then(Json::as_str).unwrap_or("");
        let archs: Vec<&str> = j
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let llama_arch = archs.iter().any(|a| a.starts_with("Llama"));
        if model_type != "llama" && !llama_arch {
            return Err(Error::Unsupported(format!(
                "architecture model_type={model_type:?} architectures={archs:?}: only Llama-family decoders (model_type \"llama\") are supported"
            )));
        }
        if let Some(act) = j.get("hidden_act").and_then(Json::as_str) {
            if act != "silu" {
                return Err(Error::Unsupported(format!(
                    "hidden_act {act:?} (only silu)"
                )));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if j.get(key).and_then(Json::as_bool) == Some(true) {
                return Err(Error::Unsupported(format!("{key} = true")));
            }
        }
        let req = |k: &str| -> Result<usize> {
            j.get(k)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("missing or non-integer {k:?}")))
        };
        let hidden_size = req("hidden_size")?;
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads = req("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = match j.get("head_dim").and_then(Json::as_u64) {
            Some(d) => d as usize,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        // transformers 5 moves rope_theta and rope_scaling into `rope_parameters`.
        let rope = j.get("rope_parameters").or_else(|| j.get("rope_scaling"));
        let rope_theta = j
            .get("rope_theta")
            .and_then(Json::as_f64)
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Json::as_f64)
            })
            .unwrap_or(10000.0);
        let rope_scaling = match rope.filter(|r| !r.is_null()) {
            Some(r) => parse_rope_scaling(r)?,
            None => None,
        };
        let eos_token_ids = match j.get("eos_token_id") {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => vec![],
        };
        let cfg = LlamaConfig {
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: req("max_position_embeddings").unwrap_or(2048),
            rms_norm_eps: j.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: j
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            bos_token_id: j
                .get("bos_token_id")
                .and_then(Json::as_u64)
                .map(|v| v as u32),
            eos_token_ids,
            pad_token_id: j
                .get("pad_token_id")
                .and_then(Json::as_u64)
                .map(|v| v as u32),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `llama.*` GGUF metadata (llama.cpp's `LLM_KV_*` keys).
    pub fn from_gguf(md: &HashMap<String, Value>) -> Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(Error::Unsupported(format!(
                "GGUF architecture {arch:?}: only \"llama\" is supported"
            )));
        }
        let get = |k: &str| md.get(&format!("llama.{k}"));
        let int = |k: &str| -> Result<usize> {
            get(k)
                .and_then(gguf_int)
                .ok_or_else(|| Error::Config(format!("missing GGUF key llama.{k}")))
        };
        let float = |k: &str| get(k).and_then(gguf_float);
        let hidden_size = int("embedding_length")?;
        let num_attention_heads = int("attention.head_count")?;
        let num_key_value_heads = int("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = int("attention.key_length")
            .or_else(|_| int("rope.dimension_count"))
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let vocab_size = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => match md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => return Err(Error::Config("missing GGUF key llama.vocab_size".into())),
            },
        };
        let rope_scaling = match get("rope.scaling.type").and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => Some(RopeScaling::Linear {
                factor: float("rope.scaling.factor").unwrap_or(1.0),
            }),
            Some(t) if t == "none" => None,
            Some(t) => {
                return Err(Error::Unsupported(format!(
                    "GGUF llama.rope.scaling.type {t:?}"
                )))
            }
            None => None,
        };
        let tok_u32 = |k: &str| md.get(k).and_then(gguf_int).map(|v| v as u32);
        let eos_token_ids = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| tok_u32(k))
            .collect();
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            // Decided by the loader: GGUF has no key, a missing `output.weight` means tied.
            tie_word_embeddings: false,
            bos_token_id: tok_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            pad_token_id: tok_u32("tokenizer.ggml.padding_token_id"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Query heads per KV head (`G`).
    pub fn n_rep(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (d, f, dh) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = d * self.num_attention_heads * dh * 2 + d * self.num_key_value_heads * dh * 2;
        let layer = attn + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("num_attention_heads and num_key_value_heads must be > 0".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even and > 0", self.head_dim));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        Ok(())
    }
}

fn parse_rope_scaling(r: &Json) -> Result<Option<RopeScaling>> {
    let ty = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let f = |k: &str| {
        r.get(k)
            .and_then(Json::as_f64)
            .ok_or_else(|| Error::Config(format!("rope scaling {ty:?} needs {k:?}")))
    };
    Ok(match ty {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: f("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
        }),
        other => return Err(Error::Unsupported(format!("rope scaling type {other:?}"))),
    })
}

pub(crate) fn gguf_int(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => Some(*x as usize),
        Value::I8(x) => usize::try_from(*x).ok(),
        Value::I16(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}

pub(crate) fn gguf_float(v: &Value) -> Option<f64> {
    match v {
        // Through the shortest decimal form: 1e-5f32 becomes 1e-5, not 9.99999974e-6.
        Value::F32(x) => x.to_string().parse().ok(),
        Value::F64(x) => Some(*x),
        v => gguf_int(v).map(|x| x as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rope_forms_parse_the_same() {
        let new: Json = serde_json::json!({"model_type":"llama","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":64,"rope_theta":500000.0}});
        let old: Json = serde_json::json!({"model_type":"llama","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_theta":500000.0,"rope_scaling":{"type":"llama3","factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":64}});
        let a = LlamaConfig::from_hf_json(&new).unwrap();
        let b = LlamaConfig::from_hf_json(&old).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.head_dim, 4);
        assert!(matches!(a.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    }

    #[test]
    fn unknown_architecture_is_an_error() {
        let j: Json = serde_json::json!({"model_type":"gpt2","architectures":["GPT2LMHeadModel"]});
        let e = LlamaConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("gpt2"), "{e}");
    }

    #[test]
    fn bad_head_counts_are_errors() {
        let j: Json = serde_json::json!({"model_type":"llama","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2});
        assert!(LlamaConfig::from_hf_json(&j).is_err());
    }
}
