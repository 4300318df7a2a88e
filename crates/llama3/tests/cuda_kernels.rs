//! Our CUDA kernels (`kernels/*.cu`), run on the CPU by `tests/cuda_emu` (the same source,
//! compiled with the C compiler; threads as pthreads, barriers for __syncthreads and warp
//! shuffles), against the CPU code they stand in for. This checks the kernels' logic where no
//! GPU is present; the GPU suite (`llama3-cli/tests/gpu.rs`) checks the launches on a GPU.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use llama3::config::LlamaConfig;
use llama3::model::decode::{self, Heads, SeqRows};
use llama3::model::KvCache;
use rand::{Rng, SeedableRng};

/// The emulated kernels (`tests/cuda_emu/main.c`), built once per test run.
fn emulator() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args(["-O2", "-std=c11", "-pthread", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(dir.join("main.c"))
            .arg("-lm")
            .status()
            .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
        assert!(status.success(), "the emulated kernel did not compile");
        out
    })
}

/// Runs `kernel` on `input` with the scalar arguments `args`; the output file's bytes.
fn run(kernel: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    run_with(emulator(), kernel, args, input)
}

fn run_with(bin: &Path, kernel: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::write(&i, input).unwrap();
    let out = Command::new(bin)
        .arg(kernel)
        .arg(&i)
        .arg(&o)
        .args(args)
        // Under ThreadSanitizer: a race ends the run with an error.
        .env("TSAN_OPTIONS", "halt_on_error=1 exitcode=66")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("ThreadSanitizer"),
        "emulated {kernel} failed {args:?}: {err}"
    );
    std::fs::read(&o).unwrap()
}

/// The emulator built with ThreadSanitizer (races between a block's threads: a missing
/// __syncthreads, a shuffle outside its warp), or None with the reason printed where the C
/// compiler or the machine cannot run it.
fn tsan_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu_tsan");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .args([
                "-O1",
                "-g",
                "-std=c11",
                "-pthread",
                "-fsanitize=thread",
                "-o",
            ])
            .arg(&out)
            .arg(dir.join("main.c"))
            .arg("-lm")
            .output();
        match built {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let e = String::from_utf8_lossy(&o.stderr);
                eprintln!("SKIPPED race checks: `{cc} -fsanitize=thread` failed: {e}");
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED race checks: cannot run `{cc}`: {e}");
                return None;
            }
        }
        // Some kernels' address layouts stop the sanitizer's runtime at start: a run that does
        // not start is no verdict on our kernels.
        let tmp = tempfile::tempdir().ok()?;
        let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
        std::fs::write(&i, 1f32.to_le_bytes()).ok()?;
        let probe = Command::new(&out)
            .arg("f16")
            .arg(&i)
            .arg(&o)
            .output()
            .ok()?;
        if !probe.status.success() {
            let e = String::from_utf8_lossy(&probe.stderr);
            eprintln!("SKIPPED race checks: ThreadSanitizer does not run here: {e}");
            return None;
        }
        Some(out)
    })
    .as_deref()
}

/// The emulator's f16 conversions (the GPU's cvt instructions there) are IEEE's, as `half`'s.
#[test]
fn emulated_f16_conversions_are_ieee() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut xs: Vec<f32> = (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect();
    // Halfway points and their neighbours (ties to even), values past the largest half, tiny
    // values, and random magnitudes over the whole f16 range and beyond.
    for b in 0..0x7bffu16 {
        let (lo, hi) = (f16::from_bits(b).to_f32(), f16::from_bits(b + 1).to_f32());
        let mid = (lo as f64 + hi as f64) / 2.0;
        xs.extend([mid as f32, f32::from_bits((mid as f32).to_bits() + 1)]);
        xs.extend([f32::from_bits((mid as f32).to_bits() - 1), -(mid as f32)]);
    }
    xs.extend([
        65504.0,
        65519.99,
        65520.0,
        1e9,
        f32::INFINITY,
        1e-8,
        3e-8,
        2.9802322e-8,
    ]);
    xs.extend(
        (0..100_000).map(|_| rng.random_range(-20.0f32..20.0).exp2() * rng.random_range(-1.0..1.0)),
    );
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::write(&i, bytes).unwrap();
    let status = Command::new(emulator())
        .args(["f16".as_ref(), i.as_os_str(), o.as_os_str()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::fs::read(&o).unwrap();
    assert_eq!(out.len(), xs.len() * 6);
    for (x, r) in xs.iter().zip(out.chunks_exact(6)) {
        let h = u16::from_le_bytes([r[0], r[1]]);
        let back = f32::from_le_bytes([r[2], r[3], r[4], r[5]]);
        let want = f16::from_f32(*x);
        assert_eq!(h, want.to_bits(), "{x:e} ({:#x})", x.to_bits());
        assert_eq!(back.to_bits(), want.to_f32().to_bits(), "{x:e}");
    }
}

/// Element kinds as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
}

impl Kind {
    fn bytes(self, xs: &[f32]) -> Vec<u8> {
        match self {
            Kind::F32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Kind::Bf16 => xs
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            Kind::F16 => xs
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }

    fn floats(self, b: &[u8]) -> Vec<f32> {
        match self {
            Kind::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Kind::Bf16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Kind::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    fn round(self, xs: &[f32]) -> Vec<f32> {
        self.floats(&self.bytes(xs))
    }

    fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            _ => 2,
        }
    }
}

struct Case {
    b: usize,
    hkv: usize,
    g: usize,
    dh: usize,
    cap: usize,
    pos: usize,
    x: Kind,
    c: Kind,
    /// Extra elements after each sequence's q, k and v row (a fused QKV projection's rows).
    pad: usize,
}

fn cfg(c: &Case) -> LlamaConfig {
    LlamaConfig::from_hf_json(&serde_json::json!({
        "model_type": "llama", "hidden_size": c.hkv * c.g * c.dh, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": c.hkv * c.g,
        "num_key_value_heads": c.hkv, "head_dim": c.dh, "vocab_size": 10,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    }))
    .unwrap()
}

fn rope(pos: usize, dh: usize) -> (Vec<f32>, Vec<f32>) {
    (0..dh / 2)
        .map(|i| {
            let a = pos as f32 * 10000f32.powf(-((2 * i) as f32) / dh as f32);
            (a.cos(), a.sin())
        })
        .unzip()
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Runs one case: `b` sequences at position `pos` with random histories, their new token
/// through the CPU loop (`decode::attend`) and through the emulated kernel. Returns the largest
/// difference of the outputs and of the caches, each relative to the largest reference value.
fn check(c: &Case) -> (f32, f32) {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64((c.pos * 131 + c.dh + c.g) as u64);
    let mut randn =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let (h, hkv, dh) = (c.hkv * c.g, c.hkv, c.dh);
    let heads = Heads { h, hkv, dh };
    // The CPU keeps f32 or f16 caches; a bf16 cache is compared with an f32 one holding the
    // same (rounded) values.
    let precision = if c.c == Kind::F16 {
        DType::F16
    } else {
        DType::F32
    };
    let (mut ys, mut kcs, mut vcs, mut kc_in, mut vc_in) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
    let (cos, sin) = rope(c.pos, dh);
    let (cos, sin) = (c.x.round(&cos), c.x.round(&sin));
    for _ in 0..c.b {
        let mut cache = KvCache::new(&cfg(c), 1, c.cap, DType::F32, precision, &dev).unwrap();
        if c.pos > 0 {
            let t = c.pos;
            let rows: Vec<_> = (0..t).map(|p| rope(p, dh)).collect();
            let seq = SeqRows {
                t,
                cos: rows.iter().flat_map(|r| r.0.clone()).collect(),
                sin: rows.iter().flat_map(|r| r.1.clone()).collect(),
            };
            let q = Tensor::from_vec(randn(t * h * dh), (t, h * dh), &dev).unwrap();
            let k = Tensor::from_vec(randn(t * hkv * dh), (t, hkv * dh), &dev).unwrap();
            let v = Tensor::from_vec(randn(t * hkv * dh), (t, hkv * dh), &dev).unwrap();
            decode::attend(heads, &q, &k, &v, &[seq], &mut [&mut cache], 0).unwrap();
            cache.advance(t);
        }
        let (kc, vc) = cache.layer(0).unwrap();
        if c.c == Kind::Bf16 {
            for t in [kc, vc] {
                let r = Kind::Bf16.round(&floats(t));
                t.slice_set(&Tensor::from_vec(r, t.shape(), &dev).unwrap(), 0, 0)
                    .unwrap();
            }
        }
        kc_in.extend(floats(kc));
        vc_in.extend(floats(vc));
        let (q, k, v) = (
            c.x.round(&randn(h * dh)),
            c.x.round(&randn(hkv * dh)),
            c.x.round(&randn(hkv * dh)),
        );
        let seq = SeqRows {
            t: 1,
            cos: cos.clone(),
            sin: sin.clone(),
        };
        let tensor = |x: &[f32]| Tensor::from_slice(x, (1, x.len()), &dev).unwrap();
        let y = decode::attend(
            heads,
            &tensor(&q),
            &tensor(&k),
            &tensor(&v),
            &[seq],
            &mut [&mut cache],
            0,
        )
        .unwrap();
        let (kc, vc) = cache.layer(0).unwrap();
        ys.extend(floats(&y));
        kcs.extend(floats(kc));
        vcs.extend(floats(vc));
        let junk = |x: Vec<f32>| -> Vec<f32> {
            x.into_iter().chain((0..c.pad).map(|_| f32::NAN)).collect()
        };
        qs.extend(junk(q));
        ks.extend(junk(k));
        vs.extend(junk(v));
    }
    let mut input = Vec::new();
    for xs in [&qs, &ks, &vs, &cos, &sin] {
        input.extend(c.x.bytes(xs));
    }
    input.extend(c.c.bytes(&kc_in));
    input.extend(c.c.bytes(&vc_in));
    let scale = 1.0 / (dh as f32).sqrt();
    let round_q = (c.c == Kind::F16 && c.x == Kind::F32) as u8;
    let args: Vec<String> = [
        c.b,
        c.hkv,
        c.g,
        dh,
        c.cap,
        c.pos,
        c.x as usize,
        c.c as usize,
        round_q as usize,
        h * dh + c.pad,
        hkv * dh + c.pad,
        hkv * dh + c.pad,
    ]
    .iter()
    .map(|v| v.to_string())
    .chain([format!("{scale:e}")])
    .collect();
    let out = run("attention", &args, &input);
    let ny = c.b * h * dh * c.x.size();
    let nc = c.b * hkv * c.cap * dh * c.c.size();
    assert_eq!(out.len(), ny + 2 * nc);
    let y = c.x.floats(&out[..ny]);
    let kc = c.c.floats(&out[ny..ny + nc]);
    let vc = c.c.floats(&out[ny + nc..]);
    let rel = |a: &[f32], b: &[f32]| -> f32 {
        let max = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(a.iter().all(|x| x.is_finite()), "non-finite output");
        d / max
    };
    (rel(&y, &ys), rel(&kc, &kcs).max(rel(&vc, &vcs)))
}

#[test]
fn emulated_decode_attention_matches_the_cpu_loop() {
    // (b, hkv, g, dh, cap, pos, pad): GQA as SmolLM2 (3 KV heads of 3) and Llama 3 (8 of 4),
    // MHA, the largest group the kernel takes (8 x 128), heads of 32, 16 (the HF goldens')
    // and 48; the first position, one split of 64 keys and many (the last one partial);
    // strided rows.
    let shapes = [
        (2, 3, 3, 64, 48, 0, 0),
        (2, 3, 3, 64, 48, 5, 0),
        (1, 2, 4, 64, 80, 37, 0),
        (2, 2, 1, 128, 40, 19, 7),
        (1, 1, 8, 128, 20, 12, 0),
        (3, 2, 2, 32, 300, 257, 3),
        (2, 2, 2, 16, 24, 9, 0),
        (1, 2, 3, 48, 24, 17, 1),
        (1, 3, 3, 64, 800, 700, 0),
    ];
    for (b, hkv, g, dh, cap, pos, pad) in shapes {
        for (x, c, tol_y) in [
            (Kind::F32, Kind::F32, 1e-6),
            // The CPU rounds the probabilities to f16 (2^-12 relative), the kernel does not.
            (Kind::F32, Kind::F16, 1e-3),
            // The output rounded to bf16 / f16 (2^-9, 2^-11 relative) and, for bf16, the new
            // key (the CPU reference keeps it in f32).
            (Kind::Bf16, Kind::Bf16, 5e-3),
            (Kind::F16, Kind::F16, 1e-3),
        ] {
            let case = Case {
                b,
                hkv,
                g,
                dh,
                cap,
                pos,
                x,
                c,
                pad,
            };
            let (dy, dc) = check(&case);
            // The new K row: the kernel rounds it to the cache's kind, the CPU keeps f32 for
            // bf16 (compared with an f32 cache).
            let tol_c = match c {
                Kind::Bf16 => 4e-3,
                _ => 0.0,
            };
            assert!(
                dy <= tol_y && dc <= tol_c,
                "{x:?}/{c:?} b {b} hkv {hkv} g {g} dh {dh} pos {pos}: output {dy:e}, cache {dc:e}"
            );
        }
    }
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let max = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / max
}

/// Rows of `n` values `rs` apart (the rest NaN: the kernels must not read it).
fn strided(rows: usize, n: usize, rs: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dense: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-3.0..3.0)).collect();
    let mut out = vec![f32::NAN; rows * rs];
    for r in 0..rows {
        out[r * rs..][..n].copy_from_slice(&dense[r * n..][..n]);
    }
    (dense, out)
}

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
            assert_eq!(got_s, floats(&sum), "{k:?} {r}x{d}: the sum differs");
            let e = max_rel(&got_h, &floats(&h));
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
            let want = floats(&(t(&g).silu().unwrap() * t(&u)).unwrap());
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

/// The AdamW kernel against PyTorch: one `torch.optim.AdamW` step of every parameter of the
/// gqa golden model from PyTorch's own gradients (fresh moments, t = 1) gives PyTorch's
/// weights within 1e-6, as the CPU optimizer does (`llama3-train/tests/golden.rs`).
#[test]
fn emulated_adamw_matches_pytorch() {
    let g = common::tensors(&common::golden("hf/gqa/train_golden.safetensors"));
    let model = common::tensors(&common::golden("hf/gqa/model/model.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::golden("hf/gqa/meta.json")).unwrap())
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
        let (p, grad, want) = (floats(p), floats(grad), floats(want));
        let n = p.len();
        let mut input = Kind::F32.bytes(&p);
        input.extend(Kind::F32.bytes(&grad));
        input.extend(Kind::F32.bytes(&vec![0.0; 2 * n]));
        let args: Vec<String> = std::iter::once(n.to_string())
            .chain(coefs.iter().map(|c| format!("{:e}", *c as f32)))
            .collect();
        let out = Kind::F32.floats(&run("adamw", &args, &input));
        assert_eq!(out.len(), 3 * n);
        let d = common::max_abs_diff(&out[..n], &want);
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
    let Some(bin) = tsan_emulator() else { return };
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
            let dx_want = floats(grads.get(xt.as_tensor()).unwrap());
            let y_want = floats(&y);

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
