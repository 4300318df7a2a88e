//! Sampling: a chain of logits processors and one selector.
//!
//! Modelled on llama.cpp's sampler chain (`src/llama-sampling.cpp`, `common/sampling.cpp`):
//! every processor rewrites the full `(V,)` logits row in place, and a token that a processor
//! filters out gets `f32::NEG_INFINITY`, so later stages and the selector simply ignore it.
//! Working on the dense row (instead of llama.cpp's shrinking candidate array) keeps token id
//! == index, which makes "ties go to the lowest id" and the penalties' lookups trivial.
//!
//! [`Sampler::new`] builds the default chain from [`SamplingParams`] in llama.cpp's order
//! (`common_sampler_init`: logit bias first, then the default `--samplers`): logit bias,
//! penalties, top-k, typical, top-p, min-p, temperature, then [`Select`] (greedy argmax, or a
//! seeded draw from the softmax).
//!
//! Also here: [`top_logprobs`] / [`logprob_of`] for OpenAI-style logprobs (computed on raw
//! model logits, before the chain), and [`StopStrings`] for stop sequences that span token
//! boundaries.
//!
//! ```text
//! params.validate(vocab_size)?;                 // user input is checked once, here
//! let mut sampler = Sampler::new(&params);
//! let mut stops = StopStrings::new(stop_list);
//! sampler.accept_prompt(&prompt_tokens);        // penalties see the prompt
//! loop {
//!     let mut logits = model_forward(..);       // (V,)
//!     let lp = top_logprobs(&logits, 5);        // raw logits, before the chain
//!     let token = sampler.sample(&mut logits);  // chain + select + accept
//!     let (text, stop) = stops.push(&decode(token));
//!     emit(text);
//!     if stop { break }
//! }
//! emit(stops.flush());
//! ```

mod candidates;
mod logprobs;
mod params;
mod penalties;
mod processors;
mod sampler;
mod select;
mod stop;
mod truncate;

pub use logprobs::{log_softmax, log_sum_exp, logprob_of, top_logprobs};
pub use params::SamplingParams;
pub use penalties::{FrequencyPresencePenalty, RepetitionPenalty};
pub use processors::{LogitBias, MinP, Temperature};
pub use sampler::Sampler;
pub use select::{argmax, Dist, Select};
pub use stop::StopStrings;
pub use truncate::{TopK, TopP, TypicalP};

/// One stage of the sampling chain, as llama.cpp's `llama_sampler` (apply + accept).
///
/// `Send` so a sampler can move with its request to a worker thread.
pub trait LogitsProcessor: Send {
    /// Rewrite logits in place: a filtered-out token gets `f32::NEG_INFINITY`.
    fn apply(&mut self, logits: &mut [f32]);

    /// Told the token that was chosen (penalties keep history); the prompt arrives here too.
    fn accept(&mut self, _token: u32) {}
}

/// Processors applied in order; `accept` is forwarded to every one of them.
///
/// A `Chain` is itself a [`LogitsProcessor`], so chains nest.
#[derive(Default)]
pub struct Chain {
    processors: Vec<Box<dyn LogitsProcessor>>,
}

impl Chain {
    /// An empty chain: leaves logits untouched.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a processor; it runs after those already in the chain.
    pub fn push<P: LogitsProcessor + 'static>(&mut self, processor: P) {
        self.processors.push(Box::new(processor));
    }

    /// Builder form of [`Chain::push`].
    pub fn with<P: LogitsProcessor + 'static>(mut self, processor: P) -> Self {
        self.push(processor);
        self
    }

    /// Number of processors, so callers and tests can see which stages a config enabled.
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// True when the chain would leave logits untouched.
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }
}

impl LogitsProcessor for Chain {
    fn apply(&mut self, logits: &mut [f32]) {
        for p in &mut self.processors {
            p.apply(logits);
        }
    }

    fn accept(&mut self, token: u32) {
        for p in &mut self.processors {
            p.accept(token);
        }
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Boxed processors are not `Debug`; the stage count is what a log line needs.
        f.debug_struct("Chain")
            .field("len", &self.processors.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it saw, to check order and forwarding.
    struct Probe {
        add: f32,
        seen: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    }

    impl LogitsProcessor for Probe {
        fn apply(&mut self, logits: &mut [f32]) {
            // Multiply-then-add makes the order of two probes observable.
            for l in logits.iter_mut() {
                *l = *l * 2.0 + self.add;
            }
        }
        fn accept(&mut self, token: u32) {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push(token);
            }
        }
    }

    #[test]
    fn chain_applies_in_order_and_forwards_accept() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut chain = Chain::new()
            .with(Probe {
                add: 1.0,
                seen: seen.clone(),
            })
            .with(Probe {
                add: 10.0,
                seen: seen.clone(),
            });
        assert_eq!(chain.len(), 2);
        let mut logits = vec![0.0, 1.0, -1.0, 0.5];
        chain.apply(&mut logits);
        // ((x * 2 + 1) * 2 + 10)
        assert_eq!(logits, vec![12.0, 16.0, 8.0, 14.0]);
        chain.accept(3);
        assert_eq!(*seen.lock().unwrap(), vec![3, 3]);
    }

    #[test]
    fn empty_chain_is_identity() {
        let mut chain = Chain::new();
        assert!(chain.is_empty());
        let mut logits = vec![0.25, -3.0, f32::NEG_INFINITY, 7.0];
        let before = logits.clone();
        chain.apply(&mut logits);
        assert_eq!(logits, before);
        assert_eq!(format!("{chain:?}"), "Chain { len: 0 }");
    }
}
