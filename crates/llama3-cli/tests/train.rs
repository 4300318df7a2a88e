//! `llama3 train` as a user runs it: exact resume after SIGKILL (acceptance 2 of the training
//! issue) and one-line errors for bad input.

use std::path::Path;
use std::process::{Command, Output};

use llama3_testutil::{
    assert_one_line_error, llama_spm_vocab, ok, shared, sotu_corpus, wait_for_checkpoint,
};

fn train_cmd(data: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args([
        "train",
        "--data_path",
        data,
        "--tokenizer",
        &llama_spm_vocab(),
    ])
    .args(["--init", "tiny", "--seq-len", "32", "--batch-size", "2"])
    .args([
        "--max-steps",
        "40",
        "--save-every",
        "5",
        "--eval-every",
        "10",
    ])
    .args(["--warmup", "3", "--learning-rate", "3e-3", "-t", "2"])
    .arg("--model_path")
    .arg(out)
    .args(extra);
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("run llama3");
    ok(&out);
    out
}

/// Metrics lines without the timing fields.
fn losses(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_s");
            }
            v.to_string()
        })
        .collect()
}

#[test]
fn resume_after_sigkill_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let straight = dir.path().join("straight");
    run(train_cmd(&data, &straight, &[]));
    // The run's TensorBoard events hold every logged step, and the loss curve was drawn.
    let events = llama3_train::metrics::event_files(&straight).unwrap();
    assert_eq!(events.len(), 1);
    let steps: Vec<i64> = llama3_train::tfevents::read(&events[0])
        .unwrap()
        .iter()
        .filter(|e| {
            e.summary
                .as_ref()
                .is_some_and(|s| s.value.iter().any(|v| v.tag == "train/loss"))
        })
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<i64>>());
    let png = std::fs::read(straight.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // Same run, killed with SIGKILL once a middle checkpoint exists, then resumed.
    let killed = dir.path().join("killed");
    let mut child = train_cmd(&data, &killed, &[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&killed, 15, &mut child);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("model.safetensors").exists(),
        "the run had finished"
    );
    run(train_cmd(&data, &killed, &["--resume"]));

    let (a, b) = (losses(&straight), losses(&killed));
    assert_eq!(a.len(), 40 + 5, "40 steps and 5 evaluations");
    assert_eq!(a, b, "loss sequences differ");
    let wa = std::fs::read(straight.join("model.safetensors")).unwrap();
    let wb = std::fs::read(killed.join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
}

/// Fails unless the command failed with a one-line error containing `needle`.
fn assert_error(mut c: Command, needle: &str) {
    assert_one_line_error(&c.output().expect("run llama3"), needle);
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let out = dir.path().join("out");
    assert_error(
        train_cmd(&data, &out, &["--init", "huge"]),
        "neither a preset",
    );
    // A run that failed on bad input does not claim its directory.
    assert!(!out.join("train_config.json").exists());
    assert_error(
        train_cmd(&data, &out, &["--num_gpus", "2"]),
        "0 GPUs available",
    );
    assert_error(
        train_cmd(&data, &out, &["--betas", "0.9"]),
        "--betas takes two numbers",
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let empty = empty.to_string_lossy().into_owned();
    assert_error(
        train_cmd(&empty, &dir.path().join("o1"), &[]),
        "holds no tokens",
    );
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words.").unwrap();
    let short = short.to_string_lossy().into_owned();
    assert_error(
        train_cmd(&short, &dir.path().join("o2"), &[]),
        "fewer than one batch",
    );
    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"fine\"}\n{\"text\": 3}\n").unwrap();
    let jsonl = jsonl.to_string_lossy().into_owned();
    assert_error(
        train_cmd(&jsonl, &dir.path().join("o3"), &[]),
        "bad.jsonl: line 2",
    );
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, b"text \xc3\x28 more").unwrap();
    let binary = binary.to_string_lossy().into_owned();
    assert_error(train_cmd(&binary, &dir.path().join("o4"), &[]), "not UTF-8");
    // A finished run's directory is not overwritten, and --resume refuses another run.
    let done = dir.path().join("done");
    run(train_cmd(&data, &done, &["--max-steps", "2"]));
    assert_error(
        train_cmd(&data, &done, &["--max-steps", "2"]),
        "already holds a training run",
    );
    assert_error(
        train_cmd(&data, &done, &["--resume", "--seed", "9"]),
        "holds a different run",
    );
}

#[test]
fn toml_config_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let toml = dir.path().join("run.toml");
    let text = format!(
        "data_path = [{data:?}]\ntokenizer = {:?}\nseq_len = 16\nbatch_size = 2\n\
         max_steps = 5\nlearning_rate = 0.002\nbetas = [0.9, 0.99]\nlr_schedule = \"linear\"\n",
        llama_spm_vocab()
    );
    std::fs::write(&toml, text).unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args(["train", "--config"]).arg(&toml);
    c.args([
        "--max-steps",
        "2",
        "--eval-every",
        "0",
        "--eval-batches",
        "3",
        "--method",
        "full",
        "--lora-r",
        "4",
        "--betas",
        "0.8,0.9",
        "-t",
        "2",
        "--model-path",
    ])
    .arg(&out);
    run(c);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["seq_len"], 16);
    assert_eq!(saved["max_steps"], 2, "the flag overrides the file");
    assert_eq!(saved["learning_rate"], 0.002, "the file's value stays");
    assert_eq!(
        saved["betas"],
        serde_json::json!([0.8, 0.9]),
        "B1,B2 as --help says"
    );
    assert_eq!(saved["lr_schedule"], "linear");
    // Every flag reaches the config.
    assert_eq!(saved["eval_batches"], 3);
    assert_eq!(saved["method"], "full");
    assert_eq!(saved["lora_r"], 4);
    assert_eq!(losses(&out).len(), 2);

    std::fs::write(&toml, "data_path = [\"x\"]\nlearning_rte = 1.0\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args(["train", "--config"]).arg(&toml);
    let err = String::from_utf8_lossy(&c.output().unwrap().stderr).into_owned();
    assert!(err.contains("learning_rte"), "{err}");
}

/// A trained model exports to a GGUF that generates the same greedy text as the run directory,
/// with a byte-level BPE vocabulary (Llama 3's) and a SentencePiece one with byte fallback
/// (Llama 2's), both from llama.cpp's vocab GGUFs; the prompt has bytes no token covers.
#[test]
fn trained_model_exports_to_gguf_with_the_same_greedy_text() {
    for vocab in ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf"] {
        let dir = tempfile::tempdir().unwrap();
        let data = sotu_corpus(dir.path(), 3);
        let out = dir.path().join("run");
        let tok = shared().join("data/llama-vocab-gguf").join(vocab);
        let mut c = train_cmd(&data, &out, &["--max-steps", "3", "--seq-len", "16"]);
        c.arg("--tokenizer").arg(&tok);
        run(c);
        let exe = env!("CARGO_BIN_EXE_llama3");
        let gguf = dir.path().join("run.gguf");
        let mut export = Command::new(exe);
        export.args([
            "export",
            out.to_str().unwrap(),
            "--gguf",
            gguf.to_str().unwrap(),
        ]);
        export.args(["--type", "f32"]);
        run(export);
        let text = "Fellow citizens \u{1F680}  of 1913, na\u{ef}ve\tstate";
        let gen = |m: &Path, cmd: &[&str]| {
            let o = Command::new(exe)
                .args([cmd[0], "-m", m.to_str().unwrap(), "-p", text])
                .args(&cmd[1..])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        };
        let tokenize = ["tokenize", "--json"];
        assert_eq!(gen(&out, &tokenize), gen(&gguf, &tokenize), "{vocab}");
        let greedy = ["generate", "-n", "16", "--greedy"];
        assert_eq!(gen(&out, &greedy), gen(&gguf, &greedy), "{vocab}");
    }
}

/// `n` lines of plain English, varied enough to tokenize into many distinct tokens.
fn sentences(n: usize, seed: usize) -> String {
    let who = [
        "The farmer",
        "A sailor",
        "Our teacher",
        "The old king",
        "My sister",
    ];
    let did = ["walked to", "wrote about", "looked at", "sold", "painted"];
    let what = [
        "the river",
        "a small house",
        "the market",
        "seven apples",
        "the hills",
    ];
    (0..n)
        .map(|i| {
            let k = i * 7 + seed;
            format!(
                "{} {} {} on day {}.\n",
                who[k % 5],
                did[(k / 5) % 5],
                what[(k / 25) % 5],
                k % 31
            )
        })
        .collect()
}

/// The seed's training line as its README writes it, but `--num_gpus=0` (no GPU is needed)
/// and a small corpus: no --init, no --tokenizer. The defaults taken are said, and the run
/// directory is a model that `llama3 generate -m` loads. `--num_gpus=1` without a GPU is a
/// one-line error that says how to train on the CPU.
#[test]
fn the_seeds_train_line_works_as_written() {
    llama3_testutil::default_model(); // its tokenizer is the default; fetched once, up front
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train.txt"), sentences(600, 0)).unwrap();
    std::fs::write(dir.path().join("data/valid.txt"), sentences(120, 3)).unwrap();
    let seed_line = |gpus: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
        c.current_dir(dir.path()).args([
            "train",
            "--data_path=data/train.txt",
            "--valid_data_path=data/valid.txt",
            "--model_path=model",
            gpus,
            "--batch_size=8",
            "--learning_rate=0.0001",
            "--num_epochs=3",
        ]);
        c
    };
    if llama3::device::gpu_count() == 0 {
        assert_error(
            seed_line("--num_gpus=1"),
            "train on the CPU with --num-gpus 0",
        );
    }
    let out = seed_line("--num_gpus=0").output().unwrap();
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no --init: training the preset \"tiny\""),
        "{err}"
    );
    assert!(
        err.contains("no --tokenizer: using the default model's"),
        "{err}"
    );
    let model = dir.path().join("model");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["device"], "cpu", "--num_gpus=0 trains on the CPU");
    assert_eq!(saved["num_epochs"], 3);
    assert_eq!(saved["learning_rate"], 0.0001);
    let evals = losses(&model)
        .iter()
        .filter(|l| l.contains("\"eval\""))
        .count();
    assert!(evals >= 1, "the valid data was evaluated");
    let gen = Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args(["generate", "-m"])
        .arg(&model)
        .args(["-p", "The farmer walked to", "-n", "8", "--greedy"])
        .output()
        .unwrap();
    ok(&gen);
    let info = Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args(["info", "--json", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    let info = ok(&info);
    assert!(
        info.contains("49152"),
        "the default model's vocabulary: {info}"
    );
}
