//! `llama3 embed`: one vector per text (`llama3::embed`), written as JSON lines or a NumPy
//! `.npy` array (N, D) of float32 — the vectors the server's /v1/embeddings and Python's
//! `embed` give.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3::embed::{embed, shorten, EmbedOptions, Pooling};

use crate::args::{need_tokenizer, ModelArgs};

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A text to embed (repeatable: one vector each).
    #[arg(short, long = "prompt", value_name = "TEXT", conflicts_with = "file")]
    pub prompt: Vec<String>,
    /// Embed each non-empty line of this file ("-": standard input).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How positions become one vector: mean, last (token) or cls (first token). Default: the
    /// model's GGUF pooling_type, else mean.
    #[arg(long, value_name = "POOLING", value_parser = ["mean", "last", "cls"])]
    pub pooling: Option<String>,
    /// Keep the raw pooled vectors (default: scaled to unit L2 norm).
    #[arg(long)]
    pub no_normalize: bool,
    /// Cut texts longer than the context instead of stopping with an error.
    #[arg(long)]
    pub truncate: bool,
    /// Keep the first N components (renormalized unless --no-normalize), as OpenAI's dimensions.
    #[arg(long, value_name = "N")]
    pub dimensions: Option<usize>,
    /// Write here: FILE.npy (float32, N x D) or FILE.jsonl; default: JSON lines on stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn texts(a: &EmbedArgs) -> Result<Vec<String>> {
    let texts: Vec<String> = match &a.file {
        None => a.prompt.clone(),
        Some(f) => {
            let lines: Vec<String> = if f.as_os_str() == "-" {
                std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<std::io::Result<_>>()?
            } else {
                let file = std::fs::File::open(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                std::io::BufReader::new(file)
                    .lines()
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("cannot read {}", f.display()))?
            };
            lines.into_iter().filter(|l| !l.trim().is_empty()).collect()
        }
    };
    if texts.is_empty() {
        bail!("nothing to embed: give -p TEXT (repeatable) or -f FILE");
    }
    Ok(texts)
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let texts = texts(&a)?;
    let loaded = a.model.load()?;
    let tok = need_tokenizer(&loaded)?;
    let pooling = match &a.pooling {
        Some(p) => p.parse::<Pooling>()?,
        None => loaded.info.pooling.unwrap_or(Pooling::Mean),
    };
    let opts = EmbedOptions {
        pooling,
        normalize: !a.no_normalize,
        truncate: a.truncate,
        ..EmbedOptions::default()
    };
    let bar = crate::progress::bar("embedding", "texts");
    if let Some(b) = &bar {
        b.set_length(texts.len() as u64);
    }
    let start = Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    let mut tokens = 0;
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text, true, true)?;
        tokens += ids.len();
        let mut v = embed(&loaded.model, &ids, &opts).with_context(|| format!("text {}", i + 1))?;
        if let Some(d) = a.dimensions {
            shorten(&mut v, d, opts.normalize)?;
        }
        vectors.push(v);
        match &bar {
            Some(b) => b.inc(1),
            None if (i + 1) % 100 == 0 => eprintln!("embedded {}/{}", i + 1, texts.len()),
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    match &a.output {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => write_npy(p, &vectors)?,
        Some(p) => {
            let f = std::fs::File::create(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            write_jsonl(std::io::BufWriter::new(f), &vectors)
                .with_context(|| format!("cannot write {}", p.display()))?
        }
        None => write_jsonl(std::io::stdout().lock(), &vectors)?,
    }
    eprintln!(
        "{} texts, {tokens} tokens, {} dims, {} pooling: {:.1} tokens/s",
        vectors.len(),
        vectors.first().map_or(0, Vec::len),
        pooling.name(),
        tokens as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn write_jsonl(mut w: impl Write, vectors: &[Vec<f32>]) -> Result<()> {
    for (i, v) in vectors.iter().enumerate() {
        serde_json::to_writer(&mut w, &serde_json::json!({"index": i, "embedding": v}))?;
        writeln!(w)?;
    }
    w.flush()?;
    Ok(())
}

/// NumPy's `.npy` format, version 1.0: magic, a header dict padded to 64 bytes, then the
/// (N, D) float32 little-endian data.
fn write_npy(path: &Path, vectors: &[Vec<f32>]) -> Result<()> {
    let d = vectors.first().map_or(0, Vec::len);
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {d}), }}",
        vectors.len()
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + vectors.len() * d * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in vectors {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    llama3::weights::atomic::write_bytes(path, &out)
        .with_context(|| format!("cannot write {}", path.display()))
}
