//! Activation blocks: rows of f32 quantized to 32 x i8 with one scale, as llama.cpp quantizes
//! the input of a quantized matmul (`vec_dot_type` of the weight type: Q8_1 for Q4_1 and Q5_1,
//! Q8_0 for Q4_0, Q5_0 and Q8_0). `d` and `s` are rounded to f16 as ggml stores them but kept as f32 so the dot loops
//! convert nothing.

use half::f16;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8 {
    /// Scale: value = d * q.
    pub d: f32,
    /// Q8_1: `d * Σq` (rounded to f16). Q8_0: `Σq` itself (exact in f32), which the Q4_0
    /// and Q5_0 kernels use to take the weights' offset (8, 16) out of the integer sums.
    pub s: f32,
    pub qs: [i8; 32],
}

/// An activation super-block for the K-quant and IQ4_XS kernels (llama.cpp's `block_q8_K`):
/// 256 values with one f32 scale, and the sums of each 16 quants (exact).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale: value = d * q.
    pub d: f32,
    pub bsums: [i16; 16],
    pub qs: [i8; 256],
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// llama.cpp `quantize_row_q8_1` (x86 flavour: `127 / amax`, round half to even).
pub fn quantize_row_q8_1(x: &[f32]) -> Vec<BlockQ8> {
    quantize(x, true)
}

/// llama.cpp `quantize_row_q8_0` (x86 flavour, as above; `s` holds the plain Σq).
pub fn quantize_row_q8_0(x: &[f32]) -> Vec<BlockQ8> {
    quantize(x, false)
}

fn quantize(x: &[f32], with_sum: bool) -> Vec<BlockQ8> {
    let avx2 = has_avx2();
    x.chunks_exact(32)
        .map(|b| {
            let amax = abs_max(b, avx2);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut qs = [0i8; 32];
            let sum = round_any(b, id, &mut qs, avx2);
            let d16 = f16::from_f32(d).to_f32();
            let s = if with_sum {
                f16::from_f32(d * sum as f32).to_f32()
            } else {
                sum as f32
            };
            BlockQ8 { d: d16, s, qs }
        })
        .collect()
}

/// Quantizes a row to super-blocks of 256 (`quantize_row_q8_K`'s layout; the rounding of
/// `quantize_row_q8_0`: `127 / amax`, round half to even, with the super-block's `amax`).
pub fn quantize_row_q8_k(x: &[f32]) -> Vec<BlockQ8K> {
    let avx2 = has_avx2();
    x.chunks_exact(256)
        .map(|sb| {
            let amax = sb
                .chunks_exact(32)
                .fold(0f32, |a, b| a.max(abs_max(b, avx2)));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut out = BlockQ8K {
                d: amax / 127.0,
                bsums: [0; 16],
                qs: [0; 256],
            };
            for (i, b) in sb.chunks_exact(32).enumerate() {
                let mut qs = [0i8; 32];
                round_any(b, id, &mut qs, avx2);
                out.qs[32 * i..32 * i + 32].copy_from_slice(&qs);
            }
            for (h, q) in out.qs.chunks_exact(16).enumerate() {
                out.bsums[h] = q.iter().map(|&v| v as i16).sum();
            }
            out
        })
        .collect()
}

/// `max |x|` of a block (NaN ignored, as `f32::max` does).
fn abs_max(b: &[f32], avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 && b.len() == 32 {
        // SAFETY: the features were detected by the caller; `b` has 32 elements.
        return unsafe { abs_max_avx2(b) };
    }
    let _ = avx2;
    b.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// `abs_max` of 32 values: `max_ps(|x|, acc)` keeps `acc` where x is NaN, like `f32::max`;
/// max is exact, so the order does not change the result.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_max_avx2(b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let mut acc = _mm256_setzero_ps();
    for i in 0..4 {
        let v = _mm256_andnot_ps(sign, _mm256_loadu_ps(b[i * 8..].as_ptr()));
        acc = _mm256_max_ps(v, acc);
    }
    let m = _mm_max_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

fn round_any(b: &[f32], id: f32, qs: &mut [i8; 32], avx2: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the features were detected by the caller; `b` has 32 elements.
        return unsafe { round_block_avx2(b, id, qs) };
    }
    let _ = avx2;
    round_block(b, id, qs)
}

pub(crate) fn round_block(b: &[f32], id: f32, qs: &mut [i8; 32]) -> i32 {
    let mut sum = 0;
    for (q, v) in qs.iter_mut().zip(b) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    sum
}

/// `round(x * id)` to i8 with round-half-even (`_mm256_round_ps` nearest); returns Σq.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_block_avx2(b: &[f32], id: f32, qs: &mut [i8; 32]) -> i32 {
    use std::arch::x86_64::*;
    let idv = _mm256_set1_ps(id);
    let r: [__m256i; 4] = std::array::from_fn(|i| {
        let v = _mm256_mul_ps(_mm256_loadu_ps(b[i * 8..].as_ptr()), idv);
        _mm256_cvtps_epi32(_mm256_round_ps(
            v,
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        ))
    });
    // |x * id| <= 127 (+ rounding), so the saturating packs are exact; they interleave the
    // 128-bit lanes, which the permute puts back in order.
    let w = _mm256_packs_epi16(
        _mm256_packs_epi32(r[0], r[1]),
        _mm256_packs_epi32(r[2], r[3]),
    );
    let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, w);
    let s = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    let s = _mm_add_epi32(_mm256_extracti128_si256(s, 1), _mm256_castsi256_si128(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Horizontal sum of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(hi, _mm256_castps256_ps128(acc));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_keeps_the_sum() {
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let q = &quantize_row_q8_1(&x)[0];
        assert_eq!(q.d, 1.0);
        assert_eq!(&q.qs[..3], &[127, 2, -4]);
        assert_eq!(q.s, 125.0);
        assert_eq!(round_block(&x, 1.0, &mut [0; 32]), 125);
        let q0 = &quantize_row_q8_0(&x)[0];
        assert_eq!((q0.d, q0.s), (1.0, 125.0));
        assert_eq!(q0.qs, q.qs);
    }

    /// The AVX2 block code gives the portable code's bits (max, signs, ties, the sum).
    #[test]
    fn avx2_blocks_equal_portable_blocks() {
        let mut x = crate::quant::test_data(32 * 64, 21);
        x[5] = -7.0; // a negative maximum
        x[40..72].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        x[72] = 127.0;
        x[73] = -2.5; // ties
        x[74] = 0.5;
        x[100] = f32::NAN; // ignored by the maximum
        for b in x.chunks_exact(32) {
            let avx2 = has_avx2();
            let (m1, m2) = (abs_max(b, avx2), abs_max(b, false));
            assert_eq!(m1.to_bits(), m2.to_bits());
            if b.iter().any(|v| v.is_nan()) {
                continue;
            }
            let id = if m1 != 0.0 { 127.0 / m1 } else { 0.0 };
            let (mut q1, mut q2) = ([0i8; 32], [0i8; 32]);
            let s1 = round_any(b, id, &mut q1, avx2);
            let s2 = round_block(b, id, &mut q2);
            assert_eq!((q1, s1), (q2, s2));
        }
    }
}
