//! Log-probabilities for reporting (`--top-logprobs K`, OpenAI `logprobs`). These read the raw
//! model logits, not the chain's output: OpenAI reports the model's distribution, and the chain
//! may have set most of the row to -inf.

use super::candidates::{id_of, is_candidate, max_logit, pack_desc};
use std::collections::BinaryHeap;

/// `ln(sum(exp(logits)))`, the log-softmax normaliser, computed stably around the max (f32
/// `exp`, f64 sum). NaN entries are skipped; -inf when no entry is finite, +inf when one is
/// +inf. Compute it once and subtract it when several tokens' logprobs are needed.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = max_logit(logits);
    if !max.is_finite() {
        return max;
    }
    // `exp` in f32 (the costly part over 128k tokens), the sum in f64.
    let sum: f64 = logits
        .iter()
        .filter(|&&l| is_candidate(l))
        .map(|&l| f64::from((l - max).exp()))
        .sum();
    (f64::from(max) + sum.ln()) as f32
}

/// `logits - log_sum_exp(logits)`: natural-log probabilities of the whole row.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| normalise(l, lse)).collect()
}

/// Log-probability of one token under `softmax(logits)`; -inf for an id outside the row.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    match logits.get(token as usize) {
        Some(&l) => normalise(l, log_sum_exp(logits)),
        None => f32::NEG_INFINITY,
    }
}

/// The `k` most likely tokens with their log-probabilities, most likely first, ties by lower
/// id. O(V log k) with a k-sized heap, so asking for 5 of 128k tokens sorts nothing big.
/// NaN logits rank last.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    // Packed keys rank best-first in ascending order, so this max-heap's top is the worst of
    // the k kept. NaN ranks as -inf.
    let mut heap: BinaryHeap<u64> = BinaryHeap::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        let c = pack_desc(if l.is_nan() { f32::NEG_INFINITY } else { l }, i as u32);
        if heap.len() < k {
            heap.push(c);
        } else if let Some(mut worst) = heap.peek_mut() {
            if c < *worst {
                *worst = c;
            }
        }
    }
    let lse = log_sum_exp(logits);
    heap.into_sorted_vec()
        .into_iter()
        .map(|c| (id_of(c) as u32, normalise(logits[id_of(c)], lse)))
        .collect()
}

/// `logit - lse`, keeping -inf for a row with nothing finite (instead of -inf - -inf = NaN).
fn normalise(logit: f32, lse: f32) -> f32 {
    if lse == f32::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        logit - lse
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::test_util::four;
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn log_softmax_of_known_distribution() {
        let lp = log_softmax(&four());
        for (got, p) in lp.iter().zip([0.4f32, 0.3, 0.2, 0.1]) {
            assert!(close(*got, p.ln()), "{got} vs {}", p.ln());
        }
        // Shift invariance and a large offset that would overflow a naive exp.
        let shifted: Vec<f32> = four().iter().map(|l| l + 1000.0).collect();
        assert!(close(logprob_of(&shifted, 2), 0.2f32.ln()));
    }

    #[test]
    fn logprob_edge_cases() {
        assert!(close(log_sum_exp(&[0.0, 0.0]), 2f32.ln()));
        assert_eq!(log_sum_exp(&[]), NEG);
        assert_eq!(log_sum_exp(&[NEG, NEG]), NEG);
        assert_eq!(logprob_of(&[NEG, NEG], 0), NEG);
        assert_eq!(logprob_of(&[0.0, 0.0], 5), NEG);
        assert_eq!(logprob_of(&[0.0, NEG], 1), NEG);
        assert!(close(logprob_of(&[0.0, f32::NAN, 0.0], 0), 0.5f32.ln()));
    }

    #[test]
    fn top_logprobs_table() {
        // Logits with a tie (ids 1 and 3) and a banned token.
        let logits = [1.0, 3.0, NEG, 3.0];
        let lse = log_sum_exp(&logits);
        let cases: Vec<(usize, Vec<u32>)> = vec![
            (0, vec![]),
            (1, vec![1]),
            (2, vec![1, 3]),
            (3, vec![1, 3, 0]),
            (4, vec![1, 3, 0, 2]),
            (9, vec![1, 3, 0, 2]),
        ];
        for (k, want) in cases {
            let got = top_logprobs(&logits, k);
            let ids: Vec<u32> = got.iter().map(|&(t, _)| t).collect();
            assert_eq!(ids, want, "k {k}");
            for (t, lp) in got {
                assert_eq!(lp, logits[t as usize] - lse);
            }
        }
    }

    #[test]
    fn top_logprobs_matches_full_sort_on_large_row() {
        let logits: Vec<f32> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 997) as f32 * 0.01)
            .collect();
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        ids.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let got: Vec<u32> = top_logprobs(&logits, 50).iter().map(|&(t, _)| t).collect();
        assert_eq!(got, ids[..50].to_vec());
    }
}
