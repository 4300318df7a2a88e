//! `exp` over slices, vectorized: the softmaxes of the loss (N x V values a step) and of
//! attention, and the MLP's SiLU, spend most of their time in `expf`, which glibc computes
//! one value at a time.
//! The polynomial is Cephes `expf`'s (relative error ~1e-7), written without branches so the
//! loop compiles to AVX2 where the CPU has it.

/// `e^x` for `x <= 0`; below -87 the result is ~1e-38 instead of a denormal or 0.
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    let x = x.max(-87.0);
    // n = round(x / ln 2): adding 1.5 * 2^23 leaves n in the low mantissa bits.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    // r = x - n ln 2, with ln 2 split in two for precision.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the exponent bits (n >= -126 here).
    let ni = t.to_bits() as i32 - 0x4B40_0000;
    e * f32::from_bits(((ni + 127) << 23) as u32)
}

/// Blocks of 512 are summed in 8 f32 lanes, the blocks' sums in f64 (a long row summed
/// in f32 alone drops the small tail values once the sum is large).
#[inline(always)]
fn exp_sub_sum_portable(xs: &mut [f32], shift: f32) -> f32 {
    let mut total = 0f64;
    for block in xs.chunks_mut(512) {
        let mut acc = [0f32; 8];
        let mut chunks = block.chunks_exact_mut(8);
        for c in &mut chunks {
            for (x, a) in c.iter_mut().zip(acc.iter_mut()) {
                *x = exp_nonpos(*x - shift);
                *a += *x;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp_nonpos(*x - shift);
            sum += *x;
        }
        total += sum as f64;
    }
    total as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(xs: &mut [f32], shift: f32) -> f32 {
    exp_sub_sum_portable(xs, shift)
}

/// In place `x = exp(x - shift)` for values `x <= shift`; returns their sum.
pub fn exp_sub_sum(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { exp_sub_sum_avx2(xs, shift) };
    }
    exp_sub_sum_portable(xs, shift)
}

/// `max(xs)` in 8 lanes (`x > m` keeps `m` for NaN, as `f32::max` ignores it; -inf for none):
/// a compare and select per value that compiles to `maxps`, where `f32::max`'s NaN rules keep
/// a fold scalar.
#[inline(always)]
fn max_portable(xs: &[f32]) -> f32 {
    let pick = |m: f32, x: f32| if x > m { x } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = pick(*a, x);
        }
    }
    let m = acc.into_iter().fold(f32::NEG_INFINITY, pick);
    chunks.remainder().iter().fold(m, |m, &x| pick(m, x))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_avx2(xs: &[f32]) -> f32 {
    max_portable(xs)
}

/// The largest value of `xs` (NaN ignored; -inf when empty): a softmax's shift.
pub fn max(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { max_avx2(xs) };
    }
    max_portable(xs)
}

/// `s = 1 / (1 + e^-x)`, from `e^-|x|` so that no exponent overflows.
#[inline(always)]
fn sigmoid_portable(x: &[f32], s: &mut [f32]) {
    for (s, &x) in s.iter_mut().zip(x) {
        let e = exp_nonpos(-x.abs());
        let num = if x >= 0.0 { 1.0 } else { e };
        *s = num / (1.0 + e);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_avx2(x: &[f32], s: &mut [f32]) {
    sigmoid_portable(x, s)
}

/// `s[i] = sigmoid(x[i])` (relative error ~2e-7), vectorized like [`exp_sub_sum`].
pub fn sigmoid(x: &[f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { sigmoid_avx2(x, s) };
    }
    sigmoid_portable(x, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_is_the_fold_and_ignores_nan() {
        let mut x = crate::quant::test_data(1000, 3);
        for n in [0, 1, 7, 8, 9, 63, 1000] {
            let want = x[..n].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(&x[..n]).to_bits(), want.to_bits(), "n = {n}");
        }
        x[17] = 1e6;
        x[3] = f32::NAN;
        x[999] = f32::NAN;
        assert_eq!(max(&x), 1e6);
        assert_eq!(max(&[f32::NAN, -3.0]), -3.0);
        assert_eq!(max(&[f32::NAN; 9]), f32::NEG_INFINITY);
    }

    #[test]
    fn close_to_f64_exp_over_the_range() {
        let xs2: Vec<f32> = (0..200_001)
            .map(|i| 1.0 - 87.0 * i as f32 / 200_000.0)
            .collect();
        // The reference at the f32 value the function sees, x - shift.
        let want: Vec<f64> = xs2.iter().map(|&x| ((x - 1.0) as f64).exp()).collect();
        let want_sum: f64 = want.iter().sum();
        let mut xs = xs2.clone();
        let sum = exp_sub_sum(&mut xs, 1.0);
        for (i, (&got, &w)) in xs.iter().zip(&want).enumerate() {
            let rel = ((got as f64 - w) / w).abs();
            assert!(rel < 2e-7, "x = {}: {got} vs {w} ({rel:e})", xs2[i] - 1.0);
        }
        assert!(
            ((sum as f64 - want_sum) / want_sum).abs() < 1e-6,
            "{sum} vs {want_sum}"
        );
        let mut short = [0.0f32, -1.0, -2.0];
        let s = exp_sub_sum(&mut short, 0.0);
        assert!(
            (short[1] - (-1f32).exp()).abs() < 1e-7 && (s - short.iter().sum::<f32>()).abs() < 1e-7
        );
        // The portable path gives the same values.
        let mut a = xs2.clone();
        let mut b = xs2;
        exp_sub_sum(&mut a, 1.0);
        exp_sub_sum_portable(&mut b, 1.0);
        assert!(a.iter().zip(&b).all(|(x, y)| ((x - y) / y).abs() < 1e-6));
    }

    #[test]
    fn sigmoid_close_to_f64_everywhere() {
        let xs: Vec<f32> = (0..200_001).map(|i| -100.0 + i as f32 / 1000.0).collect();
        let mut got = vec![0f32; xs.len()];
        sigmoid(&xs, &mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let err = (g as f64 - want).abs();
            // Relative near 0 (x < -87 is clamped, an absolute error below 2e-38).
            assert!(err <= 3e-7 * want + 2e-38, "x = {x}: {g} vs {want}");
        }
    }
}
