//! The training loop: causal-LM training of every weight (pretraining from scratch or
//! continued, full fine-tuning), read top to bottom as nanoGPT's train.py.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use llama3::weights::hf_dir;
use llama3::Llama;
use serde::{Deserialize, Serialize};

use crate::batches::Dataset;
use crate::checkpoint::{self, TrainState};
use crate::config::{Method, TrainConfig};
use crate::dist::{self, Collective};
use crate::loss::{causal_lm_loss_sum, counted_labels};
use crate::metrics::{EvalLog, Metrics, Record, StepLog};
use crate::optim::AdamW;
use crate::setup::Setup;
use crate::stop::stop_requested;
use crate::{recompute, Error, Grads, Result};

/// What the loop reports as it goes: the CLI draws its progress bar from these, the Python
/// binding hands them to a callback. Serialized, `kind` names the variant (`step` and `eval`
/// carry the fields of their `metrics.jsonl` records).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event<'a> {
    /// Training starts at `step` (0, or the resumed checkpoint's) of `total`.
    Start { step: usize, total: usize },
    /// An optimizer step, as logged.
    Step(&'a StepLog),
    /// An evaluation on the held-out data, as logged.
    Eval(&'a EvalLog),
    /// A checkpoint of `step` was written to `path`.
    Saved { step: usize, path: &'a Path },
    /// A stop was requested ([`crate::stop`]): the loop ends after `step` steps;
    /// `checkpoint` is what `--resume` continues from (None when the run has none yet).
    Stopped {
        step: usize,
        checkpoint: Option<&'a Path>,
    },
}

/// What a run did, for the caller (the CLI's last lines, Python's return value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The run directory (`model_path`).
    pub run_dir: PathBuf,
    /// Optimizer steps done, those of the run this one resumed included.
    pub steps: usize,
    /// Steps the run was set to take.
    pub total_steps: usize,
    /// The step this call started at: 0, or the resumed checkpoint's.
    pub start_step: usize,
    /// Tokens trained on over the whole run.
    pub tokens_seen: u64,
    /// Training loss of the last step (None when the run has no step yet).
    pub final_loss: Option<f64>,
    /// The run's last evaluation.
    pub final_eval: Option<EvalLog>,
    /// The run's evaluation with the lowest held-out loss.
    pub best_eval: Option<EvalLog>,
    /// Wall-clock seconds of this call's loop (setup and tokenizing excluded).
    pub seconds: f64,
    /// Whether a stop request ended the run before its last step; resume it with `--resume`.
    pub interrupted: bool,
    /// The latest checkpoint (what `--resume` continues from).
    pub checkpoint: Option<PathBuf>,
    /// The trained model (an HF directory, or a PEFT adapter for LoRA runs): the run
    /// directory once finished, None when interrupted.
    pub model: Option<PathBuf>,
}

/// Trains `setup.model` on `setup.train` as `cfg` says, resuming from the run's latest
/// checkpoint when `resume`; writes the final model into `cfg.model_path` as an HF directory.
/// A stop request ([`crate::stop`]) ends it between two steps: the last step done is
/// checkpointed and the summary says `interrupted` (the caller clears old requests first).
///
/// Data parallel over the ranks of `comm` ([`dist::Single`] for one process): rank `r`
/// takes micro-batches `r, r + W, ...` of each step's `grad_accum x W`, the gradients are
/// summed across ranks before clipping, and every rank steps alike; rank 0 alone writes
/// metrics, checkpoints and the final model.
pub fn train(
    cfg: &TrainConfig,
    setup: Setup,
    resume: bool,
    comm: &dyn Collective,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let Setup {
        mut model,
        tokenizer,
        mut train,
        valid,
        total_steps,
        teacher,
        reference,
        mut replay,
    } = setup;
    let dpo = cfg.dpo_settings();
    let run = cfg.model_path.as_path();
    let device = model.device().clone();
    let adapter = cfg.method.is_adapter();
    let params = match cfg.method {
        Method::Full => model.trainable_params()?,
        Method::Lora | Method::Qlora => llama3::peft::trainable(&mut model)?,
        Method::PromptTuning | Method::PrefixTuning => llama3::peft::trainable_virtual(&mut model)?,
    };
    let mut opt = AdamW::new(params, cfg.adamw())?;
    let schedule = cfg.schedule(total_steps);
    let mut state = TrainState {
        step: 0,
        micro_batches: 0,
        tokens_seen: 0,
        config: cfg.clone(),
        model_config: model.config.clone(),
        rng: "none: the data order and LoRA dropout masks derive from config.seed and the \
              micro-batch index"
            .into(),
    };
    let started = Instant::now();
    let mut last_checkpoint = checkpoint::latest(run)?.filter(|_| resume);
    if let Some(dir) = &last_checkpoint {
        let params = opt.params().to_vec();
        let saved = checkpoint::restore(dir, &params, &mut opt)?;
        if saved.model_config != model.config {
            return Err(Error::format(dir, "checkpoint of a different model shape"));
        }
        state.step = saved.step;
        state.micro_batches = saved.micro_batches;
        state.tokens_seen = saved.tokens_seen;
    }
    // Every rank starts from rank 0's weights.
    dist::broadcast_params(comm, opt.params())?;
    let (rank, world) = (comm.rank(), comm.size());
    let owner = rank == 0;
    let start = state.step;
    let mut metrics = match owner {
        true => Metrics::open(run, start, cfg.tensorboard)?,
        false => Metrics::in_memory(),
    };
    let mut grads = Grads::new(opt.params().len());
    let done = |state: &TrainState, metrics: &Metrics, checkpoint, model| {
        summary(
            state,
            metrics,
            total_steps,
            start,
            started,
            checkpoint,
            model,
        )
    };
    on_event(Event::Start {
        step: start,
        total: total_steps,
    });
    // The step of the latest checkpoint: the resumed one's, then each written here.
    let mut saved_step = start;
    loop {
        let step = state.step;
        let last = step >= total_steps;
        // Learning rate of this step.
        let lr = schedule.lr_at(step);

        // Eval and checkpoint, unless the run this one resumes did them at this step (rank
        // 0's metrics say). A stop asked for by now, on any rank, skips the evaluation: a
        // resume runs it (none in the metrics).
        let eval_due = cfg.eval_every > 0 && (step.is_multiple_of(cfg.eval_every) || last);
        let evaluated = metrics
            .records()
            .iter()
            .any(|r| matches!(r, Record::Eval(e) if e.step == step));
        let mut stop = dist::any(comm, stop_requested())?;
        let eval_now = dist::from_root(comm, eval_due && !evaluated)?;
        if let (Some(v), true, false) = (&valid, eval_now, stop) {
            let (loss, rewards) = match &reference {
                Some(r) => {
                    let (loss, sums) = crate::dpo::evaluate(&model, r, v.as_ref(), cfg, comm)?;
                    (loss, Some(sums.rewards()))
                }
                None => (evaluate(&model, v.as_ref(), cfg, &device, comm)?, None),
            };
            let replay_loss = match replay.as_ref().and_then(|r| r.valid.as_ref()) {
                Some(rv) => Some(evaluate(&model, rv.as_ref(), cfg, &device, comm)?),
                None => None,
            };
            let log = EvalLog {
                step,
                loss,
                ppl: loss.exp(),
                rewards,
                replay_loss,
            };
            metrics.write(&Record::Eval(log.clone()))?;
            on_event(Event::Eval(&log));
            stop = dist::any(comm, stop_requested())?;
        }
        let save_due = cfg.save_every > 0 && step.is_multiple_of(cfg.save_every);
        if step > saved_step && (save_due || last || stop) {
            if owner {
                let dir = checkpoint::save(run, &state, &model, &opt)?;
                on_event(Event::Saved { step, path: &dir });
                last_checkpoint = Some(dir);
            }
            saved_step = step;
        }

        // Stop when asked: between steps, the last one done checkpointed.
        if stop {
            let checkpoint = last_checkpoint.as_deref();
            on_event(Event::Stopped { step, checkpoint });
            return Ok(done(&state, &metrics, last_checkpoint, None));
        }
        if last {
            break;
        }

        // Micro-steps with accumulation: each micro-batch's summed loss is divided by the
        // step's counted tokens (over all ranks), so the step's loss is their mean whatever
        // the split. Rank r takes the step's micro-batches r, r + W, ...
        let timer = Instant::now();
        let comm_before = comm.busy();
        let micro = |m: usize| state.micro_batches + m * world + rank;
        let batches = (0..cfg.grad_accum)
            .map(|m| {
                let batch = train.batch(micro(m), &device)?;
                match replay.as_mut() {
                    Some(r) => r.mix(micro(m), batch, &device),
                    None => Ok(batch),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // What the step's loss is a mean over: counted tokens, or pairs under DPO.
        let mut counted = [0f64];
        for (_, labels) in &batches {
            counted[0] += match reference {
                Some(_) => (labels.dim(0)? / 2) as f64,
                None => counted_labels(labels)? as f64,
            };
        }
        comm.all_reduce_f64(&mut counted)?;
        let counted = counted[0] as usize;
        let mut loss = 0f64;
        let mut pair_sums = crate::dpo::PairSums::default();
        for (m, (ids, labels)) in batches.iter().enumerate() {
            // LoRA dropout masks: a function of the seed and the micro-batch (exact resume).
            let micro = micro(m) as u64;
            llama3::peft::set_dropout_seed(&mut model, Some((cfg.seed, micro)));
            if cfg.gradient_checkpointing {
                let params = opt.params();
                loss +=
                    recompute::loss_and_grads(&model, ids, labels, counted, params, &mut grads)?;
                continue;
            }
            // Distillation: the teacher's KL beside the cross-entropy, same positions; DPO:
            // the pairs' preference loss against the reference.
            let sum = match (&reference, &teacher) {
                (Some(r), _) => {
                    let (sum, sums) = crate::dpo::loss_sum(&model, r, ids, labels, &dpo)?;
                    pair_sums.add(&sums);
                    sum
                }
                (None, Some(t)) => crate::distill::loss_sum(&model, t, ids, labels)?.0,
                (None, None) => causal_lm_loss_sum(&model, ids, labels)?.0,
            };
            let part = (sum / counted.max(1) as f64)?;
            loss += part.to_scalar::<f32>()? as f64;
            grads.accumulate(opt.params(), &part.backward()?)?;
        }

        llama3::peft::set_dropout_seed(&mut model, None); // off for evaluation

        // Sum the gradients, the losses and the token counts over the ranks, once the
        // slowest rank is here (timed apart: the exchange alone is `comm_s`).
        let waited = Instant::now();
        comm.barrier()?;
        let wait_s = comm.busy().map(|_| waited.elapsed().as_secs_f64());
        grads.all_reduce(opt.params(), comm)?;
        let [p0, p1, p2, p3] = pair_sums.as_array();
        let mut sums = [
            loss,
            batches.iter().map(|(ids, _)| ids.elem_count() as f64).sum(),
            p0,
            p1,
            p2,
            p3,
        ];
        comm.all_reduce_f64(&mut sums)?;
        let [loss, tokens, p0, p1, p2, p3] = sums;
        let rewards = reference
            .as_ref()
            .map(|_| crate::dpo::PairSums::from_array([p0, p1, p2, p3]).rewards());
        let tokens = tokens as u64;
        let comm_s = comm
            .busy()
            .zip(comm_before)
            .map(|(after, before)| (after - before).as_secs_f64() - wait_s.unwrap_or(0.0));

        // Clip.
        let grad_norm = if cfg.clip > 0.0 {
            grads.clip_global_norm(cfg.clip)?
        } else {
            grads.global_norm()?
        };

        // Step.
        opt.step(&grads, lr)?;

        // Zero grads.
        grads.clear();

        // Log.
        state.step += 1;
        state.micro_batches += cfg.grad_accum * world;
        state.tokens_seen += tokens;
        let log = StepLog {
            step: state.step,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / timer.elapsed().as_secs_f64().max(1e-9),
            comm_s,
            wait_s,
            rewards,
        };
        metrics.write(&Record::Train(log.clone()))?;
        on_event(Event::Step(&log));
        if !loss.is_finite() {
            return Err(Error::Input(format!(
                "loss is {loss} at step {}: lower --learning-rate or check the data",
                state.step
            )));
        }
    }
    // The final model, next to the run's files: an HF directory, or a PEFT adapter (with the
    // tokenizer, as PEFT's save_pretrained with a tokenizer does). Rank 0's.
    match adapter {
        _ if !owner => {}
        true => {
            cfg.save_adapter(&mut model, run)?;
            hf_dir::write_tokenizer(run, &tokenizer, model.config.max_position_embeddings)?;
        }
        false => hf_dir::write_model_dir(run, &model, Some(&tokenizer))?,
    }
    Ok(done(
        &state,
        &metrics,
        last_checkpoint,
        Some(run.to_path_buf()),
    ))
}

/// The summary at one of the loop's two exits (finished, or stopped).
fn summary(
    state: &TrainState,
    metrics: &Metrics,
    total_steps: usize,
    start_step: usize,
    started: Instant,
    checkpoint: Option<PathBuf>,
    model: Option<PathBuf>,
) -> Summary {
    let evals = metrics.records().iter().filter_map(|r| match r {
        Record::Eval(e) => Some(e),
        Record::Train(_) => None,
    });
    let final_loss = metrics.records().iter().rev().find_map(|r| match r {
        Record::Train(s) => Some(s.loss),
        Record::Eval(_) => None,
    });
    Summary {
        run_dir: state.config.model_path.clone(),
        steps: state.step,
        total_steps,
        start_step,
        tokens_seen: state.tokens_seen,
        final_loss,
        final_eval: evals.clone().next_back().cloned(),
        best_eval: evals.min_by(|a, b| a.loss.total_cmp(&b.loss)).cloned(),
        seconds: started.elapsed().as_secs_f64(),
        interrupted: model.is_none(),
        checkpoint,
        model,
    }
}

/// Mean loss over the first `eval_batches` batches of the held-out blocks, in order; batch
/// `i` on rank `i mod W`, the sums added over ranks.
pub fn evaluate(
    model: &Llama,
    valid: &dyn Dataset,
    cfg: &TrainConfig,
    device: &Device,
    comm: &dyn Collective,
) -> Result<f64> {
    // No gradient graph for evaluation: fused kernels, less memory.
    let model = &model.detached();
    let mut sums = [0f64, 0f64];
    let idx: Vec<usize> = (0..valid.len()).collect();
    let chunks = idx.chunks(cfg.batch_size).take(cfg.eval_batches.max(1));
    for (i, chunk) in chunks.enumerate() {
        if i % comm.size() != comm.rank() {
            continue;
        }
        let (ids, labels) = valid.batch(chunk, device)?;
        let (s, n) = causal_lm_loss_sum(model, &ids, &labels)?;
        sums[0] += s.to_scalar::<f32>()? as f64;
        sums[1] += n as f64;
    }
    comm.all_reduce_f64(&mut sums)?;
    Ok(sums[0] / sums[1].max(1.0))
}
