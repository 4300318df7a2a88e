//! What the integration tests of every crate share: where the reference data and the default
//! model are, reading goldens, comparing numbers, running the `llama3` binary ([`cli`]) and
//! reporting a test that cannot run ([`skip`]). A dev-dependency only (`publish = false`).
//!
//! Reference data lives in `../shared` beside the checkout (`LLAMA3_SHARED` overrides it); the
//! default model and tokenizer files in `$LLAMA3_HOME` (default `~/.cache/llama3`), fetched by
//! `scripts/test.sh` or on first use.

pub mod cli;
pub mod skip;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

pub use cli::{assert_one_line_error, json_of, ok, run};
pub use skip::{skip, skip_or_fail_on_ci};

/// `../shared` beside the checkout (override with `LLAMA3_SHARED`); fails, saying where it
/// looked, when the goldens are not there.
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

/// Llama 2's 32000-token SentencePiece vocabulary (llama.cpp's vocab-only GGUF): the
/// tokenizer of the tiny training runs in the tests.
pub fn llama_spm_vocab() -> String {
    let p = shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf");
    p.to_string_lossy().into_owned()
}

/// The first `n` State of the Union addresses (1790 on) copied into `dir/data`, as a training
/// data path.
pub fn sotu_corpus(dir: &Path, n: usize) -> String {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("create the data folder");
    for name in [
        "1790_george_washington_n.txt",
        "1791_george_washington_n.txt",
        "1792_george_washington_n.txt",
    ]
    .iter()
    .take(n)
    {
        let src = shared().join("data/sotu/data").join(name);
        std::fs::copy(&src, data.join(name)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    data.to_string_lossy().into_owned()
}

/// Waits (up to 10 minutes) until the training run in `run` has a checkpoint of step `step`
/// or later, failing if `child` (the run) ends first: where a test kills or stops a run.
pub fn wait_for_checkpoint(run: &Path, step: usize, child: &mut std::process::Child) {
    let latest = run.join("checkpoints/latest");
    let want = format!("step-{step:08}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while std::fs::read_to_string(&latest).unwrap_or_default().trim() < want.as_str() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        let ended = child.try_wait().expect("wait for the run");
        assert!(
            ended.is_none(),
            "the run ended before step {step}: {ended:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A file or folder under `shared()/golden`.
pub fn golden(rel: &str) -> PathBuf {
    shared().join("golden").join(rel)
}

/// `$LLAMA3_HOME`, else `~/.cache/llama3`: the model and tokenizer cache.
pub fn llama3_home() -> PathBuf {
    llama3::hub::home().expect("LLAMA3_HOME or HOME")
}

/// The default model, fetched on first use as the CLI does.
pub fn default_model() -> PathBuf {
    llama3::hub::ensure_default_model(|m| eprintln!("{m}")).expect("default model")
}

/// Reads a safetensors file into name -> tensor (on the CPU).
pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Json {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The prompts of `golden/llamacpp/golden.json` (llama.cpp's tokens, logits and greedy steps
/// on the default model).
pub fn llamacpp_prompts() -> Vec<Json> {
    let g = read_json(&golden("llamacpp/golden.json"));
    g["prompts"].as_array().expect("prompts").clone()
}

/// A JSON array of token ids.
pub fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The metadata and tensor table of a GGUF file.
pub fn gguf_header(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tensor of any float type, flattened, as f32 (on the CPU).
pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1())
        .unwrap()
}

/// The largest |x|.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The largest |a - b|, element by element (the lengths must agree). A NaN on one side only
/// counts as an infinite difference (`f32::max` alone would drop it and let NaNs pass).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) if x == y => 0.0, // equal infinities too
            (false, false) => (x - y).abs(),
            _ => f32::INFINITY,
        })
        .fold(0.0, f32::max)
}

/// `max_abs_diff(a, b)` relative to the largest |b|.
pub fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / max_abs(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_sees_nans_and_infinities() {
        assert_eq!(max_abs_diff(&[1.0, -2.0], &[1.5, -2.0]), 0.5);
        assert_eq!(max_abs_diff(&[f32::NAN, 1.0], &[f32::NAN, 1.0]), 0.0);
        assert_eq!(max_abs_diff(&[f32::NAN, 1.0], &[0.0, 1.0]), f32::INFINITY);
        assert_eq!(max_abs_diff(&[0.0], &[f32::NAN]), f32::INFINITY);
        assert_eq!(max_abs_diff(&[f32::INFINITY], &[f32::INFINITY]), 0.0);
        assert_eq!(max_abs_diff(&[f32::INFINITY], &[1.0]), f32::INFINITY);
        assert_eq!(max_rel(&[1.0, 4.0], &[2.0, 4.0]), 0.25);
    }

    #[test]
    fn ids_and_to_vec() {
        assert_eq!(ids(&serde_json::json!([1, 2, 128000])), [1, 2, 128000]);
        let t = Tensor::new(&[[1.5f32, -2.0], [3.0, 0.25]], &Device::Cpu).unwrap();
        let bf = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(to_vec(&t), [1.5, -2.0, 3.0, 0.25]);
        assert_eq!(to_vec(&bf), [1.5, -2.0, 3.0, 0.25]);
    }
}
