//! Kernels over weights repacked eight rows at a time (see `packed.rs` for the layout).
//!
//! One call computes 8 output columns for `R` activation rows. For each k-step of 4 elements
//! a 256-bit register holds 4 weight bytes of each of the 8 columns; the activation row's 4
//! bytes are broadcast to all 8 lanes; `maddubs` + `madd` leave one int32 per column. So a
//! block of 32 elements ends with the 8 columns' integer sums in one register, scaled by the
//! 8 columns' `d` (one vector multiply) and added to an accumulator that is stored as is: no
//! horizontal sums, each weight byte unpacked once for all `R` rows, each activation byte
//! loaded once for 8 columns.
//!
//! Order of the float work, the same for every `R` and in the scalar code (which uses
//! `mul_add`, so results are bit-identical across paths and batch sizes):
//! `acc = fma(isum as f32, d_w * d_x, acc)`, then for Q4_1 `acc = fma(m_w, s_x, acc)`. Q4_0's
//! `isum` is `Σ q_w q_x - 8 Σ q_x`, the exact integer `Σ (q_w - 8) q_x` of ggml.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::isa::Dot;
use super::q8::BlockQ8;

/// Bytes of one block of 8 rows: Q4_1 8 x (d, m) f16 + 8 x 16 nibble bytes.
pub const Q4_1_GROUP: usize = 32 + 128;
/// Q4_0: 8 x d f16 + 8 x 16 nibble bytes (the nibbles laid out as Q4_1's).
pub const Q4_0_GROUP: usize = 16 + 128;
/// Q8_0: 8 x d f16 + 8 x 32 i8.
pub const Q8_0_GROUP: usize = 16 + 256;
/// F16: one element of each of the 8 rows.
pub const F16_GROUP: usize = 16;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_1 x Q8_1, portable: 8 columns of `R` rows.
pub fn q4_1_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[0f32; 8]; R];
    for (b, g) in w.chunks_exact(Q4_1_GROUP).enumerate() {
        for c in 0..8 {
            let (d, m) = (f16_at(g, 2 * c), f16_at(g, 16 + 2 * c));
            for r in 0..R {
                let xb = &x[r][b];
                let mut isum = 0i32;
                for v in 0..4 {
                    for j in 0..4 {
                        let byte = g[32 + 32 * v + 4 * c + j];
                        isum += (byte & 0x0f) as i32 * xb.qs[4 * v + j] as i32
                            + (byte >> 4) as i32 * xb.qs[16 + 4 * v + j] as i32;
                    }
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
                acc[r][c] = m.mul_add(xb.s, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// Q4_0 x Q8_0, portable (see `q4_1_scalar`).
pub fn q4_0_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[0f32; 8]; R];
    for (b, g) in w.chunks_exact(Q4_0_GROUP).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for r in 0..R {
                let xb = &x[r][b];
                let mut isum = 0i32;
                for v in 0..4 {
                    for j in 0..4 {
                        let byte = g[16 + 32 * v + 4 * c + j];
                        isum += ((byte & 0x0f) as i32 - 8) * xb.qs[4 * v + j] as i32
                            + ((byte >> 4) as i32 - 8) * xb.qs[16 + 4 * v + j] as i32;
                    }
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// Q8_0 x Q8_0, portable (see `q4_1_scalar`).
pub fn q8_0_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[0f32; 8]; R];
    for (b, g) in w.chunks_exact(Q8_0_GROUP).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for r in 0..R {
                let xb = &x[r][b];
                let mut isum = 0i32;
                for s in 0..8 {
                    for j in 0..4 {
                        isum += g[16 + 32 * s + 4 * c + j] as i8 as i32 * xb.qs[4 * s + j] as i32;
                    }
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// Broadcast of the 4 activation bytes at `qs[i..i + 4]` to all 8 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn bcast4(qs: &[i8], i: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    debug_assert!(i + 4 <= qs.len());
    _mm256_set1_epi32(std::ptr::read_unaligned(qs.as_ptr().add(i) as *const i32))
}

/// Q4_1 x Q8_1 with AVX2. The int16 sums of a whole block cannot saturate: each `maddubs`
/// lane is at most 2 * 15 * 127 = 3810 in magnitude, and 8 of them add to 30480 < 32767.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn q4_1<D: Dot, const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / Q4_1_GROUP;
    assert!(x.iter().all(|r| r.len() >= nb));
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let g = w.as_ptr().add(b * Q4_1_GROUP);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let mw = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        for v in 0..4 {
            let raw = _mm256_loadu_si256(g.add(32 + 32 * v) as *const __m256i);
            let lo = _mm256_and_si256(raw, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            for r in 0..R {
                let qs = &x[r].get_unchecked(b).qs;
                let p = D::acc(isum[r], lo, bcast4(qs, 4 * v));
                isum[r] = D::acc(p, hi, bcast4(qs, 16 + 4 * v));
            }
        }
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            let sumf = _mm256_cvtepi32_ps(D::widen(isum[r]));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            acc[r] = _mm256_fmadd_ps(sumf, scale, acc[r]);
            acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// Q4_0 x Q8_0 with AVX2: the unsigned nibbles go through `maddubs` as Q4_1's (int16 sums
/// bounded the same way), and the offset comes off the int32 sums as `8 Σ q_x` (`BlockQ8::s`,
/// exact for Q8_0 activations): no per-byte subtraction or sign juggling.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn q4_0<D: Dot, const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / Q4_0_GROUP;
    assert!(x.iter().all(|r| r.len() >= nb));
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let g = w.as_ptr().add(b * Q4_0_GROUP);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        for v in 0..4 {
            let raw = _mm256_loadu_si256(g.add(16 + 32 * v) as *const __m256i);
            let lo = _mm256_and_si256(raw, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            for r in 0..R {
                let qs = &x[r].get_unchecked(b).qs;
                let p = D::acc(isum[r], lo, bcast4(qs, 4 * v));
                isum[r] = D::acc(p, hi, bcast4(qs, 16 + 4 * v));
            }
        }
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            let offset = _mm256_set1_epi32(8 * xb.s as i32);
            let sumi = _mm256_sub_epi32(D::widen(isum[r]), offset);
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), scale, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// Q8_0 x Q8_0 with AVX2: `maddubs` wants one unsigned operand, so |w| and x with w's sign
/// (ggml's `mul_sum_i8_pairs`); pairs reach 2 * 128 * 127 and are widened to int32 each step.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn q8_0<D: Dot, const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    use std::arch::x86_64::*;
    let nb = w.len() / Q8_0_GROUP;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let g = w.as_ptr().add(b * Q8_0_GROUP);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        for s in 0..8 {
            let qw = _mm256_loadu_si256(g.add(16 + 32 * s) as *const __m256i);
            let aw = _mm256_sign_epi8(qw, qw);
            for r in 0..R {
                let qs = &x[r].get_unchecked(b).qs;
                let sx = _mm256_sign_epi8(bcast4(qs, 4 * s), qw);
                isum[r] = D::acc32(isum[r], aw, sx);
            }
        }
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// F16 weights x f32 activations, portable: per row and column two accumulators (even and
/// odd k) added at the end, as the AVX2 code does.
#[allow(clippy::needless_range_loop)] // c and r index weights, activations and accumulators
pub fn f16_scalar<const R: usize>(w: &[u8], x: [&[f32]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[[0f32; 8]; 2]; R];
    for (kk, g) in w.chunks_exact(F16_GROUP).enumerate() {
        for c in 0..8 {
            let wv = f16_at(g, 2 * c);
            for r in 0..R {
                acc[r][kk & 1][c] = wv.mul_add(x[r][kk], acc[r][kk & 1][c]);
            }
        }
    }
    for r in 0..R {
        out[r] = std::array::from_fn(|c| acc[r][0][c] + acc[r][1][c]);
    }
}

/// F16 x f32 with AVX2: 8 columns' weights at k converted in one `cvtph`, times x[k]
/// broadcast; two accumulators per row hide the fma latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_avx2<const R: usize>(w: &[u8], x: [&[f32]; R], out: &mut [[f32; 8]; R]) {
    use std::arch::x86_64::*;
    let k = w.len() / F16_GROUP;
    assert!(x.iter().all(|r| r.len() >= k));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let wp = w.as_ptr();
    let mut kk = 0;
    while kk + 2 <= k {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(kk * F16_GROUP) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(
            wp.add((kk + 1) * F16_GROUP) as *const __m128i
        ));
        for r in 0..R {
            let xr = x[r].as_ptr().add(kk);
            acc[r][0] = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(&*xr), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(w1, _mm256_broadcast_ss(&*xr.add(1)), acc[r][1]);
        }
        kk += 2;
    }
    if kk < k {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(kk * F16_GROUP) as *const __m128i));
        for r in 0..R {
            acc[r][0] = _mm256_fmadd_ps(w0, _mm256_set1_ps(x[r][kk]), acc[r][0]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(acc[r][0], acc[r][1]));
    }
}
