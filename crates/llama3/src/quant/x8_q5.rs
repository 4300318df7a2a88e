//! Q5_0 / Q5_1 kernels over weights packed eight rows at a time (`packed.rs`; the arithmetic
//! order of `x8.rs`). A block of 8 is the rows' `d` (and `m`), then the 8 rows' `qh` as one
//! 256-bit vector of u32 with its bits regrouped (`spread`: byte j holds the fifth bits of
//! nibble byte 4v + j, v = 0..4, so two shifts give them), then the nibbles as Q4_1's. `MIN` selects Q5_1 (`d * q + m`, Q8_1
//! activations) over Q5_0 (`d * (q - 16)`, Q8_0 activations, the offset taken off the int32
//! sums as `16 Σ q_x`, as Q4_0's).

use half::f16;

use super::q8::BlockQ8;

/// Bytes of one block of 8 rows with `h` f16 header fields: 8 x `h` f16, 8 x u32 `qh`, 8 x 16
/// nibble bytes.
pub const fn group(h: usize) -> usize {
    16 * h + 32 + 128
}

/// GGUF's `qh` (bit e: element e) regrouped: bit 2v of byte j is element 4v + j's (the low
/// nibble of nibble byte 4v + j), bit 2v + 1 is element 16 + 4v + j's (its high nibble).
pub fn spread(qh: u32) -> u32 {
    let mut out = 0;
    for j in 0..4 {
        for v in 0..4 {
            out |= ((qh >> (4 * v + j)) & 1) << (8 * j + 2 * v);
            out |= ((qh >> (16 + 4 * v + j)) & 1) << (8 * j + 2 * v + 1);
        }
    }
    out
}

/// The inverse of `spread`.
pub fn gather(s: u32) -> u32 {
    let mut out = 0;
    for j in 0..4 {
        for v in 0..4 {
            out |= ((s >> (8 * j + 2 * v)) & 1) << (4 * v + j);
            out |= ((s >> (8 * j + 2 * v + 1)) & 1) << (16 + 4 * v + j);
        }
    }
    out
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Portable: 8 columns of `R` rows.
pub fn q5_scalar<const R: usize, const MIN: bool>(
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
) {
    let h = if MIN { 2 } else { 1 };
    let offset = if MIN { 0 } else { 16 };
    let mut acc = [[0f32; 8]; R];
    for (b, g) in w.chunks_exact(group(h)).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            let qh = gather(u32::from_le_bytes(std::array::from_fn(|i| {
                g[16 * h + 4 * c + i]
            })));
            for r in 0..R {
                let xb = &x[r][b];
                let mut isum = 0i32;
                for v in 0..4 {
                    for j in 0..4 {
                        let e = 4 * v + j;
                        let byte = g[16 * h + 32 + 32 * v + 4 * c + j];
                        let lo = (byte & 0x0f) as i32 | (((qh >> e) & 1) << 4) as i32;
                        let hi = (byte >> 4) as i32 | (((qh >> (16 + e)) & 1) << 4) as i32;
                        isum +=
                            (lo - offset) * xb.qs[e] as i32 + (hi - offset) * xb.qs[16 + e] as i32;
                    }
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
                if MIN {
                    acc[r][c] = f16_at(g, 16 + 2 * c).mul_add(xb.s, acc[r][c]);
                }
            }
        }
    }
    *out = acc;
}

/// The fifth bits (0 or 0x10) of nibble vector `v`'s low (`HI = 0`) or high nibbles: bit
/// 2v + HI of each byte of the spread `qh` moved to bit 4 (16-bit shifts of at most 4 keep
/// a byte's bit 4 within the byte).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn bit5(
    qh: std::arch::x86_64::__m256i,
    v: usize,
    hi: usize,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let at = (2 * v + hi) as i32;
    let moved = match at <= 4 {
        true => _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - at)),
        false => _mm256_srl_epi16(qh, _mm_cvtsi32_si128(at - 4)),
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
}

/// The 5-bit values (0..31) of nibble vector v of a packed Q5_0 (`h` = 1 header field) or
/// Q5_1 (`h` = 2) block of 8 rows at `g`: elements 4v..4v + 4 (`lo`) and 16 + 4v.. (`hi`) of
/// each row, the fifth bits from the regrouped `qh`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn q5_values(
    g: *const u8,
    h: usize,
    v: usize,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0f);
    let qh = _mm256_loadu_si256(g.add(16 * h) as *const __m256i);
    let raw = _mm256_loadu_si256(g.add(16 * h + 32 + 32 * v) as *const __m256i);
    let lo = _mm256_or_si256(_mm256_and_si256(raw, low), bit5(qh, v, 0));
    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
    (lo, _mm256_or_si256(hi, bit5(qh, v, 1)))
}

/// With AVX2. 5-bit values against i8 through `maddubs`: a lane is at most 2 * 31 * 127 =
/// 7874, two of them 15748 < 32767, widened to int32 after each pair.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn q5<D: super::isa::Dot, const R: usize, const MIN: bool>(
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
) {
    use std::arch::x86_64::*;
    let h = if MIN { 2 } else { 1 };
    let gb = group(h);
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let g = w.as_ptr().add(b * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); R];
        for v in 0..4 {
            let (lo, hi) = q5_values(g, h, v);
            for r in 0..R {
                let qs = &x[r].get_unchecked(b).qs;
                let (x1, x2) = (
                    super::x8::bcast4(qs, 4 * v),
                    super::x8::bcast4(qs, 16 + 4 * v),
                );
                isum[r] = D::pair32(isum[r], lo, x1, hi, x2);
            }
        }
        for r in 0..R {
            let xb = x[r].get_unchecked(b);
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
            let sumi = if MIN {
                isum[r]
            } else {
                _mm256_sub_epi32(isum[r], _mm256_set1_epi32(16 * xb.s as i32))
            };
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), scale, acc[r]);
            if MIN {
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16) as *const __m128i));
                acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[r]);
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
