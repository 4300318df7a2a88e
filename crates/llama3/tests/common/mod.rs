//! Paths to reference data shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout (override with `LLAMA3_SHARED`).
pub fn shared() -> PathBuf {
    let p = match std::env::var_os("LLAMA3_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(
        p.join("golden").is_dir(),
        "reference data not found at {} (set LLAMA3_SHARED)",
        p.display()
    );
    p
}

pub fn golden(rel: &str) -> PathBuf {
    shared().join("golden").join(rel)
}

/// The default model, fetched on first use like the CLI does.
pub fn default_model() -> PathBuf {
    llama3::hub::ensure_default_model(|m| eprintln!("{m}")).expect("default model")
}

/// Reads a safetensors file into name -> tensor.
pub fn tensors(path: &std::path::Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
