//! The `llama3` binary as a user runs it: bad inputs give a one-line error and a non-zero exit
//! (acceptance 5 of the engine issue), and the main commands work end to end.

use std::path::Path;
use std::process::Command;

use llama3_testutil::{assert_one_line_error, default_model, llama3, ok, shared};

fn write_prefix(src: &Path, dst: &Path, n: usize) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..n]).unwrap();
}

/// `llama3 pull` prints the path of the default model, the file the library fetches.
#[test]
fn pull_prints_the_default_model_path() {
    let want = default_model();
    let out = ok(&llama3!(&["pull"]));
    assert_eq!(out.trim(), want.to_str().unwrap());
}

/// `info` says which kernel each weight matmul takes: ours for the default Q4_1 file, and
/// candle's generic path, named as slow, for K-quant tensors (no kernels of ours yet).
#[test]
fn info_names_the_matmul_kernels() {
    let j: serde_json::Value = serde_json::from_str(&ok(&llama3!(&["info", "--json"]))).unwrap();
    assert_eq!(
        j["matmul_kernels"],
        serde_json::json!([
            ["Q4_1 packed (llama3 kernels)", 210],
            ["Q8_0 packed (llama3 kernels)", 1]
        ])
    );
    let dir = tempfile::tempdir().unwrap();
    let q4k = dir.path().join("m.q4_k.gguf");
    let (src, dst) = (default_model(), q4k.to_str().unwrap().to_string());
    ok(&llama3!(&[
        "quantize",
        src.to_str().unwrap(),
        &dst,
        "--type",
        "q4_k"
    ]));
    let text = ok(&llama3!(&["info", "-m", &dst]));
    let line = text.lines().find(|l| l.starts_with("matmuls")).unwrap();
    assert!(line.contains("Q4_K packed (llama3 kernels) x16"), "{line}");
    assert!(line.contains("Q5_0 packed (llama3 kernels)"), "{line}");
    assert!(line.contains("Q6_K packed (llama3 kernels)"), "{line}");
    // Types without our kernels (Q2_K, Q3_K) say so: `ops::linear`'s unit test.
}

#[test]
fn truncated_gguf_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("truncated.gguf");
    write_prefix(&default_model(), &bad, 50_000_000);
    assert_one_line_error(
        &llama3!(&["generate", "-m", bad.to_str().unwrap(), "-p", "hi"]),
        "truncated",
    );
    // Cut inside the header too.
    write_prefix(&default_model(), &bad, 1000);
    assert_one_line_error(
        &llama3!(&["info", "-m", bad.to_str().unwrap()]),
        "truncated.gguf",
    );
}

#[test]
fn wrong_magic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("magic.gguf");
    let mut bytes = std::fs::read(default_model()).unwrap();
    bytes.truncate(4096);
    bytes[..4].copy_from_slice(b"GGUX");
    std::fs::write(&bad, bytes).unwrap();
    assert_one_line_error(
        &llama3!(&["generate", "-m", bad.to_str().unwrap(), "-p", "hi"]),
        "magic",
    );
}

#[test]
fn safetensors_with_wrong_shape_is_an_error() {
    let src = shared().join("golden/hf/gqa/model");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.1.self_attn.k_proj.weight";
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    for (n, v) in st.tensors() {
        if n == name {
            // Same bytes, shape transposed: (32, 64) -> (64, 32).
            let shape = vec![v.shape()[1], v.shape()[0]];
            let t = safetensors::tensor::TensorView::new(v.dtype(), shape, v.data()).unwrap();
            views.push((n, t));
        } else {
            views.push((n, v));
        }
    }
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let out = llama3!(&[
        "generate",
        "-m",
        dir.path().to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
    ]);
    assert_one_line_error(&out, name);
    assert_one_line_error(&out, "shape");
}

#[test]
fn missing_tokenizer_is_an_error_and_prompt_ids_work() {
    let model = shared().join("golden/hf/gqa/model");
    let m = model.to_str().unwrap();
    assert_one_line_error(
        &llama3!(&["generate", "-m", m, "-p", "hello"]),
        "no tokenizer",
    );
    let out = llama3!(&[
        "generate",
        "-m",
        m,
        "--prompt-ids",
        "5,6,7",
        "-n",
        "4",
        "--greedy",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["prompt_ids"], serde_json::json!([5, 6, 7]));
    assert_eq!(j["ids"].as_array().unwrap().len(), 4);
}

#[test]
fn missing_model_path_is_an_error() {
    assert_one_line_error(
        &llama3!(&["generate", "-m", "/no/such/model.gguf", "-p", "hi"]),
        "does not exist",
    );
}

#[test]
fn bad_cli_values_are_errors() {
    let out = llama3!(&["generate", "--top-p", "1.5", "-p", "hi"]);
    assert!(!out.status.success());
    let out = llama3!(&["generate", "--logit-bias", "abc", "-p", "hi"]);
    assert!(!out.status.success());
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["generate", "chat", "tokenize", "info", "pull", "quantize"] {
        let out = llama3!(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: llama3"), "{sub}: {text}");
    }
}

#[test]
fn generate_json_greedy_equals_llamacpp_first_tokens() {
    // p5_count has llama.cpp's largest greedy margins (min 1.7): all 48 tokens must agree.
    let text = std::fs::read_to_string(shared().join("golden/llamacpp/golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p5_count")
        .unwrap();
    let model = default_model();
    let out = llama3!(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        p["prompt"].as_str().unwrap(),
        "--greedy",
        "-n",
        "48",
        "--json",
        "--top-logprobs",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["prompt_ids"], p["prompt_ids"]);
    let ids: Vec<u64> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let want: Vec<u64> = p["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let n = ids.len().min(want.len());
    assert!(n > 10);
    assert_eq!(ids[..n], want[..n]);
    let step0 = &j["steps"][0];
    assert_eq!(step0["top_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(step0["top_logprobs"][0]["id"], step0["id"]);
}

#[test]
fn chat_answers_and_handles_commands() {
    let model = default_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--greedy",
            "-n",
            "24",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        // The question of llama.cpp's p6_chat golden, whose greedy answer starts "The boiling
        // point of water in Celsius is approximately 100.0 degrees Celsius."
        let q = b"What is the boiling point of water in Celsius?\n";
        stdin.write_all(q).unwrap();
        stdin.write_all(b"/reset\n").unwrap();
        stdin.write_all(q).unwrap();
        stdin.write_all(b"/exit\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(answers.len(), 2, "{text}");
    assert!(
        answers[0].starts_with("The boiling point of water in Celsius is approximately 100"),
        "{text}"
    );
    // After /reset the same question gets the same greedy answer.
    assert_eq!(answers[0], answers[1]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tok/s"), "{err}");
    assert!(err.contains("reset"), "{err}");
}

#[test]
fn unreachable_hub_model_is_a_clear_error() {
    // Offline (as here and in CI) or online, a repository that does not exist is an error.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args(["pull", "hf:llama3-tests/no-such-model-0"])
        .env("LLAMA3_HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("Hugging Face Hub"),
        "{err}"
    );
}

#[test]
fn stop_strings_end_generation_and_are_not_printed() {
    // p1_capital's greedy continuation is " Paris.\n\nThe United States has a population..."
    let model = default_model();
    let out = llama3!(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "--greedy",
        "-n",
        "40",
        "--stop",
        "United",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["text"], " Paris.\n\nThe ");
    assert_eq!(j["finish_reason"], "stop");
}

#[test]
fn unsupported_quant_type_is_named() {
    // Rewrite the type of blk.0.attn_q.weight in the default model's header to 16 (IQ2_XXS).
    let mut bytes = std::fs::read(default_model()).unwrap();
    bytes.truncate(8 << 20);
    let name = b"blk.0.attn_q.weight";
    let pos = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    let ty = pos + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("iq2.gguf");
    std::fs::write(&bad, bytes).unwrap();
    assert_one_line_error(&llama3!(&["info", "-m", bad.to_str().unwrap()]), "IQ2_XXS");
}

/// PEFT's next token after the gqa golden prompt (row 0): the prompt as `--prompt-ids`, the
/// argmax id and its log-probability, from `lora_golden.safetensors`.
fn lora_golden_next() -> (String, usize, f64) {
    let g = candle_core::safetensors::load(
        shared().join("golden/hf/gqa/lora_golden.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ids: Vec<i64> = g["input_ids"].get(0).unwrap().to_vec1().unwrap();
    let logits: Vec<f32> = g["logits_lora"]
        .get(0)
        .unwrap()
        .get(ids.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let (best, &max) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let prompt = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    (prompt, best, (max - lse) as f64)
}

/// The first generated step of `generate -m MODEL --prompt-ids PROMPT --greedy --json`:
/// (id, logprob).
fn first_step(model: &str, prompt: &str, extra: &[&str]) -> (usize, f64) {
    let mut args = vec!["generate", "-m", model, "--prompt-ids", prompt];
    args.extend(["-n", "1", "--greedy", "--json"]);
    args.extend(extra);
    let out = llama3!(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = &j["steps"][0];
    (
        step["id"].as_u64().unwrap() as usize,
        step["logprob"].as_f64().unwrap(),
    )
}

/// `--lora` applies a PEFT adapter at inference: the next token and its log-probability are
/// PEFT's (from the golden logits), and a bad adapter path is a one-line error.
#[test]
fn lora_flag_applies_a_peft_adapter() {
    let (prompt, best, best_lp) = lora_golden_next();
    let model = shared().join("golden/hf/gqa/model");
    let m = model.to_str().unwrap();
    let lora = shared().join("golden/hf/gqa/lora");
    let (id, lp) = first_step(m, &prompt, &["--lora", lora.to_str().unwrap()]);
    assert_eq!(id, best, "greedy token with the adapter");
    assert!((lp - best_lp).abs() < 1e-4, "logprob {lp} vs {best_lp}");
    // Weight 0 is the base model.
    let spec = format!("{}:0", lora.to_str().unwrap());
    let (_, base_lp) = first_step(m, &prompt, &["--lora", &spec]);
    let (_, plain_lp) = first_step(m, &prompt, &[]);
    assert!((base_lp - plain_lp).abs() < 1e-6);
    assert_one_line_error(
        &llama3!(&[
            "generate",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "--lora",
            "/no/adapter",
        ]),
        "adapter_config.json",
    );
}

/// `llama3 merge`: the merged HF directory and GGUF give PEFT's LoRA logits (checked through
/// the next token and its log-probability), and merging into a full directory is refused.
#[test]
fn merge_writes_hf_and_gguf_models_with_the_adapter_folded_in() {
    let (prompt, best, best_lp) = lora_golden_next();
    let base = shared().join("golden/hf/gqa/model");
    let lora = shared().join("golden/hf/gqa/lora");
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("merged");
    let gguf = dir.path().join("merged.gguf");
    for (out, extra) in [(&hf, vec![]), (&gguf, vec!["--type", "f32"])] {
        let mut args = vec!["merge", base.to_str().unwrap(), lora.to_str().unwrap()];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let o = llama3!(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (id, lp) = first_step(out.to_str().unwrap(), &prompt, &[]);
        assert_eq!(id, best, "{}", out.display());
        assert!(
            (lp - best_lp).abs() < 1e-4,
            "{}: logprob {lp}",
            out.display()
        );
    }
    assert_one_line_error(
        &llama3!(&[
            "merge",
            base.to_str().unwrap(),
            lora.to_str().unwrap(),
            hf.to_str().unwrap(),
        ]),
        "not an empty directory",
    );
}

/// `llama3 export DIR --gguf OUT`: the GGUF gives the HF directory's next token and
/// log-probability.
#[test]
fn export_writes_a_gguf_with_the_same_outputs() {
    let (prompt, _, _) = lora_golden_next();
    let dir = shared().join("golden/hf/gqa/model");
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("gqa.gguf");
    let o = llama3!(&[
        "export",
        dir.to_str().unwrap(),
        "--gguf",
        gguf.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (id_hf, lp_hf) = first_step(dir.to_str().unwrap(), &prompt, &[]);
    let (id_gguf, lp_gguf) = first_step(gguf.to_str().unwrap(), &prompt, &[]);
    assert_eq!(id_hf, id_gguf);
    assert!((lp_hf - lp_gguf).abs() < 1e-4, "{lp_hf} vs {lp_gguf}");
}
