//! `llama3 train --replay-data PATH --replay-ratio R`: the replayed rows join every batch (the
//! tokens per step say how many), the replayed data's held-out loss is logged at each
//! evaluation, ratio 0 trains exactly as a run without replay (the same batches) while still
//! scoring the earlier data, and bad values are one-line errors.

use std::path::Path;
use std::process::Command;

use llama3_testutil::{assert_one_line_error, llama_spm_vocab, ok, shared};

fn train(run: &Path, extra: &[&str]) -> std::process::Output {
    let new = shared().join("data/sotu/data/1790_george_washington_n.txt");
    Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args([
            "train",
            "--init",
            "tiny",
            "--tokenizer",
            &llama_spm_vocab(),
            "--data_path",
        ])
        .arg(new)
        .args([
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--max-steps",
            "6",
            "--eval-every",
            "3",
        ])
        .args([
            "--eval-batches",
            "2",
            "--warmup",
            "1",
            "-t",
            "2",
            "--model_path",
        ])
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn replay_mixes_rows_in_and_scores_the_earlier_data() {
    let tmp = tempfile::tempdir().unwrap();
    let old = shared().join("data/sotu/data/1791_george_washington_n.txt");
    let old = old.to_str().unwrap();
    let plain = tmp.path().join("plain");
    ok(&train(&plain, &[]));
    let zero = tmp.path().join("zero");
    ok(&train(
        &zero,
        &["--replay-data", old, "--replay-ratio", "0"],
    ));
    let half = tmp.path().join("half");
    let out = train(&half, &["--replay-data", old, "--replay-ratio", "0.5"]);
    ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("replay loss"), "{said}");

    // Ratio 0: the same steps as without replay, the earlier data scored beside.
    let losses = |run: &Path| -> Vec<f64> {
        records(run, "train")
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&plain), losses(&zero));
    assert!(records(&plain, "eval")
        .iter()
        .all(|e| e.get("replay_loss").is_none()));
    let scored = records(&zero, "eval");
    assert_eq!(scored.len(), 3);
    assert!(scored
        .iter()
        .all(|e| e["replay_loss"].as_f64().is_some_and(f64::is_finite)));

    // Ratio 0.5 with 2 rows a batch: 2 replay rows more in each (4 x 32 tokens a step).
    let tokens: Vec<u64> = records(&half, "train")
        .iter()
        .map(|r| r["tokens"].as_u64().unwrap())
        .collect();
    assert!(tokens.iter().all(|&t| t == 128), "{tokens:?}");
    assert_ne!(losses(&half), losses(&plain));
    let (a, b) = (records(&zero, "eval"), records(&half, "eval"));
    assert_eq!(
        a[0]["replay_loss"], b[0]["replay_loss"],
        "the same held-out part of it"
    );
}

#[test]
fn bad_replay_settings_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let old = shared().join("data/sotu/data/1791_george_washington_n.txt");
    let old = old.to_str().unwrap();
    assert_one_line_error(
        &train(
            &tmp.path().join("a"),
            &["--replay-data", old, "--replay-ratio", "1"],
        ),
        "--replay-ratio 1 must be in [0, 1)",
    );
    assert_one_line_error(
        &train(&tmp.path().join("b"), &["--replay-data", "/no/such/replay"]),
        "/no/such/replay",
    );
}
