//! Softmax over the last dim and the causal attention softmax `softmax(scale * scores + mask)`.
//!
//! | case                                        | implementation                                   |
//! |---------------------------------------------|--------------------------------------------------|
//! | causal, CUDA, our kernels on                | `cuda::softmax::causal` (one launch each way)    |
//! | gradients tracked                           | differentiable ops, in f32, max detached         |
//! | inference elsewhere                         | candle's fused `softmax_last_dim` (no backward)  |

use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// Softmax over the last dim. With gradients tracked it is built from differentiable ops, the
/// max detached (softmax is shift-invariant, so its gradient through the shift is zero);
/// otherwise candle's fused kernel.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Additive causal mask (T, S) for T new positions after `pos` cached ones: query i may see
/// keys 0..=pos+i.
pub fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let s = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}

/// Attention probabilities from scores (B, Hkv, G*T, S) of T new positions (the G query
/// heads of a KV head along the rows): `softmax(scale * scores + mask)` with `mask` the
/// causal (T, S) one (None for one position, where it masks nothing); `dtype`: the values'
/// dtype, which tracked (f32) probabilities are cast back to.
pub fn causal_softmax(
    att: &Tensor,
    scale: f64,
    t: usize,
    mask: Option<&Tensor>,
    dtype: DType,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::softmax::applies(att) {
        // The kernel applies the causal mask itself, forward and backward.
        return crate::cuda::softmax::causal(att, scale, t);
    }
    let (b, hkv, gt, s) = att.dims4()?;
    let att = (att * scale)?;
    let att = match mask {
        Some(m) => att
            .reshape((b, hkv, gt / t, t, s))?
            .broadcast_add(&m.to_dtype(att.dtype())?)?
            .reshape((b, hkv, gt, s))?,
        None => att,
    };
    // Softmax in f32 (candle's fused kernel sums in f32 whatever the dtype, so inference
    // skips the casts).
    match att.track_op() {
        true => Ok(softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(dtype)?),
        false => softmax_last_dim(&att),
    }
}
