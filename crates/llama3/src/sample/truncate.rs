//! Truncating processors that rank tokens: top-k, top-p (nucleus), locally typical.
//!
//! Each keeps a reusable buffer of packed candidates, so a call allocates nothing after the
//! first. None sorts the whole vocab: top-k keeps a k-sized heap, top-p and typical sort
//! only the prefix they keep.

use super::candidates::{
    gather_desc, id_of, is_candidate, mask, pack_asc, pack_desc, scan_sorted, Packed, Softmax,
};
use super::LogitsProcessor;
use std::collections::BinaryHeap;

/// Keep the `k` highest logits (llama.cpp `llama_sampler_top_k`); `k = 0` is off.
///
/// Exactly `k` survive: ties at the cut go to the lower id. O(V log k) worst case, about
/// O(V) on real logits.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    buf: Vec<Packed>,
}

impl TopK {
    /// Keep `k` tokens; 0 disables.
    pub fn new(k: usize) -> Self {
        Self { k, buf: Vec::new() }
    }
}

impl LogitsProcessor for TopK {
    fn apply(&mut self, logits: &mut [f32]) {
        if self.k == 0 {
            return;
        }
        // Bounded max-heap of the best k packed candidates, its top the k-th best. One pass;
        // once the heap is full almost every token fails the first float compare.
        self.buf.clear();
        let mut heap = BinaryHeap::from(std::mem::take(&mut self.buf));
        let (mut worst, mut worst_logit) = (Packed::MAX, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l < worst_logit || !is_candidate(l) {
                continue;
            }
            let c = pack_desc(l, i as u32);
            if c >= worst {
                continue;
            }
            if heap.len() < self.k {
                heap.push(c);
            } else if let Some(mut top) = heap.peek_mut() {
                *top = c;
            }
            if heap.len() == self.k {
                worst = heap.peek().copied().unwrap_or(Packed::MAX);
                worst_logit = logits[id_of(worst)];
            }
        }
        let full = heap.len() == self.k;
        self.buf = heap.into_vec();
        if !full {
            return; // at most k tokens in play
        }
        // Mask everything ranked after the cut: lower logit, or the same logit and higher id.
        let cut_id = id_of(worst);
        for (i, l) in logits.iter_mut().enumerate() {
            let after = *l < worst_logit || (*l == worst_logit && i > cut_id);
            *l = if after { f32::NEG_INFINITY } else { *l };
        }
    }
}

/// Nucleus sampling (Holtzman et al. 2019; llama.cpp `llama_sampler_top_p`): keep the
/// smallest set of most likely tokens whose probabilities sum to at least `p`, and at least
/// `min_keep` tokens. `p >= 1` is off.
#[derive(Clone, Debug)]
pub struct TopP {
    p: f32,
    min_keep: usize,
    buf: Vec<Packed>,
}

impl TopP {
    /// Cumulative probability mass to keep, with `min_keep = 1`.
    pub fn new(p: f32) -> Self {
        Self {
            p,
            min_keep: 1,
            buf: Vec::new(),
        }
    }

    /// Keep at least `min_keep` tokens whatever `p` says (llama.cpp's `min_keep`).
    pub fn with_min_keep(mut self, min_keep: usize) -> Self {
        self.min_keep = min_keep;
        self
    }
}

impl LogitsProcessor for TopP {
    fn apply(&mut self, logits: &mut [f32]) {
        if self.p >= 1.0 || self.p.is_nan() {
            return;
        }
        gather_desc(logits, &mut self.buf);
        let Some(softmax) = Softmax::over(logits, &self.buf) else {
            return;
        };
        let (p, min_keep) = (f64::from(self.p), self.min_keep);
        let mut cum = 0.0;
        let kept = scan_sorted(&mut self.buf, |i, t| {
            cum += softmax.prob(logits[t]);
            // llama.cpp: `cum_sum >= p && i + 1 >= min_keep`.
            cum >= p && i + 1 >= min_keep
        });
        mask(logits, &self.buf[kept..]);
    }
}

/// Locally typical sampling (Meister et al. 2022; llama.cpp `llama_sampler_typical`): rank
/// tokens by how close their surprisal `-ln p` is to the entropy `H`, and keep the closest
/// until their probabilities sum to more than `p` (at least `min_keep`). `p >= 1` is off.
///
/// Unlike the other truncations this can drop the most likely token, when it is far less
/// surprising than the distribution's average.
#[derive(Clone, Debug)]
pub struct TypicalP {
    p: f32,
    min_keep: usize,
    /// Candidates ranked by `|-ln p_i - H|` (as f32, like llama.cpp), then lower id.
    buf: Vec<Packed>,
}

impl TypicalP {
    /// Cumulative probability mass to keep, with `min_keep = 1`.
    pub fn new(p: f32) -> Self {
        Self {
            p,
            min_keep: 1,
            buf: Vec::new(),
        }
    }

    /// Keep at least `min_keep` tokens whatever `p` says (llama.cpp's `min_keep`).
    pub fn with_min_keep(mut self, min_keep: usize) -> Self {
        self.min_keep = min_keep;
        self
    }
}

impl LogitsProcessor for TypicalP {
    fn apply(&mut self, logits: &mut [f32]) {
        if self.p >= 1.0 || self.p.is_nan() {
            return;
        }
        gather_desc(logits, &mut self.buf);
        let Some(softmax) = Softmax::over(logits, &self.buf) else {
            return;
        };
        let entropy = softmax.entropy();
        // Re-rank in place by `|-ln p - H|` (as f32, like llama.cpp), then lower id.
        for c in self.buf.iter_mut() {
            let t = id_of(*c);
            let shifted = (-softmax.log_prob(logits[t]) - entropy).abs();
            *c = pack_asc(shifted as f32, t as u32);
        }
        let (p, min_keep) = (f64::from(self.p), self.min_keep);
        let mut cum = 0.0;
        let kept = scan_sorted(&mut self.buf, |i, t| {
            cum += softmax.prob(logits[t]);
            // llama.cpp: strictly greater here, unlike top-p's `>=`.
            cum > p && i + 1 >= min_keep
        });
        mask(logits, &self.buf[kept..]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::test_util::{four, kept};
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn top_k_table() {
        let base = [1.0, 3.0, 2.0, 3.0];
        let cases: Vec<(usize, Vec<u32>)> = vec![
            (0, vec![0, 1, 2, 3]), // off
            (1, vec![1]),          // tie 1/3 -> lower id
            (2, vec![1, 3]),
            (3, vec![1, 2, 3]),
            (4, vec![0, 1, 2, 3]),
            (10, vec![0, 1, 2, 3]),
        ];
        for (k, want) in cases {
            let mut logits = base;
            TopK::new(k).apply(&mut logits);
            assert_eq!(kept(&logits), want, "k {k}");
        }
        // Already-banned tokens do not count towards k.
        let mut logits = [NEG, 3.0, NEG, 1.0];
        TopK::new(2).apply(&mut logits);
        assert_eq!(logits, [NEG, 3.0, NEG, 1.0]);
    }

    #[test]
    fn top_p_table() {
        // p = [0.4, 0.3, 0.2, 0.1]; cumulative 0.4, 0.7, 0.9, 1.0.
        let cases: Vec<(f32, usize, Vec<u32>)> = vec![
            (1.0, 1, vec![0, 1, 2, 3]), // off
            (0.1, 1, vec![0]),
            (0.35, 1, vec![0]),
            (0.5, 1, vec![0, 1]),
            (0.75, 1, vec![0, 1, 2]),
            (0.95, 1, vec![0, 1, 2, 3]),
            (0.1, 3, vec![0, 1, 2]), // min_keep wins
            (0.0, 0, vec![0]),       // first token always reaches cum >= 0
        ];
        for (p, min_keep, want) in cases {
            let mut logits = four();
            TopP::new(p).with_min_keep(min_keep).apply(&mut logits);
            assert_eq!(kept(&logits), want, "p {p} min_keep {min_keep}");
        }
    }

    #[test]
    fn top_p_keeps_surviving_values_and_skips_banned() {
        let mut logits = four();
        logits[0] = NEG; // remaining p = [0.5, 1/3, 1/6] over tokens 1..3
        let want = [NEG, logits[1], logits[2], NEG];
        TopP::new(0.8).apply(&mut logits);
        assert_eq!(logits, want);
    }

    #[test]
    fn typical_table() {
        // H = -sum p ln p = 1.27985; |-ln p - H| = [0.3636, 0.0759, 0.3296, 1.0227],
        // so the typical order is 1, 2, 0, 3 with cumulative p 0.3, 0.5, 0.9, 1.0.
        let cases: Vec<(f32, usize, Vec<u32>)> = vec![
            (1.0, 1, vec![0, 1, 2, 3]), // off
            (0.25, 1, vec![1]),
            (0.45, 1, vec![1, 2]), // drops the most likely token
            (0.6, 1, vec![0, 1, 2]),
            (0.95, 1, vec![0, 1, 2, 3]),
            (0.25, 2, vec![1, 2]), // min_keep wins
        ];
        for (p, min_keep, want) in cases {
            let mut logits = four();
            TypicalP::new(p).with_min_keep(min_keep).apply(&mut logits);
            assert_eq!(kept(&logits), want, "p {p} min_keep {min_keep}");
        }
    }

    #[test]
    fn buffers_are_reused_across_calls_and_sizes() {
        let mut top_p = TopP::new(0.5);
        let mut typical = TypicalP::new(0.45);
        for _ in 0..3 {
            let mut a = four();
            top_p.apply(&mut a);
            assert_eq!(kept(&a), vec![0, 1]);
            let mut b = four();
            typical.apply(&mut b);
            assert_eq!(kept(&b), vec![1, 2]);
        }
        // A shorter row after a longer one.
        let mut short = [0.0f32, 0.0];
        top_p.apply(&mut short);
        assert_eq!(kept(&short), vec![0]);
    }

    /// A 50k-token row with many exact ties (logits on a 1/400 grid), so ties straddle the
    /// cut and the lazy sort's chunk boundaries.
    fn big_row() -> Vec<f32> {
        (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 4_000) as f32 / 400.0)
            .collect()
    }

    /// Reference: fully sort by `(key, id)`, keep the prefix until `stop(cum, n)`.
    fn full_sort_keep(
        logits: &[f32],
        key: impl Fn(f32) -> f64,
        stop: impl Fn(f64, usize) -> bool,
    ) -> Vec<u32> {
        let mut buf = Vec::new();
        gather_desc(logits, &mut buf);
        let softmax = Softmax::over(logits, &buf).unwrap();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (ka, kb) = (key(logits[a as usize]), key(logits[b as usize]));
            ka.total_cmp(&kb).then(a.cmp(&b))
        });
        let mut cum = 0.0;
        let mut n = 0;
        for &t in &order {
            cum += softmax.prob(logits[t as usize]);
            n += 1;
            if stop(cum, n) {
                break;
            }
        }
        let mut kept = order[..n].to_vec();
        kept.sort_unstable();
        kept
    }

    #[test]
    fn large_vocab_matches_full_sort() {
        let logits = big_row();
        for k in [1, 40, 1000, 49_999] {
            let mut fast = logits.clone();
            TopK::new(k).apply(&mut fast);
            let want = full_sort_keep(&logits, |l| -f64::from(l), |_, n| n == k);
            assert_eq!(kept(&fast), want, "top-k {k}");
        }
        for p in [0.1f32, 0.5, 0.9, 0.99] {
            let mut fast = logits.clone();
            TopP::new(p).apply(&mut fast);
            let p64 = f64::from(p);
            let want = full_sort_keep(&logits, |l| -f64::from(l), |cum, _| cum >= p64);
            assert!(want.len() > 256, "nucleus should span chunks at p {p}");
            assert_eq!(kept(&fast), want, "top-p {p}");
        }
        let mut buf = Vec::new();
        gather_desc(&logits, &mut buf);
        let softmax = Softmax::over(&logits, &buf).unwrap();
        let h = softmax.entropy();
        let shifted = |l: f32| f64::from((-softmax.log_prob(l) - h).abs() as f32);
        for p in [0.2f32, 0.6, 0.95] {
            let mut fast = logits.clone();
            TypicalP::new(p).apply(&mut fast);
            let p64 = f64::from(p);
            let want = full_sort_keep(&logits, shifted, |cum, _| cum > p64);
            assert_eq!(kept(&fast), want, "typical {p}");
        }
    }
}
