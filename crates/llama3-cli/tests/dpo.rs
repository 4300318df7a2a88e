//! `llama3 train --dpo` (and `--method dpo`) on preference pairs: a short LoRA DPO run on the
//! default model raises the reward accuracy and margin on held-out pairs of other movies, and
//! bad input is a one-line error before any work.

use std::path::Path;
use std::process::Command;

use llama3_testutil::{assert_one_line_error, default_model, ok, shared};

fn llama3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llama3"))
}

/// Preference pairs from the Rotten Tomatoes reviews (`scripts/make_pref_pairs.py`).
fn pairs(dir: &Path, train: usize, valid: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_pref_pairs.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args([
            "--train",
            &train.to_string(),
            "--valid",
            &valid.to_string(),
            "--shared",
        ])
        .arg(shared())
        .output()
        .expect("python3 runs scripts/make_pref_pairs.py");
    ok(&out);
}

fn dpo(data: &Path, run: &Path, extra: &[&str]) -> std::process::Output {
    llama3()
        .args(["finetune", "--init"])
        .arg(default_model())
        .arg("--data_path")
        .arg(data.join("train.jsonl"))
        .arg("--valid_data_path")
        .arg(data.join("valid.jsonl"))
        .args([
            "--batch-size",
            "4",
            "--seq-len",
            "96",
            "--warmup",
            "1",
            "-t",
            "2",
        ])
        .arg("--model_path")
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn lora_dpo_raises_heldout_reward_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs");
    pairs(&data, 24, 8);
    let run = tmp.path().join("run");
    let args = [
        "--method",
        "lora",
        "--dpo",
        "--max-steps",
        "6",
        "--eval-every",
        "6",
        "--eval-batches",
        "2",
        "--learning-rate",
        "1e-3",
        "--beta",
        "0.1",
    ];
    let out = dpo(&data, &run, &args);
    ok(&out);
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "eval")
        .collect();
    let (first, last) = (&evals[0], evals.last().unwrap());
    // At step 0 the policy is the reference: every reward is 0, the loss ln 2.
    assert!(
        (first["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-4,
        "{first}"
    );
    assert_eq!(first["rewards"]["accuracy"].as_f64(), Some(0.0));
    let (acc, margin) = (
        last["rewards"]["accuracy"].as_f64().unwrap(),
        last["rewards"]["margin"].as_f64().unwrap(),
    );
    eprintln!("held-out after 6 steps: reward accuracy {acc:.3}, margin {margin:.4}, {last}");
    assert!(
        acc > 0.5 && margin > 0.0,
        "held-out rewards did not rise: {last}"
    );
    assert!(last["loss"].as_f64().unwrap() < 2f64.ln());
    // The train records carry the rewards too; the adapter is a PEFT LoRA.
    let train = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(train
        .lines()
        .any(|l| l.contains("\"kind\":\"train\"") && l.contains("margin")));
    assert!(run.join("adapter_config.json").exists());
}

#[test]
fn bad_preference_data_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs");
    pairs(&data, 4, 2);
    // A line without "rejected".
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let first = std::fs::read_to_string(data.join("train.jsonl")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("rejected");
    let lines = format!("{}\n{v}\n", first.lines().nth(1).unwrap());
    std::fs::write(bad.join("train.jsonl"), lines).unwrap();
    std::fs::copy(data.join("valid.jsonl"), bad.join("valid.jsonl")).unwrap();
    let run = |name: &str| tmp.path().join(name);
    assert_one_line_error(
        &dpo(&bad, &run("a"), &["--method", "dpo"]),
        "line 2: a preference pair needs \"prompt\", \"chosen\" and \"rejected\"; no \"rejected\"",
    );
    // Pairs without --dpo, --dpo on plain text, a bad beta.
    assert_one_line_error(&dpo(&data, &run("b"), &[]), "train on them with --dpo");
    let text = tmp.path().join("text");
    std::fs::create_dir_all(&text).unwrap();
    for f in ["train.jsonl", "valid.jsonl"] {
        std::fs::write(text.join(f), "{\"text\": \"plain text\"}\n").unwrap();
    }
    assert_one_line_error(
        &dpo(&text, &run("c"), &["--dpo"]),
        "--dpo trains on JSONL preference pairs",
    );
    assert_one_line_error(
        &dpo(&data, &run("d"), &["--dpo", "--beta", "0"]),
        "--beta 0 must be above 0",
    );
}
