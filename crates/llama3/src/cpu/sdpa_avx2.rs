//! The AVX2 kernels of `sdpa.rs`: score tiles with one transposed reduction, and the weighted
//! sum over V. They compute exactly what the portable code in
//! `sdpa.rs` computes (the same fma per element and key, `hsum`'s order), bit for bit.

use std::arch::x86_64::*;

use super::Elem;

/// `sdpa::scores` for R query rows against all keys.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores<const R: usize, E: Elem>(
    q: &[f32],
    k: &[E],
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    match R {
        // R rows x KB keys: 8 accumulators (6 for three rows), reduced together.
        1 => scores_tiles::<R, 8, E>(q, k, dh, scale, out),
        2 => scores_tiles::<R, 4, E>(q, k, dh, scale, out),
        _ => scores_tiles::<R, 2, E>(q, k, dh, scale, out),
    }
}

/// `scores` for R rows, KB keys at a time (R * KB <= 8): the R * KB dot products accumulate in
/// their own registers (8 lanes of fma over chunks of 8, as `dot`), then one transposed
/// reduction (`hsum8`) sums all of them at once, each with `hsum`'s association. The keys left
/// over (fewer than KB) go one at a time.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // r, b index the accumulators and the query rows
unsafe fn scores_tiles<const R: usize, const KB: usize, E: Elem>(
    q: &[f32],
    k: &[E],
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    let s = k.len() / dh;
    assert!(R * KB <= 8 && q.len() >= R * dh && out.len() >= R * s && dh.is_multiple_of(8));
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let mut j = 0;
    while j + KB <= s {
        let mut acc = [[_mm256_setzero_ps(); KB]; R];
        for c in (0..dh).step_by(8) {
            let kv: [__m256; KB] = std::array::from_fn(|b| E::load8(kp.add((j + b) * dh + c)));
            for r in 0..R {
                let qv = _mm256_loadu_ps(qp.add(r * dh + c));
                for b in 0..KB {
                    acc[r][b] = _mm256_fmadd_ps(qv, kv[b], acc[r][b]);
                }
            }
        }
        let mut all = [_mm256_setzero_ps(); 8];
        for r in 0..R {
            for b in 0..KB {
                all[r * KB + b] = acc[r][b];
            }
        }
        let mut sums = [0f32; 8];
        _mm256_storeu_ps(
            sums.as_mut_ptr(),
            _mm256_mul_ps(hsum8(all), _mm256_set1_ps(scale)),
        );
        for r in 0..R {
            for b in 0..KB {
                out[r * s + j + b] = sums[HSUM8_LANE[r * KB + b]];
            }
        }
        j += KB;
    }
    while j < s {
        let mut acc = [_mm256_setzero_ps(); R];
        for c in (0..dh).step_by(8) {
            let k0 = E::load8(kp.add(j * dh + c));
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(r * dh + c)), k0, acc[r]);
            }
        }
        for r in 0..R {
            out[r * s + j] = crate::quant::hsum(acc[r]) * scale;
        }
        j += 1;
    }
}

/// Lane of `hsum8`'s result that holds the sum of its input `i`.
const HSUM8_LANE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The 8 horizontal sums of `a[0..8]` in one register (lane `HSUM8_LANE[i]` for `a[i]`),
/// each added in `hsum`'s order: `h = ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))`,
/// with the same operand order at every add, so the bits are `hsum`'s.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8(a: [__m256; 8]) -> __m256 {
    // [hi(a) + lo(a) | hi(b) + lo(b)]: the 4 lanes `s` of each of a and b.
    let halves = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x31>(a, b),
            _mm256_permute2f128_ps::<0x20>(a, b),
        )
    };
    let (v01, v23) = (halves(a[0], a[1]), halves(a[2], a[3]));
    let (v45, v67) = (halves(a[4], a[5]), halves(a[6], a[7]));
    // e = s0 + s2, o = s1 + s3: [e0 o0 e2 o2 | e1 o1 e3 o3], and the same for 4..8.
    let pairs = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    };
    let (w0, w4) = (pairs(v01, v23), pairs(v45, v67));
    // e + o: [h0 h2 h4 h6 | h1 h3 h5 h7].
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(w0, w4),
        _mm256_shuffle_ps::<0b11_01_11_01>(w0, w4),
    )
}

/// Columns `c..c + 8C` of `sdpa::weighted_sum`: one fma per element and key, in key order.
/// (Loading each V row once for the 2-4 rows of a tile, with the columns split so that their
/// accumulators fit in registers, was measured no faster.)
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn weighted_sum<const C: usize, E: Elem>(
    w: &[f32],
    v: &[E],
    dh: usize,
    c: usize,
    out: &mut [f32],
) {
    assert!(v.len() >= w.len() * dh && c + 8 * C <= dh && out.len() >= dh);
    let mut acc = [_mm256_setzero_ps(); C];
    let vp = v.as_ptr().add(c);
    for (j, &wj) in w.iter().enumerate() {
        let wv = _mm256_set1_ps(wj);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wv, E::load8(vp.add(j * dh + 8 * i)), *a);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a);
    }
}

/// `sdpa::weighted_sum` for the R rows of a tile at once, 64 columns at a time with AVX-512:
/// each V row is loaded and widened once for all R rows (`w[r]` the rows' weights, row r
/// seeing `w[r].len()` keys; their own keys past the shortest go alone). One fma per element
/// and key, in key order, as the portable code: the same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn weighted_sum_rows<const R: usize, E: Elem>(
    w: [&[f32]; R],
    v: &[E],
    dh: usize,
    mut out: [&mut [f32]; R],
) {
    let s = w.iter().map(|w| w.len()).max().unwrap_or(0);
    assert!(v.len() >= s * dh && dh.is_multiple_of(64) && out.iter().all(|o| o.len() >= dh));
    let common = w.iter().map(|w| w.len()).min().unwrap_or(0);
    let vp = v.as_ptr();
    for c in (0..dh).step_by(64) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let row = |j: usize| -> [__m512; 4] {
            std::array::from_fn(|i| E::load16(vp.add(j * dh + c + 16 * i)))
        };
        for j in 0..common {
            let vj = row(j);
            for r in 0..R {
                let wv = _mm512_set1_ps(*w[r].get_unchecked(j));
                for i in 0..4 {
                    acc[r][i] = _mm512_fmadd_ps(wv, vj[i], acc[r][i]);
                }
            }
        }
        for (wr, acc) in w.iter().zip(acc.iter_mut()) {
            for (j, &wj) in wr.iter().enumerate().skip(common) {
                let (vj, wv) = (row(j), _mm512_set1_ps(wj));
                for (a, v) in acc.iter_mut().zip(vj) {
                    *a = _mm512_fmadd_ps(wv, v, *a);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            for (i, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(c + 16 * i), *a);
            }
        }
    }
}
