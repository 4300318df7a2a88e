//! SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

use candle_core::{DType, Tensor};

use super::linear::{Linear, Stack};
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
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        let h = match cpu_f32(&gate) && cpu_f32(&up) {
            // One parallel pass, with its own backward when training (`fused::swiglu`).
            true => crate::fused::swiglu::swiglu(&gate, &up)?,
            // One token per row on a GPU: our one-launch kernel (`crate::cuda::rows`).
            #[cfg(feature = "cuda")]
            false
                if crate::cuda::takes(&gate)
                    && !up.track_op()
                    && gate.rank() == 3
                    && gate.dim(1)? == 1 =>
            {
                let (g, u) = (gate.squeeze(1)?, up.squeeze(1)?); // (B, F) views
                crate::cuda::rows::swiglu(&g, &u)?.unsqueeze(1)?
            }
            // candle's silu is one kernel with a backward: two launches on a GPU (three with
            // `gate * sigmoid(gate)`), which is what a small model's decode step pays for.
            false => (gate.silu()? * up)?,
        };
        self.down_proj.forward(&h)
    }
}
