//! GGUF v2/v3 files (llama.cpp's format): metadata, and tensors that stay quantized.
//! The file is memory-mapped; each tensor's blocks are copied once into a candle `QTensor`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::gguf_header::{self, HeaderError, IqTensor};
use super::names::{gguf_rows_for_hf, hf_to_gguf, rope_permuted_heads, GGUF_ROPE_FREQS};
use super::{Weight, WeightSource};
use crate::quant::Packed;
use crate::{Error, Result};

/// ggml's type name (`ggml_type_name`): `Q4_K`, `F16`...
pub fn ggml_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// An opened GGUF file: parsed header and the mapped bytes.
pub struct GgufFile {
    pub path: PathBuf,
    /// Header and tensors of the types candle knows.
    pub content: Content,
    /// IQ4 tensors (no candle type; `quant::Packed` holds them).
    pub iq: HashMap<String, IqTensor>,
    mmap: Mmap,
}

impl GgufFile {
    /// Parses the header and checks that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // SAFETY: read-only mapping of a file we do not modify.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Parsed from the mapping: candle's reader seeks between values, and through a
        // `BufReader` every seek was a syscall that dropped the buffer (~100k strings).
        let (content, iq) = gguf_header::read(&mmap[..]).map_err(|e| match e {
            HeaderError::UnknownType(t) => Error::Unsupported(format!(
                "{}: GGUF tensor type {} (ggml type {t}); supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS",
                path.display(),
                ggml_type_name(t)
            )),
            HeaderError::Candle(e) => Error::format(
                path,
                format!(
                    "not a valid GGUF file (bad magic, truncated or corrupt header): {}",
                    crate::error::candle_message(&e)
                ),
            ),
            HeaderError::Malformed(m) => Error::format(path, format!("not a valid GGUF file: {m}")),
        })?;
        let me = Self {
            path: path.to_path_buf(),
            content,
            iq,
            mmap,
        };
        for (name, t) in &me.iq {
            me.iq_range(name, t)?;
        }
        for (name, info) in &me.content.tensor_infos {
            let (start, size) = me.byte_range(name, info)?;
            if start + size > len as usize {
                return Err(Error::format(
                    path,
                    format!(
                        "truncated: tensor {name} ({:?} {:?}) needs bytes {start}..{} but the file has {len}",
                        info.ggml_dtype,
                        info.shape.dims(),
                        start + size
                    ),
                ));
            }
        }
        Ok(me)
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// String metadata value, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata()
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor_infos.get(name)
    }

    /// Count of tensors per storage type, for `llama3 info`.
    pub fn type_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            *counts
                .entry(ggml_name(info.ggml_dtype).to_string())
                .or_default() += 1;
        }
        for t in self.iq.values() {
            *counts.entry(t.iq.name().to_string()).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    fn byte_range(&self, name: &str, info: &TensorInfo) -> Result<(usize, usize)> {
        let elems = info.shape.elem_count();
        let bs = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(bs) {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor {name}: {elems} elements is not a multiple of the {:?} block size {bs}",
                    info.ggml_dtype
                ),
            ));
        }
        let size = elems / bs * info.ggml_dtype.type_size();
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok((start, size))
    }

    /// Drops the mapped pages of `bytes` (a slice of this file's mapping, already copied)
    /// from memory: they are read once at load, and would otherwise stay resident next to
    /// the copy, doubling the load's peak memory. They are read again from the file if needed.
    pub fn release(&self, bytes: &[u8]) {
        #[cfg(unix)]
        {
            let base = self.mmap.as_ptr() as usize;
            let start = bytes.as_ptr() as usize;
            if start < base || start + bytes.len() > base + self.mmap.len() {
                return;
            }
            // Whole pages inside the range only.
            let page = 4096;
            let first = (start - base).div_ceil(page) * page;
            let end = (start - base + bytes.len()) / page * page;
            if end > first {
                // SAFETY: a read-only private file mapping: dropped pages are re-read from the
                // file on the next access, and no reference into them outlives this call's
                // callers (they copied the bytes).
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        end - first,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = bytes;
    }

    /// Whether the file has tensor `name` (GGUF name), of any type.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_info(name).is_some() || self.iq.contains_key(name)
    }

    /// Bytes of IQ4 tensor `name` inside the file (checked: a truncated file is an error).
    fn iq_range(&self, name: &str, t: &IqTensor) -> Result<&[u8]> {
        let elems: usize = t.dims.iter().product();
        if !elems.is_multiple_of(t.iq.block_elems()) {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor {name}: {elems} elements is not a multiple of the {} block size",
                    t.iq.name()
                ),
            ));
        }
        let size = elems / t.iq.block_elems() * t.iq.block_bytes();
        let start = (self.content.tensor_data_offset + t.offset) as usize;
        self.mmap.get(start..start + size).ok_or_else(|| {
            Error::format(
                &self.path,
                format!(
                    "truncated: tensor {name} ({} {:?}) needs bytes {start}..{} but the file has {}",
                    t.iq.name(),
                    t.dims,
                    start + size,
                    self.mmap.len()
                ),
            )
        })
    }

    /// The raw bytes of tensor `name` (GGUF name).
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            file: self.path.clone(),
        })?;
        let (start, size) = self.byte_range(name, info)?;
        Ok((info, &self.mmap[start..start + size]))
    }
}

/// Hands out GGUF tensors under HF names, Q/K rows converted to HF's half-rotation layout.
pub struct GgufSource {
    pub file: GgufFile,
    n_head: usize,
    n_head_kv: usize,
    dtype: DType,
    device: Device,
}

impl GgufSource {
    /// `dtype` is what unquantized (F32/F16/BF16) tensors are converted to.
    pub fn new(
        file: GgufFile,
        n_head: usize,
        n_head_kv: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            file,
            n_head,
            n_head_kv,
            dtype,
            device: device.clone(),
        }
    }

    /// The file the weights come from.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Llama 3.1+ RoPE frequency divisors (`rope_freqs.weight`, Dh/2 values), if present.
    pub fn rope_freqs(&self) -> Result<Option<Vec<f32>>> {
        if self.file.tensor_info(GGUF_ROPE_FREQS).is_none() {
            return Ok(None);
        }
        let (info, bytes) = self.file.raw(GGUF_ROPE_FREQS)?;
        let q = qtensor_from_ggml(
            info.ggml_dtype,
            bytes,
            info.shape.dims().to_vec(),
            &Device::Cpu,
        )?;
        Ok(Some(
            q.dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ))
    }
}

impl WeightSource for GgufSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let gname = hf_to_gguf(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            file: self.file.path.clone(),
        })?;
        if let Some(t) = self.file.iq.get(&gname) {
            return self.get_iq4(name, &gname, t, shape);
        }
        let (info, mapped) = self.file.raw(&gname)?;
        let dims = info.shape.dims().to_vec();
        if dims != shape {
            return Err(Error::Shape {
                name: gname,
                file: self.file.path.clone(),
                got: dims,
                expected: shape.to_vec(),
            });
        }
        let permuted = rope_permuted_heads(name, self.n_head, self.n_head_kv);
        let owned;
        let bytes = match permuted {
            Some(heads) => {
                owned = unpermute_rows(mapped, dims[0], heads);
                &owned[..]
            }
            None => mapped,
        };
        if matches!(self.device, Device::Cpu) {
            // Q4_1/Q8_0/F16 matrices come out packed for the CPU kernels; others go to candle.
            let packed = Packed::from_raw(info.ggml_dtype, &dims, bytes)
                .map_err(|e| Error::format(&self.file.path, format!("tensor {name}: {e}")))?;
            if let Some(p) = packed {
                self.file.release(mapped);
                return Ok(Weight::Packed(Arc::new(p)));
            }
        }
        let q = qtensor_from_ggml(info.ggml_dtype, bytes, dims, &self.device).map_err(|e| {
            Error::format(
                &self.file.path,
                format!("tensor {name}: {}", crate::error::candle_message(&e)),
            )
        })?;
        let w = match info.ggml_dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let t: Tensor = q.dequantize(&self.device)?;
                Weight::Dense(t.to_dtype(self.dtype)?)
            }
            _ => Weight::Quantized(Arc::new(q)),
        };
        self.file.release(mapped);
        Ok(w)
    }

    fn contains(&self, name: &str) -> bool {
        hf_to_gguf(name).is_some_and(|g| self.file.has_tensor(&g))
    }

    fn path(&self) -> &Path {
        &self.file.path
    }
}

impl GgufSource {
    /// An IQ4 tensor: packed for our kernels on the CPU, dequantized elsewhere (no candle
    /// type holds it).
    fn get_iq4(&self, name: &str, gname: &str, t: &IqTensor, shape: &[usize]) -> Result<Weight> {
        if t.dims != shape {
            return Err(Error::Shape {
                name: gname.to_string(),
                file: self.file.path.clone(),
                got: t.dims.clone(),
                expected: shape.to_vec(),
            });
        }
        let mapped = self.file.iq_range(gname, t)?;
        let owned;
        let bytes = match rope_permuted_heads(name, self.n_head, self.n_head_kv) {
            Some(heads) => {
                owned = unpermute_rows(mapped, t.dims[0], heads);
                &owned[..]
            }
            None => mapped,
        };
        let p = Packed::from_iq4(t.iq, &t.dims, bytes)
            .map_err(|e| Error::format(&self.file.path, format!("tensor {gname}: {e}")))?;
        self.file.release(mapped);
        if matches!(self.device, Device::Cpu) {
            return Ok(Weight::Packed(Arc::new(p)));
        }
        let dense = p
            .dequantize()?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        Ok(Weight::Dense(dense))
    }
}

/// Reorders whole rows (each row is whole blocks) from GGUF's interleaved Q/K layout to HF's.
fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows;
    let mut out = vec![0u8; bytes.len()];
    for (hf, g) in gguf_rows_for_hf(rows, heads).into_iter().enumerate() {
        out[hf * row_bytes..(hf + 1) * row_bytes]
            .copy_from_slice(&bytes[g * row_bytes..(g + 1) * row_bytes]);
    }
    out
}

/// ggml's names for the type ids candle cannot read (ggml.h `enum ggml_type`).
fn ggml_type_name(t: u32) -> &'static str {
    match t {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24..=28 => "an integer/f64 type",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}
