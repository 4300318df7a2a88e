//! A trained model written as an HF directory loads back in our engine with bit-identical
//! logits (first half of acceptance 6 of the training issue), tied heads staying tied.

use candle_core::DType;
use llama3::loader::{load, LoadOptions};
use llama3::model::Logits;
use llama3::weights::hf_dir::write_model_dir;
use llama3_testutil::{golden, tensors, to_vec};
use llama3_train::{causal_lm_loss, AdamW, AdamWConfig, Grads};

fn round_trip(name: &str) {
    let g = tensors(&golden(&format!("hf/{name}/train_golden.safetensors")));
    let loaded = load(
        &golden(&format!("hf/{name}/model")),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut model = loaded.model;
    // One training step, so the saved weights are not the checkpoint's.
    let params = model.trainable_params().unwrap();
    let ids = g["train_input_ids"].to_dtype(DType::U32).unwrap();
    let loss = causal_lm_loss(&model, &ids, &g["train_labels"]).unwrap();
    let mut grads = Grads::new(params.len());
    grads
        .accumulate(&params, &loss.backward().unwrap())
        .unwrap();
    let mut opt = AdamW::new(params, AdamWConfig::default()).unwrap();
    opt.step(&grads, 1e-2).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_model_dir(dir.path(), &model, loaded.tokenizer.as_ref()).unwrap();
    let back = load(dir.path(), &LoadOptions::default()).unwrap().model;
    assert_eq!(back.config, model.config, "{name}: config changed");
    // The in-memory model as inference runs it (no gradient graph, like the reloaded one).
    let want = to_vec(&model.detached().forward(&ids, None, Logits::All).unwrap());
    let got = to_vec(&back.forward(&ids, None, Logits::All).unwrap());
    assert!(want == got, "{name}: logits differ after save and load");
}

#[test]
fn untied_round_trip() {
    round_trip("gqa");
}

#[test]
fn tied_round_trip() {
    round_trip("llama3");
}
