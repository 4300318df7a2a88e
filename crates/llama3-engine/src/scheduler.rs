//! The engine's loop. Each request gets a slot: a [`Session`], its own batch-1 KV cache and
//! the tokens it holds. Every turn of the loop
//! 1. admits queued requests into free slots (requests join between decode steps); a request
//!    takes the free slot whose cached tokens share the longest prefix with its prompt and
//!    runs only the rest ([`Session::reuse`], what `llama3 chat` does between turns),
//! 2. drops sequences whose client went away (their slot frees at once),
//! 3. runs one forward for everything that has tokens to feed ([`Llama::forward_batch`]: one
//!    matmul per weight for all rows, attention per sequence): a decode step for every
//!    running sequence, and the prompts of new ones, up to one chunk of prompt tokens per turn
//!    (a long prompt is split across turns, so it does not stall the others),
//! 4. steps each sequence's [`Sequence`] with its logits and streams the token out (a sequence
//!    whose prompt just went in gets its first token).
//!
//! Rows are computed exactly as they would be alone, so greedy output does not depend on
//! what else is running.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use candle_core::Tensor;
use llama3::generate::lookup::Drafter;
use llama3::generate::{FinishReason, Sequence, SequenceOptions, Session};
use llama3::model::{KvCache, Llama};
use llama3::tokenizer::Tokenizer;
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::prefix_cache::{PrefixCache, BLOCK};
use crate::{Done, EngineConfig, Event, Job, Metrics, TokenOut};

/// A running sequence in its slot.
struct Seq<'t> {
    job: Job,
    slot: Session,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Of those, found in the slot's cache at admission.
    cached: usize,
    seq: Sequence<'t>,
    /// Sampled, not yet run through the model.
    pending: Option<u32>,
    /// Prompt-lookup drafting (None: plain decoding).
    drafter: Option<Drafter>,
    /// What a decode step feeds: the pending token and its drafts.
    feed: Vec<u32>,
    last_token: Option<Instant>,
    /// `Done` or an error was sent.
    done: bool,
    /// The client went away mid-sequence.
    cancelled: bool,
    /// The whole prompt went in during the last forward: its blocks go to the prefix cache.
    prompt_done: bool,
}

pub(crate) fn run(
    model: &Llama,
    tok: &Tokenizer,
    cfg: &EngineConfig,
    mut rx: mpsc::Receiver<Job>,
    metrics: &Metrics,
) {
    let mut free: Vec<Session> = Vec::with_capacity(cfg.parallel);
    let mut pool = PrefixCache::new(cfg.cache_ram);
    let mut seqs: Vec<Seq> = Vec::with_capacity(cfg.parallel);
    let mut open = true;
    // Jobs waiting for another job's prompt, which they share, to reach the prefix cache.
    let mut deferred: VecDeque<Job> = VecDeque::new();
    loop {
        // 1. Admit: block only when there is nothing else to do. Waiting jobs first, when
        //    the prompt they wait for is in.
        let mut i = 0;
        while i < deferred.len() && seqs.len() < cfg.parallel {
            if deferred[i].events.is_closed() {
                deferred.remove(i);
                metrics.cancelled.inc();
            } else if waits(&deferred[i], &seqs, &pool) {
                i += 1;
            } else if let Some(job) = deferred.remove(i) {
                seqs.extend(admit(model, tok, cfg, job, &mut free, &mut pool, metrics));
            }
        }
        while open && seqs.len() < cfg.parallel {
            let job = if seqs.is_empty() && deferred.is_empty() {
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
            if waits(&job, &seqs, &pool) {
                deferred.push_back(job);
                continue;
            }
            seqs.extend(admit(model, tok, cfg, job, &mut free, &mut pool, metrics));
        }
        if seqs.is_empty() {
            if open || !deferred.is_empty() {
                continue;
            }
            return;
        }
        metrics.queue_depth.set((rx.len() + deferred.len()) as i64);

        // 2. Cancellation: a closed receiver means the client is gone.
        sweep(&mut seqs, &mut free, &mut pool, metrics);

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
                Some(t) => s.draft(t),
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
                    let starts: Vec<usize> = batch
                        .iter()
                        .scan(0, |at, (s, _)| {
                            let start = *at;
                            *at += s.rows();
                            Some(start)
                        })
                        .collect();
                    batch
                        .into_par_iter()
                        .zip(starts)
                        .for_each(|((s, n), start)| {
                            let rows = logits.narrow(0, start, s.rows());
                            match rows.and_then(|r| r.to_vec2::<f32>()) {
                                Ok(rows) => fed_guarded(s, n, rows, metrics),
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
                        match out.and_then(|l| guarded(|| Ok(l.to_vec2::<f32>()?))) {
                            Ok(rows) => fed_guarded(s, n, rows, metrics),
                            Err(e) => fail(s, &e),
                        }
                    }
                }
                Err(e) => batch.into_iter().for_each(|(s, _)| fail(s, &e)),
            }
        }

        // 4. Prompts that went in are kept in the prefix cache; finished and cancelled
        //    sequences give their slot back (and their answers to the prefix cache).
        for s in seqs.iter_mut().filter(|s| s.prompt_done) {
            s.prompt_done = false;
            keep(&mut pool, &s.slot, metrics);
        }
        sweep(&mut seqs, &mut free, &mut pool, metrics);
    }
}

/// Whether `job` should wait for a running sequence still prefilling a prompt that shares at
/// least one more cache block with its own than the prefix cache holds: once that prompt is in,
/// the shared part comes from the cache instead of being computed twice (requests with a common
/// system prompt arriving together).
fn waits(job: &Job, seqs: &[Seq], pool: &PrefixCache) -> bool {
    if !job.cache_prompt || !pool.enabled() || job.prompt.len() < 2 {
        return false;
    }
    let cached = pool.cached(&job.prompt);
    seqs.iter().any(|s| {
        let shared = s
            .job
            .prompt
            .iter()
            .zip(&job.prompt)
            .take_while(|(a, b)| a == b)
            .count();
        !s.done
            && s.prefilled < s.job.prompt.len()
            && shared.min(job.prompt.len() - 1) >= cached + BLOCK
    })
}

/// Starts `job` in the free slot whose cached tokens share the longest prefix with its prompt
/// (or a new slot), keeping that prefix in the cache. A job that cannot start gets its error
/// event.
fn admit<'t>(
    model: &Llama,
    tok: &'t Tokenizer,
    cfg: &EngineConfig,
    mut job: Job,
    free: &mut Vec<Session>,
    pool: &mut PrefixCache,
    metrics: &Metrics,
) -> Option<Seq<'t>> {
    let best = (0..free.len()).max_by_key(|&i| free[i].common_prefix(&job.prompt));
    let mut slot = match best {
        Some(i) => free.swap_remove(i),
        None => match Session::new(model, cfg.ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.send(Event::Error(format!("no KV cache: {e}")));
                return None;
            }
        },
    };
    if !job.cache_prompt {
        slot.reset(); // the whole prompt runs again (llama.cpp's cache_prompt: false)
    } else if pool.cached(&job.prompt) > slot.common_prefix(&job.prompt) {
        // The prefix cache holds more of the prompt than this slot: restore it.
        match pool.restore(&job.prompt, &mut slot.cache) {
            Ok(n) => {
                slot.tokens = job.prompt[..n].to_vec();
                metrics.prefix_cache_restores.inc();
            }
            Err(e) => {
                tracing::warn!("prefix cache: cannot restore ({e}); the prompt runs whole");
                slot.reset();
            }
        }
    }
    let prefilled = match slot.reuse(&job.prompt) {
        Ok(n) => n,
        Err(e) => {
            free.push(slot);
            let _ = job.events.send(Event::Error(e.to_string()));
            return None;
        }
    };
    metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
    metrics.prompt_tokens_cached.inc_by(prefilled as u64);
    if prefilled > 0 {
        metrics.prefix_hits.inc();
    }
    let opts = SequenceOptions {
        max_tokens: job.max_tokens,
        sampling: job.sampling.clone(),
        end_ids: tok.end_ids().to_vec(),
        logprobs: job.logprobs,
        stop: job.stop.clone(),
        grammar: job.grammar.take(),
    };
    Some(Seq {
        seq: Sequence::new(opts, Some(tok), &job.prompt),
        drafter: match (&cfg.draft, job.lookup) {
            (_, l) if l > 0 => Some(Drafter::new(l)),
            (Some(d), _) => match Drafter::with_model(d.0.clone(), model, cfg.ctx, cfg.draft_max) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!("no draft model for this request: {e}");
                    None
                }
            },
            (None, _) => None,
        },
        job,
        slot,
        prefilled,
        cached: prefilled,
        pending: None,
        feed: Vec::new(),
        prompt_done: false,
        last_token: None,
        done: false,
        cancelled: false,
    })
}

/// Releases finished sequences (their `Done` was sent) and cancelled ones (client gone),
/// returning their slots, with what their caches hold, to the free list.
fn sweep(seqs: &mut Vec<Seq>, free: &mut Vec<Session>, pool: &mut PrefixCache, metrics: &Metrics) {
    let mut i = 0;
    while i < seqs.len() {
        let s = &seqs[i];
        let cancelled = s.cancelled || (!s.done && s.job.events.is_closed());
        if cancelled || s.done {
            if cancelled {
                metrics.cancelled.inc();
            }
            let slot = seqs.swap_remove(i).slot;
            keep(pool, &slot, metrics);
            free.push(slot);
        } else {
            i += 1;
        }
    }
    metrics.slots_busy.set(seqs.len() as i64);
}

/// Copies the full blocks a slot holds into the prefix cache.
fn keep(pool: &mut PrefixCache, slot: &Session, metrics: &Metrics) {
    match pool.insert(&slot.tokens, &slot.cache) {
        Ok(evicted) => {
            metrics.prefix_cache_evictions.inc_by(evicted);
        }
        Err(e) => tracing::warn!("prefix cache: cannot keep a prompt ({e})"),
    }
    metrics.prefix_cache_bytes.set(pool.bytes() as i64);
}

/// One [`Llama::forward_batch_rows`] over the batch: each sequence's logits after the `n`
/// tokens it feeds (its pending token and drafts, or the next `n` of its prompt), a row per
/// verified position ([`Seq::rows`]), (R, V) f32. Fed tokens are recorded in their slots.
fn forward(model: &Llama, batch: &mut [(&mut Seq, usize)]) -> Result<Tensor, String> {
    let rows: Vec<usize> = batch.iter().map(|(s, _)| s.rows()).collect();
    let (parts, mut caches): (Vec<&[u32]>, Vec<&mut KvCache>) = batch
        .iter_mut()
        .map(|(s, n)| {
            let Seq {
                job,
                slot,
                pending,
                prefilled,
                feed,
                ..
            } = &mut **s;
            let part = match pending {
                Some(_) => &feed[..],
                None => &job.prompt[*prefilled..*prefilled + *n],
            };
            (part, &mut slot.cache)
        })
        .unzip();
    let logits = guarded(|| {
        let logits = model.forward_batch_rows(&parts, &mut caches, &rows)?;
        Ok(logits.to_dtype(candle_core::DType::F32)?)
    })?;
    for (s, n) in batch.iter_mut() {
        let fed = match s.pending {
            Some(_) => s.feed.clone(),
            None => s.job.prompt[s.prefilled..s.prefilled + *n].to_vec(),
        };
        s.slot.tokens.extend(fed);
    }
    Ok(logits)
}

impl Seq<'_> {
    /// Sets what the decode step after `pending` feeds: it, and the drafts that continue it
    /// (as many as the cache and `max_tokens` leave room for). Returns how many tokens.
    fn draft(&mut self, pending: u32) -> usize {
        self.feed.clear();
        self.feed.push(pending);
        if let Some(d) = self.drafter.as_mut() {
            let base = self.slot.cache.len();
            let room = self.slot.cache.capacity().saturating_sub(base + 1);
            let left = self
                .seq
                .max_tokens()
                .saturating_sub(self.seq.generated() + 1);
            self.slot.tokens.push(pending);
            let drafts = d.propose(&self.slot.tokens, room.min(left));
            self.slot.tokens.pop();
            match drafts {
                Ok(drafts) => self.feed.extend(drafts),
                Err(e) => tracing::warn!("no drafts this step: {e}"),
            }
        }
        self.feed.len()
    }

    /// Logits rows this sequence wants from the forward: one per fed token when verifying
    /// drafts, else one.
    fn rows(&self) -> usize {
        match self.pending {
            Some(_) => self.feed.len(),
            None => 1,
        }
    }
}

/// After a forward that fed `n` tokens of `s` (its pending token and drafts, or a piece of its
/// prompt): samples from `rows` (a row per verified position) once the whole prompt is in.
fn fed(s: &mut Seq, n: usize, mut rows: Vec<Vec<f32>>, metrics: &Metrics) {
    if s.pending.take().is_none() {
        s.prefilled += n;
        if s.prefilled < s.job.prompt.len() {
            return;
        }
        s.prompt_done = true;
    }
    if s.feed.len() <= 1 || rows.len() <= 1 {
        let room = s.slot.has_room();
        if let Some(row) = rows.first_mut() {
            next_token(s, row, room, metrics);
        }
        return;
    }
    // Verify drafts as `Generator` does: sample each position in order, keep drafts while
    // they equal what was sampled; the cache keeps the fed token and the accepted drafts.
    let drafts = s.feed[1..].to_vec();
    let base = s.slot.cache.len() - s.feed.len();
    let mut kept = 0;
    for (i, row) in rows.iter_mut().enumerate() {
        let room = base + 1 + i < s.slot.cache.capacity();
        next_token(s, row, room, metrics);
        match s.pending {
            Some(t) if drafts.get(i) == Some(&t) => {
                kept += 1;
                s.pending = None; // already in the cache
            }
            _ => break, // finished, or the sampled token is the next to feed
        }
    }
    s.slot.cache.truncate(base + 1 + kept);
    s.slot.tokens.truncate(base + 1 + kept);
    metrics.draft_tokens.inc_by(drafts.len() as u64);
    metrics.draft_tokens_accepted.inc_by(kept as u64);
    if let Some(d) = s.drafter.as_mut() {
        d.update(drafts.len(), kept);
    }
}

/// [`fed`] under `catch_unwind`: a panic in sampling or detokenizing (a bug) fails this
/// sequence only, instead of the engine and every other request with it.
fn fed_guarded(s: &mut Seq, n: usize, rows: Vec<Vec<f32>>, metrics: &Metrics) {
    let done = std::panic::catch_unwind(AssertUnwindSafe(|| fed(s, n, rows, metrics)));
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

/// Steps the sequence with `logits` (V), streams the token, and either leaves it pending for
/// the next decode step or finishes the sequence. `room`: the cache has a position for it.
fn next_token(s: &mut Seq, logits: &mut [f32], room: bool, metrics: &Metrics) {
    if s.seq.finished().is_some() {
        return finish(s); // nothing to generate (max_tokens 0)
    }
    let now = Instant::now();
    match s.last_token {
        None => metrics
            .ttft_seconds
            .observe((now - s.job.submitted).as_secs_f64()),
        Some(t) => metrics.token_seconds.observe((now - t).as_secs_f64()),
    }
    s.last_token = Some(now);
    let out = match s.seq.sample(logits, room) {
        Ok(out) => out,
        Err(e) => return fail(s, &e.to_string()),
    };
    metrics.generated_tokens.inc();
    let id = out.step.token;
    if !out.step.is_end {
        let sent = s.job.events.send(Event::Token(TokenOut {
            id,
            text: out.text,
            logprob: out.step.logprob,
            top: out.step.top_logprobs,
        }));
        if sent.is_err() {
            s.cancelled = true;
            return;
        }
    }
    match s.seq.finished() {
        Some(_) => finish(s),
        None => s.pending = Some(id),
    }
}

fn finish(s: &mut Seq) {
    s.pending = None;
    let (text, finish) = match s.seq.finish(FinishReason::Length) {
        Ok(end) => end,
        Err(e) => return fail(s, &e.to_string()),
    };
    s.done = true;
    let _ = s.job.events.send(Event::Done(Done {
        finish,
        text,
        prompt_tokens: s.job.prompt.len(),
        cached_tokens: s.cached,
        completion_tokens: s.seq.generated(),
    }));
}
