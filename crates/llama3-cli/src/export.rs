//! `llama3 export MODEL_DIR --gguf OUT [--type TYPE]`: a trained (or any HF) model directory to
//! a GGUF for llama.cpp; the conversion is `llama3 quantize`'s (metadata, tokenizer, chat
//! template, llama.cpp's tensor layout and type choices).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::quantize::{self, QuantizeArgs};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Model directory (config.json, model.safetensors, tokenizer files), e.g. a `llama3 train`
    /// run directory.
    #[arg(value_name = "MODEL_DIR")]
    pub model: PathBuf,
    /// Output GGUF file.
    #[arg(long, value_name = "OUT")]
    pub gguf: PathBuf,
    /// Storage type (as `llama3 quantize --type`): f32, f16, bf16, q8_0, q4_k...
    #[arg(long = "type", default_value = "f16", value_name = "TYPE")]
    pub ty: String,
}

pub fn run(a: ExportArgs) -> Result<()> {
    quantize::run(QuantizeArgs {
        input: a.model,
        output: a.gguf,
        ty: a.ty,
        threads: None,
        verbose: false,
    })
}
