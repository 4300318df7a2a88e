//! K-quant prompts on AMX (`amx.rs`). A super-block's sub-block scales are small integers,
//! so the scaled sum `Σ_s sc_s Σ_(k in s) q_k x_k` is split into digit matrices whose bytes
//! still fit a tile: Q4_K/Q5_K scales (0..63) as `8 hi + lo` (hi, lo <= 7; `lo * q` <= 217
//! unsigned, `tdpbsud`), Q6_K's (-128..127) in balanced base 7, `49 a + 7 b + c` with digits
//! -3..3 times `q - 32` (|.| <= 96, `tdpbssd`; `Σ sc Σ (q - 32) x` is exactly `x8_k::q6k`'s
//! `Σ sc Σ q x - 32 Σ sc Σ x`). Each digit matrix accumulates a whole super-block in a tile
//! (4 K steps of 64), and the super-block takes `x8_k.rs`'s float step.

use std::arch::asm;
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::amx::{
    digits_signed, gemm_pairs, load_i, release, store_c, super_signed, zero_c, Line, TileConfig,
};
use super::amx_xs;
use super::iq4::Iq4;
use super::kquant::{Super, MN, Q6K_B, Q6K_SC, QK, SC};
use super::packed::{Packed, SuperKernel};
use super::q8::BlockQ8K;
use super::x8_k::{q4k_values, q6k_values};
use super::{Format, SyncPtr};

/// Bytes of one digit matrix per super-block (256 elements of 16 rows).
const B_BYTES: usize = QK * 16;

/// `y_i = x @ W_i^T` for K-quant (or IQ4_XS: `amx_xs.rs`) weights of one format and K, `xs` the activations quantized
/// per super-block (`nb` per row), `m >= MIN_ROWS`; `fallback` (the VNNI kernel) takes the
/// rows past the last full tile of 16 and a last group of 8 weight rows. As `drive`: tasks
/// own disjoint columns, all weights in one parallel pass.
pub(super) fn gemm_k(
    ws: &[&Packed],
    xs: &[BlockQ8K],
    nb: usize,
    m: usize,
    fallback: &SuperKernel,
) -> Vec<Vec<f32>> {
    let full = m / 16 * 16;
    let a = activation_tiles(xs, nb, full);
    let kind = match fallback.0 {
        Format::Super(kind) => kind,
        Format::Iq(Iq4::Xs) => {
            let pair = |w: &Packed, g, out| amx_xs::pair(w, g, out, (&a, xs), nb, full);
            return gemm_pairs(ws, m, (xs, nb), fallback, pair);
        }
        _ => return Vec::new(),
    };
    let pairs = min_pairs(xs, kind);
    gemm_pairs(ws, m, (xs, nb), fallback, |w, g, out| {
        unpack(
            kind,
            (w.group_data(g), w.group_data(g + 1)),
            nb,
            |b, meta| {
                // SAFETY: `available` checked AMX-INT8 and AVX-512 and got the tile state; `a`
                // holds `full` rows, `b` and `meta` `nb` super-blocks; this task owns columns
                // 8g..8g + 16.
                unsafe { tiles(kind, (&a, b), meta, (xs, &pairs), nb, full, out) }
            },
        )
    })
}

/// The activations' quants as A tiles on cache lines: tile (16 rows) j, super-block sb, K step
/// t (64 elements) at line 16 ((j nb + sb) 4 + t), row r = line + r.
pub(super) fn activation_tiles(xs: &[BlockQ8K], nb: usize, full: usize) -> Vec<Line> {
    let mut a = vec![Line::ZERO; full * nb * 4];
    a.par_chunks_mut(16 * nb * 4)
        .enumerate()
        .for_each(|(j, tile)| {
            for (u, line) in tile.iter_mut().enumerate() {
                let (sb, t, r) = (u / 64, u / 16 % 4, u % 16);
                let x = &xs[(16 * j + r) * nb + sb].qs[64 * t..][..64];
                for (o, q) in line.0.iter_mut().zip(x) {
                    *o = *q as u8;
                }
            }
        });
    a
}

/// Q4_K/Q5_K: each activation block's sums of its sub-blocks of 32 as int16 pairs (Σ_2j,
/// Σ_2j+1), which meet the rows' (m_2j, m_2j+1) in `madd` as in `x8_k::q4k`.
fn min_pairs(xs: &[BlockQ8K], kind: Super) -> Vec<[i32; 4]> {
    if kind == Super::Q6K {
        return Vec::new();
    }
    xs.iter()
        .map(|x| {
            let bs = &x.bsums;
            std::array::from_fn(|j| {
                let b0 = bs[4 * j] as i32 + bs[4 * j + 1] as i32;
                let b1 = bs[4 * j + 2] as i32 + bs[4 * j + 3] as i32;
                (b0 & 0xffff) | (b1 << 16)
            })
        })
        .collect()
}

/// Digit matrices per K-quant: Q4_K/Q5_K scales (0..63) as 8 hi + lo, Q6_K's (-128..127) in
/// balanced base 7 (49 a + 7 b + c, digits -3..3).
fn digit_count(kind: Super) -> usize {
    match kind {
        Super::Q6K => 3,
        Super::Q4K | Super::Q5K => 2,
    }
}

/// A super-block's scales for 16 weight rows, as the epilogue takes them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Meta {
    d: [f32; 16],
    dmin: [f32; 16],
    /// (m_2j, m_2j+1) of each row as int16 pairs (Q4_K/Q5_K).
    mins: [[i32; 16]; 4],
}

/// Digit `i` of sub-block `s`'s scale of each of the 16 rows: `[s][i][row]`.
type Digits = [[[i8; 16]; 3]; 16];

/// Per-thread buffers of `unpack`, reused from task to task: B lines, scales, values.
struct Scratch {
    b: Vec<Line>,
    meta: Vec<Meta>,
    values: Vec<Line>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch { b: Vec::new(), meta: Vec::new(), values: Vec::new() })
    };
}

/// Rows 8g..8g + 16 (groups `g0`, `g1`) as tile B lines (`B_BYTES * digits` per super-block)
/// and their scales, in this thread's scratch, for `f`.
fn unpack<T>(
    kind: Super,
    (g0, g1): (&[u8], &[u8]),
    nb: usize,
    f: impl FnOnce(&[Line], &[Meta]) -> T,
) -> T {
    let gb = kind.group_bytes();
    let nd = digit_count(kind);
    let lines = nd * B_BYTES / 64;
    SCRATCH.with_borrow_mut(|sc| {
        // Every line and scale below is written before it is read.
        sc.b.resize(nb * lines, Line::ZERO);
        sc.values.resize(64, Line::ZERO);
        sc.meta.clear();
        for sb in 0..nb {
            let gs = [&g0[sb * gb..][..gb], &g1[sb * gb..][..gb]];
            let (mt, dig) = scales(kind, gs);
            // SAFETY: AVX2 and AVX-512 BW are there (`available`); loads and stores stay
            // within `gs`, `values` and `b`'s super-block.
            unsafe {
                let b = &mut sc.b[sb * lines..][..lines];
                match kind {
                    Super::Q4K => digits_q4k::<false>(gs, &dig, b),
                    Super::Q5K => digits_q4k::<true>(gs, &dig, b),
                    Super::Q6K => {
                        lines_q6k(gs, &mut sc.values);
                        digits_signed(&sc.values, &dig, b)
                    }
                }
            }
            sc.meta.push(mt);
        }
        f(&sc.b[..nb * lines], &sc.meta)
    })
}

/// The balanced base-7 digits (a, b, c), `49 a + 7 b + c = sc`, of each i8 `sc` by its byte.
const BASE7: [[i8; 3]; 256] = {
    let mut t = [[0i8; 3]; 256];
    let mut byte = 0;
    while byte < 256 {
        let sc = byte as u8 as i8 as i32;
        let c = (sc + 3).rem_euclid(7) - 3;
        let b = ((sc - c) / 7 + 3).rem_euclid(7) - 3;
        let a = ((sc - c) / 7 - b) / 7;
        assert!(49 * a + 7 * b + c == sc && a.abs() <= 3);
        t[byte] = [a as i8, b as i8, c as i8];
        byte += 1;
    }
    t
};

fn f16_at(g: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([g[at], g[at + 1]]).to_f32()
}

fn scales(kind: Super, gs: [&[u8]; 2]) -> (Meta, Digits) {
    let mut m = Meta {
        d: [0.0; 16],
        dmin: [0.0; 16],
        mins: [[0; 16]; 4],
    };
    let mut dig = [[[0i8; 16]; 3]; 16];
    for (h, g) in gs.iter().enumerate() {
        for c in 0..8 {
            let r = 8 * h + c;
            m.d[r] = f16_at(g, 2 * c);
            match kind {
                Super::Q6K => {
                    for s in 0..16 {
                        let [a, b, d] = BASE7[g[Q6K_SC + 8 * s + c] as usize];
                        [dig[s][0][r], dig[s][1][r], dig[s][2][r]] = [a, b, d];
                    }
                }
                Super::Q4K | Super::Q5K => {
                    m.dmin[r] = f16_at(g, 16 + 2 * c);
                    for s in 0..8 {
                        let sc = g[SC + 8 * s + c];
                        [dig[s][0][r], dig[s][1][r]] = [(sc >> 3) as i8, (sc & 7) as i8];
                    }
                    for j in 0..4 {
                        let (lo, hi) = (g[MN + 16 * j + c], g[MN + 16 * j + 8 + c]);
                        m.mins[j][r] = lo as i32 | (hi as i32) << 16;
                    }
                }
            }
        }
    }
    (m, dig)
}

/// Q4_K/Q5_K digit matrices of one super-block straight from the packed groups (rows 0-7
/// from group 0, 8-15 from group 1): line L (elements 4L..4L + 4 of each row; the nibble pieces
/// of `kquant.rs`'s layout are already 4 consecutive elements per row) of digit i at (t * 2 +
/// i) * 16 + L % 16, t = L / 16, each value (<= 31) times its row's digit (<= 7) of its
/// sub-block: both bytes of a 16-bit lane in one multiply (each product < 256, no carry).
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn digits_q4k<const Q5: bool>(gs: [&[u8]; 2], dig: &Digits, dst: &mut [Line]) {
    let out = dst.as_mut_ptr();
    let both = |a: __m256i, b: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
    // Sub-block s's digit i in both 16-bit halves of each row's 4 bytes.
    let digit = |s: usize, i: usize| {
        let d = _mm512_cvtepi8_epi32(_mm_loadu_si128(dig[s][i].as_ptr() as *const __m128i));
        _mm512_mullo_epi32(d, _mm512_set1_epi32(0x0001_0001))
    };
    let (g0, g1) = (gs[0].as_ptr(), gs[1].as_ptr());
    for p in 0..4 {
        // Sub-blocks 2p (low nibbles) and 2p + 1 (high) share their bytes.
        let dg = [
            [digit(2 * p, 0), digit(2 * p, 1)],
            [digit(2 * p + 1, 0), digit(2 * p + 1, 1)],
        ];
        for i in 0..8 {
            let ((lo0, hi0), (lo1, hi1)) = (q4k_values::<Q5>(g0, p, i), q4k_values::<Q5>(g1, p, i));
            for (h, v) in [both(lo0, lo1), both(hi0, hi1)].into_iter().enumerate() {
                let line = 8 * (2 * p + h) + i;
                let (t, l) = (line / 16, line % 16);
                for (d, dv) in dg[h].iter().enumerate() {
                    let at = out.add((t * 2 + d) * 16 + l) as *mut __m512i;
                    _mm512_storeu_si512(at, _mm512_mullo_epi16(v, *dv));
                }
            }
        }
    }
}

/// Q6_K values minus 32 (signed) as tile lines, as `lines_q4k`. Bits as `x8_k::q6k`
/// assembles them.
#[target_feature(enable = "avx2")]
unsafe fn lines_q6k(gs: [&[u8]; 2], dst: &mut [Line]) {
    assert!(dst.len() >= 64);
    let off = _mm256_set1_epi8(32);
    let out = dst.as_mut_ptr() as *mut u8;
    for (h, g) in gs.iter().enumerate() {
        for b in 0..8 {
            let blk = g.as_ptr().add(Q6K_B + 192 * b);
            for u in 0..2 {
                let hb = _mm256_loadu_si256(blk.add(128 + 32 * u) as *const __m256i);
                for t in 0..2 {
                    let v = 2 * u + t;
                    let (lo, hi) = q6k_values(blk, hb, u, t);
                    // Sub-blocks 2b (elements 0..16 of the 32) and 2b + 1, line v of each.
                    let at = |s: usize| out.add(256 * s + 64 * v + 32 * h) as *mut __m256i;
                    _mm256_storeu_si256(at(2 * b), _mm256_sub_epi8(lo, off));
                    _mm256_storeu_si256(at(2 * b + 1), _mm256_sub_epi8(hi, off));
                }
            }
        }
    }
}

/// One super-block of two activation tiles (at `a0`, `a1`: 4 K steps of 1 KiB) against the
/// two digit matrices of `b` (Q4_K/Q5_K): `c` = [a0 x hi, a0 x lo, a1 x hi, a1 x lo].
#[inline(always)]
unsafe fn super_q4k(a0: *const u8, a1: *const u8, b: *const u8, c: *mut i32) {
    zero_c();
    for t in 0..4 {
        asm!(
            "tileloadd tmm4, [{a0} + {l}*1]",
            "tileloadd tmm5, [{a1} + {l}*1]",
            "tileloadd tmm6, [{b0} + {l}*1]",
            "tileloadd tmm7, [{b1} + {l}*1]",
            "tdpbsud tmm0, tmm4, tmm6",
            "tdpbsud tmm1, tmm4, tmm7",
            "tdpbsud tmm2, tmm5, tmm6",
            "tdpbsud tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(1024 * t), a1 = in(reg) a1.add(1024 * t),
            b0 = in(reg) b.add(2048 * t), b1 = in(reg) b.add(2048 * t + 1024),
            l = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
    store_c(4, c);
}

/// Activation rows 0..`full` (tiles of 16) against the 16 weight rows of `b`/`meta`, into
/// columns col..col + 16 of `out` (`n` wide).
///
/// # Safety
/// AMX-INT8, AVX-512 and the tile state (`available`); `xs` holds `full` rows of `nb`
/// blocks; the caller owns those outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tiles(
    kind: Super,
    (a, b): (&[Line], &[Line]),
    meta: &[Meta],
    (xs, pairs): (&[BlockQ8K], &[[i32; 4]]),
    nb: usize,
    full: usize,
    (out, n, col): (SyncPtr, usize, usize),
) {
    TileConfig::new([(16, 64); 8]).load();
    let nd = digit_count(kind);
    // Two C buffers: the tiles of super-block sb are stored while sb - 1's epilogue runs.
    #[repr(C, align(64))]
    struct Tiles([[i32; 16]; 64]);
    let mut cbuf = [Tiles([[0; 16]; 64]), Tiles([[0; 16]; 64])];
    let cb: [*mut i32; 2] = [cbuf[0].0.as_mut_ptr().cast(), cbuf[1].0.as_mut_ptr().cast()];
    // Q4_K/Q5_K: two activation tiles at once (the second repeats the first at an odd end).
    let step = if kind == Super::Q6K { 16 } else { 32 };
    for t0 in (0..full).step_by(step) {
        let rows = (full - t0).min(step);
        let (j0, j1) = (t0 / 16, (t0 + rows) / 16 - 1);
        let mut acc = [_mm512_setzero_ps(); 32];
        for sb in 0..=nb {
            if sb < nb {
                let tile = |j: usize| a.as_ptr().add(64 * (j * nb + sb)) as *const u8;
                let bb = b.as_ptr().add(sb * nd * B_BYTES / 64) as *const u8;
                match kind {
                    Super::Q6K => super_signed(3, tile(j0), bb, cb[sb % 2]),
                    _ => super_q4k(tile(j0), tile(j1), bb, cb[sb % 2]),
                }
            }
            let Some(sb) = sb.checked_sub(1) else {
                continue;
            };
            let c = &*(cb[sb % 2] as *const [[i32; 16]; 64]);
            // Row r's activation block (and its min pairs): tile j0's rows, then j1's.
            let at = |r: usize| match r < 16 {
                true => (16 * j0 + r) * nb + sb,
                false => (16 * j1 + r - 16) * nb + sb,
            };
            match kind {
                // SAFETY (both): at(r) < full * nb <= xs.len() (= pairs.len() for Q4_K/Q5_K).
                Super::Q6K => {
                    let xd = |r| xs.get_unchecked(at(r)).d;
                    epilogue_q6k(c, &meta[sb], xd, &mut acc)
                }
                _ => {
                    let x = |r| (xs.get_unchecked(at(r)).d, *pairs.get_unchecked(at(r)));
                    epilogue_q4k(c, &meta[sb], x, &mut acc[..rows])
                }
            }
        }
        for (r, acc) in acc[..rows].iter().enumerate() {
            _mm512_storeu_ps(out.get().add((t0 + r) * n + col), *acc);
        }
    }
    release();
}

/// Q4_K/Q5_K: row r of `acc` (activation row r's d and (Σ, Σ) pairs of its sub-blocks from
/// `x`) takes `8 hi + lo` and the mins, with `x8_k::q4k`'s float step.
#[inline(always)]
unsafe fn epilogue_q4k(
    c: &[[i32; 16]; 64],
    mt: &Meta,
    x: impl Fn(usize) -> (f32, [i32; 4]),
    acc: &mut [__m512],
) {
    let (d, dmin) = (
        _mm512_loadu_ps(mt.d.as_ptr()),
        _mm512_loadu_ps(mt.dmin.as_ptr()),
    );
    let mins: [__m512i; 4] = std::array::from_fn(|j| load_i(&mt.mins[j]));
    for (r, acc) in acc.iter_mut().enumerate() {
        let (xd, pairs) = x(r);
        let (tile, i) = (r / 16, r % 16);
        let hi = load_i(&c[32 * tile + i]);
        let isum = _mm512_add_epi32(_mm512_slli_epi32(hi, 3), load_i(&c[32 * tile + 16 + i]));
        let mut msum = _mm512_setzero_si512();
        for (m, p) in mins.iter().zip(pairs) {
            // madd and add in one (`vpdpwssd`, no saturation): the same int32 sum.
            msum = _mm512_dpwssd_epi32(msum, *m, _mm512_set1_epi32(p));
        }
        let dx = _mm512_mul_ps(d, _mm512_set1_ps(xd));
        let mx = _mm512_mul_ps(dmin, _mm512_set1_ps(-xd));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dx, *acc);
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), mx, *acc);
    }
}

/// Q6_K: row r of `acc` takes `49 a + 7 b + c` with `x8_k::q6k`'s float step.
#[inline(always)]
unsafe fn epilogue_q6k(
    c: &[[i32; 16]; 64],
    mt: &Meta,
    xd: impl Fn(usize) -> f32,
    acc: &mut [__m512],
) {
    let d = _mm512_loadu_ps(mt.d.as_ptr());
    for (r, acc) in acc[..16].iter_mut().enumerate() {
        let (hi, mid, lo) = (load_i(&c[r]), load_i(&c[16 + r]), load_i(&c[32 + r]));
        // 49 hi = 32 hi + 16 hi + hi, 7 mid = 8 mid - mid (exact in int32).
        let hi = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_slli_epi32(hi, 5), _mm512_slli_epi32(hi, 4)),
            hi,
        );
        let mid = _mm512_sub_epi32(_mm512_slli_epi32(mid, 3), mid);
        let isum = _mm512_add_epi32(_mm512_add_epi32(hi, mid), lo);
        let scale = _mm512_mul_ps(d, _mm512_set1_ps(xd(r)));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
    }
}
