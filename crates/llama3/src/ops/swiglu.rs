//! SwiGLU's gate: `silu(gate) * up`.
//!
//! | case                                     | implementation                                   |
//! |------------------------------------------|--------------------------------------------------|
//! | CPU f32 (inference and training)         | `fused::swiglu` (one parallel pass, own backward) |
//! | CUDA, one token per row, our kernels on  | `cuda::rows::swiglu` (one launch)                |
//! | elsewhere                                | candle's `silu` (with a backward) times `up`     |

use candle_core::{DType, Tensor};

use crate::Result;

/// gate, up (.., F) -> (.., F)
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if cpu_f32(gate) && cpu_f32(up) {
        return crate::fused::swiglu::swiglu(gate, up);
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::takes(gate) && !up.track_op() && gate.rank() == 3 && gate.dim(1)? == 1 {
        let (g, u) = (gate.squeeze(1)?, up.squeeze(1)?); // (B, F) views
        return Ok(crate::cuda::rows::swiglu(&g, &u)?.unsqueeze(1)?);
    }
    // candle's silu is one kernel with a backward: two launches on a GPU (three with
    // `gate * sigmoid(gate)`), which is what a small model's decode step pays for.
    Ok((gate.silu()? * up)?)
}
