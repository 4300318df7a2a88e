//! Rotary position embedding applied to (B, H, T, Dh), HF's half rotation (`rotate_half`:
//! pairs `i`, `i + Dh/2`). The tables come from `model::Rope`.
//!
//! | case               | implementation                                     |
//! |--------------------|----------------------------------------------------|
//! | no gradients       | candle's fused `rope` kernel (CPU and CUDA; no backward) |
//! | gradients tracked  | differentiable ops: `x * cos + rotate_half(x) * sin` |
//!
//! (The fused CPU and CUDA attention paths rotate inside their own kernels.)

use candle_core::{Tensor, D};

use crate::Result;

/// Applies RoPE to x (B, H, T, Dh) with cos/sin (T, Dh/2).
/// HF: `q * cos + rotate_half(q) * sin`, `rotate_half(x) = cat(-x2, x1)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        // Inference: candle's fused kernel computes the same half rotation (no backward).
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?);
    }
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
}
