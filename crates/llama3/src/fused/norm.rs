//! RMSNorm with its backward, HF `LlamaRMSNorm` in f32: `y = (x * r) * w` with
//! `r = 1 / sqrt(mean(x^2) + eps)` per row. Backward with `gw = dy * w`:
//! `dx = r * gw - x * r^3 * sum(gw * x) / D`, `dw = sum over rows of dy * x * r`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
use crate::{Error, Result};

/// Rows per parallel task.
const ROWS: usize = 64;

/// RMSNorm of x (.., D) with weight (D), f32 on the CPU, differentiable in both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] {
        return Err(Error::Input(format!(
            "rms norm: input {:?}, weight {:?}",
            x.dims(),
            w.dims()
        )));
    }
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn r(&self, row: &[f32]) -> f32 {
        let ss: f32 = row.iter().map(|x| x * x).sum();
        1.0 / (ss / row.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(s1, l1, "rms norm")?,
            f32_slice(s2, l2, "rms norm")?,
        );
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let r = self.r(x);
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let mut dx = vec![0f32; x.elem_count()];
        let dw = with_f32([x, w, grad], |[x, w, dy]| {
            // Each task's share of dw, summed in task order (deterministic).
            let parts: Vec<Vec<f32>> = dx
                .par_chunks_mut(ROWS * d)
                .zip(x.par_chunks(ROWS * d).zip(dy.par_chunks(ROWS * d)))
                .map(|(dx, (x, dy))| {
                    let mut dw = vec![0f32; d];
                    let rows = dx.chunks_exact_mut(d).zip(x.chunks_exact(d));
                    for ((dx, x), dy) in rows.zip(dy.chunks_exact(d)) {
                        let r = self.r(x);
                        let dot: f32 = (0..d).map(|j| dy[j] * w[j] * x[j]).sum();
                        let c = r * r * r * dot / d as f32;
                        for j in 0..d {
                            dx[j] = r * dy[j] * w[j] - x[j] * c;
                            dw[j] += dy[j] * x[j] * r;
                        }
                    }
                    dw
                })
                .collect();
            let mut dw = vec![0f32; d];
            for p in parts {
                dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            dw
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    #[test]
    fn values_and_gradients_match_candle_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 77, 48), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 77, 48), &dev).unwrap();
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        // The differentiable ops the model used before.
        let xs = x.as_tensor().to_dtype(DType::F32).unwrap();
        let var = xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let r = (var + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
        let ops = xs.broadcast_mul(&r).unwrap().broadcast_mul(&w).unwrap();
        crate::fused::testing::check(&fused, &ops, &up, &[&x, &w], 1e-4);
        assert!(rms_norm(&x, &up, 1e-5).is_err());
    }
}
