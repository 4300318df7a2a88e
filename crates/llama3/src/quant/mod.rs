//! CPU matmul kernels for GGUF block types that candle runs with scalar code.
//!
//! candle 0.11 has AVX2 dot products for Q4_0, Q8_0 and the K-quants, but Q4_1 (the default
//! model's type) falls back to `vec_dot_unopt`, ~85% of decode time. This module takes the
//! weight's raw blocks from the `QTensor` (no copy) and computes `x @ W^T` the way llama.cpp's
//! `ggml_vec_dot_q4_1_q8_1` does: activations quantized to Q8_1 blocks of 32 (round half to even,
//! as its AVX2 `quantize_row_q8_1`), an integer dot per block, `d_w*d_x*Σ q_w q_x + m_w*s_x` in
//! f32. Types not handled here return `None` and go through candle.

mod q4_1;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::Result;

pub use q4_1::{dot_q4_1_q8_1, dot_q4_1_q8_1_x4, quantize_row_q8_1, BlockQ8_1, Q4_1_BYTES};

/// `x @ W^T` for (.., K) f32 `x` and (N, K) quantized `w`, or `None` when this module has no
/// kernel for `w`'s type or device.
pub fn matmul(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    if w.dtype() != GgmlDType::Q4_1 || !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let dims = x.dims().to_vec();
    let m = x.elem_count() / k;
    let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let raw = w.data()?;
    let out = matmul_q4_1(&x, &raw, m, k, n);
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(Some(Tensor::from_vec(out, out_dims, &Device::Cpu)?))
}

/// Rows of W per parallel task: small enough to balance two cores, large enough to amortise.
const ROWS_PER_TASK: usize = 16;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used for writes to disjoint indices from the pool's tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y (M, N) = x (M, K) @ W^T` with `W` (N, K) as raw Q4_1 blocks.
pub fn matmul_q4_1(x: &[f32], w: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
    let kb = k / 32;
    let xq: Vec<BlockQ8_1> = x.chunks_exact(k).flat_map(quantize_row_q8_1).collect();
    let row_bytes = kb * Q4_1_BYTES;
    // Each task owns a range of W rows and computes them against every x row (four at a time,
    // so each weight block is unpacked once per four rows); written (N, M), transposed at the
    // end when M > 1. candle's barrier pool runs it, so only one set of worker threads spins.
    let mut yt = vec![0f32; n * m];
    let out = SyncPtr(yt.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(ROWS_PER_TASK), |tasks| {
        let mut acc = [0f32; 4];
        for r in tasks.start * ROWS_PER_TASK..(tasks.end * ROWS_PER_TASK).min(n) {
            let wrow = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut j = 0;
            while j + 4 <= m {
                let xs: [&[BlockQ8_1]; 4] = std::array::from_fn(|i| &xq[(j + i) * kb..][..kb]);
                dot_q4_1_q8_1_x4(wrow, xs, &mut acc);
                for (i, v) in acc.iter().enumerate() {
                    // SAFETY: rows r are disjoint between tasks and r * m + j + i < n * m.
                    unsafe { *out.get().add(r * m + j + i) = *v };
                }
                j += 4;
            }
            for j in j..m {
                let v = dot_q4_1_q8_1(wrow, &xq[j * kb..][..kb]);
                // SAFETY: as above.
                unsafe { *out.get().add(r * m + j) = v };
            }
        }
    });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for c in 0..n {
        for r in 0..m {
            y[r * n + c] = yt[c * m + r];
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn q4_1_matmul_matches_dequantized_reference() {
        let (m, k, n) = (3, 256, 70);
        let w = Tensor::from_vec(data(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(data(m * k, 2), (m, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let got = matmul(&x, &q).unwrap().unwrap();
        // Reference: candle's own (scalar) Q4_1 x Q8_1 path.
        let want = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        // Only rounding of exact .5 ties in the activation quantization may differ.
        assert!(d.to_scalar::<f32>().unwrap() < 1e-2);
    }
}
