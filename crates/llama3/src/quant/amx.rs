//! Prompt-sized products on Intel AMX (Sapphire Rapids and later): the tile unit multiplies
//! 16 activation rows by 16 weight rows over 64 bytes of K in one instruction, where the VNNI
//! kernels take 8 weight rows by 4 activation rows one 4-byte piece at a time. This file has
//! what the AMX kernels share: detection, tile configurations, cache-line buffers and the
//! parallel driver, and the tile steps of the signed digit matrices; `amx_k.rs` has the
//! K-quants, `amx_xs.rs` IQ4_XS, `amx_blk.rs` the formats scaled per block of 32 (Q4_0, Q5_0,
//! Q8_0, IQ4_NL).
//!
//! Same integers, same float work, so the same bits as every other path: a row computed in a
//! prompt here equals the row decoded alone by the VNNI kernels. Integer sums are exact in any
//! order; each kernel then repeats its VNNI kernel's float steps in the same order, 16 weight
//! rows per vector instead of 8.
//!
//! ```text
//! A (16 x K bytes)   activations i8   row = token, K bytes of its quants
//! B (K/4 x 64 bytes) weights          line i: w[n][4i..4i+4] for n = 0..16
//! C (16 x 16)        int32            [token][weight row]
//! ```
//!
//! Linux grants a process the tiles' state on request (`arch_prctl`); `available` asks once.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::packed::{column_tasks, group_rows, Packed, Tile};
use super::{Format, Kind, SyncPtr};

/// Activation rows per tile: prompts shorter than this go through the VNNI kernels.
pub const MIN_ROWS: usize = 16;

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
    matches!(
        format,
        Format::Super(_) | Format::Blocks(Kind::Q4_0 | Kind::Q5_0 | Kind::Q8_0) | Format::Iq(_)
    )
}

/// 64 bytes on a cache line: tile rows that straddle two lines load markedly slower.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

impl Line {
    pub(super) const ZERO: Line = Line([0; 64]);
}

/// A tile configuration (palette 1): (rows, bytes per row) of tiles 0-7.
#[repr(C, align(64))]
pub(super) struct TileConfig([u8; 64]);

impl TileConfig {
    pub(super) fn new(tiles: [(u8, u16); 8]) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (t, (rows, colsb)) in tiles.into_iter().enumerate() {
            c[16 + 2 * t..][..2].copy_from_slice(&colsb.to_le_bytes());
            c[48 + t] = rows;
        }
        TileConfig(c)
    }

    /// Loads it on this thread; `release` ends its use.
    ///
    /// # Safety
    /// AMX and the tile state (`available`).
    #[inline(always)]
    pub(super) unsafe fn load(&self) {
        asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
    }
}

/// # Safety
/// AMX (`available`).
#[inline(always)]
pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// The parallel pass of every AMX kernel, as `packed.rs`'s `drive`: a task per 16 weight rows
/// (groups g and g + 1) where `tiles(w, g, (out, n, 8g))` computes rows 0..`full` (tiles of
/// 16) and `fallback` (the VNNI kernel) the rows after them; a last single group of 8 (N / 8
/// odd) all on `fallback`. `xs` holds the rows' activation blocks, `stride` per row.
pub(super) fn gemm_pairs<A: Sync>(
    ws: &[&Packed],
    m: usize,
    (xs, stride): (&[A], usize),
    fallback: &impl Tile<A>,
    tiles: impl Fn(&Packed, usize, (SyncPtr, usize, usize)) + Sync,
) -> Vec<Vec<f32>> {
    let full = m / 16 * 16;
    column_tasks(ws, m, 2, |w, g, (out, n)| {
        if g + 1 == n / 8 {
            return group_rows(fallback, w.group_data(g), xs, stride, 0..m, (out, n, g));
        }
        tiles(w, g, (out, n, 8 * g));
        for h in 0..2 {
            group_rows(
                fallback,
                w.group_data(g + h),
                xs,
                stride,
                full..m,
                (out, n, g + h),
            );
        }
    })
}

/// Digit matrices of one super-block from its signed values (64 tile lines, `lines_q6k` or
/// `amx_blk`'s IQ4 lines): for each K step t of 64 elements (lines 16t..16t + 16) and digit i of
/// N, at (t * N + i) * 16, each value times its row's digit i of its sub-block (`dig[s][i]`,
/// `dig.len()` sub-blocks of 64 / len lines) in a signed byte (Q6_K: |(q - 32) x digit| <= 96;
/// IQ4_XS: |value x ternary digit| <= 127).
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) unsafe fn digits_signed<const N: usize>(
    values: &[Line],
    dig: &[[[i8; 16]; N]],
    dst: &mut [Line],
) {
    assert!(values.len() >= 64 && dst.len() >= 64 * N && !dig.is_empty());
    let lines_per_sub = 64 / dig.len();
    let lo8 = _mm512_set1_epi16(0xff);
    // Signed bytes: even ones sign-extended in 16-bit lanes, odd ones.
    let even = |v: __m512i| _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8);
    let odd = |v: __m512i| _mm512_srai_epi16(v, 8);
    let out = dst.as_mut_ptr();
    for (s, ds) in dig.iter().enumerate() {
        // Each row's digit in its 4 bytes, sign-extended in 16-bit lanes.
        let dg: [[__m512i; 2]; N] = std::array::from_fn(|i| {
            let d = _mm512_cvtepi8_epi32(_mm_loadu_si128(ds[i].as_ptr() as *const __m128i));
            let d = _mm512_and_si512(d, _mm512_set1_epi32(0xff));
            let d = _mm512_mullo_epi32(d, _mm512_set1_epi32(0x0101_0101));
            [even(d), odd(d)]
        });
        let first = lines_per_sub * s;
        for (line, value) in values.iter().enumerate().skip(first).take(lines_per_sub) {
            let v = _mm512_loadu_si512(value.0.as_ptr() as *const __m512i);
            let (ve, vo) = (even(v), odd(v));
            let (t, l) = (line / 16, line % 16);
            for (i, [de, dd]) in dg.iter().enumerate() {
                let pe = _mm512_and_si512(_mm512_mullo_epi16(ve, *de), lo8);
                let po = _mm512_slli_epi16(_mm512_mullo_epi16(vo, *dd), 8);
                let at = out.add((t * N + i) * 16 + l) as *mut __m512i;
                _mm512_storeu_si512(at, _mm512_or_si512(pe, po));
            }
        }
    }
}

/// One super-block of an activation tile (`a`: 4 K steps of 1 KiB) against `nd` (3: Q6_K, 4:
/// IQ4_XS in `amx_xs.rs`) signed digit matrices of `b` (`nd` KiB per K step), stored into `c`.
#[inline(always)]
pub(super) unsafe fn super_signed(nd: usize, a: *const u8, b: *const u8, c: *mut i32) {
    zero_c();
    for t in 0..4 {
        let b = b.add(1024 * nd * t);
        asm!(
            "tileloadd tmm4, [{a} + {l}*1]",
            "tileloadd tmm5, [{b0} + {l}*1]",
            "tileloadd tmm6, [{b1} + {l}*1]",
            "tileloadd tmm7, [{b2} + {l}*1]",
            "tdpbssd tmm0, tmm4, tmm5",
            "tdpbssd tmm1, tmm4, tmm6",
            "tdpbssd tmm2, tmm4, tmm7",
            a = in(reg) a.add(1024 * t),
            b0 = in(reg) b, b1 = in(reg) b.add(1024), b2 = in(reg) b.add(2048),
            l = in(reg) 64usize,
            options(nostack, readonly),
        );
        if nd == 4 {
            asm!(
                "tileloadd tmm5, [{b3} + {l}*1]",
                "tdpbssd tmm3, tmm4, tmm5",
                b3 = in(reg) b.add(3072), l = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
    }
    store_c(nd, c);
}

/// Zeroes C tiles 0-3.
#[inline(always)]
pub(super) unsafe fn zero_c() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Stores C tiles 0..`count` (3 or 4) into `c`, 1 KiB each.
#[inline(always)]
pub(super) unsafe fn store_c(count: usize, c: *mut i32) {
    asm!(
        "tilestored [{c0} + {l}*1], tmm0",
        "tilestored [{c1} + {l}*1], tmm1",
        "tilestored [{c2} + {l}*1], tmm2",
        c0 = in(reg) c, c1 = in(reg) c.add(256), c2 = in(reg) c.add(512),
        l = in(reg) 64usize,
        options(nostack),
    );
    if count == 4 {
        asm!(
            "tilestored [{c3} + {l}*1], tmm3",
            c3 = in(reg) c.add(768), l = in(reg) 64usize,
            options(nostack),
        );
    }
}

#[inline(always)]
pub(super) unsafe fn load_i(v: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(v.as_ptr() as *const __m512i)
}
