//! Generation for one sequence: prefill the prompt (in chunks) into a [`Session`], then one
//! token per forward, as an iterator of [`Step`]s ([`Generator`]); and [`generate_text`], which
//! adds the text. Sampling, end tokens, detokenization, stop strings and finish reasons are the
//! per-sequence state machine in [`sequence`], which the continuous-batching engine drives too.

pub mod lookup;
mod sequence;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use candle_core::DType;

pub use sequence::{FinishReason, Sampled, Sequence, SequenceOptions, Step};

use crate::model::{KvCache, Llama, Logits};
use crate::sample::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (the tokenizer's `end_ids`).
    pub end_ids: Vec<u32>,
    /// How many top log-probabilities to report per step (0 = none).
    pub top_logprobs: usize,
    /// Positions per prefill forward.
    pub prefill_chunk: usize,
    /// A compiled constraint the output must match.
    pub grammar: Option<crate::grammar::Grammar>,
    /// Prompt-lookup speculation: up to this many draft tokens per forward, copied from the
    /// prompt and the answer so far ([`lookup`]); 0 = off. Output is what plain decoding gives.
    pub lookup: usize,
    /// Speculation with a draft model (same vocabulary): up to `draft_max` tokens per forward
    /// that it proposes greedily. Output is what plain decoding gives.
    pub draft: Option<DraftModel>,
    pub draft_max: usize,
}

/// A draft model for speculative decoding, shared by the generations that use it.
#[derive(Clone)]
pub struct DraftModel(pub std::sync::Arc<Llama>);

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DraftModel({} layers)", self.0.config.num_hidden_layers)
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            end_ids: vec![],
            top_logprobs: 0,
            prefill_chunk: 512,
            grammar: None,
            lookup: 0,
            draft: None,
            draft_max: 8,
        }
    }
}

/// Runs `prompt` through the model, appending to `cache`, and returns the last position's
/// logits (V).
pub fn prefill(
    model: &Llama,
    cache: &mut KvCache,
    prompt: &[u32],
    chunk: usize,
) -> Result<Vec<f32>> {
    if prompt.is_empty() {
        return Err(Error::Input(
            "empty prompt: at least one token is needed".into(),
        ));
    }
    cache.reserve(prompt.len())?;
    let mut last = None;
    for part in prompt.chunks(chunk.max(1)) {
        last = Some(model.forward_tokens(part, cache, Logits::Last)?); // (1, 1, V)
    }
    let logits = last.ok_or_else(|| Error::Input("empty prompt".into()))?;
    Ok(logits
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// A KV cache and the tokens it holds, kept across calls so that a new prompt re-runs only
/// what differs from the last one: a chat's next turn, or (in the engine's slots) a request
/// that shares a prefix with the one before.
pub struct Session {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
}

impl Session {
    /// Room for `capacity` positions (capped by the model's context).
    pub fn new(model: &Llama, capacity: usize) -> Result<Self> {
        Ok(Self {
            cache: model.new_cache(1, capacity)?,
            tokens: Vec::new(),
        })
    }

    /// Forget everything.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
    }

    /// Tokens at the start of `prompt` that this session holds already.
    pub fn common_prefix(&self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b);
        common.count()
    }

    /// Keeps the longest cached prefix of `prompt` (at least one token is left to run, for
    /// fresh logits) and drops the rest; returns how many prompt tokens are in the cache. The
    /// caller feeds `prompt[kept..]` and records each token it feeds in [`Self::tokens`].
    pub fn reuse(&mut self, prompt: &[u32]) -> Result<usize> {
        if prompt.len() >= self.cache.capacity() {
            return Err(Error::Input(format!(
                "prompt of {} tokens does not fit the context of {} tokens",
                prompt.len(),
                self.cache.capacity()
            )));
        }
        let keep = self
            .common_prefix(prompt)
            .min(prompt.len().saturating_sub(1));
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        Ok(keep)
    }

    /// Prefills `prompt` reusing the longest cached prefix; returns the last logits (V) and
    /// how many prompt tokens came from the cache.
    fn prefill(
        &mut self,
        model: &Llama,
        prompt: &[u32],
        chunk: usize,
    ) -> Result<(Vec<f32>, usize)> {
        let keep = self.reuse(prompt)?;
        let logits = prefill(model, &mut self.cache, &prompt[keep..], chunk)?;
        self.tokens.extend_from_slice(&prompt[keep..]);
        Ok((logits, keep))
    }

    /// Whether the cache has a position for one more token.
    pub fn has_room(&self) -> bool {
        self.cache.len() < self.cache.capacity()
    }
}

/// Iterator over generated tokens for one sequence. The prompt is processed on creation.
pub struct Generator<'m, 's, 't> {
    model: &'m Llama,
    session: &'s mut Session,
    seq: Sequence<'t>,
    /// Logits for the next token (V).
    logits: Vec<f32>,
    /// Token chosen last step, not yet run through the model.
    pending: Option<u32>,
    /// Tokens sampled from one verify forward, not yet handed out.
    ready: VecDeque<Sampled>,
    /// Drafting by prompt lookup or a draft model (None: plain decoding).
    drafter: Option<lookup::Drafter>,
    pub prompt_time: Duration,
    /// Prompt tokens the session's cache already held (not run again).
    pub cached_tokens: usize,
}

impl<'m, 's> Generator<'m, 's, 'static> {
    /// Prefills `prompt` into `session` (reusing its cached prefix); tokens only, no text.
    pub fn new(
        model: &'m Llama,
        session: &'s mut Session,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Self> {
        Generator::with_text(model, session, prompt, opts, None, &[])
    }
}

impl<'m, 's, 't> Generator<'m, 's, 't> {
    /// [`Self::new`] that also decodes text with `tokenizer` and ends at a stop string.
    pub fn with_text(
        model: &'m Llama,
        session: &'s mut Session,
        prompt: &[u32],
        opts: GenerateOptions,
        tokenizer: Option<&'t Tokenizer>,
        stop: &[String],
    ) -> Result<Self> {
        let start = Instant::now();
        let (logits, cached_tokens) = session.prefill(model, prompt, opts.prefill_chunk)?;
        let drafter = match (opts.draft, opts.lookup) {
            (Some(_), l) if l > 0 => {
                return Err(Error::Input(
                    "speculate with prompt lookup or with a draft model, not both".into(),
                ))
            }
            (Some(d), _) => Some(lookup::Drafter::with_model(
                d.0,
                model,
                session.cache.capacity(),
                opts.draft_max,
            )?),
            (None, 0) => None,
            (None, l) => Some(lookup::Drafter::new(l)),
        };
        let seq_opts = SequenceOptions {
            max_tokens: opts.max_tokens,
            sampling: opts.sampling,
            end_ids: opts.end_ids,
            logprobs: Some(opts.top_logprobs),
            stop: stop.to_vec(),
            grammar: opts.grammar,
        };
        Ok(Self {
            model,
            session,
            seq: Sequence::new(seq_opts, tokenizer, prompt),
            logits,
            pending: None,
            ready: VecDeque::new(),
            drafter,
            prompt_time: start.elapsed(),
            cached_tokens,
        })
    }

    /// Where the grammar's time went (None without one).
    pub fn grammar_stats(&self) -> Option<crate::grammar::GrammarStats> {
        self.seq.grammar_stats()
    }

    /// Draft tokens proposed and accepted so far.
    pub fn drafts(&self) -> (usize, usize) {
        self.drafter
            .as_ref()
            .map_or((0, 0), |d| (d.drafted, d.accepted))
    }

    /// Why generation stopped, once the iterator is exhausted.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.seq.finished()
    }

    /// The next token and the text it completed; None once the sequence has finished.
    pub fn next_token(&mut self) -> Result<Option<Sampled>> {
        if let Some(out) = self.ready.pop_front() {
            return Ok(Some(out));
        }
        if self.seq.finished().is_some() {
            return Ok(None);
        }
        if let Some(tok) = self.pending.take() {
            if self.drafter.is_some() {
                return self.speculate(tok);
            }
            let out = self
                .model
                .forward_tokens(&[tok], &mut self.session.cache, Logits::Last)?;
            self.session.tokens.push(tok);
            self.logits = out.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        }
        let room = self.session.has_room();
        // The sampler changes the logits in place; the next token's come from a new forward.
        let out = self.seq.sample(&mut self.logits, room)?;
        if self.seq.finished().is_none() {
            self.pending = Some(out.step.token);
        }
        Ok(Some(out))
    }

    /// Feeds `tok` with the drafts that continue it in one forward, then samples each position
    /// in order as plain decoding would, keeping drafts while they equal what was sampled.
    /// Under sampling this is speculative sampling with a deterministic draft: a draft is kept
    /// with the target's probability of it, and a mismatch is a draw from the rest of the
    /// distribution, so the output distribution (and, with the same seed, the output) is that
    /// of plain decoding.
    fn speculate(&mut self, tok: u32) -> Result<Option<Sampled>> {
        let base = self.session.cache.len(); // positions before `tok`
        let room_after = self.session.cache.capacity() - base - 1;
        let left = self
            .seq
            .max_tokens()
            .saturating_sub(self.seq.generated() + 1);
        self.session.tokens.push(tok);
        let drafts = match self.drafter.as_mut() {
            Some(d) => d.propose(&self.session.tokens, room_after.min(left))?,
            None => vec![],
        };
        self.session.tokens.extend_from_slice(&drafts);
        let mut fed = Vec::with_capacity(1 + drafts.len());
        fed.push(tok);
        fed.extend_from_slice(&drafts);
        let out = self
            .model
            .forward_tokens(&fed, &mut self.session.cache, Logits::All)?; // (1, 1+k, V)
        let rows = out.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut kept = 0; // drafts accepted
        for (i, mut row) in rows.into_iter().enumerate() {
            let room = base + 1 + i < self.session.cache.capacity();
            let out = self.seq.sample(&mut row, room)?;
            let token = out.step.token;
            self.ready.push_back(out);
            if self.seq.finished().is_some() {
                break;
            }
            if drafts.get(i) == Some(&token) {
                kept += 1;
                continue;
            }
            self.pending = Some(token);
            break;
        }
        if let Some(d) = self.drafter.as_mut() {
            d.update(drafts.len(), kept);
        }
        // The cache keeps `tok` and the accepted drafts.
        self.session.cache.truncate(base + 1 + kept);
        self.session.tokens.truncate(base + 1 + kept);
        Ok(self.ready.pop_front())
    }

    /// Ends generation (at its finish, or early): the text held back and the finish reason.
    pub fn finish(&mut self) -> Result<(String, FinishReason)> {
        self.pending = None;
        self.ready.clear();
        self.seq.finish(FinishReason::Length)
    }
}

impl Iterator for Generator<'_, '_, '_> {
    type Item = Result<Step>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_token() {
            Ok(s) => s.map(|s| Ok(s.step)),
            Err(e) => {
                let _ = self.seq.finish(FinishReason::Length);
                Some(Err(e))
            }
        }
    }
}

/// Result of [`generate_text`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Output {
    pub prompt_ids: Vec<u32>,
    /// Generated ids, an end token included when one ended generation.
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub steps: Vec<Step>,
    pub prompt_seconds: f64,
    pub gen_seconds: f64,
    /// Draft tokens (prompt lookup or a draft model) proposed and accepted.
    pub drafted: usize,
    pub accepted: usize,
}

/// Generates from `prompt`, decoding text as it comes (`on_text` gets each complete piece)
/// and stopping at end tokens, `max_tokens` or a stop string (not included in the text).
/// `session` keeps the KV cache between calls (see [`Session`]).
pub fn generate_text(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    session: &mut Session,
    prompt: &[u32],
    opts: GenerateOptions,
    stop: &[String],
    mut on_text: impl FnMut(&str),
) -> Result<Output> {
    let mut gen = Generator::with_text(model, session, prompt, opts, tokenizer, stop)?;
    let mut text = String::new();
    let mut steps = Vec::new();
    let start = Instant::now();
    while let Some(out) = gen.next_token()? {
        if !out.text.is_empty() {
            text.push_str(&out.text);
            on_text(&out.text);
        }
        steps.push(out.step);
    }
    let (rest, finish_reason) = gen.finish()?;
    text.push_str(&rest);
    on_text(&rest);
    Ok(Output {
        prompt_ids: prompt.to_vec(),
        ids: steps.iter().map(|s| s.token).collect(),
        text,
        finish_reason,
        steps,
        prompt_seconds: gen.prompt_time.as_secs_f64(),
        drafted: gen.drafts().0,
        accepted: gen.drafts().1,
        gen_seconds: start.elapsed().as_secs_f64(),
    })
}
