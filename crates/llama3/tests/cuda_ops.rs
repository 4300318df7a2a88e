//! The row kernels (`kernels/rows.cu`: residual add + RMSNorm, SwiGLU), the causal softmax
//! (`kernels/softmax.cu`) and AdamW (`kernels/adamw.cu`) run on the CPU by the emulator
//! (`tests/cuda_emu`) against candle's ops and PyTorch's optimizer step; then every kernel
//! under ThreadSanitizer. The GPU suite (`llama3-cli/tests/gpu.rs`) checks the launches.

#[path = "cuda_emu/harness.rs"]
mod harness;

use candle_core::{DType, Device, Tensor};
use harness::{run, run_with, strided, tsan_emulator, Kind};
use llama3_testutil::{max_rel, to_vec};
use rand::{Rng, SeedableRng};

/// The residual add and RMSNorm kernel against candle's add and fused rms_norm on the CPU.
#[test]
fn emulated_add_rms_norm_matches_candle() {
    let dev = Device::Cpu;
    for (r, d, pad) in [(1, 576, 0), (3, 64, 5), (2, 2048, 1), (5, 8, 0)] {
        for (k, tol) in [(Kind::F32, 1e-6), (Kind::Bf16, 8e-3), (Kind::F16, 1e-3)] {
            let (x, xs) = strided(r, d, d + pad, 1);
            let (y, ys) = strided(r, d, d + 2 * pad, 2);
            let (w, _) = strided(1, d, d, 3);
            let (x, y, w) = (k.round(&x), k.round(&y), k.round(&w));
            let dt = match k {
                Kind::F32 => DType::F32,
                Kind::Bf16 => DType::BF16,
                Kind::F16 => DType::F16,
            };
            let t = |v: &[f32], shape: (usize, usize)| {
                Tensor::from_slice(v, shape, &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
            };
            let sum = (t(&x, (r, d)) + t(&y, (r, d))).unwrap();
            let h =
                candle_nn::ops::rms_norm(&sum, &t(&w, (1, d)).squeeze(0).unwrap(), 1e-5).unwrap();
            let mut input = k.bytes(&xs);
            input.extend(k.bytes(&ys));
            input.extend(k.bytes(&w));
            let args: Vec<String> = [r, d, d + pad, d + 2 * pad]
                .iter()
                .map(|v| v.to_string())
                .chain(["1e-5".into(), (k as usize).to_string()])
                .collect();
            let out = run("add_rms_norm", &args, &input);
            let n = r * d * k.size();
            assert_eq!(out.len(), 2 * n);
            let (got_s, got_h) = (k.floats(&out[..n]), k.floats(&out[n..]));
            assert_eq!(got_s, to_vec(&sum), "{k:?} {r}x{d}: the sum differs");
            let e = max_rel(&got_h, &to_vec(&h));
            assert!(e <= tol, "{k:?} {r}x{d}: normed rows differ by {e:e}");
        }
    }
}

/// The SwiGLU kernel against candle's silu and mul on the CPU.
#[test]
fn emulated_swiglu_matches_candle() {
    let dev = Device::Cpu;
    for (r, f, pad) in [(1, 1536, 0), (4, 300, 1536), (2, 8, 3)] {
        for (k, tol) in [(Kind::F32, 1e-6), (Kind::Bf16, 8e-3), (Kind::F16, 1e-3)] {
            let (g, gs) = strided(r, f, f + pad, 4);
            let (u, us) = strided(r, f, f + pad, 5);
            let (g, u) = (k.round(&g), k.round(&u));
            let t = |v: &[f32]| Tensor::from_slice(v, (r, f), &dev).unwrap();
            let want = to_vec(&(t(&g).silu().unwrap() * t(&u)).unwrap());
            let mut input = k.bytes(&gs);
            input.extend(k.bytes(&us));
            let args: Vec<String> = [r, f, f + pad, f + pad, k as usize]
                .iter()
                .map(|v| v.to_string())
                .collect();
            let out = run("swiglu", &args, &input);
            let got = k.floats(&out);
            let e = max_rel(&got, &want);
            assert!(e <= tol, "{k:?} {r}x{f}: differs by {e:e}");
        }
    }
}

/// The causal softmax kernels against the ops they replace in `Attention::attend` (scale, the
/// broadcast causal mask, softmax) on the CPU, forward and backward (candle's autograd).
#[test]
fn emulated_causal_softmax_matches_candle() {
    use candle_core::Var;
    let dev = Device::Cpu;
    // (groups of rows, T new positions, S keys): training (S = T), a prompt chunk after a cache
    // (S > T), single decode rows (T = 1), rows longer than a block's threads.
    for (groups, t, s) in [(6, 12, 12), (4, 5, 9), (3, 1, 40), (1, 24, 600)] {
        for (k, tol) in [(Kind::F32, 1e-6), (Kind::Bf16, 8e-3)] {
            let scale = 0.125f32;
            let rows = groups * t;
            let (x, _) = strided(rows, s, s, 11);
            let x = k.round(&x);
            let xt = Var::from_vec(x.clone(), (groups, t, s), &dev).unwrap();
            let mask = llama3::model::attention::causal_mask(t, s - t, &dev).unwrap();
            let att = (xt.as_tensor() * scale as f64)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let y = llama3::model::attention::softmax_last_dim(&att).unwrap();
            let (dy, _) = strided(rows, s, s, 12);
            let dy = k.round(&dy);
            let dyt = Tensor::from_vec(dy.clone(), (groups, t, s), &dev).unwrap();
            let grads = (&y * &dyt).unwrap().sum_all().unwrap().backward().unwrap();
            let dx_want = to_vec(grads.get(xt.as_tensor()).unwrap());
            let y_want = to_vec(&y);

            let args = |kind: Kind| -> Vec<String> {
                vec![
                    rows.to_string(),
                    t.to_string(),
                    s.to_string(),
                    format!("{scale:e}"),
                    (kind as usize).to_string(),
                ]
            };
            let y_got = k.floats(&run("softmax", &args(k), &k.bytes(&x)));
            let e = max_rel(&y_got, &y_want);
            assert!(e <= tol, "{k:?} {groups}x{t}x{s}: forward differs by {e:e}");
            // Masked keys are exact zeros.
            for r in 0..rows {
                let n = s - t + r % t + 1;
                assert!(y_got[r * s + n..(r + 1) * s].iter().all(|&v| v == 0.0));
            }
            // Backward from the reference probabilities, so only the backward is compared.
            let mut input = k.bytes(&k.round(&y_want));
            input.extend(k.bytes(&dy));
            let dx_got = k.floats(&run("softmax_bwd", &args(k), &input));
            let e = max_rel(&dx_got, &dx_want);
            assert!(
                e <= 2.0 * tol,
                "{k:?} {groups}x{t}x{s}: backward differs by {e:e}"
            );
        }
    }
}

/// The AdamW kernel against PyTorch: one `torch.optim.AdamW` step of every parameter of the
/// gqa golden model from PyTorch's own gradients (fresh moments, t = 1) gives PyTorch's
/// weights within 1e-6, as the CPU optimizer does (`llama3-train/tests/golden.rs`).
#[test]
fn emulated_adamw_matches_pytorch() {
    let g = llama3_testutil::tensors(&llama3_testutil::golden("hf/gqa/train_golden.safetensors"));
    let model =
        llama3_testutil::tensors(&llama3_testutil::golden("hf/gqa/model/model.safetensors"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(llama3_testutil::golden("hf/gqa/meta.json")).unwrap(),
    )
    .unwrap();
    let t = &meta["train"];
    let (lr, wd, eps) = (
        t["lr"].as_f64().unwrap(),
        t["weight_decay"].as_f64().unwrap(),
        t["eps"].as_f64().unwrap(),
    );
    let (b1, b2) = (
        t["betas"][0].as_f64().unwrap(),
        t["betas"][1].as_f64().unwrap(),
    );
    // optim.rs's Coefs at t = 1, as f32.
    let coefs = [
        1.0 - lr * wd,
        1.0 - b1,
        b2,
        1.0 - b2,
        eps,
        (1.0 - b2).sqrt(),
        lr / (1.0 - b1),
    ];
    let mut checked = 0;
    for (name, p) in &model {
        let (Some(grad), Some(want)) = (
            g.get(&format!("grad.{name}")),
            g.get(&format!("after_adamw.{name}")),
        ) else {
            continue;
        };
        let (p, grad, want) = (to_vec(p), to_vec(grad), to_vec(want));
        let n = p.len();
        let mut input = Kind::F32.bytes(&p);
        input.extend(Kind::F32.bytes(&grad));
        input.extend(Kind::F32.bytes(&vec![0.0; 2 * n]));
        let args: Vec<String> = std::iter::once(n.to_string())
            .chain(coefs.iter().map(|c| format!("{:e}", *c as f32)))
            .collect();
        let out = Kind::F32.floats(&run("adamw", &args, &input));
        assert_eq!(out.len(), 3 * n);
        let d = llama3_testutil::max_abs_diff(&out[..n], &want);
        assert!(d <= 1e-6, "{name}: {d:e} from PyTorch's step");
        // The moments after one step: (1 - beta1) g and (1 - beta2) g^2.
        for i in 0..n {
            assert_eq!(out[n + i], grad[i] * coefs[1] as f32, "{name}[{i}]: m");
            assert_eq!(
                out[2 * n + i],
                grad[i] * grad[i] * coefs[3] as f32,
                "{name}[{i}]: v"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, model.len(), "every parameter has a reference step");
}

/// Every kernel under ThreadSanitizer: no data race between the threads of a block (the
/// emulator's barriers are the kernels' __syncthreads and warp shuffles, so a missing one
/// shows as a race even when the values happen to come out right).
#[test]
fn emulated_kernels_have_no_data_races() {
    let bin = match tsan_emulator() {
        Ok(bin) => bin,
        Err(why) => {
            return llama3_testutil::skip("cuda_ops::emulated_kernels_have_no_data_races", &why)
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let strs = |v: &[usize]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    // Attention: two splits, GQA, each element kind, strided rows.
    let (b, hkv, g, dh, cap, pos) = (2, 2, 3, 32, 80, 70);
    for (x, c) in [
        (Kind::F32, Kind::F32),
        (Kind::F32, Kind::F16),
        (Kind::Bf16, Kind::Bf16),
    ] {
        let (q_rs, kv_rs) = (hkv * g * dh + 3, hkv * dh + 1);
        let mut input = x.bytes(&rand(b * q_rs + 2 * b * kv_rs + dh));
        input.extend(c.bytes(&rand(2 * b * hkv * cap * dh)));
        let round_q = (x == Kind::F32 && c == Kind::F16) as usize;
        let mut args = strs(&[b, hkv, g, dh, cap, pos, x as usize, c as usize, round_q]);
        args.extend(strs(&[q_rs, kv_rs, kv_rs]));
        args.push("0.17".into());
        run_with(bin, "attention", &args, &input);
    }
    for k in [Kind::F32, Kind::Bf16] {
        let (r, d) = (3, 600);
        let input = k.bytes(&rand(2 * r * d + d));
        let mut args = strs(&[r, d, d, d]);
        args.extend(["1e-5".to_string(), (k as usize).to_string()]);
        run_with(bin, "add_rms_norm", &args, &input);
        let input = k.bytes(&rand(2 * r * d));
        run_with(bin, "swiglu", &strs(&[r, d, d, d, k as usize]), &input);
    }
    for k in [Kind::F32, Kind::Bf16] {
        let (rows, t, s) = (10, 5, 300);
        let mut args = strs(&[rows, t, s]);
        args.extend(["0.125".to_string(), (k as usize).to_string()]);
        run_with(bin, "softmax", &args, &k.bytes(&rand(rows * s)));
        run_with(bin, "softmax_bwd", &args, &k.bytes(&rand(2 * rows * s)));
    }
    let n = 1000;
    let mut args = strs(&[n]);
    args.extend(["0.999", "0.1", "0.95", "0.05", "1e-8", "0.22", "0.1"].map(String::from));
    run_with(bin, "adamw", &args, &Kind::F32.bytes(&rand(4 * n)));
}
