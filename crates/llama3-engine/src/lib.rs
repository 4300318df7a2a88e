//! `llama3-engine`: one thread owns the model and serves every request through continuous
//! batching. No HTTP here: the server maps OpenAI requests to [`Job`]s and [`Event`]s back to
//! its wire format; the Python package and any other front door can do the same.
//!
//! ```text
//! Engine::submit(Job) ──> queue ──> engine thread: slots (KV caches) ──> Llama::forward_batch
//!        <── Event (token, done, error) per job ──┘
//! ```
//!
//! Each running sequence is a [`llama3::generate::Sequence`] (sampling, log-probabilities, end
//! tokens, detokenization, stop strings, finish), the same state machine one-sequence
//! generation steps; see [`scheduler`] for what a turn of the loop does.

pub mod metrics;
pub mod prefix_cache;
mod scheduler;

use std::sync::Arc;
use std::time::Instant;

use llama3::generate::FinishReason;
use llama3::grammar::Grammar;
use llama3::model::Llama;
use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;
use tokio::sync::mpsc;

pub use metrics::Metrics;

/// One sequence to generate.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// A compiled constraint the output must match (JSON schema, regex, grammar).
    pub grammar: Option<Grammar>,
    /// Prompt-lookup speculation: up to this many draft tokens per step, verified in the
    /// batched forward (0: off). The output is what plain decoding gives.
    pub lookup: usize,
    /// Start from the longest prefix of the prompt a free slot's cache holds (false: run the
    /// whole prompt, as llama.cpp's `cache_prompt: false`).
    pub cache_prompt: bool,
    /// Where this job's [`Event`]s go; dropping the receiver cancels the job.
    pub events: mpsc::UnboundedSender<Event>,
    pub submitted: Instant,
}

/// What a job's receiver gets: tokens as they come, then `Done` (or `Error`).
#[derive(Debug)]
pub enum Event {
    Token(TokenOut),
    Done(Done),
    Error(String),
}

#[derive(Debug)]
pub struct TokenOut {
    pub id: u32,
    /// Text this token completed (empty while a character or a possible stop string is
    /// incomplete).
    pub text: String,
    /// log p(id) under the model's raw distribution (with `logprobs`).
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub struct Done {
    pub finish: FinishReason,
    /// Text held back until the end (it turned out not to be a stop string).
    pub text: String,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the slot's cache (not run again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Slots: sequences decoded together.
    pub parallel: usize,
    /// Positions per slot (prompt + generated).
    pub ctx: usize,
    /// Requests that may wait for a slot before new ones are refused.
    pub queue: usize,
    /// Prompt positions per prefill forward.
    pub prefill_chunk: usize,
    /// Default prompt-lookup drafts per step for jobs ([`Job::lookup`]); 0 = off.
    pub lookup: usize,
    /// Bytes of KV the prefix cache may keep beside the slots ([`prefix_cache`]); 0 = off.
    pub cache_ram: usize,
    /// A draft model (same vocabulary) that drafts up to `draft_max` tokens per step for jobs
    /// without prompt lookup; each slot keeps its own draft cache.
    pub draft: Option<llama3::generate::DraftModel>,
    pub draft_max: usize,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

/// A front door's handle: submit jobs, read the queue depth.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    pub config: EngineConfig,
}

impl Engine {
    /// Starts the engine thread. It ends when every `Engine` clone is dropped and the running
    /// sequences are done.
    pub fn start(
        model: Arc<Llama>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let cfg = config.clone();
        let handle = std::thread::Builder::new()
            .name("llama3-engine".into())
            .spawn(move || scheduler::run(&model, &tokenizer, &cfg, rx, &metrics))?;
        Ok((Self { tx, config }, handle))
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
        })
    }

    /// Jobs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}
