//! Learning-rate schedules: linear warmup, then cosine, linear or constant to `min_lr`.

use serde::{Deserialize, Serialize};

/// How the learning rate falls after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine from `lr` to `min_lr` (nanoGPT, Chinchilla).
    #[default]
    Cosine,
    /// Straight line from `lr` to `min_lr`.
    Linear,
    /// `lr` after warmup; `min_lr` unused.
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Decay::Cosine),
            "linear" => Ok(Decay::Linear),
            "constant" => Ok(Decay::Constant),
            _ => Err(format!(
                "unknown lr schedule {s:?} (expected cosine, linear or constant)"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Floor the decay ends at, on the last step.
    pub min_lr: f64,
    /// Optimizer steps of linear warmup.
    pub warmup: usize,
    /// Total optimizer steps of the run.
    pub total: usize,
    pub decay: Decay,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based). Warmup rises linearly as
    /// nanoGPT's `lr * (it + 1) / (warmup + 1)`; the decay reaches `min_lr` at step
    /// `total - 1` and stays there.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup + 1).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let coeff = match self.decay {
            Decay::Constant => return self.lr,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> LrSchedule {
        LrSchedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 4,
            total: 14,
            decay,
        }
    }

    #[test]
    fn warmup_then_decay() {
        let s = sched(Decay::Cosine);
        assert!((s.lr_at(0) - 0.2).abs() < 1e-12);
        assert!((s.lr_at(3) - 0.8).abs() < 1e-12);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        // halfway through the decay (steps 4..=13): cosine is at its midpoint
        let mid = 0.5 * (1.0 + 0.1);
        let half = LrSchedule { total: 15, ..s };
        assert!((half.lr_at(9) - mid).abs() < 1e-12);
        assert!((s.lr_at(13) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(100) - 0.1).abs() < 1e-12);
        let l = sched(Decay::Linear);
        assert!((l.lr_at(13) - 0.1).abs() < 1e-12);
        assert!((LrSchedule { total: 15, ..l }.lr_at(9) - 0.55).abs() < 1e-12);
        assert_eq!(sched(Decay::Constant).lr_at(13), 1.0);
        assert_eq!("linear".parse::<Decay>(), Ok(Decay::Linear));
        assert!("step".parse::<Decay>().is_err());
    }
}
