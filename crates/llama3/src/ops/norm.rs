//! RMSNorm (HF `LlamaRMSNorm`: variance in f32, `weight * (x * rsqrt(mean(x^2) + eps))`) and
//! the residual add joined to it.
//!
//! | case                                      | implementation                               |
//! |-------------------------------------------|----------------------------------------------|
//! | no gradients (CPU, CUDA, any float dtype) | candle's fused `rms_norm` (sums in f32)      |
//! | add + norm, CUDA, our kernels on          | `cuda::rows::add_rms_norm` (one launch)      |
//! | gradients tracked, CPU f32                | `fused::norm` (one op with its backward)     |
//! | gradients tracked elsewhere               | differentiable candle ops in f32             |
//!
//! candle's fused kernel has no backward: training must not take it (a test checks that
//! gradients reach the input).

use candle_core::{DType, Tensor, D};

use crate::Result;

/// x (.., D), weight (D) -> (.., D)
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        // Inference: candle's fused kernel (sums in f32 for every dtype).
        let w = weight.to_dtype(x.dtype())?;
        return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &w, eps as f32)?);
    }
    if super::trains_on_cpu(&[x, weight]) {
        // Training on the CPU: one op with its own backward.
        return crate::fused::norm::rms_norm(x, weight, eps);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(x.to_dtype(dtype)?.broadcast_mul(&weight.to_dtype(dtype)?)?)
}

/// The residual add and the norm: x, y (.., D) -> (x + y, rms_norm(x + y)).
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::takes(x)
        && !y.track_op()
        && !weight.track_op()
        && x.dims() == y.dims()
        && x.dtype() == y.dtype()
    {
        let shape = x.shape().clone();
        let d = x.dim(D::Minus1)?;
        let (x2, y2) = (x.contiguous()?, y.contiguous()?);
        let (x2, y2) = (x2.reshape(((), d))?, y2.reshape(((), d))?); // (R, D)
        let (s, h) = crate::cuda::rows::add_rms_norm(&x2, &y2, weight, eps)?;
        return Ok((s.reshape(&shape)?, h.reshape(&shape)?));
    }
    let s = (x + y)?;
    let h = rms_norm(&s, weight, eps)?;
    Ok((s, h))
}
