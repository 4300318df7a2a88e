//! `llama3 train --method qlora|lora` on the default Q4_1 model: the held-out loss falls, a
//! killed run resumes exactly, the PEFT adapter it writes loads with `--lora`, and the
//! settings that cannot work are refused.

use std::path::Path;
use std::process::{Command, Output};

use llama3_testutil::{default_model, llama3, shared, wait_for_checkpoint};

fn train_cmd(model: &Path, out: &Path, extra: &[&str]) -> Command {
    let data = shared().join("data/sotu/data/1790_george_washington_n.txt");
    train_on(model, &data, out, extra)
}

fn train_on(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    // Chat and prompt/completion data through `finetune`, the same command as `train`.
    let sub = match data.extension().is_some_and(|e| e == "jsonl") {
        true => "finetune",
        false => "train",
    };
    c.arg(sub)
        .arg("--init")
        .arg(model)
        .arg("--data_path")
        .arg(data);
    c.args(["--method", "qlora", "--lora-r", "8", "--seq-len", "32"])
        .args(["--batch-size", "2", "--max-steps", "6", "--save-every", "3"])
        .args([
            "--eval-every",
            "6",
            "--learning-rate",
            "2e-3",
            "--warmup",
            "1",
        ])
        .args(["-t", "2", "--model_path"])
        .arg(out)
        .args(extra);
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().expect("run llama3");
    llama3_testutil::ok(&out);
    out
}

/// (step, loss) of the eval records, and the train losses.
fn metrics(run: &Path) -> (Vec<(u64, f64)>, Vec<f64>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let (mut eval, mut train) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let loss = v["loss"].as_f64().unwrap();
        match v["kind"].as_str().unwrap() {
            "eval" => eval.push((v["step"].as_u64().unwrap(), loss)),
            _ => train.push(loss),
        }
    }
    (eval, train)
}

#[test]
fn qlora_with_dropout_trains_resumes_exactly_and_writes_a_peft_adapter() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    // With LoRA dropout: its masks must also repeat exactly after the resume.
    let drop = ["--lora-dropout", "0.1"];
    ok(train_cmd(&model, &straight, &drop));
    let (eval, train) = metrics(&straight);
    assert_eq!(train.len(), 6);
    assert_eq!(eval.len(), 2, "evaluations at steps 0 and 6");
    assert!(
        eval[1].1 < eval[0].1 - 0.05,
        "held-out loss did not fall: {eval:?}"
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["lora_dropout"], 0.1);

    // Killed after the step-3 checkpoint, then resumed: the same losses and adapter bytes.
    let killed = dir.path().join("killed");
    let mut child = train_cmd(&model, &killed, &drop)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&killed, 3, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("adapter_model.safetensors").exists(),
        "the run had finished"
    );
    ok(train_cmd(&model, &killed, &[drop[0], drop[1], "--resume"]));
    assert_eq!(
        metrics(&straight),
        metrics(&killed),
        "loss sequences differ"
    );
    let a = std::fs::read(straight.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "adapters differ after resume");

    // The adapter applies at inference on the quantized base.
    let out = llama3!(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--lora",
        straight.to_str().unwrap(),
        "-p",
        "Fellow citizens",
        "-n",
        "4",
        "--greedy",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_error(mut c: Command, needle: &str) {
    llama3_testutil::assert_one_line_error(&c.output().expect("run llama3"), needle);
}

#[test]
fn impossible_lora_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dense = shared().join("golden/hf/gqa/model");
    let tok = shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf");
    let out = dir.path().join("run");
    let mut c = train_cmd(&dense, &out, &[]);
    c.arg("--tokenizer").arg(&tok);
    assert_error(c, "needs a quantized base");
    let mut c = train_cmd(&dense, &out, &["--init", "tiny", "--method", "lora"]);
    c.arg("--tokenizer").arg(&tok);
    assert_error(c, "adapts a trained model");
    let model = default_model();
    assert_error(
        train_cmd(&model, &out, &["--lora-targets", "q_proj,embed_tokens"]),
        "LoRA target",
    );
    assert_error(train_cmd(&model, &out, &["--lora-r", "0"]), "lora_r");
    assert_error(
        train_cmd(&model, &out, &["--lora-dropout", "1"]),
        "lora_dropout",
    );
}

/// Supervised fine-tuning with QLoRA on alpaca-eval instructions, as chats (assistant-only
/// loss through the chat template) and as prompt/completion pairs: the held-out loss falls.
#[test]
fn qlora_fine_tuning_on_chats_and_pairs_lowers_heldout_loss() {
    let model = default_model();
    let text = std::fs::read_to_string(shared().join("data/alpaca-eval/outputs.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chats = dir.path().join("chats.jsonl");
    let pairs = dir.path().join("pairs.jsonl");
    let (mut c, mut p) = (String::new(), String::new());
    for r in rows.iter().take(40) {
        let (q, a) = (
            r["instruction"].as_str().unwrap(),
            r["output"].as_str().unwrap(),
        );
        let chat = serde_json::json!({"messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]});
        c.push_str(&format!("{chat}\n"));
        let pair = serde_json::json!({"prompt": format!("{q}\n"), "completion": a});
        p.push_str(&format!("{pair}\n"));
    }
    std::fs::write(&chats, c).unwrap();
    std::fs::write(&pairs, p).unwrap();
    let gc = |d: &Path| match d == pairs.as_path() {
        true => "--gradient-checkpointing",
        false => "--rslora",
    };
    for data in [&chats, &pairs] {
        let out = dir.path().join(data.file_stem().unwrap());
        let o = ok(train_on(
            &model,
            data,
            &out,
            // Pairs with gradient checkpointing: the same loop, one layer's graph at a time.
            &[
                "--seq-len",
                "128",
                "--max-steps",
                "4",
                "--eval-every",
                "4",
                gc(data),
            ],
        ));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("fine-tuning examples"), "{err}");
        let (eval, _) = metrics(&out);
        assert!(
            eval[1].1 < eval[0].1,
            "{}: held-out loss did not fall: {eval:?}",
            data.display()
        );
    }
}
