//! `llama3 quantize IN OUT --type TYPE`: an HF directory or a GGUF file to a GGUF of one
//! storage type (library: `llama3::quantize`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use llama3::quantize::{QuantType, Quantizer, TensorReport};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input model: an HF model directory (config.json, *.safetensors, tokenizer.json) or a
    /// GGUF file.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output GGUF file. Written to a temporary file beside it and renamed when complete, so
    /// OUT is never left half-written.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// Storage type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k (llama.cpp's Q4_K_M
    /// mixture), q5_k (Q5_K_M), q6_k. Norms stay F32; the LM head gets Q6_K or Q8_0 as
    /// llama-quantize gives it; K-quants fall back to Q5_0/Q5_1/Q8_0 where rows are not
    /// multiples of 256.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// List every tensor with its type instead of a summary.
    #[arg(short, long)]
    pub verbose: bool,
}

/// "attn_q x30, ffn_up x30" for tensor names `blk.N.attn_q.weight`...
fn kinds(ts: &[&TensorReport]) -> String {
    let mut v: Vec<(String, usize)> = Vec::new();
    for t in ts {
        let kind = match t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((_, rest)) => rest.trim_end_matches(".weight").to_string(),
            None => t.name.trim_end_matches(".weight").to_string(),
        };
        match v.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => v.push((kind, 1)),
        }
    }
    let s: Vec<String> = v.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    s.join(", ")
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let ty: QuantType = a.ty.parse()?;
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let start = Instant::now();
    let q = Quantizer::new(&a.input, &a.output, ty)?;
    eprintln!(
        "quantizing {} to {} as {} (llama.cpp {}, file type {})",
        a.input.display(),
        a.output.display(),
        ty,
        ty.llama_cpp_name(),
        ty.ftype()
    );
    for w in q.warnings() {
        eprintln!("warning: {w}");
    }
    let plan = q.tensors();
    if a.verbose {
        for t in &plan {
            eprintln!(
                "  {:<32} {:>14} {:>5} -> {}",
                t.name,
                format!("{:?}", t.shape),
                t.source,
                t.target
            );
        }
    }
    // Fallbacks grouped by (wanted, used), as llama-quantize reports each one.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for t in plan.iter().filter(|t| t.wanted.is_some()) {
        let p = (t.wanted.clone().unwrap_or_default(), t.target.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    for (wanted, used) in &pairs {
        let ts: Vec<&TensorReport> = plan
            .iter()
            .filter(|t| t.wanted.as_ref() == Some(wanted) && &t.target == used)
            .collect();
        eprintln!(
            "fallback: {} tensors {wanted} -> {used} (row length not a multiple of the {wanted} block): {}",
            ts.len(),
            kinds(&ts)
        );
    }

    let bar = crate::progress::bar("quantizing", "tensors");
    let progress = bar.clone().map(|b| {
        let f: llama3::weights::ProgressFn = std::sync::Arc::new(move |done, total| {
            b.set_length(total as u64);
            b.set_position(done as u64);
        });
        f
    });
    let report = q.run(progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
    let types: Vec<String> = report
        .type_counts()
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    eprintln!(
        "wrote {}: {} tensors ({}), {:.1} MiB in {:.1} s",
        report.output.display(),
        report.tensors.len(),
        types.join(", "),
        report.bytes as f64 / (1u64 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    println!("{}", report.output.display());
    Ok(())
}
