//! `llama3 eval bigbench TASK... [-k 0,3] [--limit N]`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use llama3::eval::bigbench::{self, Task};
use llama3::eval::{subset, summarize, ChoiceSummary};

use super::{create, load, path_str, score_with_progress, write_predictions};
use crate::args::{need_tokenizer, ModelArgs};

#[derive(Args, Debug)]
pub struct BigbenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// BIG-bench JSON tasks: task.json files or task folders (a folder of subtasks, like
    /// arithmetic/, runs each subtask). Only multiple-choice examples (target_scores) are
    /// scored; generative-only tasks are refused.
    #[arg(required = true, value_name = "TASK")]
    pub tasks: Vec<PathBuf>,
    /// Shots: k other examples of the same task, drawn by seed, precede each question. A
    /// comma-separated list runs each (-k 0,3).
    #[arg(
        short = 'k',
        long = "shots",
        value_delimiter = ',',
        default_value = "0",
        value_name = "K"
    )]
    pub shots: Vec<usize>,
    /// Seed of the shot draws, the appended-choice order and the --limit subset.
    #[arg(long, default_value_t = 1234, value_name = "N")]
    pub seed: u64,
    /// Evaluate N examples per task, drawn by seed (not the first N: task files are often
    /// sorted); shots still come from the whole task.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print one JSON object (per task and k: n, acc, acc_stderr, acc_norm, acc_norm_stderr,
    /// chance, seconds) on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write one JSON line per example (context, choices, gold, log-likelihoods,
    /// predictions) to FILE.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct TaskResult {
    task: String,
    path: String,
    k: usize,
    /// Multiple-choice examples in the task after dropping duplicates.
    n_examples: usize,
    n_duplicates: usize,
    n_generative_skipped: usize,
    #[serde(flatten)]
    summary: ChoiceSummary,
    seconds: f64,
    /// Tokens run through the model (shared prompt prefixes once).
    tokens_run: usize,
}

pub fn run(a: BigbenchArgs) -> Result<()> {
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    // Every task is read and checked before the model loads: a bad file is one error line.
    let mut tasks: Vec<Task> = Vec::new();
    for p in &a.tasks {
        tasks.extend(bigbench::load(p)?);
    }
    for t in &tasks {
        for &k in &a.shots {
            if k >= t.examples.len() {
                bail!(
                    "task {}: {k}-shot needs at least {} distinct examples, it has {}",
                    t.name,
                    k + 1,
                    t.examples.len()
                );
            }
        }
    }
    let (loaded, model_name) = load(&a.model)?;
    let tok = need_tokenizer(&loaded)?;
    let mut results = Vec::new();
    let mut preds = a.predictions.as_deref().map(create).transpose()?;
    for t in &tasks {
        let ids = subset(t.examples.len(), a.limit, a.seed);
        for &k in &a.shots {
            let items = ids
                .iter()
                .map(|&i| t.item(i, k, a.seed))
                .collect::<llama3::Result<Vec<_>>>()?;
            let what = format!("{} {k}-shot", t.name);
            let (scores, seconds, tokens_run) = score_with_progress(&loaded, tok, &items, &what)
                .map_err(|e| {
                    e.context(format!("task {} ({}), {k}-shot", t.name, t.path.display()))
                })?;
            let summary = summarize(&items, &scores);
            if !a.json {
                eprintln!(
                    "{what}: acc {:.4} ± {:.4}, acc_norm {:.4} ± {:.4} (n = {}, {seconds:.1} s)",
                    summary.acc,
                    summary.acc_stderr,
                    summary.acc_norm,
                    summary.acc_norm_stderr,
                    summary.n
                );
            }
            if let Some(w) = &mut preds {
                let tag = serde_json::json!({"task": t.name, "k": k});
                write_predictions(w, &tag, &items, &scores, &ids)?;
            }
            results.push(TaskResult {
                task: t.name.clone(),
                path: path_str(&t.path),
                k,
                n_examples: t.examples.len(),
                n_duplicates: t.n_duplicates,
                n_generative_skipped: t.n_generative,
                summary,
                seconds,
                tokens_run,
            });
        }
    }
    if let Some(w) = preds {
        w.finish()?;
    }
    if a.json {
        let out = serde_json::json!({
            "model": model_name,
            "seed": a.seed,
            "limit": a.limit,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("| task | k | n | acc | acc_norm | chance |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &results {
        let s = &r.summary;
        println!(
            "| {} | {} | {} | {:.4} ± {:.4} | {:.4} ± {:.4} | {:.4} |",
            r.task, r.k, s.n, s.acc, s.acc_stderr, s.acc_norm, s.acc_norm_stderr, s.chance
        );
    }
    Ok(())
}
