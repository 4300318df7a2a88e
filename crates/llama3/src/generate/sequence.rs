//! The per-sequence state machine every generation loop drives: logits in, a token with its
//! log-probabilities and the text it completes out, until a finish reason. The one-sequence
//! [`Generator`](super::Generator), `generate_text`, the continuous-batching engine and the
//! Python package all step a [`Sequence`]; none of them samples, detokenizes or matches stop
//! strings on its own.

use crate::grammar::{Grammar, GrammarStats};
use crate::sample::{logprob_of, top_logprobs, Sampler, SamplingParams, StopStrings};
use crate::tokenizer::{DecodeStream, Tokenizer};
use crate::Result;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

/// One generated token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    pub token: u32,
    /// log p(token) under the model's raw distribution (0 when not asked for).
    pub logprob: f32,
    /// Top-K (token, log p), most likely first; empty unless asked for.
    pub top_logprobs: Vec<(u32, f32)>,
    /// True when `token` is an end token (it is not part of the answer).
    pub is_end: bool,
}

/// What one [`Sequence::sample`] gives: the token and the text it completed (empty while a
/// character or a possible stop string is incomplete, and for an end token).
#[derive(Clone, Debug)]
pub struct Sampled {
    pub step: Step,
    pub text: String,
}

/// How one sequence samples and when it ends.
#[derive(Clone, Debug)]
pub struct SequenceOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (the tokenizer's `end_ids`).
    pub end_ids: Vec<u32>,
    /// `Some(k)`: each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Stop strings (not included in the text).
    pub stop: Vec<String>,
    /// A compiled constraint the output must match ([`Grammar::new`]).
    pub grammar: Option<Grammar>,
}

/// One sequence's sampler chain, detokenizer and stop strings, and its finish.
pub struct Sequence<'t> {
    sampler: Sampler,
    end_ids: Vec<u32>,
    logprobs: Option<usize>,
    max_tokens: usize,
    /// None without a tokenizer: tokens only, no text.
    decoder: Option<DecodeStream<'t>>,
    stops: StopStrings,
    grammar: Option<Grammar>,
    /// The last raw logits (V), reused from token to token.
    raw: Vec<f32>,
    generated: usize,
    finish: Option<FinishReason>,
}

impl<'t> Sequence<'t> {
    /// A sequence after `prompt` (penalties see the prompt's tokens).
    pub fn new(opts: SequenceOptions, tokenizer: Option<&'t Tokenizer>, prompt: &[u32]) -> Self {
        let mut sampler = Sampler::new(&opts.sampling);
        sampler.accept_prompt(prompt);
        Self {
            sampler,
            end_ids: opts.end_ids,
            logprobs: opts.logprobs,
            max_tokens: opts.max_tokens,
            decoder: tokenizer.map(|t| t.decode_stream()),
            stops: StopStrings::new(opts.stop),
            grammar: opts.grammar,
            raw: Vec::new(),
            generated: 0,
            finish: (opts.max_tokens == 0).then_some(FinishReason::Length),
        }
    }

    /// Set once the sequence has ended: nothing more is to be sampled or fed.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens sampled so far (an end token included).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The most tokens this sequence samples.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Samples the next token from `logits` (V; changed by the sampler chain). `room`: whether
    /// the cache has a position for it, where it would be fed next. Afterwards
    /// [`Self::finished`] says whether the sequence ended here: an end token or a stop string
    /// (`Stop`), `max_tokens` or no room (`Length`). Call [`Self::finish`] then.
    pub fn sample(&mut self, logits: &mut [f32], room: bool) -> Result<Sampled> {
        let top_logprobs = match self.logprobs {
            Some(k) if k > 0 => top_logprobs(logits, k),
            _ => vec![],
        };
        // The raw logits, for log-probabilities and for a second draw under a grammar mask
        // (one buffer for the whole sequence).
        let keep_raw = self.logprobs.is_some() || self.grammar.is_some();
        if keep_raw {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        let raw = keep_raw.then_some(&self.raw);
        let mut token = self.sampler.pick(logits);
        if let (Some(g), Some(raw)) = (self.grammar.as_mut(), raw) {
            if !g.allows(token)? {
                logits.copy_from_slice(raw);
                g.mask(logits)?;
                token = self.sampler.pick(logits);
            }
            g.consume(token)?;
        }
        self.sampler.accept(token);
        let logprob = match (self.logprobs, raw) {
            (Some(_), Some(raw)) => logprob_of(raw, token),
            _ => 0.0,
        };
        self.generated += 1;
        let is_end = self.end_ids.contains(&token);
        let mut text = String::new();
        if is_end {
            self.finish = Some(FinishReason::Stop);
        } else {
            if let Some(Some(piece)) = self.decoder.as_mut().map(|d| d.step(token)).transpose()? {
                let (emit, hit) = self.stops.push(&piece);
                text = emit;
                if hit {
                    self.finish = Some(FinishReason::Stop);
                }
            }
            // A complete grammar allows only an end token: end here, without another forward.
            if self.finish.is_none() && self.grammar.as_ref().is_some_and(|g| g.is_stopped()) {
                self.finish = Some(FinishReason::Stop);
            }
            if self.finish.is_none() && (self.generated >= self.max_tokens || !room) {
                self.finish = Some(FinishReason::Length);
            }
        }
        let step = Step {
            token,
            logprob,
            top_logprobs,
            is_end,
        };
        Ok(Sampled { step, text })
    }

    /// Where the grammar's time went (None without one).
    pub fn grammar_stats(&self) -> Option<GrammarStats> {
        self.grammar.as_ref().map(|g| g.stats())
    }

    /// Ends the sequence: the text held back (an incomplete character, a suffix that turned
    /// out not to be a stop string) and the finish reason. A sequence stopped before it
    /// finished by itself (an error, the caller's choice) ends with `otherwise`.
    pub fn finish(&mut self, otherwise: FinishReason) -> Result<(String, FinishReason)> {
        let mut text = String::new();
        if !self.stops.is_stopped() {
            if let Some(Some(piece)) = self.decoder.as_mut().map(|d| d.flush()).transpose()? {
                text.push_str(&self.stops.push(&piece).0);
            }
            if !self.stops.is_stopped() {
                text.push_str(&self.stops.flush());
            }
        }
        let reason = match self.stops.is_stopped() {
            true => FinishReason::Stop,
            false => self.finish.unwrap_or(otherwise),
        };
        self.finish = Some(reason);
        Ok((text, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_tokens: usize, end_ids: Vec<u32>) -> SequenceOptions {
        SequenceOptions {
            max_tokens,
            sampling: SamplingParams::greedy(),
            end_ids,
            logprobs: Some(2),
            stop: vec![],
            grammar: None,
        }
    }

    /// Greedy picks the largest logit; an end token finishes with `Stop`, `max_tokens` and a
    /// full cache with `Length`, and log-probabilities are those of the raw logits.
    #[test]
    fn finishes_on_end_length_and_room() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let mut s = Sequence::new(opts(3, vec![1]), None, &[0]);
        let out = s.sample(&mut logits.clone(), true).unwrap();
        assert_eq!((out.step.token, out.step.is_end), (1, true));
        assert_eq!(s.finished(), Some(FinishReason::Stop));
        let want = 2.0 - logits.iter().map(|x| x.exp()).sum::<f32>().ln();
        assert!((out.step.logprob - want).abs() < 1e-6);
        assert_eq!(
            out.step
                .top_logprobs
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2]
        );

        let mut s = Sequence::new(opts(2, vec![]), None, &[0]);
        s.sample(&mut logits.clone(), true).unwrap();
        assert_eq!(s.finished(), None);
        s.sample(&mut logits.clone(), true).unwrap();
        assert_eq!(s.finished(), Some(FinishReason::Length));

        let mut s = Sequence::new(opts(9, vec![]), None, &[0]);
        s.sample(&mut logits.clone(), false).unwrap();
        assert_eq!(
            s.finish(FinishReason::Stop).unwrap().1,
            FinishReason::Length
        );

        let s = Sequence::new(opts(0, vec![]), None, &[0]);
        assert_eq!(s.finished(), Some(FinishReason::Length));
    }
}
