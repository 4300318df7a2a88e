//! Acceptance 2 of the PEFT issue: `LlamaForSequenceClassification` logits (HF transformers,
//! ../shared/golden/hf/*/cls) on a right-padded batch (pad id 0, lengths 12, 7, 3).

mod common;

use candle_core::DType;
use common::{golden, max_abs_diff, tensors};
use llama3::classify::Classifier;
use llama3::loader::LoadOptions;

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
