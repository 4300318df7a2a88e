//! `llama3 merge BASE ADAPTER OUT`: folds a PEFT LoRA adapter into the base weights
//! (`W += scaling * B A`) and writes an HF directory, or a GGUF when OUT ends in `.gguf`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3::loader::LoadOptions;
use llama3::peft::{self, Adapter};
use llama3::quantize::{QuantType, Quantizer};
use llama3::weights::hf_dir;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: an HF directory or a GGUF file (quantized weights are dequantized to f32
    /// before merging).
    #[arg(value_name = "BASE")]
    pub base: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors), optionally
    /// with a weight: PATH:SCALE.
    #[arg(value_name = "ADAPTER[:SCALE]")]
    pub adapter: String,
    /// Output: an HF model directory (must not exist or be empty), or a `.gguf` file.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Storage type of a GGUF output (as `llama3 quantize --type`).
    #[arg(long = "type", default_value = "f16", value_name = "TYPE")]
    pub ty: String,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let gguf = a.out.extension().is_some_and(|e| e == "gguf");
    let ty: QuantType = a.ty.parse()?;
    if !gguf && a.out.exists() && a.out.read_dir().map_or(true, |mut d| d.next().is_some()) {
        bail!("{} exists and is not an empty directory", a.out.display());
    }
    let (dir, scale) = peft::parse_spec(&a.adapter)?;
    let mut loaded = llama3::loader::load(&a.base, &LoadOptions::default())?;
    let adapter = Adapter::load(&dir, loaded.model.device())?;
    let n = adapter.apply(&mut loaded.model, scale)?;
    loaded.model.dequantize()?;
    peft::merge(&mut loaded.model)?;
    eprintln!("merged {} (x{scale}) into {n} modules", dir.display());
    if !gguf {
        hf_dir::write_model_dir(&a.out, &loaded.model, loaded.tokenizer.as_ref())?;
        println!("{}", a.out.display());
        return Ok(());
    }
    // GGUF: the merged HF directory first, then the quantizer's conversion (metadata,
    // tokenizer keys, llama.cpp's tensor layout and type choices).
    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = tempfile::tempdir_in(parent.unwrap_or(std::path::Path::new(".")))
        .context("cannot create a temporary directory beside OUT")?;
    hf_dir::write_model_dir(tmp.path(), &loaded.model, loaded.tokenizer.as_ref())?;
    let q = Quantizer::new(tmp.path(), &a.out, ty)?;
    for w in q.warnings() {
        eprintln!("warning: {w}");
    }
    q.run(None)?;
    println!("{}", a.out.display());
    Ok(())
}
