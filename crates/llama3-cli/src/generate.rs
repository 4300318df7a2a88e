//! `llama3 generate`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3::generate::{generate_text, GenerateOptions, Session};

use crate::args::{need_tokenizer, ConstraintArgs, DraftArgs, ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (special tokens such as <|im_start|> in it are recognised).
    #[arg(short, long, value_name = "TEXT", conflicts_with_all = ["file", "prompt_ids"])]
    pub prompt: Option<String>,
    /// Read the prompt from this file (exact bytes).
    #[arg(short, long, value_name = "FILE", conflicts_with = "prompt_ids")]
    pub file: Option<PathBuf>,
    /// Prompt as token ids, e.g. 1,2,3 (for models without a tokenizer).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Do not add the BOS token even if the model asks for one.
    #[arg(long)]
    pub no_bos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// Print one JSON object (prompt ids, generated ids, text, finish reason, timings) instead
    /// of streaming text.
    #[arg(long)]
    pub json: bool,
    /// With --json: the K most likely tokens and their log-probabilities at each step.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_logprobs: usize,
    /// Speculative decoding by prompt lookup: up to N draft tokens per forward, copied from the
    /// prompt and the answer so far, verified by the model (same output; faster when the answer
    /// copies from the prompt). 0 = off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lookup: usize,
    #[command(flatten)]
    pub draft: DraftArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let tok = loaded.tokenizer.as_ref();
    let prompt_ids: Vec<u32> = match (&a.prompt_ids, &a.prompt, &a.file) {
        (Some(ids), _, _) => ids.clone(),
        (None, p, f) => {
            let text = match (p, f) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read prompt file {}", f.display()))?,
                (None, None) => bail!("give a prompt with -p TEXT, -f FILE or --prompt-ids 1,2,3"),
            };
            let tok = need_tokenizer(&loaded)?;
            if a.chat {
                let msg = llama3::tokenizer::Message {
                    role: "user".into(),
                    content: text,
                };
                tok.encode_chat(&[msg], true)?
            } else {
                tok.encode(&text, !a.no_bos, true)?
            }
        }
    };
    let vocab = loaded.model.config.vocab_size;
    let opts = GenerateOptions {
        max_tokens: a.sampling.max_tokens,
        sampling: a.sampling.params(vocab)?,
        end_ids: tok
            .map(|t| t.end_ids().to_vec())
            .unwrap_or_else(|| loaded.model.config.eos_token_ids.clone()),
        top_logprobs: a.top_logprobs,
        grammar: a.constraint.grammar(tok)?,
        lookup: a.lookup,
        draft: a.draft.load(&a.model, &loaded)?,
        draft_max: a.draft.draft_max,
        ..GenerateOptions::default()
    };
    let seed = opts.sampling.seed;
    let mut stdout = std::io::stdout().lock();
    let stream = !a.json;
    let mut session = Session::new(&loaded.model, prompt_ids.len() + opts.max_tokens)?;
    let out = generate_text(
        &loaded.model,
        tok,
        &mut session,
        &prompt_ids,
        opts,
        &a.sampling.stop,
        |piece| {
            if stream {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
    let n = out.ids.len();
    if a.json {
        let steps: Vec<_> = out
            .steps
            .iter()
            .map(|s| {
                let mut v = serde_json::json!({ "id": s.token, "logprob": s.logprob });
                if a.top_logprobs > 0 {
                    v["top_logprobs"] = s
                        .top_logprobs
                        .iter()
                        .map(|(id, lp)| {
                            let piece = tok.and_then(|t| t.id_to_piece(*id));
                            serde_json::json!({ "id": id, "logprob": lp, "piece": piece })
                        })
                        .collect();
                }
                v
            })
            .collect();
        let j = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "finish_reason": out.finish_reason,
            "seed": seed,
            "steps": steps,
            "prompt_tokens_per_second": out.prompt_ids.len() as f64 / out.prompt_seconds.max(1e-9),
            "tokens_per_second": n as f64 / out.gen_seconds.max(1e-9),
            "drafts": {"drafted": out.drafted, "accepted": out.accepted},
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&j)?)?;
    } else {
        writeln!(stdout)?;
        let lookup = match out.drafted {
            0 => String::new(),
            d => format!(" | drafts: {}/{d} accepted", out.accepted),
        };
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | finish: {:?}{lookup}",
            out.prompt_ids.len(),
            out.prompt_ids.len() as f64 / out.prompt_seconds.max(1e-9),
            n,
            n as f64 / out.gen_seconds.max(1e-9),
            out.finish_reason
        );
    }
    Ok(())
}
