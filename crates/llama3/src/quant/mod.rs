//! CPU matmul kernels for GGUF block types where candle is slow.
//!
//! candle 0.11 runs Q4_1 (the default model's type) through scalar `vec_dot_unopt` (~85% of
//! decode time), and every type's prompt-sized matmul as independent row-by-row dots. Here the
//! weight's raw blocks are read from the `QTensor` (no copy) and `x @ W^T` is computed the way
//! llama.cpp does: activations quantized to 8-bit blocks of 32 (`quantize_row_q8_1` /
//! `quantize_row_q8_0`, round half to even as its x86 code), an integer dot per block, scales
//! applied in f32. Prompt batches take four activation rows per weight row, so each weight
//! block is loaded and unpacked once for four rows. Types not handled here return `None` and
//! go through candle.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_blk;
#[cfg(target_arch = "x86_64")]
mod amx_k;
#[cfg(all(test, target_arch = "x86_64"))]
mod amx_tests;
#[cfg(target_arch = "x86_64")]
mod amx_xs;
mod format;
pub mod grad;
mod iq4;
#[cfg(test)]
mod iq4_tests;
pub mod isa;
mod kquant;
#[cfg(test)]
mod kquant_tests;
mod packed;
mod q4_0;
mod q4_1;
mod q5;
mod q8;
mod q8_0;
mod x8;
mod x8_k;
mod x8_q5;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::Result;

pub use iq4::Iq4;
pub use kquant::Super;
pub use packed::{gemm_many, matmul_many, Format, Packed};
pub(crate) use q8::has_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use q8::hsum;
pub use q8::{quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, BlockQ8, BlockQ8K};

/// The CPU kernels' paths on this machine, for `info` and `bench`: the packed kernels'
/// instruction set, and AMX where it runs (prompts and batches of 16 rows or more).
pub fn cpu_path() -> String {
    let isa = isa::Isa::detected().name();
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        return format!(
            "{isa}; amx for 16+ rows of Q4_0, Q5_0, Q8_0, IQ4_NL, IQ4_XS, Q4_K, Q5_K, Q6_K"
        );
    }
    isa.to_string()
}

/// The weight types with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Kind {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Kind::Q4_0),
            GgmlDType::Q4_1 => Some(Kind::Q4_1),
            GgmlDType::Q5_0 => Some(Kind::Q5_0),
            GgmlDType::Q5_1 => Some(Kind::Q5_1),
            GgmlDType::Q8_0 => Some(Kind::Q8_0),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => q4_0::BYTES,
            Kind::Q4_1 => q4_1::BYTES,
            Kind::Q5_0 => q5::BYTES_0,
            Kind::Q5_1 => q5::BYTES_1,
            Kind::Q8_0 => q8_0::BYTES,
        }
    }

    /// Quantizes one activation row to this type's `vec_dot_type`.
    fn quantize(self, x: &[f32]) -> Vec<BlockQ8> {
        match self {
            Kind::Q4_1 | Kind::Q5_1 => quantize_row_q8_1(x),
            Kind::Q4_0 | Kind::Q5_0 | Kind::Q8_0 => quantize_row_q8_0(x),
        }
    }

    /// Dot of one weight row with one activation row.
    fn dot1(self, w: &[u8], x: &[BlockQ8], avx2: bool) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2/FMA/F16C were detected (`q8::has_avx2`); slices are checked inside.
            return unsafe {
                match self {
                    Kind::Q4_0 => q4_0::dot1_avx2(w, x),
                    Kind::Q4_1 => q4_1::dot1_avx2(w, x),
                    Kind::Q8_0 => q8_0::dot1_avx2(w, x),
                    Kind::Q5_0 | Kind::Q5_1 => self.dot_portable(w, x),
                }
            };
        }
        let _ = avx2;
        self.dot_portable(w, x)
    }

    /// The portable row dot. Q5's row dots have no AVX2 code: they only run for weights with
    /// rows not a multiple of 8 (a Llama's are all packed, `x8_q5.rs`).
    fn dot_portable(self, w: &[u8], x: &[BlockQ8]) -> f32 {
        match self {
            Kind::Q4_0 => q4_0::dot_scalar(w, x),
            Kind::Q4_1 => q4_1::dot_scalar(w, x),
            Kind::Q5_0 => q5::dot_scalar(w, x, false),
            Kind::Q5_1 => q5::dot_scalar(w, x, true),
            Kind::Q8_0 => q8_0::dot_scalar(w, x),
        }
    }

    /// Dots of one weight row with `R` activation rows.
    fn dot<const R: usize>(self, w: &[u8], x: [&[BlockQ8]; R], out: &mut [f32; R], avx2: bool) {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2/FMA/F16C were detected (`q8::has_avx2`); slices are checked inside.
            unsafe {
                match self {
                    Kind::Q4_0 => q4_0::dot_avx2(w, x, out),
                    Kind::Q4_1 => q4_1::dot_avx2(w, x, out),
                    Kind::Q8_0 => q8_0::dot_avx2(w, x, out),
                    Kind::Q5_0 | Kind::Q5_1 => {
                        for (o, x) in out.iter_mut().zip(x) {
                            *o = self.dot_portable(w, x);
                        }
                    }
                }
            }
            return;
        }
        let _ = avx2;
        for (o, x) in out.iter_mut().zip(x) {
            *o = self.dot_portable(w, x);
        }
    }
}

/// `x @ W^T` for (.., K) f32 `x` and (N, K) quantized `w`, or `None` when this module has no
/// kernel for `w`'s type or device.
pub fn matmul(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let Some(kind) = Kind::of(w.dtype()) else {
        return Ok(None);
    };
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let dims = x.dims().to_vec();
    let m = x.elem_count() / k;
    let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let raw = w.data()?;
    let out = gemm(kind, &x, &raw, m, k, n);
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(Some(Tensor::from_vec(out, out_dims, &Device::Cpu)?))
}

/// Rows of W per parallel task: small enough to balance two cores, large enough to amortise.
const ROWS_PER_TASK: usize = 16;
/// Activation rows per tile (a multiple of 4, the kernels' row block).
const X_TILE: usize = 16;

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

/// `y (M, N) = x (M, K) @ W^T` with `W` (N, K) as raw blocks of `kind`.
pub fn gemm(kind: Kind, x: &[f32], w: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
    let kb = k / 32;
    let xq: Vec<BlockQ8> = x.chunks_exact(k).flat_map(|r| kind.quantize(r)).collect();
    let row_bytes = kb * kind.block_bytes();
    let avx2 = q8::has_avx2();
    // Each task owns a range of W rows (output columns) and computes them against every x
    // row, writing y (M, N) directly: a task's 16 columns fill one cache line per x row.
    let mut y = vec![0f32; m * n];
    let out = SyncPtr(y.as_mut_ptr());
    let task = |tasks: std::ops::Range<usize>| {
        let rows = tasks.start * ROWS_PER_TASK..(tasks.end * ROWS_PER_TASK).min(n);
        // Tiles of X_TILE activation rows: the task's weight rows and one tile stay in L1/L2
        // (a prompt of 512 rows would otherwise stream every activation row from L3 for each
        // weight row).
        for j0 in (0..m).step_by(X_TILE) {
            let j1 = (j0 + X_TILE).min(m);
            for r in rows.clone() {
                let wrow = &w[r * row_bytes..(r + 1) * row_bytes];
                let mut j = j0;
                let mut acc4 = [0f32; 4];
                while j + 4 <= j1 {
                    let xs: [&[BlockQ8]; 4] = std::array::from_fn(|i| &xq[(j + i) * kb..][..kb]);
                    kind.dot(wrow, xs, &mut acc4, avx2);
                    for (i, v) in acc4.iter().enumerate() {
                        // SAFETY: columns r are disjoint between tasks and (j + i) * n + r < m * n.
                        unsafe { *out.get().add((j + i) * n + r) = *v };
                    }
                    j += 4;
                }
                for j in j..j1 {
                    let v = kind.dot1(wrow, &xq[j * kb..][..kb], avx2);
                    // SAFETY: as above.
                    unsafe { *out.get().add(j * n + r) = v };
                }
            }
        }
    };
    // rayon, not candle's spinning barrier pool: with another process on the cores a spinning
    // pool waits whole time slices for a descheduled worker (measured: tg64 11.7 vs 36.5 tok/s
    // under load), while rayon's work stealing lets whichever thread runs take the rows.
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .with_min_len(4)
        .for_each(|t| task(t..t + 1));
    y
}

/// Deterministic values in [-1, 1) for kernel tests (an LCG).
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u64) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    use super::test_data as data;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        d.to_scalar::<f32>().unwrap()
    }

    /// Against candle's own quantized matmul (same activation quantization up to rounding of
    /// exact .5 ties) and against the f32 matmul of the dequantized weights.
    #[test]
    fn kernels_match_references() {
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            for m in [1, 3, 4, 9] {
                let (k, n) = (256, 70);
                let w = Tensor::from_vec(data(n * k, 1), (n, k), &Device::Cpu).unwrap();
                let x = Tensor::from_vec(data(m * k, 2), (m, k), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let got = matmul(&x, &q).unwrap().unwrap();
                let deq = q.dequantize(&Device::Cpu).unwrap();
                let dense = x.matmul(&deq.t().unwrap()).unwrap();
                let candle = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
                assert!(max_diff(&got, &candle) < 1e-2, "{dtype:?} m={m} vs candle");
                // 8-bit activations: relative error ~1e-2 of |y| ~ sqrt(k)/3.
                assert!(max_diff(&got, &dense) < 0.1, "{dtype:?} m={m} vs dense");
            }
        }
    }

    /// Batch invariance: each row of an (M, N) product equals the same row computed alone.
    #[test]
    fn gemm_rows_do_not_depend_on_the_batch() {
        let (k, n, m) = (256, 37, 9);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let kind = Kind::of(dtype).unwrap();
            let w = Tensor::from_vec(data(n * k, 5), (n, k), &Device::Cpu).unwrap();
            let raw = QTensor::quantize(&w, dtype)
                .unwrap()
                .data()
                .unwrap()
                .to_vec();
            let x = data(m * k, 6);
            let all = gemm(kind, &x, &raw, m, k, n);
            for j in 0..m {
                let one = gemm(kind, &x[j * k..(j + 1) * k], &raw, 1, k, n);
                assert!(one == all[j * n..(j + 1) * n], "{dtype:?} row {j}");
            }
        }
    }

    #[test]
    fn simd_and_scalar_dots_agree() {
        let (k, n) = (32 * 9, 5);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let kind = Kind::of(dtype).unwrap();
            let w = Tensor::from_vec(data(n * k, 3), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let raw = q.data().unwrap();
            let x = data(4 * k, 4);
            let xq: Vec<BlockQ8> = x.chunks_exact(k).flat_map(|r| kind.quantize(r)).collect();
            let row = &raw[..k / 32 * kind.block_bytes()];
            let xs: [&[BlockQ8]; 4] = std::array::from_fn(|i| &xq[i * 9..][..9]);
            let (mut simd, mut scalar) = ([0f32; 4], [0f32; 4]);
            kind.dot(row, xs, &mut simd, q8::has_avx2());
            kind.dot(row, xs, &mut scalar, false);
            // A row's result does not depend on how many rows it was computed with.
            for (i, x) in xs.iter().enumerate() {
                let one = kind.dot1(row, x, q8::has_avx2());
                assert_eq!(one.to_bits(), simd[i].to_bits(), "{dtype:?} row {i}");
            }
            for (a, b) in simd.iter().zip(scalar) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{dtype:?}: {a} vs {b}"
                );
            }
        }
    }
}
