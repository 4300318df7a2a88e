//! `y = x W^T` for training, x (N, in) and W (out, in) f32 on the CPU, with a backward that
//! writes `dx = dy W` and `dW = dy^T x` straight in their final layouts (candle's matmul
//! backward goes through `W^T` and a strided add) and skips whichever input is frozen (a
//! base weight under LoRA, the first layer's input).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::gemm::{gemm, Mat};
use super::{f32_slice, with_f32};
use crate::{Error, Result};

/// x (N, in) @ W^T, W (out, in).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let (_, kw) = w.dims2()?;
    if k != kw {
        return Err(Error::Input(format!(
            "linear: input {:?}, weight {:?}",
            x.dims(),
            w.dims()
        )));
    }
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Linear)?)
}

struct Linear;

fn msg(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?);
        let (n, k) = l1.shape().dims2()?;
        let (m, _) = l2.shape().dims2()?;
        let mut y = vec![0f32; n * m];
        // (N, in) x (in, out) -> (N, out)
        gemm(&mut y, Mat::rows(x, n, k), Mat::rows(w, m, k).t(), false).map_err(msg)?;
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let (m, _) = w.dims2()?;
        let dev = x.device();
        let dx = match x.track_op() {
            false => None,
            true => {
                let mut dx = vec![0f32; n * k];
                with_f32([grad, w], |[dy, w]| {
                    // (N, out) x (out, in) -> (N, in)
                    gemm(&mut dx, Mat::rows(dy, n, m), Mat::rows(w, m, k), false)
                })?
                .map_err(msg)?;
                Some(Tensor::from_vec(dx, (n, k), dev)?)
            }
        };
        let dw = match w.track_op() {
            false => None,
            true => {
                let mut dw = vec![0f32; m * k];
                with_f32([grad, x], |[dy, x]| {
                    // (out, N) x (N, in) -> (out, in)
                    gemm(&mut dw, Mat::rows(dy, n, m).t(), Mat::rows(x, n, k), false)
                })?
                .map_err(msg)?;
                Some(Tensor::from_vec(dw, (m, k), dev)?)
            }
        };
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_match_matmul() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 24), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (19, 24), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (37, 19), &dev).unwrap();
        let fused = linear(&x, &w).unwrap();
        let ops = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        crate::fused::testing::check(&fused, &ops, &up, &[&x, &w], 1e-4);
        // A frozen weight gets no gradient.
        let frozen = linear(&x, &w.as_tensor().detach()).unwrap();
        let g = frozen.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_some());
        assert!(linear(&x, &up).is_err());
    }
}
