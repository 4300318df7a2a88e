//! Packing a token stream into `seq_len` blocks, the train/valid split, and the shuffled
//! batch order. The order is a pure function of (seed, epoch), so batch `k` of a run is the
//! same after a resume: the data position is the step count.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::corpus::TokenFile;
use crate::{Error, Result};

/// Training data addressed by index: rows `idx` as (B, T) u32 ids and (B, T) i64 labels
/// (-100 where no loss is counted; the loss shifts labels by one).
pub trait Dataset: Send {
    fn len(&self) -> usize;
    fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)>;
    /// What one row is, for messages ("blocks of 256 tokens", "examples").
    fn unit(&self) -> String;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Data whose last part can be held out for evaluation.
pub trait HeldOut: Dataset + Sized + 'static {
    /// The last `fraction` held out (at least one row when `fraction > 0` and there are two).
    fn split(self, fraction: f64) -> (Self, Option<Self>);
}

/// How many of `n` rows the last `fraction` holds out: at least one when `fraction > 0`,
/// never all; None when nothing is held out.
pub fn held_out_count(n: usize, fraction: f64) -> Option<usize> {
    (fraction > 0.0 && n >= 2).then(|| ((n as f64 * fraction).ceil() as usize).clamp(1, n - 1))
}

/// Blocks `first..first + count` of `seq_len` tokens of a token file (the tail that does
/// not fill a block is dropped, as HF `run_clm.py group_texts`).
#[derive(Clone)]
pub struct Blocks {
    file: Arc<TokenFile>,
    first: usize,
    count: usize,
    seq_len: usize,
}

impl Blocks {
    pub fn all(file: Arc<TokenFile>, seq_len: usize) -> Self {
        let count = file.len() / seq_len;
        Self {
            file,
            first: 0,
            count,
            seq_len,
        }
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn block(&self, i: usize) -> Vec<u32> {
        self.file
            .slice((self.first + i) * self.seq_len, self.seq_len)
    }
}

impl HeldOut for Blocks {
    fn split(self, fraction: f64) -> (Blocks, Option<Blocks>) {
        let Some(n_valid) = held_out_count(self.count, fraction) else {
            return (self, None);
        };
        let train = Blocks {
            count: self.count - n_valid,
            ..self.clone()
        };
        let valid = Blocks {
            first: self.first + self.count - n_valid,
            count: n_valid,
            ..self
        };
        (train, Some(valid))
    }
}

impl Dataset for Blocks {
    fn len(&self) -> usize {
        self.count
    }

    /// Blocks `idx` as (B, T) u32 ids and (B, T) i64 labels (the ids: the loss shifts them).
    fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let ids: Vec<u32> = idx.iter().flat_map(|&i| self.block(i)).collect();
        let ids = Tensor::from_vec(ids, (idx.len(), self.seq_len), device)?;
        let labels = ids.to_dtype(DType::I64)?;
        Ok((ids, labels))
    }

    fn unit(&self) -> String {
        format!("blocks of {} tokens", self.seq_len)
    }
}

/// Micro-batches of `batch_size` rows, each epoch a fresh permutation seeded by
/// (seed, epoch). An epoch uses `batches_per_epoch * batch_size` rows; the rest of the
/// permutation is skipped.
pub struct Shuffled {
    blocks: Box<dyn Dataset>,
    batch_size: usize,
    seed: u64,
    /// The permutation of epoch `perm_epoch`; empty before the first batch.
    perm: Vec<usize>,
    perm_epoch: usize,
}

impl Shuffled {
    pub fn new(blocks: Box<dyn Dataset>, batch_size: usize, seed: u64) -> Result<Self> {
        if blocks.len() < batch_size {
            return Err(Error::Input(format!(
                "the training data gives {} {}, fewer than one batch of {}: add data or \
                 lower --seq-len / --batch-size",
                blocks.len(),
                blocks.unit(),
                batch_size
            )));
        }
        Ok(Self {
            blocks,
            batch_size,
            seed,
            perm: Vec::new(),
            perm_epoch: 0,
        })
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.blocks.len() / self.batch_size
    }

    /// Micro-batch `k` of the run (0-based over all epochs).
    pub fn batch(&mut self, k: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, within) = (k / per_epoch, k % per_epoch);
        if self.perm.is_empty() || self.perm_epoch != epoch {
            self.perm = (0..self.blocks.len()).collect();
            let mix = (epoch as u64).wrapping_mul(0x9e3779b97f4a7c15);
            self.perm
                .shuffle(&mut StdRng::seed_from_u64(self.seed ^ mix));
            self.perm_epoch = epoch;
        }
        let idx = &self.perm[within * self.batch_size..(within + 1) * self.batch_size];
        self.blocks.batch(idx, device)
    }
}
