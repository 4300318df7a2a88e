//! Weight loaders and writers. Both loaders produce [`Weight`]s under HF tensor names, so the
//! model is built by one piece of code whatever the file format; every writer goes through
//! [`atomic`].

pub mod atomic;
pub mod gguf;
mod gguf_header;
pub mod gguf_write;
pub mod hf_dir;
pub mod names;
pub mod safetensors;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::Tensor;

use crate::quant::Packed;
use crate::Result;

/// One weight as stored: dense (f32/f16/bf16, converted to the requested dtype) or GGUF blocks,
/// as candle holds them or (Q4_0/1, Q5_0/1, Q8_0 on the CPU) packed for our kernels straight
/// from the file.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    Packed(Arc<Packed>),
}

impl Weight {
    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Dense(t) => t.dims(),
            Weight::Quantized(q) => q.shape().dims(),
            Weight::Packed(p) => p.shape(),
        }
    }

    /// Name of the storage type (`F32`, `Q4_1`, ...), for `llama3 info`.
    pub fn type_name(&self) -> String {
        match self {
            Weight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            Weight::Quantized(q) => gguf::ggml_name(q.dtype()).to_string(),
            Weight::Packed(p) => p.type_name().to_string(),
        }
    }

    /// A dense f32 copy (norm weights and the like are small).
    pub fn to_dense(&self) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.to_dtype(candle_core::DType::F32)?,
            Weight::Quantized(q) => q.dequantize(&q.device())?,
            Weight::Packed(p) => p.dequantize()?,
        })
    }
}

/// A checkpoint that hands out weights by HF name, checked against the expected shape.
pub trait WeightSource {
    /// The weight `name` (HF naming) with shape `shape` (rows, cols for matrices).
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight>;
    /// Whether the checkpoint holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The file (or directory) the weights come from, for messages.
    fn path(&self) -> &Path;
}

/// Reports loading progress: `(tensors loaded, tensors expected)` after each `get`.
pub type ProgressFn = std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Wraps a source and calls `progress` after each tensor.
pub struct WithProgress<'a> {
    inner: &'a dyn WeightSource,
    total: usize,
    done: std::cell::Cell<usize>,
    progress: ProgressFn,
}

impl<'a> WithProgress<'a> {
    pub fn new(inner: &'a dyn WeightSource, total: usize, progress: ProgressFn) -> Self {
        Self {
            inner,
            total,
            done: std::cell::Cell::new(0),
            progress,
        }
    }
}

impl WeightSource for WithProgress<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let w = self.inner.get(name, shape)?;
        self.done.set(self.done.get() + 1);
        (self.progress)(self.done.get().min(self.total), self.total);
        Ok(w)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
}
