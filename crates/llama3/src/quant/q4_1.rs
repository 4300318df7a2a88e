//! Q4_1 weights x Q8_1 activations (ggml-quants.c / ggml-cpu quants.c).
//!
//! Q4_1 block (20 bytes): f16 `d`, f16 `m`, 16 bytes of nibbles; element `j` is the low nibble
//! of byte `j`, element `j + 16` the high nibble; value = `d * q + m`.
//! Q8_1 block: `d`, `s = d * Σq` (rounded to f16 as ggml stores them, kept here as f32 so the
//! dot loop converts nothing), 32 x i8.

use half::f16;

/// Bytes per Q4_1 block of 32 weights.
pub const Q4_1_BYTES: usize = 20;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

fn has_avx2() -> bool {
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

/// llama.cpp `quantize_row_q8_1` (AVX2 flavour: `127 / amax`, round half to even).
pub fn quantize_row_q8_1(x: &[f32]) -> Vec<BlockQ8_1> {
    x.chunks_exact(32)
        .map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut qs = [0i8; 32];
            #[cfg(target_arch = "x86_64")]
            let sum = if has_avx2() {
                // SAFETY: features detected; `b` has 32 elements.
                unsafe { avx2::round_block(b, id, &mut qs) }
            } else {
                round_block(b, id, &mut qs)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let sum = round_block(b, id, &mut qs);
            BlockQ8_1 {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                qs,
            }
        })
        .collect()
}

fn round_block(b: &[f32], id: f32, qs: &mut [i8; 32]) -> i32 {
    let mut sum = 0;
    for (q, v) in qs.iter_mut().zip(b) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    sum
}

/// Dot product of one Q4_1 weight row (raw bytes) with Q8_1 activation blocks.
pub fn dot_q4_1_q8_1(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the features were just detected; slices are bounds-checked inside.
            return unsafe { avx2::dot(w, x) };
        }
    }
    dot_scalar(w, x)
}

/// One weight row against four activation rows (the weight blocks are unpacked once).
pub fn dot_q4_1_q8_1_x4(w: &[u8], x: [&[BlockQ8_1]; 4], out: &mut [f32; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the features were just detected; slices are bounds-checked inside.
            unsafe { avx2::dot_x4(w, x, out) };
            return;
        }
    }
    for (o, x) in out.iter_mut().zip(x) {
        *o = dot_scalar(w, x);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml `ggml_vec_dot_q4_1_q8_1_generic`.
pub fn dot_scalar(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(Q4_1_BYTES).zip(x) {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8_1, Q4_1_BYTES};

    /// `round(x * id)` to i8 with round-half-even (`_mm256_round_ps` nearest), returns Σq.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_block(b: &[f32], id: f32, qs: &mut [i8; 32]) -> i32 {
        let idv = _mm256_set1_ps(id);
        let mut ints = [0i32; 32];
        for i in 0..4 {
            let v = _mm256_mul_ps(_mm256_loadu_ps(b[i * 8..].as_ptr()), idv);
            let r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_storeu_si256(
                ints[i * 8..].as_mut_ptr() as *mut __m256i,
                _mm256_cvtps_epi32(r),
            );
        }
        let mut sum = 0;
        for (q, v) in qs.iter_mut().zip(ints) {
            *q = v as i8;
            sum += v;
        }
        sum
    }

    #[inline(always)]
    unsafe fn hsum(acc: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(hi, _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// ggml-cpu x86 `ggml_vec_dot_q4_1_q8_1` (see `dot_x4`) for one activation row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
        let nb = w.len() / Q4_1_BYTES;
        assert!(x.len() >= nb);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for (b, wb) in w.chunks_exact(Q4_1_BYTES).enumerate() {
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
                wb[0], wb[1], wb[2], wb[3],
            ])));
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            let nib = _mm_loadu_si128(wb[4..20].as_ptr() as *const __m128i);
            let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(nib, 4), nib));
            let xb = x.get_unchecked(b);
            summs += m * xb.s;
            let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(qx, qy)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), xy, acc);
        }
        hsum(acc) + summs
    }

    /// ggml-cpu x86 `ggml_vec_dot_q4_1_q8_1`, four activation rows at once: nibbles to bytes
    /// once per weight block, then per row `maddubs` + `madd` to i32 and one fma with
    /// `d_w * d_x`; the `m_w * s_x` terms summed apart.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_x4(w: &[u8], x: [&[BlockQ8_1]; 4], out: &mut [f32; 4]) {
        let nb = w.len() / Q4_1_BYTES;
        assert!(x.iter().all(|r| r.len() >= nb));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for (b, wb) in w.chunks_exact(Q4_1_BYTES).enumerate() {
            // [d, m] as two f16 -> two f32 in one F16C conversion
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
                wb[0], wb[1], wb[2], wb[3],
            ])));
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            let nib = _mm_loadu_si128(wb[4..20].as_ptr() as *const __m128i);
            let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(nib, 4), nib));
            for r in 0..4 {
                let xb = x[r].get_unchecked(b);
                summs[r] += m * xb.s;
                let qy = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let pairs = _mm256_maddubs_epi16(qx, qy); // |sum| <= 2*15*127: no saturation
                let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), xy, acc[r]);
            }
        }
        for r in 0..4 {
            out[r] = hsum(acc[r]) + summs[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_scalar_agree() {
        let k = 32 * 9;
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let xq = quantize_row_q8_1(&x);
        let w: Vec<u8> = (0..9 * Q4_1_BYTES)
            .map(|i| match i % Q4_1_BYTES {
                0 => 0x66, // f16 d ~ 0.0016 + ...
                1 => 0x1e,
                2 => 0x00,
                3 => 0xb0, // m negative
                _ => (i * 29 % 256) as u8,
            })
            .collect();
        let a = dot_q4_1_q8_1(&w, &xq);
        let b = dot_scalar(&w, &xq);
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        let mut four = [0f32; 4];
        let x2: Vec<f32> = x.iter().map(|v| v * -0.5).collect();
        let xq2 = quantize_row_q8_1(&x2);
        dot_q4_1_q8_1_x4(&w, [&xq, &xq2, &xq, &xq2], &mut four);
        let b2 = dot_scalar(&w, &xq2);
        assert!((four[0] - b).abs() <= 1e-5 * b.abs().max(1.0));
        assert!((four[1] - b2).abs() <= 1e-5 * b2.abs().max(1.0));
    }

    #[test]
    fn q8_1_rounds_half_to_even_and_keeps_the_sum() {
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let q = &quantize_row_q8_1(&x)[0];
        assert_eq!(q.d, 1.0);
        assert_eq!(&q.qs[..3], &[127, 2, -4]);
        assert_eq!(q.s, 125.0);
        let plain = round_block(&x, 1.0, &mut [0; 32]);
        assert_eq!(plain, 125);
    }
}
