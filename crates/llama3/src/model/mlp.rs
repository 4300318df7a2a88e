//! SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::linear::Linear;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear, // (F, D)
    pub up_proj: Linear,   // (F, D)
    pub down_proj: Linear, // (D, F)
}

impl Mlp {
    /// (B, T, D) -> (B, T, D)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (B, T, F) each; one pass over both weights when they are packed alike.
        let [gate, up] = Linear::forward_many([&self.gate_proj, &self.up_proj], x)?;
        let h = match swiglu_cpu(&gate, &up)? {
            Some(h) => h,
            // Training on the CPU: one op with its own backward.
            None if super::attention::trains_on_cpu(&[&gate, &up]) => {
                crate::fused::swiglu::swiglu(&gate, &up)?
            }
            // silu(x) = x * sigmoid(x) (candle's sigmoid is fused and has a backward).
            None => ((&gate * candle_nn::ops::sigmoid(&gate)?)? * up)?,
        };
        self.down_proj.forward(&h)
    }
}

/// Elements per parallel task of the fused SwiGLU.
const SWIGLU_CHUNK: usize = 4096;

/// `silu(gate) * up` in one parallel pass for contiguous f32 CPU tensors without gradients
/// (inference): one output buffer instead of candle's three, and both cores on the `exp`s.
/// The arithmetic is the candle path's, element by element (`g * recip(exp(-g) + 1) * u`), so
/// results are the same bits. `None` when it does not apply.
fn swiglu_cpu(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let applies = matches!(gate.device(), Device::Cpu)
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && !gate.track_op()
        && !up.track_op()
        && gate.is_contiguous()
        && up.is_contiguous()
        && gate.dims() == up.dims();
    if !applies {
        return Ok(None);
    }
    let n = gate.elem_count();
    let (gs, gl) = gate.storage_and_layout();
    let (us, ul) = up.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(g)), Storage::Cpu(CpuStorage::F32(u))) = (&*gs, &*us) else {
        return Ok(None);
    };
    let (g, u) = (&g[gl.start_offset()..][..n], &u[ul.start_offset()..][..n]);
    let mut h = vec![0f32; n];
    h.par_chunks_mut(SWIGLU_CHUNK)
        .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)))
        .for_each(|(h, (g, u))| {
            for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                let sigmoid = ((-g).exp() + 1.0).recip();
                *h = (g * sigmoid) * u;
            }
        });
    Ok(Some(Tensor::from_vec(h, gate.shape(), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused pass gives the candle ops' bits.
    #[test]
    fn fused_swiglu_equals_candle_ops() {
        let gate = Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 5000), &Device::Cpu).unwrap();
        let fused = swiglu_cpu(&gate, &up).unwrap().unwrap();
        let ops = ((&gate * candle_nn::ops::sigmoid(&gate).unwrap()).unwrap() * &up).unwrap();
        let (a, b) = (
            fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ops.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        // Not contiguous: left to candle.
        assert!(swiglu_cpu(&gate.t().unwrap(), &up.t().unwrap())
            .unwrap()
            .is_none());
    }
}
