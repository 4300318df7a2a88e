//! `x @ W^T` with quantized `W` and a backward to `x`, for QLoRA: LoRA matrices before a
//! quantized layer need the gradient through it. The forward is the usual quantized matmul
//! (our kernels or candle's); the backward dequantizes this one weight on the fly,
//! `dx = dy @ W`, and drops it, so the model is never held dense. `W` itself is frozen (no
//! gradient), and activation quantization is passed straight through, as QLoRA does.

use std::sync::Arc;

use candle_core::op::BackpropOp;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Storage, Tensor};

use crate::Result;

/// A frozen quantized weight in either form.
#[derive(Clone)]
pub enum QWeight {
    Blocks(Arc<QTensor>),
    Packed(Arc<super::Packed>),
}

impl QWeight {
    fn dequantize(&self, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        match self {
            QWeight::Blocks(q) => q.dequantize(device),
            QWeight::Packed(p) => p.dequantize().map_err(msg)?.to_device(device),
        }
    }
}

fn msg(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

struct QLinear(QWeight);

/// The product without gradient tracking.
fn forward(x: &Tensor, w: &QWeight) -> candle_core::Result<Tensor> {
    match w {
        QWeight::Packed(p) => p.matmul(x).map_err(msg),
        QWeight::Blocks(w) => {
            if let Some(y) = super::matmul(x, w).map_err(msg)? {
                return Ok(y);
            }
            QMatMul::QTensor(w.clone()).forward(x)
        }
    }
}

/// A tensor over the part of `storage` that `layout` (contiguous) covers.
fn view(storage: Storage, layout: &Layout) -> candle_core::Result<Tensor> {
    let n = layout.shape().elem_count();
    let start = layout.start_offset();
    if !layout.is_contiguous() {
        candle_core::bail!("qlinear expects a contiguous input");
    }
    let full = Tensor::from_storage(storage, start + n, BackpropOp::none(), false);
    full.narrow(0, start, n)?.reshape(layout.shape())
}

impl CustomOp1 for QLinear {
    fn name(&self) -> &'static str {
        "qlinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = forward(&view(Storage::Cpu(s.clone()), l)?, &self.0)?;
        let shape = y.shape().clone();
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let x = view(Storage::Cuda(s.try_clone(l)?), l)?;
        let y = forward(&x, &self.0)?.contiguous()?;
        let shape = y.shape().clone();
        let (st, yl) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(c) => Ok((c.try_clone(yl)?, shape)),
            _ => candle_core::bail!("qlinear: output left the GPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // (.., out) x (out, in) -> (.., in), W dequantized for this product only.
        let w = self.0.dequantize(dy.device())?;
        let dx = dy.to_dtype(DType::F32)?.broadcast_matmul(&w)?;
        Ok(Some(dx.to_dtype(arg.dtype())?))
    }
}

/// (.., K) f32 `x` times (N, K) quantized `w` transposed -> (.., N), differentiable in `x`.
pub fn matmul(x: &Tensor, w: QWeight) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(QLinear(w))?)
}
