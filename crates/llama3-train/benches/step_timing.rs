//! Where a training step's time goes, for the `15m` preset at 8 x 256 tokens with a 32000
//! vocabulary (the shape of `scripts/train_bench.sh`). A measurement, not a check:
//!
//!     cargo bench -p llama3-train --bench step_timing                # the phases of a step
//!     cargo bench -p llama3-train --bench step_timing -- layer_parts # one layer's parts
//!
//! `cargo test --benches` only builds and starts it; it measures when cargo passes `--bench`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use llama3::Llama;
use llama3_train::init::RandomInit;
use llama3_train::presets::preset;
use llama3_train::{causal_lm_loss_sum, AdamW, AdamWConfig, Grads};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "step_timing: a benchmark; run it with `cargo bench -p llama3-train --bench step_timing`"
        );
        return;
    }
    if args.iter().any(|a| a == "layer_parts") {
        layer_parts();
    } else {
        step_timing();
    }
}

/// Forward, loss, backward, gradient clip and AdamW of whole training steps.
fn step_timing() {
    let dev = Device::Cpu;
    let (b, t, v) = (8, 256, 32000);
    let config = preset("15m", v, t, Some(1), vec![2]).unwrap();
    let src = RandomInit::new(0, DType::F32, &dev);
    let mut model = Llama::load(&src, &config, None, &dev).unwrap();
    let params = model.trainable_params().unwrap();
    let mut opt = AdamW::new(params, AdamWConfig::default()).unwrap();
    let mut grads = Grads::new(opt.params().len());
    let ids: Vec<u32> = (0..b * t)
        .map(|i| (i as u32 * 2654435761) % v as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
    let labels = ids.to_dtype(DType::I64).unwrap();
    for step in 0..4 {
        let t0 = Instant::now();
        let hidden = model.forward_hidden(&ids, None).unwrap();
        let t1 = Instant::now();
        drop(hidden);
        let (sum, n) = causal_lm_loss_sum(&model, &ids, &labels).unwrap();
        let loss = (sum / n as f64).unwrap();
        let t2 = Instant::now();
        let store = loss.backward().unwrap();
        let t3 = Instant::now();
        grads.accumulate(opt.params(), &store).unwrap();
        drop(store);
        grads.clip_global_norm(1.0).unwrap();
        let t4 = Instant::now();
        opt.step(&grads, 1e-3).unwrap();
        grads.clear();
        let t5 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "step {step}: hidden fwd {:.0} ms | fwd+loss {:.0} | backward {:.0} | grads+clip {:.0} | adamw {:.0} | step {:.0} ms = {:.0} tok/s",
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t4, t5),
            ms(t1, t5),
            (b * t) as f64 / (t5 - t1).as_secs_f64()
        );
    }
}

/// Forward + backward of each part of one layer alone, at the same shape.
fn layer_parts() {
    use candle_core::Var;
    let dev = Device::Cpu;
    let (b, t, v) = (8, 256, 32000);
    let config = preset("15m", v, t, Some(1), vec![2]).unwrap();
    let src = RandomInit::new(0, DType::F32, &dev);
    let mut model = Llama::load(&src, &config, None, &dev).unwrap();
    let _params = model.trainable_params().unwrap();
    let layer = &model.layers[0];
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, 288), &dev).unwrap()).unwrap();
    let (cos, sin, mask) = model.positions(0, t).unwrap();
    for _ in 0..3 {
        let time = |name: &str, f: &dyn Fn() -> Tensor| {
            let t0 = Instant::now();
            let y = f();
            let t1 = Instant::now();
            let _g = y.sum_all().unwrap().backward().unwrap();
            let t2 = Instant::now();
            println!(
                "{name}: fwd {:.1} ms, bwd {:.1} ms",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3
            );
        };
        time("norm", &|| {
            layer.input_layernorm.forward(x.as_tensor()).unwrap()
        });
        time("attention", &|| {
            layer
                .self_attn
                .forward(x.as_tensor(), &cos, &sin, mask.as_ref(), None, None)
                .unwrap()
        });
        time("mlp", &|| layer.mlp.forward(x.as_tensor()).unwrap());
        time("q_proj", &|| {
            layer.self_attn.q_proj.forward(x.as_tensor()).unwrap()
        });
        time("layer", &|| {
            layer
                .forward(x.as_tensor(), &cos, &sin, mask.as_ref(), None)
                .unwrap()
        });
        println!();
    }
}
