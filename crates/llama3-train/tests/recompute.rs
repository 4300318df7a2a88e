//! Gradient checkpointing gives PyTorch's gradients (the training goldens) for full training,
//! and the same LoRA gradients as the plain backward.

use candle_core::DType;
use llama3::loader::{load, LoadOptions};
use llama3::peft::{self, LoraConfig};
use llama3_testutil::{golden, max_abs, max_abs_diff, tensors, to_vec};
use llama3_train::recompute::loss_and_grads;
use llama3_train::{causal_lm_loss, counted_labels, Grads};

#[test]
fn recomputed_gradients_equal_pytorch() {
    for name in ["gqa", "llama3", "mha"] {
        let g = tensors(&golden(&format!("hf/{name}/train_golden.safetensors")));
        let mut model = load(
            &golden(&format!("hf/{name}/model")),
            &LoadOptions::default(),
        )
        .unwrap()
        .model;
        let params = model.trainable_params().unwrap();
        let ids = g["train_input_ids"].to_dtype(DType::U32).unwrap();
        let labels = &g["train_labels"];
        let n = counted_labels(labels).unwrap();
        let mut grads = Grads::new(params.len());
        let loss = loss_and_grads(&model, &ids, labels, n, &params, &mut grads).unwrap();
        let want = g["loss"].to_scalar::<f32>().unwrap() as f64;
        assert!(
            (loss - want).abs() / want <= 1e-5,
            "{name}: loss {loss} vs {want}"
        );
        for (i, (p, _)) in params.iter().enumerate() {
            let got = to_vec(
                grads
                    .get(i)
                    .unwrap_or_else(|| panic!("{name}: no grad for {p}")),
            );
            let want = to_vec(&g[&format!("grad.{p}")]);
            let d = max_abs_diff(&got, &want);
            let tol = 1e-5 + 1e-3 * max_abs(&want);
            assert!(d <= tol, "{name}: grad {p} differs by {d} (tol {tol})");
        }
    }
}

#[test]
fn recomputed_lora_gradients_equal_the_plain_backward() {
    let g = tensors(&golden("hf/llama3/train_golden.safetensors"));
    let mut model = load(&golden("hf/llama3/model"), &LoadOptions::default())
        .unwrap()
        .model;
    let cfg = LoraConfig::new(4, 8.0, peft::TARGETS, false);
    peft::add_adapters(&mut model, &cfg, peft::TARGETS, 1).unwrap();
    // B = 0 at init would give A no gradient: start from a trained-looking B.
    for (_, lin) in model.linears_mut() {
        for l in lin.lora.iter_mut() {
            l.b = candle_core::Tensor::ones(l.b.dims(), DType::F32, &candle_core::Device::Cpu)
                .unwrap()
                .affine(0.01, 0.0)
                .unwrap();
        }
    }
    let params = peft::trainable(&mut model).unwrap();
    let ids = g["train_input_ids"].to_dtype(DType::U32).unwrap();
    let labels = &g["train_labels"];
    let plain = causal_lm_loss(&model, &ids, labels).unwrap();
    let mut want = Grads::new(params.len());
    want.accumulate(&params, &plain.backward().unwrap())
        .unwrap();
    let mut got = Grads::new(params.len());
    let n = counted_labels(labels).unwrap();
    let loss = loss_and_grads(&model, &ids, labels, n, &params, &mut got).unwrap();
    let plain = plain.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (loss - plain).abs() <= 1e-5 * plain,
        "loss {loss} vs {plain}"
    );
    for (i, (p, _)) in params.iter().enumerate() {
        let (a, b) = (to_vec(got.get(i).unwrap()), to_vec(want.get(i).unwrap()));
        let d = max_abs_diff(&a, &b);
        assert!(d <= 1e-5 + 1e-3 * max_abs(&b), "{p}: differs by {d}");
    }
}
