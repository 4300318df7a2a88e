//! Which storage type each tensor gets, as llama.cpp's `src/llama-quant.cpp` decides it
//! (`tensor_allows_quantization`, `llama_tensor_get_type_impl`, `tensor_type_fallback`),
//! for the file types `llama3 quantize` offers and dense Llama models.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

pub use crate::weights::gguf::ggml_name;
use crate::{Error, Result};

/// A target file type. The K-quant names are llama-quantize's aliases: `q4_k` is `Q4_K_M`,
/// `q5_k` is `Q5_K_M` (tools/quantize/quantize.cpp: "alias for Q4_K_M").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The name `--type` takes.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "f32",
            QuantType::F16 => "f16",
            QuantType::BF16 => "bf16",
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q4K => "q4_k",
            QuantType::Q5K => "q5_k",
            QuantType::Q6K => "q6_k",
        }
    }

    /// The storage type of most 2-D tensors (llama-quant.cpp `default_type`).
    pub fn ggml(self) -> GgmlDType {
        match self {
            QuantType::F32 => GgmlDType::F32,
            QuantType::F16 => GgmlDType::F16,
            QuantType::BF16 => GgmlDType::BF16,
            QuantType::Q8_0 => GgmlDType::Q8_0,
            QuantType::Q4_0 => GgmlDType::Q4_0,
            QuantType::Q4_1 => GgmlDType::Q4_1,
            QuantType::Q5_0 => GgmlDType::Q5_0,
            QuantType::Q5_1 => GgmlDType::Q5_1,
            QuantType::Q4K => GgmlDType::Q4K,
            QuantType::Q5K => GgmlDType::Q5K,
            QuantType::Q6K => GgmlDType::Q6K,
        }
    }

    /// GGUF `general.file_type`: llama.h `llama_ftype` (`LLAMA_FTYPE_MOSTLY_*`).
    pub fn ftype(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 7,
            QuantType::Q5_0 => 8,
            QuantType::Q5_1 => 9,
            QuantType::Q4K => 15, // Q4_K_M
            QuantType::Q5K => 17, // Q5_K_M
            QuantType::Q6K => 18,
            QuantType::BF16 => 32,
        }
    }

    /// llama.cpp's name for the file type, for messages.
    pub fn llama_cpp_name(self) -> &'static str {
        match self {
            QuantType::Q4K => "Q4_K_M",
            QuantType::Q5K => "Q5_K_M",
            t => ggml_name(t.ggml()),
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "q4_k_m" => "q4_k",
            "q5_k_m" => "q5_k",
            s => s,
        };
        QuantType::ALL
            .into_iter()
            .find(|t| t.name() == alias)
            .ok_or_else(|| {
                let names: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
                Error::Input(format!(
                    "unknown quantization type {s:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// True for block-quantized types (ggml_is_quantized).
pub fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The model facts the policy depends on.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// No `output.weight`: `token_embd.weight` is also the LM head.
    pub tied: bool,
}

/// The type chosen for one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub target: GgmlDType,
    /// The type the mixture asked for when the row length forced another
    /// (`tensor_type_fallback`).
    pub wanted: Option<GgmlDType>,
}

/// llama-quant.cpp `use_more_bits`: the first and last eighth of the layers and every third
/// layer in between get more bits in the `_M` mixtures.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The storage type of GGUF tensor `name` with candle dims `dims` (rows last-but-one, the row
/// length `ne[0]` last).
pub fn choose(ty: QuantType, name: &str, dims: &[usize], m: &ModelShape) -> Choice {
    let plain = |target| Choice {
        target,
        wanted: None,
    };
    // tensor_allows_quantization: only 2-D+ `*weight` tensors, never norms. convert_hf_to_gguf
    // stores 1-D tensors (norms, rope_freqs) as F32 whatever the output type.
    if dims.len() < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return plain(GgmlDType::F32);
    }
    let default = ty.ggml();
    if !is_quantized(default) {
        return plain(default);
    }
    let cols = dims[dims.len() - 1];
    let mut t = default;
    let output = name == "output.weight" || (m.tied && name == "token_embd.weight");
    if output {
        // The LM head (or the embedding tied to it) gets Q6_K, or Q8_0 when rows do not fit
        // the default type's blocks.
        if !cols.is_multiple_of(default.block_size()) {
            t = GgmlDType::Q8_0;
        } else if default != GgmlDType::Q8_0 {
            t = GgmlDType::Q6K;
        }
    } else if let Some(i) = layer_of(name) {
        let m_mix = matches!(ty, QuantType::Q4K | QuantType::Q5K);
        if name.ends_with("attn_v.weight") {
            if m_mix && use_more_bits(i, m.n_layer) {
                t = GgmlDType::Q6K;
            }
            // LLM_TYPE_70B (80 layers with GQA): attn_v is 8x smaller than attn_q there.
            let is_70b = m.n_layer == 80 && m.n_head != m.n_head_kv;
            if is_70b && matches!(t, GgmlDType::Q3K | GgmlDType::Q4K) {
                t = GgmlDType::Q5K;
            }
        } else if name.ends_with("ffn_down.weight") && m_mix && use_more_bits(i, m.n_layer) {
            t = GgmlDType::Q6K;
        }
    }
    fallback(t, cols)
}

/// `tensor_type_fallback`: K-quants need rows that are whole 256-value blocks.
fn fallback(t: GgmlDType, cols: usize) -> Choice {
    if cols.is_multiple_of(t.block_size()) {
        return Choice {
            target: t,
            wanted: None,
        };
    }
    let mut used = match t {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if !cols.is_multiple_of(used.block_size()) {
        // "must use F16 due to unusual shape"
        used = GgmlDType::F16;
    }
    Choice {
        target: used,
        wanted: Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: ModelShape = ModelShape {
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        tied: true,
    };

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for t in QuantType::ALL {
            assert_eq!(t.name().parse::<QuantType>().unwrap(), t);
        }
        assert_eq!("Q4_K_M".parse::<QuantType>().unwrap(), QuantType::Q4K);
        let e = "q3_k".parse::<QuantType>().unwrap_err().to_string();
        assert!(e.contains("q3_k") && e.contains("q4_k"), "{e}");
    }

    #[test]
    fn smollm_q4_k_like_llama_quantize() {
        let c = |n: &str, d: &[usize]| choose(QuantType::Q4K, n, d, &SMOL);
        // 1-D and norms
        assert_eq!(c("blk.0.attn_norm.weight", &[576]).target, GgmlDType::F32);
        // tied embedding = output: 576 % 256 != 0 -> Q8_0, by policy not fallback
        let e = c("token_embd.weight", &[49152, 576]);
        assert_eq!((e.target, e.wanted), (GgmlDType::Q8_0, None));
        // 576-wide rows fall back
        let q = c("blk.5.attn_q.weight", &[576, 576]);
        assert_eq!(
            (q.target, q.wanted),
            (GgmlDType::Q5_0, Some(GgmlDType::Q4K))
        );
        // attn_v of a "more bits" layer wants Q6_K -> Q8_0
        let v = c("blk.0.attn_v.weight", &[192, 576]);
        assert_eq!(
            (v.target, v.wanted),
            (GgmlDType::Q8_0, Some(GgmlDType::Q6K))
        );
        // ffn_down rows are 1536 = 6 * 256: Q4_K, or Q6_K in "more bits" layers
        assert_eq!(
            c("blk.4.ffn_down.weight", &[576, 1536]).target,
            GgmlDType::Q4K
        );
        assert_eq!(
            c("blk.5.ffn_down.weight", &[576, 1536]).target,
            GgmlDType::Q6K
        );
        assert_eq!(
            c("blk.29.ffn_down.weight", &[576, 1536]).target,
            GgmlDType::Q6K
        );
    }

    #[test]
    fn legacy_types_and_float_types() {
        // Q4_0 output: Q6_K wanted, Q8_0 used (what made the default model's token_embd Q8_0).
        let e = choose(QuantType::Q4_1, "token_embd.weight", &[49152, 576], &SMOL);
        assert_eq!(
            (e.target, e.wanted),
            (GgmlDType::Q8_0, Some(GgmlDType::Q6K))
        );
        let untied = ModelShape {
            tied: false,
            ..SMOL
        };
        let e = choose(QuantType::Q4_1, "token_embd.weight", &[49152, 576], &untied);
        assert_eq!(e.target, GgmlDType::Q4_1);
        let o = choose(QuantType::Q8_0, "output.weight", &[49152, 576], &untied);
        assert_eq!(o.target, GgmlDType::Q8_0);
        let f = choose(QuantType::F16, "blk.0.attn_q.weight", &[576, 576], &SMOL);
        assert_eq!(f.target, GgmlDType::F16);
        // 1-D stays F32 whatever the type
        let n = choose(QuantType::F16, "output_norm.weight", &[576], &SMOL);
        assert_eq!(n.target, GgmlDType::F32);
        // rows of 48 values fit no block type: F16
        let odd = choose(QuantType::Q6K, "blk.0.attn_q.weight", &[64, 48], &SMOL);
        assert_eq!(odd.target, GgmlDType::F16);
    }
}
