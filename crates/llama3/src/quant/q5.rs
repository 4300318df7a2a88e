//! Q5_0 and Q5_1 weights (ggml-cpu `ggml_vec_dot_q5_0_q8_0` / `ggml_vec_dot_q5_1_q8_1`).
//!
//! Q5_0 block (22 bytes): f16 `d`, u32 `qh`, 16 bytes of nibbles; Q5_1 (24 bytes) has f16 `m`
//! after `d`. Element `j < 16` is the low nibble of byte `j` with bit `j` of `qh` as its fifth
//! bit, element `j + 16` the high nibble with bit `j + 16`. Value: Q5_0 `d * (q - 16)`
//! (Q8_0 activations), Q5_1 `d * q + m` (Q8_1 activations).
//!
//! Only the portable row dots live here: weights with rows a multiple of 8 (all of a Llama's)
//! run through the packed kernels (`x8_q5.rs`); these take the other shapes.

use half::f16;

use super::q8::BlockQ8;

/// Bytes per Q5_0 block of 32 weights.
pub const BYTES_0: usize = 22;
/// Bytes per Q5_1 block.
pub const BYTES_1: usize = 24;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 32 unsigned 5-bit values of a block's `qh` (4 bytes) and nibbles (16 bytes).
fn values(qh: &[u8], qs: &[u8]) -> [i32; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|e| {
        let (byte, j) = (qs[e % 16], e % 16);
        let nib = if e < 16 { byte & 0x0f } else { byte >> 4 };
        nib as i32 | (((qh >> (j + 16 * (e / 16))) & 1) << 4) as i32
    })
}

/// Appends the f32 values of Q5_0 (`min` false) or Q5_1 blocks to `out`.
pub fn dequantize(w: &[u8], min: bool, out: &mut Vec<f32>) {
    let (h, bytes) = if min { (4, BYTES_1) } else { (2, BYTES_0) };
    for wb in w.chunks_exact(bytes) {
        let d = f16_at(wb, 0);
        let q = values(&wb[h..h + 4], &wb[h + 4..]);
        if min {
            let m = f16_at(wb, 2);
            out.extend(q.iter().map(|&q| d * q as f32 + m));
        } else {
            out.extend(q.iter().map(|&q| d * (q - 16) as f32));
        }
    }
}

/// ggml `ggml_vec_dot_q5_0_q8_0_generic` (`min` false) / `ggml_vec_dot_q5_1_q8_1_generic`.
pub fn dot_scalar(w: &[u8], x: &[BlockQ8], min: bool) -> f32 {
    let (h, bytes) = if min { (4, BYTES_1) } else { (2, BYTES_0) };
    let offset = if min { 0 } else { 16 };
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(bytes).zip(x) {
        let d = f16_at(wb, 0);
        let q = values(&wb[h..h + 4], &wb[h + 4..]);
        let sumi: i32 = q
            .iter()
            .zip(xb.qs)
            .map(|(&q, y)| (q - offset) * y as i32)
            .sum();
        sum += sumi as f32 * (d * xb.d);
        if min {
            sum += f16_at(wb, 2) * xb.s;
        }
    }
    sum
}
