//! Sequence-classification training for HF `LlamaForSequenceClassification`: a bias-free
//! `score` head (L, D) on the final hidden state of each text's last non-pad token, trained
//! - `Head`: alone on a frozen model. The pooled features are computed once (one forward per
//!   text), then the head is fitted on them for every epoch: the same result as training
//!   end to end with the model frozen, at a fraction of the cost;
//! - `Lora`: with LoRA adapters on the frozen (possibly quantized) model;
//! - `Full`: with every weight (a GGUF base is dequantized to f32 first).
//!
//! Cross-entropy over the labels, AdamW with PyTorch's semantics, linear warmup then cosine
//! decay, global-norm clipping. The result saves as an HF directory (LoRA merged) that HF
//! transformers and `llama3::classify::Classifier::load` read.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use llama3::classify::{Classifier, ARCHITECTURE};
use llama3::model::{Linear, Llama};
use llama3::peft::{self, LoraConfig};
use llama3::tokenizer::Tokenizer;
use llama3::weights::{atomic, hf_dir, safetensors, Weight};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::dist::{self, Collective};
use crate::grads::Grads;
use crate::loss::cross_entropy_sum;
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::{Decay, LrSchedule};
use crate::{Error, Result};

/// What is trained besides the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClsMethod {
    Head,
    Lora,
    Full,
}

impl std::str::FromStr for ClsMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "head" => Ok(Self::Head),
            "lora" => Ok(Self::Lora),
            "full" => Ok(Self::Full),
            _ => Err(format!(
                "unknown method {s:?} (expected head, lora or full)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClsConfig {
    pub method: ClsMethod,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of the optimizer steps spent warming up.
    pub warmup_ratio: f64,
    /// Clip gradients to this global L2 norm; 0 disables.
    pub clip: f64,
    pub seed: u64,
    /// LoRA rank, alpha and rsLoRA (with `Lora`).
    pub lora: LoraConfig,
    /// Modules that get adapters (`q_proj`, ... `down_proj`).
    pub targets: Vec<String>,
    /// With `Lora`: dequantize a GGUF base to f32 first (faster on the CPU, 4 bytes per
    /// weight); false keeps it quantized (QLoRA).
    pub dense_base: bool,
}

/// One labelled text, tokenized.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub label: usize,
}

/// What the callback sees after each optimizer step (and while features are computed).
#[derive(Clone, Debug)]
pub enum Progress {
    /// Head-only: pooled features of `done` of `total` texts computed.
    Features { done: usize, total: usize },
    Step {
        step: usize,
        total: usize,
        epoch: usize,
        loss: f64,
        lr: f64,
    },
}

/// Trains a classifier head (and LoRA adapters or every weight) on `train`. Data parallel
/// over the ranks of `comm` ([`dist::Single`] alone): each rank takes the examples of every
/// batch whose index is its rank modulo the rank count (its share of the head-only features
/// too), the gradients are summed across ranks, every rank steps alike.
pub fn train(
    mut model: Llama,
    labels: Vec<String>,
    pad_token_id: u32,
    train: &[Example],
    cfg: &ClsConfig,
    comm: &dyn Collective,
    progress: &mut dyn FnMut(Progress),
) -> Result<Classifier> {
    let n_labels = labels.len();
    if n_labels < 2 {
        return Err(Error::Input(format!(
            "a classifier needs at least 2 labels, got {n_labels}"
        )));
    }
    if train.is_empty() {
        return Err(Error::Input("no training examples".into()));
    }
    if let Some(e) = train.iter().find(|e| e.ids.is_empty()) {
        return Err(Error::Input(format!(
            "a training text has no tokens (label {})",
            labels.get(e.label).map_or("?", |l| l.as_str())
        )));
    }
    if let Some(e) = train.iter().find(|e| e.label >= n_labels) {
        return Err(Error::Input(format!(
            "label index {} outside the {n_labels} labels",
            e.label
        )));
    }
    let device = model.device().clone();
    let d = model.config.hidden_size;
    let score = Var::from_tensor(&init_head(n_labels, d, cfg.seed, &device)?)?;
    let mut params = vec![("score.weight".to_string(), score.clone())];
    match cfg.method {
        ClsMethod::Head => {}
        ClsMethod::Lora => {
            if cfg.dense_base {
                model.dequantize()?;
            }
            let targets: Vec<&str> = cfg.targets.iter().map(String::as_str).collect();
            peft::add_adapters(&mut model, &cfg.lora, &targets, cfg.seed)?;
            params.extend(peft::trainable(&mut model)?);
        }
        ClsMethod::Full => {
            model.dequantize()?;
            params.extend(model.trainable_params()?);
        }
    }
    let mut cls = Classifier {
        model,
        score: Linear::new(Weight::Dense(score.as_tensor().clone())),
        labels,
        pad_token_id,
    };
    // Every rank starts from rank 0's trainable weights.
    dist::broadcast_params(comm, &params)?;
    let (rank, world) = (comm.rank(), comm.size());
    let mine = |i: &usize| i % world == rank;
    let features = match cfg.method {
        ClsMethod::Head => {
            let own = |i: usize| mine(&i);
            Some(pooled_features(
                &cls,
                train,
                &own,
                cfg.batch_size,
                progress,
            )?)
        }
        _ => None,
    };

    let steps_per_epoch = train.len().div_ceil(cfg.batch_size.max(1));
    let total = steps_per_epoch * cfg.epochs.max(1);
    let schedule = LrSchedule {
        lr: cfg.lr,
        min_lr: 0.0,
        warmup: (total as f64 * cfg.warmup_ratio).round() as usize,
        total,
        decay: Decay::Cosine,
    };
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut grads = Grads::new(params.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0;
    for epoch in 0..cfg.epochs.max(1) {
        order.shuffle(&mut rng);
        for global in order.chunks(cfg.batch_size.max(1)) {
            // This rank's share of the batch (all of it alone); the loss divides by the
            // whole batch, so the summed gradients are those of the batch's mean.
            let batch: Vec<usize> = global.iter().copied().filter(mine).collect();
            let mut loss = [0f64];
            if !batch.is_empty() {
                let targets: Vec<u32> = batch.iter().map(|&i| train[i].label as u32).collect();
                let targets = Tensor::from_vec(targets, batch.len(), &device)?;
                let logits = match &features {
                    // (B, D) cached features through the head.
                    Some(f) => {
                        let rows = batch
                            .iter()
                            .map(|&i| {
                                f[i].clone()
                                    .ok_or_else(|| Error::Input("missing feature row".into()))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Tensor::stack(&rows, 0)?.matmul(&score.as_tensor().t()?)?
                    }
                    None => {
                        // LoRA dropout masks of this step.
                        peft::set_dropout_seed(&mut cls.model, Some((cfg.seed, step as u64)));
                        let rows: Vec<Vec<u32>> =
                            batch.iter().map(|&i| train[i].ids.clone()).collect();
                        let ids = cls.batch(&rows, &device)?;
                        cls.forward(&ids)?
                    }
                }; // (B, L)
                let part = (cross_entropy_sum(&logits, &targets)? / global.len() as f64)?;
                let store = part.backward()?;
                peft::set_dropout_seed(&mut cls.model, None);
                grads.accumulate(&params, &store)?;
                loss[0] = part.to_scalar::<f32>()? as f64;
            }
            grads.all_reduce(&params, comm)?;
            comm.all_reduce_f64(&mut loss)?;
            // 0 means no clipping, as in `TrainConfig::clip`: a norm of 0 would scale every
            // gradient to 0 and leave the head untrained.
            if cfg.clip > 0.0 {
                grads.clip_global_norm(cfg.clip)?;
            }
            let lr = schedule.lr_at(step);
            opt.step(&grads, lr)?;
            grads.clear();
            step += 1;
            progress(Progress::Step {
                step,
                total,
                epoch,
                loss: loss[0],
                lr,
            });
        }
    }
    cls.score = Linear::new(Weight::Dense(score.as_tensor().detach()));
    cls.model = cls.model.detached();
    Ok(cls)
}

/// HF's `_init_weights` for the head: normal(0, 0.02), seeded.
fn init_head(labels: usize, d: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..labels * d)
        .map(|_| {
            // Box-Muller.
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            (0.02 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, (labels, d), device)?)
}

/// The frozen model's pooled hidden state (D) of the examples `own` picks (None for the
/// others), batched by length.
fn pooled_features(
    cls: &Classifier,
    data: &[Example],
    own: &dyn Fn(usize) -> bool,
    batch_size: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Option<Tensor>>> {
    let device = cls.model.device().clone();
    let mut order: Vec<usize> = (0..data.len()).filter(|&i| own(i)).collect();
    order.sort_by_key(|&i| data[i].ids.len());
    let mut out: Vec<Option<Tensor>> = vec![None; data.len()];
    let mut done = 0;
    for batch in order.chunks(batch_size.max(1) * 2) {
        let rows: Vec<Vec<u32>> = batch.iter().map(|&i| data[i].ids.clone()).collect();
        let ids = cls.batch(&rows, &device)?;
        let f = cls.pooled(&ids)?.to_dtype(DType::F32)?.detach(); // (B, D)
        for (k, &i) in batch.iter().enumerate() {
            out[i] = Some(f.get(k)?);
        }
        done += batch.len();
        progress(Progress::Features {
            done,
            total: data.len(),
        });
    }
    Ok(out)
}

/// Writes the LoRA adapters and the head of `cls` as a PEFT sequence-classification adapter:
/// `adapter_config.json` (`task_type` SEQ_CLS, `modules_to_save` ["classifier", "score"] as
/// PEFT sets them, `base_model_name_or_path` = `base`) and `adapter_model.safetensors` (the
/// A/B matrices and `base_model.model.score.weight`), what PEFT's `PeftModel.from_pretrained`
/// loads onto `AutoModelForSequenceClassification` of the base. Call before [`save`] (which
/// merges the adapters).
pub fn save_adapter(dir: &Path, cls: &mut Classifier, lora: &LoraConfig, base: &str) -> Result<()> {
    let mut cfg = lora.clone();
    cfg.other.insert("task_type".into(), json!("SEQ_CLS"));
    cfg.other
        .insert("base_model_name_or_path".into(), json!(base));
    cfg.modules_to_save = Some(json!(["classifier", "score"]));
    let score = match &cls.score.weight {
        llama3::model::LinearWeight::Dense(t) => t.to_dtype(DType::F32)?,
        _ => {
            return Err(Error::Input(
                "a quantized score head cannot be saved".into(),
            ))
        }
    };
    peft::save_with(&mut cls.model, &cfg, &[("score.weight".into(), score)], dir)?;
    Ok(())
}

/// Writes `cls` as an HF `LlamaForSequenceClassification` directory: config.json (with
/// `id2label`, `label2id`, `pad_token_id`), model.safetensors (LoRA merged, f32), tokenizer.
pub fn save(dir: &Path, cls: &mut Classifier, tok: Option<&Tokenizer>) -> Result<()> {
    atomic::create_dir_all(dir)?;
    peft::merge(&mut cls.model)?;
    cls.model.dequantize()?;
    let c = &cls.model.config;
    let mut config = hf_dir::config_json(c);
    let id2label: serde_json::Map<String, serde_json::Value> = cls
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = cls
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    config["architectures"] = json!([ARCHITECTURE]);
    config["num_labels"] = json!(cls.labels.len());
    config["id2label"] = json!(id2label);
    config["label2id"] = json!(label2id);
    config["pad_token_id"] = json!(cls.pad_token_id);
    atomic::write_json(&dir.join("config.json"), &config)?;
    let mut tensors = cls.model.named_tensors()?;
    let score = match &cls.score.weight {
        llama3::model::LinearWeight::Dense(t) => t.to_dtype(DType::F32)?,
        llama3::model::LinearWeight::Quantized(_) | llama3::model::LinearWeight::Packed(_) => {
            return Err(Error::Input(
                "a quantized score head cannot be saved".into(),
            ))
        }
    };
    tensors.push(("score.weight".to_string(), score));
    safetensors::save(&tensors, &dir.join("model.safetensors"))?;
    if let Some(tok) = tok {
        hf_dir::write_tokenizer(dir, tok, c.max_position_embeddings)?;
    }
    Ok(())
}
