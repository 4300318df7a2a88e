//! K-quants (Q4_K, Q5_K, Q6_K) packed eight rows at a time, and their portable kernels (the
//! AVX2 ones: `x8_k.rs`).
//!
//! A GGUF K-quant block is a super-block of 256 elements with one f16 scale `d` (and `dmin`)
//! and small integer scales per sub-block: Q4_K/Q5_K have 8 sub-blocks of 32 with 6-bit
//! scale and min packed in 12 bytes (`y = d * sc * q - dmin * m`, q of 4 or 5 bits); Q6_K has
//! 16 sub-blocks of 16 with an i8 scale (`y = d * sc * (q - 32)`, q of 6 bits). The
//! activations are quantized per super-block as llama.cpp's `block_q8_K` (one f32 scale for
//! 256, the exact sums of each 16): a whole super-block accumulates in int32, the small scales
//! applied in the integer sums, and takes one float step per row and column.
//!
//! A block of 8 rows holds one super-block of each row, its small scales unpacked to one byte
//! and laid out so that 8 bytes give sub-block `s` of the 8 rows, and the quantized bytes in
//! 4-byte pieces as `packed.rs` lays them out (piece v of row c at 32v + 4c):
//!
//! ```text
//! Q4_K (1184 bytes): d[c] f16 x 8 | dmin[c] f16 x 8 | sc[s][c] u8 8x8 | m[s][c] u8 8x8 | qs 32 pieces
//! Q5_K (1440 bytes): as Q4_K, then qh 8 pieces before qs
//! Q6_K (1680 bytes): d[c] f16 x 8 | sc[s][c] i8 16x8 | 8 x (elements 32b..32b + 32: 4 nibble
//!                   vectors | 2 high-bit vectors), 192 bytes each
//! ```
//!
//! Q6_K's values are regrouped by 32 elements (e = 0..32, each q(e) of 6 bits) so
//! that one load of high bits serves 4 value vectors: byte 4c + j of nibble vector v is
//! `q(4v+j) & 15 | (q(16+4v+j) & 15) << 4` (Q4_1's order), and of high vector u it is the top
//! two bits of q(8u+j), q(16+8u+j), q(8u+4+j), q(16+8u+4+j) at bits 0, 2, 4, 6.
//!
//! Packing is lossless (16 values of 6 bits fill the 12 scale bytes exactly), so `Packed`
//! gives the GGUF bytes back.

use half::f16;

use super::q8::BlockQ8K;

/// The K-quant types with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Super {
    Q4K,
    Q5K,
    Q6K,
}

/// Elements of a super-block.
pub const QK: usize = 256;

// Offsets in a packed block of 8 rows (read by `x8_k.rs` too).
pub(crate) const SC: usize = 32;
pub(crate) const MN: usize = 96;
pub(crate) const Q4K_QS: usize = 160;
pub(crate) const Q5K_QH: usize = 160;
pub(crate) const Q5K_QS: usize = 416;
pub(crate) const Q6K_SC: usize = 16;
/// Activation block b's bytes (4 nibble vectors, then 2 high-bit vectors) at `Q6K_B + 192 b`.
pub(crate) const Q6K_B: usize = 144;

impl Super {
    /// Bytes of one GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            Super::Q4K => 144,
            Super::Q5K => 176,
            Super::Q6K => 210,
        }
    }

    /// Bytes of one packed block of 8 rows.
    pub fn group_bytes(self) -> usize {
        match self {
            Super::Q4K => Q4K_QS + 1024,
            Super::Q5K => Q5K_QS + 1024,
            Super::Q6K => Q6K_B + 8 * 192,
        }
    }

    /// Row `c`'s GGUF block `src` into the block of 8 `dst`.
    pub fn pack(self, src: &[u8], dst: &mut [u8], c: usize) {
        let pieces = |src: &[u8], dst: &mut [u8]| {
            for (v, p) in src.chunks_exact(4).enumerate() {
                dst[32 * v + 4 * c..][..4].copy_from_slice(p);
            }
        };
        match self {
            Super::Q4K | Super::Q5K => {
                dst[2 * c..][..2].copy_from_slice(&src[0..2]);
                dst[16 + 2 * c..][..2].copy_from_slice(&src[2..4]);
                for s in 0..8 {
                    let (sc, m) = scale_min(s, &src[4..16]);
                    dst[SC + 8 * s + c] = sc;
                    dst[MN + 8 * s + c] = m;
                }
                if self == Super::Q4K {
                    pieces(&src[16..144], &mut dst[Q4K_QS..]);
                } else {
                    pieces(&src[16..48], &mut dst[Q5K_QH..]);
                    pieces(&src[48..176], &mut dst[Q5K_QS..]);
                }
            }
            Super::Q6K => {
                let q = q6_values(src);
                for (b, q) in q.chunks_exact(32).enumerate() {
                    let blk = &mut dst[Q6K_B + 192 * b..][..192];
                    for v in 0..4 {
                        for j in 0..4 {
                            let e = 4 * v + j;
                            blk[32 * v + 4 * c + j] = q[e] & 15 | (q[16 + e] & 15) << 4;
                        }
                    }
                    for u in 0..2 {
                        for j in 0..4 {
                            let e = 8 * u + j;
                            let fields = [q[e], q[16 + e], q[e + 4], q[16 + e + 4]];
                            blk[128 + 32 * u + 4 * c + j] =
                                fields.iter().rev().fold(0, |acc, f| acc << 2 | f >> 4);
                        }
                    }
                }
                for s in 0..16 {
                    dst[Q6K_SC + 8 * s + c] = src[192 + s];
                }
                dst[2 * c..][..2].copy_from_slice(&src[208..210]);
            }
        }
    }

    /// The inverse of `pack`: row `c`'s GGUF block out of the block of 8 `src`.
    pub fn unpack(self, src: &[u8], dst: &mut [u8], c: usize) {
        let pieces = |src: &[u8], dst: &mut [u8]| {
            for (v, p) in dst.chunks_exact_mut(4).enumerate() {
                p.copy_from_slice(&src[32 * v + 4 * c..][..4]);
            }
        };
        match self {
            Super::Q4K | Super::Q5K => {
                dst[0..2].copy_from_slice(&src[2 * c..][..2]);
                dst[2..4].copy_from_slice(&src[16 + 2 * c..][..2]);
                let sc: [u8; 8] = std::array::from_fn(|s| src[SC + 8 * s + c]);
                let m: [u8; 8] = std::array::from_fn(|s| src[MN + 8 * s + c]);
                for j in 0..4 {
                    dst[4 + j] = sc[j] | (sc[j + 4] >> 4) << 6;
                    dst[8 + j] = m[j] | (m[j + 4] >> 4) << 6;
                    dst[12 + j] = (sc[j + 4] & 0x0f) | (m[j + 4] & 0x0f) << 4;
                }
                if self == Super::Q4K {
                    pieces(&src[Q4K_QS..], &mut dst[16..144]);
                } else {
                    pieces(&src[Q5K_QH..], &mut dst[16..48]);
                    pieces(&src[Q5K_QS..], &mut dst[48..176]);
                }
            }
            Super::Q6K => {
                let mut q = [0u8; QK];
                for (b, q) in q.chunks_exact_mut(32).enumerate() {
                    let blk = &src[Q6K_B + 192 * b..][..192];
                    for v in 0..4 {
                        for j in 0..4 {
                            let (e, byte) = (4 * v + j, blk[32 * v + 4 * c + j]);
                            q[e] = byte & 15;
                            q[16 + e] = byte >> 4;
                        }
                    }
                    for u in 0..2 {
                        for j in 0..4 {
                            let e = 8 * u + j;
                            let h = blk[128 + 32 * u + 4 * c + j];
                            for (i, at) in [e, 16 + e, e + 4, 16 + e + 4].into_iter().enumerate() {
                                q[at] |= (h >> (2 * i) & 3) << 4;
                            }
                        }
                    }
                }
                q6_store(&q, &mut dst[..192]);
                for s in 0..16 {
                    dst[192 + s] = src[Q6K_SC + 8 * s + c];
                }
                dst[208..210].copy_from_slice(&src[2 * c..][..2]);
            }
        }
    }
}

/// Q6_K element `128 n + 32 p + l` (p, l < 32): low bits in ql byte `64 n + 32 (p % 2) + l`
/// (high nibble for p >= 2), high bits 2p..2p + 2 of qh byte `32 n + l` (ggml's layout).
fn q6_index(e: usize) -> (usize, u32, usize, u32) {
    let (n, p, l) = (e / 128, (e % 128) / 32, e % 32);
    (
        64 * n + 32 * (p % 2) + l,
        4 * (p / 2) as u32,
        128 + 32 * n + l,
        2 * p as u32,
    )
}

/// The 256 6-bit values of a GGUF Q6_K block.
fn q6_values(src: &[u8]) -> [u8; QK] {
    std::array::from_fn(|e| {
        let (ql, lo_shift, qh, hi_shift) = q6_index(e);
        (src[ql] >> lo_shift) & 15 | ((src[qh] >> hi_shift) & 3) << 4
    })
}

/// The inverse of `q6_values`: ql and qh (the first 192 bytes) of a GGUF Q6_K block.
fn q6_store(q: &[u8; QK], dst: &mut [u8]) {
    dst.fill(0);
    for (e, &v) in q.iter().enumerate() {
        let (ql, lo_shift, qh, hi_shift) = q6_index(e);
        dst[ql] |= (v & 15) << lo_shift;
        dst[qh] |= (v >> 4) << hi_shift;
    }
}

/// Bytes of a packed Q4_K (`q5` false) or Q5_K block of 8 rows, and where its quants start.
pub(crate) fn q4k_layout(q5: bool) -> (usize, usize) {
    match q5 {
        false => (Super::Q4K.group_bytes(), Q4K_QS),
        true => (Super::Q5K.group_bytes(), Q5K_QS),
    }
}

/// ggml's `get_scale_min_k4`: scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K (`Q5 = false`) or Q5_K x Q8_K, portable: 8 columns of `R` rows. Per super-block,
/// row and column, in int32: `isum = Σ_s sc_s Σ q q_x` and `msum = Σ_s m_s Σ q_x` (the
/// activations' sums of 16), then `acc = fma(isum, d d_x, acc)`, `acc = fma(msum, dmin (-d_x),
/// acc)`; the SIMD code does the same.
pub fn q4k_scalar<const R: usize, const Q5: bool>(
    w: &[u8],
    x: [&[BlockQ8K]; R],
    out: &mut [[f32; 8]; R],
) {
    let (gb, qs) = q4k_layout(Q5);
    let mut acc = [[0f32; 8]; R];
    for (sb, g) in w.chunks_exact(gb).enumerate() {
        for c in 0..8 {
            let (d, dmin) = (f16_at(g, 2 * c), f16_at(g, 16 + 2 * c));
            for r in 0..R {
                let xb = &x[r][sb];
                let (mut isum, mut msum) = (0i32, 0i32);
                for s in 0..8 {
                    let mut dot = 0i32;
                    for i in 0..8 {
                        for j in 0..4 {
                            let byte = g[qs + 32 * (8 * (s / 2) + i) + 4 * c + j];
                            let mut q = if s % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                            if Q5 {
                                q |= ((g[Q5K_QH + 32 * i + 4 * c + j] >> s) & 1) << 4;
                            }
                            dot += q as i32 * xb.qs[32 * s + 4 * i + j] as i32;
                        }
                    }
                    isum += g[SC + 8 * s + c] as i32 * dot;
                    let bsum = xb.bsums[2 * s] as i32 + xb.bsums[2 * s + 1] as i32;
                    msum += g[MN + 8 * s + c] as i32 * bsum;
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
                acc[r][c] = (msum as f32).mul_add(dmin * -xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}

/// Q6_K x Q8_K, portable. Per super-block, row and column, in int32:
/// `isum = Σ_h sc_h (Σ q q_x - 32 Σ q_x)` over its 16 sub-blocks of 16, then
/// `acc = fma(isum, d d_x, acc)`; the SIMD code does the same.
pub fn q6k_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8K]; R], out: &mut [[f32; 8]; R]) {
    let gb = Super::Q6K.group_bytes();
    let mut acc = [[0f32; 8]; R];
    for (sb, g) in w.chunks_exact(gb).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for r in 0..R {
                let xb = &x[r][sb];
                let mut isum = 0i32;
                for b in 0..8 {
                    let blk = &g[Q6K_B + 192 * b..][..192];
                    // q(e) for e < 16 (lo) and 16 + e (hi), as the packing put them.
                    let q = |e: usize| {
                        let (v, j) = (e % 16 / 4, e % 4);
                        let byte = blk[32 * v + 4 * c + j];
                        let h = blk[128 + 32 * (v / 2) + 4 * c + j] >> (4 * (v % 2) + 2 * (e / 16));
                        (if e < 16 { byte & 15 } else { byte >> 4 }) | (h & 3) << 4
                    };
                    for h in 0..2 {
                        let sc = g[Q6K_SC + 8 * (2 * b + h) + c] as i8 as i32;
                        let dot: i32 = (16 * h..16 * h + 16)
                            .map(|e| q(e) as i32 * xb.qs[32 * b + e] as i32)
                            .sum();
                        isum += sc * (dot - 32 * xb.bsums[2 * b + h] as i32);
                    }
                }
                acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
            }
        }
    }
    *out = acc;
}
