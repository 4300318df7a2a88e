//! What the engine tests share: the one-sequence reference, jobs and configs.

#![allow(dead_code)] // each test file uses its part

use std::time::Instant;

use llama3::generate::{generate_text, DraftModel, GenerateOptions, Output, Session};
use llama3::model::Llama;
use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;
use llama3_engine::{EngineConfig, Event, Job};
use tokio::sync::mpsc;

/// `prompt` alone through the one-sequence path, greedy: what the engine must answer.
pub fn alone(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
) -> Output {
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        end_ids: tok.end_ids().to_vec(),
        ..GenerateOptions::default()
    };
    let mut session = Session::new(model, 256).unwrap();
    generate_text(model, Some(tok), &mut session, prompt, opts, stop, |_| {}).unwrap()
}

/// A greedy job and the receiver of its events.
pub fn job(
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
    lookup: usize,
) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: stop.to_vec(),
        logprobs: None,
        grammar: None,
        lookup,
        cache_prompt: true,
        events: tx,
        submitted: Instant::now(),
    };
    (job, rx)
}

/// Slots of 256 positions, a queue of 8.
pub fn config(
    parallel: usize,
    prefill_chunk: usize,
    cache_ram: usize,
    draft: Option<DraftModel>,
) -> EngineConfig {
    EngineConfig {
        parallel,
        ctx: 256,
        queue: 8,
        prefill_chunk,
        lookup: 0,
        cache_ram,
        draft,
        draft_max: 4,
    }
}
