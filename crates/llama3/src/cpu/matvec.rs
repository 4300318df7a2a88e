//! Dense f32 weights times a few activation rows on the CPU (decoding, speculative verifies):
//! `y (m, n) = x (m, k) · w (n, k)ᵀ` for m up to [`MAX_ROWS`], the weight read once per call
//! by all threads together (tiles of 4 weight rows across rayon), each weight vector loaded
//! once for every activation row. Decoding is a pass over the weights; candle's gemm, made
//! for large products, read them at about half the memory bandwidth on a 2-core Xeon.
//!
//! Every output element is one dot product in a fixed order (16- or 8-float lanes over k,
//! then the lanes summed pairwise, then the tail), whatever m and the tiling: a row of a
//! verify forward equals the row decoded alone, bit for bit.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::quant::isa::Isa;

/// Most activation rows this path takes; more go to gemm (compute-bound there).
pub const MAX_ROWS: usize = 16;

/// Weight rows per task: a few per thread's turn, few enough tasks to spread evenly.
const TILE: usize = 32;

/// `out (m x n) = x (m x k) · w (n x k)ᵀ`, row-major slices.
pub fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n && k > 0);
    let dot = Dot::detected();
    // (n, m): weight row j's m results together, so tasks own disjoint chunks; one row of x
    // needs no transposing back.
    let mut by_col = vec![0f32; if m == 1 { 0 } else { n * m }];
    let target = if m == 1 { &mut *out } else { &mut by_col[..] };
    target
        .par_chunks_mut(TILE * m)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (jj, res) in chunk.chunks_exact_mut(m).enumerate() {
                let j = t * TILE + jj;
                let wj = &w[j * k..(j + 1) * k];
                for (r, y) in res.iter_mut().enumerate() {
                    *y = dot.dot(&x[r * k..(r + 1) * k], wj);
                }
            }
        });
    if m > 1 {
        for j in 0..n {
            for r in 0..m {
                out[r * n + j] = by_col[j * m + r];
            }
        }
    }
}

/// The dot product of this CPU's path.
#[derive(Clone, Copy)]
enum Dot {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Dot {
    /// The path of the packed kernels (`quant::isa`: detected once, `LLAMA3_ISA` honored);
    /// AVX512-VNNI implies AVX-512F.
    fn detected() -> Self {
        match Isa::detected() {
            Isa::Portable => Dot::Portable,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => Dot::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Dot::Avx512,
            #[allow(unreachable_patterns)]
            _ => Dot::Portable,
        }
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Dot::Portable => dot_portable(a, b),
            // SAFETY: the instruction sets were detected; the functions read within the slices.
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { dot_avx2(a, b) },
            #[cfg(target_arch = "x86_64")]
            Dot::Avx512 => unsafe { dot_avx512(a, b) },
        }
    }
}

/// 8 lanes over k (two interleaved accumulators of 8 for AVX2's order), pairwise sum, tail.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let body = n / 8 * 8;
    for (ca, cb) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let mut s = pairwise8(acc);
    for i in body..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

fn pairwise8(v: [f32; 8]) -> f32 {
    let q = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < body {
        acc = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            acc,
        );
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s = pairwise8(lanes);
    for j in body..n {
        s = a[j].mul_add(b[j], s);
    }
    s
}

/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 16 * 16;
    // Four independent chains over 64-float strides (FMA latency), added in a fixed order.
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut accs = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= body {
        for (c, acc) in accs.iter_mut().enumerate() {
            let o = i + 16 * c;
            *acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *acc);
        }
        i += 64;
    }
    while i < body {
        accs[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i)),
            _mm512_loadu_ps(pb.add(i)),
            accs[0],
        );
        i += 16;
    }
    let acc = _mm512_add_ps(
        _mm512_add_ps(accs[0], accs[1]),
        _mm512_add_ps(accs[2], accs[3]),
    );
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut half = [0f32; 8];
    for l in 0..8 {
        half[l] = lanes[l] + lanes[l + 8];
    }
    let mut s = pairwise8(half);
    for j in body..n {
        s = a[j].mul_add(b[j], s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    /// Products within f32 rounding of an f64 reference, and every row equal to that row
    /// computed alone (m = 1), bit for bit, at odd sizes.
    #[test]
    fn rows_equal_the_row_alone_and_the_reference() {
        for (m, k, n) in [(1, 576, 7), (3, 100, 9), (16, 1537, 13), (9, 15, 1)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let mut y = vec![0f32; m * n];
            matmul(&x, &w, m, k, n, &mut y);
            let want = reference(&x, &w, m, k, n);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{a} vs {b}"
                );
            }
            for r in 0..m {
                let mut alone = vec![0f32; n];
                matmul(&x[r * k..(r + 1) * k], &w, 1, k, n, &mut alone);
                assert_eq!(alone, y[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }
}
