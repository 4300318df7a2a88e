//! Counter-based randomness: values that depend only on (seed, position), so that what a run
//! draws for an item, a micro-batch or a module does not depend on order or on what else ran
//! (evaluation subsets and few-shot draws, LoRA dropout masks).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A generator for one purpose (`stream`) of one item (`index`) under `seed`, so that what is
/// drawn for an item does not depend on the other items or on the order they are visited.
/// The three numbers are mixed with SplitMix64's finalizer.
pub fn rng_for(seed: u64, index: u64, stream: u64) -> StdRng {
    let mut x = seed;
    for v in [index, stream] {
        x = splitmix(x ^ splitmix(v.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    StdRng::seed_from_u64(x)
}

/// SplitMix64's step: a well-mixed 64-bit value for each input (a counter-based generator).
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` samples of N(0, std) by Box-Muller.
pub fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}
