//! Cross-entropy for training: summed over rows, against target ids.
//!
//! | case                                              | implementation                          |
//! |---------------------------------------------------|-----------------------------------------|
//! | the head and the loss, plain f32 head on the CPU  | `fused::ce` (logits never whole, gradients in the same pass) |
//! | logits already computed, or any other head        | [`cross_entropy_sum`]: log-sum-exp − picked logit, in f32 |

use candle_core::{DType, Tensor, D};

use super::linear::LinearWeight;
use crate::{Error, Result};

/// Summed cross-entropy of `h` (N, D) through a head with weight `w` against `targets` (N
/// ids), fused with the head's matmul where that applies: a dense f32 weight on the CPU and a
/// `plain` head (no adapters, no compute dtype). None elsewhere: run the head and
/// [`cross_entropy_sum`].
pub fn linear_cross_entropy_sum(
    w: &LinearWeight,
    plain: bool,
    h: &Tensor,
    targets: &[u32],
) -> Result<Option<Tensor>> {
    match w {
        LinearWeight::Dense(w) if plain => crate::fused::linear_cross_entropy_sum(w, h, targets),
        _ => Ok(None),
    }
}

/// Summed cross-entropy of `logits` (N, V) against `targets` (N) u32, as a scalar f32 tensor
/// (differentiable; PyTorch `cross_entropy(reduction="sum")`).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let bad = targets
        .to_vec1::<u32>()?
        .into_iter()
        .find(|&i| i as usize >= v);
    if let Some(bad) = bad {
        return Err(Error::Input(format!(
            "label {bad} is outside the vocabulary of {v} tokens"
        )));
    }
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach(); // (N, 1)
    let lse = (x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?; // (N, 1)
    let picked = x.gather(&targets.reshape((n, 1))?, 1)?; // (N, 1)
    Ok((lse - picked)?.sum_all()?)
}
