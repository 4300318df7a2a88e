//! `llama3 train` and `llama3.train(...)` from Python: one settings type (the flags below),
//! mapped onto `TrainConfig` in one place (`config`), run by one function (`session`) over
//! the loop `llama3_train::pretrain::train`. The CLI parses the flags from its command line,
//! Python's keyword arguments become the same flags (`settings`).

mod config;
mod ranks;
mod session;
pub mod settings;
#[cfg(unix)]
mod sigint;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llama3_train::{Decay, Method, Precision, TrainEvent, TrainSummary};

/// Said after the flags in `llama3 train --help`.
const AFTER_HELP: &str = "\
Without --init and --tokenizer, the preset \"tiny\" is trained from scratch with the default \
model's tokenizer (SmolLM2-135M-Instruct's, fetched into the cache on first use, as `llama3 \
pull` does); both are said on stderr when taken. To fine-tune instead, give --init a model \
(an HF directory or a GGUF file).

Data parallelism: `mpirun -np N llama3 train ...` (or srun, or torchrun's variables) runs N \
ranks of one job on a build with the `mpi` cargo feature (CPUs; one machine or many), \
--num-gpus N on a build with `nccl` (the GPUs of this machine). Each rank takes its share of \
every step's --batch-size x --grad-accum x N blocks; rank 0 writes the run. To stop all ranks \
after a step with a checkpoint, send SIGUSR1 to mpirun (it forwards it to the ranks). See \
docs/distributed.md.

Ctrl-C stops after the current step: a checkpoint is written, the command says how to \
continue (the same command with --resume) and exits with status 130. A second Ctrl-C quits \
at once.";

#[derive(Args, Debug)]
// A flag given twice takes the last value (shell aliases, scripts that append flags).
#[command(args_override_self = true, after_help = AFTER_HELP)]
pub struct TrainArgs {
    /// TOML file with any of the settings below (keys as the flags, with underscores);
    /// flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Training text: files or folders of .txt/.md/.jsonl (JSONL: a "text" field per line).
    #[arg(long = "data-path", visible_alias = "data_path", value_name = "PATH", num_args = 1..)]
    pub data_path: Vec<PathBuf>,
    /// Held-out text (default: the last --valid-fraction of the training blocks).
    #[arg(long = "valid-data-path", visible_alias = "valid_data_path", value_name = "PATH", num_args = 1..)]
    pub valid_data_path: Vec<PathBuf>,
    /// Output directory: checkpoints, metrics, token cache, and the final HF model.
    #[arg(
        long = "model-path",
        visible_alias = "model_path",
        short = 'o',
        value_name = "DIR"
    )]
    pub model_path: Option<PathBuf>,
    /// Preset to train from scratch (tiny, 15m, smollm2-135m, llama3.2-1b) or a model
    /// (HF directory or GGUF file) to continue training. Default: tiny, from scratch.
    #[arg(long, value_name = "PRESET|MODEL")]
    pub init: Option<String>,
    /// Tokenizer (tokenizer.json, Llama 3 tokenizer.model, .gguf). Default: the --init
    /// model's own; with a preset, the default model's (SmolLM2-135M-Instruct's 49152-token
    /// BPE with its chat template).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Tokens per training block. Default 256.
    #[arg(long = "seq-len", visible_alias = "seq_len", value_name = "T")]
    pub seq_len: Option<usize>,
    /// Blocks per micro-batch. Default 8.
    #[arg(long = "batch-size", visible_alias = "batch_size", value_name = "B")]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step. Default 1.
    #[arg(long = "grad-accum", visible_alias = "grad_accum", value_name = "N")]
    pub grad_accum: Option<usize>,
    /// Passes over the training data (unless --max-steps). Default 1.
    #[arg(long = "num-epochs", visible_alias = "num_epochs", value_name = "N")]
    pub num_epochs: Option<usize>,
    /// Optimizer steps (overrides --num-epochs).
    #[arg(long = "max-steps", visible_alias = "max_steps", value_name = "N")]
    pub max_steps: Option<usize>,
    /// Peak learning rate. Default 1e-3.
    #[arg(long = "learning-rate", visible_aliases = ["learning_rate", "lr"], value_name = "LR")]
    pub learning_rate: Option<f64>,
    /// Learning rate at the end of the decay (at most --learning-rate). Default 1e-4.
    #[arg(long = "min-lr", visible_alias = "min_lr", value_name = "LR")]
    pub min_lr: Option<f64>,
    /// Linear warmup steps. Default 100.
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<usize>,
    /// cosine, linear or constant. Default cosine.
    #[arg(
        long = "lr-schedule",
        visible_alias = "lr_schedule",
        value_name = "KIND"
    )]
    pub lr_schedule: Option<Decay>,
    /// AdamW decoupled weight decay. Default 0.1.
    #[arg(
        long = "weight-decay",
        visible_alias = "weight_decay",
        value_name = "WD"
    )]
    pub weight_decay: Option<f64>,
    /// AdamW betas as B1,B2. Default 0.9,0.95.
    // One value split at the comma (`num_args = 2` made `--betas 0.9,0.95` an error, as clap
    // counts values before splitting); the count is checked when mapped to the config.
    #[arg(long, value_name = "B1,B2", value_delimiter = ',')]
    pub betas: Option<Vec<f64>>,
    /// Clip gradients to this global norm (0 = off). Default 1.0.
    #[arg(long, value_name = "NORM")]
    pub clip: Option<f64>,
    /// Evaluate every N steps (0 = off). Default 100.
    #[arg(long = "eval-every", visible_alias = "eval_every", value_name = "N")]
    pub eval_every: Option<usize>,
    /// Validation batches per evaluation. Default 20.
    #[arg(
        long = "eval-batches",
        visible_alias = "eval_batches",
        value_name = "N"
    )]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N steps. Default 100.
    #[arg(long = "save-every", visible_alias = "save_every", value_name = "N")]
    pub save_every: Option<usize>,
    /// Seed of the initial weights and the data order. Default 1337.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// GPUs to use: 1 trains on the first CUDA GPU (builds with --features cuda); N > 1 starts
    /// N data-parallel ranks, one per GPU (builds with --features nccl); 0 trains on the CPU
    /// (or where --device says). Default: where --device says.
    #[arg(long = "num-gpus", visible_alias = "num_gpus", value_name = "N")]
    pub num_gpus: Option<usize>,
    /// Where to train: cpu, cuda, cuda:N or auto (a GPU when built with CUDA and present).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Matmul precision: f32, or bf16 (mixed precision with f32 master weights and optimizer
    /// state).
    #[arg(long, value_name = "f32|bf16")]
    pub precision: Option<Precision>,
    /// What to train: full (every weight), lora (adapters on a dense or dequantized base),
    /// qlora (adapters on a quantized GGUF base that stays quantized), prompt-tuning (the
    /// input embeddings of --num-virtual-tokens virtual tokens before every sequence) or
    /// prefix-tuning (their keys and values in every layer). All but full write a PEFT adapter
    /// (adapter_config.json + adapter_model.safetensors) instead of a model; use it with
    /// --lora on any command. `dpo` is full training with --dpo.
    #[arg(long, value_name = "full|lora|qlora|prompt-tuning|prefix-tuning|dpo")]
    pub method: Option<MethodArg>,
    /// Preference tuning on JSONL pairs {"prompt", "chosen", "rejected"} (strings, or chat
    /// message lists rendered with the chat template): DPO against the model as loaded (the
    /// base model under LoRA) instead of the language-model loss. Logs reward accuracy and
    /// margin (train and held-out).
    #[arg(long)]
    pub dpo: bool,
    /// DPO's beta (TRL's): how far the policy may move from the reference. Default 0.1.
    #[arg(long, value_name = "BETA")]
    pub beta: Option<f64>,
    /// DPO loss, as TRL names it: sigmoid (DPO), hinge (SLiC), ipo or robust. Default sigmoid.
    #[arg(
        long = "loss-type",
        visible_alias = "loss_type",
        value_name = "sigmoid|hinge|ipo|robust"
    )]
    pub loss_type: Option<llama3_train::dpo::DpoLoss>,
    /// The robust DPO loss's assumed fraction of flipped preferences, in [0, 0.5). Default 0.
    #[arg(
        long = "label-smoothing",
        visible_alias = "label_smoothing",
        value_name = "EPS"
    )]
    pub label_smoothing: Option<f64>,
    /// Prompt and prefix tuning: how many virtual tokens. Default 20.
    #[arg(
        long = "num-virtual-tokens",
        visible_alias = "num_virtual_tokens",
        value_name = "N"
    )]
    pub num_virtual_tokens: Option<usize>,
    /// LoRA rank. Default 8.
    #[arg(long = "lora-r", visible_alias = "lora_r", value_name = "R")]
    pub lora_r: Option<usize>,
    /// LoRA alpha. Default 16.
    #[arg(
        long = "lora-alpha",
        visible_alias = "lora_alpha",
        value_name = "ALPHA"
    )]
    pub lora_alpha: Option<f64>,
    /// Dropout probability on the adapters' inputs while training (PEFT's lora_dropout, e.g.
    /// 0.05). Default 0.
    #[arg(
        long = "lora-dropout",
        visible_alias = "lora_dropout",
        value_name = "P"
    )]
    pub lora_dropout: Option<f64>,
    /// Modules that get adapters, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,
    /// up_proj,down_proj,lm_head). Default: the seven projections.
    #[arg(
        long = "lora-targets",
        visible_alias = "lora_targets",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub lora_targets: Option<Vec<String>>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// DoRA (weight-decomposed LoRA, PEFT's use_dora): each adapted weight's rows are
    /// rescaled to a trained magnitude vector. Saved in PEFT's layout; `llama3 merge` folds it
    /// in (llama.cpp cannot load DoRA adapters).
    #[arg(long = "use-dora", visible_alias = "use_dora")]
    pub use_dora: bool,
    /// Recompute activations layer by layer during backward: memory of one layer's graph
    /// instead of all of them, for about one extra forward of compute.
    #[arg(
        long = "gradient-checkpointing",
        visible_alias = "gradient_checkpointing"
    )]
    pub gradient_checkpointing: bool,
    /// Continual learning: earlier data (a text file or folder, or a previous task's JSONL)
    /// replayed in every batch beside the new data; its held-out part (the last
    /// --valid-fraction) is scored at every evaluation (`replay_loss` in metrics.jsonl).
    #[arg(
        long = "replay-data",
        visible_alias = "replay_data",
        value_name = "PATH"
    )]
    pub replay_data: Option<PathBuf>,
    /// The fraction of each batch's rows that are replay, in [0, 1): 0 only scores the earlier
    /// data (forgetting without replay, for comparison). Default 0.25.
    #[arg(
        long = "replay-ratio",
        visible_alias = "replay_ratio",
        value_name = "R"
    )]
    pub replay_ratio: Option<f64>,
    /// Distillation: a teacher model (HF directory or GGUF with the same vocabulary) whose
    /// distribution the student learns on the same tokens: loss (1 - A) x CE + A x T² x
    /// KL(teacher || student) at temperature T (the logged training loss is that loss).
    #[arg(long, value_name = "MODEL")]
    pub teacher: Option<PathBuf>,
    /// Weight A of the teacher's KL term (--teacher). Default 0.5.
    #[arg(long = "kd-alpha", visible_alias = "kd_alpha", value_name = "A")]
    pub kd_alpha: Option<f64>,
    /// Softmax temperature T of the KL term (--teacher). Default 1.0.
    #[arg(
        long = "kd-temperature",
        visible_alias = "kd_temperature",
        value_name = "T"
    )]
    pub kd_temperature: Option<f64>,
    /// Continue the run in --model-path from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Worker threads (default: all cores; the ranks of a data-parallel job on one machine
    /// share them).
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Data-parallel jobs (`mpirun -np N llama3 train ...`, srun, torchrun, --num-gpus N):
    /// seconds a rank waits in one exchange with the others before it exits naming the wait
    /// (a rank died or hangs). Default 600.
    #[arg(
        long = "dist-timeout",
        visible_alias = "dist_timeout",
        value_name = "SECS"
    )]
    pub dist_timeout: Option<u64>,
}

/// `--method`: what to train, or `dpo` (full training with `--dpo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Train(Method),
    Dpo,
}

impl std::str::FromStr for MethodArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dpo" => Ok(MethodArg::Dpo),
            _ => s
                .parse()
                .map(MethodArg::Train)
                .map_err(|e: String| e.replace("or prefix-tuning)", "prefix-tuning or dpo)")),
        }
    }
}

/// Trains as `llama3 train` would with these settings: the names of its flags (`data_path`
/// or `data-path`, and their aliases such as `lr`), each with its values: one for most, any
/// number for `data_path` / `valid_data_path`, a list for `betas` and `lora_targets`,
/// `true`/`false` for switches (`resume`, `rslora`, `gradient_checkpointing`); no values
/// leaves a setting unset. Same defaults and checks as the CLI (a bad name or value is a
/// [`SettingsError`]); `on_event` sees each logged step and evaluation (and the start,
/// checkpoints and a stop). Progress goes to stderr as in the CLI. No signal handler is
/// installed: a host that sees an interrupt calls [`llama3_train::request_stop`], and the
/// run returns at the next step's end with a checkpoint and `interrupted` set.
///
/// [`SettingsError`]: settings::SettingsError
pub fn train(
    settings: &[(String, Vec<String>)],
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    let args = settings::parse(settings)?;
    session::train(
        &args,
        "call again with the same settings and resume=True",
        on_event,
    )
}

/// `llama3 train`: a Ctrl-C during the loop stops it at a safe point (exit status 130).
pub(crate) fn run(args: TrainArgs) -> Result<i32> {
    // `--num-gpus N` from a shell: start the N ranks, each this command again.
    let launch = llama3_train::dist::Launch::from_env().map_err(anyhow::Error::msg)?;
    if launch.world_size == 1 {
        let cfg = config::to_config(&args, &mut |_| {})?;
        if cfg.num_gpus > 1 {
            return ranks::run_local(cfg.num_gpus);
        }
    }
    #[cfg(unix)]
    let _sigint = sigint::Handler::install()?;
    let summary = session::train(&args, "run the same command with --resume", &mut |e| {
        if let TrainEvent::Start { .. } = e {
            #[cfg(unix)]
            sigint::arm();
        }
    })?;
    Ok(if summary.interrupted { 130 } else { 0 })
}
