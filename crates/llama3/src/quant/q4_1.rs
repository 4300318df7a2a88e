//! Q4_1 weights x Q8_1 activations (ggml-cpu `ggml_vec_dot_q4_1_q8_1`).
//!
//! Q4_1 block (20 bytes): f16 `d`, f16 `m`, 16 bytes of nibbles; element `j` is the low nibble
//! of byte `j`, element `j + 16` the high nibble; value = `d * q + m`. So a block's dot with a
//! Q8_1 block is `d_w * d_x * Σ q_w q_x + m_w * s_x`.

use half::f16;

use super::q8::BlockQ8;

/// Bytes per Q4_1 block of 32 weights.
pub const BYTES: usize = 20;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Appends the f32 values of Q4_1 blocks (`d * q + m`) to `out`.
pub fn dequantize(w: &[u8], out: &mut Vec<f32>) {
    for wb in w.chunks_exact(BYTES) {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        out.extend(wb[4..20].iter().map(|b| d * (b & 0x0f) as f32 + m));
        out.extend(wb[4..20].iter().map(|b| d * (b >> 4) as f32 + m));
    }
}

/// ggml `ggml_vec_dot_q4_1_q8_1_generic`.
pub fn dot_scalar(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(BYTES).zip(x) {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        let mut sumi = 0i32;
        for j in 0..16 {
            let byte = wb[4 + j];
            sumi +=
                (byte & 0x0f) as i32 * xb.qs[j] as i32 + (byte >> 4) as i32 * xb.qs[j + 16] as i32;
        }
        sum += d * xb.d * sumi as f32 + m * xb.s;
    }
    sum
}

/// One activation row (decode): `dot_avx2::<1>`, so a row's result never depends on how many
/// rows it was computed with (the server's batches must give what a lone request gets).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot1_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut out = [0f32; 1];
    dot_avx2::<1>(w, [x], &mut out);
    out[0]
}

/// `R` activation rows against one weight row: the weight blocks are unpacked once per block
/// for all rows (R = 1 for decode, 4 for prompt batches). Each row keeps two accumulators, over
/// even and odd blocks (the fma latency chain does not bound the loop), summed the same way for
/// every R: a row's result is bit-identical whatever R.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [f32; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / BYTES;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut summs = [[0f32; 2]; R];
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    for (b, wb) in w.chunks_exact(BYTES).enumerate() {
        // [d, m] as two f16 -> two f32 in one F16C conversion
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
            wb[0], wb[1], wb[2], wb[3],
        ])));
        let d = _mm_cvtss_f32(dm);
        let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
        let nib = _mm_loadu_si128(wb[4..20].as_ptr() as *const __m128i);
        let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(nib, 4), nib));
        let i = b & 1;
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            summs[r][i] += m * xb.s;
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let pairs = _mm256_maddubs_epi16(qx, qy); // |sum| <= 2*15*127: no saturation
            let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
            acc[r][i] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), xy, acc[r][i]);
        }
    }
    for r in 0..R {
        out[r] = super::q8::hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + summs[r][0] + summs[r][1];
    }
}
