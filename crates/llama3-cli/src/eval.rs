//! `llama3 eval`: prompt-based evaluation (the library's `eval` module says what is scored and
//! how): BIG-bench multiple choice, zero-/k-shot classification, and the Rotten Tomatoes split.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama3::eval::choice::ChoiceProgress;
use llama3::eval::{score_items, ChoiceItem, ItemScores};
use llama3::loader::Loaded;
use llama3::tokenizer::Tokenizer;
use llama3::weights::atomic;

use crate::args::{need_tokenizer, ModelArgs};

mod bigbench;
pub(crate) mod classify;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// BIG-bench JSON multiple-choice tasks: acc and acc_norm (length-normalized), 0- or k-shot.
    Bigbench(Box<bigbench::BigbenchArgs>),
    /// Zero-/k-shot classification of labelled text (CSV or JSONL): each label's word is
    /// scored by log-likelihood after a prompt; accuracy, macro-F1, per-class scores, confusion.
    Classify(Box<classify::ClassifyArgs>),
    /// Write the Rotten Tomatoes train/test split by movie (plot rows dropped) as JSONL files.
    RtSplit(classify::RtSplitArgs),
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.command {
        EvalCommand::Bigbench(a) => bigbench::run(*a),
        EvalCommand::Classify(a) => classify::run(*a),
        EvalCommand::RtSplit(a) => classify::rt_split(a),
    }
}

/// Loads the model and checks it has a tokenizer.
fn load(model: &ModelArgs) -> Result<(Loaded, String)> {
    let name = model.model.clone().unwrap_or_else(|| "default".into());
    let loaded = model.load()?;
    need_tokenizer(&loaded)?;
    Ok((loaded, name))
}

/// Scores `items` with a progress bar (or a log line every few seconds without a terminal).
fn score_with_progress(
    loaded: &Loaded,
    tok: &Tokenizer,
    items: &[ChoiceItem],
    what: &str,
) -> Result<(Vec<ItemScores>, f64, usize)> {
    let bar = crate::progress::bar("eval", "examples");
    if let Some(b) = &bar {
        b.set_length(items.len() as u64);
        b.set_message(what.to_string());
    }
    let start = Instant::now();
    let mut last_log = Instant::now();
    let mut tokens = 0;
    let scores = score_items(&loaded.model, tok, items, |p: &ChoiceProgress| {
        tokens = p.tokens_run;
        match &bar {
            Some(b) => {
                b.set_position(p.done as u64);
                b.set_message(format!("{what} acc {:.3}", p.acc.mean()));
            }
            None => {
                if p.done == p.total || last_log.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "[{what}] {}/{} acc {:.3}, {:.0} tokens/s",
                        p.done,
                        p.total,
                        p.acc.mean(),
                        p.tokens_run as f64 / p.elapsed.as_secs_f64().max(1e-9)
                    );
                    last_log = Instant::now();
                }
            }
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok((scores?, start.elapsed().as_secs_f64(), tokens))
}

/// One JSON line per example: its context, choices, gold scores and log-likelihoods.
fn write_predictions(
    w: &mut dyn Write,
    tag: &serde_json::Value,
    items: &[ChoiceItem],
    scores: &[ItemScores],
    ids: &[usize],
) -> std::io::Result<()> {
    for ((item, s), id) in items.iter().zip(scores).zip(ids) {
        let line = serde_json::json!({
            "run": tag,
            "example": id,
            "source": item.source,
            "context": item.context,
            "choices": item.choices,
            "gold": item.gold,
            "logprobs": s.logprobs,
            "n_tokens": s.n_tokens,
            "pred": s.pred(),
            "pred_norm": s.pred_norm(),
        });
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// `--predictions FILE`: lines gathered in memory (a JSON line per example) and written
/// atomically by [`Predictions::finish`], as every file we write.
struct Predictions {
    path: PathBuf,
    buf: Vec<u8>,
}

impl Predictions {
    fn finish(self) -> Result<()> {
        atomic::write_bytes(&self.path, &self.buf)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Write for Predictions {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FILE for `--predictions`, created empty now so that an unwritable path fails before the
/// evaluation runs.
fn create(path: &Path) -> Result<Predictions> {
    atomic::write_bytes(path, b"").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Predictions {
        path: path.to_path_buf(),
        buf: Vec::new(),
    })
}

/// `\n`, `\t` and `\\` in a flag value become a newline, a tab and a backslash, so templates
/// can be given on one shell line.
fn unescape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            other => bail!(
                "unknown escape \\{} in {s:?} (use \\n, \\t or \\\\)",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_flags() {
        assert_eq!(unescape(r"a\nb\tc\\d").unwrap(), "a\nb\tc\\d");
        assert_eq!(unescape("plain\n").unwrap(), "plain\n");
        assert!(unescape(r"bad\q").is_err());
    }
}
