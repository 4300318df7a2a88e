//! SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use super::linear::{Linear, Stack};
use crate::ops;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear, // (F, D)
    pub up_proj: Linear,   // (F, D)
    pub down_proj: Linear, // (D, F)
    /// gate/up weights stacked for inference (one matmul); see [`Stack`].
    pub gate_up: Option<Stack>,
}

impl Mlp {
    /// (B, T, D) -> (B, T, D)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (B, T, F) each; one pass over both weights when they are packed alike.
        let ls = [&self.gate_proj, &self.up_proj];
        let [gate, up] = Linear::forward_many(ls, x, self.gate_up.as_ref())?;
        let h = ops::swiglu::swiglu(&gate, &up)?; // (B, T, F)
        self.down_proj.forward(&h)
    }
}
