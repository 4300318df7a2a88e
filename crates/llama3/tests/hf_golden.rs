//! Acceptance 1 of the engine issue: logits and greedy generation equal HF transformers'
//! on tiny random Llama models (../shared/golden/hf, made by make_hf_golden.py).

use candle_core::{DType, Tensor};
use llama3::generate::{GenerateOptions, Generator, Session};
use llama3::loader::{load, LoadOptions};
use llama3::model::Logits;
use llama3::sample::SamplingParams;
use llama3_testutil::{golden, max_abs_diff, tensors};

const TOL: f32 = 1e-4;

fn check_model(name: &str, model_dir: &str) {
    check(name, model_dir, false)
}

/// `stacked`: the q/k/v and gate/up weights stacked as on a GPU (`model::Stack`).
fn check(name: &str, model_dir: &str, stacked: bool) {
    let g = tensors(&golden(&format!("hf/{name}/golden.safetensors")));
    let mut loaded = load(
        &golden(&format!("hf/{name}/{model_dir}")),
        &LoadOptions::default(),
    )
    .unwrap();
    if stacked {
        for layer in loaded.model.layers.iter_mut() {
            layer.stack_projections().unwrap();
            assert!(layer.self_attn.qkv.is_some() && layer.mlp.gate_up.is_some());
        }
    }
    let model = &loaded.model;
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap(); // (2, T)
    let want = g["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (b, t) = ids.dims2().unwrap();

    // Full forward without a cache (the training path).
    let got = model.forward(&ids, None, Logits::All).unwrap();
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(
        d <= TOL,
        "{name}/{model_dir}: no-cache logits differ by {d}"
    );

    // Through the KV cache: a prefix as one batch, then one token at a time.
    let mut cache = model.new_cache(b, t).unwrap();
    let split = 5;
    let mut rows = vec![model
        .forward(
            &ids.narrow(1, 0, split).unwrap(),
            Some(&mut cache),
            Logits::All,
        )
        .unwrap()];
    for i in split..t {
        rows.push(
            model
                .forward(&ids.narrow(1, i, 1).unwrap(), Some(&mut cache), Logits::All)
                .unwrap(),
        );
    }
    let got = Tensor::cat(&rows, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "{name}/{model_dir}: cached logits differ by {d}");

    // Greedy generation (HF generate, min_new_tokens = new tokens, so no early EOS).
    let prompt: Vec<u32> = g["gen_prompt"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<u32> = g["gen_greedy"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let opts = GenerateOptions {
        max_tokens: want.len() - prompt.len(),
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    let mut session = Session::new(model, want.len()).unwrap();
    let gen: Vec<u32> = Generator::new(model, &mut session, &prompt, opts)
        .unwrap()
        .map(|s| s.unwrap().token)
        .collect();
    let mut got = prompt.clone();
    got.extend(gen);
    assert_eq!(got, want, "{name}/{model_dir}: greedy tokens differ");
}

/// The stacked projections a GPU load builds, on the CPU: the same logits, cached logits and
/// greedy tokens as HF.
#[test]
fn stacked_projections_match_hf() {
    for name in ["gqa", "llama3", "mha"] {
        check(name, "model", true);
    }
}

#[test]
fn gqa_untied() {
    check_model("gqa", "model");
}

#[test]
fn llama3_rope_scaling_tied() {
    check_model("llama3", "model");
}

#[test]
fn llama3_legacy_config_keys() {
    check_model("llama3", "model_legacy_config");
}

#[test]
fn mha_eps_1e6() {
    check_model("mha", "model");
}

#[test]
fn bf16_weights_stay_close() {
    // The same checkpoint computed in bf16: a loose bound, to show the dtype path works.
    let g = tensors(&golden("hf/gqa/golden.safetensors"));
    let opts = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    let loaded = load(&golden("hf/gqa/model"), &opts).unwrap();
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let got = loaded
        .model
        .forward(&ids, None, Logits::All)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = g["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 0.05, "bf16 logits differ by {d}");
}

#[test]
fn sharded_f16_checkpoint_loads() {
    // The gqa checkpoint split in two shards with model.safetensors.index.json, stored as f16
    // (as many Hub checkpoints are): loads, and the logits stay within f16 rounding of HF's.
    use std::collections::HashMap;
    let src = golden("hf/gqa/model");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let all = tensors(&src.join("model.safetensors"));
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].to_dtype(DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&shard, dir.path().join(&file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let g = tensors(&golden("hf/gqa/golden.safetensors"));
    let loaded = load(dir.path(), &LoadOptions::default()).unwrap();
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let got = loaded.model.forward(&ids, None, Logits::All).unwrap();
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = g["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 2e-3, "sharded f16 logits differ by {d}");
    assert!(d > 0.0, "f16 storage should round something");
}
