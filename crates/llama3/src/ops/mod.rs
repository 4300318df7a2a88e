//! One function per op that picks its implementation; the model calls these and nothing
//! below them. The kernels (`cpu`, `fused`, `quant`, `cuda`) are leaves: slices or tensors in
//! and out, no `crate::model`.
//!
//! | op                              | CPU f32 inference | CPU quantized   | CPU training       | CUDA (our kernels)       | fallback (candle ops)  |
//! |---------------------------------|-------------------|-----------------|--------------------|--------------------------|------------------------|
//! | [`attention::attention`]        | `cpu::attend`     | (activations f32) | `fused::attn`    | `cuda::attention` (decode) | rope, matmul, softmax |
//! | [`attention::attention_batch`]  | `cpu::attend`     | "               | —                  | per sequence, as above   | per sequence           |
//! | [`norm::rms_norm`]              | candle fused      | "               | `fused::norm`      | candle fused             | differentiable ops     |
//! | [`norm::add_rms_norm`]          | add + norm        | "               | add + `fused::norm`| `cuda::rows` (one launch)| add + norm             |
//! | [`swiglu::swiglu`]              | `fused::swiglu`   | "               | `fused::swiglu`    | `cuda::rows` (decode)    | `silu(g) * up`         |
//! | [`rope::rope`]                  | candle fused      | "               | differentiable ops | candle fused             | differentiable ops     |
//! | [`linear::matmul`]              | gemm              | `quant` kernels | `fused::linear`, `quant::grad` | cuBLAS, stacked | candle matmul / QMatMul |
//! | [`softmax::causal_softmax`]     | candle fused      | "               | differentiable, f32 | `cuda::softmax`         | differentiable ops     |
//! | [`loss::cross_entropy_sum`]     | —                 | —               | `fused::ce` (head fused) | —                  | log-softmax + gather   |
//!
//! Each file's own table says exactly when each one runs.

pub mod attention;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

use candle_core::{DType, Tensor};

pub use crate::kv::Heads;

/// Where an op runs (attention's choice; the other ops choose inline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda,
    CpuInference,
    CpuTraining,
    Candle,
}

/// Whether these activations carry gradients as f32 on the CPU: the fused training ops
/// (`crate::fused`) take them.
pub fn trains_on_cpu(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
        && xs
            .iter()
            .all(|x| x.dtype() == DType::F32 && x.device().is_cpu())
}
