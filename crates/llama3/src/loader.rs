//! Opening a model from a path: a GGUF file, an HF directory, or a `.safetensors` file inside
//! one. Detects the format from the bytes, not the extension.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};

use crate::config::LlamaConfig;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{GgufFile, GgufSource};
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::{ProgressFn, WeightSource, WithProgress};
use crate::{Error, Result};

#[derive(Clone)]
pub struct LoadOptions {
    /// dtype of dense weights and activations (quantized weights stay quantized).
    pub dtype: DType,
    pub device: Device,
    /// Called with (tensors loaded, tensors expected) while weights load.
    pub progress: Option<ProgressFn>,
    /// Build the tokenizer too (false: `Loaded::tokenizer` is None; for work on token ids
    /// alone, such as `llama3 bench`, it saves ~11 MiB for a 49k vocabulary).
    pub tokenizer: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            progress: None,
            tokenizer: true,
        }
    }
}

/// Builds the model from `src`, reporting progress if asked.
fn build(
    src: &dyn WeightSource,
    config: &LlamaConfig,
    rope_freqs: Option<&[f32]>,
    opts: &LoadOptions,
) -> Result<Llama> {
    match &opts.progress {
        None => Llama::load(src, config, rope_freqs, &opts.device),
        Some(p) => {
            // embed, final norm, 9 tensors per layer, and an untied head
            let head = !config.tie_word_embeddings && src.contains("lm_head.weight");
            let total = 2 + 9 * config.num_hidden_layers + usize::from(head);
            let src = WithProgress::new(src, total, p.clone());
            Llama::load(&src, config, rope_freqs, &opts.device)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfSafetensors,
}

/// What `llama3 info` shows about a checkpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: String,
    pub architecture: String,
    pub name: Option<String>,
    pub parameters: usize,
    /// Storage type -> tensor count.
    pub tensor_types: Vec<(String, usize)>,
    pub file_bytes: u64,
    /// The pooling the file asks embeddings to use (GGUF `{arch}.pooling_type`).
    pub pooling: Option<crate::embed::Pooling>,
}

pub struct Loaded {
    pub model: Llama,
    /// None when the checkpoint carries no tokenizer.
    pub tokenizer: Option<Tokenizer>,
    pub info: ModelInfo,
}

/// Detects the format of `path`.
pub fn detect(path: &Path) -> Result<(Format, PathBuf)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        if path.join("config.json").exists() {
            return Ok((Format::HfSafetensors, path.to_path_buf()));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok((Format::Gguf, one.clone())),
            _ => Err(Error::format(
                path,
                "not a model directory: no config.json (HF) and not exactly one .gguf file",
            )),
        };
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    if n == 4 && &magic == b"GGUF" {
        return Ok((Format::Gguf, path.to_path_buf()));
    }
    if path.extension().is_some_and(|x| x == "safetensors") {
        let dir = path.parent().unwrap_or(Path::new("."));
        if dir.join("config.json").exists() {
            return Ok((Format::HfSafetensors, dir.to_path_buf()));
        }
        return Err(Error::format(
            path,
            "safetensors file without a config.json beside it",
        ));
    }
    if path.extension().is_some_and(|x| x == "gguf") {
        return Err(Error::format(
            path,
            format!("not a GGUF file: bad magic {magic:02x?} (expected \"GGUF\")"),
        ));
    }
    Err(Error::format(
        path,
        "unknown model format (expected a GGUF file or an HF model directory)",
    ))
}

/// Loads model and tokenizer from a GGUF file or HF directory.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let (format, path) = detect(path)?;
    match format {
        Format::Gguf => load_gguf(&path, opts),
        Format::HfSafetensors => load_hf(&path, opts),
    }
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let t0 = std::time::Instant::now();
    let file = GgufFile::open(path)?;
    tracing::debug!("gguf metadata read in {:?}", t0.elapsed());
    let config = LlamaConfig::from_gguf(file.metadata()).map_err(|e| match e {
        Error::Config(m) => Error::format(path, m),
        e => e,
    })?;
    let name = file.meta_str("general.name").map(str::to_string);
    let pooling = match file.metadata().get("llama.pooling_type") {
        Some(v) => v.to_u32().ok().and_then(crate::embed::Pooling::from_gguf),
        None => None,
    };
    let tensor_types = file.type_counts();
    let src = GgufSource::new(
        file,
        config.num_attention_heads,
        config.num_key_value_heads,
        opts.dtype,
        &opts.device,
    );
    // The tokenizer (~60 ms for a 49k vocabulary) is built while the weights load.
    let (tokenizer, model) = rayon::join(
        || -> Result<Option<Tokenizer>> {
            let md = src.file().metadata();
            let t = match md.get("tokenizer.ggml.model") {
                _ if !opts.tokenizer => None,
                None => None,
                // convert_hf_to_gguf.py writes "none" for checkpoints without a tokenizer.
                Some(Value::String(s)) if s == "none" || s == "no_vocab" => None,
                Some(_) => Some(Tokenizer::from_gguf(md)?),
            };
            tracing::debug!("tokenizer built at {:?}", t0.elapsed());
            Ok(t)
        },
        || -> Result<Llama> {
            let freqs = src.rope_freqs()?;
            let model = build(&src, &config, freqs.as_deref(), opts)?;
            tracing::debug!("weights loaded at {:?}", t0.elapsed());
            Ok(model)
        },
    );
    let (tokenizer, model) = (tokenizer?, model?);
    let info = ModelInfo {
        path: path.to_path_buf(),
        format: "GGUF".into(),
        architecture: "llama".into(),
        name,
        parameters: model.config.num_parameters(),
        tensor_types,
        file_bytes: file_size(path),
        pooling,
    };
    Ok(Loaded {
        model,
        tokenizer,
        info,
    })
}

fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let config = LlamaConfig::from_hf_file(&dir.join("config.json"))?;
    let src = SafetensorsSource::open_dir(dir, opts.dtype, &opts.device)?;
    let model = build(&src, &config, None, opts)?;
    let has_tokenizer = dir.join("tokenizer.json").exists() || dir.join("tokenizer.model").exists();
    let tokenizer = if has_tokenizer && opts.tokenizer {
        Some(Tokenizer::from_hf_dir(dir)?)
    } else {
        None
    };
    let types = src.type_counts();
    let bytes = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .map(|e| file_size(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    let info = ModelInfo {
        path: dir.to_path_buf(),
        format: "HF safetensors".into(),
        architecture: "llama".into(),
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        parameters: model.config.num_parameters(),
        tensor_types: types,
        file_bytes: bytes,
        pooling: None,
    };
    Ok(Loaded {
        model,
        tokenizer,
        info,
    })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// How [`open`] finds and prepares a model: what the CLI's model flags and the Python
/// package's `Llama3(...)` arguments say.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// `cpu`, `cuda`, `cuda:N` or `auto` (empty: auto).
    pub device: String,
    /// `f32`, `f16`, `bf16` or `auto` (empty: auto: f32 on the CPU, bf16 on a GPU).
    pub dtype: String,
    /// A tokenizer file used instead of the model's.
    pub tokenizer: Option<PathBuf>,
    /// PEFT LoRA adapters applied without merging, `PATH` or `PATH:SCALE` each.
    pub lora: Vec<String>,
    /// Skip building the tokenizer (work on token ids alone).
    pub no_tokenizer: bool,
    pub progress: Option<ProgressFn>,
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            return Err(Error::Input(format!(
                "dtype {other:?}: expected auto, f32, f16 or bf16"
            )))
        }
    })
}

/// Resolves `spec` (a GGUF, an HF directory, `hf:owner/name[/file.gguf]`, or None for the
/// default model, fetched on first use with `say` telling what happens), loads it on the chosen
/// device and dtype, swaps in the tokenizer and applies the adapters.
pub fn open(spec: Option<&str>, o: &OpenOptions, say: impl FnMut(&str)) -> Result<Loaded> {
    let device = match o.device.as_str() {
        "" => crate::device::parse("auto")?,
        d => crate::device::parse(d)?,
    };
    let dtype = match o.dtype.as_str() {
        "" | "auto" => crate::device::default_dtype(&device),
        d => parse_dtype(d)?,
    };
    let path = crate::hub::resolve_model(spec, say)?;
    let opts = LoadOptions {
        dtype,
        device,
        progress: o.progress.clone(),
        tokenizer: !o.no_tokenizer,
    };
    let mut loaded = load(&path, &opts)?;
    if let Some(t) = o.tokenizer.as_ref().filter(|_| !o.no_tokenizer) {
        loaded.tokenizer = Some(Tokenizer::from_file(t)?);
    }
    for spec in &o.lora {
        let applied = crate::peft::apply_spec(&mut loaded.model, spec)?;
        tracing::info!("{applied}");
    }
    Ok(loaded)
}
