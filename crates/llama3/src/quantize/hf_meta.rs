//! GGUF metadata for an HF checkpoint, as llama.cpp's convert_hf_to_gguf.py writes it for
//! `LlamaForCausalLM` (`TextModel.set_gguf_parameters`, `LlamaModel.set_gguf_parameters`,
//! `LlamaModel.generate_extra_tensors`).

use candle_core::quantized::gguf_file::Value;

use crate::config::{LlamaConfig, RopeScaling};

/// `llama.*` hyperparameters. Llama 3 (`rope_type = "llama3"`) scaling is not a key: it goes
/// into the `rope_freqs.weight` tensor ([`llama3_rope_factors`]); linear scaling is.
pub fn llama_keys(c: &LlamaConfig) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.vocab_size", u(c.vocab_size)),
        ("llama.context_length", u(c.max_position_embeddings)),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.num_key_value_heads)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        // convert writes key/value_length only when config.json names head_dim; writing them
        // always says the same thing and keeps head_dim != D/H models right.
        ("llama.attention.key_length", u(c.head_dim)),
        ("llama.attention.value_length", u(c.head_dim)),
        ("llama.rope.dimension_count", u(c.head_dim)),
    ];
    if let Some(RopeScaling::Linear { factor }) = c.rope_scaling {
        md.push(("llama.rope.scaling.type", Value::String("linear".into())));
        md.push(("llama.rope.scaling.factor", Value::F32(factor as f32)));
    }
    md.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The Dh/2 divisors of `rope_freqs.weight` for Llama 3.1+ scaling, `None` for other
/// scalings. convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`, in f32 as torch does:
/// factor 1 above the high-frequency band, `factor` below the low one, and
/// `1 / ((1 - smooth) / factor + smooth)` between.
pub fn llama3_rope_factors(c: &LlamaConfig) -> Option<Vec<f32>> {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = c.rope_scaling
    else {
        return None;
    };
    let (factor, lo, hi) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
    );
    let old = original_max_position_embeddings as f32;
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    let dh = c.head_dim;
    let base = c.rope_theta as f32;
    Some(
        (0..dh / 2)
            .map(|i| {
                let freq = 1.0 / base.powf((2 * i) as f32 / dh as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rope: serde_json::Value) -> LlamaConfig {
        let mut j = serde_json::json!({"model_type":"llama","vocab_size":10,"hidden_size":64,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":4,
            "num_key_value_heads":2,"rope_theta":500000.0});
        j["rope_scaling"] = rope;
        LlamaConfig::from_hf_json(&j).unwrap()
    }

    #[test]
    fn linear_scaling_is_a_key_llama3_a_tensor() {
        let lin = cfg(serde_json::json!({"type":"linear","factor":4.0}));
        let md = llama_keys(&lin);
        assert!(md
            .iter()
            .any(|(k, v)| k == "llama.rope.scaling.type" && v.to_string().unwrap() == "linear"));
        assert!(llama3_rope_factors(&lin).is_none());

        let l3 = cfg(
            serde_json::json!({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}),
        );
        assert!(!llama_keys(&l3).iter().any(|(k, _)| k.contains("scaling")));
        let f = llama3_rope_factors(&l3).unwrap();
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0, "highest frequency is kept");
        assert_eq!(f[7], 8.0, "lowest frequency is divided by factor");
    }
}
