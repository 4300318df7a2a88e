//! `llama3 prune`: a smaller or sparser model from calibration text (`llama3::prune`): depth
//! (`--drop-layers N`, ShortGPT's block influence), MLP width (`--ffn-keep F`, activation
//! importance as Minitron), or Wanda's unstructured / 2:4 sparsity (`--sparsity S`,
//! `--pattern 2:4`). Writes an HF directory; `--eval FILE` prints the held-out perplexity
//! (llama.cpp's protocol) before and after.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3::perplexity::{perplexity, PerplexityOptions, Protocol};
use llama3::prune::{self, Sparsity};
use llama3::tokenizer::Tokenizer;
use llama3::Llama;

use crate::args::ModelArgs;

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration text (plain text): the statistics that rank layers, channels and weights.
    #[arg(long, value_name = "FILE")]
    pub calib: PathBuf,
    /// Output HF directory (config.json, model.safetensors, tokenizer); `llama3 export` makes
    /// a GGUF of it.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out: PathBuf,
    /// Remove the N layers that change the residual stream least (ShortGPT).
    #[arg(long, value_name = "N")]
    pub drop_layers: Option<usize>,
    /// Keep this fraction of every layer's MLP channels, the most active (e.g. 0.75).
    #[arg(long, value_name = "F")]
    pub ffn_keep: Option<f64>,
    /// Keep this fraction of every layer's attention heads: whole KV groups (a KV head with
    /// its query heads), the strongest outputs (e.g. 0.67 keeps 2 of SmolLM2-135M's 3 groups).
    #[arg(long, value_name = "F")]
    pub heads_keep: Option<f64>,
    /// Wanda: zero this fraction of each linear's output rows (e.g. 0.5); shapes stay, zeros
    /// are stored densely.
    #[arg(long, value_name = "S")]
    pub sparsity: Option<f64>,
    /// Wanda N:M semi-structured sparsity, e.g. 2:4 (N of every M inputs zeroed).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// Calibration tokens used (from the start of --calib).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub calib_tokens: usize,
    /// Tokens per calibration block.
    #[arg(long, default_value_t = 512, value_name = "T")]
    pub seq_len: usize,
    /// Held-out text: perplexity before and after (llama.cpp's protocol, chunks of 512).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
}

/// The pruning asked for, checked before any work.
enum Plan {
    Structured {
        drop: Option<usize>,
        keep: Option<f64>,
        heads: Option<f64>,
    },
    Wanda(Sparsity),
}

fn plan(a: &PruneArgs) -> Result<Plan> {
    let wanda = match (a.sparsity, &a.pattern) {
        (Some(_), Some(_)) => bail!("give --sparsity or --pattern, not both"),
        (Some(s), None) if !(0.0..1.0).contains(&s) => {
            bail!("--sparsity {s} must be in [0, 1) (the fraction of each row zeroed)")
        }
        (Some(s), None) => Some(Sparsity::Unstructured(s)),
        (None, Some(p)) => {
            let nm = p
                .split_once(':')
                .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
            match nm {
                Some((n, m)) if n > 0 && n < m => Some(Sparsity::NofM(n, m)),
                _ => bail!("--pattern {p:?}: expected N:M with 0 < N < M, e.g. 2:4"),
            }
        }
        (None, None) => None,
    };
    for (flag, v) in [("--ffn-keep", a.ffn_keep), ("--heads-keep", a.heads_keep)] {
        if let Some(k) = v.filter(|k| !(*k > 0.0 && *k <= 1.0)) {
            bail!("{flag} {k} must be in (0, 1] (the fraction kept)");
        }
    }
    let structured = a.drop_layers.is_some() || a.ffn_keep.is_some() || a.heads_keep.is_some();
    match (structured, wanda) {
        (true, Some(_)) => bail!(
            "structured (--drop-layers, --ffn-keep, --heads-keep) and unstructured (--sparsity, \
             --pattern) pruning take separate runs: prune the first's output again"
        ),
        (false, None) => bail!(
            "nothing to do: give --drop-layers, --ffn-keep, --heads-keep, --sparsity or --pattern"
        ),
        (true, None) => Ok(Plan::Structured {
            drop: a.drop_layers,
            keep: a.ffn_keep,
            heads: a.heads_keep,
        }),
        (false, Some(w)) => Ok(Plan::Wanda(w)),
    }
}

pub fn run(a: PruneArgs) -> Result<()> {
    let plan = plan(&a)?;
    if a.seq_len < 2 || a.calib_tokens < a.seq_len {
        bail!("--calib-tokens must hold at least one --seq-len block of 2 or more tokens");
    }
    if a.out.join("config.json").exists() {
        bail!(
            "{} already holds a model; choose another -o",
            a.out.display()
        );
    }
    let calib = std::fs::read_to_string(&a.calib)
        .with_context(|| format!("cannot read {}", a.calib.display()))?;
    let held_out = match &a.eval {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let mut loaded = a.model.load()?;
    let tok = loaded
        .tokenizer
        .take()
        .context("the model has no tokenizer: pass --tokenizer FILE")?;
    let model = &mut loaded.model;
    if let Plan::Structured { drop: Some(n), .. } = plan {
        let layers = model.layers.len();
        if n >= layers {
            bail!("--drop-layers {n}: the model has {layers} layers; at least one must stay");
        }
    }
    model.dequantize()?;
    let params_before = model.config.num_parameters();
    let ids = tok.encode(&calib, true, false)?;
    let blocks: Vec<Vec<u32>> = ids
        .chunks_exact(a.seq_len)
        .take(a.calib_tokens / a.seq_len)
        .map(|c| c.to_vec())
        .collect();
    if blocks.is_empty() {
        bail!(
            "{} gives {} tokens, fewer than one --seq-len block of {}",
            a.calib.display(),
            ids.len(),
            a.seq_len
        );
    }
    let before = match &held_out {
        Some(text) => Some(held_out_ppl(model, &tok, text)?),
        None => None,
    };

    let t0 = Instant::now();
    let bar = crate::progress::bar("calibrate", "blocks");
    let stats = prune::calibrate(model, &blocks, &mut |done, total| match &bar {
        Some(b) => {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
        None if done == total || done % 8 == 0 => eprintln!("calibrate {done}/{total} blocks"),
        None => {}
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "calibration: {} blocks of {} tokens ({} tokens) in {:.1} s",
        blocks.len(),
        a.seq_len,
        stats.tokens,
        t0.elapsed().as_secs_f64()
    );
    match plan {
        Plan::Structured { drop, keep, heads } => {
            if let Some(k) = heads {
                let (h, hkv) = (
                    model.config.num_attention_heads,
                    model.config.num_key_value_heads,
                );
                let (kv, q) = prune::prune_heads(model, &stats, k)?;
                eprintln!(
                    "attention heads: {q} of {h} kept in each layer ({kv} of {hkv} KV groups)"
                );
            }
            // The statistics index the original layers: MLPs first, then the layers go.
            if let Some(k) = keep {
                let f = model.config.intermediate_size;
                let kept = prune::prune_mlp(model, &stats, k)?;
                eprintln!("MLP channels: {kept} of {f} kept in each layer");
            }
            if let Some(n) = drop {
                let bi = stats.block_influence();
                let dropped = prune::drop_layers(model, &stats, n)?;
                let said: Vec<String> = dropped
                    .iter()
                    .map(|&l| format!("{l} ({:.4})", bi[l]))
                    .collect();
                eprintln!("dropped layers (block influence): {}", said.join(", "));
            }
        }
        Plan::Wanda(how) => {
            let zero = prune::wanda(model, &stats, how)?;
            eprintln!(
                "Wanda {}: {:.1}% of the layers' linear weights are zero (dense storage: no \
                 speed gained)",
                match how {
                    Sparsity::Unstructured(s) => format!("{:.0}%", s * 100.0),
                    Sparsity::NofM(n, m) => format!("{n}:{m}"),
                },
                zero * 100.0
            );
        }
    }
    let params_after = model.config.num_parameters();
    eprintln!(
        "parameters: {:.2} M -> {:.2} M",
        params_before as f64 / 1e6,
        params_after as f64 / 1e6
    );
    if let (Some(text), Some(b)) = (&held_out, before) {
        let after = held_out_ppl(model, &tok, text)?;
        eprintln!("held-out perplexity: {b:.4} -> {after:.4}");
    }
    llama3::weights::hf_dir::write_model_dir(&a.out, model, Some(&tok))?;
    eprintln!("pruned model written to {}", a.out.display());
    Ok(())
}

/// Perplexity of `text` by llama.cpp's protocol (chunks of 512, BOS over each chunk's start).
fn held_out_ppl(model: &Llama, tok: &Tokenizer, text: &str) -> Result<f64> {
    let tokens = tok.encode(text, true, false)?;
    let opts = PerplexityOptions {
        protocol: Protocol::LlamaCpp,
        ctx: 512,
        batch: 4,
        bos: if tok.adds_bos() { tok.bos_id() } else { None },
        max_windows: None,
    };
    Ok(perplexity(model, &tokens, &opts, |_| {})?.ppl)
}
