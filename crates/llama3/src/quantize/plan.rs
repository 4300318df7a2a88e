//! What `quantize` will write, decided before any tensor is converted: the output metadata and,
//! per tensor, its GGUF name, where its values come from and its storage type.

use std::path::Path;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::hf_meta;
use super::policy::{choose, ggml_name, is_quantized, Choice, ModelShape, QuantType};
use crate::config::LlamaConfig;
use crate::weights::gguf::GgufFile;
use crate::weights::names::{gguf_rows_for_hf, hf_to_gguf, rope_permuted_heads, GGUF_ROPE_FREQS};
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::WeightSource;
use crate::{Error, Result};

/// The checkpoint tensors are read from.
pub(super) enum Source {
    Gguf(GgufFile),
    Hf(SafetensorsSource),
}

/// Where one output tensor's values come from.
pub(super) enum Origin {
    /// The GGUF tensor of the same name, already in GGUF's layout.
    Gguf,
    /// An HF tensor; `Some(heads)` for Q/K projections, whose rows are permuted into GGUF's
    /// interleaved RoPE layout.
    Hf { name: String, heads: Option<usize> },
    /// Computed values (`rope_freqs.weight`).
    Values(Vec<f32>),
}

pub(super) struct Item {
    /// GGUF name.
    pub name: String,
    pub dims: Vec<usize>,
    /// Storage type in the source (`Q4_1`, `BF16`...).
    pub source_type: String,
    pub choice: Choice,
    pub origin: Origin,
}

pub(super) struct Job {
    pub source: Source,
    pub metadata: Vec<(String, Value)>,
    pub items: Vec<Item>,
    pub warnings: Vec<String>,
}

fn file_type_keys(ty: QuantType) -> [(String, Value); 2] {
    [
        ("general.file_type".into(), Value::U32(ty.ftype())),
        // ggml's GGML_QNT_VERSION, which llama.cpp writes with every quantized file.
        ("general.quantization_version".into(), Value::U32(2)),
    ]
}

/// A GGUF input: all metadata kept but the file type; tensors in file order.
pub(super) fn from_gguf(path: &Path, ty: QuantType) -> Result<Job> {
    let file = GgufFile::open(path)?;
    let md = file.metadata();
    if md
        .get("split.count")
        .and_then(crate::config::gguf_int)
        .is_some_and(|n| n > 1)
    {
        return Err(Error::Unsupported(format!(
            "{}: split GGUF files (split.count > 1); merge them first",
            path.display()
        )));
    }
    if let Some((name, t)) = file.iq.iter().next() {
        return Err(Error::Unsupported(format!(
            "{}: requantizing IQ4 tensors ({name} is {}) is not supported; quantize from the \
             HF checkpoint or an F16/Q8_0 GGUF",
            path.display(),
            t.iq.name()
        )));
    }
    let config = LlamaConfig::from_gguf(md).map_err(|e| match e {
        Error::Config(m) => Error::format(path, m),
        e => e,
    })?;
    let shape = ModelShape {
        n_layer: config.num_hidden_layers,
        n_head: config.num_attention_heads,
        n_head_kv: config.num_key_value_heads,
        tied: !file.has_tensor("output.weight"),
    };
    let mut infos: Vec<_> = file.content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    let items: Vec<Item> = infos
        .into_iter()
        .map(|(name, info)| {
            let dims = info.shape.dims().to_vec();
            Item {
                choice: choose(ty, name, &dims, &shape),
                name: name.clone(),
                dims,
                source_type: ggml_name(info.ggml_dtype).to_string(),
                origin: Origin::Gguf,
            }
        })
        .collect();

    let mut requant: Vec<(String, usize)> = Vec::new();
    for it in &items {
        let src = file.content.tensor_infos[&it.name].ggml_dtype;
        if is_quantized(src) && src != it.choice.target {
            match requant.iter_mut().find(|(t, _)| *t == it.source_type) {
                Some((_, n)) => *n += 1,
                None => requant.push((it.source_type.clone(), 1)),
            }
        }
    }
    let mut warnings = Vec::new();
    if !requant.is_empty() {
        let list: Vec<String> = requant.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        warnings.push(format!(
            "{} is already quantized: {} tensors ({}) are dequantized to f32 and requantized, \
             so their error adds to the original quantization's; quantize from the f16/f32 \
             model when you have it",
            path.display(),
            requant.iter().map(|r| r.1).sum::<usize>(),
            list.join(", ")
        ));
    }

    let keys = file_type_keys(ty);
    let mut metadata: Vec<(String, Value)> = md
        .iter()
        .filter(|(k, _)| !keys.iter().any(|(n, _)| n == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.extend(keys);
    Ok(Job {
        source: Source::Gguf(file),
        metadata,
        items,
        warnings,
    })
}

/// Sort key giving llama.cpp's tensor order: rope_freqs, token_embd, blocks by index,
/// output_norm, output.
fn order_key(gguf_name: &str) -> (usize, String) {
    let rank = match gguf_name {
        GGUF_ROPE_FREQS => 0,
        "token_embd.weight" => 1,
        "output_norm.weight" => usize::MAX - 1,
        "output.weight" => usize::MAX,
        n => n
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .map_or(usize::MAX - 2, |i| 2 + i),
    };
    (rank, gguf_name.to_string())
}

/// An HF directory: `llama.*` keys from config.json, the tokenizer's `tokenizer.*` keys,
/// Q/K rows permuted, no `output.weight` for a tied head.
pub(super) fn from_hf(dir: &Path, ty: QuantType) -> Result<Job> {
    let config = LlamaConfig::from_hf_file(&dir.join("config.json"))?;
    let src = SafetensorsSource::open_dir(dir, DType::F32, &Device::Cpu)?;
    let (nh, nkv) = (config.num_attention_heads, config.num_key_value_heads);
    let tied = config.tie_word_embeddings || !src.contains("lm_head.weight");
    let shape = ModelShape {
        n_layer: config.num_hidden_layers,
        n_head: nh,
        n_head_kv: nkv,
        tied,
    };
    let mut warnings = Vec::new();
    let mut items = Vec::new();
    let mut names: Vec<&str> = src.names().collect();
    names.sort_unstable();
    for name in names {
        // convert_hf_to_gguf.py skips these buffers: RoPE is recomputed from the config.
        if name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        if tied && name == "lm_head.weight" {
            warnings.push(format!(
                "{}: lm_head.weight is not written: the config ties it to the embedding",
                dir.display()
            ));
            continue;
        }
        let gguf = hf_to_gguf(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor {name} in {} has no GGUF name: not a Llama decoder tensor",
                dir.display()
            ))
        })?;
        let (dims, dtype) = src
            .shape_and_dtype(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                file: dir.to_path_buf(),
            })?;
        if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(Error::Unsupported(format!(
                "tensor {name} in {} is {dtype}: only f32/f16/bf16 checkpoints can be converted",
                dir.display()
            )));
        }
        items.push(Item {
            choice: choose(ty, &gguf, &dims, &shape),
            name: gguf,
            dims,
            source_type: dtype,
            origin: Origin::Hf {
                name: name.to_string(),
                heads: rope_permuted_heads(name, nh, nkv),
            },
        });
    }
    if let Some(f) = hf_meta::llama3_rope_factors(&config) {
        items.push(Item {
            name: GGUF_ROPE_FREQS.to_string(),
            dims: vec![f.len()],
            source_type: "F32".into(),
            choice: choose(ty, GGUF_ROPE_FREQS, &[f.len()], &shape),
            origin: Origin::Values(f),
        });
    }
    items.sort_by_key(|it| order_key(&it.name));

    let mut metadata = hf_meta::llama_keys(&config);
    if let Some(n) = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_owned()))
    {
        let n = n.to_string_lossy().into_owned();
        metadata.push(("general.name".into(), Value::String(n)));
    }
    metadata.extend(file_type_keys(ty));
    if dir.join("tokenizer.json").exists() || dir.join("tokenizer.model").exists() {
        metadata.extend(crate::tokenizer::gguf_metadata_from_hf_dir(
            dir,
            config.vocab_size,
        )?);
    } else {
        // convert_hf_to_gguf.py `_set_vocab_none`; llama.cpp loads it without a vocabulary.
        metadata.push(("tokenizer.ggml.model".into(), Value::String("none".into())));
        warnings.push(format!(
            "{} has no tokenizer.json: the GGUF has no tokenizer (only token ids will work)",
            dir.display()
        ));
    }
    Ok(Job {
        source: Source::Hf(src),
        metadata,
        items,
        warnings,
    })
}

/// Rows of an HF Q/K projection in GGUF's order (the inverse of the loader's
/// [`gguf_rows_for_hf`]): GGUF row `g` is HF row `h` where `map[h] = g`.
fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let mut hf_of_gguf = vec![0u32; rows];
    for (h, g) in gguf_rows_for_hf(rows, heads).into_iter().enumerate() {
        hf_of_gguf[g] = h as u32;
    }
    let idx = Tensor::from_vec(hf_of_gguf, rows, t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

impl Job {
    /// The output tensor of `it`. A GGUF tensor already of the target type is copied as is.
    pub(super) fn convert(&self, it: &Item) -> Result<QTensor> {
        let target = it.choice.target;
        let cpu = &Device::Cpu;
        let with_name = |e: candle_core::Error| {
            Error::Input(format!(
                "converting tensor {} {:?} from {} to {}: {}",
                it.name,
                it.dims,
                it.source_type,
                ggml_name(target),
                crate::error::candle_message(&e)
            ))
        };
        let dense = match (&self.source, &it.origin) {
            (Source::Gguf(f), Origin::Gguf) => {
                let (info, bytes) = f.raw(&it.name)?;
                let q = qtensor_from_ggml(info.ggml_dtype, bytes, it.dims.clone(), cpu)
                    .map_err(with_name)?;
                if info.ggml_dtype == target {
                    return Ok(q);
                }
                q.dequantize(cpu).map_err(with_name)?
            }
            (Source::Hf(s), Origin::Hf { name, heads }) => {
                let t = s.get_any(name)?;
                match heads {
                    Some(h) => permute_rows(&t, *h)?,
                    None => t,
                }
            }
            (_, Origin::Values(v)) => Tensor::from_vec(v.clone(), it.dims.clone(), cpu)?,
            _ => {
                return Err(Error::Input(format!(
                    "tensor {}: source and origin disagree",
                    it.name
                )))
            }
        };
        let dense = dense.to_dtype(DType::F32)?;
        QTensor::quantize(&dense, target).map_err(with_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_rows_is_the_inverse_of_the_loader() {
        // convert_hf_to_gguf.py permute for rows=8, n_head=2: GGUF holds HF rows
        // [0, 2, 1, 3, 4, 6, 5, 7].
        let t = Tensor::arange(0u32, 8, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p: Vec<f32> = permute_rows(&t, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(p, [0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn tensor_order_follows_llama_cpp() {
        let mut v = vec![
            "output.weight",
            "blk.10.attn_q.weight",
            "output_norm.weight",
            "blk.2.attn_q.weight",
            "token_embd.weight",
            "rope_freqs.weight",
        ];
        v.sort_by_key(|n| order_key(n));
        assert_eq!(
            v,
            [
                "rope_freqs.weight",
                "token_embd.weight",
                "blk.2.attn_q.weight",
                "blk.10.attn_q.weight",
                "output_norm.weight",
                "output.weight"
            ]
        );
    }
}
