//! Writing a model as an HF directory that transformers and our loader read: config.json,
//! generation_config.json, model.safetensors (HF names, `format: pt`), tokenizer files. Every
//! file goes through [`atomic`](super::atomic).

use std::path::Path;

use serde_json::{json, Value};

use super::atomic;
use crate::config::RopeScaling;
use crate::tokenizer::Tokenizer;
use crate::{Error, Llama, LlamaConfig, Result};

/// HF `initializer_range`, the std of transformers' normal init; llama3-train initializes
/// new weights with it.
pub const INITIALIZER_RANGE: f64 = 0.02;

/// HF `LlamaConfig` JSON (transformers `config.json`) for `c`.
pub fn config_json(c: &LlamaConfig) -> Value {
    let eos: Value = match c.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let mut j = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": INITIALIZER_RANGE,
        "torch_dtype": "float32",
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
    });
    j["rope_scaling"] = match &c.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    j
}

/// Writes the weights under their HF names to `path` atomically.
pub fn save_weights(model: &Llama, path: &Path) -> Result<()> {
    let tensors = model.named_tensors()?;
    super::safetensors::save(&tensors, path)
}

/// The model directory: config, generation config, weights and, when given, tokenizer.
pub fn write_model_dir(dir: &Path, model: &Llama, tok: Option<&Tokenizer>) -> Result<()> {
    atomic::create_dir_all(dir)?;
    let c = &model.config;
    atomic::write_json(&dir.join("config.json"), &config_json(c))?;
    let gen = json!({
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
        "do_sample": false,
    });
    atomic::write_json(&dir.join("generation_config.json"), &gen)?;
    save_weights(model, &dir.join("model.safetensors"))?;
    if let Some(tok) = tok {
        write_tokenizer(dir, tok, c.max_position_embeddings)?;
    }
    Ok(())
}

/// `tokenizer.json` and the `tokenizer_config.json` keys our loader and transformers read.
pub fn write_tokenizer(dir: &Path, tok: &Tokenizer, max_len: usize) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let text = tok
        .inner()
        .to_string(false)
        .map_err(|e| Error::format(&path, format!("cannot serialize the tokenizer: {e}")))?;
    atomic::write_bytes(&path, text.as_bytes())?;
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "add_bos_token": tok.adds_bos(),
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
    });
    if let Some(t) = tok.chat_template() {
        cfg["chat_template"] = json!(t.source());
    }
    atomic::write_json(&dir.join("tokenizer_config.json"), &cfg)
}
