//! The parts of `llama3 bench` beyond llama-bench's: models with random weights of a preset's
//! shape (to compare with other frameworks' figures on the same shapes), batched decoding,
//! training-step throughput, and model FLOPs for MFU.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use llama3::loader::{Loaded, ModelInfo};
use llama3::model::{Llama, Logits};
use llama3_train::init::RandomInit;
use llama3_train::{causal_lm_loss, AdamW, AdamWConfig, Grads};

/// The vocabulary each preset's real model has (the presets take it from a tokenizer).
fn preset_vocab(name: &str) -> usize {
    match name {
        "smollm2-135m" => 49152,
        "llama3.2-1b" => 128256,
        _ => 32000,
    }
}

/// A model of the preset's shape with N(0, 0.02) weights drawn on `device`.
pub fn random_model(preset: &str, dtype: DType, device: &Device) -> Result<Loaded> {
    let config = llama3_train::presets::preset(preset, preset_vocab(preset), 0, Some(1), vec![2])?;
    let src = RandomInit::on_device(1234, dtype, device)?;
    let model = Llama::load(&src, &config, None, device)?;
    let parameters = model
        .named_tensors()?
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    let info = ModelInfo {
        path: PathBuf::from(format!("random-{preset}")),
        format: "random".into(),
        architecture: "llama".into(),
        name: Some(preset.into()),
        parameters,
        tensor_types: vec![(format!("{dtype:?}"), 0)],
        file_bytes: (parameters * dtype.size_in_bytes()) as u64,
        pooling: None,
    };
    Ok(Loaded {
        model,
        tokenizer: None,
        info,
    })
}

/// Parameters that take part in matmuls per token: every projection and the head (the
/// embedding lookup costs no FLOPs).
fn matmul_params(m: &Llama) -> f64 {
    let c = &m.config;
    let (d, f, l) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
    let (h, hkv, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let per_layer = d * (h + 2 * hkv) * dh + h * dh * d + 3 * d * f;
    (l * per_layer + c.vocab_size * d) as f64
}

/// Model FLOPs per token at sequence length `t` (PaLM appendix B): forward `2N + 4 L H Dh t`,
/// training (forward and backward) three times that.
pub fn flops_per_token(m: &Llama, t: usize, training: bool) -> f64 {
    let c = &m.config;
    let attn = (c.num_hidden_layers * c.num_attention_heads * c.head_dim * t) as f64;
    let fwd = 2.0 * matmul_params(m) + 4.0 * attn;
    if training {
        3.0 * fwd
    } else {
        fwd
    }
}

/// Seconds to prefill `batch` prompts of `prompt.len()` tokens (untimed) and then decode
/// `n_gen` tokens for all of them, one (B, 1) forward per step with the logits read back.
pub fn batched_decode(model: &Llama, batch: usize, prompt: &[u32], gen: &[u32]) -> Result<f64> {
    let dev = model.device();
    let mut cache = model.new_cache(batch, prompt.len() + gen.len())?;
    if !prompt.is_empty() {
        let ids = Tensor::new(prompt, dev)?.unsqueeze(0)?.repeat((batch, 1))?; // (B, P)
        model.forward(&ids, Some(&mut cache), Logits::Last)?;
    }
    let t0 = Instant::now();
    for &tok in gen {
        let ids = Tensor::new(vec![tok; batch], dev)?.unsqueeze(1)?; // (B, 1)
        let logits = model.forward(&ids, Some(&mut cache), Logits::Last)?; // (B, 1, V)
        std::hint::black_box(
            logits
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// A model to train: f32 master weights; on a GPU, bf16 matmuls (mixed precision).
pub fn trainable(mut model: Llama) -> Result<Llama> {
    model.dequantize()?;
    if !model.device().is_cpu() {
        model.set_compute_dtype(Some(DType::BF16));
    }
    Ok(model)
}

/// Seconds of one training step's phases, each waited for: forward (with the loss),
/// backward, optimizer (gradient gathering and AdamW).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Phases {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// Tokens per second of full training steps (forward, backward, AdamW) on `batch` sequences
/// of `ids.len()` tokens: one warm-up step, then `reps` timed steps, then one step timed phase
/// by phase.
pub fn train_steps(
    model: &mut Llama,
    batch: usize,
    ids: &[u32],
    reps: usize,
) -> Result<(Vec<f64>, Phases)> {
    let dev = model.device().clone();
    let params = model.trainable_params()?;
    let n = params.len();
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    let x = Tensor::new(ids, &dev)?.unsqueeze(0)?.repeat((batch, 1))?; // (B, T)
    let labels = x.to_dtype(DType::I64)?;
    let mut rates = Vec::new();
    let mut phases = Phases::default();
    for r in 0..=reps + 1 {
        let profile = r == reps + 1;
        let wait = |t: &Tensor| -> Result<()> {
            if profile {
                t.flatten_all()?
                    .narrow(0, 0, 1)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
            }
            Ok(())
        };
        let t0 = Instant::now();
        let loss = causal_lm_loss(model, &x, &labels)?;
        wait(&loss)?;
        let t1 = Instant::now();
        let store = loss.backward()?;
        if let Some((_, v)) = opt.params().first() {
            if let Some(g) = store.get(v.as_tensor()) {
                wait(g)?;
            }
        }
        let t2 = Instant::now();
        let mut grads = Grads::new(n);
        grads.accumulate(opt.params(), &store)?;
        opt.step(&grads, 1e-4)?;
        let l = loss.to_scalar::<f32>()?; // waits for the step
        anyhow::ensure!(l.is_finite(), "training loss is {l}");
        if profile {
            if let Some((_, v)) = opt.params().last() {
                wait(v.as_tensor())?;
            }
            phases = Phases {
                forward: (t1 - t0).as_secs_f64(),
                backward: (t2 - t1).as_secs_f64(),
                optimizer: t2.elapsed().as_secs_f64(),
            };
        } else if r > 0 {
            rates.push((batch * ids.len()) as f64 / t0.elapsed().as_secs_f64());
        }
    }
    Ok((rates, phases))
}

/// Microseconds per small op on `dev` (launch and allocation overhead): 2000 additions of
/// (1, 576) f32 tensors, and 2000 (1, 576) x (576, 576) products in `dtype`, each then waited.
pub fn op_overhead_us(dev: &Device, dtype: DType) -> Result<(f64, f64)> {
    let n = 2000;
    let time = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, x0: Tensor| -> Result<f64> {
        let mut x = f(&x0)?;
        x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let t0 = Instant::now();
        for _ in 0..n {
            x = f(&x)?;
        }
        x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let a = Tensor::ones((1, 576), DType::F32, dev)?;
    let add = time(&|x| x + &a, a.clone())?;
    let w = (Tensor::eye(576, dtype, dev)? * 0.5)?.to_dtype(dtype)?;
    let mm = time(&|x| x.matmul(&w), a.to_dtype(dtype)?)?;
    Ok((add, mm))
}
