//! `llama3 chat`: an interactive conversation on stdin/stdout.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use clap::Args;
use llama3::generate::{generate_text, GenerateOptions, Session};
use llama3::tokenizer::Message;

use crate::args::{need_tokenizer, ConstraintArgs, DraftArgs, ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message at the start of the conversation (default: the template's own, if any).
    #[arg(short, long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Context size in tokens for the whole conversation (capped by the model's).
    #[arg(short = 'c', long, default_value_t = 4096, value_name = "N")]
    pub ctx: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Each answer matches the constraint.
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// Speculative decoding by prompt lookup: up to N draft tokens per forward, copied from the
    /// conversation, verified by the model (same output). 0 = off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lookup: usize,
    #[command(flatten)]
    pub draft: DraftArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let tok = need_tokenizer(&loaded)?;
    if tok.chat_template().is_none() {
        anyhow::bail!("this model has no chat template; use `llama3 generate` instead");
    }
    let model = &loaded.model;
    let grammar = a.constraint.grammar(Some(tok))?;
    let draft = a.draft.load(&a.model, &loaded)?;
    let mut session = Session::new(model, a.ctx)?;
    let mut messages: Vec<Message> = Vec::new();
    let start_messages = |m: &mut Vec<Message>| {
        m.clear();
        if let Some(s) = &a.system {
            m.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
    };
    start_messages(&mut messages);
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chat with {} — /reset starts over, /exit quits",
            loaded.info.path.display()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read stdin")?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                start_messages(&mut messages);
                session.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(Message {
            role: "user".into(),
            content: input.to_string(),
        });
        let prompt = tok.encode_chat(&messages, true)?;
        let opts = GenerateOptions {
            max_tokens: a.sampling.max_tokens,
            sampling: a.sampling.params(model.config.vocab_size)?,
            end_ids: tok.end_ids().to_vec(),
            grammar: grammar.clone(),
            lookup: a.lookup,
            draft: draft.clone(),
            draft_max: a.draft.draft_max,
            ..GenerateOptions::default()
        };
        let out = match generate_text(
            model,
            Some(tok),
            &mut session,
            &prompt,
            opts,
            &a.sampling.stop,
            |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            },
        ) {
            Ok(o) => o,
            Err(e) => {
                // Context full or similar: say so and keep the conversation usable.
                messages.pop();
                eprintln!("\nerror: {e} (use /reset to start over)");
                continue;
            }
        };
        writeln!(stdout)?;
        let n = out.ids.len();
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {n} tokens at {:.1} tok/s]",
            prompt.len(),
            prompt.len() as f64 / out.prompt_seconds.max(1e-9),
            n as f64 / out.gen_seconds.max(1e-9)
        );
        messages.push(Message {
            role: "assistant".into(),
            content: out.text.trim().to_string(),
        });
    }
    Ok(())
}
