//! Continual learning by experience replay: `--replay-data PATH --replay-ratio R` adds rows of
//! earlier data (pretraining text, or a previous task's JSONL) to every micro-batch of the new
//! data, so that a fraction R of the rows trained on is replay, and scores the replayed data's
//! held-out part at every evaluation beside the new task's (forgetting shows on the plot).
//!
//! The new data's batches are the ones a run without replay takes (same order, same rows);
//! micro-batch m gets `floor((m + 1) x) - floor(m x)` replay rows, x = B R / (1 - R), drawn in
//! a shuffled order of their own: all a function of m and the seed, so a resume is exact.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use llama3::tokenizer::Tokenizer;

use crate::batches::{Dataset, Shuffled};
use crate::config::TrainConfig;
use crate::loss::IGNORE_INDEX;
use crate::{Error, Result};

/// Seed offset of the replay order (another stream than the new data's).
const STREAM: u64 = 0x7265_706c_6179; // "replay"

pub struct Replay {
    /// Rows one at a time, in a shuffled order per epoch.
    train: Shuffled,
    /// The replayed data's held-out part (its last `valid_fraction`).
    pub valid: Option<Box<dyn Dataset>>,
    /// Replay rows per micro-batch, on average: B R / (1 - R).
    per_batch: f64,
    pad: u32,
}

impl Replay {
    /// Replay of `data` (training and held-out parts) for the run `cfg`.
    pub fn new(
        cfg: &TrainConfig,
        data: (Box<dyn Dataset>, Option<Box<dyn Dataset>>),
        tok: &Tokenizer,
    ) -> Result<Self> {
        let (train, valid) = data;
        if train.is_empty() {
            return Err(Error::Input(format!(
                "--replay-data gives no {}",
                train.unit()
            )));
        }
        let r = cfg.replay_ratio;
        Ok(Self {
            train: Shuffled::new(train, 1, cfg.seed ^ STREAM)?,
            valid: valid.filter(|v| !v.is_empty()),
            per_batch: cfg.batch_size as f64 * r / (1.0 - r),
            pad: tok.pad_id().or(tok.eos_id()).unwrap_or(0),
        })
    }

    /// The run-wide indices of micro-batch `m`'s replay rows.
    fn rows(&self, m: usize) -> Range<usize> {
        let upto = |m: usize| (m as f64 * self.per_batch).floor() as usize;
        upto(m)..upto(m + 1)
    }

    /// Micro-batch `m` of the new data, (B, T) ids and labels, with its replay rows after it:
    /// (B + k, T') right-padded to the longest row.
    pub fn mix(
        &mut self,
        m: usize,
        batch: (Tensor, Tensor),
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut parts = vec![batch];
        for j in self.rows(m) {
            parts.push(self.train.batch(j, device)?);
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut t = 1;
        for (ids, _) in &parts {
            t = t.max(ids.dim(1)?);
        }
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for (i, l) in &parts {
            let (b, ti) = i.dims2()?;
            let (iv, lv) = (
                i.to_vec2::<u32>()?,
                l.to_dtype(DType::I64)?.to_vec2::<i64>()?,
            );
            for r in 0..b {
                ids.extend_from_slice(&iv[r]);
                ids.extend(std::iter::repeat_n(self.pad, t - ti));
                labels.extend_from_slice(&lv[r]);
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - ti));
            }
        }
        let rows = ids.len() / t;
        Ok((
            Tensor::from_vec(ids, (rows, t), device)?,
            Tensor::from_vec(labels, (rows, t), device)?,
        ))
    }
}
