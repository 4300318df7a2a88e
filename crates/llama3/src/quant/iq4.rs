//! IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear table `kvalues_iq4nl`, packed
//! eight rows at a time, with their kernels (portable and AVX2, bit-identical) and
//! dequantization (candle has no IQ types, so this is the only code that reads them).
//!
//! GGUF blocks (ggml-common.h):
//!
//! ```text
//! IQ4_NL (18 bytes, 32 elements):  d f16 | qs[16]: element j low nibble, 16 + j high
//! IQ4_XS (136 bytes, 256 elements): d f16 | scales_h u16 | scales_l[4] | qs[128]
//!     sub-block s of 32: ls = (scales_l[s/2] >> 4(s%2)) & 15 | ((scales_h >> 2s) & 3) << 4,
//!     y = d (ls - 32) kvalues[q], nibbles of qs[16s..16s+16] as IQ4_NL's
//! ```
//!
//! Packed: IQ4_NL is Q4_0's layout (`packed.rs`: d[c] f16 x 8 | nibble pieces); IQ4_XS is
//! `d[c] f16 x 8 | ls - 32 as i8, [s][c] 8x8 | qs in 32 pieces` (1104 bytes per block of 8
//! rows). The activations are Q8_0 blocks for IQ4_NL and Q8_K super-blocks for IQ4_XS, as
//! llama.cpp quantizes them.

use half::f16;

use super::q8::{BlockQ8, BlockQ8K};

/// ggml's `kvalues_iq4nl`.
pub const VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The IQ4 types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iq4 {
    Nl,
    Xs,
}

pub(super) const XS_SC: usize = 16;
pub(super) const XS_QS: usize = 80;
/// Bytes of a packed IQ4_NL block of 8 rows (Q4_0's).
pub const NL_GROUP: usize = 16 + 128;

impl Iq4 {
    /// GGUF's name.
    pub fn name(self) -> &'static str {
        match self {
            Iq4::Nl => "IQ4_NL",
            Iq4::Xs => "IQ4_XS",
        }
    }

    /// ggml's type id.
    pub fn ggml_id(self) -> u32 {
        match self {
            Iq4::Nl => 20,
            Iq4::Xs => 23,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        match id {
            20 => Some(Iq4::Nl),
            23 => Some(Iq4::Xs),
            _ => None,
        }
    }

    /// Elements per GGUF block.
    pub fn block_elems(self) -> usize {
        match self {
            Iq4::Nl => 32,
            Iq4::Xs => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Iq4::Nl => 18,
            Iq4::Xs => 136,
        }
    }

    pub fn group_bytes(self) -> usize {
        match self {
            Iq4::Nl => NL_GROUP,
            Iq4::Xs => XS_QS + 1024,
        }
    }

    /// Row `c`'s GGUF block `src` into the block of 8 `dst`.
    pub fn pack(self, src: &[u8], dst: &mut [u8], c: usize) {
        dst[2 * c..][..2].copy_from_slice(&src[0..2]);
        let (qs, at) = match self {
            Iq4::Nl => (&src[2..18], 16),
            Iq4::Xs => {
                for s in 0..8 {
                    dst[XS_SC + 8 * s + c] = (xs_scale(src, s) as i32 - 32) as i8 as u8;
                }
                (&src[8..136], XS_QS)
            }
        };
        for (v, p) in qs.chunks_exact(4).enumerate() {
            dst[at + 32 * v + 4 * c..][..4].copy_from_slice(p);
        }
    }

    /// The inverse of `pack`.
    pub fn unpack(self, src: &[u8], dst: &mut [u8], c: usize) {
        dst[0..2].copy_from_slice(&src[2 * c..][..2]);
        let (qs, at) = match self {
            Iq4::Nl => (&mut dst[2..18], 16),
            Iq4::Xs => {
                let (mut h, mut l) = (0u16, [0u8; 4]);
                for s in 0..8 {
                    let ls = (src[XS_SC + 8 * s + c] as i8 as i32 + 32) as u16;
                    l[s / 2] |= ((ls & 15) as u8) << (4 * (s % 2));
                    h |= (ls >> 4) << (2 * s);
                }
                dst[2..4].copy_from_slice(&h.to_le_bytes());
                dst[4..8].copy_from_slice(&l);
                (&mut dst[8..136], XS_QS)
            }
        };
        for (v, p) in qs.chunks_exact_mut(4).enumerate() {
            p.copy_from_slice(&src[at + 32 * v + 4 * c..][..4]);
        }
    }

    /// GGUF blocks `raw` to f32 (ggml's `dequantize_row_iq4_*`).
    pub fn dequantize(self, raw: &[u8], out: &mut Vec<f32>) {
        for b in raw.chunks_exact(self.block_bytes()) {
            let d = f16_at(b, 0);
            match self {
                Iq4::Nl => nibbles(&b[2..18], d, out),
                Iq4::Xs => {
                    for s in 0..8 {
                        let dl = d * (xs_scale(b, s) as i32 - 32) as f32;
                        nibbles(&b[8 + 16 * s..][..16], dl, out);
                    }
                }
            }
        }
    }
}

/// 32 values of 16 nibble bytes times `d`.
fn nibbles(qs: &[u8], d: f32, out: &mut Vec<f32>) {
    out.extend(qs.iter().map(|q| d * VALUES[(q & 15) as usize] as f32));
    out.extend(qs.iter().map(|q| d * VALUES[(q >> 4) as usize] as f32));
}

/// IQ4_XS sub-block `s`'s 6-bit scale from a GGUF block.
fn xs_scale(b: &[u8], s: usize) -> u8 {
    let h = u16::from_le_bytes([b[2], b[3]]);
    ((b[4 + s / 2] >> (4 * (s % 2))) & 15) | (((h >> (2 * s)) & 3) as u8) << 4
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// IQ4_NL x Q8_0, portable: 8 columns of `R` rows. Per block and column the exact integer
/// `Σ kvalues[q] q_x`, then `acc = fma(isum, d d_x, acc)`; the SIMD code does the same.
#[allow(clippy::needless_range_loop)] // c indexes the weights and the accumulators
pub fn nl_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[0f32; 8]; R];
    for (b, g) in w.chunks_exact(NL_GROUP).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for r in 0..R {
                let xb = &x[r][b];
                let isum = dot32(&g[16..], c, &xb.qs);
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// IQ4_XS x Q8_K, portable. Per super-block and column the exact `Σ_s (ls_s - 32) Σ kvalues[q]
/// q_x` in int32, then `acc = fma(isum, d d_x, acc)`.
pub fn xs_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8K]; R], out: &mut [[f32; 8]; R]) {
    let mut acc = [[0f32; 8]; R];
    for (sb, g) in w.chunks_exact(Iq4::Xs.group_bytes()).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for r in 0..R {
                let xb = &x[r][sb];
                let isum: i32 = (0..8)
                    .map(|s| {
                        let ls = g[XS_SC + 8 * s + c] as i8 as i32;
                        ls * dot32(&g[XS_QS + 128 * s..], c, &xb.qs[32 * s..32 * s + 32])
                    })
                    .sum();
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// Column `c`'s 32 values (4 nibble pieces from `qs`) against 32 activation quants.
fn dot32(qs: &[u8], c: usize, x: &[i8]) -> i32 {
    let mut isum = 0;
    for v in 0..4 {
        for j in 0..4 {
            let byte = qs[32 * v + 4 * c + j];
            isum += VALUES[(byte & 15) as usize] as i32 * x[4 * v + j] as i32
                + VALUES[(byte >> 4) as usize] as i32 * x[16 + 4 * v + j] as i32;
        }
    }
    isum
}

/// Column sums of one block of 32 (4 nibble vectors at `qs`) for `R` activation rows, whose
/// quants start at `xs[r]`: nibbles to table values by `pshufb`, then |v| against the
/// activations with v's sign (lanes at most 2 * 127 * 127, widened to int32 each step).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block32<D: super::isa::Dot, const R: usize>(
    qs: *const u8,
    xs: [&[i8]; R],
) -> [std::arch::x86_64::__m256i; R] {
    use std::arch::x86_64::*;
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(VALUES.as_ptr() as *const __m128i));
    let low = _mm256_set1_epi8(0x0f);
    let mut isum = [_mm256_setzero_si256(); R];
    for v in 0..4 {
        let raw = _mm256_loadu_si256(qs.add(32 * v) as *const __m256i);
        let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(raw, low));
        let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(raw, 4), low));
        let (alo, ahi) = (_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(hi, hi));
        for r in 0..R {
            let xlo = _mm256_sign_epi8(super::x8::bcast4(xs[r], 4 * v), lo);
            let xhi = _mm256_sign_epi8(super::x8::bcast4(xs[r], 16 + 4 * v), hi);
            isum[r] = D::acc32(D::acc32(isum[r], alo, xlo), ahi, xhi);
        }
    }
    isum
}

/// IQ4_NL x Q8_0 (see `nl_scalar`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn nl_simd<D: super::isa::Dot, const R: usize>(
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
) {
    use std::arch::x86_64::*;
    let nb = w.len() / NL_GROUP;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let g = w.as_ptr().add(b * NL_GROUP);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let isum = block32::<D, R>(
            g.add(16),
            std::array::from_fn(|r| &x[r].get_unchecked(b).qs[..]),
        );
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

/// IQ4_XS x Q8_K (see `xs_scalar`): sub-block sums times their i8 scales in int32, one float
/// step per super-block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn xs_simd<D: super::isa::Dot, const R: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; R],
    out: &mut [[f32; 8]; R],
) {
    use std::arch::x86_64::*;
    let gb = Iq4::Xs.group_bytes();
    let nb = w.len() / gb;
    assert!(x.iter().all(|r| r.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); R];
    for sb in 0..nb {
        let g = w.as_ptr().add(sb * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
        let mut total = [_mm256_setzero_si256(); R];
        for s in 0..8 {
            let p = g.add(XS_SC + 8 * s) as *const __m128i;
            let ls = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p));
            let xs = std::array::from_fn(|r| &x[r].get_unchecked(sb).qs[32 * s..32 * s + 32]);
            let isum = block32::<D, R>(g.add(XS_QS + 128 * s), xs);
            for r in 0..R {
                total[r] = _mm256_add_epi32(total[r], _mm256_mullo_epi32(isum[r], ls));
            }
        }
        for r in 0..R {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[r].get_unchecked(sb).d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[r]), scale, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
