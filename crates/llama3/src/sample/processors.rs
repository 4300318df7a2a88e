//! Element-wise processors: logit bias, min-p, temperature. None needs a sort.

use super::candidates::max_logit;
use super::LogitsProcessor;

/// Add a fixed bias to chosen tokens' logits; a bias of `-inf` bans the token
/// (llama.cpp `llama_sampler_logit_bias`, OpenAI `logit_bias`).
///
/// Entries are applied one by one, so a token listed twice gets both biases, as in llama.cpp.
/// Ids outside the logits row are ignored here; [`super::SamplingParams::validate`] is where
/// they are reported.
#[derive(Clone, Debug, Default)]
pub struct LogitBias {
    biases: Vec<(u32, f32)>,
}

impl LogitBias {
    /// Bias `(token, additive bias)` pairs.
    pub fn new(biases: Vec<(u32, f32)>) -> Self {
        Self { biases }
    }
}

impl LogitsProcessor for LogitBias {
    fn apply(&mut self, logits: &mut [f32]) {
        for &(token, bias) in &self.biases {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
    }
}

/// Keep tokens whose probability is at least `min_p` times the top token's
/// (llama.cpp `llama_sampler_min_p`; Nguyen et al. 2024, "min-p sampling").
///
/// Works on logits: `p_i >= min_p * p_max` is `l_i >= l_max + ln(min_p)`, so it needs
/// neither a softmax nor a sort. `min_p <= 0` is off; the top token always survives, which is
/// llama.cpp's `min_keep = 1`.
#[derive(Clone, Debug)]
pub struct MinP {
    min_p: f32,
}

impl MinP {
    /// Relative threshold in `[0, 1]`; values above 1 act as 1 (keep only the top tokens).
    pub fn new(min_p: f32) -> Self {
        Self { min_p }
    }
}

impl LogitsProcessor for MinP {
    fn apply(&mut self, logits: &mut [f32]) {
        if self.min_p.is_nan() || self.min_p <= 0.0 {
            return;
        }
        let max = max_logit(logits);
        if !max.is_finite() {
            return;
        }
        let min_logit = max + self.min_p.min(1.0).ln();
        for l in logits.iter_mut() {
            // Select, not a conditional store, so it vectorises. -inf is already below;
            // NaN compares false and stays out of play anyway.
            *l = if *l < min_logit {
                f32::NEG_INFINITY
            } else {
                *l
            };
        }
    }
}

/// Divide logits by the temperature: below 1 sharpens, above 1 flattens.
///
/// A temperature `<= 0` keeps only the top token (first one on ties), as llama.cpp's
/// `llama_sampler_temp_impl` does; [`super::Sampler`] turns that case into a plain argmax
/// instead of running this stage.
#[derive(Clone, Debug)]
pub struct Temperature {
    temperature: f32,
}

impl Temperature {
    /// Temperature `> 0`, or `<= 0` for "top token only".
    pub fn new(temperature: f32) -> Self {
        Self { temperature }
    }
}

impl LogitsProcessor for Temperature {
    fn apply(&mut self, logits: &mut [f32]) {
        let t = self.temperature;
        if t == 1.0 {
            return;
        }
        if t <= 0.0 {
            let best = super::argmax(logits) as usize;
            for (i, l) in logits.iter_mut().enumerate() {
                if i != best {
                    *l = f32::NEG_INFINITY;
                }
            }
            return;
        }
        for l in logits.iter_mut() {
            *l /= t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::test_util::{four, kept};
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn logit_bias_table() {
        let base = [1.0, -2.0, 0.5, 3.0];
        type Case = (Vec<(u32, f32)>, [f32; 4]);
        let cases: Vec<Case> = vec![
            (vec![], base),
            (vec![(0, 1.0)], [2.0, -2.0, 0.5, 3.0]),
            (vec![(3, NEG)], [1.0, -2.0, 0.5, NEG]),
            // Listed twice: both apply.
            (vec![(2, 0.25), (2, 0.25)], [1.0, -2.0, 1.0, 3.0]),
            // Out of range: ignored, no panic.
            (vec![(9, 5.0), (1, -1.0)], [1.0, -3.0, 0.5, 3.0]),
        ];
        for (biases, want) in cases {
            let mut logits = base;
            LogitBias::new(biases.clone()).apply(&mut logits);
            assert_eq!(logits, want, "biases {biases:?}");
        }
    }

    #[test]
    fn min_p_table() {
        // p = [0.4, 0.3, 0.2, 0.1]; keep p_i >= min_p * 0.4.
        let cases: Vec<(f32, Vec<u32>)> = vec![
            (0.0, vec![0, 1, 2, 3]),  // off
            (0.2, vec![0, 1, 2, 3]),  // >= 0.08
            (0.3, vec![0, 1, 2]),     // >= 0.12
            (0.6, vec![0, 1]),        // >= 0.24
            (0.9, vec![0]),           // >= 0.36
            (1.0, vec![0]),           // only the top
            (-1.0, vec![0, 1, 2, 3]), // off
            (f32::NAN, vec![0, 1, 2, 3]),
        ];
        for (min_p, want) in cases {
            let mut logits = four();
            MinP::new(min_p).apply(&mut logits);
            assert_eq!(kept(&logits), want, "min_p {min_p}");
        }
    }

    #[test]
    fn min_p_keeps_top_ties_and_ignores_banned() {
        let mut logits = [2.0, NEG, 2.0, -10.0];
        MinP::new(0.5).apply(&mut logits);
        assert_eq!(logits, [2.0, NEG, 2.0, NEG]);
        let mut all_banned = [NEG; 4];
        MinP::new(0.5).apply(&mut all_banned);
        assert_eq!(all_banned, [NEG; 4]);
    }

    #[test]
    fn temperature_table() {
        let base = [1.0, -2.0, 0.5, NEG];
        let cases: Vec<(f32, [f32; 4])> = vec![
            (1.0, base),
            (0.5, [2.0, -4.0, 1.0, NEG]),
            (2.0, [0.5, -1.0, 0.25, NEG]),
            (0.0, [1.0, NEG, NEG, NEG]),
            (-1.0, [1.0, NEG, NEG, NEG]),
        ];
        for (t, want) in cases {
            let mut logits = base;
            Temperature::new(t).apply(&mut logits);
            assert_eq!(logits, want, "temperature {t}");
        }
        // t <= 0 on a tie keeps the lower id.
        let mut tie = [0.0, 3.0, 3.0, 1.0];
        Temperature::new(0.0).apply(&mut tie);
        assert_eq!(tie, [NEG, 3.0, NEG, NEG]);
    }
}
