//! Sampling configuration as data: one serde struct, llama.cpp's defaults
//! (`common/common.h`, `common_params_sampling`).

use serde::{Deserialize, Serialize};

/// Every knob of the default chain. Missing fields deserialize to their defaults, so a config
/// file or request names only what it changes.
///
/// JSON has no `-inf`: to ban a token through JSON, send a very negative bias (e.g. `-1e30`),
/// which no finite logit survives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; default 0.8. `0` means greedy (argmax, no randomness).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; default 40, `0` = off.
    pub top_k: usize,
    /// Nucleus: keep the smallest set reaching this probability mass; default 0.95, `1` = off.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the top probability; default 0.05, `0` = off.
    pub min_p: f32,
    /// Locally typical sampling mass; default 1 = off.
    pub typical_p: f32,
    /// CTRL repetition penalty over the last `penalty_last_n` tokens; default 1 = off.
    pub repeat_penalty: f32,
    /// OpenAI frequency penalty (per occurrence); default 0 = off.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty (once per seen token); default 0 = off.
    pub presence_penalty: f32,
    /// How many recent tokens (prompt included) the penalties look at; default 64, `0` = off.
    pub penalty_last_n: usize,
    /// `(token id, additive bias)`; `-inf` bans a token.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the draw; default 0, fixed so that runs reproduce unless the caller picks one.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Plain argmax decoding: temperature 0 and every other stage off, for tests, evals and
    /// golden comparisons that must not depend on a seed.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }

    /// True when the selector is argmax (`temperature <= 0`, NaN included, so a bad value can
    /// never turn every logit into NaN).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    /// Check every field against a model's vocabulary size; the error lists every problem,
    /// each naming the field, the allowed range and the value given.
    pub fn validate(&self, vocab_size: usize) -> Result<(), String> {
        let mut errors = Vec::new();
        if vocab_size == 0 {
            errors.push("vocab_size is 0: there is nothing to sample".to_string());
        }
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            errors.push(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {t}"
            ));
        }
        for (name, v) in [("top_p", self.top_p), ("typical_p", self.typical_p)] {
            if !(v > 0.0 && v <= 1.0) {
                errors.push(format!("{name} must be in (0, 1] (1 = off), got {v}"));
            }
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            errors.push(format!("min_p must be in [0, 1] (0 = off), got {m}"));
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            errors.push(format!(
                "repeat_penalty must be a finite number > 0 (1 = off), got {r}"
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !v.is_finite() {
                errors.push(format!("{name} must be a finite number (0 = off), got {v}"));
            }
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= vocab_size {
                errors.push(format!(
                    "logit_bias token {token} is out of range: the vocabulary has {vocab_size} \
                     tokens (ids 0..{})",
                    vocab_size.saturating_sub(1)
                ));
            }
            if bias.is_nan() || bias == f32::INFINITY {
                errors.push(format!(
                    "logit_bias for token {token} must be a finite number or -inf (ban), got {bias}"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invalid sampling parameters: {}",
                errors.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_greedy_are_valid() {
        assert!(SamplingParams::default().validate(128_256).is_ok());
        assert!(SamplingParams::greedy().validate(1).is_ok());
        assert!(SamplingParams::greedy().is_greedy());
        assert!(!SamplingParams::default().is_greedy());
    }

    #[test]
    fn validate_table() {
        type Edit = fn(&mut SamplingParams);
        let cases: Vec<(Edit, &str)> = vec![
            (
                |p| p.temperature = -0.1,
                "temperature must be a finite number >= 0",
            ),
            (|p| p.temperature = f32::NAN, "temperature"),
            (|p| p.temperature = f32::INFINITY, "temperature"),
            (|p| p.top_p = 0.0, "top_p must be in (0, 1]"),
            (
                |p| p.top_p = 1.5,
                "top_p must be in (0, 1] (1 = off), got 1.5",
            ),
            (|p| p.typical_p = -1.0, "typical_p must be in (0, 1]"),
            (|p| p.min_p = 2.0, "min_p must be in [0, 1]"),
            (|p| p.min_p = f32::NAN, "min_p"),
            (
                |p| p.repeat_penalty = 0.0,
                "repeat_penalty must be a finite number > 0",
            ),
            (|p| p.frequency_penalty = f32::NAN, "frequency_penalty"),
            (|p| p.presence_penalty = f32::INFINITY, "presence_penalty"),
            (
                |p| p.logit_bias = vec![(100, 1.0)],
                "token 100 is out of range: the vocabulary has 100 tokens (ids 0..99)",
            ),
            (
                |p| p.logit_bias = vec![(3, f32::INFINITY)],
                "logit_bias for token 3",
            ),
            (
                |p| p.logit_bias = vec![(3, f32::NAN)],
                "logit_bias for token 3",
            ),
        ];
        for (edit, want) in cases {
            let mut p = SamplingParams::default();
            edit(&mut p);
            let err = p.validate(100).expect_err(want);
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        // Allowed edges.
        let ok = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 0.0,
            frequency_penalty: -2.0,
            logit_bias: vec![(99, f32::NEG_INFINITY), (0, -100.0)],
            ..SamplingParams::default()
        };
        assert_eq!(ok.validate(100), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let p = SamplingParams {
            temperature: -1.0,
            top_p: 0.0,
            ..SamplingParams::default()
        };
        let err = p.validate(0).unwrap_err();
        assert!(err.contains("vocab_size is 0"), "{err}");
        assert!(err.contains("temperature"), "{err}");
        assert!(err.contains("top_p"), "{err}");
    }

    #[test]
    fn serde_round_trip_and_partial_input() {
        let p = SamplingParams {
            logit_bias: vec![(5, -2.5)],
            seed: 99,
            ..SamplingParams::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        let back: SamplingParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);

        let partial: SamplingParams =
            serde_json::from_str(r#"{"temperature": 0.0, "logit_bias": [[7, -1e30]]}"#).unwrap();
        assert!(partial.is_greedy());
        assert_eq!(partial.top_k, 40);
        assert_eq!(partial.logit_bias, vec![(7, -1e30)]);
    }
}
