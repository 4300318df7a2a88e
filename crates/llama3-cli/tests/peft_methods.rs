//! `llama3 train --use-dora` and `--method prompt-tuning|prefix-tuning`: each lowers the
//! held-out loss, writes a PEFT adapter that `--lora` applies on other commands, resumes from
//! its checkpoint, and (where the PEFT venv of `scripts/make_peft_goldens.py` exists) loads in
//! HF PEFT itself with PEFT's logits equal to ours.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Tensor};
use llama3::loader::{load, LoadOptions};
use llama3::model::Logits;
use llama3_testutil::{llama_spm_vocab, max_abs_diff, ok, shared, skip};

fn llama3() -> &'static str {
    env!("CARGO_BIN_EXE_llama3")
}

fn train(init: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let data = shared().join("data/sotu/data/1790_george_washington_n.txt");
    let mut c = Command::new(llama3());
    c.arg("train")
        .arg("--init")
        .arg(init)
        .arg("--data_path")
        .arg(&data);
    c.args(["--seq-len", "32", "--batch-size", "2", "--max-steps", "8"])
        .args([
            "--eval-every",
            "8",
            "--save-every",
            "4",
            "--warmup",
            "1",
            "-t",
            "2",
        ])
        .arg("--model_path")
        .arg(out)
        .args(extra);
    c.output().expect("run llama3 train")
}

/// (first, last) held-out loss of a run.
fn eval_losses(run: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<f64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    (evals[0], *evals.last().unwrap())
}

/// The PEFT venv's python, when `scripts/make_peft_goldens.py` has made it.
fn peft_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("LLAMA3_PEFT_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/llama3/peft-venv"))
        })?;
    let py = venv.join("bin/python");
    let has_peft = Command::new(&py)
        .args(["-c", "import peft, torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    has_peft.then_some(py)
}

#[test]
fn dora_prompt_and_prefix_tuning_train_apply_and_load_in_peft() {
    let tmp = tempfile::tempdir().unwrap();
    // A small HF base model of our own: two steps of the tiny preset.
    let base = tmp.path().join("base");
    let spm = llama_spm_vocab();
    ok(&train(
        Path::new("tiny"),
        &base,
        &["--tokenizer", &spm, "--max-steps", "2"],
    ));
    let ids: Vec<u32> = vec![1, 450, 3303, 310, 278, 3303, 13, 29871, 1576, 4272];
    let peft_py = peft_python();
    let methods: [(&str, &[&str], &str); 3] = [
        (
            "dora",
            &["--method", "lora", "--use-dora", "--learning-rate", "1e-2"],
            "DoRA",
        ),
        (
            "prompt",
            &[
                "--method",
                "prompt-tuning",
                "--num-virtual-tokens",
                "6",
                "--learning-rate",
                "5e-2",
            ],
            "PROMPT_TUNING",
        ),
        (
            "prefix",
            &[
                "--method",
                "prefix-tuning",
                "--num-virtual-tokens",
                "6",
                "--learning-rate",
                "5e-2",
            ],
            "PREFIX_TUNING",
        ),
    ];
    for (name, args, kind) in methods {
        let run = tmp.path().join(name);
        ok(&train(&base, &run, args));
        let (first, last) = eval_losses(&run);
        eprintln!("{name}: held-out loss {first:.4} -> {last:.4}");
        assert!(
            last < first - 0.05,
            "{name}: held-out loss {first} -> {last}"
        );
        assert!(run.join("adapter_config.json").exists());
        assert!(!run.join("model.safetensors").exists());

        // Applied with --lora: another output than the base model's.
        let base_model = load(&base, &LoadOptions::default()).unwrap().model;
        let mut m = base_model.clone();
        let applied = llama3::peft::apply_spec(&mut m, run.to_str().unwrap()).unwrap();
        assert!(applied.contains(kind), "{applied}");
        let x = Tensor::new(ids.as_slice(), m.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ours: Vec<f32> = m
            .forward(&x, None, Logits::All)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let plain: Vec<f32> = base_model
            .forward(&x, None, Logits::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            max_abs_diff(&ours, &plain) > 1e-3,
            "{name}: the adapter changes nothing"
        );
        let gen = Command::new(llama3())
            .args([
                "generate",
                "-n",
                "4",
                "--temp",
                "0",
                "-p",
                "Fellow citizens",
                "-m",
            ])
            .arg(&base)
            .arg("--lora")
            .arg(&run)
            .output()
            .unwrap();
        ok(&gen);

        // HF PEFT loads the adapter and gives our logits.
        let Some(py) = &peft_py else {
            skip(
                "peft_methods::load_in_peft",
                "no PEFT venv (run scripts/make_peft_goldens.py once to make it)",
            );
            continue;
        };
        std::fs::write(
            run.join("ids.json"),
            serde_json::to_string(&[&ids]).unwrap(),
        )
        .unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_peft_goldens.py");
        let out = Command::new(py)
            .arg(script)
            .arg("--check-adapter")
            .arg(&run)
            .arg(&base)
            .env("LLAMA3_PEFT_IN_VENV", "1")
            .output()
            .unwrap();
        let text = ok(&out);
        let line = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let theirs: Vec<f32> = v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let d = max_abs_diff(&ours, &theirs);
        eprintln!(
            "{name}: PEFT ({}) vs ours max |diff| {d:.2e}",
            v["peft_type"]
        );
        assert!(d <= 1e-4, "{name}: PEFT's logits differ from ours by {d}");
    }
}

/// Prompt and prefix tuning on the default model, killed after a checkpoint and resumed: the
/// adapter equals the uninterrupted run's byte for byte.
#[test]
fn prompt_learning_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama3_testutil::default_model();
    for method in ["prompt-tuning", "prefix-tuning"] {
        let args = [
            "--method",
            method,
            "--num-virtual-tokens",
            "4",
            "--max-steps",
            "6",
            "--save-every",
            "3",
            "--learning-rate",
            "1e-2",
        ];
        let straight = tmp.path().join(format!("{method}-straight"));
        ok(&train(&model, &straight, &args));
        let killed = tmp.path().join(format!("{method}-killed"));
        let data = shared().join("data/sotu/data/1790_george_washington_n.txt");
        let mut child = Command::new(llama3())
            .arg("train")
            .arg("--init")
            .arg(&model)
            .arg("--data_path")
            .arg(&data)
            .args([
                "--seq-len",
                "32",
                "--batch-size",
                "2",
                "--eval-every",
                "8",
                "--warmup",
                "1",
            ])
            .args(["-t", "2", "--model_path"])
            .arg(&killed)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        llama3_testutil::wait_for_checkpoint(&killed, 3, &mut child);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !killed.join("adapter_model.safetensors").exists(),
            "the run had finished"
        );
        ok(&train(
            &model,
            &killed,
            &[&args[..], &["--resume"]].concat(),
        ));
        let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            bytes(&straight),
            bytes(&killed),
            "{method}: the resumed run differs"
        );
    }
}

/// Settings that cannot work are one-line errors before any work.
#[test]
fn impossible_prompt_learning_settings_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama3_testutil::default_model();
    for (args, needle) in [
        (
            &["--method", "prompt-tuning", "--num-virtual-tokens", "0"][..],
            "--num-virtual-tokens must be at least 1",
        ),
        (
            &["--method", "prefix-tuning", "--use-dora"][..],
            "--use-dora is a LoRA variant",
        ),
        (
            &["--method", "prefix-tuning", "--gradient-checkpointing"][..],
            "does not combine with --gradient-checkpointing",
        ),
    ] {
        let out = train(&model, &tmp.path().join("run"), args);
        llama3_testutil::assert_one_line_error(&out, needle);
    }
    // A prefix-tuning adapter has no weights to merge.
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("../llama3/tests/data/peft_prefix");
    let out = Command::new(llama3())
        .arg("merge")
        .arg(llama3_testutil::golden("hf/gqa/model"))
        .arg(&prefix)
        .arg(tmp.path().join("merged"))
        .output()
        .unwrap();
    llama3_testutil::assert_one_line_error(&out, "cannot be merged into the weights");
}
