//! One AdamW step of an f32 parameter on a GPU in one launch (`kernels/adamw.cu`), where
//! candle's ops take ~17 (each a launch and a buffer) per parameter and step. The parameter is
//! updated in place (a `Var`'s storage, as `Var::set` does); the moments come back as new
//! tensors. llama3-train's optimizer calls it; the arithmetic is the optimizer's own.

use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{bail, CudaStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::{alloc, cuda, grid, ptr, THREADS};
use crate::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));

/// The scalars of one step: 1 - lr*wd, 1 - beta1, beta2, 1 - beta2, eps,
/// sqrt(1 - beta2^t), lr / (1 - beta1^t).
pub type Coefs = [f32; 7];

/// Whether the kernel takes these tensors: f32 on a GPU, contiguous, one shape.
pub fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    [p, g, m, v].iter().all(|t| {
        t.device().is_cuda() && t.dtype() == DType::F32 && t.is_contiguous() && t.dims() == p.dims()
    }) && super::enabled()
}

/// Updates `p` in place from its gradient `g` and moments `m`, `v`; returns the new moments.
pub fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Coefs) -> Result<(Tensor, Tensor)> {
    let op = AdamW { p: p.clone(), c };
    let out = g.apply_op3_no_bwd(m, v, &op)?; // (2, ..): m, then v
    Ok((out.get(0)?, out.get(1)?))
}

struct AdamW {
    /// The parameter, written in place through its storage.
    p: Tensor,
    c: Coefs,
}

impl CustomOp3 for AdamW {
    fn name(&self) -> &'static str {
        "llama3-adamw"
    }

    super::gpu_only!(a b c);

    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        m: &CudaStorage,
        ml: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = self.p.elem_count();
        for l in [gl, ml, vl] {
            if !l.is_contiguous() || l.shape().elem_count() != n {
                bail!("adamw: gradient and moments must be contiguous, {n} values each");
            }
        }
        let (ps, pl) = self.p.storage_and_layout();
        if !pl.is_contiguous() {
            bail!("adamw: the parameter must be contiguous");
        }
        let dev = g.device.clone();
        let stream = dev.cuda_stream();
        let out = alloc(&dev, DType::F32, 2 * n)?;
        {
            let (pp, pk, _gp) = ptr(&cuda(&ps)?.slice, pl.start_offset(), &stream)?;
            let (gp, gk, _gg) = ptr(&g.slice, gl.start_offset(), &stream)?;
            let (mp, mk, _gm) = ptr(&m.slice, ml.start_offset(), &stream)?;
            let (vp, vk, _gv) = ptr(&v.slice, vl.start_offset(), &stream)?;
            let (m2, _, _g2) = ptr(&out, 0, &stream)?;
            let (v2, _, _g3) = ptr(&out, n, &stream)?;
            if [pk, gk, mk, vk] != [0; 4] {
                bail!("adamw: f32 parameter, gradient and moments expected");
            }
            let n64 = n as i64;
            let func = dev.get_or_load_custom_func("adamw", "llama3_adamw", PTX)?;
            let mut bld = func.builder();
            for p in [&pp, &gp, &mp, &vp, &m2, &v2] {
                bld.arg(p);
            }
            bld.arg(&n64);
            for c in &self.c {
                bld.arg(c);
            }
            let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16);
            let cfg = grid(blocks, 1, 1);
            // SAFETY: six pointers, an i64 and seven f32, as the kernel declares; every
            // buffer holds n values (checked above), the loop stops at n.
            unsafe { bld.launch(cfg) }.w()?;
        }
        let mut dims = vec![2];
        dims.extend(self.p.dims());
        Ok((
            CudaStorage {
                slice: out,
                device: dev,
            },
            Shape::from(dims),
        ))
    }
}
