//! AVX2 kernels for K-quants packed eight rows at a time (`kquant.rs` has the layout and the
//! portable kernels, whose float work these repeat in the same order: results are
//! bit-identical). As `x8.rs`: a 256-bit register holds 4 weight bytes of each of the 8
//! columns, the activation row's 4 bytes are broadcast, `maddubs` + `madd` leave one int32
//! per column; the sub-block's small scales come as 8 bytes widened to 8 lanes.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::isa::Dot;
use super::kquant::{Super, MN, Q4K_QS, Q5K_QH, Q5K_QS, Q6K_B, Q6K_SC, SC};
use super::q8::BlockQ8;
use super::x8::bcast4;
use super::x8_q5::bit5;

/// 8 bytes at `p` (one per column) as 8 f32, unsigned.
#[inline(always)]
unsafe fn u8x8_ps(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// Q4_K (`Q5 = false`) or Q5_K x Q8_0. The 4-bit values' `maddubs` lanes reach 2 * 15 * 127
/// = 3810 and 8 of them add up in int16; the 5-bit values' reach 7874, so those are widened
/// to int32 after 4.
#[inline(always)]
pub unsafe fn q4k<D: Dot, const R: usize, const Q5: bool>(
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
) {
    let (gb, qs) = match Q5 {
        false => (Super::Q4K.group_bytes(), Q4K_QS),
        true => (Super::Q5K.group_bytes(), Q5K_QS),
    };
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= 8 * nb));
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nb {
        let g = w.as_ptr().add(sb * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let dmw = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
        // Sub-blocks 2p (low nibbles) and 2p + 1 (high) share their bytes.
        for p in 0..4 {
            let (mut a16, mut b16) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            let (mut a32, mut b32) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            for i in 0..8 {
                let raw = _mm256_loadu_si256(g.add(qs + 32 * (8 * p + i)) as *const __m256i);
                let mut lo = _mm256_and_si256(raw, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                if Q5 {
                    let qh = _mm256_loadu_si256(g.add(Q5K_QH + 32 * i) as *const __m256i);
                    lo = _mm256_or_si256(lo, bit5(qh, p, 0)); // bit 2p of each byte
                    hi = _mm256_or_si256(hi, bit5(qh, p, 1));
                }
                for r in 0..R {
                    let xr = x[r].as_ptr().add(8 * sb + 2 * p);
                    a16[r] = D::acc(a16[r], lo, bcast4(&(*xr).qs, 4 * i));
                    b16[r] = D::acc(b16[r], hi, bcast4(&(*xr.add(1)).qs, 4 * i));
                }
                if i == 7 || (Q5 && i == 3) {
                    for r in 0..R {
                        a32[r] = _mm256_add_epi32(a32[r], D::widen(a16[r]));
                        b32[r] = _mm256_add_epi32(b32[r], D::widen(b16[r]));
                        a16[r] = _mm256_setzero_si256();
                        b16[r] = _mm256_setzero_si256();
                    }
                }
            }
            for (s, isum) in [(2 * p, a32), (2 * p + 1, b32)] {
                let dsc = _mm256_mul_ps(dw, u8x8_ps(g.add(SC + 8 * s)));
                let dm = _mm256_mul_ps(dmw, u8x8_ps(g.add(MN + 8 * s)));
                for r in 0..R {
                    let xb = x[r].get_unchecked(8 * sb + s);
                    let scale = _mm256_mul_ps(dsc, _mm256_set1_ps(xb.d));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
                    acc[r] = _mm256_fmadd_ps(dm, _mm256_set1_ps(-(xb.d * xb.s)), acc[r]);
                }
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// Q6_K x Q8_0. One high-bit vector completes 4 value vectors (`kquant.rs`'s layout); the
/// values 0..63 go through `maddubs` unsigned (lanes reach 2 * 63 * 127 = 16002, so two add
/// up in int16) and the offset of 32 comes off the int32 sums as `32 Σq_x` per sub-block of 16
/// (`BlockQ8::s0`). Sub-block sums, each |Σ (q - 32) q_x| <= 16 * 32 * 127, are scaled by
/// their i8 scales in int32: two of them stay below 2^24, exact in f32.
#[inline(always)]
pub unsafe fn q6k<D: Dot, const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let gb = Super::Q6K.group_bytes();
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= 8 * nb));
    let low = _mm256_set1_epi8(0x0f);
    let top = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nb {
        let g = w.as_ptr().add(sb * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        for b in 0..8 {
            let blk = g.add(Q6K_B + 192 * b);
            let (mut a32, mut b32) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            for u in 0..2 {
                let h = _mm256_loadu_si256(blk.add(128 + 32 * u) as *const __m256i);
                let (mut a16, mut b16) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
                for t in 0..2 {
                    let v = 2 * u + t;
                    let raw = _mm256_loadu_si256(blk.add(32 * v) as *const __m256i);
                    // Bits 0-1 / 2-3 (t = 0) or 4-5 / 6-7 (t = 1) of h moved to 4-5.
                    let (ha, hb) = match t {
                        0 => (_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 2)),
                        _ => (h, _mm256_srli_epi16(h, 2)),
                    };
                    let lo = _mm256_or_si256(_mm256_and_si256(raw, low), _mm256_and_si256(ha, top));
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                    let hi = _mm256_or_si256(hi, _mm256_and_si256(hb, top));
                    for r in 0..R {
                        let qs = &x[r].get_unchecked(8 * sb + b).qs;
                        a16[r] = D::acc(a16[r], lo, bcast4(qs, 4 * v));
                        b16[r] = D::acc(b16[r], hi, bcast4(qs, 16 + 4 * v));
                    }
                }
                for r in 0..R {
                    a32[r] = _mm256_add_epi32(a32[r], D::widen(a16[r]));
                    b32[r] = _mm256_add_epi32(b32[r], D::widen(b16[r]));
                }
            }
            let sc = |h: usize| {
                let p = g.add(Q6K_SC + 8 * (2 * b + h));
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
            };
            let (sa, sbv) = (sc(0), sc(1));
            for r in 0..R {
                let xb = x[r].get_unchecked(8 * sb + b);
                let (s0, s1) = (xb.s0, xb.s as i32 - xb.s0);
                let ia = _mm256_sub_epi32(a32[r], _mm256_set1_epi32(32 * s0));
                let ib = _mm256_sub_epi32(b32[r], _mm256_set1_epi32(32 * s1));
                let isum =
                    _mm256_add_epi32(_mm256_mullo_epi32(ia, sa), _mm256_mullo_epi32(ib, sbv));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
