//! RMSNorm's weight and epsilon; the op itself is `ops::norm` (HF `LlamaRMSNorm`).

use candle_core::Tensor;

use crate::ops;
use crate::Result;

#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor, // (D)
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// The residual add and this norm: x, y (.., D) -> (x + y, norm(x + y)).
    pub fn forward_add(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        ops::norm::add_rms_norm(x, y, &self.weight, self.eps)
    }

    /// (.., D) -> (.., D)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::norm::rms_norm(x, &self.weight, self.eps)
    }
}
