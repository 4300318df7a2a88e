//! `llama3 classify train|eval|predict` on the default model with a few Rotten Tomatoes-style
//! reviews: the head trains, the directory it writes evaluates and predicts, and bad input
//! (a held-out label unseen in training, empty text, unknown LoRA module) is a clear error;
//! LoRA training also writes a PEFT SEQ_CLS adapter that predicts the same on the base.

use std::path::Path;
use std::process::Output;

use llama3_testutil::{llama3, ok};

fn err(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GOOD: [&str; 6] = [
    "A wonderful, moving film with great performances.",
    "Brilliant and funny from start to finish.",
    "One of the best movies of the year, a delight.",
    "Beautifully shot and superbly acted.",
    "A joyous triumph that I loved.",
    "Smart, warm and thoroughly entertaining.",
];
const BAD: [&str; 6] = [
    "A dull, lifeless mess that drags on forever.",
    "Terrible acting and a boring, stupid plot.",
    "One of the worst movies of the year, a chore.",
    "Badly shot and poorly acted.",
    "A tedious failure that I hated.",
    "Dumb, cold and thoroughly unpleasant.",
];

/// The GOOD and BAD reviews as `train.jsonl` in `dir`.
fn reviews(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("train.jsonl");
    let rows: Vec<(&str, &str)> = GOOD
        .iter()
        .map(|t| (*t, "fresh"))
        .chain(BAD.iter().map(|t| (*t, "rotten")))
        .collect();
    write(&data, &rows);
    data
}

fn write(path: &Path, rows: &[(&str, &str)]) {
    let lines: Vec<String> = rows
        .iter()
        .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[test]
fn head_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let data = reviews(dir.path());
    let out = dir.path().join("cls");
    let d = data.to_str().unwrap();
    let o = out.to_str().unwrap();
    let args = [
        "classify", "train", "--data", d, "-o", o, "--method", "head", "--epochs", "60", "--lr",
        "1e-2",
    ];
    ok(&llama3!(&args));
    assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
    // The training texts are learned (a linear head on 576 features, 12 points).
    let report = dir.path().join("report.json");
    let r = report.to_str().unwrap();
    let text = ok(&llama3!(&[
        "classify", "eval", "-m", o, "--data", d, "--json", r,
    ]));
    assert!(text.contains("accuracy"), "{text}");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["n"], 12);
    assert!(rep["accuracy"].as_f64().unwrap() >= 0.9, "{rep}");
    assert_eq!(rep["labels"], serde_json::json!(["fresh", "rotten"]));
    let pred = ok(&llama3!(&[
        "classify", "predict", "-m", o, "--text", GOOD[0], "--text", BAD[0],
    ]));
    let labels: Vec<String> = pred
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].to_string())
        .collect();
    assert_eq!(labels, ["\"fresh\"", "\"rotten\""]);

    // Bad input.
    let valid = dir.path().join("valid.jsonl");
    write(
        &valid,
        &[("Fine.", "fresh"), ("Meh, it was okay.", "mixed")],
    );
    let e = err(llama3!(&[
        "classify",
        "train",
        "--data",
        d,
        "--valid",
        valid.to_str().unwrap(),
        "-o",
        o,
    ]));
    assert!(
        e.contains("mixed") && e.contains("missing from the training data"),
        "{e}"
    );
    let empty = dir.path().join("empty.jsonl");
    write(&empty, &[("Great.", "fresh"), ("  ", "rotten")]);
    let e = err(llama3!(&[
        "classify",
        "train",
        "--data",
        empty.to_str().unwrap(),
        "-o",
        o,
    ]));
    assert!(e.contains("line 2") && e.contains("empty text"), "{e}");
    let e = err(llama3!(&[
        "classify",
        "train",
        "--data",
        d,
        "-o",
        o,
        "--lora-targets",
        "q_proj,attn",
    ]));
    assert!(e.contains("\"attn\""), "{e}");
    let e = err(llama3!(&["classify", "eval", "-m", d, "--data", d]));
    assert!(e.contains("cannot load the classifier"), "{e}");
}

/// `--method lora` also writes a PEFT sequence-classification adapter (OUT/adapter); `predict
/// -m BASE --adapter OUT/adapter --labels ...` gives what the merged directory gives.
#[test]
fn lora_writes_a_peft_adapter_that_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = reviews(dir.path());
    let out = dir.path().join("cls");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    ok(&llama3!(&[
        "classify", "train", "--data", d, "-o", o, "--method", "lora", "--epochs", "1", "--lora-r",
        "4",
    ]));
    let adapter = out.join("adapter");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(
        cfg["modules_to_save"],
        serde_json::json!(["classifier", "score"])
    );
    let texts = ["--text", GOOD[0], "--text", BAD[1]];
    let merged = ok(&llama3!(
        &[&["classify", "predict", "-m", o][..], &texts].concat(),
    ));
    let base = llama3_testutil::default_model();
    let a = adapter.to_str().unwrap();
    let via_adapter = ok(&llama3!(&[
        &[
            "classify",
            "predict",
            "-m",
            base.to_str().unwrap(),
            "--adapter",
            a,
        ][..],
        &["--labels", "fresh,rotten"],
        &texts,
    ]
    .concat(),));
    let probs = |s: &str| -> Vec<(String, f64)> {
        s.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["label"].to_string(),
                    v["probs"]["fresh"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (m, v) = (probs(&merged), probs(&via_adapter));
    assert_eq!(m.len(), 2);
    for ((lm, pm), (lv, pv)) in m.iter().zip(&v) {
        assert_eq!(lm, lv);
        assert!((pm - pv).abs() < 1e-3, "{pm} vs {pv}");
    }
    // The adapter is not a language model's, and its labels must fit its head.
    let e = err(llama3!(&[
        "generate",
        "-m",
        base.to_str().unwrap(),
        "--lora",
        a,
        "-n",
        "1",
        "-p",
        "Hi",
    ]));
    assert!(e.contains("classif"), "{e}");
    let e = err(llama3!(&[
        &[
            "classify",
            "predict",
            "-m",
            base.to_str().unwrap(),
            "--adapter",
            a,
            "--labels",
            "x",
        ][..],
        &texts,
    ]
    .concat(),));
    assert!(e.contains("label"), "{e}");
}
