//! Supervised fine-tuning data: JSONL of chats (`{"messages": [{"role", "content"}, ...]}`)
//! rendered with the model's chat template, or of `{"prompt", "completion"}` pairs. The loss
//! counts only what the model should learn to say: assistant turns (their text and the
//! template's end-of-turn marker) or the completion and EOS. Everything else is labelled -100.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llama3::tokenizer::{Message, Tokenizer};
use serde::Deserialize;

use crate::batches::{held_out_count, Dataset, HeldOut};
use crate::loss::IGNORE_INDEX;
use crate::{Error, Result};

/// One training sequence: ids and labels (the id, or -100 where no loss is counted).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Chat { messages: Vec<Message> },
    Pair { prompt: String, completion: String },
}

/// Whether `path` is a fine-tuning JSONL (its first non-empty line has `messages` or
/// `prompt` + `completion`) rather than text for pretraining.
pub fn is_sft_file(path: &Path) -> bool {
    first_jsonl_line(path).is_some_and(|l| serde_json::from_str::<Line>(&l).is_ok())
}

/// The first non-empty line of a `.jsonl` file (None for other files): what decides the
/// data's kind.
pub fn first_jsonl_line(path: &Path) -> Option<String> {
    if path.extension().is_none_or(|e| e != "jsonl") {
        return None;
    }
    let f = std::fs::File::open(path).ok()?;
    std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .find(|l| !l.trim().is_empty())
}

/// Reads and tokenizes every example of `files`, truncated to `max_len` tokens. Examples left
/// with no counted label are dropped; the count of those is returned beside the examples.
pub fn load(files: &[PathBuf], tok: &Tokenizer, max_len: usize) -> Result<(Vec<Example>, usize)> {
    let mut out = Vec::new();
    let mut dropped = 0;
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::io(file, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |m: String| Error::format(file, format!("line {}: {m}", n + 1));
            let parsed: Line = serde_json::from_str(&line).map_err(|_| {
                at(
                    "expected {\"messages\": [{\"role\", \"content\"}, ...]} or \
                    {\"prompt\", \"completion\"}"
                        .into(),
                )
            })?;
            let mut ex = match parsed {
                // A chat with no assistant turn teaches nothing: dropped like an over-long one.
                Line::Chat { messages } if !messages.iter().any(|m| m.role == "assistant") => {
                    dropped += 1;
                    continue;
                }
                Line::Chat { messages } => chat(tok, &messages).map_err(|e| at(e.to_string()))?,
                Line::Pair { prompt, completion } => pair(tok, &prompt, &completion)?,
            };
            ex.ids.truncate(max_len);
            ex.labels.truncate(max_len);
            // The first label is never predicted (the loss shifts by one).
            if ex.labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
                dropped += 1;
                continue;
            }
            out.push(ex);
        }
    }
    Ok((out, dropped))
}

/// Prompt tokens (BOS as the model wants) not counted; completion tokens and EOS counted.
fn pair(tok: &Tokenizer, prompt: &str, completion: &str) -> Result<Example> {
    let mut ids = tok.encode(prompt, true, false)?;
    if tok.adds_bos() && ids.last() == tok.eos_id().as_ref() {
        ids.pop(); // a tokenizer that appends EOS: not after the prompt
    }
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let mut done = tok.encode(completion, false, false)?;
    done.extend(tok.eos_id());
    labels.extend(done.iter().map(|&i| i as i64));
    ids.extend(done);
    Ok(Example { ids, labels })
}

/// The chat rendered with the template; each assistant turn's span is the difference between
/// the rendering through that turn and the rendering up to it with the generation prompt.
fn chat(tok: &Tokenizer, messages: &[Message]) -> llama3::Result<Example> {
    let template = tok
        .chat_template()
        .ok_or_else(|| llama3::Error::Template("this model has no chat template".into()))?;
    let full = template.render(messages, false)?;
    // (text, counted) spans covering `full`.
    let mut spans: Vec<(&str, bool)> = Vec::new();
    let mut pos = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = template.render(&messages[..i], true)?;
        let through = template.render(&messages[..=i], false)?;
        if !through.starts_with(&before) || !full.starts_with(&through) || before.len() < pos {
            return Err(llama3::Error::Template(
                "the chat template does not render a conversation as a prefix of its \
                 continuation, so assistant turns cannot be located"
                    .into(),
            ));
        }
        spans.push((&full[pos..before.len()], false));
        spans.push((&full[before.len()..through.len()], true));
        pos = through.len();
    }
    spans.push((&full[pos..], false));
    let has_bos = tok.bos_token().is_some_and(|b| full.starts_with(b));
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    if !has_bos && tok.adds_bos() {
        ids.extend(tok.bos_id());
        labels.extend(tok.bos_id().map(|_| IGNORE_INDEX));
    }
    for (text, counted) in spans.into_iter().filter(|(t, _)| !t.is_empty()) {
        let part = tok.encode(text, false, true)?;
        labels.extend(
            part.iter()
                .map(|&i| if counted { i as i64 } else { IGNORE_INDEX }),
        );
        ids.extend(part);
    }
    Ok(Example { ids, labels })
}

/// Examples as a dataset: a batch is right-padded with `pad` (labels -100 there).
pub struct Examples {
    pub examples: Vec<Example>,
    pub pad: u32,
}

impl HeldOut for Examples {
    fn split(mut self, fraction: f64) -> (Examples, Option<Examples>) {
        let n = self.examples.len();
        let Some(k) = held_out_count(n, fraction) else {
            return (self, None);
        };
        let examples = self.examples.split_off(n - k);
        let pad = self.pad;
        (self, Some(Examples { examples, pad }))
    }
}

impl Dataset for Examples {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let t = idx
            .iter()
            .map(|&i| self.examples[i].ids.len())
            .max()
            .unwrap_or(1);
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for &i in idx {
            let e = &self.examples[i];
            ids.extend_from_slice(&e.ids);
            ids.extend(std::iter::repeat_n(self.pad, t - e.ids.len()));
            labels.extend_from_slice(&e.labels);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - e.labels.len()));
        }
        let ids = Tensor::from_vec(ids, (idx.len(), t), device)?;
        let labels = Tensor::from_vec(labels, (idx.len(), t), device)?.to_dtype(DType::I64)?;
        Ok((ids, labels))
    }

    fn unit(&self) -> String {
        "examples".into()
    }
}
