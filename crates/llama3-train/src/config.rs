//! `TrainConfig`: every setting of a training run, as data. The CLI and TOML files map onto
//! it in one place (`llama3-cli/src/train.rs`); defaults are documented on each field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::optim::AdamWConfig;
use crate::schedule::{Decay, LrSchedule};

/// What a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every weight.
    #[default]
    Full,
    /// LoRA adapters on a dense (or dequantized) base, the base frozen.
    Lora,
    /// LoRA adapters on a quantized GGUF base that stays quantized.
    Qlora,
    /// PEFT prompt tuning: the input embeddings of N virtual tokens before every sequence.
    #[serde(rename = "prompt-tuning")]
    PromptTuning,
    /// PEFT prefix tuning: the keys and values of N virtual tokens in every layer.
    #[serde(rename = "prefix-tuning")]
    PrefixTuning,
}

impl Method {
    /// Whether the run trains adapters (and writes a PEFT adapter) rather than the weights.
    pub fn is_adapter(self) -> bool {
        self != Method::Full
    }

    /// LoRA or QLoRA (adapters inside the linears).
    pub fn is_lora(self) -> bool {
        matches!(self, Method::Lora | Method::Qlora)
    }

    /// The prompt-learning method, when it is one.
    pub fn prompt_kind(self) -> Option<llama3::peft::PromptKind> {
        match self {
            Method::PromptTuning => Some(llama3::peft::PromptKind::Prompt),
            Method::PrefixTuning => Some(llama3::peft::PromptKind::Prefix),
            _ => None,
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Method::Full),
            "lora" => Ok(Method::Lora),
            "qlora" => Ok(Method::Qlora),
            "prompt-tuning" | "prompt_tuning" => Ok(Method::PromptTuning),
            "prefix-tuning" | "prefix_tuning" => Ok(Method::PrefixTuning),
            _ => Err(format!(
                "unknown method {s:?} (expected full, lora, qlora, prompt-tuning or \
                 prefix-tuning)"
            )),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Full => "full",
            Method::Lora => "lora",
            Method::Qlora => "qlora",
            Method::PromptTuning => "prompt-tuning",
            Method::PrefixTuning => "prefix-tuning",
        })
    }
}

/// Matmul precision of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 matmuls; f32 master weights, gradients and AdamW state.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?} (expected f32 or bf16)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Training text: files or folders of `.txt` / `.jsonl` (a `text` field per line).
    pub data_path: Vec<PathBuf>,
    /// Held-out text; empty: the last `valid_fraction` of the training blocks.
    pub valid_data_path: Vec<PathBuf>,
    /// Output directory: checkpoints, metrics, the token cache and the final HF model.
    pub model_path: PathBuf,
    /// A preset name (`tiny`, `15m`, `smollm2-135m`, `llama3.2-1b`) to train from scratch,
    /// or an HF model directory / GGUF file to continue from. Default `tiny`.
    pub init: String,
    /// Tokenizer file (`tokenizer.json`, Llama 3 `tokenizer.model`, `.gguf`); required with
    /// a preset (the CLI fills in the default model's), else the init model's own.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per training block (sequence length). Default 256.
    pub seq_len: usize,
    /// Blocks per micro-batch. Default 8.
    pub batch_size: usize,
    /// Micro-batches per optimizer step on each rank. Default 1.
    pub grad_accum: usize,
    /// Ranks of a data-parallel job (set from the launcher, not a setting of its own): each
    /// takes `grad_accum` of a step's micro-batches, so a step sees `batch_size x grad_accum x
    /// world_size` blocks. Default 1.
    pub world_size: usize,
    /// Seconds a rank waits in one collective before it gives up on the others (a rank died
    /// or hangs) and exits naming the call. Default 600.
    pub dist_timeout: u64,
    /// Passes over the training blocks (ignored when `max_steps` is set). Default 1.
    pub num_epochs: usize,
    /// Optimizer steps; overrides `num_epochs`.
    pub max_steps: Option<usize>,
    /// Peak learning rate. Default 1e-3.
    pub learning_rate: f64,
    /// Learning rate at the end of the decay (at most `learning_rate`). Default 1e-4.
    pub min_lr: f64,
    /// Linear warmup steps. Default 100.
    pub warmup: usize,
    /// `cosine` (default), `linear` or `constant`.
    pub lr_schedule: Decay,
    /// AdamW decoupled weight decay on every parameter. Default 0.1.
    pub weight_decay: f64,
    /// AdamW betas. Default (0.9, 0.95).
    pub betas: (f64, f64),
    /// AdamW eps. Default 1e-8.
    pub eps: f64,
    /// Clip gradients to this global L2 norm; 0 disables. Default 1.0.
    pub clip: f64,
    /// Evaluate every this many steps (and at the end); 0 disables. Default 100.
    pub eval_every: usize,
    /// Validation batches per evaluation. Default 20.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end). Default 100.
    pub save_every: usize,
    /// Seeds the initial weights and the data order. Default 1337.
    pub seed: u64,
    /// Held-out share of the training blocks when no valid data is given. Default 0.05.
    pub valid_fraction: f64,
    /// GPUs to use: 0 trains where `device` says, 1 on the first CUDA GPU, N > 1 on N GPUs of
    /// this machine, one rank each (the CLI starts them; a build with the `nccl` feature).
    /// (The CLI maps an explicit `--num-gpus 0` without `--device` to `device = "cpu"`.)
    pub num_gpus: usize,
    /// `auto` (default: the first GPU when built with CUDA and one is present), `cpu`, `cuda`,
    /// `cuda:N`.
    pub device: String,
    /// Matmul precision: `f32` (default) or `bf16` (mixed precision: f32 master weights,
    /// gradients and optimizer state; bf16 matmuls with f32 accumulation).
    pub precision: Precision,
    /// What to train: `full` (every weight, default), `lora` (adapters on a dense base, the
    /// base frozen) or `qlora` (adapters on a quantized GGUF base that stays quantized).
    pub method: Method,
    /// LoRA rank. Default 8.
    pub lora_r: usize,
    /// LoRA alpha (scaling alpha / r, or alpha / sqrt(r) with `use_rslora`). Default 16.
    pub lora_alpha: f64,
    /// Modules that get adapters. Default: all seven projections.
    pub lora_targets: Vec<String>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// DoRA (PEFT's `use_dora`): a trained magnitude per output row of every adapted weight.
    pub use_dora: bool,
    /// Prompt and prefix tuning: virtual tokens before every sequence. Default 20.
    pub num_virtual_tokens: usize,
    /// Preference tuning on `{"prompt", "chosen", "rejected"}` pairs (DPO and its variants,
    /// `dpo`) instead of the language-model loss, whatever `method` trains.
    pub dpo: bool,
    /// DPO's beta: how far from the reference the policy may move. Default 0.1 (TRL's).
    pub beta: f64,
    /// TRL's `loss_type`: sigmoid (DPO, default), hinge, ipo or robust.
    pub loss_type: crate::dpo::DpoLoss,
    /// The `robust` loss's assumed fraction of flipped labels, in [0, 0.5). Default 0.
    pub label_smoothing: f64,
    /// Continual learning: earlier data (text or fine-tuning JSONL) replayed beside the new
    /// data (`replay`), its held-out part scored at every evaluation.
    pub replay_data: Option<PathBuf>,
    /// The fraction of each micro-batch's rows that are replay, in [0, 1) (0: the earlier
    /// data only scored, forgetting measured without replay). Default 0.25.
    pub replay_ratio: f64,
    /// Dropout on the adapters' inputs while training (PEFT `lora_dropout`). Default 0.
    pub lora_dropout: f64,
    /// Recompute each layer's activations during backward instead of keeping them: memory of
    /// one layer's graph instead of all, for one extra forward (see `recompute`).
    pub gradient_checkpointing: bool,
    /// Write TensorBoard event files beside `metrics.jsonl`. Default: on when llama3-train is
    /// built with its `tensorboard` feature (as the `llama3` CLI is); asking for them
    /// without the feature is an error.
    pub tensorboard: bool,
    /// Distillation: a teacher model (HF directory or GGUF, the student's vocabulary) whose
    /// logits the student learns on the same tokens (`distill`).
    pub teacher: Option<PathBuf>,
    /// Weight of the teacher's KL term; the cross-entropy gets `1 - kd_alpha`. Default 0.5.
    pub kd_alpha: f64,
    /// Temperature of both softmaxes in the KL term (scaled back by T²). Default 1.0.
    pub kd_temperature: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data_path: Vec::new(),
            valid_data_path: Vec::new(),
            model_path: PathBuf::from("run"),
            init: "tiny".into(),
            tokenizer: None,
            seq_len: 256,
            batch_size: 8,
            grad_accum: 1,
            world_size: 1,
            dist_timeout: 600,
            num_epochs: 1,
            max_steps: None,
            learning_rate: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            lr_schedule: Decay::Cosine,
            weight_decay: 0.1,
            betas: (0.9, 0.95),
            eps: 1e-8,
            clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            save_every: 100,
            seed: 1337,
            valid_fraction: 0.05,
            num_gpus: 0,
            device: "auto".into(),
            precision: Precision::F32,
            method: Method::Full,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_targets: llama3::peft::TARGETS[..7]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            use_rslora: false,
            use_dora: false,
            num_virtual_tokens: 20,
            dpo: false,
            beta: 0.1,
            loss_type: crate::dpo::DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            replay_data: None,
            replay_ratio: 0.25,
            lora_dropout: 0.0,
            gradient_checkpointing: false,
            tensorboard: cfg!(feature = "tensorboard"),
            teacher: None,
            kd_alpha: 0.5,
            kd_temperature: 1.0,
        }
    }
}

impl TrainConfig {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.learning_rate,
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    pub fn schedule(&self, total_steps: usize) -> LrSchedule {
        LrSchedule {
            lr: self.learning_rate,
            // A floor above the peak would make the "decay" climb (default min_lr 1e-4 with a
            // fine-tuning --learning-rate 5e-5): never above the peak.
            min_lr: self.min_lr.min(self.learning_rate),
            warmup: self.warmup,
            total: total_steps,
            decay: self.lr_schedule,
        }
    }

    /// Micro-batches per optimizer step over all ranks.
    pub fn global_accum(&self) -> usize {
        self.grad_accum * self.world_size
    }

    /// Whether `other` describes the same run, so that its checkpoints can be resumed: the
    /// settings that shape data, model and optimizer agree (the step count, the
    /// evaluation/saving cadence, and the split of a step's micro-batches over ranks may
    /// change).
    pub fn same_run(&self, other: &TrainConfig) -> bool {
        let strip = |c: &TrainConfig| TrainConfig {
            grad_accum: c.global_accum(),
            world_size: 1,
            dist_timeout: 0,
            num_gpus: 0,
            max_steps: None,
            num_epochs: 0,
            eval_every: 0,
            eval_batches: 0,
            save_every: 0,
            device: String::new(),
            gradient_checkpointing: false,
            tensorboard: false,
            ..c.clone()
        };
        strip(self) == strip(other)
    }

    /// Checks values that would fail later or silently do nothing.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Input(m));
        if self.data_path.is_empty() {
            return bad("no training data: give --data-path".into());
        }
        for (name, v) in [
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("world_size", self.world_size),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.seq_len < 2 {
            return bad("seq_len must be at least 2 (a block predicts its next tokens)".into());
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return bad(format!(
                "valid_fraction {} must be in [0, 1)",
                self.valid_fraction
            ));
        }
        if self.num_gpus > 0 {
            let have = llama3::device::gpu_count();
            if self.num_gpus > have {
                return bad(format!(
                    "--num-gpus {} asked, but {have} GPUs available{}; train on the CPU with \
                     --num-gpus 0",
                    self.num_gpus,
                    if cfg!(feature = "cuda") {
                        ""
                    } else {
                        " (this build has no CUDA support)"
                    }
                ));
            }
            if self.num_gpus > 1 && !cfg!(feature = "nccl") {
                return bad(format!(
                    "--num-gpus {}: training on several GPUs needs a build with the `nccl` \
                     cargo feature (scripts/build-cuda.sh builds it); on CPUs, start ranks with \
                     `mpirun -np N` on a build with the `mpi` feature",
                    self.num_gpus
                ));
            }
        }
        if self.replay_data.is_some() {
            if !(0.0..1.0).contains(&self.replay_ratio) {
                return bad(format!(
                    "--replay-ratio {} must be in [0, 1): the fraction of each batch's rows \
                     that are replay (0 scores the earlier data without replaying it)",
                    self.replay_ratio
                ));
            }
            if self.dpo || self.gradient_checkpointing {
                return bad(
                    "--replay-data does not combine with --dpo or --gradient-checkpointing".into(),
                );
            }
        }
        if self.dpo {
            if !(self.beta > 0.0 && self.beta.is_finite()) {
                return bad(format!("--beta {} must be above 0", self.beta));
            }
            if !(0.0..0.5).contains(&self.label_smoothing) {
                return bad(format!(
                    "--label-smoothing {} must be in [0, 0.5)",
                    self.label_smoothing
                ));
            }
            if self.teacher.is_some() || self.gradient_checkpointing {
                return bad(
                    "--dpo does not combine with --teacher or --gradient-checkpointing".into(),
                );
            }
        }
        if self.use_dora && !self.method.is_lora() {
            return bad(format!(
                "--use-dora is a LoRA variant: use it with --method lora or qlora, not {}",
                self.method
            ));
        }
        if self.method.prompt_kind().is_some() {
            if self.num_virtual_tokens == 0 {
                return bad("--num-virtual-tokens must be at least 1".into());
            }
            if self.gradient_checkpointing {
                return bad(format!(
                    "--method {} does not combine with --gradient-checkpointing",
                    self.method
                ));
            }
        }
        if self.method.is_lora() {
            if !(0.0..1.0).contains(&self.lora_dropout) {
                return bad(format!(
                    "lora_dropout {} is not in [0, 1)",
                    self.lora_dropout
                ));
            }
            if self.lora_r == 0 {
                return bad("lora_r must be at least 1".into());
            }
            if let Some(t) = self
                .lora_targets
                .iter()
                .find(|t| !llama3::peft::TARGETS.contains(&t.as_str()))
            {
                return bad(format!(
                    "LoRA target {t:?}: expected some of {}",
                    llama3::peft::TARGETS.join(", ")
                ));
            }
            if self.lora_targets.is_empty() {
                return bad("no LoRA targets".into());
            }
        }
        if self.teacher.is_some() {
            if !(0.0..=1.0).contains(&self.kd_alpha) {
                return bad(format!("--kd-alpha {} must be in [0, 1]", self.kd_alpha));
            }
            if !(self.kd_temperature > 0.0 && self.kd_temperature.is_finite()) {
                return bad(format!(
                    "--kd-temperature {} must be above 0",
                    self.kd_temperature
                ));
            }
            if self.gradient_checkpointing {
                return bad("--teacher does not combine with --gradient-checkpointing".into());
            }
        }
        crate::metrics::check_tensorboard(self.tensorboard)?;
        self.device()?;
        Ok(())
    }

    /// What the DPO loss takes of these settings.
    pub fn dpo_settings(&self) -> crate::dpo::DpoSettings {
        crate::dpo::DpoSettings {
            beta: self.beta,
            loss: self.loss_type,
            label_smoothing: self.label_smoothing,
        }
    }

    /// The PEFT config of a LoRA / QLoRA run.
    pub fn lora_config(&self) -> llama3::peft::LoraConfig {
        let targets: Vec<&str> = self.lora_targets.iter().map(String::as_str).collect();
        let mut c =
            llama3::peft::LoraConfig::new(self.lora_r, self.lora_alpha, &targets, self.use_rslora);
        c.lora_dropout = self.lora_dropout;
        c.use_dora = self.use_dora;
        c
    }

    /// The PEFT adapter config an adapter run writes, as JSON (`model`: the shapes prompt
    /// learning records).
    pub fn adapter_config(&self, model: &llama3::Llama) -> serde_json::Value {
        let json = match self.method.prompt_kind() {
            Some(kind) => serde_json::to_value(llama3::peft::PromptConfig::new(
                kind,
                self.num_virtual_tokens,
                model,
            )),
            None => serde_json::to_value(self.lora_config()),
        };
        json.unwrap_or_default()
    }

    /// Writes the adapter of an adapter run as a PEFT adapter directory.
    pub fn save_adapter(
        &self,
        model: &mut llama3::Llama,
        dir: &std::path::Path,
    ) -> crate::Result<()> {
        match self.method.prompt_kind() {
            Some(kind) => {
                let config = llama3::peft::PromptConfig::new(kind, self.num_virtual_tokens, model);
                llama3::peft::save_virtual(model, &config, dir)?
            }
            None => llama3::peft::save(model, &self.lora_config(), dir)?,
        }
        Ok(())
    }

    /// The device to train on.
    pub fn device(&self) -> crate::Result<candle_core::Device> {
        Ok(match self.num_gpus {
            0 => llama3::device::parse(&self.device)?,
            1 => llama3::device::parse("cuda:0")?,
            // One GPU per rank: the rank's place on this machine picks it.
            _ => {
                let local = crate::dist::Launch::from_env().map_or(0, |l| l.local_rank);
                llama3::device::parse(&format!("cuda:{local}"))?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fine-tuning learning rate below the default floor decays from the peak, never up.
    #[test]
    fn schedule_never_climbs_above_the_peak() {
        let c = TrainConfig {
            learning_rate: 5e-5,
            warmup: 2,
            ..TrainConfig::default()
        };
        assert!(c.min_lr > c.learning_rate);
        let s = c.schedule(24);
        let lrs: Vec<f64> = (0..=24).map(|i| s.lr_at(i)).collect();
        assert!(lrs.iter().all(|&l| l <= 5e-5 + 1e-18), "{lrs:?}");
        assert!(lrs[2..].windows(2).all(|w| w[1] <= w[0] + 1e-18), "{lrs:?}");
    }

    /// TensorBoard is on by default exactly when built in; asking for it without the feature
    /// fails validation, naming the feature.
    #[test]
    fn tensorboard_without_the_feature_is_an_error() {
        let c = TrainConfig {
            data_path: vec!["data.txt".into()],
            device: "cpu".into(),
            tensorboard: true,
            ..TrainConfig::default()
        };
        assert_eq!(
            TrainConfig::default().tensorboard,
            cfg!(feature = "tensorboard")
        );
        #[cfg(feature = "tensorboard")]
        c.validate().unwrap();
        #[cfg(not(feature = "tensorboard"))]
        {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("`tensorboard` cargo feature"), "{e}");
        }
        let off = TrainConfig {
            tensorboard: false,
            ..c
        };
        off.validate().unwrap();
    }
}
