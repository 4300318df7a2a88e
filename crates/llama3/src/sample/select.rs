//! The selector at the end of the chain: greedy argmax or a seeded draw from the softmax.

use super::candidates::is_candidate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Index of the largest logit; ties go to the lowest id, exactly as llama.cpp's
/// `llama_sampler_greedy` (a strict `>` scan from id 0). NaN is never chosen over a number.
/// Returns 0 when every logit is -inf or NaN (or the row is empty).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best = i;
            best_logit = l;
        }
    }
    best as u32
}

/// Draw a token from `softmax(logits)` with a seeded generator (llama.cpp `llama_sampler_dist`).
///
/// Reproducibility: the generator is `rand::rngs::StdRng::seed_from_u64(seed)` and each draw
/// consumes exactly one `f64`, so the same seed and the same logits give the same tokens, run
/// after run. `StdRng`'s algorithm is only promised stable within one `rand` release line, so
/// upgrading `rand` may change the sequence for a given seed.
#[derive(Clone, Debug)]
pub struct Dist {
    /// Boxed: `StdRng` is ~300 bytes and would bloat every [`Select`] and `Sampler`.
    rng: Box<StdRng>,
    /// `(id, weight)` of the tokens in play, in id order; reused between calls, and compact so
    /// that after top-k only k `exp`s are computed.
    weights: Vec<(u32, f32)>,
}

impl Dist {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Box::new(StdRng::seed_from_u64(seed)),
            weights: Vec::new(),
        }
    }

    /// Draw one token. Tokens at -inf (or NaN) have probability 0. When no finite
    /// distribution exists (all filtered, or a +inf logit) this falls back to [`argmax`].
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        self.weights.clear();
        let mut max = f32::NEG_INFINITY;
        for (i, &l) in logits.iter().enumerate() {
            if is_candidate(l) {
                self.weights.push((i as u32, l));
                max = max.max(l);
            }
        }
        if !max.is_finite() {
            return argmax(logits);
        }
        let mut total = 0.0f64;
        for (_, w) in self.weights.iter_mut() {
            *w = (*w - max).exp();
            total += f64::from(*w);
        }
        let target = self.rng.random::<f64>() * total;
        let mut cum = 0.0;
        for &(id, w) in &self.weights {
            cum += f64::from(w);
            if target < cum {
                return id;
            }
        }
        // Rounding left `target` at the very top: the last token with mass.
        self.weights
            .iter()
            .rev()
            .find(|&&(_, w)| w > 0.0)
            .map_or_else(|| argmax(logits), |&(id, _)| id)
    }
}

/// How the final token is chosen.
#[derive(Clone, Debug)]
pub enum Select {
    /// Argmax, ties to the lowest id; no randomness.
    Greedy,
    /// Seeded draw from the softmax of the processed logits.
    Dist(Dist),
}

impl Select {
    /// Choose a token from processed logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match self {
            Select::Greedy => argmax(logits),
            Select::Dist(dist) => dist.pick(logits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::test_util::four;
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn argmax_table() {
        let cases: Vec<([f32; 4], u32)> = vec![
            ([0.1, 0.9, 0.3, -1.0], 1),
            ([1.0, 3.0, 3.0, 2.0], 1), // tie -> lowest id
            ([5.0, 5.0, 5.0, 5.0], 0),
            ([NEG, NEG, -7.0, NEG], 2),
            ([f32::NAN, 1.0, f32::NAN, 0.0], 1),
            ([NEG; 4], 0),
        ];
        for (logits, want) in cases {
            assert_eq!(argmax(&logits), want, "{logits:?}");
            assert_eq!(Select::Greedy.pick(&logits), want);
        }
        assert_eq!(argmax(&[]), 0);
    }

    fn draws(seed: u64, n: usize) -> Vec<u32> {
        let mut d = Dist::new(seed);
        let logits = four();
        (0..n).map(|_| d.pick(&logits)).collect()
    }

    #[test]
    fn same_seed_same_sequence_different_seed_differs() {
        assert_eq!(draws(42, 200), draws(42, 200));
        assert_ne!(draws(42, 200), draws(43, 200));
        // Clones continue identically.
        let mut a = Dist::new(7);
        let _ = a.pick(&four());
        let mut b = a.clone();
        assert_eq!(a.pick(&four()), b.pick(&four()));
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        // Chi-square with 3 degrees of freedom; 16.27 is the 0.1% critical value, and the
        // seed is fixed so the test is deterministic.
        let n = 40_000;
        let mut counts = [0usize; 4];
        for t in draws(1234, n) {
            counts[t as usize] += 1;
        }
        let probs = [0.4, 0.3, 0.2, 0.1];
        let chi2: f64 = counts
            .iter()
            .zip(probs)
            .map(|(&c, p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
    }

    #[test]
    fn never_draws_filtered_tokens() {
        let mut d = Dist::new(5);
        let logits = [NEG, 0.0, f32::NAN, 0.0];
        for _ in 0..1000 {
            let t = d.pick(&logits);
            assert!(t == 1 || t == 3, "drew {t}");
        }
        // Nothing left, or +inf: fall back to argmax.
        assert_eq!(d.pick(&[NEG; 4]), 0);
        assert_eq!(d.pick(&[0.0, f32::INFINITY, 1.0, 0.0]), 1);
        // One survivor is always drawn.
        assert_eq!(d.pick(&[NEG, NEG, -3.0, NEG]), 2);
    }
}
