//! `quantize`: an HF directory or a GGUF file to a GGUF file of one storage type that
//! llama.cpp and this crate both load.
//!
//! - Per-tensor types follow llama.cpp's `llama-quant.cpp` ([`policy`]): 1-D tensors F32, the
//!   LM head (or the embedding tied to it) Q6_K/Q8_0, the `_M` mixtures for `q4_k`/`q5_k`, and
//!   the fallbacks when a row is not whole K-quant blocks.
//! - Metadata: a GGUF input keeps all of its keys (new `general.file_type`); an HF input gets
//!   convert_hf_to_gguf.py's `llama.*` keys, `rope_freqs.weight` for Llama 3 RoPE scaling, and
//!   the tokenizer ([`crate::tokenizer::gguf_metadata_from_hf_dir`]). HF Q/K rows are permuted
//!   into GGUF's interleaved RoPE layout.
//! - Blocks are made by candle's `QTensor::quantize` (llama.cpp's reference quantizers, no
//!   importance matrix) and the file by candle's `gguf_file::write`, into a temporary file that
//!   replaces the output only when complete ([`crate::weights::gguf_write`]).
//!
//! Every output tensor is held in memory until the file is written (peak memory is about the
//! output size plus one f32 tensor per thread).

pub mod hf_meta;
mod plan;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

pub use policy::{ggml_name, QuantType};

use crate::loader::{detect, Format};
use crate::weights::gguf_write::{order_metadata, write_gguf};
use crate::weights::ProgressFn;
use crate::{Error, Result};

#[derive(Clone)]
pub struct QuantizeOptions {
    pub ty: QuantType,
    /// Called with (tensors done, tensors in the file) as tensors are converted.
    pub progress: Option<ProgressFn>,
}

impl QuantizeOptions {
    pub fn new(ty: QuantType) -> Self {
        Self { ty, progress: None }
    }
}

/// One tensor of the output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorReport {
    /// GGUF name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Storage type in the input.
    pub source: String,
    /// Storage type written.
    pub target: String,
    /// The type llama.cpp's mixture wanted when the row length forced `target` instead.
    pub wanted: Option<String>,
}

/// What [`quantize`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizeReport {
    pub input: PathBuf,
    /// "GGUF" or "HF safetensors".
    pub input_format: String,
    pub output: PathBuf,
    pub ty: String,
    /// GGUF `general.file_type` written.
    pub file_type: u32,
    pub tensors: Vec<TensorReport>,
    /// Things the user should know (requantization, missing tokenizer...).
    pub warnings: Vec<String>,
    pub bytes: u64,
}

impl QuantizeReport {
    /// Tensors that did not get the type the mixture wanted (rows not whole blocks).
    pub fn fallbacks(&self) -> impl Iterator<Item = &TensorReport> {
        self.tensors.iter().filter(|t| t.wanted.is_some())
    }

    /// Storage type -> tensor count, most common first.
    pub fn type_counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = Vec::new();
        for t in &self.tensors {
            match v.iter_mut().find(|(k, _)| *k == t.target) {
                Some((_, n)) => *n += 1,
                None => v.push((t.target.clone(), 1)),
            }
        }
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Refuses an output that is a directory or that would overwrite what is being read.
fn check_output(input: &Path, source: &Path, output: &Path) -> Result<()> {
    if output.is_dir() {
        return Err(Error::Input(format!(
            "output {} is a directory; give a .gguf file path",
            output.display()
        )));
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let out = match output.file_name() {
        Some(name) => dir.join(name),
        None => {
            return Err(Error::Input(format!(
                "output {} is not a file path",
                output.display()
            )))
        }
    };
    for p in [input, source] {
        if p.canonicalize().is_ok_and(|p| p == out) {
            return Err(Error::Input(format!(
                "output {} is the input; write to another file",
                output.display()
            )));
        }
    }
    if source.is_dir() && out.parent() == source.canonicalize().ok().as_deref() {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.ends_with(".safetensors") || n.ends_with(".json")) {
            return Err(Error::Input(format!(
                "output {} would overwrite a file of the input model",
                output.display()
            )));
        }
    }
    Ok(())
}

/// A planned conversion: types chosen and warnings known, nothing converted or written yet.
pub struct Quantizer {
    job: plan::Job,
    input: PathBuf,
    output: PathBuf,
    format: Format,
    ty: QuantType,
}

impl Quantizer {
    /// Reads the header of `input` (GGUF file or HF directory) and decides every tensor's
    /// type for a GGUF at `output`; refuses an output that would overwrite the input.
    pub fn new(input: &Path, output: &Path, ty: QuantType) -> Result<Self> {
        let (format, source) = detect(input)?;
        check_output(input, &source, output)?;
        let job = match format {
            Format::Gguf => plan::from_gguf(&source, ty)?,
            Format::HfSafetensors => plan::from_hf(&source, ty)?,
        };
        Ok(Self {
            job,
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            format,
            ty,
        })
    }

    /// Things the user should know before the conversion (requantization, no tokenizer...).
    pub fn warnings(&self) -> &[String] {
        &self.job.warnings
    }

    /// The output tensors in file order with their chosen types.
    pub fn tensors(&self) -> Vec<TensorReport> {
        self.job
            .items
            .iter()
            .map(|it| TensorReport {
                name: it.name.clone(),
                shape: it.dims.clone(),
                source: it.source_type.clone(),
                target: ggml_name(it.choice.target).to_string(),
                wanted: it.choice.wanted.map(|w| ggml_name(w).to_string()),
            })
            .collect()
    }

    /// Converts every tensor (in parallel) and writes the file. `progress` gets (tensors done,
    /// tensors in the file).
    pub fn run(self, progress: Option<ProgressFn>) -> Result<QuantizeReport> {
        let job = &self.job;
        let total = job.items.len();
        let done = AtomicUsize::new(0);
        let tensors = job
            .items
            .par_iter()
            .map(|it| {
                let q = job.convert(it)?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(p) = &progress {
                    p(n, total);
                }
                Ok((it.name.clone(), q))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut metadata = job.metadata.clone();
        order_metadata(&mut metadata);
        let bytes = write_gguf(&self.output, &metadata, &tensors)?;
        Ok(QuantizeReport {
            tensors: self.tensors(),
            input_format: match self.format {
                Format::Gguf => "GGUF".into(),
                Format::HfSafetensors => "HF safetensors".into(),
            },
            input: self.input,
            output: self.output,
            ty: self.ty.name().to_string(),
            file_type: self.ty.ftype(),
            warnings: self.job.warnings,
            bytes,
        })
    }
}

/// Converts the model at `input` (GGUF file or HF directory) to a GGUF file at `output` with
/// the storage types of `opts.ty`.
pub fn quantize(input: &Path, output: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    Quantizer::new(input, output, opts.ty)?.run(opts.progress.clone())
}
