//! The decode-attention kernels (`kernels/decode_attention.cu`) run on the CPU by the
//! emulator (`tests/cuda_emu`: the same source compiled with the C compiler; threads as
//! pthreads, barriers for __syncthreads and warp shuffles) against our CPU attention loop, and
//! the emulator's f16 conversions against `half`. This checks the kernels' logic where no GPU
//! is present; the GPU suite (`llama3-cli/tests/gpu.rs`) checks the launches on a GPU.

#[path = "cuda_emu/harness.rs"]
mod harness;

use std::process::Command;

use candle_core::{DType, Device, Tensor};
use half::f16;
use harness::{emulator, run, Kind};
use llama3::config::LlamaConfig;
use llama3::cpu::attend as decode;
use llama3::kv::{Heads, SeqRows};
use llama3::model::KvCache;
use llama3_testutil::to_vec;
use rand::{Rng, SeedableRng};

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
    // Rows the cache allocates per head (its capacity padded, `llama3::kv::rows_for`): the
    // kernel's C, as the GPU path reads it from the buffers' shape.
    let rows = llama3::kv::rows_for(c.cap);
    for _ in 0..c.b {
        let mut cache = KvCache::new(&cfg(c), 1, c.cap, DType::F32, precision, &dev).unwrap();
        if c.pos > 0 {
            let t = c.pos;
            let rows: Vec<_> = (0..t).map(|p| rope(p, dh)).collect();
            let seq = SeqRows::new(
                t,
                rows.iter().flat_map(|r| r.0.clone()).collect(),
                rows.iter().flat_map(|r| r.1.clone()).collect(),
            );
            let q = Tensor::from_vec(randn(t * h * dh), (t, h * dh), &dev).unwrap();
            let k = Tensor::from_vec(randn(t * hkv * dh), (t, hkv * dh), &dev).unwrap();
            let v = Tensor::from_vec(randn(t * hkv * dh), (t, hkv * dh), &dev).unwrap();
            decode::attend(heads, &q, &k, &v, &[seq], &mut [&mut cache], 0).unwrap();
            cache.advance(t);
        }
        let (kc, vc) = cache.layer(0).unwrap();
        if c.c == Kind::Bf16 {
            for t in [kc, vc] {
                let r = Kind::Bf16.round(&to_vec(t));
                t.slice_set(&Tensor::from_vec(r, t.shape(), &dev).unwrap(), 0, 0)
                    .unwrap();
            }
        }
        kc_in.extend(to_vec(kc));
        vc_in.extend(to_vec(vc));
        let (q, k, v) = (
            c.x.round(&randn(h * dh)),
            c.x.round(&randn(hkv * dh)),
            c.x.round(&randn(hkv * dh)),
        );
        let seq = SeqRows::new(1, cos.clone(), sin.clone());
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
        ys.extend(to_vec(&y));
        kcs.extend(to_vec(kc));
        vcs.extend(to_vec(vc));
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
        rows,
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
    let nc = c.b * hkv * rows * dh * c.c.size();
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
