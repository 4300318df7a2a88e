//! `llama3 classify train|eval|predict`: sequence classification with an HF
//! `LlamaForSequenceClassification` head (`llama3_train::classify`, `llama3::classify`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama3::classify::{default_pad, encode, Classifier, PredictOptions};
use llama3::eval::data::{read_labelled, Columns, LabelledExample};
use llama3::eval::metrics::ClassificationReport;
use llama3::eval::prompted::Labels;
use llama3::eval::subset;
use llama3::loader::LoadOptions;
use llama3::peft::{LoraConfig, TARGETS};
use llama3::tokenizer::Tokenizer;
use llama3_train::classify::{self, ClsConfig, ClsMethod, Example, Progress};
use llama3_train::dist::{self, Launch};

use crate::args::ModelArgs;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(subcommand)]
    pub command: ClassifyCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClassifyCommand {
    /// Train a classification head (alone, with LoRA, or with every weight) on labelled text
    /// (CSV or JSONL with text and label fields); writes an HF LlamaForSequenceClassification
    /// directory.
    Train(Box<TrainArgs>),
    /// Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of a trained
    /// classifier on labelled text.
    Eval(EvalArgs),
    /// Label texts with a trained classifier (probabilities per label).
    Predict(PredictArgs),
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Field (JSONL) or column (CSV) holding the text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,
    /// Field or column holding the label.
    #[arg(long, default_value = "label", value_name = "NAME")]
    pub label_column: String,
    /// Use at most N examples (drawn by --seed).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Tokens per text at most (longer texts keep their beginning).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_len: usize,
    /// Texts per forward pass.
    #[arg(
        short = 'b',
        long = "batch-size",
        default_value_t = 8,
        value_name = "N"
    )]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The base model (a causal LM: GGUF, HF directory; default: the default model).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data: .csv or .jsonl (optionally .bz2).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Held-out data, evaluated after training (its labels must all occur in training).
    #[arg(long, value_name = "FILE")]
    pub valid: Option<PathBuf>,
    /// Output directory for the classifier (config.json, model.safetensors, tokenizer).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// What to train: the head alone on the frozen model, LoRA adapters + head, or everything.
    #[arg(long, default_value = "lora", value_parser = ["head", "lora", "full"])]
    pub method: String,
    /// Label values in index order, comma-separated (default: those of the training data,
    /// sorted).
    #[arg(long, value_name = "A,B,...")]
    pub labels: Option<String>,
    /// Passes over the training data (default: 20 for head, 2 otherwise).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Peak learning rate (default: 1e-3 head, 2e-4 lora, 2e-5 full).
    #[arg(long = "learning-rate", visible_alias = "lr", value_name = "LR")]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.0, value_name = "WD")]
    pub weight_decay: f64,
    /// Fraction of the steps spent in linear warmup (then cosine decay to 0).
    #[arg(long, default_value_t = 0.06, value_name = "F")]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    pub clip: f64,
    /// Data-parallel jobs (`mpirun -np N llama3 classify train ...`, a build with the `mpi`
    /// feature): seconds a rank waits in one exchange with the others before it exits naming
    /// the wait.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub dist_timeout: u64,
    /// LoRA rank (`--method lora`).
    #[arg(long, default_value_t = 8, value_name = "R")]
    pub lora_r: usize,
    /// LoRA alpha: the adapters are scaled by alpha / r (alpha / sqrt(r) with --rslora).
    #[arg(long, default_value_t = 16.0, value_name = "ALPHA")]
    pub lora_alpha: f64,
    /// Dropout probability on the adapters' inputs while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub lora_dropout: f64,
    /// Modules that get adapters.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// DoRA (weight-decomposed LoRA, PEFT's use_dora): a trained magnitude per output row.
    #[arg(long = "use-dora", visible_alias = "use_dora")]
    pub use_dora: bool,
    /// With --method lora on a quantized (GGUF) base: keep the base quantized (QLoRA: less
    /// memory, slower on the CPU) instead of dequantizing it to f32 first.
    #[arg(long)]
    pub qlora: bool,
    #[command(flatten)]
    pub data_args: DataArgs,
}

/// A PEFT sequence-classification adapter on a base model, instead of a classifier directory.
#[derive(Args, Debug)]
pub struct AdapterArgs {
    /// A PEFT SEQ_CLS adapter directory (LoRA + the `score` head in modules_to_save, as PEFT
    /// or `llama3 classify train --method lora` (OUT/adapter) writes it); -m is then the base
    /// model it was trained on (GGUF file or HF directory), dequantized to f32 as training
    /// used it.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Label names of the adapter's head, in index order (an adapter stores none; default
    /// LABEL_0, LABEL_1, ...).
    #[arg(long, value_name = "A,B,..", requires = "adapter")]
    pub labels: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A classifier directory (from `llama3 classify train`, or any HF
    /// LlamaForSequenceClassification directory); with --adapter, the base model.
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Labelled data: .csv or .jsonl (optionally .bz2).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Write the report (accuracy, macro-F1, per class, confusion) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub data_args: DataArgs,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A classifier directory; with --adapter, the base model.
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Texts to label (repeatable).
    #[arg(long, value_name = "TEXT", required_unless_present = "file")]
    pub text: Vec<String>,
    /// A file with one text per line.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tokens per text at most.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_len: usize,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    match a.command {
        ClassifyCommand::Train(t) => train(*t),
        ClassifyCommand::Eval(e) => eval(e),
        ClassifyCommand::Predict(p) => predict(p),
    }
}

fn read(path: &Path, d: &DataArgs) -> Result<Vec<LabelledExample>> {
    if d.limit == Some(0) || d.max_len == 0 || d.batch_size == 0 {
        bail!("--limit, --max-len and --batch-size must be at least 1");
    }
    let cols = Columns {
        text: d.text_column.clone(),
        label: d.label_column.clone(),
    };
    let all = read_labelled(path, &cols)?;
    Ok(subset(all.len(), d.limit, d.seed)
        .into_iter()
        .map(|i| all[i].clone())
        .collect())
}

fn train(a: TrainArgs) -> Result<()> {
    let method: ClsMethod = a.method.parse().map_err(anyhow::Error::msg)?;
    if let Some(bad) = a
        .lora_targets
        .iter()
        .find(|t| !TARGETS.contains(&t.as_str()))
    {
        bail!(
            "--lora-targets {bad:?}: expected some of {}",
            TARGETS.join(", ")
        );
    }
    let d = &a.data_args;
    let data = read(&a.data, d)?;
    let labels = match &a.labels {
        Some(spec) => Labels::parse_map(spec)?,
        None => Labels::from_examples(&data)?,
    };
    let source = a.data.display().to_string();
    let targets = labels.indices(&data, &source)?;
    let valid = match &a.valid {
        Some(p) => {
            let v = read(p, d)?;
            // Labels the training data never shows cannot be learned: say so before training.
            let idx = labels
                .indices(&v, &p.display().to_string())
                .context("the held-out data has a label missing from the training data")?;
            Some((v, idx))
        }
        None => None,
    };
    let mut loaded = a.model.load()?;
    let tok = loaded
        .tokenizer
        .take()
        .context("the base model has no tokenizer: pass --tokenizer FILE")?;
    let examples: Vec<Example> = data
        .iter()
        .zip(&targets)
        .map(|(e, &label)| {
            Ok(Example {
                ids: encode(&tok, &e.text, d.max_len)?,
                label,
            })
        })
        .collect::<Result<_>>()?;
    let (epochs, lr) = match method {
        ClsMethod::Head => (20, 1e-3),
        ClsMethod::Lora => (2, 2e-4),
        ClsMethod::Full => (2, 2e-5),
    };
    let targets_str: Vec<&str> = a.lora_targets.iter().map(String::as_str).collect();
    let cfg = ClsConfig {
        method,
        epochs: a.epochs.unwrap_or(epochs),
        batch_size: d.batch_size,
        lr: a.lr.unwrap_or(lr),
        weight_decay: a.weight_decay,
        warmup_ratio: a.warmup_ratio,
        clip: a.clip,
        seed: d.seed,
        lora: LoraConfig {
            lora_dropout: a.lora_dropout,
            use_dora: a.use_dora,
            ..LoraConfig::new(a.lora_r, a.lora_alpha, &targets_str, a.rslora)
        },
        targets: a.lora_targets.clone(),
        dense_base: !a.qlora,
    };
    let pad = default_pad(&loaded.model, Some(&tok));
    // A rank of a data-parallel job (`mpirun -np N llama3 classify train ...`): each takes
    // its share of every batch; rank 0 reports, evaluates and writes.
    let launch = Launch::from_env().map_err(anyhow::Error::msg)?;
    let gpu = loaded.model.device().is_cuda();
    let comm = dist::connect(&launch, gpu, std::time::Duration::from_secs(a.dist_timeout))?;
    let owner = comm.rank() == 0;
    if owner {
        eprintln!(
            "training {} on {} examples, labels {:?}, {} epochs, lr {:.1e}{}",
            a.method,
            examples.len(),
            labels.names,
            cfg.epochs,
            cfg.lr,
            match comm.size() {
                1 => String::new(),
                n => format!(", {n} ranks ({})", comm.backend()),
            }
        );
    }
    let start = std::time::Instant::now();
    let feat_bar = crate::progress::bar("features", "texts").filter(|_| owner);
    let step_bar = crate::progress::bar("training", "steps").filter(|_| owner);
    let mut cls = classify::train(
        loaded.model,
        labels.names.clone(),
        pad,
        &examples,
        &cfg,
        comm.as_ref(),
        &mut |p| match p {
            _ if !owner => {}
            Progress::Features { done, total } => match &feat_bar {
                Some(b) => {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                }
                None if done == total || done % 512 < 16 => {
                    eprintln!("features {done}/{total}")
                }
                None => {}
            },
            Progress::Step {
                step,
                total,
                epoch,
                loss,
                lr,
            } => match &step_bar {
                Some(b) => {
                    b.set_length(total as u64);
                    b.set_position(step as u64);
                    b.set_message(format!("epoch {} loss {loss:.4} lr {lr:.2e}", epoch + 1));
                }
                None if step == total || step % 50 == 0 => {
                    eprintln!(
                        "step {step}/{total} epoch {} loss {loss:.4} lr {lr:.2e}",
                        epoch + 1
                    )
                }
                None => {}
            },
        },
    )?;
    for b in [feat_bar, step_bar].into_iter().flatten() {
        b.finish_and_clear();
    }
    if !owner {
        return Ok(());
    }
    eprintln!("trained in {:.1} s", start.elapsed().as_secs_f64());
    if let Some((v, idx)) = valid {
        let rep = evaluate(&cls, &tok, &v, &idx, d)?;
        print_report(&rep);
    }
    if a.method == "lora" {
        let dir = a.out.join("adapter");
        // The default model's HF repository, where PEFT users find it.
        let base = a
            .model
            .model
            .as_deref()
            .unwrap_or("HuggingFaceTB/SmolLM2-135M-Instruct");
        classify::save_adapter(&dir, &mut cls, &cfg.lora, base)?;
        eprintln!("PEFT adapter (SEQ_CLS) written to {}", dir.display());
    }
    classify::save(&a.out, &mut cls, Some(&tok))?;
    eprintln!("classifier written to {}", a.out.display());
    Ok(())
}

/// Predictions of `cls` on `data` (whose label indices are `truth`) as a report.
fn evaluate(
    cls: &Classifier,
    tok: &Tokenizer,
    data: &[LabelledExample],
    truth: &[usize],
    d: &DataArgs,
) -> Result<ClassificationReport> {
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let opts = PredictOptions {
        max_len: d.max_len,
        batch_size: d.batch_size,
    };
    let bar = crate::progress::bar("classify", "texts");
    let rep = cls.evaluate(tok, &texts, truth, &opts, &mut progress(&bar))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(rep)
}

/// Progress of a classification: the bar, or a line every 50 batches without a terminal.
fn progress(bar: &Option<indicatif::ProgressBar>) -> impl FnMut(usize, usize) + '_ {
    let mut batches = 0;
    move |done, total| {
        match bar {
            Some(b) => {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
            None if batches % 50 == 0 => eprintln!("classified {done}/{total}"),
            None => {}
        }
        batches += 1;
    }
}

fn load_classifier(dir: &Path, adapter: &AdapterArgs) -> Result<(Classifier, Tokenizer)> {
    let Some(adir) = &adapter.adapter else {
        let (cls, tok) = Classifier::load(dir, &LoadOptions::default())
            .with_context(|| format!("cannot load the classifier in {}", dir.display()))?;
        let tok = tok.context("the classifier directory has no tokenizer.json")?;
        return Ok((cls, tok));
    };
    let mut loaded = llama3::loader::load(dir, &LoadOptions::default())
        .with_context(|| format!("cannot load the base model {}", dir.display()))?;
    // Dense, as training (and PEFT on an HF base) saw it: the same numbers as the merged
    // directory `classify train` writes beside the adapter.
    loaded.model.dequantize()?;
    let tok = loaded
        .tokenizer
        .context("the base model has no tokenizer")?;
    let ad = llama3::peft::Adapter::load(adir, loaded.model.device())
        .with_context(|| format!("cannot load the adapter in {}", adir.display()))?;
    let labels = adapter
        .labels
        .as_ref()
        .map(|l| l.split(',').map(|s| s.trim().to_string()).collect());
    let cls = Classifier::with_adapter(loaded.model, Some(&tok), &ad, labels)
        .with_context(|| format!("cannot use {} as a classifier", adir.display()))?;
    Ok((cls, tok))
}

fn eval(a: EvalArgs) -> Result<()> {
    let data = read(&a.data, &a.data_args)?;
    let (cls, tok) = load_classifier(&a.model, &a.adapter)?;
    let labels = Labels::parse_map(&cls.labels.join(","))?;
    let truth = labels
        .indices(&data, &a.data.display().to_string())
        .with_context(|| match (&a.adapter.adapter, &a.adapter.labels) {
            (Some(_), None) => "the data has a label this classifier does not know (an adapter \
                                has no label names: give the head's with --labels A,B,..)"
                .to_string(),
            _ => "the data has a label this classifier does not know".to_string(),
        })?;
    let rep = evaluate(&cls, &tok, &data, &truth, &a.data_args)?;
    print_report(&rep);
    if let Some(p) = &a.json {
        llama3::weights::atomic::write_json(p, &rep)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let mut texts = a.text.clone();
    if let Some(f) = &a.file {
        let body =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text {} is empty", i + 1);
    }
    let (cls, tok) = load_classifier(&a.model, &a.adapter)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = PredictOptions {
        max_len: a.max_len,
        ..PredictOptions::default()
    };
    let bar = crate::progress::bar("classify", "texts");
    let preds = cls.predict(&tok, &refs, &opts, &mut progress(&bar))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (t, p) in texts.iter().zip(preds) {
        let scores: serde_json::Map<String, serde_json::Value> = cls
            .labels
            .iter()
            .zip(&p.probs)
            .map(|(l, v)| (l.clone(), serde_json::json!(v)))
            .collect();
        let line = serde_json::json!({"text": t, "label": cls.labels[p.label], "probs": scores});
        println!("{line}");
    }
    Ok(())
}

fn print_report(rep: &ClassificationReport) {
    println!(
        "accuracy {:.4} ± {:.4} (n = {}), macro-F1 {:.4}",
        rep.accuracy, rep.accuracy_stderr, rep.n, rep.macro_f1
    );
    crate::eval::classify::print_classes(rep, None);
}
