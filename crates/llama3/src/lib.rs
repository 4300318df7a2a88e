//! `llama3`: one Llama-family decoder on candle, its weights, tokenizers, chat templates,
//! sampling and generation.
//!
//! Dim legend used in shape comments throughout the crate:
//! `B` batch, `T` new tokens in this forward, `S` cached + new positions, `D` model dim
//! (`hidden_size`), `F` MLP dim (`intermediate_size`), `H` query heads, `Hkv` key/value heads,
//! `G = H / Hkv`, `Dh` head dim, `V` vocab.

pub mod classify;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fused;
pub mod generate;
pub mod grammar;
pub mod hub;
pub mod kv;
pub mod loader;
pub mod model;
pub mod ops;
pub mod peft;
pub mod perplexity;
pub mod prune;
pub mod quant;
pub mod quantize;
pub mod rng;
pub mod sample;
pub mod tokenizer;
pub mod tools;
pub mod weights;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use model::Llama;
