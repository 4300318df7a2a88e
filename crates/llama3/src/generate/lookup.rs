//! Draft tokens for speculative decoding, which the target model verifies in one forward:
//! - prompt lookup (n-gram speculation, as llama.cpp's `--lookup` and transformers'
//!   `prompt_lookup_num_tokens`): the tokens that followed the last earlier occurrence of the
//!   sequence's trailing n-gram, which pay off when the answer copies from its input
//!   (rewriting a paragraph, editing code);
//! - a draft model (`--draft`, as llama.cpp's and transformers' assisted generation): a smaller
//!   model with the same vocabulary continues the sequence greedily, keeping its own KV cache in
//!   step with the target's history.

use std::sync::Arc;

use super::{prefill, Session};
use crate::model::{Llama, Logits};
use crate::sample::argmax;
use crate::{Error, Result};

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

/// Where drafts come from.
enum Source {
    Lookup,
    /// A draft model and its session (the tokens its cache holds).
    Model(Arc<Llama>, Session),
}

/// One sequence's drafting: the draft length grows by 2 while every draft is accepted and
/// shrinks by 1 on a refusal (transformers' schedule for assisted generation), within
/// `1..=max`; and the counts.
pub struct Drafter {
    max: usize,
    len: usize,
    source: Source,
    /// Draft tokens proposed and accepted so far.
    pub drafted: usize,
    pub accepted: usize,
}

impl Drafter {
    /// Prompt lookup, up to `max` drafts per forward.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            len: max,
            source: Source::Lookup,
            drafted: 0,
            accepted: 0,
        }
    }

    /// `draft` (same vocabulary as `target`) proposes up to `max` tokens per forward, with a
    /// cache of `capacity` positions.
    pub fn with_model(
        draft: Arc<Llama>,
        target: &Llama,
        capacity: usize,
        max: usize,
    ) -> Result<Self> {
        if draft.config.vocab_size != target.config.vocab_size {
            return Err(Error::Input(format!(
                "the draft model's vocabulary ({} tokens) is not the model's ({} tokens)",
                draft.config.vocab_size, target.config.vocab_size
            )));
        }
        let session = Session::new(&draft, capacity)?;
        Ok(Self {
            source: Source::Model(draft, session),
            ..Self::new(max.max(1))
        })
    }

    /// Drafts continuing `history`, at most `limit` (room left in the cache and in
    /// `max_tokens`).
    pub fn propose(&mut self, history: &[u32], limit: usize) -> Result<Vec<u32>> {
        let k = self.len.min(limit);
        match &mut self.source {
            Source::Lookup => Ok(propose(history, k)),
            Source::Model(model, session) => model_drafts(model, session, history, k),
        }
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

/// `k` greedy tokens of `model` after `history`; its session first drops what differs from
/// `history` and runs what it lacks (the target's last refusals, the tokens since).
fn model_drafts(model: &Llama, s: &mut Session, history: &[u32], k: usize) -> Result<Vec<u32>> {
    if k == 0 || history.is_empty() || history.len() + k > s.cache.capacity() {
        return Ok(vec![]);
    }
    let keep = s.common_prefix(history).min(history.len() - 1);
    s.cache.truncate(keep);
    s.tokens.truncate(keep);
    let mut logits = prefill(model, &mut s.cache, &history[keep..], 512)?;
    s.tokens.extend_from_slice(&history[keep..]);
    let mut drafts = Vec::with_capacity(k);
    for i in 0..k {
        let t = argmax(&logits);
        drafts.push(t);
        if i + 1 < k {
            let out = model.forward_tokens(&[t], &mut s.cache, Logits::Last)?;
            s.tokens.push(t);
            logits = out
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
        }
    }
    Ok(drafts)
}

#[cfg(test)]
mod tests {
    use super::{propose, Drafter};

    #[test]
    fn draft_length_follows_acceptance() {
        let mut d = Drafter::new(8);
        let h = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];
        let len = |d: &mut Drafter, limit| d.propose(&h, limit).unwrap().len();
        assert_eq!(len(&mut d, 99), 8);
        assert_eq!(len(&mut d, 3), 3);
        d.update(8, 2);
        assert_eq!(len(&mut d, 99), 7);
        (0..9).for_each(|_| d.update(1, 0));
        assert_eq!(len(&mut d, 99), 1);
        d.update(1, 1);
        assert_eq!(len(&mut d, 99), 3);
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
