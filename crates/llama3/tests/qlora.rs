//! QLoRA gradients (acceptance 3 of the PEFT issue, the check part): LoRA adapters on a tiny
//! model whose projections are GGUF blocks (Q4_1 attention, Q8_0 MLP) get gradients through
//! the quantized matmuls that (a) match a finite-difference estimate of the quantized model's
//! own loss and (b) match the exact gradients of the same model held dense (its weights
//! dequantized), up to the activation quantization the forward applies.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var, D};
use llama3::loader::{load, LoadOptions};
use llama3::model::{LinearWeight, Llama, Logits};
use llama3::peft::{self, LoraConfig};
use llama3_testutil::golden;

/// The gqa golden model with q/k/v/o in Q4_1 and gate/up in Q8_0 (down_proj's rows of 176
/// are not whole blocks and stay dense), and its dense twin with the same dequantized values.
fn models() -> (Llama, Llama) {
    let mut q = load(&golden("hf/gqa/model"), &LoadOptions::default())
        .unwrap()
        .model;
    for (name, lin) in q.linears_mut() {
        let ty = if name.contains("self_attn") {
            GgmlDType::Q4_1
        } else if name.ends_with("gate_proj") || name.ends_with("up_proj") {
            GgmlDType::Q8_0
        } else {
            continue;
        };
        let LinearWeight::Dense(w) = &lin.weight else {
            panic!("dense expected")
        };
        let qt = Arc::new(QTensor::quantize(w, ty).unwrap());
        lin.weight = LinearWeight::Quantized(candle_core::quantized::QMatMul::QTensor(qt));
    }
    let mut dense = q.clone();
    dense.dequantize().unwrap();
    (q, dense)
}

/// Adapters r=4 on all seven projections with a nonzero B (so A gets gradients too).
fn with_adapters(m: &Llama) -> (Llama, Vec<(String, Var)>) {
    let mut m = m.clone();
    let cfg = LoraConfig::new(4, 8.0, peft::TARGETS, false);
    let targets = &peft::TARGETS[..7];
    assert_eq!(peft::add_adapters(&mut m, &cfg, targets, 3).unwrap(), 14);
    for (_, lin) in m.linears_mut() {
        for l in lin.lora.iter_mut() {
            l.b = (noise(l.b.dims(), 5) * 0.1).unwrap();
        }
    }
    let params = peft::trainable(&mut m).unwrap();
    (m, params)
}

/// Mean next-token NLL of a fixed sequence.
fn loss(m: &Llama) -> Tensor {
    let ids: Vec<u32> = (0..16).map(|i| (i * 37 + 11) % 512).collect();
    let x = Tensor::new(&ids[..15], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let y = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let logits = m
        .forward(&x, None, Logits::All)
        .unwrap()
        .squeeze(0)
        .unwrap(); // (15, V)
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let picked = logp.gather(&y.unsqueeze(1).unwrap(), 1).unwrap();
    (picked.mean_all().unwrap() * -1.0).unwrap()
}

/// Seeded uniform(-1, 1) values (the test must not depend on candle's unseeded CPU RNG).
fn noise(dims: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn qlora_gradients_flow_through_quantized_matmuls() {
    let (q, dense) = models();
    let (qm, qp) = with_adapters(&q);
    // The dense twin gets the very same adapter values.
    let (dm, dp) = with_adapters(&dense);
    for ((_, a), (_, b)) in qp.iter().zip(&dp) {
        b.set(a.as_tensor()).unwrap();
    }
    let gq = loss(&qm).backward().unwrap();
    let gd = loss(&dm).backward().unwrap();

    // Layer 0's q_proj A is upstream of every quantized matmul of both layers.
    let pick = |params: &[(String, Var)], name: &str| {
        params
            .iter()
            .find(|(n, _)| n.contains(name))
            .unwrap()
            .1
            .clone()
    };
    for name in [
        "layers.0.self_attn.q_proj.lora_A",
        "layers.0.mlp.up_proj.lora_B",
    ] {
        let (vq, vd) = (pick(&qp, name), pick(&dp, name));
        let g_q = gq
            .get(vq.as_tensor())
            .expect("gradient through quantized layers");
        let g_d = gd.get(vd.as_tensor()).unwrap();
        let norm = |t: &Tensor| scalar(&t.sqr().unwrap().sum_all().unwrap()).sqrt();
        let rel = norm(&(g_q - g_d).unwrap()) / norm(g_d);
        eprintln!("{name}: |g_quant - g_dense| / |g_dense| = {rel:.2e}");
        assert!(norm(g_q) > 0.0);
        assert!(rel < 0.02, "{name}: quantized-model gradient off by {rel}");

        // Finite differences. The quantized forward rounds activations to 8-bit blocks (a
        // step function), so a derivative of its loss exists only at the scale of many steps:
        // along the gradient with a large step. The dense twin is smooth: there both a random
        // direction and the gradient's are checked with a small step; since the quantized
        // gradient equals the twin's (above), this checks it too.
        let v_rand = noise(vq.dims(), 9);
        let cases = [
            (
                "quantized, along the gradient",
                &qm,
                &vq,
                g_q.clone(),
                0.2,
                0.05,
            ),
            (
                "dense twin, along the gradient",
                &dm,
                &vd,
                g_d.clone(),
                0.01,
                0.02,
            ),
            (
                "dense twin, along a random direction",
                &dm,
                &vd,
                v_rand,
                0.01,
                0.02,
            ),
        ];
        for (what, model, var, v, eps, tol) in cases {
            let g = if std::ptr::eq(model, &qm) { g_q } else { g_d };
            let v = (&v / norm(&v)).unwrap();
            let analytic = scalar(&(g * &v).unwrap().sum_all().unwrap());
            let base = var.as_tensor().copy().unwrap();
            let at = |s: f64| {
                var.set(&(&base + (&v * s).unwrap()).unwrap()).unwrap();
                scalar(&loss(model))
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&base).unwrap();
            // Relative to |g|, the largest a directional derivative can be.
            let err = (numeric - analytic).abs() / norm(g);
            eprintln!("{name}, {what}: gradient {analytic:.5}, finite difference {numeric:.5}");
            assert!(
                err < tol,
                "{name}, {what}: finite difference {numeric} vs {analytic}"
            );
        }
    }
}

/// The base weights stay quantized: only the adapters are parameters, and no projection was
/// turned dense by training.
#[test]
fn qlora_keeps_the_base_quantized() {
    let (q, _) = models();
    let (mut m, params) = with_adapters(&q);
    assert_eq!(params.len(), 28);
    assert!(params
        .iter()
        .all(|(n, _)| n.starts_with("base_model.model.")));
    let g = loss(&m).backward().unwrap();
    assert!(params.iter().all(|(_, v)| g.get(v.as_tensor()).is_some()));
    let quantized = m
        .linears_mut()
        .iter()
        .filter(|(_, l)| matches!(l.weight, LinearWeight::Quantized(_)))
        .count();
    assert_eq!(quantized, 2 * 6);
}
