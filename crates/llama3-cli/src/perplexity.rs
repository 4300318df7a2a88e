//! `llama3 perplexity`: PPL of a text file, by llama.cpp's protocol or HF's sliding window
//! (the library's `perplexity` module says what each scores).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use llama3::perplexity::{perplexity, plan, PerplexityOptions, Progress, Protocol};

use crate::args::{need_tokenizer, ModelArgs};

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (UTF-8), tokenized whole without parsing special tokens, as
    /// llama-perplexity does.
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,
    /// Context: tokens per chunk (or per window with --stride).
    #[arg(short = 'c', long = "ctx", default_value_t = 512, value_name = "N")]
    pub ctx: usize,
    /// Use HF's sliding window moving by S tokens (scoring only the new tokens of each window)
    /// instead of llama.cpp's independent chunks scored on their second half.
    #[arg(long, value_name = "S")]
    pub stride: Option<usize>,
    /// Evaluate only the first N chunks (windows).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Chunks per forward pass.
    #[arg(short = 'b', long, default_value_t = 1, value_name = "N")]
    pub batch: usize,
    /// Print one JSON object (protocol, ctx, stride, n_tokens, n_scored, ppl, ppl_stderr,
    /// seconds...) on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let loaded = a.model.load()?;
    let tok = need_tokenizer(&loaded)?;
    // llama-perplexity: common_tokenize(ctx, text, add_special = true, parse_special = false).
    let tokens = tok.encode(&text, true, false)?;
    let protocol = match a.stride {
        None => Protocol::LlamaCpp,
        Some(stride) => Protocol::SlidingWindow { stride },
    };
    let opts = PerplexityOptions {
        protocol,
        ctx: a.ctx,
        batch: a.batch,
        bos: if tok.adds_bos() { tok.bos_id() } else { None },
        max_windows: a.chunks,
    };
    // Checked before anything is printed, so a text too short is one error line.
    let n_windows = plan(&loaded.model, tokens.len(), &opts)?.len();
    eprintln!(
        "perplexity: {} tokens ({} BOS), {n_windows} {}",
        tokens.len(),
        if opts.bos.is_some() { "with" } else { "no" },
        match protocol {
            Protocol::LlamaCpp => format!(
                "chunks of {} (llama.cpp protocol: independent chunks, last {} tokens of each scored)",
                a.ctx,
                a.ctx - a.ctx / 2 - 1
            ),
            Protocol::SlidingWindow { stride } => format!(
                "windows of up to {} moving by {stride} (HF sliding window: new tokens scored)",
                a.ctx
            ),
        }
    );
    let bar = crate::progress::bar("perplexity", "tokens");
    let mut last_log = Instant::now();
    let report = perplexity(&loaded.model, &tokens, &opts, |p| match &bar {
        Some(b) => {
            b.set_length(p.tokens_total as u64);
            b.set_position(p.tokens_done as u64);
            b.set_message(format!(
                "chunk {}/{} PPL {:.4}",
                p.windows_done,
                p.windows_total,
                p.stats.ppl()
            ));
        }
        None => {
            let end = p.windows_done == p.windows_total;
            if end || p.windows_done == 1 || last_log.elapsed() >= Duration::from_secs(5) {
                log_line(p);
                last_log = Instant::now();
            }
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    match report.ppl_stderr {
        Some(se) => println!("PPL = {:.4} +/- {se:.5}", report.ppl),
        None => println!("PPL = {:.4}", report.ppl),
    }
    eprintln!(
        "{} tokens scored in {} chunks; {} tokens evaluated in {:.1} s ({:.1} tokens/s)",
        report.n_scored,
        report.n_windows,
        report.n_evaluated,
        report.seconds,
        report.tokens_per_second
    );
    Ok(())
}

/// One plain progress line for logs: `[12/76] PPL 21.3 +/- 0.9, 300 tokens/s, eta 98 s`.
fn log_line(p: &Progress) {
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    let rate = p.tokens_done as f64 / secs;
    let eta = (p.tokens_total - p.tokens_done) as f64 / rate.max(1e-9);
    let se = p
        .stats
        .ppl_stderr()
        .map(|s| format!(" +/- {s:.4}"))
        .unwrap_or_default();
    eprintln!(
        "[{}/{}] PPL {:.4}{se}, {rate:.1} tokens/s, eta {eta:.0} s",
        p.windows_done,
        p.windows_total,
        p.stats.ppl()
    );
}
