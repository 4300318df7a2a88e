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

#[cfg(test)]
mod tests {
    use super::propose;

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
