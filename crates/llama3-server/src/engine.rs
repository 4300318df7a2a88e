//! The batching engine: one thread owns the model and serves every request through continuous
//! batching.
//!
//! Each request gets a slot: its own batch-1 KV cache. Every turn of the loop
//! 1. admits queued requests into free slots (requests join between decode steps),
//! 2. drops sequences whose client went away (their slot frees at once),
//! 3. runs one forward for everything that has tokens to feed ([`Llama::forward_batch`]: one
//!    matmul per weight for all rows, attention per sequence): a decode step for every
//!    running sequence, and the prompts of new ones, up to one chunk of prompt tokens per turn
//!    (a long prompt is split across turns, so it does not stall the others),
//! 4. samples each sequence's next token with its own sampler chain and streams it out
//!    (a sequence whose prompt just went in gets its first token).
//!
//! Rows are computed exactly as they would be alone, so greedy output does not depend on
//! what else is running.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use llama3::generate::FinishReason;
use llama3::model::{KvCache, Llama};
use llama3::sample::{logprob_of, top_logprobs, Sampler, SamplingParams, StopStrings};
use llama3::tokenizer::{DecodeStream, Tokenizer};
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One sequence to generate.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
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
    pub completion_tokens: usize,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Slots: sequences decoded together.
    pub parallel: usize,
    /// Positions per slot (prompt + generated).
    pub ctx: usize,
    /// Requests that may wait for a slot before new ones get 429.
    pub queue: usize,
    /// Prompt positions per prefill forward.
    pub prefill_chunk: usize,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

/// The HTTP side's handle: submit jobs, read the queue depth.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    pub config: EngineConfig,
}

impl Engine {
    /// Starts the engine thread. It ends when every `Engine` clone is dropped and the running
    /// sequences are done.
    pub fn start(
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let cfg = config.clone();
        let handle = std::thread::Builder::new()
            .name("llama3-engine".into())
            .spawn(move || run(&model, &tokenizer, &cfg, rx, &metrics))?;
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

/// A running sequence in its slot.
struct Seq<'t> {
    job: Job,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    sampler: Sampler,
    /// Sampled, not yet run through the model.
    pending: Option<u32>,
    generated: usize,
    decoder: DecodeStream<'t>,
    stops: StopStrings,
    last_token: Option<Instant>,
    /// `Done` or an error was sent.
    done: bool,
    /// The client went away mid-sequence.
    cancelled: bool,
}

fn run(
    model: &Llama,
    tok: &Tokenizer,
    cfg: &EngineConfig,
    mut rx: mpsc::Receiver<Job>,
    metrics: &Metrics,
) {
    let mut free: Vec<KvCache> = Vec::with_capacity(cfg.parallel);
    let mut seqs: Vec<Seq> = Vec::with_capacity(cfg.parallel);
    let mut open = true;
    loop {
        // 1. Admit: block only when there is nothing else to do.
        while open && seqs.len() < cfg.parallel {
            let job = if seqs.is_empty() {
                match rx.blocking_recv() {
                    Some(j) => j,
                    None => {
                        open = false;
                        break;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            if job.events.is_closed() {
                metrics.cancelled.inc();
                continue;
            }
            let cache = match free.pop() {
                Some(c) => c,
                None => match model.new_cache(1, cfg.ctx) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = job.events.send(Event::Error(format!("no KV cache: {e}")));
                        continue;
                    }
                },
            };
            let mut sampler = Sampler::new(&job.sampling);
            sampler.accept_prompt(&job.prompt);
            metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
            seqs.push(Seq {
                stops: StopStrings::new(job.stop.clone()),
                job,
                cache,
                prefilled: 0,
                sampler,
                pending: None,
                generated: 0,
                decoder: tok.decode_stream(),
                last_token: None,
                done: false,
                cancelled: false,
            });
        }
        if seqs.is_empty() {
            if open {
                continue;
            }
            return;
        }
        metrics.queue_depth.set((rx.len()) as i64);

        // 2. Cancellation: a closed receiver means the client is gone.
        sweep(&mut seqs, &mut free, metrics);

        // 3. One forward for the turn: a decode step for every sequence with a token to feed,
        //    and waiting prompts, oldest first, about one chunk of prompt tokens in all (short
        //    prompts start together, a long one is split across turns). Pieces always end at
        //    multiples of the chunk size, so a prompt is cut the same way whatever else waits.
        let chunk = cfg.prefill_chunk.max(1);
        let mut budget = chunk;
        // (sequence, tokens it feeds: its pending one, or the next piece of its prompt)
        let mut batch: Vec<(&mut Seq, usize)> = Vec::new();
        for s in seqs.iter_mut().filter(|s| !s.done) {
            let n = match s.pending {
                Some(_) => 1,
                None if s.prefilled < s.job.prompt.len() && budget > 0 => {
                    let end = (s.prefilled + chunk).min(s.job.prompt.len());
                    if end - s.prefilled > budget && budget < chunk {
                        budget = 0; // the next prompt waits for a turn of its own
                        continue;
                    }
                    budget = budget.saturating_sub(end - s.prefilled);
                    end - s.prefilled
                }
                None => continue,
            };
            batch.push((s, n));
        }
        if !batch.is_empty() {
            metrics.batch_size.observe(batch.len() as f64);
            match forward(model, &mut batch) {
                // Each sequence samples, detokenizes and streams with its own state: all of
                // them at once on the compute threads, which would otherwise wait.
                Ok(logits) => {
                    batch.into_par_iter().enumerate().for_each(|(i, (s, n))| {
                        match logits.get(i).and_then(|row| row.to_vec1::<f32>()) {
                            Ok(mut row) => fed_guarded(s, n, &mut row, tok, metrics),
                            Err(e) => fail(s, &e.to_string()),
                        }
                    })
                }
                // Run alone, each sequence gets its own error and the others go on.
                Err(_) if batch.len() > 1 => {
                    for (s, n) in batch {
                        let mut one = [(s, n)];
                        let out = forward(model, &mut one);
                        let [(s, n)] = one;
                        match out.and_then(|l| guarded(|| Ok(l.get(0)?.to_vec1::<f32>()?))) {
                            Ok(mut row) => fed_guarded(s, n, &mut row, tok, metrics),
                            Err(e) => fail(s, &e),
                        }
                    }
                }
                Err(e) => batch.into_iter().for_each(|(s, _)| fail(s, &e)),
            }
        }

        // 4. Finished and cancelled sequences give their slot back.
        sweep(&mut seqs, &mut free, metrics);
    }
}

/// Releases finished sequences (their `Done` was sent) and cancelled ones (client gone),
/// returning their caches to the free list.
fn sweep(seqs: &mut Vec<Seq>, free: &mut Vec<KvCache>, metrics: &Metrics) {
    let mut i = 0;
    while i < seqs.len() {
        let s = &seqs[i];
        let cancelled = s.cancelled || (!s.done && s.job.events.is_closed());
        if cancelled || s.done {
            if cancelled {
                metrics.cancelled.inc();
            }
            let mut s = seqs.swap_remove(i);
            s.cache.truncate(0);
            free.push(s.cache);
        } else {
            i += 1;
        }
    }
    metrics.slots_busy.set(seqs.len() as i64);
}

/// One [`Llama::forward_batch`] over the batch: each sequence's logits after the `n` tokens
/// it feeds (its pending token, or the next `n` of its prompt), (N, V) f32.
fn forward(model: &Llama, batch: &mut [(&mut Seq, usize)]) -> Result<Tensor, String> {
    let (parts, mut caches): (Vec<&[u32]>, Vec<&mut KvCache>) = batch
        .iter_mut()
        .map(|(s, n)| {
            let Seq {
                job,
                cache,
                pending,
                prefilled,
                ..
            } = &mut **s;
            let part = match pending {
                Some(t) => std::slice::from_ref(&*t),
                None => &job.prompt[*prefilled..*prefilled + *n],
            };
            (part, cache)
        })
        .unzip();
    guarded(|| {
        let logits = model.forward_batch(&parts, &mut caches)?;
        Ok(logits.to_dtype(candle_core::DType::F32)?)
    })
}

/// After a forward that fed `n` tokens of `s` (its pending token, or a piece of its prompt):
/// samples from `logits` once the whole prompt is in.
fn fed(s: &mut Seq, n: usize, logits: &mut [f32], tok: &Tokenizer, metrics: &Metrics) {
    if s.pending.take().is_none() {
        s.prefilled += n;
        if s.prefilled < s.job.prompt.len() {
            return;
        }
    }
    next_token(s, logits, tok, metrics);
}

/// [`fed`] under `catch_unwind`: a panic in sampling or detokenizing (a bug) fails this
/// sequence only, instead of the engine and every other request with it.
fn fed_guarded(s: &mut Seq, n: usize, logits: &mut [f32], tok: &Tokenizer, metrics: &Metrics) {
    let done = std::panic::catch_unwind(AssertUnwindSafe(|| fed(s, n, logits, tok, metrics)));
    if done.is_err() {
        fail(
            s,
            "internal error while sampling (panic); the request was stopped",
        );
    }
}

/// Runs model code so that neither an error nor a panic takes the engine down.
fn guarded<T>(f: impl FnOnce() -> llama3::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("internal error in the model (panic); the request was stopped".into()),
    }
}

/// Ends a sequence with an error; it is released as finished.
fn fail(s: &mut Seq, e: &str) {
    tracing::error!("sequence failed: {e}");
    s.pending = None;
    s.done = true;
    let _ = s.job.events.send(Event::Error(e.to_string()));
}

/// Samples from `logits` (V), streams the token, and either leaves it pending for the next
/// decode step or finishes the sequence.
fn next_token(s: &mut Seq, logits: &mut [f32], tok: &Tokenizer, metrics: &Metrics) {
    let now = Instant::now();
    match s.last_token {
        None => metrics
            .ttft_seconds
            .observe((now - s.job.submitted).as_secs_f64()),
        Some(t) => metrics.token_seconds.observe((now - t).as_secs_f64()),
    }
    s.last_token = Some(now);
    let (logprob, top, id) = match s.job.logprobs {
        Some(k) => {
            let top = top_logprobs(logits, k);
            let raw = logits.to_vec();
            let id = s.sampler.sample(logits);
            (logprob_of(&raw, id), top, id)
        }
        None => (0.0, vec![], s.sampler.sample(logits)),
    };
    s.generated += 1;
    metrics.generated_tokens.inc();
    if tok.is_end(id) {
        return finish(s, FinishReason::Stop);
    }
    let (text, hit) = match s.decoder.step(id) {
        Ok(Some(piece)) => s.stops.push(&piece),
        Ok(None) => (String::new(), false),
        Err(e) => return fail(s, &e.to_string()),
    };
    let sent = s.job.events.send(Event::Token(TokenOut {
        id,
        text,
        logprob,
        top,
    }));
    if sent.is_err() {
        s.cancelled = true;
        return;
    }
    if hit {
        finish(s, FinishReason::Stop)
    } else if s.generated >= s.job.max_tokens || s.cache.len() + 1 > s.cache.capacity() {
        finish(s, FinishReason::Length)
    } else {
        s.pending = Some(id);
    }
}

fn finish(s: &mut Seq, reason: FinishReason) {
    let mut text = String::new();
    if !s.stops.is_stopped() {
        if let Ok(Some(piece)) = s.decoder.flush() {
            let (t, _) = s.stops.push(&piece);
            text.push_str(&t);
        }
        if !s.stops.is_stopped() {
            text.push_str(&s.stops.flush());
        }
    }
    let finish = if s.stops.is_stopped() {
        FinishReason::Stop
    } else {
        reason
    };
    s.pending = None;
    s.done = true;
    let _ = s.job.events.send(Event::Done(Done {
        finish,
        text,
        prompt_tokens: s.job.prompt.len(),
        completion_tokens: s.generated,
    }));
}
