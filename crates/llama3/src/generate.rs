//! The generation loop: prefill the prompt (in chunks), then one token per forward, as an
//! iterator of [`Step`]s; and [`generate_text`], which adds detokenization and stop strings.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::model::{KvCache, Llama, Logits};
use crate::sample::{logprob_of, top_logprobs, Sampler, SamplingParams, StopStrings};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

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
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            end_ids: vec![],
            top_logprobs: 0,
            prefill_chunk: 512,
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    pub token: u32,
    /// log p(token) under the model's raw distribution.
    pub logprob: f32,
    /// Top-K (token, log p), most likely first; empty unless asked for.
    pub top_logprobs: Vec<(u32, f32)>,
    /// True when `token` is an end token (it is not part of the answer).
    pub is_end: bool,
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
        let ids = Tensor::new(part, model.device())?.unsqueeze(0)?; // (1, T)
        last = Some(model.forward(&ids, Some(cache), Logits::Last)?);
    }
    let logits = last.ok_or_else(|| Error::Input("empty prompt".into()))?;
    Ok(logits
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// A KV cache and the tokens it holds, kept across calls so that a chat re-runs only what
/// changed since the last turn.
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

    /// Prefills `prompt` reusing the longest cached prefix; returns the last logits (V).
    fn prefill(&mut self, model: &Llama, prompt: &[u32], chunk: usize) -> Result<Vec<f32>> {
        if prompt.len() >= self.cache.capacity() {
            return Err(Error::Input(format!(
                "prompt of {} tokens does not fit the context of {} tokens",
                prompt.len(),
                self.cache.capacity()
            )));
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token is run to get fresh logits.
        let keep = common.min(prompt.len().saturating_sub(1));
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        let logits = prefill(model, &mut self.cache, &prompt[keep..], chunk)?;
        self.tokens.extend_from_slice(&prompt[keep..]);
        Ok(logits)
    }
}

/// Iterator over generated tokens for one sequence. The prompt is processed on creation.
pub struct Generator<'m, 's> {
    model: &'m Llama,
    session: &'s mut Session,
    sampler: Sampler,
    opts: GenerateOptions,
    logits: Vec<f32>,
    /// Token chosen last step, not yet run through the model.
    pending: Option<u32>,
    generated: usize,
    finish: Option<FinishReason>,
    pub prompt_time: Duration,
}

impl<'m, 's> Generator<'m, 's> {
    /// Prefills `prompt` into `session` (reusing its cached prefix).
    pub fn new(
        model: &'m Llama,
        session: &'s mut Session,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Self> {
        let start = Instant::now();
        let logits = session.prefill(model, prompt, opts.prefill_chunk)?;
        let mut sampler = Sampler::new(&opts.sampling);
        sampler.accept_prompt(prompt);
        Ok(Self {
            model,
            session,
            sampler,
            opts,
            logits,
            pending: None,
            generated: 0,
            finish: None,
            prompt_time: start.elapsed(),
        })
    }

    /// Why generation stopped, once the iterator is exhausted.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    fn step(&mut self) -> Result<Option<Step>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if self.generated >= self.opts.max_tokens {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        if let Some(tok) = self.pending.take() {
            let cache = &mut self.session.cache;
            if cache.len() + 1 > cache.capacity() {
                self.finish = Some(FinishReason::Length);
                return Ok(None);
            }
            let ids = Tensor::new(&[tok], self.model.device())?.unsqueeze(0)?;
            let out = self.model.forward(&ids, Some(cache), Logits::Last)?;
            self.session.tokens.push(tok);
            self.logits = out.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        }
        let top = match self.opts.top_logprobs {
            0 => vec![],
            k => top_logprobs(&self.logits, k),
        };
        let raw = self.logits.clone();
        let token = self.sampler.sample(&mut self.logits);
        let logprob = logprob_of(&raw, token);
        self.logits = raw;
        self.generated += 1;
        let is_end = self.opts.end_ids.contains(&token);
        if is_end {
            self.finish = Some(FinishReason::Stop);
        } else {
            self.pending = Some(token);
        }
        Ok(Some(Step {
            token,
            logprob,
            top_logprobs: top,
            is_end,
        }))
    }
}

impl Iterator for Generator<'_, '_> {
    type Item = Result<Step>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(s)) => Some(Ok(s)),
            Ok(None) => None,
            Err(e) => {
                self.finish = Some(FinishReason::Length);
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
    let mut gen = Generator::new(model, session, prompt, opts)?;
    let mut decoder = tokenizer.map(|t| t.decode_stream());
    let mut stops = StopStrings::new(stop.to_vec());
    let mut text = String::new();
    let mut steps = Vec::new();
    let mut stopped = false;
    let start = Instant::now();
    for step in gen.by_ref() {
        let step = step?;
        let is_end = step.is_end;
        let token = step.token;
        steps.push(step);
        if is_end {
            break;
        }
        if let Some(d) = decoder.as_mut() {
            if let Some(piece) = d.step(token)? {
                let (emit, hit) = stops.push(&piece);
                text.push_str(&emit);
                on_text(&emit);
                if hit {
                    stopped = true;
                    break;
                }
            }
        }
    }
    if !stopped {
        if let Some(d) = decoder.as_mut() {
            if let Some(piece) = d.flush()? {
                let (emit, hit) = stops.push(&piece);
                text.push_str(&emit);
                on_text(&emit);
                stopped = hit;
            }
        }
        if !stopped {
            let rest = stops.flush();
            text.push_str(&rest);
            on_text(&rest);
        }
    }
    let finish_reason = if stopped {
        FinishReason::Stop
    } else {
        gen.finish_reason().unwrap_or(FinishReason::Length)
    };
    Ok(Output {
        prompt_ids: prompt.to_vec(),
        ids: steps.iter().map(|s| s.token).collect(),
        text,
        finish_reason,
        steps,
        prompt_seconds: gen.prompt_time.as_secs_f64(),
        gen_seconds: start.elapsed().as_secs_f64(),
    })
}
