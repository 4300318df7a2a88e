//! Prompts of the formats scaled per block of 32 on AMX (`amx.rs`): Q4_0, Q5_0, Q8_0 and IQ4_NL,
//! an f16 scale per block: each block's tile takes `x8::q4_0`'s float step. Weights are signed
//! bytes (`tdpbssd`): Q4_0's `q - 8` and Q5_0's `q - 16` (`Σ (q - 8) x` is the VNNI kernels'
//! `Σ q x - 8 Σ x`), Q8_0's own, IQ4's table values (also IQ4_XS's values, `amx_xs.rs`). A
//! block is one K step of 32 bytes; two activation tiles share each weight tile, and a block's
//! tiles are stored while the previous block's epilogue runs.

use std::arch::asm;
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::amx::{gemm_pairs, load_i, release, Line, TileConfig};
use super::iq4::{Iq4, VALUES};
use super::packed::{Packed, Tile};
use super::q8::BlockQ8;
use super::x8_q5::q5_values;
use super::{Format, Kind, SyncPtr};

/// The formats here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Blk {
    Q4_0,
    Q5_0,
    Q8_0,
    Iq4Nl,
}

impl Blk {
    fn of(format: Format) -> Option<Blk> {
        match format {
            Format::Blocks(Kind::Q4_0) => Some(Blk::Q4_0),
            Format::Blocks(Kind::Q5_0) => Some(Blk::Q5_0),
            Format::Blocks(Kind::Q8_0) => Some(Blk::Q8_0),
            Format::Iq(Iq4::Nl) => Some(Blk::Iq4Nl),
            _ => None,
        }
    }

    /// Packed bytes per block of 32 of 8 rows, and where the nibble vectors start.
    fn layout(self) -> (usize, usize) {
        match self {
            Blk::Q4_0 | Blk::Iq4Nl => (super::x8::Q4_0_GROUP, 16),
            // d | qh (regrouped fifth bits) | nibbles.
            Blk::Q5_0 => (super::x8_q5::group(1), 48),
            // d | 8 vectors of 4 bytes per row.
            Blk::Q8_0 => (super::x8::Q8_0_GROUP, 16),
        }
    }
}

/// `y_i = x @ W_i^T` for Q4_0, Q5_0, Q8_0 or IQ4_NL weights of one format and K (`format`), `xs`
/// the rows' activation blocks (`stride` per row), `m >= MIN_ROWS`; `fallback` (the VNNI
/// kernel) takes the rows past the last full tile of 16 and a last group of 8 weight rows.
/// Another format: an empty result.
pub(super) fn gemm(
    format: Format,
    ws: &[&Packed],
    (xs, stride): (&[BlockQ8], usize),
    m: usize,
    fallback: &impl Tile<BlockQ8>,
) -> Vec<Vec<f32>> {
    let Some(kind) = Blk::of(format) else {
        return Vec::new();
    };
    let Some(k) = ws.first().map(|w| w.dims().1) else {
        return Vec::new();
    };
    let (nu, full) = (k / 32, m / 16 * 16);
    let a = activation_tiles(xs, stride, nu, full);
    let rows = |j: usize| &xs[j * stride..][..stride];
    gemm_pairs(ws, m, (xs, stride), fallback, |w, g, out| {
        let (b, meta) = unpack(kind, w.group_data(g), w.group_data(g + 1), nu);
        // SAFETY: `available` checked AMX-INT8 and AVX-512 and got the tile state; `a` holds
        // `full` rows of `nu` blocks, `b` and `meta` `nu` blocks; this task owns columns
        // 8g..8g + 16.
        unsafe { tiles((&a, &b), &meta, &rows, nu, full, out) }
    })
}

/// The activations' quants as A tiles (16 rows of 32 bytes, 8 lines): tile j, block u at
/// line 8 (j nu + u).
fn activation_tiles(xs: &[BlockQ8], stride: usize, nu: usize, full: usize) -> Vec<Line> {
    let mut a = vec![Line::ZERO; full / 16 * nu * 8];
    a.par_chunks_mut(nu * 8).enumerate().for_each(|(j, tile)| {
        for (u, lines) in tile.chunks_exact_mut(8).enumerate() {
            for r in 0..16 {
                let row = &xs[(16 * j + r) * stride..][..stride];
                let line = &mut lines[r / 2].0[32 * (r % 2)..][..32];
                for (o, q) in line.iter_mut().zip(&row[u].qs) {
                    *o = *q as u8;
                }
            }
        }
    });
    a
}

/// A block's scales of 16 weight rows.
type Meta = [f32; 16];

/// Rows 8g..8g + 16 (groups `g0`, `g1`) as B tiles (8 lines of 64 bytes per block: line v
/// holds elements 4v..4v + 4 of each row) and their scales.
fn unpack(kind: Blk, g0: &[u8], g1: &[u8], nu: usize) -> (Vec<Line>, Vec<Meta>) {
    let (gb, qs) = kind.layout();
    let mut b = vec![Line::ZERO; nu * 8];
    let mut meta = Vec::with_capacity(nu);
    for u in 0..nu {
        let gs = [&g0[u * gb..][..gb], &g1[u * gb..][..gb]];
        let mut mt = [0f32; 16];
        for (h, g) in gs.iter().enumerate() {
            for c in 0..8 {
                mt[8 * h + c] = half::f16::from_le_bytes([g[2 * c], g[2 * c + 1]]).to_f32();
            }
            // SAFETY: AVX2 is there (`available`); the vectors read from `qs` (and Q5_0's qh)
            // lie within the packed block, 8 lines of `b` from 8u within `b`.
            unsafe { lines(kind, (g.as_ptr(), qs), &mut b[8 * u..][..8], h) };
        }
        meta.push(mt);
    }
    (b, meta)
}

/// Half `h` (rows 8h..8h + 8) of a block's 8 B lines, from packed block `g` with its vectors at
/// `q`: Q8_0's 8 vectors are the lines; otherwise nibble vector v's low nibbles are elements
/// 4v..4v + 4 of each row (line v) and its high ones 16 + 4v.. (line 4 + v), made signed values
/// as the VNNI kernels' sums take them (Q4_0 `q - 8`, Q5_0 `q - 16` with its fifth bits, IQ4
/// through the table).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn lines(kind: Blk, (g, q): (*const u8, usize), dst: &mut [Line], h: usize) {
    assert!(dst.len() >= 8);
    let out = dst.as_mut_ptr();
    let at = |line: usize| (*out.add(line)).0.as_mut_ptr().add(32 * h) as *mut __m256i;
    if kind == Blk::Q8_0 {
        for s in 0..8 {
            let v = _mm256_loadu_si256(g.add(q + 32 * s) as *const __m256i);
            _mm256_storeu_si256(at(s), v);
        }
        return;
    }
    let low = _mm256_set1_epi8(0x0f);
    let t = VALUES.map(|v| v as u8);
    let table = _mm256_loadu2_m128i(t.as_ptr() as *const __m128i, t.as_ptr() as *const __m128i);
    let value = |n: __m256i| match kind {
        Blk::Q4_0 => _mm256_sub_epi8(n, _mm256_set1_epi8(8)),
        Blk::Q5_0 => _mm256_sub_epi8(n, _mm256_set1_epi8(16)),
        Blk::Iq4Nl | Blk::Q8_0 => _mm256_shuffle_epi8(table, n),
    };
    for v in 0..4 {
        let (lo, hi) = match kind {
            Blk::Q5_0 => q5_values(g, 1, v),
            _ => {
                let raw = _mm256_loadu_si256(g.add(q + 32 * v) as *const __m256i);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                (_mm256_and_si256(raw, low), hi)
            }
        };
        _mm256_storeu_si256(at(v), value(lo));
        _mm256_storeu_si256(at(4 + v), value(hi));
    }
}

/// One block of two activation tiles (`a0`, `a1`: 16 rows of 32 bytes) against its B tile
/// (`b`: 8 lines): `c` = [a0 x b, a1 x b].
#[inline(always)]
unsafe fn block(a0: *const u8, a1: *const u8, b: *const u8, c: *mut i32) {
    asm!(
        "tileloadd tmm4, [{a0} + {r}*1]",
        "tileloadd tmm5, [{a1} + {r}*1]",
        "tileloadd tmm6, [{b} + {l}*1]",
        "tilezero tmm0",
        "tilezero tmm1",
        "tdpbssd tmm0, tmm4, tmm6",
        "tdpbssd tmm1, tmm5, tmm6",
        a0 = in(reg) a0, a1 = in(reg) a1, b = in(reg) b,
        r = in(reg) 32usize, l = in(reg) 64usize,
        options(nostack, readonly),
    );
    asm!(
        "tilestored [{c0} + {l}*1], tmm0",
        "tilestored [{c1} + {l}*1], tmm1",
        c0 = in(reg) c, c1 = in(reg) c.add(256), l = in(reg) 64usize,
        options(nostack),
    );
}

/// Activation rows 0..`full` (tiles of 16; `row(t)` gives row t's blocks) against the 16
/// weight rows of `b`/`meta`, into columns col..col + 16 of `out` (`n` wide).
///
/// # Safety
/// AMX-INT8, AVX-512 and the tile state (`available`); `a` holds `full` rows of `nu` blocks;
/// the caller owns those outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn tiles<'x>(
    (a, b): (&[Line], &[Line]),
    meta: &[Meta],
    row: &impl Fn(usize) -> &'x [BlockQ8],
    nu: usize,
    full: usize,
    (out, n, col): (SyncPtr, usize, usize),
) {
    // C 0-1, A 4-5 (16 rows of 32 bytes), B 6 (8 lines).
    let ab = [
        (16, 64),
        (16, 64),
        (0, 0),
        (0, 0),
        (16, 32),
        (16, 32),
        (8, 64),
        (0, 0),
    ];
    TileConfig::new(ab).load();
    #[repr(C, align(64))]
    struct Tiles([[i32; 16]; 32]);
    let mut cbuf = [Tiles([[0; 16]; 32]), Tiles([[0; 16]; 32])];
    let cb: [*mut i32; 2] = [cbuf[0].0.as_mut_ptr().cast(), cbuf[1].0.as_mut_ptr().cast()];
    for t0 in (0..full).step_by(32) {
        let rows = (full - t0).min(32);
        // The second tile repeats the first at an odd end.
        let (j0, j1) = (t0 / 16, (t0 + rows) / 16 - 1);
        let tok = |r: usize| {
            if r < 16 {
                16 * j0 + r
            } else {
                16 * j1 + r - 16
            }
        };
        let mut acc = [_mm512_setzero_ps(); 32];
        for u in 0..=nu {
            if u < nu {
                let tile = |j: usize| a.as_ptr().add(8 * (j * nu + u)) as *const u8;
                block(
                    tile(j0),
                    tile(j1),
                    b.as_ptr().add(8 * u) as *const u8,
                    cb[u % 2],
                );
            }
            let Some(u) = u.checked_sub(1) else {
                continue;
            };
            let c = &*(cb[u % 2] as *const [[i32; 16]; 32]);
            // x8::q4_0: acc = fma(Σ (q - 8) x, d_w d_x, acc) per block.
            let d = _mm512_loadu_ps(meta[u].as_ptr());
            for (r, acc) in acc[..rows].iter_mut().enumerate() {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(row(tok(r))[u].d));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(load_i(&c[r])), scale, *acc);
            }
        }
        for (r, acc) in acc[..rows].iter().enumerate() {
            _mm512_storeu_ps(out.get().add((t0 + r) * n + col), *acc);
        }
    }
    release();
}
