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

use rand::seq::index;

use crate::rng::rng_for;

pub use choice::{score_items, summarize, ChoiceItem, ChoiceSummary, ItemScores};
pub use metrics::{ClassificationReport, ConfusionMatrix, MeanStat};
pub use score::{encode_pair, ContinuationScore, Scorer};

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
