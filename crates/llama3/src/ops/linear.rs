//! The weight matmul `x · Wᵀ` by weight kind, and stacked projections. `model::Linear` holds
//! a [`LinearWeight`] and adds its LoRA adapters on top of what this returns.
//!
//! | weight kind                 | inference                                   | gradients tracked                  |
//! |-----------------------------|---------------------------------------------|------------------------------------|
//! | dense, CPU f32              | candle matmul (gemm)                        | `fused::linear` (own backward)     |
//! | dense, CUDA / other dtypes  | candle matmul in the compute dtype (cuBLAS) | the same (differentiable)          |
//! | Q4_0/1, Q5_0/1, Q8_0, F16 packed (CPU) | `quant::Packed` kernels; q/k/v and gate/up in one pass (`quant::matmul_many`) | `quant::grad` (backward to x, QLoRA) |
//! | other GGUF blocks           | `quant::matmul` where it takes them, else candle's `QMatMul` | `quant::grad`      |
//! | dense q/k/v, gate/up on a GPU | one matmul over the [`Stack`]ed weights    | each weight's own (stack steps aside) |

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, TensorId};

use crate::quant::grad::{self, QWeight};
use crate::quant::Packed;
use crate::Result;

#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// (out, in), any float dtype; the input is cast to it and the output back.
    Dense(Tensor),
    /// (out, in) GGUF blocks; the input is f32 (candle quantizes it to Q8 blocks per row, as
    /// llama.cpp does).
    Quantized(QMatMul),
    /// (out, in) Q4_0/1, Q5_0/1, Q8_0 or F16 blocks on the CPU, repacked 8 rows at a time for our
    /// kernels (`quant::Packed`); the usual form of a GGUF model's weights on the CPU.
    Packed(Arc<Packed>),
}

impl LinearWeight {
    /// GGUF blocks, in either form.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, LinearWeight::Dense(_))
    }

    /// A quantized weight in its packed form where our kernels take it.
    pub fn from_qtensor(q: Arc<QTensor>) -> Self {
        match Packed::new(&q) {
            Ok(Some(p)) => LinearWeight::Packed(Arc::new(p)),
            _ => LinearWeight::Quantized(QMatMul::QTensor(q)),
        }
    }

    /// The weight as a tensor: dense as is, quantized dequantized to f32.
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(match self {
            LinearWeight::Dense(t) => t.clone(),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            LinearWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.to_dtype(DType::F32)?
            }
            LinearWeight::Packed(p) => p.dequantize()?,
        })
    }
}

/// Which implementation a weight's products take (for `info` and `bench`): our packed or row
/// kernels, a dense gemm, or candle's generic quantized matmul, which is slow and said so.
pub fn kernel(w: &LinearWeight) -> String {
    // GGUF's names (candle's Debug writes `Q4K` for `Q4_K`).
    let name = |t: candle_core::quantized::GgmlDType| format!("{t:?}").replace('K', "_K");
    match w {
        LinearWeight::Dense(t) => format!("dense {}", t.dtype().as_str()),
        LinearWeight::Packed(p) => format!("{} packed (llama3 kernels)", p.type_name()),
        LinearWeight::Quantized(QMatMul::QTensor(q)) => {
            match crate::quant::Kind::of(q.dtype()).is_some() && q.device().is_cpu() {
                true => format!("{} row kernels (llama3)", name(q.dtype())),
                false => format!(
                    "{} candle's generic quantized matmul (slow)",
                    name(q.dtype())
                ),
            }
        }
        LinearWeight::Quantized(_) => "dequantized (candle)".into(),
    }
}

/// x (.., in) · weight (out, in)ᵀ -> (.., out); dense products in `compute_dtype` when set.
pub fn matmul(w: &LinearWeight, x: &Tensor, compute_dtype: Option<DType>) -> Result<Tensor> {
    Ok(match w {
        LinearWeight::Dense(w) => dense(w, x, compute_dtype)?,
        // QLoRA: an input that carries gradients (LoRA upstream) needs the backward to x.
        LinearWeight::Quantized(QMatMul::QTensor(w)) if x.track_op() => {
            grad::matmul(x, QWeight::Blocks(w.clone()))?
        }
        LinearWeight::Packed(p) if x.track_op() => grad::matmul(x, QWeight::Packed(p.clone()))?,
        LinearWeight::Packed(p) => p.matmul(x)?,
        LinearWeight::Quantized(q) => {
            let own = match q {
                QMatMul::QTensor(w) => crate::quant::matmul(x, w)?,
                _ => None,
            };
            match own {
                Some(y) => y,
                None => q.forward(&x.contiguous()?)?,
            }
        }
    })
}

/// Several weights applied to one input (q/k/v, gate/up) in one pass where the kernels share
/// it: packed weights of one format, no compute dtype, no gradients, the input quantized once
/// (`quant::matmul_many`). None where that does not apply (each weight then runs alone).
pub fn matmul_many<const N: usize>(
    ws: [(&LinearWeight, Option<DType>); N],
    x: &Tensor,
) -> Result<Option<[Tensor; N]>> {
    let packed: Vec<&Packed> = ws
        .iter()
        .filter_map(|(w, dt)| match (w, dt) {
            (LinearWeight::Packed(p), None) => Some(&**p),
            _ => None,
        })
        .collect();
    if packed.len() != N || x.track_op() || !x.device().is_cpu() {
        return Ok(None);
    }
    Ok(crate::quant::matmul_many(&packed, x)?.and_then(|ys| ys.try_into().ok()))
}

/// x (.., in) · w (out, in)ᵀ dense -> (.., out): the input cast to the compute dtype (the
/// weight's by default), the product cast back (cuBLAS accumulates in f32).
pub fn dense(w: &Tensor, x: &Tensor, compute_dtype: Option<DType>) -> Result<Tensor> {
    let mut out_dims = x.dims().to_vec();
    let last = out_dims.len() - 1;
    out_dims[last] = w.dim(0)?;
    let dt = compute_dtype.unwrap_or(w.dtype());
    let x2 = x.reshape(((), w.dim(1)?))?.to_dtype(dt)?;
    let w = w.to_dtype(dt)?;
    // (N, in) x (in, out) -> (N, out); training on the CPU: `fused::linear`; a few rows of
    // an f32 inference (decoding): `cpu::matvec`, one pass over the weight.
    let rows = x2.dim(0)?;
    let y = match super::trains_on_cpu(&[&x2, &w]) {
        true => crate::fused::linear::linear(&x2, &w)?,
        false if few_rows_f32(&x2, &w, rows) => {
            let (k, n) = (w.dim(1)?, w.dim(0)?);
            let mut out = vec![0f32; rows * n];
            crate::fused::with_f32([&x2, &w], |[xs, ws]| {
                crate::cpu::matvec::matmul(xs, ws, rows, k, n, &mut out)
            })?;
            Tensor::from_vec(out, (rows, n), x2.device())?
        }
        false => x2.matmul(&w.t()?)?,
    };
    Ok(y.to_dtype(x.dtype())?.reshape(out_dims)?)
}

/// Whether `x (rows, in) · wᵀ` goes to `cpu::matvec`: f32 on the CPU, a few rows, no
/// gradients.
fn few_rows_f32(x: &Tensor, w: &Tensor, rows: usize) -> bool {
    rows <= crate::cpu::matvec::MAX_ROWS
        && w.device().is_cpu()
        && w.dtype() == DType::F32
        && x.dtype() == DType::F32
        && !x.track_op()
        && !w.track_op()
}

/// Whether projections are stacked on `device` ([`Stack`]): on a GPU. The CPU keeps
/// separate weights: its quantized kernels already share one pass, and some of candle's CPU
/// functions read a view's storage from its start (`QTensor::quantize`), so views stay off
/// the CPU.
pub fn stacks_on(device: &Device) -> bool {
    !device.is_cpu()
}

/// One layer's part of a [`Stack`]: its weight, whether it has adapters, its compute dtype.
pub struct Part<'a> {
    pub weight: &'a LinearWeight,
    pub adapters: bool,
    pub compute_dtype: Option<DType>,
}

/// Layers that read the same input (q/k/v, gate/up) with their dense weights stacked by rows
/// in one tensor, each layer's weight a view of it: one matmul gives all their outputs (one
/// launch on a GPU instead of two or three). Built at load; used only while every layer still
/// holds its view (a weight replaced by training or a merge falls back to the layers' own
/// forwards) and when nothing would differ from those: no adapters, no gradients.
#[derive(Clone, Debug)]
pub struct Stack {
    /// (Σ out_i, in)
    w: Tensor,
    /// Each layer's weight (the view's id) and rows, in order.
    parts: Vec<(TensorId, usize)>,
}

impl Stack {
    /// Stacks the weights when all are dense, of one dtype, shape (.., in) and device, without
    /// adapters; each weight is replaced by its view of the stack. None otherwise (quantized
    /// weights have their own fused pass, [`matmul_many`]).
    pub fn new(ws: &mut [(&mut LinearWeight, bool)]) -> Result<Option<Self>> {
        let mut dense = Vec::with_capacity(ws.len());
        for (w, adapters) in ws.iter() {
            match &**w {
                LinearWeight::Dense(w) if !adapters && !w.track_op() => dense.push(w),
                _ => return Ok(None),
            }
        }
        let Some(first) = dense.first() else {
            return Ok(None);
        };
        let same = |w: &&Tensor| {
            w.dtype() == first.dtype()
                && w.device().same_device(first.device())
                && w.dims().len() == 2
                && w.dims()[1] == first.dims()[1]
        };
        if !dense.iter().all(same) {
            return Ok(None);
        }
        let w = Tensor::cat(&dense, 0)?;
        let mut parts = Vec::with_capacity(ws.len());
        let mut r0 = 0;
        for (lw, _) in ws.iter_mut() {
            let rows = match &**lw {
                LinearWeight::Dense(t) => t.dim(0)?,
                _ => 0,
            };
            let view = w.narrow(0, r0, rows)?;
            parts.push((view.id(), rows));
            **lw = LinearWeight::Dense(view);
            r0 += rows;
        }
        Ok(Some(Self { w, parts }))
    }

    /// The layers' outputs from one matmul (views of its result, split along the last dim),
    /// or None where the stack does not apply (see [`Stack`]).
    pub fn forward<const N: usize>(
        &self,
        ls: [Part; N],
        x: &Tensor,
    ) -> Result<Option<[Tensor; N]>> {
        let holds = |p: &Part, id: TensorId| match p.weight {
            LinearWeight::Dense(w) => w.id() == id && !p.adapters && !w.track_op(),
            _ => false,
        };
        let ok = N == self.parts.len()
            && !x.track_op()
            && ls.iter().zip(&self.parts).all(|(l, (id, _))| holds(l, *id))
            && ls.iter().all(|l| l.compute_dtype == ls[0].compute_dtype);
        if !ok {
            return Ok(None);
        }
        let y = dense(&self.w, x, ls[0].compute_dtype)?; // (.., Σ out_i)
        let last = y.rank() - 1;
        let mut r0 = 0;
        let mut out = Vec::with_capacity(N);
        for (_, rows) in &self.parts {
            out.push(y.narrow(last, r0, *rows)?);
            r0 += rows;
        }
        Ok(out.try_into().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    /// Each weight kind names its kernel; a type without ours says it takes candle's slow path.
    #[test]
    fn kernel_names_the_path() {
        let w = Tensor::from_vec(
            crate::quant::test_data(16 * 256, 1),
            (16, 256),
            &Device::Cpu,
        );
        let w = w.unwrap();
        let name = |dtype| {
            let q = QTensor::quantize(&w, dtype).unwrap();
            kernel(&LinearWeight::from_qtensor(Arc::new(q)))
        };
        assert_eq!(name(GgmlDType::Q4K), "Q4_K packed (llama3 kernels)");
        assert_eq!(name(GgmlDType::Q6K), "Q6_K packed (llama3 kernels)");
        assert_eq!(
            name(GgmlDType::Q2K),
            "Q2_K candle's generic quantized matmul (slow)"
        );
        assert_eq!(kernel(&LinearWeight::Dense(w)), "dense f32");
    }
}
