//! RMSNorm from differentiable ops when gradients are tracked (candle's fused `rms_norm` has
//! no backward), candle's fused kernel otherwise.
//! HF `LlamaRMSNorm`: variance in f32, `weight * (x * rsqrt(mean(x^2) + eps))`.

use candle_core::{DType, Tensor, D};

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

    /// The residual add and this norm: x, y (.., D) -> (x + y, norm(x + y)); one launch on a
    /// GPU (`crate::cuda::rows`), candle's ops elsewhere.
    pub fn forward_add(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        #[cfg(feature = "cuda")]
        if crate::cuda::takes(x)
            && !y.track_op()
            && !self.weight.track_op()
            && x.dims() == y.dims()
            && x.dtype() == y.dtype()
        {
            let shape = x.shape().clone();
            let d = x.dim(D::Minus1)?;
            let (x2, y2) = (x.contiguous()?, y.contiguous()?);
            let (x2, y2) = (x2.reshape(((), d))?, y2.reshape(((), d))?); // (R, D)
            let (s, h) = crate::cuda::rows::add_rms_norm(&x2, &y2, &self.weight, self.eps)?;
            return Ok((s.reshape(&shape)?, h.reshape(&shape)?));
        }
        let s = (x + y)?;
        let h = self.forward(&s)?;
        Ok((s, h))
    }

    /// (.., D) -> (.., D)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() && !self.weight.track_op() {
            // Inference: candle's fused kernel (sums in f32 for every dtype; no backward,
            // none needed here).
            let w = self.weight.to_dtype(x.dtype())?;
            return Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &w,
                self.eps as f32,
            )?);
        }
        if crate::fused::trains_on_cpu(&[x, &self.weight]) {
            // Training on the CPU: one op with its own backward (`fused::norm`).
            return crate::fused::norm::rms_norm(x, &self.weight, self.eps);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        Ok(x.to_dtype(dtype)?
            .broadcast_mul(&self.weight.to_dtype(dtype)?)?)
    }
}
