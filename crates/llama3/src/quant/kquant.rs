//! K-quants (Q4_K, Q5_K, Q6_K) packed eight rows at a time, and their portable kernels (the
//! AVX2 ones: `x8_k.rs`).
//!
//! A GGUF K-quant block is a super-block of 256 elements with one f16 scale `d` (and `dmin`)
//! and small integer scales per sub-block: Q4_K/Q5_K have 8 sub-blocks of 32 with 6-bit
//! scale and min packed in 12 bytes (`y = d * sc * q - dmin * m`, q of 4 or 5 bits); Q6_K has
//! 16 sub-blocks of 16 with an i8 scale (`y = d * sc * (q - 32)`, q of 6 bits). The
//! activations are quantized as for Q8_0 (blocks of 32, exact `Σq`), so one K sub-block of 32
//! meets one activation block: the kernels are those of Q4_1/Q8_0 with the scales of the
//! sub-block. (llama.cpp quantizes activations per 256 for these types; per 32 is finer.)
//!
//! A block of 8 rows holds one super-block of each row, its small scales unpacked to one byte
//! and laid out so that 8 bytes give sub-block `s` of the 8 rows, and the quantized bytes in
//! 4-byte pieces as `packed.rs` lays them out (piece v of row c at 32v + 4c):
//!
//! ```text
//! Q4_K (1184 bytes): d[c] f16 x 8 | dmin[c] f16 x 8 | sc[s][c] u8 8x8 | m[s][c] u8 8x8 | qs 32 pieces
//! Q5_K (1440 bytes): as Q4_K, then qh 8 pieces before qs
//! Q6_K (1680 bytes): d[c] f16 x 8 | sc[s][c] i8 16x8 | ql 32 pieces | qh 16 pieces
//! ```
//!
//! Packing is lossless (16 values of 6 bits fill the 12 scale bytes exactly), so `Packed`
//! gives the GGUF bytes back.

use half::f16;

use super::q8::BlockQ8;

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
pub(crate) const Q6K_QL: usize = 144;
pub(crate) const Q6K_QH: usize = 1168;

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
            Super::Q6K => Q6K_QH + 512,
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
                pieces(&src[0..128], &mut dst[Q6K_QL..]);
                pieces(&src[128..192], &mut dst[Q6K_QH..]);
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
                pieces(&src[Q6K_QL..], &mut dst[0..128]);
                pieces(&src[Q6K_QH..], &mut dst[128..192]);
                for s in 0..16 {
                    dst[192 + s] = src[Q6K_SC + 8 * s + c];
                }
                dst[208..210].copy_from_slice(&src[2 * c..][..2]);
            }
        }
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

/// Q4_K (`Q5 = false`) or Q5_K x Q8_0, portable: 8 columns of `R` rows. Per sub-block `s`
/// (activation block `8 sb + s`) and column: `acc = fma(isum, d sc d_x, acc)`, then
/// `acc = fma(dmin m, -(d_x Σq_x), acc)`; the AVX2 code does the same float work.
pub fn q4k_scalar<const R: usize, const Q5: bool>(
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
) {
    let (gb, qs) = match Q5 {
        false => (Super::Q4K.group_bytes(), Q4K_QS),
        true => (Super::Q5K.group_bytes(), Q5K_QS),
    };
    let mut acc = [[0f32; 8]; R];
    for (sb, g) in w.chunks_exact(gb).enumerate() {
        for c in 0..8 {
            let (d, dmin) = (f16_at(g, 2 * c), f16_at(g, 16 + 2 * c));
            for s in 0..8 {
                let dsc = d * g[SC + 8 * s + c] as f32;
                let dm = dmin * g[MN + 8 * s + c] as f32;
                for r in 0..R {
                    let xb = &x[r][8 * sb + s];
                    let mut isum = 0i32;
                    for i in 0..8 {
                        for j in 0..4 {
                            let byte = g[qs + 32 * (8 * (s / 2) + i) + 4 * c + j];
                            let mut q = if s % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                            if Q5 {
                                q |= ((g[Q5K_QH + 32 * i + 4 * c + j] >> s) & 1) << 4;
                            }
                            isum += q as i32 * xb.qs[4 * i + j] as i32;
                        }
                    }
                    acc[r][c] = (isum as f32).mul_add(dsc * xb.d, acc[r][c]);
                    acc[r][c] = dm.mul_add(-(xb.d * xb.s), acc[r][c]);
                }
            }
        }
    }
    *out = acc;
}

/// Q6_K x Q8_0, portable. Activation block `b` of a super-block is elements 32b..32b+32: low
/// (b % 4 < 2) or high nibbles of ql bytes 64n + 32(b % 2)..+32 with bits 2(b % 4) of qh
/// bytes 32n..+32 (n = b / 4), two sub-blocks of 16 with scales 8n + 2(b % 4) and the next.
/// Per block and column: the exact `Σ sc_i Σ (q - 32) q_x` then `acc = fma(isum, d d_x, acc)`.
pub fn q6k_scalar<const R: usize>(w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
    let gb = Super::Q6K.group_bytes();
    let mut acc = [[0f32; 8]; R];
    for (sb, g) in w.chunks_exact(gb).enumerate() {
        for c in 0..8 {
            let d = f16_at(g, 2 * c);
            for b in 0..8 {
                let (n, bp) = (b / 4, b % 4);
                for r in 0..R {
                    let xb = &x[r][8 * sb + b];
                    let mut isum = 0i32;
                    for half in 0..2 {
                        let sc = g[Q6K_SC + 8 * (8 * n + 2 * bp + half) + c] as i8 as i32;
                        let mut hsum = 0i32;
                        for i in 4 * half..4 * half + 4 {
                            for j in 0..4 {
                                let byte = g[Q6K_QL + 32 * (16 * n + 8 * (bp % 2) + i) + 4 * c + j];
                                let lo = if bp < 2 { byte & 0x0f } else { byte >> 4 };
                                let hb = (g[Q6K_QH + 32 * (8 * n + i) + 4 * c + j] >> (2 * bp)) & 3;
                                let q = (lo | hb << 4) as i32 - 32;
                                hsum += q * xb.qs[4 * i + j] as i32;
                            }
                        }
                        isum += sc * hsum;
                    }
                    acc[r][c] = (isum as f32).mul_add(d * xb.d, acc[r][c]);
                }
            }
        }
    }
    *out = acc;
}
