//! Model shapes for training from scratch. The vocabulary comes from the tokenizer.

use llama3::config::RopeScaling;
use llama3::LlamaConfig;

use crate::{Error, Result};

/// Preset names, for help and error messages.
pub const PRESETS: &[&str] = &["tiny", "15m", "smollm2-135m", "llama3.2-1b"];

/// The preset `name` with `vocab_size` tokens, positions for at least `seq_len`, and the
/// tokenizer's BOS/EOS ids.
pub fn preset(
    name: &str,
    vocab_size: usize,
    seq_len: usize,
    bos: Option<u32>,
    eos: Vec<u32>,
) -> Result<LlamaConfig> {
    // (D, F, layers, H, Hkv, rope_theta, max positions)
    let (d, f, l, h, hkv, theta, max_pos) = match name {
        // ~1M parameters beside the embedding.
        "tiny" => (64, 192, 2, 4, 2, 10000.0, 1024),
        // llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, hidden 768).
        "15m" => (288, 768, 6, 6, 6, 10000.0, 1024),
        // HuggingFaceTB/SmolLM2-135M config.json.
        "smollm2-135m" => (576, 1536, 30, 9, 3, 100000.0, 8192),
        // meta-llama/Llama-3.2-1B config.json.
        "llama3.2-1b" => (2048, 8192, 16, 32, 8, 500000.0, 131072),
        other => {
            return Err(Error::Input(format!(
                "unknown preset {other:?} (expected one of {}, or a model directory)",
                PRESETS.join(", ")
            )))
        }
    };
    let rope_scaling = (name == "llama3.2-1b").then_some(RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });
    Ok(LlamaConfig {
        vocab_size,
        hidden_size: d,
        intermediate_size: f,
        num_hidden_layers: l,
        num_attention_heads: h,
        num_key_value_heads: hkv,
        head_dim: d / h,
        max_position_embeddings: max_pos.max(seq_len),
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        rope_scaling,
        tie_word_embeddings: true,
        bos_token_id: bos,
        eos_token_ids: eos,
        pad_token_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_unknown_name() {
        let c = preset("15m", 32000, 256, Some(1), vec![2]).unwrap();
        // llama2.c reports 15M parameters for this shape with a 32000 vocab.
        assert_eq!(c.num_parameters() / 1_000_000, 15);
        let c = preset("smollm2-135m", 49152, 256, None, vec![0]).unwrap();
        assert_eq!(c.num_parameters() / 1_000_000, 134);
        let e = preset("huge", 10, 8, None, vec![]).unwrap_err().to_string();
        assert!(e.contains("tiny"), "{e}");
    }
}
