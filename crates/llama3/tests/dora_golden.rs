//! DoRA adapters made by HF PEFT (`scripts/make_peft_goldens.py`: r=4, alpha=8 on all seven
//! projections of the tiny GQA model, random A, B and magnitudes) give PEFT's logits; merged
//! into the weights they give the unmerged logits and PEFT's own merge; saved here they keep
//! PEFT's key names and load back identically.

use candle_core::{DType, Device, Tensor};
use llama3::loader::{load, LoadOptions};
use llama3::model::{Llama, Logits};
use llama3::peft::{self, Adapter};
use llama3_testutil::{golden, max_abs_diff, tensors};

const TOL: f32 = 1e-4;

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The logits of the positions the golden's attention mask keeps (right padding), (B, T, V).
fn kept(logits: &Tensor, mask: &Tensor) -> Vec<f32> {
    let (b, t, _) = logits.dims3().unwrap();
    let mask = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let mut out = Vec::new();
    for (i, row) in mask.iter().enumerate().take(b) {
        for (j, &m) in row.iter().enumerate().take(t) {
            if m == 1 {
                out.extend(
                    logits
                        .get(i)
                        .unwrap()
                        .get(j)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
            }
        }
    }
    out
}

fn run(m: &Llama, ids: &Tensor) -> Tensor {
    m.forward(ids, None, Logits::All).unwrap()
}

#[test]
fn peft_dora_adapter_gives_peft_logits_merged_or_not() {
    let dir = data("peft_dora");
    let g = tensors(&dir.join("golden.safetensors"));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &g["attention_mask"];
    let want = kept(&g["logits"], mask);
    let base = load(&golden("hf/gqa/model"), &LoadOptions::default())
        .unwrap()
        .model;
    let adapter = Adapter::load(&dir, &Device::Cpu).unwrap();
    assert!(adapter.config.use_dora);
    assert_eq!(adapter.magnitudes.len(), 14);
    let mut m = base.clone();
    assert_eq!(adapter.apply(&mut m, 1.0).unwrap(), 14);
    let d = max_abs_diff(&kept(&run(&m, &ids), mask), &want);
    eprintln!("DoRA logits max |diff| {d:.2e}");
    assert!(d <= TOL, "DoRA logits differ from PEFT's by {d}");

    // Without the magnitudes (plain LoRA with the same A and B) the output is another one, so
    // the magnitudes are what the check above tests.
    let mut plain = base.clone();
    adapter.apply(&mut plain, 1.0).unwrap();
    for (_, lin) in plain.linears_mut() {
        for l in lin.lora.iter_mut() {
            l.dora = None;
        }
    }
    assert!(max_abs_diff(&kept(&run(&plain, &ids), mask), &want) > 1e-3);

    // Merged: no adapters left, the same logits as unmerged and as PEFT's merge_and_unload.
    let mut merged = m.clone();
    peft::merge(&mut merged).unwrap();
    assert!(merged.linears_mut().iter().all(|(_, l)| l.lora.is_empty()));
    let got = kept(&run(&merged, &ids), mask);
    let d = max_abs_diff(&got, &kept(&run(&m, &ids), mask));
    eprintln!("DoRA merged vs unmerged max |diff| {d:.2e}");
    assert!(d <= TOL, "merged DoRA differs from unmerged by {d}");
    assert!(max_abs_diff(&got, &kept(&g["merged_logits"], mask)) <= TOL);

    // Saved here: PEFT's names and config, and it loads back to the same output.
    let out = tempfile::tempdir().unwrap();
    peft::save(&mut m, &adapter.config, out.path()).unwrap();
    let again = Adapter::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(again.magnitudes.len(), 14);
    assert!(again.config.use_dora);
    let mut m2 = base.clone();
    again.apply(&mut m2, 1.0).unwrap();
    assert!(max_abs_diff(&kept(&run(&m2, &ids), mask), &want) <= TOL);
    let keys = |p: &std::path::Path| {
        let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut k: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(keys(out.path()), keys(&dir));
}

/// An adapter that says use_dora but lacks a magnitude is refused with the module named.
#[test]
fn dora_without_magnitudes_is_refused() {
    let dir = data("peft_dora");
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("adapter_config.json"),
        out.path().join("adapter_config.json"),
    )
    .unwrap();
    let t = tensors(&dir.join("adapter_model.safetensors"));
    let kept: Vec<(String, Tensor)> = t
        .into_iter()
        .filter(|(k, _)| !k.contains("layers.1.self_attn.q_proj.lora_magnitude_vector"))
        .collect();
    llama3::weights::safetensors::save(&kept, &out.path().join("adapter_model.safetensors"))
        .unwrap();
    let err = Adapter::load(out.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layers.1.self_attn.q_proj") && err.contains("magnitude"),
        "{err}"
    );
}
