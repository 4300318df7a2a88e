//! `llama3-train`: training for the one `llama3::Llama` model. Causal-LM loss, AdamW with
//! PyTorch's semantics, learning-rate schedules, gradient accumulation and clipping.
//! Training loops are plain functions that use these helpers top to bottom (no `Trainer`).
//!
//! Dim legend (as in `llama3`): `B` batch, `T` sequence, `D` model dim, `V` vocab,
//! `N` counted (labelled) positions.

pub mod error;
pub mod grads;
pub mod loss;
pub mod optim;
pub mod schedule;

pub use error::{Error, Result};
pub use grads::Grads;
pub use loss::{
    causal_lm_loss, causal_lm_loss_sum, counted_labels, cross_entropy_sum, IGNORE_INDEX,
};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{Decay, LrSchedule};
