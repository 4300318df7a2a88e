//! IQ4_XS prompts on AMX (`amx.rs`) with its sub-block scales as digit matrices, as `amx_k.rs`
//! does for the K-quants: a scale `ls - 32` (-32..31) is `27 a + 9 b + 3 c + d` in balanced
//! ternary (digits -1..1), and a digit times a table value (-127..113) still fits a signed
//! byte, so four digit matrices each accumulate a whole super-block in a tile (`tdpbssd`, 4 K
//! steps of 64) and are stored once per super-block instead of once per sub-block. The sum
//! `27 C_a + 9 C_b + 3 C_c + C_d` is `iq4::xs_simd`'s `Σ_s (ls_s - 32) Σ q x` exactly, and the
//! float step is its.

use std::arch::x86_64::*;

use super::amx::{digits_signed, load_i, release, super_signed, Line, TileConfig};
use super::amx_blk::{lines, Blk};
use super::iq4::{Iq4, XS_QS, XS_SC};
use super::packed::Packed;
use super::q8::BlockQ8K;
use super::SyncPtr;

/// Digit matrices per super-block.
const ND: usize = 4;

/// The balanced ternary digits (a, b, c, d), `27 a + 9 b + 3 c + d`, of each scale `ls - 32`
/// (-32..31), by its byte as packed (i8).
const TERNARY: [[i8; ND]; 256] = {
    let mut t = [[0i8; ND]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut v = byte as u8 as i8 as i32;
        let mut digits = [0i8; ND];
        let mut i = ND;
        while i > 0 {
            i -= 1;
            let r = (v + 1).rem_euclid(3) - 1;
            digits[i] = r as i8;
            v = (v - r) / 3;
        }
        // Scales outside -40..40 do not occur (ls is 6 bits); their digits are never used.
        t[byte] = digits;
        byte += 1;
    }
    t
};

/// The AMX part of one task of `amx_k::gemm_k` for IQ4_XS weights: rows 0..`full` of the
/// activations (`a` their tiles, `xs` their blocks, `nb` per row) against weight rows 8g..8g +
/// 16 of `w`, into `out` (columns 8g..8g + 16).
pub(super) fn pair(
    w: &Packed,
    g: usize,
    out: (SyncPtr, usize, usize),
    (a, xs): (&[Line], &[BlockQ8K]),
    nb: usize,
    full: usize,
) {
    let (b, d) = unpack(w.group_data(g), w.group_data(g + 1), nb);
    // SAFETY: `available` checked AMX-INT8 and AVX-512 and got the tile state; `a` holds
    // `full` rows, `b` and `d` `nb` super-blocks; the task owns columns 8g..8g + 16.
    unsafe { tiles((a, &b), &d, xs, nb, full, out) }
}

/// Rows 8g..8g + 16 (groups `g0`, `g1`) as the digit matrices' tile lines (`ND` x 4 KiB per
/// super-block) and their super-blocks' scales `d`.
fn unpack(g0: &[u8], g1: &[u8], nb: usize) -> (Vec<Line>, Vec<[f32; 16]>) {
    let gb = Iq4::Xs.group_bytes();
    let mut b = vec![Line::ZERO; nb * ND * 64];
    let mut values = vec![Line::ZERO; 64];
    let mut ds = Vec::with_capacity(nb);
    for sb in 0..nb {
        let gs = [&g0[sb * gb..][..gb], &g1[sb * gb..][..gb]];
        let mut d = [0f32; 16];
        let mut dig = [[[0i8; 16]; ND]; 8];
        for (h, g) in gs.iter().enumerate() {
            for c in 0..8 {
                d[8 * h + c] = half::f16::from_le_bytes([g[2 * c], g[2 * c + 1]]).to_f32();
                for (s, ds) in dig.iter_mut().enumerate() {
                    let t = TERNARY[g[XS_SC + 8 * s + c] as usize];
                    for (i, di) in ds.iter_mut().enumerate() {
                        di[8 * h + c] = t[i];
                    }
                }
            }
            for s in 0..8 {
                // SAFETY: AVX2 is there (`available`); sub-block s's 4 nibble vectors lie
                // within the packed block, its 8 lines within `values`.
                unsafe {
                    lines(
                        Blk::Iq4Nl,
                        (g.as_ptr(), XS_QS + 128 * s),
                        &mut values[8 * s..][..8],
                        h,
                    )
                };
            }
        }
        // SAFETY: AVX-512 BW is there (`available`); `b`'s super-block holds ND x 64 lines.
        unsafe { digits_signed(&values, &dig, &mut b[sb * ND * 64..][..ND * 64]) };
        ds.push(d);
    }
    (b, ds)
}

/// Activation rows 0..`full` (tiles of 16) against the 16 weight rows of `b`/`d`, into columns
/// col..col + 16 of `out` (`n` wide).
///
/// # Safety
/// AMX-INT8, AVX-512 and the tile state (`available`); `xs` holds `full` rows of `nb`
/// blocks; the caller owns those outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn tiles(
    (a, b): (&[Line], &[Line]),
    d: &[[f32; 16]],
    xs: &[BlockQ8K],
    nb: usize,
    full: usize,
    (out, n, col): (SyncPtr, usize, usize),
) {
    TileConfig::new([(16, 64); 8]).load();
    #[repr(C, align(64))]
    struct Tiles([[i32; 16]; 64]);
    let mut c = Tiles([[0; 16]; 64]);
    let cp = c.0.as_mut_ptr() as *mut i32;
    for t0 in (0..full).step_by(16) {
        let j = t0 / 16;
        let mut acc = [_mm512_setzero_ps(); 16];
        for (sb, dw) in d.iter().enumerate() {
            let at = a.as_ptr().add(64 * (j * nb + sb)) as *const u8;
            super_signed(ND, at, b.as_ptr().add(sb * ND * 64) as *const u8, cp);
            let dw = _mm512_loadu_ps(dw.as_ptr());
            let c = &c.0;
            for (r, acc) in acc.iter_mut().enumerate() {
                let [a3, b3, c3, d3] = [r, 16 + r, 32 + r, 48 + r].map(|i| load_i(&c[i]));
                // 27 a + 9 b + 3 c + d, exact in int32.
                let a27 = _mm512_sub_epi32(
                    _mm512_slli_epi32(a3, 5),
                    _mm512_add_epi32(_mm512_slli_epi32(a3, 2), a3),
                );
                let b9 = _mm512_add_epi32(_mm512_slli_epi32(b3, 3), b3);
                let c3x = _mm512_add_epi32(_mm512_slli_epi32(c3, 1), c3);
                let total = _mm512_add_epi32(_mm512_add_epi32(a27, b9), _mm512_add_epi32(c3x, d3));
                let xd = xs.get_unchecked((t0 + r) * nb + sb).d;
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), scale, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.get().add((t0 + r) * n + col), *acc);
        }
    }
    release();
}
