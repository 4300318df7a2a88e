//! Prompt-sized products of K-quant weights on Intel AMX (Sapphire Rapids and later): the
//! tile unit multiplies 16 activation rows by 16 weight rows over a whole sub-block in one
//! instruction, where the VNNI kernels (`x8_k.rs`) take 8 weight rows by 4 activation rows
//! one 4-byte piece at a time.
//!
//! Same integers, same float work, so the same bits as every other path (a row computed here
//! in a prompt equals the row decoded alone by the VNNI kernel):
//!
//! - the activations are `BlockQ8K` rows as quantized for the other kernels, read in place
//!   (tile A: 16 rows, one sub-block's bytes of each, row stride = a row's blocks);
//! - the weights of 16 rows (two packed groups of 8) are unpacked once per task into tile B's
//!   layout (4 consecutive elements of each of the 16 rows per 64-byte line), values as the
//!   VNNI kernels compute them (Q4_K/Q5_K unsigned, `tdpbsud`; Q6_K with its offset of 32
//!   taken off, `tdpbssd`, which gives `Σ sc Σ q x - 32 Σ sc Σ x` exactly as `x8_k::q6k`);
//! - each sub-block's int32 tile is scaled by its small integer scales and summed in int32,
//!   the Q4_K/Q5_K mins meet the activations' sums in `madd` pairs, and each super-block takes
//!   the float step of `x8_k.rs` (16 weight rows per vector instead of 8).
//!
//! ```text
//! A (16 x sub)  activations  i8   rows tok0..tok0+16, qs[sub-block]
//! B (sub/4 x 64) weights     u8/i8 line i: w[n][4i..4i+4] for n = 0..16
//! C (16 x 16)   int32        [token][weight row]
//! ```
//!
//! Linux grants a process the tiles' state on request (`arch_prctl`); `available` asks once.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::kquant::{q4k_layout, Super, MN, Q5K_QH, Q6K_B, Q6K_SC, QK, SC};
use super::packed::{group_rows, Packed, SuperKernel};
use super::q8::BlockQ8K;
use super::x8_q5::bit5;
use super::{Format, SyncPtr};

/// Activation rows per tile: prompts shorter than this go through the VNNI kernels.
pub const MIN_ROWS: usize = 16;

/// Bytes of tile B per super-block (256 elements of 16 rows).
const B_BYTES: usize = QK * 16;

/// Whether products run on AMX here: the CPU has AMX-TILE and AMX-INT8 with AVX-512 (the
/// epilogue's), Linux granted the tile state, and `LLAMA3_ISA` does not pick another path
/// (`LLAMA3_ISA=amx` or unset).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let asked = std::env::var("LLAMA3_ISA").ok();
        if asked.is_some_and(|a| !a.eq_ignore_ascii_case("amx")) {
            return false;
        }
        detect()
    })
}

fn detect() -> bool {
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let leaf7 = __cpuid_count(7, 0);
    let (tile, int8) = ((leaf7.edx >> 24) & 1 == 1, (leaf7.edx >> 25) & 1 == 1);
    avx512 && tile && int8 && request_tiles()
}

#[cfg(target_os = "linux")]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it changes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tiles() -> bool {
    false
}

/// Whether `format` has AMX kernels.
pub fn takes(format: Format) -> bool {
    matches!(format, Format::Super(_))
}

/// `y_i = x @ W_i^T` for K-quant weights of one format and K, `xs` the activations quantized
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
    let Format::Super(kind) = fallback.0 else {
        return Vec::new();
    };
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n())).collect();
    let outs: Vec<SyncPtr> = ys.iter_mut().map(|y| SyncPtr(y.as_mut_ptr())).collect();
    // (weight, first group of 8): pairs of groups, and a last single group when n / 8 is odd.
    let tasks: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (0..w.n() / 8).step_by(2).map(move |g| (i, g)))
        .collect();
    let full = m / 16 * 16;
    tasks.par_iter().for_each(|&(i, g)| {
        let (w, out) = (ws[i], outs[i]);
        let n = w.n();
        let data = |g: usize| w.group_data(g);
        if g + 1 == n / 8 {
            group_rows(fallback, data(g), xs, nb, 0..m, (out, n, g));
            return;
        }
        let (b, meta) = unpack(kind, data(g), data(g + 1), nb);
        // SAFETY: `available` checked AMX-INT8 and AVX-512 and got the tile state; the tile
        // rows read stay within `xs` (full tiles of 16 rows of nb blocks) and `b`; this task
        // owns columns 8g..8g + 16.
        unsafe { tiles(kind, &b, &meta, xs, nb, full, (out, n, 8 * g)) };
        for h in 0..2 {
            group_rows(fallback, data(g + h), xs, nb, full..m, (out, n, g + h));
        }
    });
    for (y, w) in ys.iter_mut().zip(ws) {
        // SAFETY: the tasks wrote every (row, column) of every weight.
        unsafe { y.set_len(m * w.n()) };
    }
    ys
}

/// A super-block's scales for 16 weight rows, as the epilogue reads them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Meta {
    d: [f32; 16],
    dmin: [f32; 16],
    /// Sub-block scales (8 for Q4_K/Q5_K, 16 for Q6_K) of the 16 rows.
    sc: [[i32; 16]; 16],
    /// (m_2j, m_2j+1) of each row as int16 pairs (Q4_K/Q5_K).
    mins: [[i32; 16]; 4],
}

/// Rows 8g..8g + 16 (groups `g0`, `g1`) as tile B lines, `B_BYTES` per super-block, and
/// their scales.
fn unpack(kind: Super, g0: &[u8], g1: &[u8], nb: usize) -> (Vec<u8>, Vec<Meta>) {
    let gb = kind.group_bytes();
    let mut b = vec![0u8; nb * B_BYTES];
    let mut meta = Vec::with_capacity(nb);
    for sb in 0..nb {
        let gs = [&g0[sb * gb..][..gb], &g1[sb * gb..][..gb]];
        let dst = &mut b[sb * B_BYTES..][..B_BYTES];
        // SAFETY: AVX2 is there (`available`); loads and stores stay within `gs` and `dst`.
        unsafe {
            match kind {
                Super::Q4K => lines_q4k::<false>(gs, dst),
                Super::Q5K => lines_q4k::<true>(gs, dst),
                Super::Q6K => lines_q6k(gs, dst),
            }
        }
        meta.push(scales(kind, gs));
    }
    (b, meta)
}

fn f16_at(g: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([g[at], g[at + 1]]).to_f32()
}

fn scales(kind: Super, gs: [&[u8]; 2]) -> Meta {
    let mut m = Meta {
        d: [0.0; 16],
        dmin: [0.0; 16],
        sc: [[0; 16]; 16],
        mins: [[0; 16]; 4],
    };
    for (h, g) in gs.iter().enumerate() {
        for c in 0..8 {
            let r = 8 * h + c;
            m.d[r] = f16_at(g, 2 * c);
            match kind {
                Super::Q6K => {
                    for s in 0..16 {
                        m.sc[s][r] = g[Q6K_SC + 8 * s + c] as i8 as i32;
                    }
                }
                Super::Q4K | Super::Q5K => {
                    m.dmin[r] = f16_at(g, 16 + 2 * c);
                    for s in 0..8 {
                        m.sc[s][r] = g[SC + 8 * s + c] as i32;
                    }
                    for j in 0..4 {
                        let (lo, hi) = (g[MN + 16 * j + c], g[MN + 16 * j + 8 + c]);
                        m.mins[j][r] = lo as i32 | (hi as i32) << 16;
                    }
                }
            }
        }
    }
    m
}

/// Q4_K/Q5_K tile lines: sub-block s (32 elements) at 512 s, line i (elements 4i..4i + 4 of
/// each row) at + 64 i, rows 0-7 from group 0, 8-15 from group 1. The nibble pieces of
/// `kquant.rs`'s layout are already 4 consecutive elements per row.
#[target_feature(enable = "avx2")]
unsafe fn lines_q4k<const Q5: bool>(gs: [&[u8]; 2], dst: &mut [u8]) {
    let (_, qs) = q4k_layout(Q5);
    let low = _mm256_set1_epi8(0x0f);
    let out = dst.as_mut_ptr();
    for (h, g) in gs.iter().enumerate() {
        let g = g.as_ptr();
        for p in 0..4 {
            for i in 0..8 {
                let raw = _mm256_loadu_si256(g.add(qs + 32 * (8 * p + i)) as *const __m256i);
                let mut lo = _mm256_and_si256(raw, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                if Q5 {
                    let qh = _mm256_loadu_si256(g.add(Q5K_QH + 32 * i) as *const __m256i);
                    lo = _mm256_or_si256(lo, bit5(qh, p, 0));
                    hi = _mm256_or_si256(hi, bit5(qh, p, 1));
                }
                let at = |s: usize| out.add(512 * s + 64 * i + 32 * h) as *mut __m256i;
                _mm256_storeu_si256(at(2 * p), lo);
                _mm256_storeu_si256(at(2 * p + 1), hi);
            }
        }
    }
}

/// Q6_K tile lines, values minus 32 (signed): sub-block s (16 elements) at 256 s, line v at
/// + 64 v. Bits as `x8_k::q6k` assembles them.
#[target_feature(enable = "avx2")]
unsafe fn lines_q6k(gs: [&[u8]; 2], dst: &mut [u8]) {
    let low = _mm256_set1_epi8(0x0f);
    let top = _mm256_set1_epi8(0x30);
    let off = _mm256_set1_epi8(32);
    let out = dst.as_mut_ptr();
    for (h, g) in gs.iter().enumerate() {
        for b in 0..8 {
            let blk = g.as_ptr().add(Q6K_B + 192 * b);
            for u in 0..2 {
                let hb = _mm256_loadu_si256(blk.add(128 + 32 * u) as *const __m256i);
                for t in 0..2 {
                    let v = 2 * u + t;
                    let raw = _mm256_loadu_si256(blk.add(32 * v) as *const __m256i);
                    let (ha, hh) = match t {
                        0 => (_mm256_slli_epi16(hb, 4), _mm256_slli_epi16(hb, 2)),
                        _ => (hb, _mm256_srli_epi16(hb, 2)),
                    };
                    let lo = _mm256_or_si256(_mm256_and_si256(raw, low), _mm256_and_si256(ha, top));
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                    let hi = _mm256_or_si256(hi, _mm256_and_si256(hh, top));
                    let at = |s: usize| out.add(256 * s + 64 * v + 32 * h) as *mut __m256i;
                    _mm256_storeu_si256(at(2 * b), _mm256_sub_epi8(lo, off));
                    _mm256_storeu_si256(at(2 * b + 1), _mm256_sub_epi8(hi, off));
                }
            }
        }
    }
}

/// The tile configuration (palette 1): C tiles 0 and 1 (16 x 16 int32), A tiles 2 and 3 (16
/// rows of `sub` bytes), B tiles 4 and 5 (`sub / 4` lines of 64 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(sub: u16) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |t: usize, rows: u8, colsb: u16| {
            c[16 + 2 * t..][..2].copy_from_slice(&colsb.to_le_bytes());
            c[48 + t] = rows;
        };
        set(0, 16, 64);
        set(1, 16, 64);
        set(2, 16, sub);
        set(3, 16, sub);
        set(4, (sub / 4) as u8, 64);
        set(5, (sub / 4) as u8, 64);
        TileConfig(c)
    }
}

/// Two sub-blocks' products into `c` (2 x 16 x 16 int32): A tiles at `a0`, `a1` (row stride
/// `stride`), B tiles at `b0`, `b1` (64-byte lines); `SIGNED_B` picks `tdpbssd` over
/// `tdpbsud`.
#[inline(always)]
unsafe fn dot2<const SIGNED_B: bool>(
    (a0, a1, stride): (*const u8, *const u8, usize),
    (b0, b1): (*const u8, *const u8),
    c: &mut [[i32; 16]; 32],
) {
    asm!(
        "tileloadd tmm2, [{a0} + {s}*1]",
        "tileloadd tmm3, [{a1} + {s}*1]",
        "tileloadd tmm4, [{b0} + {l}*1]",
        "tileloadd tmm5, [{b1} + {l}*1]",
        "tilezero tmm0",
        "tilezero tmm1",
        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
        s = in(reg) stride, l = in(reg) 64usize,
        options(nostack, readonly),
    );
    if SIGNED_B {
        asm!(
            "tdpbssd tmm0, tmm2, tmm4",
            "tdpbssd tmm1, tmm3, tmm5",
            options(nostack, nomem)
        );
    } else {
        asm!(
            "tdpbsud tmm0, tmm2, tmm4",
            "tdpbsud tmm1, tmm3, tmm5",
            options(nostack, nomem)
        );
    }
    let p = c.as_mut_ptr() as *mut u8;
    asm!(
        "tilestored [{c0} + {l}*1], tmm0",
        "tilestored [{c1} + {l}*1], tmm1",
        c0 = in(reg) p, c1 = in(reg) p.add(1024), l = in(reg) 64usize,
        options(nostack),
    );
}

/// Activation rows 0..`full` (tiles of 16) against the 16 weight rows of `b`/`meta`, into
/// columns col..col + 16 of `out` (`n` wide).
///
/// # Safety
/// AMX-INT8, AVX-512 and the tile state (`available`); `xs` holds `full` rows of `nb`
/// blocks; the caller owns those outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn tiles(
    kind: Super,
    b: &[u8],
    meta: &[Meta],
    xs: &[BlockQ8K],
    nb: usize,
    full: usize,
    (out, n, col): (SyncPtr, usize, usize),
) {
    let q6 = kind == Super::Q6K;
    let sub = if q6 { 16 } else { 32 };
    let cfg = TileConfig::new(sub as u16);
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let stride = nb * size_of::<BlockQ8K>();
    let qs = std::mem::offset_of!(BlockQ8K, qs);
    let mut c = [[0i32; 16]; 32];
    for t0 in (0..full).step_by(16) {
        let x0 = xs.as_ptr().add(t0 * nb);
        let mut acc = [_mm512_setzero_ps(); 16];
        for (sb, mt) in meta.iter().enumerate() {
            let a = (x0.add(sb) as *const u8).add(qs);
            let bb = b.as_ptr().add(sb * B_BYTES);
            let mut isum = [_mm512_setzero_si512(); 16];
            for p in 0..QK / sub / 2 {
                let (s0, s1) = (2 * p, 2 * p + 1);
                let tiles_a = (a.add(sub * s0), a.add(sub * s1), stride);
                let tiles_b = (bb.add(sub * 16 * s0), bb.add(sub * 16 * s1));
                match q6 {
                    true => dot2::<true>(tiles_a, tiles_b, &mut c),
                    false => dot2::<false>(tiles_a, tiles_b, &mut c),
                }
                let (k0, k1) = (load_i(&mt.sc[s0]), load_i(&mt.sc[s1]));
                for (r, s) in isum.iter_mut().enumerate() {
                    let v0 = _mm512_mullo_epi32(load_i(&c[r]), k0);
                    let v1 = _mm512_mullo_epi32(load_i(&c[16 + r]), k1);
                    *s = _mm512_add_epi32(*s, _mm512_add_epi32(v0, v1));
                }
            }
            let d = _mm512_loadu_ps(mt.d.as_ptr());
            if q6 {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = &*x0.add(r * nb + sb);
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), scale, *acc);
                }
                continue;
            }
            let dmin = _mm512_loadu_ps(mt.dmin.as_ptr());
            let mins: [__m512i; 4] = std::array::from_fn(|j| load_i(&mt.mins[j]));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xb = &*x0.add(r * nb + sb);
                let mut msum = _mm512_setzero_si512();
                for (j, m) in mins.iter().enumerate() {
                    let bs = &xb.bsums;
                    let b0 = bs[4 * j] as i32 + bs[4 * j + 1] as i32;
                    let b1 = bs[4 * j + 2] as i32 + bs[4 * j + 3] as i32;
                    let pair = _mm512_set1_epi32((b0 & 0xffff) | (b1 << 16));
                    msum = _mm512_add_epi32(msum, _mm512_madd_epi16(*m, pair));
                }
                let dx = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
                let mx = _mm512_mul_ps(dmin, _mm512_set1_ps(-xb.d));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), dx, *acc);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), mx, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.get().add((t0 + r) * n + col), *acc);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

#[inline(always)]
unsafe fn load_i(v: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(v.as_ptr() as *const __m512i)
}
