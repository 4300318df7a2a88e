//! `llama3 quantize` as a user runs it: bad input is a one-line error with a non-zero exit and
//! leaves OUT alone; a good run reports requantization and fallbacks and writes a GGUF the other
//! commands load.

use std::path::Path;

use llama3_testutil::{assert_one_line_error, default_model, llama3, shared};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Names in `dir`, sorted (to see leftovers such as temporary files).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_a_one_line_error() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let o = s(&out);
    assert_one_line_error(
        &llama3!(&["quantize", s(&model), o, "--type", "q3_k"]),
        "unknown quantization type \"q3_k\"",
    );
    assert_one_line_error(
        &llama3!(&["quantize", "/no/such/model.gguf", o, "--type", "q8_0"]),
        "/no/such/model.gguf",
    );
    assert_one_line_error(
        &llama3!(&["quantize", s(&model), s(&model), "--type", "q8_0"]),
        "is the input",
    );
    assert_one_line_error(
        &llama3!(&["quantize", s(&model), s(dir.path()), "--type", "q8_0"]),
        "is a directory",
    );
    assert_one_line_error(
        &llama3!(&[
            "quantize",
            s(&model),
            "/no/such/dir/x.gguf",
            "--type",
            "q8_0",
        ]),
        "/no/such/dir",
    );
    // An HF directory whose weights are not floats: refused before OUT is touched.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let gqa = shared().join("golden/hf/gqa/model");
    std::fs::copy(gqa.join("config.json"), hf.join("config.json")).unwrap();
    let bytes = std::fs::read(gqa.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (n, v) in st.tensors() {
        let v = if n == "model.norm.weight" {
            // 64 f32 = 256 bytes read as 256 i8.
            let t = safetensors::tensor::TensorView::new(
                safetensors::Dtype::I8,
                vec![v.data().len()],
                v.data(),
            );
            t.unwrap()
        } else {
            v
        };
        views.push((n, v));
    }
    safetensors::serialize_to_file(views, None, &hf.join("model.safetensors")).unwrap();
    std::fs::write(&out, b"previous content").unwrap();
    assert_one_line_error(
        &llama3!(&["quantize", s(&hf), o, "--type", "f16"]),
        "model.norm.weight",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous content");
    assert_eq!(listing(dir.path()), ["hf", "out.gguf"]);
}

#[test]
fn help_documents_every_flag() {
    let out = llama3!(&["quantize", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "<IN>",
        "<OUT>",
        "--type <TYPE>",
        "--threads <N>",
        "--verbose",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(flag) || l.contains(&format!(" {flag}")));
        let line = line.unwrap_or_else(|| panic!("{flag} missing from:\n{text}"));
        assert!(
            line.trim().len() > flag.len() + 10,
            "{flag} has no help: {line:?}"
        );
    }
    for ty in [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
    ] {
        assert!(text.contains(ty), "{ty} not in --help");
    }
}

#[test]
fn q4_k_reports_fallbacks_and_the_result_runs() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol-q4_k.gguf");
    let r = llama3!(&["quantize", s(&model), s(&out), "--type", "q4_k"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), s(&out));
    assert!(
        err.contains("warning: ") && err.contains("already quantized"),
        "{err}"
    );
    assert!(err.contains("fallback: 166 tensors Q4_K -> Q5_0"), "{err}");
    assert!(err.contains("fallback: 14 tensors Q6_K -> Q8_0"), "{err}");
    assert!(err.contains("wrote "), "{err}");
    assert_eq!(
        listing(dir.path()),
        ["smol-q4_k.gguf"],
        "temporary file left"
    );

    let info = llama3!(&["info", "-m", s(&out), "--json"]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let types = j["info"]["tensor_types"].to_string();
    assert!(types.contains("Q4_K") && types.contains("Q6_K"), "{types}");

    let g = llama3!(&[
        "generate",
        "-m",
        s(&out),
        "-p",
        "The capital of France is",
        "--greedy",
        "-n",
        "3",
        "--json",
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let j: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
    assert_eq!(j["ids"][0], 7042, "\" Paris\"");
}
