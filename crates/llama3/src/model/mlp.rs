//! SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use super::linear::Linear;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear, // (F, D)
    pub up_proj: Linear,   // (F, D)
    pub down_proj: Linear, // (D, F)
}

impl Mlp {
    /// (B, T, D) -> (B, T, D)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?; // (B, T, F)
                                               // silu(x) = x * sigmoid(x) (candle's sigmoid is fused and has a backward).
        let silu = (&gate * candle_nn::ops::sigmoid(&gate)?)?;
        let h = (silu * self.up_proj.forward(x)?)?;
        self.down_proj.forward(&h)
    }
}
