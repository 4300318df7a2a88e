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
