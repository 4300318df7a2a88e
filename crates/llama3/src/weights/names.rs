//! The one table between HF tensor names and GGUF tensor names (llama.cpp `LLM_TENSOR_NAMES`
//! for `LLM_ARCH_LLAMA`). GGUF names appear nowhere else.

/// Top-level tensors: (HF name, GGUF name).
const GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer tensors: (HF suffix after `model.layers.{i}.`, GGUF suffix after `blk.{i}.`).
const LAYER: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// GGUF-only tensor with Llama 3.1 RoPE frequency factors (`LLM_TENSOR_ROPE_FREQS`).
pub const GGUF_ROPE_FREQS: &str = "rope_freqs.weight";

/// HF name -> GGUF name, `None` for names outside the table.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, g) = LAYER.iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// GGUF name -> HF name, `None` for names outside the table.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL.iter().find(|(_, g)| *g == name) {
        return Some(h.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (h, _) = LAYER.iter().find(|(_, g)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{h}"))
}

/// Which rows of a Q or K projection GGUF stores permuted: llama.cpp's
/// `convert_hf_to_gguf.py::LlamaModel.permute` interleaves the two rotation halves of each head
/// so GGUF rows `2i, 2i+1` are HF rows `i, i + Dh/2`. Returns the head count for `name`
/// when it is a Q (`n_head`) or K (`n_head_kv`) projection.
pub fn rope_permuted_heads(hf_name: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
    if hf_name.ends_with("self_attn.q_proj.weight") {
        Some(n_head)
    } else if hf_name.ends_with("self_attn.k_proj.weight") {
        Some(n_head_kv)
    } else {
        None
    }
}

/// For each HF row, the GGUF row that holds it (`rows = n_head * Dh`).
pub fn gguf_rows_for_hf(rows: usize, n_head: usize) -> Vec<usize> {
    let dh = rows / n_head;
    let half = dh / 2;
    let mut map = vec![0; rows];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                map[h * dh + j * half + i] = h * dh + 2 * i + j;
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.17.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ] {
            let g = hf_to_gguf(n).unwrap();
            assert_eq!(gguf_to_hf(&g).unwrap(), n);
        }
        assert_eq!(
            hf_to_gguf("model.layers.2.self_attn.o_proj.weight").unwrap(),
            "blk.2.attn_output.weight"
        );
        assert!(hf_to_gguf("model.layers.x.mlp.up_proj.weight").is_none());
    }

    #[test]
    fn permutation_matches_convert_hf_to_gguf() {
        // numpy: w.reshape(n_head, 2, rows//n_head//2).swapaxes(1, 2).reshape(rows)
        // for rows=8, n_head=2 gives GGUF order [0,2,1,3,4,6,5,7] of HF rows.
        let gguf_holds_hf = [0, 2, 1, 3, 4, 6, 5, 7];
        let map = gguf_rows_for_hf(8, 2);
        for (g, &h) in gguf_holds_hf.iter().enumerate() {
            assert_eq!(map[h], g);
        }
    }
}
