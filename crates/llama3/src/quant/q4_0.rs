//! Q4_0 weights x Q8_0 activations (ggml-cpu `ggml_vec_dot_q4_0_q8_0`).
//!
//! Q4_0 block (18 bytes): f16 `d`, 16 bytes of nibbles; element `j` is the low nibble of byte
//! `j`, element `j + 16` the high nibble; value = `d * (q - 8)`. So a block's dot with a Q8_0
//! block is `d_w * d_x * Σ (q_w - 8) q_x`, an exact integer sum.

use half::f16;

use super::q8::BlockQ8;

/// Bytes per Q4_0 block of 32 weights.
pub const BYTES: usize = 18;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Appends the f32 values of Q4_0 blocks (`d * (q - 8)`) to `out`.
pub fn dequantize(w: &[u8], out: &mut Vec<f32>) {
    for wb in w.chunks_exact(BYTES) {
        let d = f16_at(wb, 0);
        out.extend(wb[2..18].iter().map(|b| d * ((b & 0x0f) as i32 - 8) as f32));
        out.extend(wb[2..18].iter().map(|b| d * ((b >> 4) as i32 - 8) as f32));
    }
}

/// ggml `ggml_vec_dot_q4_0_q8_0_generic`.
pub fn dot_scalar(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(BYTES).zip(x) {
        let d = f16_at(wb, 0);
        let mut sumi = 0i32;
        for j in 0..16 {
            let byte = wb[2 + j];
            sumi += ((byte & 0x0f) as i32 - 8) * xb.qs[j] as i32
                + ((byte >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (d * xb.d);
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

/// `R` activation rows against one weight row (see q4_1::dot_avx2): nibbles unpacked and
/// offset by -8 once per block, then ggml's `mul_sum_i8_pairs_float` as in q8_0::dot_avx2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [f32; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / BYTES;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let low = _mm256_set1_epi8(0x0f);
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    for (b, wb) in w.chunks_exact(BYTES).enumerate() {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([wb[0], wb[1]]) as i32,
        )));
        let nib = _mm_loadu_si128(wb[2..18].as_ptr() as *const __m128i);
        let q = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(nib, 4), nib));
        let qw = _mm256_sub_epi8(q, eight);
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
