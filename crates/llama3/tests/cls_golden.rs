//! Acceptance 2 of the PEFT issue: `LlamaForSequenceClassification` logits (HF transformers,
//! ../shared/golden/hf/*/cls) on a right-padded batch (pad id 0, lengths 12, 7, 3).

use candle_core::DType;
use llama3::classify::Classifier;
use llama3::loader::LoadOptions;
use llama3_testutil::{golden, max_abs_diff, tensors};

fn check(name: &str) {
    let g = tensors(&golden(&format!("hf/{name}/cls_golden.safetensors")));
    let (cls, _) =
        Classifier::load(&golden(&format!("hf/{name}/cls")), &LoadOptions::default()).unwrap();
    assert_eq!(cls.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
    assert_eq!(cls.pad_token_id, 0);
    let ids = g["cls_input_ids"].to_dtype(DType::U32).unwrap();
    let got = cls.forward(&ids).unwrap();
    assert_eq!(got.dims(), [3, 3]);
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = g["cls_logits"].flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!("{name}: classifier logits max |diff| {d:.2e}");
    assert!(d <= 1e-4, "{name}: classifier logits differ by {d}");

    // Rows batched unpadded one by one give the same (causal attention ignores right pads).
    let rows: Vec<Vec<u32>> = ids
        .to_vec2::<u32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().filter(|&i| i != 0).collect())
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let one = cls
            .batch(std::slice::from_ref(r), &candle_core::Device::Cpu)
            .unwrap();
        let v: Vec<f32> = cls
            .forward(&one)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            max_abs_diff(&v, &want[i * 3..i * 3 + 3]) <= 1e-4,
            "{name} row {i}"
        );
    }
}

/// `Classifier::probabilities` (what `classify eval|predict` run): unpadded rows batched by
/// length, two at a time, come back in their own order as HF's softmax; `argmax` picks the
/// label of the largest logit.
#[test]
fn probabilities_are_hf_softmax_in_row_order() {
    let g = tensors(&golden("hf/gqa/cls_golden.safetensors"));
    let (cls, _) = Classifier::load(&golden("hf/gqa/cls"), &LoadOptions::default()).unwrap();
    let ids = g["cls_input_ids"].to_dtype(DType::U32).unwrap();
    // Lengths 12, 7, 3: the sort by length reverses them, and a batch of two splits them.
    let rows: Vec<Vec<u32>> = ids
        .to_vec2::<u32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().filter(|&i| i != 0).collect())
        .collect();
    let mut calls = vec![];
    let probs = cls
        .probabilities(&rows, 2, &mut |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls, [(2, 3), (3, 3)]);
    let logits: Vec<Vec<f32>> = g["cls_logits"].to_vec2().unwrap();
    for (i, (p, l)) in probs.iter().zip(&logits).enumerate() {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = l.iter().map(|v| (v - m).exp()).sum();
        let want: Vec<f32> = l.iter().map(|v| (v - m).exp() / z).collect();
        assert!(max_abs_diff(p, &want) <= 1e-4, "row {i}: {p:?} vs {want:?}");
        assert_eq!(
            llama3::classify::argmax(p),
            llama3::classify::argmax(l),
            "row {i}"
        );
    }
    let err = cls.probabilities(&[vec![5], vec![]], 2, &mut |_, _| {});
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("text 2 has no tokens"));
}

#[test]
fn gqa_classifier() {
    check("gqa");
}

#[test]
fn llama3_classifier() {
    check("llama3");
}

#[test]
fn mha_classifier() {
    check("mha");
}

#[test]
fn a_causal_lm_directory_is_not_a_classifier() {
    let e = Classifier::load(&golden("hf/gqa/model"), &LoadOptions::default())
        .err()
        .expect("no score head")
        .to_string();
    assert!(e.contains("id2label") || e.contains("score.weight"), "{e}");
}

/// A LoRA adapter that PEFT itself saved with task_type SEQ_CLS (LoRA on q/v/down plus the
/// `score` head in modules_to_save; `scripts/make_peft_seq_cls.py`) on the tiny GQA causal
/// LM: base + adapter give PEFT's logits on a right-padded batch.
#[test]
fn peft_seq_cls_adapter_gives_peft_logits() {
    use llama3::peft::Adapter;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/peft_seq_cls");
    let g = tensors(&dir.join("golden.safetensors"));
    let adapter = Adapter::load(&dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(adapter.config.task_type(), Some("SEQ_CLS"));
    assert_eq!(adapter.saved.keys().collect::<Vec<_>>(), ["score.weight"]);
    let base = || {
        llama3::loader::load(&golden("hf/gqa/model"), &LoadOptions::default())
            .unwrap()
            .model
    };

    // A language model refuses it (its head is a classifier's), with a hint.
    let e = adapter.apply(&mut base(), 1.0).unwrap_err().to_string();
    assert!(e.contains("classif"), "{e}");

    let cls = Classifier::with_adapter(base(), None, &adapter, None).unwrap();
    assert_eq!(cls.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
    assert_eq!(cls.pad_token_id, 0); // the base config's, as HF's classifier inherits it
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let logits = |c: &Classifier| -> Vec<f32> {
        c.forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let got = logits(&cls);
    let want: Vec<f32> = g["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!("PEFT SEQ_CLS adapter: logits max |diff| {d:.2e}");
    assert!(d <= 1e-4, "logits differ from PEFT's by {d}");

    // Without the LoRA part the logits move: the adapter's matrices are applied.
    let mut no_lora = Classifier::with_adapter(base(), None, &adapter, None).unwrap();
    for (_, lin) in no_lora.model.linears_mut() {
        lin.lora.clear();
    }
    assert!(max_abs_diff(&logits(&no_lora), &want) > 1e-2);

    // Label names are checked against the head.
    let two = Some(vec!["a".to_string(), "b".to_string()]);
    assert!(Classifier::with_adapter(base(), None, &adapter, two).is_err());
    // A causal-LM adapter (no head) is not a classifier.
    let lm = Adapter::load(&golden("hf/gqa/lora"), &candle_core::Device::Cpu).unwrap();
    let e = Classifier::with_adapter(base(), None, &lm, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("SEQ_CLS"), "{e}");
}
