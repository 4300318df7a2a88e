//! Prompt-based evaluation: scoring continuations by log-likelihood and what is built on it.
//!
//! * [`score`]: `log p(continuation | context)` with one context run per question and KV-cache
//!   rewinds between candidates; joint tokenization as lm-evaluation-harness.
//! * [`choice`]: multiple choice by log-likelihood, `acc` and `acc_norm`.
//! * [`bigbench`]: BIG-bench JSON multiple-choice tasks, 0- and k-shot.
//! * [`prompted`]: zero- and k-shot classification with a template and label words.
//! * [`data`]: labelled examples from CSV / JSONL (optionally `.bz2`).
//! * [`metrics`]: accuracy with standard error, confusion matrix, precision / recall / F1.
//! * [`rotten`]: the Rotten Tomatoes train/test split by movie.

pub mod bigbench;
pub mod choice;
pub mod data;
pub mod metrics;
pub mod prompted;
pub mod rotten;
pub mod score;

use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;

pub use choice::{score_items, summarize, ChoiceItem, ChoiceSummary, ItemScores};
pub use metrics::{ClassificationReport, ConfusionMatrix, MeanStat};
pub use score::{encode_pair, ContinuationScore, Scorer};

/// A generator for one purpose (`stream`) of one item (`index`) under `seed`, so that what is
/// drawn for an item does not depend on the other items or on the order they are visited.
/// The three numbers are mixed with SplitMix64's finalizer.
pub(crate) fn rng_for(seed: u64, index: u64, stream: u64) -> StdRng {
    let mut x = seed;
    for v in [index, stream] {
        x = splitmix(x ^ splitmix(v.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    StdRng::seed_from_u64(x)
}

/// SplitMix64's step: a well-mixed 64-bit value for each input (a counter-based generator).
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The indices `0..n` to evaluate: all of them, or `limit` drawn by seed without replacement
/// and put back in order. A random subset, not the first `limit`: task files are often sorted
/// (by operand, by difficulty), so their head is not representative.
pub fn subset(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    match limit {
        Some(l) if l < n => {
            let mut rng = rng_for(seed, 0, 3);
            let mut idx = index::sample(&mut rng, n, l).into_vec();
            idx.sort_unstable();
            idx
        }
        _ => (0..n).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_is_seeded_sorted_and_distinct() {
        assert_eq!(subset(5, None, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(subset(5, Some(9), 1), vec![0, 1, 2, 3, 4]);
        let a = subset(1000, Some(10), 1);
        assert_eq!(a, subset(1000, Some(10), 1));
        assert_ne!(a, subset(1000, Some(10), 2));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[9] < 1000);
    }
}
