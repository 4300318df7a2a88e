//! GGUF's Q/K row layout: an HF checkpoint written to GGUF the way llama.cpp's
//! convert_hf_to_gguf.py does (Q/K rows permuted for interleaved RoPE pairs, tied head without
//! `output.weight`) must give HF transformers' logits after our loader converts it back.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use llama3::loader::{load, LoadOptions};
use llama3::model::Logits;
use llama3_testutil::{golden, max_abs_diff, tensors};

/// convert_hf_to_gguf.py `LlamaModel.permute`:
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn hf_to_gguf_file(name: &str, dtype: GgmlDType) -> tempfile::NamedTempFile {
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden(&format!("hf/{name}/model/config.json"))).unwrap(),
    )
    .unwrap();
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (nh, nkv) = (u("num_attention_heads"), u("num_key_value_heads"));
    let weights = tensors(&golden(&format!("hf/{name}/model/model.safetensors")));
    let mut qs: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in &weights {
        let gg = llama3::weights::names::hf_to_gguf(hf).unwrap();
        let t = if hf.ends_with("q_proj.weight") {
            permute(t, nh as usize)
        } else if hf.ends_with("k_proj.weight") {
            permute(t, nkv as usize)
        } else {
            t.clone()
        };
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        qs.push((
            gg,
            QTensor::quantize(&t.to_dtype(DType::F32).unwrap(), ty).unwrap(),
        ));
    }
    let rope = cfg.get("rope_parameters").unwrap_or(&cfg);
    let rope_theta = rope["rope_theta"].as_f64().unwrap_or(10000.0) as f32;
    if rope["rope_type"] == "llama3" {
        // convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: llama3 scaling as divisors.
        let f = |k: &str| rope[k].as_f64().unwrap() as f32;
        let (factor, lo, hi, old) = (
            f("factor"),
            f("low_freq_factor"),
            f("high_freq_factor"),
            f("original_max_position_embeddings"),
        );
        let dh = cfg["head_dim"].as_u64().unwrap() as usize;
        let factors: Vec<f32> = (0..dh / 2)
            .map(|i| {
                let freq = 1.0 / rope_theta.powf((2 * i) as f32 / dh as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < old / hi {
                    1.0
                } else if wavelen > old / lo {
                    factor
                } else {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect();
        let t = Tensor::new(factors, &candle_core::Device::Cpu).unwrap();
        qs.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        (
            "llama.context_length",
            Value::U32(u("max_position_embeddings")),
        ),
        ("llama.embedding_length", Value::U32(u("hidden_size"))),
        ("llama.block_count", Value::U32(u("num_hidden_layers"))),
        (
            "llama.feed_forward_length",
            Value::U32(u("intermediate_size")),
        ),
        ("llama.attention.head_count", Value::U32(nh)),
        ("llama.attention.head_count_kv", Value::U32(nkv)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        ("llama.rope.freq_base", Value::F32(rope_theta)),
        ("llama.vocab_size", Value::U32(u("vocab_size"))),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    gguf_file::write(f.as_file_mut(), &md_refs, &t_refs).unwrap();
    f
}

fn logits_of(path: &std::path::Path, ids: &Tensor) -> Vec<f32> {
    let l = load(path, &LoadOptions::default()).unwrap();
    let out = l.model.forward(ids, None, Logits::All).unwrap();
    out.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn f32_gguf_from_hf_matches_transformers() {
    for name in ["gqa", "mha", "llama3"] {
        let g = tensors(&golden(&format!("hf/{name}/golden.safetensors")));
        let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
        let want: Vec<f32> = g["logits"].flatten_all().unwrap().to_vec1().unwrap();
        let f = hf_to_gguf_file(name, GgmlDType::F32);
        let d = max_abs_diff(&logits_of(f.path(), &ids), &want);
        assert!(
            d <= 1e-4,
            "{name}: GGUF logits differ from transformers by {d}"
        );
    }
}

#[test]
fn q8_0_gguf_from_hf_stays_close() {
    // gqa's dims (64, 176) are not all multiples of 32; mha's (96, 192) are.
    let g = tensors(&golden("hf/mha/golden.safetensors"));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let want: Vec<f32> = g["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let f = hf_to_gguf_file("mha", GgmlDType::Q8_0);
    let got = logits_of(f.path(), &ids);
    let d = max_abs_diff(&got, &want);
    // Q8_0 weights and activations: errors of a few 1e-3 on logits of magnitude ~0.1.
    assert!(d < 2e-2, "Q8_0 GGUF logits differ from transformers by {d}");
}

#[test]
fn llama3_rope_scaling_agrees_with_gguf_rope_freqs_at_long_context() {
    // Differences between RoPE scalings show only far from position 0: 1000 positions, with
    // original_max_position_embeddings = 64. HF-config scaling (our `_compute_llama3_parameters`)
    // and GGUF `rope_freqs.weight` written by convert_hf_to_gguf's formula must agree.
    use candle_core::Device;
    use llama3::config::LlamaConfig;
    use llama3::weights::safetensors::SafetensorsSource;
    let dir = golden("hf/llama3/model");
    let t = 1000;
    let ids: Vec<u32> = (0..t).map(|i| ((i * 7919 + 13) % 381 + 3) as u32).collect();
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hf = logits_of(&dir, &ids);
    let f = hf_to_gguf_file("llama3", GgmlDType::F32);
    let gg = logits_of(f.path(), &ids);
    let d = max_abs_diff(&hf, &gg);
    assert!(
        d <= 1e-3,
        "HF rope_scaling vs GGUF rope_freqs differ by {d} over {t} positions"
    );

    // The same model without scaling gives different late logits: the check above can fail.
    let mut cfg = LlamaConfig::from_hf_file(&dir.join("config.json")).unwrap();
    cfg.rope_scaling = None;
    let src = SafetensorsSource::open_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let plain = llama3::Llama::load(&src, &cfg, None, &Device::Cpu).unwrap();
    let p: Vec<f32> = plain
        .forward(&ids, None, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = max_abs_diff(&hf, &p);
    assert!(
        d > 1e-2,
        "unscaled RoPE should differ at long context, max diff {d}"
    );
}
