//! Acceptance 1 of the PEFT issue: HF PEFT LoRA adapters (../shared/golden/hf/*/lora, r=4,
//! alpha=8 on all seven projections, B != 0) give PEFT's logits; merged weights give the same;
//! an adapter saved here has PEFT's key names and loads back identically.

use candle_core::{DType, Device, Tensor};
use llama3::loader::{load, LoadOptions};
use llama3::model::{Llama, Logits};
use llama3::peft::{self, Adapter};
use llama3_testutil::{golden, max_abs_diff, tensors};

const TOL: f32 = 1e-4;

fn logits(m: &Llama, ids: &Tensor) -> Vec<f32> {
    m.forward(ids, None, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn model(name: &str) -> Llama {
    load(
        &golden(&format!("hf/{name}/model")),
        &LoadOptions::default(),
    )
    .unwrap()
    .model
}

fn safetensors_keys(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut k: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

fn check(name: &str) {
    let g = tensors(&golden(&format!("hf/{name}/lora_golden.safetensors")));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let want = g["logits_lora"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let dir = golden(&format!("hf/{name}/lora"));
    let adapter = Adapter::load(&dir, &Device::Cpu).unwrap();
    let base = model(name);
    let n = 7 * base.config.num_hidden_layers;
    assert_eq!(adapter.weights.len(), n, "{name}: 7 modules per layer");
    let mut m = base.clone();
    assert_eq!(adapter.apply(&mut m, 1.0).unwrap(), n);
    let d = max_abs_diff(&logits(&m, &ids), &want);
    eprintln!("{name}: LoRA logits max |diff| {d:.2e}");
    assert!(d <= TOL, "{name}: LoRA logits differ by {d}");
    // The adapter changes the output (B != 0), so the check above is not vacuous.
    assert!(max_abs_diff(&logits(&base, &ids), &want) > 1e-3);

    // Merged into the weights: same logits, no adapters left.
    let mut merged = m.clone();
    peft::merge(&mut merged).unwrap();
    assert!(merged.linears_mut().iter().all(|(_, l)| l.lora.is_empty()));
    let d = max_abs_diff(&logits(&merged, &ids), &want);
    assert!(d <= TOL, "{name}: merged logits differ by {d}");

    // Saved here, loaded back: PEFT's key names, identical tensors and logits.
    let out = tempfile::tempdir().unwrap();
    peft::save(&mut m, &adapter.config, out.path()).unwrap();
    assert_eq!(
        safetensors_keys(&out.path().join(peft::WEIGHTS_FILE)),
        safetensors_keys(&dir.join(peft::WEIGHTS_FILE)),
        "{name}: key names differ from PEFT's"
    );
    let again = Adapter::load(out.path(), &Device::Cpu).unwrap();
    for (module, (a, b)) in &adapter.weights {
        let (a2, b2) = &again.weights[module];
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(a), v(a2), "{module} lora_A");
        assert_eq!(v(b), v(b2), "{module} lora_B");
    }
    let mut m2 = base.clone();
    again.apply(&mut m2, 1.0).unwrap();
    assert_eq!(
        logits(&m2, &ids),
        logits(&m, &ids),
        "{name}: reloaded adapter differs"
    );
}

#[test]
fn gqa_lora() {
    check("gqa");
}

#[test]
fn llama3_lora() {
    check("llama3");
}

#[test]
fn mha_lora() {
    check("mha");
}

/// The scale multiplies the update: weight 0 gives the base model, 2 doubles the update.
#[test]
fn adapter_weight_scales_the_update() {
    let g = tensors(&golden("hf/gqa/lora_golden.safetensors"));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let adapter = Adapter::load(&golden("hf/gqa/lora"), &Device::Cpu).unwrap();
    let base = model("gqa");
    let mut zero = base.clone();
    adapter.apply(&mut zero, 0.0).unwrap();
    assert!(max_abs_diff(&logits(&zero, &ids), &logits(&base, &ids)) < 1e-6);
    // Two copies at weight 1 equal one at weight 2.
    let (mut twice, mut double) = (base.clone(), base.clone());
    adapter.apply(&mut twice, 1.0).unwrap();
    adapter.apply(&mut twice, 1.0).unwrap();
    adapter.apply(&mut double, 2.0).unwrap();
    assert!(max_abs_diff(&logits(&twice, &ids), &logits(&double, &ids)) < 1e-5);
    assert_eq!(peft::parse_spec("a/b:0.5").unwrap(), ("a/b".into(), 0.5));
    assert_eq!(peft::parse_spec("c:d").unwrap(), ("c:d".into(), 1.0));
}

/// Adapters that would be applied wrongly are refused with the file and the reason.
#[test]
fn bad_adapters_are_clear_errors() {
    let src = golden("hf/gqa/lora");
    let dir = tempfile::tempdir().unwrap();
    let copy = |cfg: &str| {
        std::fs::copy(
            src.join(peft::WEIGHTS_FILE),
            dir.path().join(peft::WEIGHTS_FILE),
        )
        .unwrap();
        std::fs::write(dir.path().join(peft::CONFIG_FILE), cfg).unwrap();
    };
    let text = std::fs::read_to_string(src.join(peft::CONFIG_FILE)).unwrap();
    let err = |what: &str| {
        Adapter::load(dir.path(), &Device::Cpu)
            .err()
            .expect(what)
            .to_string()
    };

    copy(&text.replace("\"use_dora\": false", "\"use_dora\": true"));
    // DoRA is supported, but not without its magnitude vectors.
    assert!(err("dora").contains("lora_magnitude_vector"));
    copy("{not json");
    assert!(err("json").contains("adapter_config.json"));
    copy(&text);
    std::fs::write(dir.path().join(peft::WEIGHTS_FILE), b"garbage").unwrap();
    assert!(err("weights").contains("adapter_model.safetensors"));
    let missing = tempfile::tempdir().unwrap();
    assert!(Adapter::load(missing.path(), &Device::Cpu).is_err());

    // An adapter for another model shape.
    let adapter = Adapter::load(&golden("hf/mha/lora"), &Device::Cpu).unwrap();
    let mut m = model("gqa");
    let e = adapter.apply(&mut m, 1.0).unwrap_err().to_string();
    assert!(e.contains("lora_A"), "{e}");
}
