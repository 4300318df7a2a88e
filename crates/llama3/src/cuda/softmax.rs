//! Causal softmax of attention scores on a GPU (`kernels/softmax.cu`): the scale, the causal
//! mask and the softmax in one launch, and its backward in one more — where candle's
//! differentiable ops make ~7 passes over the (rows, S) scores each way, most of them
//! broadcasts. Used by `Attention::attend` for training and prompts on a GPU.
//! Dims: rows = (B, Hkv, G*T) flattened, T new positions after S - T cached ones.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{bail, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::{alloc, grid, ptr};
use crate::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx"));
const MODULE: &str = "llama3_softmax";

/// Whether the kernels take these scores: on a GPU, f32/bf16/f16 (gradients allowed).
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && super::enabled()
}

/// Scores (.., S) whose rows are the T new positions of (G heads of) a sequence, T at a time
/// -> softmax(scale * x + causal_mask(T, S - T)), differentiable.
pub fn causal(x: &Tensor, scale: f64, t: usize) -> Result<Tensor> {
    let op = CausalSoftmax {
        t,
        scale: scale as f32,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[derive(Clone, Copy)]
struct CausalSoftmax {
    t: usize,
    scale: f32,
}

/// The backward: (y, dy) -> dx.
struct CausalSoftmaxBwd(CausalSoftmax);

/// Rows and row length of contiguous scores, checked against T.
fn score_rows(l: &Layout, t: usize) -> candle_core::Result<(usize, usize)> {
    let s = *l.dims().last().unwrap_or(&0);
    let n = l.shape().elem_count();
    if !l.is_contiguous()
        || s == 0
        || t == 0
        || t > s
        || !n.is_multiple_of(s)
        || !(n / s).is_multiple_of(t)
    {
        bail!(
            "causal softmax: {:?} scores for {t} new positions",
            l.dims()
        );
    }
    Ok((n / s, s))
}

impl CausalSoftmax {
    /// Launches `name` over the rows: inputs `ins` (one or two, y then dy), output of their
    /// shape and dtype.
    fn launch(
        &self,
        name: &str,
        ins: &[(&CudaStorage, &Layout)],
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (x, xl) = ins[0];
        let (r, s) = score_rows(xl, self.t)?;
        let dev = x.device.clone();
        let stream = dev.cuda_stream();
        let out = alloc(&dev, x.dtype(), r * s)?;
        {
            let mut ptrs = Vec::with_capacity(3);
            let mut guards = Vec::with_capacity(3);
            let mut kinds = Vec::with_capacity(2);
            for (st, l) in ins {
                if score_rows(l, self.t)? != (r, s) {
                    bail!(
                        "causal softmax backward: y {:?}, dy {:?}",
                        xl.dims(),
                        l.dims()
                    );
                }
                let (p, k, g) = ptr(&st.slice, l.start_offset(), &stream)?;
                ptrs.push(p);
                kinds.push(k);
                guards.push(g);
            }
            let (op, xk, go) = ptr(&out, 0, &stream)?;
            ptrs.push(op);
            guards.push(go);
            if kinds.iter().any(|&k| k != xk) {
                bail!("causal softmax backward: y and dy must share a dtype");
            }
            let (t, s32) = (self.t as i32, s as i32);
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let mut bld = func.builder();
            for p in &ptrs {
                bld.arg(p);
            }
            bld.arg(&t).arg(&s32).arg(&self.scale).arg(&xk);
            // SAFETY: one or two input pointers and the output, then i32, i32, f32, i32, as
            // the kernels declare; every row holds s values (checked above).
            unsafe { bld.launch(grid(r, 1, 1)) }.w()?;
        }
        Ok((
            CudaStorage {
                slice: out,
                device: dev,
            },
            xl.shape().clone(),
        ))
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "llama3-causal-softmax"
    }

    super::gpu_only!(a);

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.launch("causal_softmax", &[(x, l)])
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dy = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&dy, &CausalSoftmaxBwd(*self))?))
    }
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "llama3-causal-softmax-bwd"
    }

    super::gpu_only!(a b);

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        yl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.0.launch("causal_softmax_bwd", &[(y, yl), (dy, dyl)])
    }
}
