//! `llama3 train --teacher` (issue 21's distillation): with `--kd-alpha 0` the run is the plain
//! run, step for step; with a teacher it trains and logs the distillation loss; a teacher of
//! another vocabulary or a bad weight is a one-line error before any work.

use std::path::Path;
use std::process::Command;

use llama3_testutil::{assert_one_line_error, default_model, ok, shared};

fn train(data: &str, out: &Path, extra: &[&str]) -> Command {
    let tok = shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf");
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args([
        "train",
        "--data_path",
        data,
        "--init",
        "tiny",
        "--tokenizer",
    ])
    .arg(tok)
    .args(["--seq-len", "32", "--batch-size", "4", "--max-steps", "10"])
    .args(["--save-every", "0", "--eval-every", "5", "--warmup", "3"])
    .args(["--learning-rate", "3e-3", "--model_path"])
    .arg(out)
    .args(extra);
    c
}

fn losses(run: &Path, kind: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn distillation_trains_and_alpha_zero_is_the_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = shared().join("data/sotu/data/1790_george_washington_n.txt");
    let data = text.to_str().unwrap();
    let teacher = dir.path().join("teacher");
    ok(&train(data, &teacher, &[]).output().unwrap());
    let t = teacher.to_str().unwrap();
    let (plain, zero, kd) = (
        dir.path().join("plain"),
        dir.path().join("zero"),
        dir.path().join("kd"),
    );
    ok(&train(data, &plain, &["--seed", "7"]).output().unwrap());
    ok(&train(
        data,
        &zero,
        &["--seed", "7", "--teacher", t, "--kd-alpha", "0"],
    )
    .output()
    .unwrap());
    let (a, b) = (losses(&plain, "train"), losses(&zero, "train"));
    assert_eq!(a.len(), 10);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{a:?} vs {b:?}");
    }
    let args = [
        "--seed",
        "7",
        "--teacher",
        t,
        "--kd-alpha",
        "0.5",
        "--kd-temperature",
        "2",
    ];
    ok(&train(data, &kd, &args).output().unwrap());
    let k = losses(&kd, "train");
    assert_eq!(k.len(), 10);
    assert!(k.iter().all(|l| l.is_finite()));
    // The logged loss is the distillation loss: half the cross-entropy plus the KL term.
    assert!((k[0] - a[0]).abs() > 0.1, "{k:?} vs {a:?}");
    // Held-out evaluation stays the cross-entropy.
    assert_eq!(losses(&kd, "eval").len(), 3);
}

#[test]
fn bad_teachers_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = shared().join("data/sotu/data/1790_george_washington_n.txt");
    let data = text.to_str().unwrap();
    let other = default_model(); // 49152 tokens against the student's 32000
    let out = dir.path().join("o");
    let o = train(data, &out, &["--teacher", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&o, "is not the student's (32000)");
    assert!(!out.join("train_config.json").exists());
    let o = train(
        data,
        &out,
        &["--teacher", other.to_str().unwrap(), "--kd-alpha", "2"],
    )
    .output()
    .unwrap();
    assert_one_line_error(&o, "--kd-alpha 2 must be in [0, 1]");
}
