//! `llama3::quantize` against real references: the default model (SmolLM2-135M-Instruct Q4_1,
//! made by llama.cpp) requantized must keep its blocks, types, tokenizer and generations, and
//! HF golden models converted to GGUF must give HF transformers' logits (../shared/golden).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use llama3::generate::{GenerateOptions, Generator, Session};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::model::Logits;
use llama3::quantize::{quantize, QuantType, QuantizeOptions, QuantizeReport};
use llama3::sample::SamplingParams;
use llama3_testutil::{gguf_header, golden, ids, llamacpp_prompts, max_abs_diff, tensors};
use serde_json::Value as Json;

fn convert(input: &Path, ty: QuantType, dir: &Path) -> (PathBuf, QuantizeReport) {
    let out = dir.join(format!("out-{ty}.gguf"));
    let report = quantize(input, &out, &QuantizeOptions::new(ty))
        .unwrap_or_else(|e| panic!("quantize {} to {ty}: {e}", input.display()));
    (out, report)
}

fn open(path: &Path) -> Loaded {
    load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Greedy ids and, per step, the top-1 minus top-2 logit.
fn greedy(l: &Loaded, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        top_logprobs: 2,
        ..GenerateOptions::default()
    };
    let mut session = Session::new(&l.model, prompt.len() + n).unwrap();
    let steps: Vec<_> = Generator::new(&l.model, &mut session, prompt, opts)
        .unwrap()
        .map(|s| s.unwrap())
        .collect();
    let margins = steps
        .iter()
        .map(|s| s.top_logprobs[0].1 - s.top_logprobs[1].1)
        .collect();
    (steps.iter().map(|s| s.token).collect(), margins)
}

fn last_logits(l: &Loaded, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::new(ids, l.model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    l.model
        .forward(&t, None, Logits::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn q8_0_of_the_default_model_generates_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let src = llama3_testutil::default_model();
    let (out, report) = convert(&src, QuantType::Q8_0, dir.path());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("already quantized")),
        "requantization must be reported: {:?}",
        report.warnings
    );
    assert_eq!(report.fallbacks().count(), 0);
    let orig = open(&src);
    let q8 = open(&out);
    assert_eq!(
        q8.info.tensor_types,
        [("Q8_0".into(), 211), ("F32".into(), 61)]
    );
    // Q8_0 weights are within 1/254 of each block's largest value of the Q4_1 ones, but both
    // models quantize activations to 8 bits before every matmul (llama.cpp does the same):
    // that noise alone moves logits by up to ~1 (the exactly dequantized f32 model differs
    // from the Q4_1 one by 0.5-1.0 too). Greedy tokens are compared up to the first step where
    // the original's own top-1/top-2 gap is below 0.3; p1 and p3 have such steps within 16
    // tokens (0.23 at step 5, 0.01 at step 13); the others must agree for all 16.
    for p in llamacpp_prompts().iter().take(5) {
        let name = p["name"].as_str().unwrap();
        let ids = ids(&p["prompt_ids"]);
        let (want, margins) = greedy(&orig, &ids, 16);
        let (got, _) = greedy(&q8, &ids, 16);
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let sure = margins.iter().position(|&m| m < 0.3).unwrap_or(16);
        let (a, b) = (last_logits(&orig, &ids), last_logits(&q8, &ids));
        eprintln!(
            "{name}: Q8_0 greedy = Q4_1 greedy for {agree}/16 tokens (required {sure}), \
             prompt logits max|d| {:.3}",
            max_abs_diff(&a, &b)
        );
        assert_eq!(argmax(&a), argmax(&b), "{name}: next token differs");
        assert!(agree >= sure, "{name}: differs at step {agree} of {want:?}");
    }
}

#[test]
fn exact_weights_requantize_to_the_original_q4_1_file() {
    // Q4_1 -> F32 is exact; F32 -> Q4_1 with llama.cpp's type policy must then give back the
    // blocks llama-quantize wrote, including its choice of Q8_0 for the tied embedding
    // (Q6_K wanted, 576 not a multiple of 256).
    let dir = tempfile::tempdir().unwrap();
    let src = llama3_testutil::default_model();
    let (f32_path, r32) = convert(&src, QuantType::F32, dir.path());
    assert!(r32.tensors.iter().all(|t| t.target == "F32"));
    let (q41_path, r41) = convert(&f32_path, QuantType::Q4_1, dir.path());
    assert!(r41.warnings.is_empty(), "{:?}", r41.warnings);
    let embd = r41.tensors.iter().find(|t| t.name == "token_embd.weight");
    let embd = embd.unwrap();
    assert_eq!(
        (embd.target.as_str(), embd.wanted.as_deref()),
        ("Q8_0", Some("Q6_K"))
    );

    let (a, b) = (gguf_header(&src), gguf_header(&q41_path));
    assert_eq!(a.tensor_infos.len(), b.tensor_infos.len());
    let mut fa = std::fs::File::open(&src).unwrap();
    let mut fb = std::fs::File::open(&q41_path).unwrap();
    for name in a.tensor_infos.keys() {
        let x = a.tensor(&mut fa, name, &Device::Cpu).unwrap();
        let y = b.tensor(&mut fb, name, &Device::Cpu).unwrap();
        assert_eq!(x.dtype(), y.dtype(), "{name}");
        assert!(
            x.data().unwrap() == y.data().unwrap(),
            "{name}: blocks differ"
        );
    }
    // Every key kept with its value; file type set.
    for (k, v) in &a.metadata {
        if k != "general.file_type" {
            assert_eq!(format!("{:?}", b.metadata[k]), format!("{v:?}"), "{k}");
        }
    }
    assert_eq!(format!("{:?}", b.metadata["general.file_type"]), "U32(3)");
    let c32 = gguf_header(&f32_path);
    assert_eq!(format!("{:?}", c32.metadata["general.file_type"]), "U32(0)");
    assert_eq!(
        format!("{:?}", c32.metadata["general.quantization_version"]),
        "U32(2)"
    );
}

#[test]
fn q4_k_of_the_default_model_falls_back_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = convert(
        &llama3_testutil::default_model(),
        QuantType::Q4K,
        dir.path(),
    );
    let count = |wanted: &str, target: &str| {
        report
            .fallbacks()
            .filter(|t| t.wanted.as_deref() == Some(wanted) && t.target == target)
            .count()
    };
    // Rows of 576 (= 2.25 * 256) fall back as llama-quantize's tensor_type_fallback does;
    // ffn_down rows are 1536 = 6 * 256 and stay K-quants (Q6_K in "more bits" layers).
    assert_eq!(
        count("Q4_K", "Q5_0"),
        6 * 30 - 14,
        "q, k, v, output, gate, up"
    );
    assert_eq!(count("Q6_K", "Q8_0"), 14, "attn_v of use_more_bits layers");
    assert_eq!(report.fallbacks().count(), 166 + 14);
    let t = |n: &str| {
        report
            .tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .target
            .clone()
    };
    assert_eq!(t("blk.4.ffn_down.weight"), "Q4_K");
    assert_eq!(t("blk.5.ffn_down.weight"), "Q6_K");
    assert_eq!(t("token_embd.weight"), "Q8_0");
    assert_eq!(
        format!("{:?}", gguf_header(&out).metadata["general.file_type"]),
        "U32(15)"
    );

    let l = open(&out);
    let p1 = &llamacpp_prompts()[0];
    let (ids, _) = greedy(&l, &ids(&p1["prompt_ids"]), 8);
    let text = l.tokenizer.as_ref().unwrap().decode(&ids, false).unwrap();
    eprintln!("q4_k p1 continuation: {text:?}");
    assert_eq!(ids[0], 7042, "first token of p1 must be \" Paris\"");
}

#[test]
fn f16_of_the_default_model_keeps_tokenizer_and_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let src = llama3_testutil::default_model();
    let (out, _) = convert(&src, QuantType::F16, dir.path());
    let (orig, conv) = (open(&src), open(&out));
    let (a, b) = (orig.tokenizer.unwrap(), conv.tokenizer.unwrap());
    for p in llamacpp_prompts() {
        let name = p["name"].as_str().unwrap();
        let text =
            std::fs::read_to_string(golden(&format!("llamacpp/prompts/{name}.txt"))).unwrap();
        assert_eq!(
            b.encode(&text, true, true).unwrap(),
            ids(&p["prompt_ids"]),
            "{name}"
        );
    }
    let src_template = a.chat_template().unwrap().source();
    assert_eq!(b.chat_template().unwrap().source(), src_template);
    assert_eq!(
        std::fs::read_to_string(golden("llamacpp/chat_template.jinja")).unwrap(),
        src_template
    );
    assert_eq!(
        (b.bos_id(), b.eos_id(), b.adds_bos()),
        (a.bos_id(), a.eos_id(), a.adds_bos())
    );
    assert_eq!(
        conv.info.tensor_types,
        [("F16".into(), 211), ("F32".into(), 61)]
    );
}

/// HF golden model `name` converted to `ty`, and its logits on the golden ids.
fn hf_logits(name: &str, ty: QuantType) -> (Vec<f32>, Vec<f32>, Content) {
    let g = tensors(&golden(&format!("hf/{name}/golden.safetensors")));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let want: Vec<f32> = g["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = convert(&golden(&format!("hf/{name}/model")), ty, dir.path());
    assert!(
        report.warnings.iter().any(|w| w.contains("no tokenizer")),
        "{:?}",
        report.warnings
    );
    let l = open(&out);
    assert!(l.tokenizer.is_none());
    let got = l.model.forward(&ids, None, Logits::All).unwrap();
    (
        got.flatten_all().unwrap().to_vec1().unwrap(),
        want,
        gguf_header(&out),
    )
}

#[test]
fn hf_golden_models_to_f32_gguf_give_transformers_logits() {
    for name in ["gqa", "mha", "llama3"] {
        let (got, want, h) = hf_logits(name, QuantType::F32);
        let d = max_abs_diff(&got, &want);
        eprintln!("{name}: f32 GGUF logits max|d| {d:.2e}");
        assert!(
            d <= 1e-4,
            "{name}: f32 GGUF logits differ from transformers by {d}"
        );
        let has = |t: &str| h.tensor_infos.contains_key(t);
        // gqa is untied; llama3 is tied and uses Llama 3 RoPE scaling (rope_freqs.weight).
        assert_eq!(
            has("output.weight"),
            name == "gqa" || name == "mha",
            "{name}"
        );
        assert_eq!(has("rope_freqs.weight"), name == "llama3", "{name}");
        assert!(matches!(h.metadata["tokenizer.ggml.model"], Value::String(ref s) if s == "none"));
    }
}

#[test]
fn hf_golden_models_to_f16_and_bf16_stay_close() {
    // f16 keeps 11 significant bits, bf16 8: weights of these random models (|w| ~ 0.02) move by
    // ~1e-5 / ~1e-4, logits (|l| ~ 0.1-1) by a few 1e-4 / 1e-3 (measured: see the eprintln).
    for name in ["gqa", "mha", "llama3"] {
        for (ty, bound) in [(QuantType::F16, 2e-3), (QuantType::BF16, 2e-2)] {
            let (got, want, _) = hf_logits(name, ty);
            let d = max_abs_diff(&got, &want);
            eprintln!("{name}: {ty} GGUF logits max|d| {d:.2e} (bound {bound:.0e})");
            assert!(d <= bound, "{name}: {ty} logits differ by {d}");
        }
    }
}

/// Logits of every position for `ids` (1, T).
fn all_logits(path: &Path, ids: &Tensor) -> Vec<f32> {
    let l = open(path);
    let out = l.model.forward(ids, None, Logits::All).unwrap();
    out.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn rope_scaling_survives_conversion_at_long_context() {
    // RoPE scalings differ only far from position 0: 1000 positions. Llama 3 scaling becomes
    // rope_freqs.weight (convert_hf_to_gguf's formula), linear scaling llama.rope.scaling.*;
    // the GGUF must give what the HF directory gives.
    let ids: Vec<u32> = (0..1000)
        .map(|i| ((i * 7919 + 13) % 381 + 3) as u32)
        .collect();
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let llama3 = golden("hf/llama3/model");
    let (out, _) = convert(&llama3, QuantType::F32, tmp.path());
    let d = max_abs_diff(&all_logits(&llama3, &ids), &all_logits(&out, &ids));
    eprintln!("llama3 scaling, 1000 positions: HF vs GGUF max|d| {d:.2e}");
    assert!(d <= 1e-3, "llama3 rope scaling: {d}");

    // mha with linear scaling (factor 4) added to its config.
    let hf = tmp.path().join("mha-linear");
    std::fs::create_dir(&hf).unwrap();
    let mha = golden("hf/mha/model");
    std::fs::copy(mha.join("model.safetensors"), hf.join("model.safetensors")).unwrap();
    let mut cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(mha.join("config.json")).unwrap()).unwrap();
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "linear", "factor": 4.0,
        "rope_theta": cfg["rope_parameters"]["rope_theta"]});
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    // mha: vocab 300, max_position_embeddings 256.
    let ids: Vec<u32> = (0..256)
        .map(|i| ((i * 7919 + 13) % 297 + 3) as u32)
        .collect();
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let (out, _) = convert(&hf, QuantType::F32, tmp.path());
    let h = gguf_header(&out);
    assert!(matches!(&h.metadata["llama.rope.scaling.type"], Value::String(s) if s == "linear"));
    let scaled = all_logits(&hf, &ids);
    let d = max_abs_diff(&scaled, &all_logits(&out, &ids));
    eprintln!("linear scaling, 256 positions: HF vs GGUF max|d| {d:.2e}");
    assert!(d <= 1e-4, "linear rope scaling: {d}");
    let plain = all_logits(&mha, &ids);
    assert!(
        max_abs_diff(&scaled, &plain) > 1e-2,
        "scaling must matter here"
    );
}
