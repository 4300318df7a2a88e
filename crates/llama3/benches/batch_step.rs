//! Timing of one continuous-batching decode step (`Llama::forward_step`) of 16 sequences
//! against a lone one, on the default model. A measurement, not a check (its correctness is
//! `tests/batch_step.rs`):
//!
//!     cargo bench -p llama3 --bench batch_step
//!     STEP_TIMING_N=16 STEP_TIMING_STEPS=200 cargo bench -p llama3 --bench batch_step
//!
//! (the second times one batch size for longer, for a profiler). `cargo test --benches` only
//! builds and starts it; it measures when cargo passes `--bench`.

use llama3::generate::prefill;
use llama3::loader::{load, LoadOptions};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("batch_step: a benchmark; run it with `cargo bench -p llama3 --bench batch_step`");
        return;
    }
    let loaded = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let model = &loaded.model;
    let sizes: Vec<usize> = match std::env::var("STEP_TIMING_N") {
        Ok(v) => v.split(',').map(|n| n.parse().unwrap()).collect(),
        Err(_) => vec![1, 16],
    };
    let steps: u32 = std::env::var("STEP_TIMING_STEPS").map_or(40, |v| v.parse().unwrap());
    for n in sizes {
        let mut caches: Vec<_> = (0..n)
            .map(|i| {
                let mut c = model.new_cache(1, 512).unwrap();
                let p: Vec<u32> = (0..(20 + 7 * i) as u32).map(|t| 100 + t).collect();
                prefill(model, &mut c, &p, 512).unwrap();
                c
            })
            .collect();
        let t = std::time::Instant::now();
        for s in 0..steps {
            let mut refs: Vec<_> = caches.iter_mut().collect();
            let toks: Vec<u32> = (0..n as u32).map(|i| 200 + i + s).collect();
            model.forward_step(&toks, &mut refs).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / steps as f64;
        println!(
            "{n} sequences: {:.1} ms/step, {:.1} tok/s",
            dt * 1e3,
            n as f64 / dt
        );
    }
}
