//! Sampling: a chain of logits processors and one selector.
