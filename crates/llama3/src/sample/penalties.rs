//! Penalties on recently seen tokens (llama.cpp `llama_sampler_penalties`, split in two so each
//! rule is one small struct). Both look at the last `last_n` accepted tokens, prompt included
//! when the caller feeds it through `accept`; `last_n = 0` disables them, as in llama.cpp.

use super::LogitsProcessor;
use std::collections::{HashMap, VecDeque};

/// Window capacity reserved up front; a huge `last_n` grows on demand instead of
/// allocating (or overflowing) at construction.
const MAX_PREALLOC: usize = 4096;

/// Ring of the last `last_n` tokens plus a count per distinct token, so applying a penalty
/// touches only the tokens in the window, not the whole vocab.
#[derive(Clone, Debug, Default)]
struct TokenHistory {
    last_n: usize,
    window: VecDeque<u32>,
    counts: HashMap<u32, u32>,
}

impl TokenHistory {
    fn new(last_n: usize) -> Self {
        Self {
            last_n,
            window: VecDeque::with_capacity(last_n.min(MAX_PREALLOC)),
            counts: HashMap::new(),
        }
    }

    fn push(&mut self, token: u32) {
        if self.last_n == 0 {
            return;
        }
        if self.window.len() == self.last_n {
            if let Some(old) = self.window.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.window.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// `(token, count)` for each distinct token in the window.
    fn counts(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.counts.iter().map(|(&t, &c)| (t as usize, c))
    }
}

/// CTRL-style repetition penalty (Keskar et al. 2019) with llama.cpp's sign fix: a token seen in
/// the window has a positive logit divided by `penalty` and a non-positive one multiplied, so
/// `penalty > 1` always makes it less likely. Applied once per distinct token, whatever its
/// count. `penalty = 1` is off.
#[derive(Clone, Debug)]
pub struct RepetitionPenalty {
    penalty: f32,
    history: TokenHistory,
}

impl RepetitionPenalty {
    /// `penalty` (> 0; 1 = off) over the last `last_n` accepted tokens (0 = off).
    pub fn new(penalty: f32, last_n: usize) -> Self {
        Self {
            penalty,
            history: TokenHistory::new(last_n),
        }
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn apply(&mut self, logits: &mut [f32]) {
        for (t, _) in self.history.counts() {
            if let Some(l) = logits.get_mut(t) {
                // llama.cpp: `logit <= 0 ? logit * penalty : logit / penalty`.
                if *l <= 0.0 {
                    *l *= self.penalty;
                } else {
                    *l /= self.penalty;
                }
            }
        }
    }

    fn accept(&mut self, token: u32) {
        self.history.push(token);
    }
}

/// OpenAI frequency and presence penalties: `logit -= count * frequency + (count > 0) *
/// presence`, with `count` taken over the last `last_n` accepted tokens. Negative values
/// encourage repetition instead.
#[derive(Clone, Debug)]
pub struct FrequencyPresencePenalty {
    frequency: f32,
    presence: f32,
    history: TokenHistory,
}

impl FrequencyPresencePenalty {
    /// Per-occurrence `frequency` and once-per-token `presence` penalties over the last
    /// `last_n` accepted tokens (0 = off).
    pub fn new(frequency: f32, presence: f32, last_n: usize) -> Self {
        Self {
            frequency,
            presence,
            history: TokenHistory::new(last_n),
        }
    }
}

impl LogitsProcessor for FrequencyPresencePenalty {
    fn apply(&mut self, logits: &mut [f32]) {
        for (t, count) in self.history.counts() {
            if let Some(l) = logits.get_mut(t) {
                *l -= count as f32 * self.frequency + self.presence;
            }
        }
    }

    fn accept(&mut self, token: u32) {
        self.history.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn run<P: LogitsProcessor>(mut p: P, history: &[u32], logits: [f32; 4]) -> [f32; 4] {
        for &t in history {
            p.accept(t);
        }
        let mut logits = logits;
        p.apply(&mut logits);
        logits
    }

    #[test]
    fn repetition_penalty_table() {
        let base = [2.0, -1.0, 0.0, 1.0];
        let cases: Vec<(f32, usize, Vec<u32>, [f32; 4])> = vec![
            // Positive divided, negative multiplied, zero stays; count does not matter.
            (2.0, 64, vec![0, 1, 2, 0], [1.0, -2.0, 0.0, 1.0]),
            (1.0, 64, vec![0, 1, 2, 3], base),
            (2.0, 0, vec![0, 1, 2, 3], base),
            // Window of 2 over [0, 1, 2]: only 1 and 2 are penalised.
            (2.0, 2, vec![0, 1, 2], [2.0, -2.0, 0.0, 1.0]),
            // Penalty < 1 rewards repetition.
            (0.5, 64, vec![3], [2.0, -1.0, 0.0, 2.0]),
            // Out-of-vocab ids in the history are ignored.
            (2.0, 64, vec![7, 3], [2.0, -1.0, 0.0, 0.5]),
        ];
        for (penalty, last_n, history, want) in cases {
            let got = run(RepetitionPenalty::new(penalty, last_n), &history, base);
            assert_eq!(got, want, "penalty {penalty} last_n {last_n} {history:?}");
        }
        // A banned token stays banned.
        let got = run(RepetitionPenalty::new(1.5, 4), &[0], [NEG, 0.0, 0.0, 0.0]);
        assert_eq!(got[0], NEG);
    }

    #[test]
    fn frequency_presence_table() {
        let base = [2.0, -1.0, 0.0, 1.0];
        // (frequency, presence, last_n, history, expected logits)
        type Case = (f32, f32, usize, Vec<u32>, [f32; 4]);
        let cases: Vec<Case> = vec![
            // counts {0: 3, 1: 1}: 2 - 3*0.5 - 1 = -0.5; -1 - 0.5 - 1 = -2.5.
            (0.5, 1.0, 64, vec![0, 1, 0, 0], [-0.5, -2.5, 0.0, 1.0]),
            (0.5, 0.0, 64, vec![0, 1, 0, 0], [0.5, -1.5, 0.0, 1.0]),
            (0.0, 1.0, 64, vec![0, 1, 0, 0], [1.0, -2.0, 0.0, 1.0]),
            // Window of 2 over [0, 0, 0, 3]: counts {0: 1, 3: 1}.
            (1.0, 0.5, 2, vec![0, 0, 0, 3], [0.5, -1.0, 0.0, -0.5]),
            (1.0, 1.0, 0, vec![0, 1, 2, 3], base),
            // Negative values encourage.
            (-0.5, 0.0, 64, vec![2, 2], [2.0, -1.0, 1.0, 1.0]),
        ];
        for (freq, presence, last_n, history, want) in cases {
            let p = FrequencyPresencePenalty::new(freq, presence, last_n);
            let got = run(p, &history, base);
            assert_eq!(got, want, "freq {freq} presence {presence} {history:?}");
        }
    }

    #[test]
    fn history_window_evicts_and_counts() {
        let mut h = TokenHistory::new(3);
        for t in [0, 0, 1, 2, 2] {
            h.push(t);
        }
        // Window is [1, 2, 2].
        let mut counts: Vec<(usize, u32)> = h.counts().collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![(1, 1), (2, 2)]);
        assert_eq!(h.window, VecDeque::from(vec![1, 2, 2]));
    }

    #[test]
    fn huge_last_n_does_not_preallocate() {
        let mut p = RepetitionPenalty::new(2.0, usize::MAX);
        p.accept(1);
        let mut logits = [1.0, 1.0, 1.0, 1.0];
        p.apply(&mut logits);
        assert_eq!(logits, [1.0, 0.5, 1.0, 1.0]);
    }
}
