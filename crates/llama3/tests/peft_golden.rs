//! Adapters made by HF PEFT beyond plain LoRA (`scripts/make_peft_goldens.py`, on the tiny GQA
//! model) give PEFT's logits here, f32 within 1e-4:
//! - DoRA (r=4, alpha=8 on all seven projections, random A, B and magnitudes), merged or not
//!   (against PEFT's own merge too); saved here it keeps PEFT's key names and loads back;
//! - prompt tuning and prefix tuning (5 virtual tokens), with and without a KV cache.

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
    let d = max_abs_diff(&got, &kept(&g["merged_logits"], mask));
    eprintln!("DoRA merged vs PEFT's merge_and_unload max |diff| {d:.2e}");
    assert!(d <= TOL);

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

/// The logits of a prompt-learning adapter: the whole batch without a cache, then each row
/// token by token through a cache (the virtual tokens in its first rows), as generation runs.
fn check_virtual(name: &str, peft_type: &str) {
    let dir = data(name);
    let g = tensors(&dir.join("golden.safetensors"));
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &g["attention_mask"];
    // PEFT returns prompt tuning's logits for the virtual positions too: the last T are ours.
    let t = ids.dim(1).unwrap();
    let all = &g["logits"];
    let want = kept(&all.narrow(1, all.dim(1).unwrap() - t, t).unwrap(), mask);
    let base = load(&golden("hf/gqa/model"), &LoadOptions::default())
        .unwrap()
        .model;
    let mut m = base.clone();
    let applied = peft::apply_spec(&mut m, dir.to_str().unwrap()).unwrap();
    assert!(applied.contains(peft_type), "{applied}");
    assert_eq!(m.virtual_len(), 5);
    let got = kept(&run(&m, &ids), mask);
    let d = max_abs_diff(&got, &want);
    eprintln!("{peft_type} logits max |diff| {d:.2e}");
    assert!(d <= TOL, "{peft_type}: logits differ from PEFT's by {d}");
    assert!(max_abs_diff(&kept(&run(&base, &ids), mask), &want) > 1e-3);

    // Through a cache, one token at a time (and a chunk of 3 first).
    let ids2 = ids.to_vec2::<u32>().unwrap();
    let mut rows = Vec::new();
    for row in &ids2 {
        let mut cache = m.new_cache(1, 16).unwrap();
        assert_eq!((cache.len(), cache.pos(), cache.capacity()), (0, 5, 16));
        let first = m
            .forward_tokens(&row[..3], &mut cache, Logits::All)
            .unwrap();
        rows.push(first.squeeze(0).unwrap());
        for &tok in &row[3..] {
            let y = m.forward_tokens(&[tok], &mut cache, Logits::All).unwrap();
            rows.push(y.squeeze(0).unwrap());
        }
        assert_eq!((cache.len(), cache.pos()), (t, 5 + t));
        // Rewinding keeps the virtual tokens.
        cache.truncate(0);
        assert_eq!(cache.pos(), 5);
    }
    let cached = Tensor::cat(&rows, 0).unwrap().reshape((2, t, ())).unwrap();
    let d = max_abs_diff(&kept(&cached, mask), &want);
    eprintln!("{peft_type} cached logits max |diff| {d:.2e}");
    assert!(
        d <= TOL,
        "{peft_type}: cached logits differ from PEFT's by {d}"
    );
}

#[test]
fn peft_prompt_tuning_gives_peft_logits() {
    check_virtual("peft_prompt", "PROMPT_TUNING");
}

#[test]
fn peft_prefix_tuning_gives_peft_logits() {
    check_virtual("peft_prefix", "PREFIX_TUNING");
}

/// A prompt adapter for another model's width, a scale on it, or two at once: clear errors.
#[test]
fn prompt_adapters_refuse_what_cannot_work() {
    let mut m = load(&golden("hf/gqa/model"), &LoadOptions::default())
        .unwrap()
        .model;
    let dir = data("peft_prefix");
    let spec = format!("{}:0.5", dir.display());
    let err = peft::apply_spec(&mut m, &spec).unwrap_err().to_string();
    assert!(err.contains("scale applies to LoRA"), "{err}");
    peft::apply_spec(&mut m, dir.to_str().unwrap()).unwrap();
    let err = peft::apply_spec(&mut m, data("peft_prompt").to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("one such adapter at a time"), "{err}");
    let mha = load(&golden("hf/mha/model"), &LoadOptions::default())
        .unwrap()
        .model;
    let mut mha = mha;
    let err = peft::apply_spec(&mut mha, dir.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit this model"), "{err}");
}
