//! Everything a run needs before its first step: the output directory checked, tokenizer,
//! model (preset from scratch, or a checkpoint to continue), tokenized data and step count.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use llama3::tokenizer::Tokenizer;
use llama3::weights::atomic;
use llama3::Llama;

use crate::batches::{Blocks, Dataset, HeldOut, Shuffled};
use crate::config::{Method, Precision, TrainConfig};
use crate::corpus::{collect_files, tokenize_cached};
use crate::dpo::{self, Pairs};
use crate::init::RandomInit;
use crate::presets::{preset, PRESETS};
use crate::sft::{self, Examples};
use crate::{Error, Result};

pub struct Setup {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub train: Shuffled,
    pub valid: Option<Box<dyn Dataset>>,
    pub total_steps: usize,
    /// Distillation's teacher (`--teacher`), loaded and checked against the vocabulary.
    pub teacher: Option<crate::distill::Teacher>,
    /// Preference tuning's reference policy (`--dpo`): the model as loaded, adapters off.
    pub reference: Option<Llama>,
    /// Continual learning's replayed data (`--replay-data`).
    pub replay: Option<crate::replay::Replay>,
}

/// What `prepare` reports while it works.
pub enum Phase<'a> {
    /// Tokenizing `what` (`train` or `valid`): bytes done, bytes total.
    Tokenizing(&'a str, u64, u64),
    /// Fine-tuning examples of `what` read: kept, dropped (nothing left to learn after
    /// truncation to --seq-len).
    Examples(&'a str, usize, usize),
    /// Preference pairs of `what` read: kept, dropped (the prompt alone fills --seq-len).
    Pairs(&'a str, usize, usize),
    /// A run of `.0` ranks resumed on `.1`: the same global batch and data order, the sums
    /// grouped differently (equal to rounding, not bit for bit).
    Regrouped(usize, usize),
}

/// Checks the output directory, loads or builds the model, tokenizes the data.
pub fn prepare(
    cfg: &TrainConfig,
    resume: bool,
    progress: &(dyn Fn(Phase) + Sync),
) -> Result<Setup> {
    prepare_as(cfg, resume, true, progress)
}

/// [`prepare`] for one rank of a data-parallel job: the `owner` (rank 0, first) checks and
/// claims the run directory and writes the token cache; the others come after it and read
/// the cache.
pub fn prepare_as(
    cfg: &TrainConfig,
    resume: bool,
    owner: bool,
    progress: &(dyn Fn(Phase) + Sync),
) -> Result<Setup> {
    cfg.validate()?;
    if owner {
        if let Some(old) = check_run_dir(cfg, resume)? {
            if old.world_size != cfg.world_size {
                progress(Phase::Regrouped(old.world_size, cfg.world_size));
            }
        }
    }
    let device = cfg.device()?;
    let (mut model, tokenizer) = model_and_tokenizer(cfg, &device)?;
    if cfg.precision == Precision::Bf16 {
        model.set_compute_dtype(Some(DType::BF16));
    }
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(Error::Input(format!(
            "the tokenizer has {} tokens, the model's vocabulary only {}",
            tokenizer.vocab_size(),
            model.config.vocab_size
        )));
    }
    let teacher = match &cfg.teacher {
        Some(p) => Some(crate::distill::Teacher::load(
            p,
            model.config.vocab_size,
            &tokenizer,
            cfg.kd_alpha,
            cfg.kd_temperature,
            &device,
        )?),
        None => None,
    };
    let cache = cfg.model_path.join("cache");
    let files = collect_files(&cfg.data_path)?;
    let valid_files = match cfg.valid_data_path.is_empty() {
        true => Vec::new(),
        false => collect_files(&cfg.valid_data_path)?,
    };
    let data = Data {
        cfg,
        tokenizer: &tokenizer,
        cache: &cache,
        progress,
    };
    let (train, valid) = data.load(&files, &valid_files, "")?;
    if let Some(v) = valid.as_ref().filter(|v| v.is_empty()) {
        return Err(Error::Input(format!(
            "the validation data gives no {}",
            v.unit()
        )));
    }
    let replay = match &cfg.replay_data {
        Some(p) => {
            let files = collect_files(std::slice::from_ref(p))?;
            let split = data.load(&files, &[], "replay ")?;
            Some(crate::replay::Replay::new(cfg, split, &tokenizer)?)
        }
        None => None,
    };
    let train = Shuffled::new(train, cfg.batch_size, cfg.seed)?;
    let total_steps = match cfg.max_steps {
        Some(n) => n,
        None => cfg.num_epochs * (train.batches_per_epoch() / cfg.global_accum()),
    };
    if total_steps == 0 {
        return Err(Error::Input(format!(
            "no optimizer step fits: {} batches per epoch with --grad-accum {} on {} ranks; \
             lower --batch-size or --grad-accum, or set --max-steps",
            train.batches_per_epoch(),
            cfg.grad_accum,
            cfg.world_size
        )));
    }
    if owner {
        claim_run_dir(cfg)?;
    }
    let reference = cfg.dpo.then(|| dpo::reference(&model));
    Ok(Setup {
        model,
        tokenizer,
        train,
        valid,
        total_steps,
        teacher,
        reference,
        replay,
    })
}

/// What loading data needs: the run's settings, tokenizer, token cache and progress report.
struct Data<'a> {
    cfg: &'a TrainConfig,
    tokenizer: &'a Tokenizer,
    cache: &'a Path,
    progress: &'a (dyn Fn(Phase) + Sync),
}

type Split = (Box<dyn Dataset>, Option<Box<dyn Dataset>>);

impl Data<'_> {
    /// Training data from `files` and held-out data from `valid_files` (or the last
    /// `valid_fraction` of the training data): preference pairs (`--dpo`), fine-tuning JSONL
    /// or text. `label` prefixes the progress names (`replay `).
    fn load(&self, files: &[PathBuf], valid_files: &[PathBuf], label: &str) -> Result<Split> {
        let Data {
            cfg,
            tokenizer,
            cache,
            progress,
        } = *self;
        // Preference pairs, fine-tuning JSONL (chats, prompt/completion pairs) or text.
        let n_pairs = files.iter().filter(|f| dpo::is_pair_file(f)).count();
        let not_pairs = files
            .iter()
            .chain(valid_files)
            .find(|f| !dpo::is_pair_file(f));
        if let (true, Some(f)) = (cfg.dpo, not_pairs) {
            return Err(Error::Input(format!(
                "--dpo trains on JSONL preference pairs {{\"prompt\", \"chosen\", \"rejected\"}}; \
                 {} is not one",
                f.display()
            )));
        }
        if let (false, true) = (cfg.dpo, n_pairs > 0) {
            return Err(Error::Input(
                "the data holds preference pairs (prompt, chosen, rejected): train on them with \
                 --dpo (or --method dpo)"
                    .into(),
            ));
        }
        let n_sft = files.iter().filter(|f| sft::is_sft_file(f)).count();
        let (train, valid): Split = if cfg.dpo {
            let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
            let pairs = |files: &[std::path::PathBuf], what: &str| -> Result<Pairs> {
                let (pairs, dropped) = dpo::load(files, tokenizer, cfg.seq_len)?;
                progress(Phase::Pairs(what, pairs.len(), dropped));
                let max_len = cfg.seq_len;
                Ok(Pairs {
                    pairs,
                    pad,
                    max_len,
                })
            };
            self.split(pairs, files, valid_files, label)?
        } else if n_sft > 0 {
            if n_sft < files.len() || valid_files.iter().any(|f| !sft::is_sft_file(f)) {
                return Err(Error::Input(
                    "the data mixes fine-tuning JSONL (messages, or prompt/completion) with \
                     plain text; train on one kind at a time"
                        .into(),
                ));
            }
            let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
            let examples = |files: &[std::path::PathBuf], what: &str| -> Result<Examples> {
                let (examples, dropped) = sft::load(files, tokenizer, cfg.seq_len)?;
                progress(Phase::Examples(what, examples.len(), dropped));
                Ok(Examples { examples, pad })
            };
            self.split(examples, files, valid_files, label)?
        } else {
            let tokens = |files: &[std::path::PathBuf], what: &str| -> Result<Blocks> {
                let report = |done, total| progress(Phase::Tokenizing(what, done, total));
                let file = tokenize_cached(files, tokenizer, cache, &report)?;
                Ok(Blocks::all(Arc::new(file), cfg.seq_len))
            };
            self.split(tokens, files, valid_files, label)?
        };
        Ok((train, valid))
    }

    /// `load`ed training data and its held-out part: `valid_files`, or the training data's
    /// last `valid_fraction`.
    fn split<D: HeldOut>(
        &self,
        load: impl Fn(&[PathBuf], &str) -> Result<D>,
        files: &[PathBuf],
        valid_files: &[PathBuf],
        label: &str,
    ) -> Result<Split> {
        let all = load(files, &format!("{label}train"))?;
        let (train, valid) = match valid_files.is_empty() {
            true => all.split(self.cfg.valid_fraction),
            false => (all, Some(load(valid_files, &format!("{label}valid"))?)),
        };
        Ok((
            Box::new(train),
            valid.map(|v| Box::new(v) as Box<dyn Dataset>),
        ))
    }
}

/// A fresh run needs an empty (or new) directory; `--resume` needs the same run's (returned).
fn check_run_dir(cfg: &TrainConfig, resume: bool) -> Result<Option<TrainConfig>> {
    let run = &cfg.model_path;
    let saved = run.join("train_config.json");
    if saved.exists() {
        let text = std::fs::read_to_string(&saved).map_err(|e| Error::io(&saved, e))?;
        let old: TrainConfig =
            serde_json::from_str(&text).map_err(|e| Error::format(&saved, e.to_string()))?;
        if !resume {
            return Err(Error::Input(format!(
                "{} already holds a training run: pass --resume to continue it, or choose \
                 another --model-path",
                run.display()
            )));
        }
        if old.global_accum() != cfg.global_accum() {
            return Err(Error::Input(format!(
                "{} was trained with {} micro-batches per step ({} ranks x --grad-accum {}); \
                 on {} ranks resume with --grad-accum {} to keep that global batch",
                run.display(),
                old.global_accum(),
                old.world_size,
                old.grad_accum,
                cfg.world_size,
                match old.global_accum() % cfg.world_size {
                    0 => (old.global_accum() / cfg.world_size).to_string(),
                    _ => format!(
                        "(none fits: {} is not a multiple of {})",
                        old.global_accum(),
                        cfg.world_size
                    ),
                }
            )));
        }
        if !old.same_run(cfg) {
            return Err(Error::Input(format!(
                "{} holds a different run (its settings are in {}); --resume continues only \
                 the same run",
                run.display(),
                saved.display()
            )));
        }
        atomic::create_dir_all(run)?;
        return Ok(Some(old));
    } else if run.join("config.json").exists() {
        return Err(Error::Input(format!(
            "{} holds a model that is not a training run of ours; choose another --model-path",
            run.display()
        )));
    }
    atomic::create_dir_all(run)?;
    Ok(None)
}

/// Marks the directory as this run's, once the inputs are known to be good (a run that failed
/// on bad input can be retried without --resume).
fn claim_run_dir(cfg: &TrainConfig) -> Result<()> {
    let saved = cfg.model_path.join("train_config.json");
    Ok(atomic::write_json(&saved, cfg)?)
}

fn model_and_tokenizer(cfg: &TrainConfig, device: &Device) -> Result<(Llama, Tokenizer)> {
    let given_tok = match &cfg.tokenizer {
        Some(p) => Some(Tokenizer::from_file(p)?),
        None => None,
    };
    let init = Path::new(&cfg.init);
    if !PRESETS.contains(&cfg.init.as_str()) && !init.exists() {
        return Err(Error::Input(format!(
            "--init {:?} is neither a preset ({}) nor an existing model",
            cfg.init,
            PRESETS.join(", ")
        )));
    }
    if PRESETS.contains(&cfg.init.as_str()) {
        if cfg.method.is_adapter() {
            return Err(Error::Input(format!(
                "--method {} adapts a trained model: give --init a model directory or GGUF, \
                 not the preset {:?}",
                cfg.method, cfg.init
            )));
        }
        let tok = given_tok.ok_or_else(|| {
            Error::Input(format!(
                "training the preset {:?} from scratch needs --tokenizer (a tokenizer.json, \
                 or a model whose tokenizer to use)",
                cfg.init
            ))
        })?;
        let eos = tok.eos_id().into_iter().collect();
        let config = preset(&cfg.init, tok.vocab_size(), cfg.seq_len, tok.bos_id(), eos)?;
        let src = RandomInit::new(cfg.seed, DType::F32, device);
        let model = Llama::load(&src, &config, None, device)?;
        return Ok((model, tok));
    }
    let opts = llama3::loader::LoadOptions {
        dtype: DType::F32,
        device: device.clone(),
        progress: None,
        tokenizer: true,
    };
    let loaded = llama3::loader::load(init, &opts)?;
    let tok = match (given_tok, loaded.tokenizer) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(Error::Input(format!(
                "{} carries no tokenizer: give --tokenizer",
                init.display()
            )))
        }
    };
    let mut model = loaded.model;
    let quantized = model
        .linears_mut()
        .iter()
        .any(|(_, l)| l.weight.is_quantized());
    match cfg.method {
        // QLoRA keeps the GGUF blocks; the adapters are the only parameters.
        Method::Qlora if !quantized => {
            return Err(Error::Input(format!(
                "--method qlora needs a quantized base (a GGUF with quantized weights); {} is                  dense: use --method lora",
                init.display()
            )))
        }
        Method::Qlora => {}
        // Prompt learning leaves every weight frozen as it is (gradients reach the virtual
        // tokens through quantized matmuls as QLoRA's reach its adapters).
        Method::PromptTuning | Method::PrefixTuning => {}
        // Full fine-tuning and LoRA on a GGUF model use its f32 dequantization.
        Method::Full | Method::Lora => model.dequantize()?,
    }
    if cfg.method.is_lora() {
        let targets: Vec<&str> = cfg.lora_targets.iter().map(String::as_str).collect();
        llama3::peft::add_adapters(&mut model, &cfg.lora_config(), &targets, cfg.seed)?;
    }
    if let Some(kind) = cfg.method.prompt_kind() {
        llama3::peft::add_virtual(&mut model, kind, cfg.num_virtual_tokens, cfg.seed)?;
    }
    Ok((model, tok))
}
