//! Q8_0 weights x Q8_0 activations (ggml-cpu `ggml_vec_dot_q8_0_q8_0`).
//!
//! Q8_0 block (34 bytes): f16 `d`, 32 x i8; value = `d * q`.

use half::f16;

use super::q8::BlockQ8;

/// Bytes per Q8_0 block of 32 weights.
pub const BYTES: usize = 34;

/// Appends the f32 values of Q8_0 blocks (`d * q`) to `out`.
pub fn dequantize(w: &[u8], out: &mut Vec<f32>) {
    for wb in w.chunks_exact(BYTES) {
        let d = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        out.extend(wb[2..].iter().map(|&q| d * q as i8 as f32));
    }
}

/// ggml `ggml_vec_dot_q8_0_q8_0_generic`.
pub fn dot_scalar(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(BYTES).zip(x) {
        let d = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        let sumi: i32 = wb[2..]
            .iter()
            .zip(xb.qs)
            .map(|(&q, y)| q as i8 as i32 * y as i32)
            .sum();
        sum += d * xb.d * sumi as f32;
    }
    sum
}

/// One activation row (decode): `dot_avx2::<1>` (see q4_1::dot1_avx2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot1_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut out = [0f32; 1];
    dot_avx2::<1>(w, [x], &mut out);
    out[0]
}

/// `R` activation rows against one weight row (see q4_1::dot_avx2). ggml's
/// `mul_sum_i8_pairs_float`: |w| via sign, the sign moved onto x, then `maddubs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [f32; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / BYTES;
    assert!(x.iter().all(|r| r.len() >= nb));
    // Two accumulators per row, even and odd blocks (see q4_1::dot_avx2).
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let ones = _mm256_set1_epi16(1);
    for (b, wb) in w.chunks_exact(BYTES).enumerate() {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([wb[0], wb[1]]) as i32,
        )));
        let qw = _mm256_loadu_si256(wb[2..34].as_ptr() as *const __m256i);
        let aw = _mm256_sign_epi8(qw, qw);
        let i = b & 1;
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let sy = _mm256_sign_epi8(qy, qw);
            let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(aw, sy)));
            acc[r][i] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), xy, acc[r][i]);
        }
    }
    for r in 0..R {
        out[r] = super::q8::hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
    }
}
