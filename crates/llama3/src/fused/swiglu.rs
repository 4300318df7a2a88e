//! `silu(gate) * up` with its backward: `dgate = dh * up * s * (1 + gate * (1 - s))` with
//! `s = sigmoid(gate)`, `dup = dh * silu(gate)`. One pass each way instead of candle's
//! sigmoid, two products and their six backward nodes; the model's MLP uses it for inference
//! too (one output buffer). The sigmoid is the vectorized one of `fused::exp` (within ~2e-7
//! of candle's, which calls `expf` per element).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32, CHUNK};
use crate::{Error, Result};

/// `silu(gate) * up` for f32 CPU tensors of one shape, differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        return Err(Error::Input(format!(
            "swiglu: gate {:?}, up {:?}",
            gate.dims(),
            up.dims()
        )));
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1, "swiglu")?, f32_slice(s2, l2, "swiglu")?);
        let mut h = vec![0f32; g.len()];
        h.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(h, (g, u))| {
                super::exp::sigmoid(g, h);
                for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                    *h *= g * u;
                }
            });
        Ok((CpuStorage::F32(h), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        with_f32([gate, up, grad], |[g, u, d]| {
            dg.par_chunks_mut(CHUNK)
                .zip(du.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (dg, du))| {
                    let o = c * CHUNK;
                    super::exp::sigmoid(&g[o..][..dg.len()], du); // s, then dup
                    for i in 0..dg.len() {
                        let (g, u, d, s) = (g[o + i], u[o + i], d[o + i], du[i]);
                        dg[i] = d * u * s * (1.0 + g * (1.0 - s));
                        du[i] = d * g * s;
                    }
                })
        })?;
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), dev)?),
            Some(Tensor::from_vec(du, up.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Without gradients (inference) the pass gives what candle's ops give, to the last few
    /// bits (the sigmoid's `exp` differs from `expf` by ~1e-7).
    #[test]
    fn close_to_candle_ops() {
        let gate = Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 5000), &Device::Cpu).unwrap();
        let fused = swiglu(&gate, &up).unwrap();
        let ops = ((&gate * candle_nn::ops::sigmoid(&gate).unwrap()).unwrap() * &up).unwrap();
        let vals = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in vals(&fused).iter().zip(vals(&ops)) {
            assert!((a - b).abs() <= 4e-7 * b.abs().max(1e-3), "{a} vs {b}");
        }
        // Not contiguous: copied first, same values.
        let t = swiglu(&gate.t().unwrap(), &up.t().unwrap()).unwrap();
        assert_eq!(vals(&t.t().unwrap().contiguous().unwrap()), vals(&fused));
    }

    #[test]
    fn values_and_gradients_match_candle_ops() {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 3.0, (3, 5000), &dev).unwrap()).unwrap();
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5000), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5000), &dev).unwrap();
        let fused = swiglu(&g, &u).unwrap();
        let ops = ((g.as_tensor() * candle_nn::ops::sigmoid(&g).unwrap()).unwrap() * u.as_tensor())
            .unwrap();
        crate::fused::testing::check(&fused, &ops, &w, &[&g, &u], 1e-5);
        assert!(swiglu(&g, &w.narrow(1, 0, 10).unwrap()).is_err());
    }
}
