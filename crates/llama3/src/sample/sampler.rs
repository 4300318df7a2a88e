//! `Sampler`: the default chain built from [`SamplingParams`], plus its selector.

use super::{
    Chain, Dist, FrequencyPresencePenalty, LogitBias, LogitsProcessor, MinP, RepetitionPenalty,
    SamplingParams, Select, Temperature, TopK, TopP, TypicalP,
};

/// A chain of processors and the selector at its end; one per generation stream.
#[derive(Debug)]
pub struct Sampler {
    chain: Chain,
    select: Select,
}

impl Sampler {
    /// Build the chain in llama.cpp's order (`common_sampler_init` with the default
    /// `--samplers`): logit bias, penalties, top-k, typical, top-p, min-p, temperature, then a
    /// seeded draw. Stages that are off are not added, so they cost nothing.
    ///
    /// With temperature 0 the selector is argmax. Top-k, top-p and min-p are then skipped:
    /// each always keeps the top token (lowest id on ties), so they cannot change the argmax.
    /// Bias, penalties and typical can, so they stay; this picks exactly what llama.cpp's
    /// `temp <= 0` path picks.
    ///
    /// `params` is not checked here; call [`SamplingParams::validate`] at the boundary where
    /// user input arrives. Out-of-range bias ids are ignored rather than panicking.
    pub fn new(params: &SamplingParams) -> Self {
        let greedy = params.is_greedy();
        let last_n = params.penalty_last_n;
        let mut chain = Chain::new();
        if !params.logit_bias.is_empty() {
            chain.push(LogitBias::new(params.logit_bias.clone()));
        }
        if last_n > 0 && params.repeat_penalty != 1.0 {
            chain.push(RepetitionPenalty::new(params.repeat_penalty, last_n));
        }
        if last_n > 0 && (params.frequency_penalty != 0.0 || params.presence_penalty != 0.0) {
            chain.push(FrequencyPresencePenalty::new(
                params.frequency_penalty,
                params.presence_penalty,
                last_n,
            ));
        }
        if !greedy && params.top_k > 0 {
            chain.push(TopK::new(params.top_k));
        }
        if params.typical_p < 1.0 {
            chain.push(TypicalP::new(params.typical_p));
        }
        if !greedy && params.top_p < 1.0 {
            chain.push(TopP::new(params.top_p));
        }
        if !greedy && params.min_p > 0.0 {
            chain.push(MinP::new(params.min_p));
        }
        let select = if greedy {
            Select::Greedy
        } else {
            if params.temperature != 1.0 {
                chain.push(Temperature::new(params.temperature));
            }
            Select::Dist(Dist::new(params.seed))
        };
        Self { chain, select }
    }

    /// A custom chain and selector, for stages or orders the params do not describe.
    pub fn from_parts(chain: Chain, select: Select) -> Self {
        Self { chain, select }
    }

    /// Feed prompt tokens to the penalties' history (llama.cpp's penalties see whatever is
    /// accepted; feeding the prompt keeps a chat model from echoing it).
    pub fn accept_prompt(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.chain.accept(t);
        }
    }

    /// Record a token that was not sampled here (e.g. forced or injected by the caller).
    pub fn accept(&mut self, token: u32) {
        self.chain.accept(token);
    }

    /// Apply the chain to `logits` (`(V,)`, modified in place) and pick a token; the choice is
    /// accepted. An empty row, or one with every token filtered, yields token 0.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let token = self.pick(logits);
        self.chain.accept(token);
        token
    }

    /// [`Self::sample`] without accepting the choice: the caller may still refuse it (a
    /// grammar) and pick again, then [`Self::accept`]s the token it keeps.
    pub fn pick(&mut self, logits: &mut [f32]) -> u32 {
        self.chain.apply(logits);
        self.select.pick(logits)
    }

    /// The processors, e.g. to check which stages a config enabled.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }
}

#[cfg(test)]
mod tests {
    use super::super::argmax;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_rows(seed: u64, rows: usize, vocab: usize) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rows)
            .map(|_| (0..vocab).map(|_| rng.random_range(-8.0..8.0)).collect())
            .collect()
    }

    #[test]
    fn sampler_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Sampler>();
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = Sampler::new(&SamplingParams::greedy());
        assert!(s.chain().is_empty());
        assert_eq!(s.sample(&mut [0.1, 0.9, 0.3, -1.0]), 1);
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0]), 1); // tie -> lowest id
        for row in random_rows(1, 50, 1000) {
            let want = argmax(&row);
            assert_eq!(s.sample(&mut row.clone()), want);
        }
    }

    #[test]
    fn temperature_zero_behaves_as_greedy() {
        // Default truncation settings, temperature 0, any seed: always the argmax.
        for seed in [0, 1, 2] {
            let params = SamplingParams {
                temperature: 0.0,
                seed,
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(&params);
            assert!(s.chain().is_empty(), "top-k/top-p/min-p are skipped");
            for row in random_rows(seed + 10, 30, 500) {
                assert_eq!(s.sample(&mut row.clone()), argmax(&row));
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams {
            temperature: 1.5,
            seed: 7,
            ..SamplingParams::default()
        };
        let rows = random_rows(3, 100, 64);
        let run = |params: &SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(params);
            rows.iter().map(|r| s.sample(&mut r.clone())).collect()
        };
        assert_eq!(run(&params), run(&params));
        let other = SamplingParams {
            seed: 8,
            ..params.clone()
        };
        assert_ne!(run(&params), run(&other));
    }

    #[test]
    fn default_chain_has_llama_cpp_stages() {
        let params = SamplingParams {
            typical_p: 0.9,
            repeat_penalty: 1.1,
            presence_penalty: 0.5,
            logit_bias: vec![(0, 1.0)],
            ..SamplingParams::default()
        };
        // bias, repeat, freq/presence, top-k, typical, top-p, min-p, temperature.
        assert_eq!(Sampler::new(&params).chain().len(), 8);
        assert_eq!(Sampler::new(&SamplingParams::default()).chain().len(), 4);
        let no_window = SamplingParams {
            penalty_last_n: 0,
            ..params
        };
        assert_eq!(Sampler::new(&no_window).chain().len(), 6);
    }

    #[test]
    fn repetition_penalty_sees_prompt_and_output() {
        let params = SamplingParams {
            repeat_penalty: 4.0,
            penalty_last_n: 8,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(&params);
        s.accept_prompt(&[0]);
        // 2.0 / 4 = 0.5 < 1.5: token 0 loses to token 1.
        assert_eq!(s.sample(&mut [2.0, 1.5, 1.0, 0.0]), 1);
        // Now 0 and 1 are both penalised: 0.5, 0.375, 1.0.
        assert_eq!(s.sample(&mut [2.0, 1.5, 1.0, 0.0]), 2);
    }

    #[test]
    fn logit_bias_bans_and_output_stays_in_play() {
        let params = SamplingParams {
            logit_bias: vec![(1, f32::NEG_INFINITY)],
            temperature: 1.0,
            seed: 3,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&params);
        for _ in 0..200 {
            let mut logits = [0.0, 5.0, 0.0, 0.0];
            let t = s.sample(&mut logits);
            assert_ne!(t, 1);
            assert!(logits[t as usize] > f32::NEG_INFINITY);
        }
    }

    #[test]
    fn from_parts_runs_a_custom_chain() {
        let chain = Chain::new().with(TopK::new(1));
        let mut s = Sampler::from_parts(chain, Select::Dist(Dist::new(0)));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 0.1, 0.3, 0.2]), 2);
        }
    }
}
