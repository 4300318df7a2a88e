//! SIMD kernels for K-quants packed eight rows at a time (`kquant.rs` has the layout and the
//! portable kernels, whose float work these repeat in the same order: results are
//! bit-identical). As `x8.rs`: a 256-bit register holds 4 weight bytes of each of the 8
//! columns, the activation row's 4 bytes are broadcast, `maddubs` + `madd` leave one int32
//! per column; the sub-block's small scales come as 8 bytes widened to 8 lanes.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::isa::{scale_pair, Dot};
use super::kquant::{q4k_layout, Super, MN, Q5K_QH, Q6K_B, Q6K_SC, SC};
use super::q8::BlockQ8K;
use super::x8::bcast4;
use super::x8_q5::bit5;

/// Q4_K (`Q5 = false`) or Q5_K values of nibble vector 8p + i of packed block `g`
/// (`kquant.rs`'s layout): elements 4i..4i + 4 of sub-blocks 2p (`lo`) and 2p + 1 (`hi`) of each
/// of the 8 rows, with Q5_K's fifth bits.
#[inline(always)]
pub(crate) unsafe fn q4k_values<const Q5: bool>(
    g: *const u8,
    p: usize,
    i: usize,
) -> (__m256i, __m256i) {
    let (_, qs) = q4k_layout(Q5);
    let low = _mm256_set1_epi8(0x0f);
    let raw = _mm256_loadu_si256(g.add(qs + 32 * (8 * p + i)) as *const __m256i);
    let lo = _mm256_and_si256(raw, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
    if !Q5 {
        return (lo, hi);
    }
    let qh = _mm256_loadu_si256(g.add(Q5K_QH + 32 * i) as *const __m256i);
    // Bit 2p (low nibbles) and 2p + 1 of each byte.
    (
        _mm256_or_si256(lo, bit5(qh, p, 0)),
        _mm256_or_si256(hi, bit5(qh, p, 1)),
    )
}

/// Q4_K (`Q5 = false`) or Q5_K x Q8_K. The 4-bit values' `maddubs` lanes reach 2 * 15 * 127
/// = 3810 and 8 of them add up in int16; the 5-bit values' reach 7874, so those are widened
/// after 4. Widening applies the sub-block's scale (`Dot::scaled`); the mins meet the
/// activations' sums of 16 through `madd` on (m_2j, m_2j+1) pairs. One float step per
/// super-block.
#[inline(always)]
pub unsafe fn q4k<D: Dot, const R: usize, const Q5: bool>(
    w: &[u8],
    x: [&[BlockQ8K]; R],
    out: &mut [[f32; 8]; R],
) {
    let (gb, _) = q4k_layout(Q5);
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nb {
        let g = w.as_ptr().add(sb * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let dmw = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        // Sub-blocks 2p (low nibbles) and 2p + 1 (high) share their bytes.
        for p in 0..4 {
            let sc = |s: usize| scale_pair(_mm256_cvtepu8_epi32(loadl(g.add(SC + 8 * s))));
            let (sa, sbv) = (sc(2 * p), sc(2 * p + 1));
            let (mut a, mut b) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
            for i in 0..8 {
                let (lo, hi) = q4k_values::<Q5>(g, p, i);
                for r in 0..R {
                    let xq = &x[r].get_unchecked(sb).qs;
                    a[r] = D::acc(a[r], lo, bcast4(xq, 64 * p + 4 * i));
                    b[r] = D::acc(b[r], hi, bcast4(xq, 64 * p + 32 + 4 * i));
                }
                if i == 7 || (Q5 && i == 3) {
                    for r in 0..R {
                        let ab = _mm256_add_epi32(D::scaled(a[r], sa), D::scaled(b[r], sbv));
                        isum[r] = _mm256_add_epi32(isum[r], ab);
                        a[r] = _mm256_setzero_si256();
                        b[r] = _mm256_setzero_si256();
                    }
                }
            }
        }
        // (m_2j, m_2j+1) of each column as int16 pairs.
        let mins: [__m256i; 4] = std::array::from_fn(|j| {
            let (m0, m1) = (loadl(g.add(MN + 16 * j)), loadl(g.add(MN + 16 * j + 8)));
            _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m0, m1))
        });
        for r in 0..R {
            let xb = x[r].get_unchecked(sb);
            let mut msum = _mm256_setzero_si256();
            for (j, m) in mins.iter().enumerate() {
                let bs = &xb.bsums;
                let b0 = bs[4 * j] as i32 + bs[4 * j + 1] as i32;
                let b1 = bs[4 * j + 2] as i32 + bs[4 * j + 3] as i32;
                let pair = _mm256_set1_epi32((b0 & 0xffff) | (b1 << 16));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*m, pair));
            }
            let dx = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            let mx = _mm256_mul_ps(dmw, _mm256_set1_ps(-xb.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), dx, acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), mx, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// 8 bytes at `p` in the low half of a register.
#[inline(always)]
unsafe fn loadl(p: *const u8) -> __m128i {
    _mm_loadl_epi64(p as *const __m128i)
}

/// Q6_K's values 0..63 of nibble vector v = 2u + t of activation block `blk` (`kquant.rs`'s
/// layout): elements 4v..4v + 4 (`lo`) and 16 + 4v.. (`hi`) of each of the 8 rows, with `h` the
/// block's high-bit vector u.
#[inline(always)]
pub(crate) unsafe fn q6k_values(
    blk: *const u8,
    h: __m256i,
    u: usize,
    t: usize,
) -> (__m256i, __m256i) {
    let (low, top) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    let raw = _mm256_loadu_si256(blk.add(32 * (2 * u + t)) as *const __m256i);
    // Bits 0-1 / 2-3 (t = 0) or 4-5 / 6-7 (t = 1) of h moved to 4-5.
    let (ha, hb) = match t {
        0 => (_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 2)),
        _ => (h, _mm256_srli_epi16(h, 2)),
    };
    let lo = _mm256_or_si256(_mm256_and_si256(raw, low), _mm256_and_si256(ha, top));
    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
    (lo, _mm256_or_si256(hi, _mm256_and_si256(hb, top)))
}

/// Q6_K x Q8_K. One high-bit vector completes 4 value vectors (`kquant.rs`'s layout); the
/// values 0..63 go through `maddubs` unsigned (lanes reach 2 * 63 * 127 = 16002, so two add
/// up in int16) and are widened with their sub-block's i8 scale (`Dot::scaled`); the offset
/// of 32 comes off once per super-block as `32 Σ_h sc_h Σ q_x` (`madd` on (sc, sc) pairs
/// against the activations' sums of 16). One float step per super-block.
#[inline(always)]
pub unsafe fn q6k<D: Dot, const R: usize>(w: &[u8], x: [&[BlockQ8K]; R], out: &mut [[f32; 8]; R]) {
    let gb = Super::Q6K.group_bytes();
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nb {
        let g = w.as_ptr().add(sb * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let (mut isum, mut off) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
        for b in 0..8 {
            let blk = g.add(Q6K_B + 192 * b);
            let sc = |h: usize| _mm256_cvtepi8_epi32(loadl(g.add(Q6K_SC + 8 * (2 * b + h))));
            let (sa, sbv) = (scale_pair(sc(0)), scale_pair(sc(1)));
            for u in 0..2 {
                let h = _mm256_loadu_si256(blk.add(128 + 32 * u) as *const __m256i);
                let (mut a, mut bb) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
                for t in 0..2 {
                    let v = 2 * u + t;
                    let (lo, hi) = q6k_values(blk, h, u, t);
                    for r in 0..R {
                        let xq = &x[r].get_unchecked(sb).qs;
                        a[r] = D::acc(a[r], lo, bcast4(xq, 32 * b + 4 * v));
                        bb[r] = D::acc(bb[r], hi, bcast4(xq, 32 * b + 16 + 4 * v));
                    }
                }
                for r in 0..R {
                    let ab = _mm256_add_epi32(D::scaled(a[r], sa), D::scaled(bb[r], sbv));
                    isum[r] = _mm256_add_epi32(isum[r], ab);
                }
            }
            // (sc_2b, sc_2b+1) of each column as int16 pairs, against (Σ q_x) of both halves.
            let (s0, s1) = (
                loadl(g.add(Q6K_SC + 16 * b)),
                loadl(g.add(Q6K_SC + 16 * b + 8)),
            );
            let scs = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s0, s1));
            for r in 0..R {
                let bs = &x[r].get_unchecked(sb).bsums;
                let pair = (bs[2 * b] as u16 as i32) | ((bs[2 * b + 1] as i32) << 16);
                off[r] = _mm256_add_epi32(off[r], _mm256_madd_epi16(scs, _mm256_set1_epi32(pair)));
            }
        }
        for r in 0..R {
            let xb = x[r].get_unchecked(sb);
            let total = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(off[r], 5));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
