//! Prompt-sized products on Intel AMX (Sapphire Rapids and later): the tile unit multiplies
//! 16 activation rows by 16 weight rows over 64 bytes of K in one instruction, where the VNNI
//! kernels take 8 weight rows by 4 activation rows one 4-byte piece at a time. This file has
//! what the AMX kernels share: detection, tile configurations, cache-line buffers and the
//! parallel driver; `amx_k.rs` has the K-quants, `amx_blk.rs` the formats scaled per block of
//! 32 (Q4_0, IQ4_XS).
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

#[inline(always)]
pub(super) unsafe fn load_i(v: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(v.as_ptr() as *const __m512i)
}
