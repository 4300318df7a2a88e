//! `llama3 perplexity` and `llama3 bench` end to end on the default model, kept short (a
//! context of 64, a few chunks; a 16-token bench). The full-text PPL against llama.cpp is in
//! crates/llama3/tests/perplexity.rs.

use llama3_testutil::{json_of, llama3, shared};

fn default_model() -> String {
    llama3_testutil::default_model()
        .to_string_lossy()
        .into_owned()
}

/// The first `bytes` of the held-out text in a temp dir.
fn heldout_prefix(dir: &tempfile::TempDir, bytes: usize) -> String {
    let text = std::fs::read(shared().join("data/sotu/heldout-last10.txt")).unwrap();
    let path = dir.path().join("text.txt");
    std::fs::write(&path, &text[..bytes]).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn perplexity_both_protocols_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = heldout_prefix(&dir, 4000);
    let model = default_model();
    let base = [
        "perplexity",
        "-m",
        &model,
        "-f",
        &file,
        "-c",
        "64",
        "--json",
    ];

    let mut args = base.to_vec();
    args.extend(["--chunks", "3", "-b", "2"]);
    let j = json_of(&llama3!(&args));
    assert_eq!(j["protocol"], "llama.cpp");
    assert_eq!((j["ctx"].as_u64(), j["stride"].as_u64()), (Some(64), None));
    assert_eq!(j["n_windows"], 3);
    assert_eq!(j["n_scored"], 3 * 31); // 64 - 32 - 1 per chunk
    assert_eq!(j["n_evaluated"], 3 * 64);
    let ppl = j["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 1000.0, "{ppl}");
    assert!(j["ppl_stderr"].as_f64().unwrap() > 0.0);
    assert!(j["n_tokens"].as_u64().unwrap() > 600);
    assert!(j["seconds"].as_f64().unwrap() > 0.0);

    let mut args = base.to_vec();
    args.extend(["--stride", "32", "--chunks", "2"]);
    let j = json_of(&llama3!(&args));
    assert_eq!(j["protocol"], "sliding-window");
    assert_eq!(j["stride"], 32);
    assert_eq!(j["n_windows"], 2);
    assert_eq!(j["n_scored"], 63 + 32);

    // Plain output: the final line llama.cpp prints, on stdout.
    let out = llama3!(&[
        "perplexity",
        "-m",
        &model,
        "-f",
        &file,
        "-c",
        "64",
        "--chunks",
        "1",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("PPL = ") && stdout.contains(" +/- "),
        "{stdout}"
    );
}

#[test]
fn perplexity_bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = heldout_prefix(&dir, 300);
    let model = default_model();
    for (extra, needle) in [
        (vec!["-c", "512"], "2 * ctx"),
        (vec!["-c", "32", "--stride", "64"], "stride"),
        (vec!["-c", "100000"], "exceeds"),
    ] {
        let mut args = vec!["perplexity", "-m", &model, "-f", &file];
        args.extend(extra);
        let out = llama3!(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{err}"
        );
    }
}

#[test]
fn bench_json_reports_every_measure() {
    let model = default_model();
    let j = json_of(&llama3!(&[
        "bench", "-m", &model, "-p", "16", "-n", "4", "-r", "2", "-t", "1", "--json",
    ]));
    assert_eq!(
        (j["n_prompt"].as_u64(), j["n_gen"].as_u64()),
        (Some(16), Some(4))
    );
    assert_eq!(j["threads"], 1);
    for key in ["pp_tokens_per_second", "tg_tokens_per_second", "ttft_ms"] {
        let s = &j[key];
        assert_eq!(s["samples"].as_array().map(Vec::len), Some(2), "{key}");
        assert!(s["mean"].as_f64().unwrap() > 0.0, "{key}");
        assert!(s["sd"].as_f64().unwrap() >= 0.0, "{key}");
    }
    assert!(j["load_seconds"].as_f64().unwrap() > 0.0);
    assert!(j["peak_rss_bytes"].as_u64().unwrap() > 50 << 20);
    assert!(j["lookup"].is_null());
}

/// `--lookup N`: the copy task's speed plain and with prompt lookup, and its acceptance.
#[test]
fn bench_reports_prompt_lookup_on_the_copy_task() {
    let model = default_model();
    let j = json_of(&llama3!(&[
        "bench", "-m", &model, "-p", "8", "-n", "32", "-r", "1", "--lookup", "6", "--json",
    ]));
    let l = &j["lookup"];
    assert_eq!(l["max_drafts"], 6);
    for key in [
        "copy_task_tokens_per_second",
        "copy_task_lookup_tokens_per_second",
    ] {
        assert!(l[key]["mean"].as_f64().unwrap() > 0.0, "{key}");
    }
    let (acc, d) = (
        l["accepted"].as_u64().unwrap(),
        l["drafts"].as_u64().unwrap(),
    );
    assert!(acc > 0 && acc <= d, "{acc}/{d}");
}

/// `--draft MODEL`: an open answer's speed plain and with the draft model, and its acceptance
/// (the model as its own draft: every draft accepted, the output checked identical by bench).
#[test]
fn bench_reports_a_draft_model() {
    let model = default_model();
    let j = json_of(&llama3!(&[
        "bench",
        "-m",
        &model,
        "-p",
        "8",
        "-n",
        "24",
        "-r",
        "1",
        "--draft",
        &model,
        "--draft-max",
        "4",
        "--json",
    ]));
    let d = &j["draft"];
    assert_eq!(d["max_drafts"], 4);
    for key in [
        "open_task_tokens_per_second",
        "open_task_draft_tokens_per_second",
    ] {
        assert!(d[key]["mean"].as_f64().unwrap() > 0.0, "{key}");
    }
    let (acc, n) = (
        d["accepted"].as_u64().unwrap(),
        d["drafts"].as_u64().unwrap(),
    );
    assert!(n > 0 && acc == n, "{acc}/{n}");
}
