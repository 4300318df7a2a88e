//! `llama3-train`: training for the one `llama3::Llama` model. Causal-LM loss, AdamW with
//! PyTorch's semantics, learning-rate schedules, gradient accumulation and clipping, data
//! (tokenized once into a cached token file, packed into blocks), crash-safe checkpoints,
//! and the training loop, a plain function that uses these helpers top to bottom. It reports
//! through an observer (`pretrain::Event`) and stops between steps, checkpointed, when asked
//! ([`request_stop`], process-wide for signal handlers and other threads).
//!
//! Reports that pull in heavy dependencies are cargo features, off by default (the `llama3`
//! CLI turns them on): `plot` (loss-curve PNGs: plotters, an embedded font) and
//! `tensorboard` (event files: prost, crc32c). Asking for either without it is an error that
//! names the feature.
//!
//! Dim legend (as in `llama3`): `B` batch, `T` sequence, `D` model dim, `V` vocab,
//! `N` counted (labelled) positions.

pub mod batches;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod corpus;
pub mod dist;
pub mod distill;
pub mod dpo;
pub mod error;
pub mod grads;
pub mod init;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod presets;
pub mod pretrain;
pub mod recompute;
pub mod replay;
pub mod schedule;
pub mod setup;
pub mod sft;
pub mod stop;
#[cfg(feature = "tensorboard")]
pub mod tfevents;

pub use config::{Method, Precision, TrainConfig};
pub use error::{Error, Result};
pub use grads::Grads;
pub use loss::{
    causal_lm_loss, causal_lm_loss_sum, counted_labels, cross_entropy_sum, IGNORE_INDEX,
};
pub use optim::{AdamW, AdamWConfig};
pub use pretrain::{Event as TrainEvent, Summary as TrainSummary};
pub use schedule::{Decay, LrSchedule};
pub use stop::{clear_stop, request_stop, stop_requested};
