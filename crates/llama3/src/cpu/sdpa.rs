//! Causal scaled dot-product attention of query rows against one KV head of a cache, on the
//! CPU: the inner loops of the fused decode and prefill paths (`decode.rs`).
//!
//! Row `r` of a call sits at position `first + r / group` and sees the keys up to it (only
//! those are computed: half the work of a masked square); `group` > 1 puts the query heads
//! that share a KV head (GQA) side by side, so they share every K load. Per row: scores `q·k * scale` in f32,
//! softmax with the max subtracted, probabilities optionally rounded to f16 (llama.cpp's f16
//! K/V matmuls do), then `Σ w_j v_j` in key order.
//!
//! Every (row, key) dot and every row's sum is computed with the same arithmetic whatever the
//! tile it falls in, and the portable code does exactly what the AVX2 code does (`mul_add`,
//! the same horizontal-sum order), so a row's result is the same alone or in a prompt, and on
//! either path.

use half::f16;

#[cfg(target_arch = "x86_64")]
#[path = "sdpa_avx2.rs"]
mod avx2;

/// An element of the K/V cache: f32, or f16 (llama.cpp's default cache type).
pub trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// Eight elements from `p` as f32 lanes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen elements from `p` as f32 lanes (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// Query rows per score tile.
const QR: usize = 4;

/// Query rows of one KV head: `q` (R, Dh), row `r` at position `first + r / group` (the
/// `group` query heads that share the KV head sit next to each other, at the same position);
/// `k`, `v` the cache head's rows (S, Dh), at least up to the last row's position; `out`
/// (R, Dh). `dh` must be a multiple of 8. The rows of a tile share every K load.
#[allow(clippy::too_many_arguments)]
pub fn attend<E: Elem>(
    q: &[f32],
    first: usize,
    group: usize,
    k: &[E],
    v: &[E],
    dh: usize,
    round: bool,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let avx512 = cfg!(target_arch = "x86_64")
        && crate::quant::isa::Isa::detected() == crate::quant::isa::Isa::Avx512Vnni;
    let paths = (crate::quant::has_avx2(), avx512);
    attend_on(paths, q, (first, group), (k, v), dh, round, out, scratch)
}

/// `attend` on the paths `(avx2, avx512)` (both false: the portable code).
#[allow(clippy::too_many_arguments)]
fn attend_on<E: Elem>(
    (avx2, avx512): (bool, bool),
    q: &[f32],
    (first, group): (usize, usize),
    (k, v): (&[E], &[E]),
    dh: usize,
    round: bool,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let r = q.len() / dh;
    let group = group.max(1);
    let scale = 1.0 / (dh as f32).sqrt();
    // The keys row `row` sees.
    let len = |row: usize| first + row / group + 1;
    // Tiles of whole groups where they fit, so a tile's rows see the same keys.
    let tile = if group <= QR { QR / group * group } else { QR };
    for r0 in (0..r).step_by(tile) {
        let n = tile.min(r - r0);
        let s = len(r0 + n - 1); // keys of the tile's last row
        if scratch.len() < n * s {
            scratch.resize(n * s, 0.0); // grown, not zeroed each tile: `scores` writes all n * s
        }
        let (qt, kt) = (&q[r0 * dh..(r0 + n) * dh], &k[..s * dh]);
        match n {
            4 => scores::<4, E>(qt, kt, dh, scale, scratch, avx2),
            3 => scores::<3, E>(qt, kt, dh, scale, scratch, avx2),
            2 => scores::<2, E>(qt, kt, dh, scale, scratch, avx2),
            _ => scores::<1, E>(qt, kt, dh, scale, scratch, avx2),
        }
        for i in 0..n {
            softmax(&mut scratch[i * s..][..len(r0 + i)], round);
        }
        let tile_out = &mut out[r0 * dh..(r0 + n) * dh];
        if avx512 && dh.is_multiple_of(64) {
            // SAFETY: AVX-512F detected (the AVX512-VNNI path); the kernel checks the lengths.
            let w = |i: usize| &scratch[i * s..][..len(r0 + i)];
            let mut rows = tile_out.chunks_exact_mut(dh);
            let mut o = || rows.next().unwrap_or_default();
            let v = &v[..s * dh];
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match n {
                    4 => avx2::weighted_sum_rows::<4, E>(
                        [w(0), w(1), w(2), w(3)],
                        v,
                        dh,
                        [o(), o(), o(), o()],
                    ),
                    3 => {
                        avx2::weighted_sum_rows::<3, E>([w(0), w(1), w(2)], v, dh, [o(), o(), o()])
                    }
                    2 => avx2::weighted_sum_rows::<2, E>([w(0), w(1)], v, dh, [o(), o()]),
                    _ => avx2::weighted_sum_rows::<1, E>([w(0)], v, dh, [o()]),
                }
            }
            continue;
        }
        for (i, o) in tile_out.chunks_exact_mut(dh).enumerate() {
            let l = len(r0 + i);
            weighted_sum(&scratch[i * s..][..l], &v[..l * dh], dh, o, avx2);
        }
    }
}

/// `out[r * S + j] = q_r · k_j * scale` for R rows of `q` and all S rows of `k`.
fn scores<const R: usize, E: Elem>(
    q: &[f32],
    k: &[E],
    dh: usize,
    scale: f32,
    out: &mut [f32],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA detected; slices are sized by the caller (R * dh, S * dh, R * S).
        unsafe { avx2::scores::<R, E>(q, k, dh, scale, out) };
        return;
    }
    let _ = avx2;
    let s = k.len() / dh;
    for r in 0..R {
        for j in 0..s {
            out[r * s + j] = dot(&q[r * dh..][..dh], &k[j * dh..][..dh]) * scale;
        }
    }
}

/// What `scores_avx2` computes for one pair: 8 lanes of fma over chunks of 8, summed as
/// `hsum` sums (lanes i and i+4, then 0+2 and 1+3, then the two).
fn dot<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l].to_f32(), acc[l]);
        }
    }
    let s: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    let (e, o) = (s[0] + s[2], s[1] + s[3]);
    e + o
}

/// In place: `p = exp(x - max) / Σ` (the vectorized `exp` of `fused::exp`), rounded to f16 precision when `round`.
fn softmax(p: &mut [f32], round: bool) {
    let max = crate::fused::exp::max(p);
    let sum = crate::fused::exp::exp_sub_sum(p, max);
    for x in p.iter_mut() {
        *x /= sum;
    }
    if round {
        round_f16(p);
    }
}

/// Rounds to the nearest f16 value (ties to even), in place.
pub fn round_f16(x: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        // SAFETY: F16C detected (has_avx2 checks it); chunks of exactly 8.
        unsafe { round_f16_f16c(x) };
        done = x.len() / 8 * 8;
    }
    for v in &mut x[done..] {
        *v = f16::from_f32(*v).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn round_f16_f16c(x: &mut [f32]) {
    use std::arch::x86_64::*;
    for c in x.chunks_exact_mut(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(c.as_ptr()));
        _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
    }
}

/// `out = Σ_j w_j v_j` (in key order, one fma per element and key).
fn weighted_sum<E: Elem>(w: &[f32], v: &[E], dh: usize, out: &mut [f32], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA/F16C detected; the kernel checks the slice lengths.
        unsafe {
            let mut c = 0;
            while c + 64 <= dh {
                avx2::weighted_sum::<8, E>(w, v, dh, c, out);
                c += 64;
            }
            while c + 8 <= dh {
                avx2::weighted_sum::<1, E>(w, v, dh, c, out);
                c += 8;
            }
        }
        return;
    }
    let _ = avx2;
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, &wj) in w.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[j * dh..][..dh]) {
            *o = wj.mul_add(x.to_f32(), *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quant::test_data as data;

    /// Plain f64 causal attention.
    fn reference(q: &[f32], first: usize, k: &[f32], v: &[f32], dh: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for (r, qr) in q.chunks_exact(dh).enumerate() {
            let len = first + r + 1;
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    let d: f64 = (0..dh).map(|i| qr[i] as f64 * k[j * dh + i] as f64).sum();
                    d / (dh as f64).sqrt()
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..dh {
                let o: f64 = (0..len).map(|j| e[j] / sum * v[j * dh + i] as f64).sum();
                out.push(o as f32);
            }
        }
        out
    }

    /// One query row at position `pos` on its own (as a decode step computes it).
    fn alone(q: &[f32], pos: usize, k: &[f32], v: &[f32], dh: usize, round: bool) -> Vec<f32> {
        let mut one = vec![0f32; dh];
        attend(q, pos, 1, k, v, dh, round, &mut one, &mut Vec::new());
        one
    }

    #[test]
    fn matches_f64_attention_and_rows_do_not_depend_on_the_tile() {
        for (dh, r, first) in [(64, 7, 5), (128, 4, 0), (24, 9, 3), (64, 1, 30)] {
            let s = first + r;
            let (q, k, v) = (data(r * dh, 1), data(s * dh, 2), data(s * dh, 3));
            let mut out = vec![0f32; r * dh];
            attend(&q, first, 1, &k, &v, dh, false, &mut out, &mut Vec::new());
            let want = reference(&q, first, &k, &v, dh);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "dh={dh} r={r}: {a} vs {b}");
            }
            // Each row alone (as decode computes it) gives the same bits.
            for i in 0..r {
                let one = alone(&q[i * dh..][..dh], first + i, &k, &v, dh, false);
                assert!(one == out[i * dh..][..dh], "dh={dh} row {i}");
            }
        }
    }

    /// GQA: the query heads of a KV head side by side, `group` rows per position, give
    /// what each row gives alone.
    #[test]
    fn grouped_heads_equal_rows_alone() {
        for (dh, group, positions, first) in [(64, 3, 1, 20), (64, 3, 5, 2), (32, 2, 3, 0)] {
            let r = group * positions;
            let s = first + positions;
            let (q, k, v) = (data(r * dh, 11), data(s * dh, 12), data(s * dh, 13));
            let mut out = vec![0f32; r * dh];
            attend(
                &q,
                first,
                group,
                &k,
                &v,
                dh,
                true,
                &mut out,
                &mut Vec::new(),
            );
            for i in 0..r {
                let one = alone(&q[i * dh..][..dh], first + i / group, &k, &v, dh, true);
                assert!(one == out[i * dh..][..dh], "group {group}: row {i}");
            }
        }
    }

    #[test]
    fn f16_rounding_matches_half() {
        let mut x = data(37, 9);
        x.extend([
            65519.0,
            65520.0,
            1e-8,
            -0.0,
            2.0f32.powi(-24) * 1.5,
            f32::INFINITY,
        ]);
        let want: Vec<f32> = x.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        round_f16(&mut x);
        assert_eq!(
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn portable_code_gives_the_same_bits() {
        let (dh, s) = (72, 11);
        let (q, k, v) = (data(4 * dh, 4), data(s * dh, 5), data(s * dh, 6));
        let mut a = vec![0f32; 4 * s];
        let mut b = vec![0f32; 4 * s];
        scores::<4, f32>(&q, &k, dh, 0.3, &mut a, crate::quant::has_avx2());
        scores::<4, f32>(&q, &k, dh, 0.3, &mut b, false);
        assert_eq!(a, b);
        // Every tile shape (R rows x 8 / R keys, then the keys left over), f32 and f16 keys.
        let kh: Vec<f16> = k.iter().map(|&v| f16::from_f32(v)).collect();
        for n in 1..=s {
            fn both<const R: usize, E: Elem>(q: &[f32], k: &[E], dh: usize) {
                let s = k.len() / dh;
                let (mut a, mut b) = (vec![0f32; R * s], vec![0f32; R * s]);
                scores::<R, E>(q, k, dh, 0.7, &mut a, crate::quant::has_avx2());
                scores::<R, E>(q, k, dh, 0.7, &mut b, false);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "R={R} s={s}");
            }
            let (kf, k16) = (&k[..n * dh], &kh[..n * dh]);
            both::<1, f32>(&q, kf, dh);
            both::<2, f32>(&q, kf, dh);
            both::<3, f32>(&q, kf, dh);
            both::<4, f32>(&q, kf, dh);
            both::<1, f16>(&q, k16, dh);
            both::<3, f16>(&q, k16, dh);
        }
        // The weighted sum, f32 and f16 V (dh = 72: a chunk of 64 columns, then one of 8).
        let vh: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let w = data(s, 7);
        let (mut a, mut b) = (vec![0f32; dh], vec![0f32; dh]);
        weighted_sum(&w, &v, dh, &mut a, crate::quant::has_avx2());
        weighted_sum(&w, &v, dh, &mut b, false);
        assert_eq!(a, b);
        weighted_sum(&w, &vh, dh, &mut a, crate::quant::has_avx2());
        weighted_sum(&w, &vh, dh, &mut b, false);
        assert_eq!(a, b);
    }

    /// K and V of `len` values rounded to f16 precision, as f32 and as f16.
    fn rounded_cache(len: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f16>, Vec<f16>) {
        let (mut k, mut v) = (data(len, seed), data(len, seed + 1));
        round_f16(&mut k);
        round_f16(&mut v);
        let h = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        let (kh, vh) = (h(&k), h(&v));
        (k, v, kh, vh)
    }

    /// Whole calls (score tiles, softmax, the weighted sums of a tile's rows at once with
    /// AVX-512) give the portable code's bits: GQA groups, f32 and f16 caches, rows of
    /// several lengths in a tile.
    #[test]
    fn attend_gives_the_portable_bits() {
        for (dh, group, r, first) in [(64, 1, 7, 5), (128, 2, 10, 3), (64, 4, 9, 0), (72, 1, 5, 2)]
        {
            let s = first + r / group + 1;
            let q = data(r * dh, 11);
            let (k, v, kh, vh) = rounded_cache(s * dh, 12);
            let paths = (
                crate::quant::has_avx2(),
                cfg!(target_arch = "x86_64")
                    && crate::quant::isa::Isa::available()
                        .contains(&crate::quant::isa::Isa::Avx512Vnni),
            );
            if !paths.1 {
                llama3_testutil::skip("attend_gives_the_portable_bits", "no AVX-512 here");
            }
            fn run<E: Elem>(
                p: (bool, bool),
                q: &[f32],
                at: (usize, usize),
                kv: (&[E], &[E]),
                dh: usize,
            ) -> Vec<u32> {
                let mut o = vec![0f32; q.len()];
                attend_on(p, q, at, kv, dh, true, &mut o, &mut Vec::new());
                o.iter().map(|v| v.to_bits()).collect()
            }
            let at = (first, group);
            let (kh, vh) = ((&kh[..], &vh[..]), (&k[..], &v[..]));
            assert_eq!(
                run(paths, &q, at, kh, dh),
                run((false, false), &q, at, kh, dh),
                "dh={dh}"
            );
            assert_eq!(
                run(paths, &q, at, vh, dh),
                run((false, false), &q, at, vh, dh),
                "f32 dh={dh}"
            );
        }
    }

    /// An f16 cache gives what an f32 cache holding the same (rounded) values gives.
    #[test]
    fn f16_cache_reads_as_its_f32_values() {
        let (dh, r, first) = (64, 6, 9);
        let s = first + r;
        let q = data(r * dh, 8);
        let (k, v, kh, vh) = rounded_cache(s * dh, 9);
        let (mut a, mut b) = (vec![0f32; r * dh], vec![0f32; r * dh]);
        attend(&q, first, 1, &k, &v, dh, true, &mut a, &mut Vec::new());
        attend(&q, first, 1, &kh, &vh, dh, true, &mut b, &mut Vec::new());
        assert_eq!(a, b);
    }
}
