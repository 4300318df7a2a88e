//! Paths to the shared reference data and small comparison helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

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

/// Reads a safetensors file into name -> tensor.
pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
