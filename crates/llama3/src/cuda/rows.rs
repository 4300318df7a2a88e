//! Row-wise ops of a decode step in one launch each (`kernels/rows.cu`): the residual add with
//! the RMSNorm after it, and SwiGLU from the gate and up projections (views of a stacked
//! projection's output, taken with their row stride). Dims: R rows, D model dim, F MLP dim.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{bail, CudaStorage, CustomOp2, Layout, Shape, Tensor};

use super::{alloc, cuda, grid, on_gpu, ptr, rows, THREADS};
use crate::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rows.ptx"));
const MODULE: &str = "llama3_rows";

/// x, y (R, D) -> (x + y, rms_norm(x + y) * w), both (R, D), w (D) in x's dtype.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let op = AddRmsNorm {
        w: w.to_dtype(x.dtype())?.contiguous()?,
        eps: eps as f32,
    };
    let out = x.apply_op2_no_bwd(y, &op)?; // (2, R, D): the sum, then the normed rows
    Ok((out.get(0)?, out.get(1)?))
}

/// gate, up (R, F) -> silu(gate) * up (R, F).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.apply_op2_no_bwd(up, &Swiglu)?)
}

struct AddRmsNorm {
    w: Tensor,
    eps: f32,
}

struct Swiglu;

impl CustomOp2 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "llama3-add-rms-norm"
    }

    super::gpu_only!(a b);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = self.w.elem_count();
        let (r, x_rs) = rows(xl, d, "x")?;
        let (ry, y_rs) = rows(yl, d, "y")?;
        if ry != r {
            bail!("add_rms_norm: {r} rows of x, {ry} of y");
        }
        let (ws, wo) = on_gpu(&self.w, "the norm weight")?;
        let dev = x.device.clone();
        let stream = dev.cuda_stream();
        let out = alloc(&dev, x.dtype(), 2 * r * d)?;
        {
            let (xp, xk, _gx) = ptr(&x.slice, xl.start_offset(), &stream)?;
            let (yp, yk, _gy) = ptr(&y.slice, yl.start_offset(), &stream)?;
            let (wp, wk, _gw) = ptr(&cuda(&ws)?.slice, wo, &stream)?;
            let (sp, _, _gs) = ptr(&out, 0, &stream)?;
            let (hp, _, _gh) = ptr(&out, r * d, &stream)?;
            if yk != xk || wk != xk {
                bail!("add_rms_norm: x, y and the weight must share a dtype");
            }
            let (x_rs, y_rs, d32) = (x_rs as i64, y_rs as i64, d as i32);
            let func = dev.get_or_load_custom_func("add_rms_norm", MODULE, PTX)?;
            let mut bld = func.builder();
            bld.arg(&xp).arg(&yp).arg(&x_rs).arg(&y_rs);
            bld.arg(&wp)
                .arg(&sp)
                .arg(&hp)
                .arg(&d32)
                .arg(&self.eps)
                .arg(&xk);
            let cfg = grid(r, 1, 1);
            // SAFETY: two pointers, two i64 strides, three pointers, i32, f32, i32, as the
            // kernel declares; rows and sizes checked above.
            unsafe { bld.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage {
                slice: out,
                device: dev,
            },
            Shape::from((2, r, d)),
        ))
    }
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "llama3-swiglu"
    }

    super::gpu_only!(a b);

    fn cuda_fwd(
        &self,
        gate: &CudaStorage,
        gl: &Layout,
        up: &CudaStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let f = *gl.dims().last().unwrap_or(&0);
        let (r, g_rs) = rows(gl, f, "gate")?;
        let (ru, u_rs) = rows(ul, f, "up")?;
        if ru != r {
            bail!("swiglu: {r} rows of gate, {ru} of up");
        }
        let dev = gate.device.clone();
        let stream = dev.cuda_stream();
        let out = alloc(&dev, gate.dtype(), r * f)?;
        {
            let (gp, gk, _gg) = ptr(&gate.slice, gl.start_offset(), &stream)?;
            let (upp, uk, _gu) = ptr(&up.slice, ul.start_offset(), &stream)?;
            let (hp, _, _gh) = ptr(&out, 0, &stream)?;
            if uk != gk {
                bail!("swiglu: gate and up must share a dtype");
            }
            let (g_rs, u_rs, f32_) = (g_rs as i64, u_rs as i64, f as i32);
            let func = dev.get_or_load_custom_func("swiglu", MODULE, PTX)?;
            let mut bld = func.builder();
            bld.arg(&gp)
                .arg(&upp)
                .arg(&g_rs)
                .arg(&u_rs)
                .arg(&hp)
                .arg(&f32_)
                .arg(&gk);
            let cfg = grid(f.div_ceil(THREADS as usize), r, 1);
            // SAFETY: two pointers, two i64 strides, a pointer, two i32, as the kernel
            // declares; rows and sizes checked above.
            unsafe { bld.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage {
                slice: out,
                device: dev,
            },
            Shape::from((r, f)),
        ))
    }
}
