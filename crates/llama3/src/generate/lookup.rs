//! Prompt-lookup drafts (n-gram speculation, as llama.cpp's `--lookup` and transformers'
//! `prompt_lookup_num_tokens`): the tokens that followed the last earlier occurrence of the
//! sequence's trailing n-gram, which pay off when the answer copies from its input (rewriting a
//! paragraph, editing code). No draft model; the target model verifies every draft.

/// Longest and shortest n-gram matched (transformers tries the longest first as well). One
/// token alone matches too often by chance: its drafts were nearly all refused on text that
/// copies nothing, and each refused draft costs a position of the verify forward.
const MAX_NGRAM: usize = 3;
const MIN_NGRAM: usize = 2;

/// Up to `k` draft tokens continuing `history`: after the most recent earlier occurrence of its
/// last `n` tokens, for `n` from [`MAX_NGRAM`] down to [`MIN_NGRAM`]; empty when nothing
/// matches.
pub fn propose(history: &[u32], k: usize) -> Vec<u32> {
    if k == 0 {
        return vec![];
    }
    for n in (MIN_NGRAM..=MAX_NGRAM.min(history.len().saturating_sub(1))).rev() {
        let tail = &history[history.len() - n..];
        // Starts of earlier occurrences, latest first; the tail itself is excluded.
        let found = (0..history.len() - n)
            .rev()
            .find(|&s| &history[s..s + n] == tail);
        if let Some(s) = found {
            let from = s + n;
            let to = (from + k).min(history.len());
            if from < to {
                return history[from..to].to_vec();
            }
        }
    }
    vec![]
}

/// One sequence's drafting: the draft length grows by 2 while every draft is accepted and
/// shrinks by 1 on a refusal (transformers' schedule for assisted generation), within
/// `1..=max`; and the counts.
#[derive(Clone, Debug)]
pub struct Drafter {
    max: usize,
    len: usize,
    /// Draft tokens proposed and accepted so far.
    pub drafted: usize,
    pub accepted: usize,
}

impl Drafter {
    /// Up to `max` drafts per forward.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            len: max,
            drafted: 0,
            accepted: 0,
        }
    }

    /// Drafts continuing `history`, at most `limit` (room left in the cache and in
    /// `max_tokens`).
    pub fn propose(&self, history: &[u32], limit: usize) -> Vec<u32> {
        propose(history, self.len.min(limit))
    }

    /// Records that `kept` of `drafted` drafts were accepted.
    pub fn update(&mut self, drafted: usize, kept: usize) {
        self.drafted += drafted;
        self.accepted += kept;
        if drafted > 0 {
            self.len = match kept == drafted {
                true => (self.len + 2).min(self.max),
                false => self.len.saturating_sub(1).max(1),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{propose, Drafter};

    #[test]
    fn draft_length_follows_acceptance() {
        let mut d = Drafter::new(8);
        let h = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];
        assert_eq!(d.propose(&h, 99).len(), 8);
        assert_eq!(d.propose(&h, 3).len(), 3);
        d.update(8, 2);
        assert_eq!(d.propose(&h, 99).len(), 7);
        (0..9).for_each(|_| d.update(1, 0));
        assert_eq!(d.propose(&h, 99).len(), 1);
        d.update(1, 1);
        assert_eq!(d.propose(&h, 99).len(), 3);
        assert_eq!((d.drafted, d.accepted), (8 + 9 + 1, 3));
    }

    #[test]
    fn drafts_follow_the_latest_longest_match() {
        // "a b c d ... a b" -> after the earlier "a b": "c d"
        let h = [1, 2, 3, 4, 9, 1, 2];
        assert_eq!(propose(&h, 2), [3, 4]);
        assert_eq!(propose(&h, 9), [3, 4, 9, 1, 2]);
        // The latest occurrence wins.
        assert_eq!(propose(&[5, 1, 6, 8, 5, 1, 7, 0, 5, 1], 2), [7, 0]);
        // Longer n-grams first: "1 2" matches at 0 although "2" alone matches later.
        assert_eq!(propose(&[1, 2, 3, 2, 4, 1, 2], 1), [3]);
        // One token alone is not a match.
        assert!(propose(&[4, 9, 8, 4], 2).is_empty());
        assert!(propose(&[1, 2, 3], 4).is_empty());
        assert!(propose(&[7], 4).is_empty());
        assert!(propose(&[], 4).is_empty());
        assert!(propose(&h, 0).is_empty());
    }
}
