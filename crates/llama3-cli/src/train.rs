//! `llama3 train`: flags and TOML map onto `TrainConfig` here, in one place; the loop is
//! `llama3_train::pretrain::train`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llama3_train::pretrain::{train, Event};
use llama3_train::setup::{prepare, Phase};
use llama3_train::{Decay, Method, Precision, TrainConfig};

#[derive(Args, Debug)]
// A flag given twice takes the last value (shell aliases, scripts that append flags).
#[command(args_override_self = true)]
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
    /// (HF directory or GGUF file) to continue training. Default: tiny.
    #[arg(long, value_name = "PRESET|MODEL")]
    pub init: Option<String>,
    /// Tokenizer (tokenizer.json, Llama 3 tokenizer.model, .gguf); required with a preset.
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
    #[arg(long, value_name = "B1,B2", value_delimiter = ',', num_args = 2)]
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
    /// GPUs to use: 1 trains on the first CUDA GPU (builds with --features cuda); 0 follows
    /// --device.
    #[arg(long = "num-gpus", visible_alias = "num_gpus", value_name = "N")]
    pub num_gpus: Option<usize>,
    /// Where to train: cpu, cuda, cuda:N or auto (a GPU when built with CUDA and present).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Matmul precision: f32, or bf16 (mixed precision with f32 master weights and optimizer
    /// state).
    #[arg(long, value_name = "f32|bf16")]
    pub precision: Option<Precision>,
    /// What to train: full (every weight), lora (adapters on a dense or dequantized base), or
    /// qlora (adapters on a quantized GGUF base that stays quantized). LoRA runs write a PEFT
    /// adapter (adapter_config.json + adapter_model.safetensors) instead of a model.
    #[arg(long, value_name = "full|lora|qlora")]
    pub method: Option<Method>,
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
    #[arg(long = "lora-targets", value_name = "LIST", value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// Recompute activations layer by layer during backward: memory of one layer's graph
    /// instead of all of them, for about one extra forward of compute.
    #[arg(
        long = "gradient-checkpointing",
        visible_alias = "gradient_checkpointing"
    )]
    pub gradient_checkpointing: bool,
    /// Continue the run in --model-path from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
}

/// The TOML file (or defaults), then each flag given.
fn to_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("bad config {}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    if !a.data_path.is_empty() {
        c.data_path = a.data_path.clone();
    }
    if !a.valid_data_path.is_empty() {
        c.valid_data_path = a.valid_data_path.clone();
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(
        model_path,
        init,
        seq_len,
        batch_size,
        grad_accum,
        num_epochs,
        learning_rate
    );
    set!(
        min_lr,
        warmup,
        lr_schedule,
        weight_decay,
        clip,
        eval_every,
        save_every,
        seed
    );
    set!(
        num_gpus,
        device,
        precision,
        method,
        lora_r,
        lora_alpha,
        lora_dropout,
        lora_targets,
        eval_batches
    );
    if a.rslora {
        c.use_rslora = true;
    }
    if a.gradient_checkpointing {
        c.gradient_checkpointing = true;
    }
    if a.tokenizer.is_some() {
        c.tokenizer = a.tokenizer.clone();
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if let Some(b) = &a.betas {
        c.betas = (b[0], b[1]);
    }
    Ok(c)
}

pub fn run(a: TrainArgs) -> Result<()> {
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let cfg = to_config(&a)?;
    let tty = std::io::stderr().is_terminal();
    let tok_bar = bar(
        tty,
        "tokenize",
        "{prefix} [{bar:30}] {bytes}/{total_bytes} eta {eta}",
    );
    let setup = prepare(&cfg, a.resume, &|phase| match phase {
        Phase::Tokenizing(what, done, total) => {
            if let Some(b) = &tok_bar {
                b.set_prefix(format!("tokenize {what}"));
                b.set_length(total);
                b.set_position(done);
            }
        }
        Phase::Examples(what, kept, dropped) => {
            eprintln!("{what}: {kept} fine-tuning examples");
            if dropped > 0 {
                eprintln!(
                    "{what}: {dropped} examples dropped: no assistant turn, or nothing to learn \
                     left within --seq-len {}",
                    cfg.seq_len
                );
            }
        }
    })?;
    if let Some(b) = tok_bar {
        b.finish_and_clear();
    }
    eprintln!(
        "model: {:.2} M parameters; {} steps of {} x {} x {} tokens; output {}",
        setup.model.config.num_parameters() as f64 / 1e6,
        setup.total_steps,
        cfg.grad_accum,
        cfg.batch_size,
        cfg.seq_len,
        cfg.model_path.display()
    );
    let step_bar = bar(
        tty,
        "train",
        "{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
    );
    let summary = train(&cfg, setup, a.resume, &mut |e| match e {
        Event::Start { step, total } => {
            if let Some(b) = &step_bar {
                b.set_length(total as u64);
                b.set_position(step as u64);
            }
        }
        Event::Step(s) => {
            let msg = format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                s.loss, s.lr, s.tokens_per_s
            );
            match &step_bar {
                Some(b) => {
                    b.set_position(s.step as u64);
                    b.set_message(msg);
                }
                None if s.step % 10 == 0 => eprintln!("step {} {msg}", s.step),
                None => {}
            }
        }
        Event::Eval(e) => {
            let line = format!("eval step {}: loss {:.4} ppl {:.2}", e.step, e.loss, e.ppl);
            match &step_bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        Event::Saved(dir) => tracing::info!("checkpoint {}", dir.display()),
    })?;
    if let Some(b) = step_bar {
        b.finish_and_clear();
    }
    eprintln!(
        "done: {} steps{}; model in {}",
        summary.steps,
        summary
            .final_eval
            .map(|e| format!(", held-out loss {:.4} (ppl {:.2})", e.loss, e.ppl))
            .unwrap_or_default(),
        cfg.model_path.display()
    );
    let png = cfg.model_path.join("loss.png");
    match llama3_train::plot::loss_png(&cfg.model_path, &png) {
        Ok(_) => eprintln!("loss curve: {}", png.display()),
        Err(e) => eprintln!("warning: no loss curve: {e}"),
    }
    Ok(())
}

fn bar(tty: bool, prefix: &str, template: &str) -> Option<ProgressBar> {
    if !tty {
        return None;
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let b = ProgressBar::new(0).with_style(style);
    b.set_prefix(prefix.to_string());
    Some(b)
}
