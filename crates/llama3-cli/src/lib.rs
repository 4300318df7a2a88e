//! `llama3`: run, chat with and inspect Llama-family models. The whole command line is this
//! library, so that the Python wheel runs the same CLI in-process ([`run`]) and trains through
//! the same code as `llama3 train` ([`train()`]); `src/main.rs` only calls [`run`].

mod args;
mod bench;
mod chat;
mod classify;
mod embed;
mod eval;
mod export;
mod generate;
mod info;
mod merge;
mod perplexity;
mod plot;
mod progress;
mod prune;
mod quantize;
mod serve;
mod throughput;
pub mod train;

use std::ffi::OsString;
use std::io::Write;

use clap::{Parser, Subcommand};

pub use llama3_train::{request_stop, TrainEvent, TrainSummary};
pub use train::settings::SettingsError;
pub use train::{train, TrainArgs};

/// Llama-family language models in one binary: generate, chat, tokenize, inspect, fetch.
#[derive(Parser)]
#[command(name = "llama3", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt, streaming the text (or print ids and log-probabilities with --json).
    Generate(generate::GenerateArgs),
    /// Interactive multi-turn chat with the model's chat template.
    Chat(chat::ChatArgs),
    /// Embedding vectors of texts (mean, last-token or first-token pooling) as JSON lines or .npy.
    Embed(embed::EmbedArgs),
    /// Print the token ids of a text.
    Tokenize(info::TokenizeArgs),
    /// Show a model's architecture, size, weight types, context and chat template.
    Info(info::InfoArgs),
    /// Fetch a model into the cache: the default model, or hf:owner/name from the Hugging Face Hub.
    Pull(info::PullArgs),
    /// Convert an HF directory or a GGUF file to a GGUF of one storage type (f16, q8_0, q4_k...).
    Quantize(quantize::QuantizeArgs),
    /// Fold a PEFT LoRA adapter into a model's weights; write an HF directory or a GGUF.
    Merge(merge::MergeArgs),
    /// Write a model directory (e.g. a training run) as a GGUF for llama.cpp.
    Export(export::ExportArgs),
    /// Prune a model with calibration text: drop layers, narrow the MLPs, or Wanda / 2:4
    /// sparsity; writes an HF directory, prints the held-out perplexity before and after.
    Prune(prune::PruneArgs),
    /// Perplexity of a text file (llama.cpp's protocol, or HF's sliding window with --stride).
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt-based evaluation: BIG-bench multiple choice (acc, acc_norm) and zero-/k-shot
    /// classification by label-word log-likelihood; the Rotten Tomatoes split.
    Eval(eval::EvalArgs),
    /// Prompt-processing and generation speed, like llama-bench (plus load time, TTFT, peak RSS).
    Bench(bench::BenchArgs),
    /// Train or fine-tune: from scratch (a preset) or a checkpoint, every weight or LoRA/QLoRA
    /// adapters (--method), on text or JSONL (chats, prompt/completion); checkpoints, --resume.
    #[command(visible_alias = "finetune")]
    Train(Box<train::TrainArgs>),
    /// Sequence classification: train a head (alone, with LoRA, or full), evaluate, predict.
    Classify(classify::ClassifyArgs),
    /// Draw a training run's loss curve (metrics.jsonl) as a PNG.
    Plot(plot::PlotArgs),
    /// OpenAI-compatible HTTP server with continuous batching and a chat page at /.
    Serve(Box<serve::ServeArgs>),
}

/// Runs the `llama3` command line on `args` (the program name first, as `std::env::args_os`)
/// and returns the exit status: 0, 1 with `error: ...` on stderr when a command fails, clap's
/// 0 for --help / --version and 2 for a usage error, 130 for a training run stopped by Ctrl-C.
/// The binary exits with it; the Python wheel's `llama3` command runs it in-process.
pub fn run(args: Vec<OsString>) -> i32 {
    let code = match run_command(args) {
        Ok(code) => code,
        Err(CliError::Usage(e)) => {
            // What clap's `exit` does, less the exit: help to stdout, errors to stderr.
            let _ = e.print();
            e.exit_code()
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    code
}

/// Why [`run_command`] did not run a command to its end.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, or --help / --version (clap's message and exit code).
    Usage(clap::Error),
    /// The command failed.
    Failed(anyhow::Error),
}

/// [`run`] with the error returned instead of printed: the exit status of a command that
/// finished (0, or 130 for a training run stopped by Ctrl-C). Python's tool functions raise
/// the error as an exception.
pub fn run_command(args: Vec<OsString>) -> Result<i32, CliError> {
    setup_process();
    let cli = Cli::try_parse_from(args).map_err(CliError::Usage)?;
    let result = match cli.command {
        Command::Generate(a) => generate::run(a).map(|()| 0),
        Command::Chat(a) => chat::run(a).map(|()| 0),
        Command::Embed(a) => embed::run(a).map(|()| 0),
        Command::Tokenize(a) => info::tokenize(a).map(|()| 0),
        Command::Info(a) => info::info(a).map(|()| 0),
        Command::Pull(a) => info::pull(a).map(|()| 0),
        Command::Quantize(a) => quantize::run(a).map(|()| 0),
        Command::Merge(a) => merge::run(a).map(|()| 0),
        Command::Export(a) => export::run(a).map(|()| 0),
        Command::Prune(a) => prune::run(a).map(|()| 0),
        Command::Perplexity(a) => perplexity::run(a).map(|()| 0),
        Command::Eval(a) => eval::run(a).map(|()| 0),
        Command::Bench(a) => bench::run(a).map(|()| 0),
        Command::Train(a) => train::run(*a),
        Command::Serve(a) => serve::run(*a).map(|()| 0),
        Command::Plot(a) => plot::run(a).map(|()| 0),
        Command::Classify(a) => classify::run(a).map(|()| 0),
    };
    result.map_err(CliError::Failed)
}

/// Logging, thread-pool and allocator settings, once per process (a Python process may run
/// several commands; the Python package calls this when it is imported).
pub fn setup_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // `try_init`: a host process (Python) may have set a global subscriber already.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("LLAMA3_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .try_init();
        // candle sizes its thread pools from RAYON_NUM_THREADS and otherwise re-reads the CPU
        // list from /proc on each query; fix it once, before any pool starts (-t overrides it
        // later). candle's own pool (element-wise ops) waits for its workers by spinning
        // without bound: with another process on the cores that costs whole time slices
        // (measured: a LoRA training step 3x slower, prompt processing 1.3x slower at load
        // 5). Our kernels and candle's matmuls use rayon; keep candle's pool to the calling
        // thread unless asked.
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        // Ranks of a data-parallel job started on one machine share its cores, unless the
        // launcher bound each to its own (mpirun's default for a few ranks).
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let launch = llama3_train::dist::Launch::from_env();
            let n = launch.map_or_else(
                |_| std::thread::available_parallelism().map_or(1, |n| n.get()),
                |l| l.threads(),
            );
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        tune_malloc();
    });
}

/// glibc's malloc serves blocks above a (moving) threshold with mmap and returns freed heap
/// tops above another to the OS; a forward allocates and frees activations of 0.4-3 MB per op,
/// so with the defaults every op faulted fresh zeroed pages in (measured: 10x the page faults,
/// prompt processing ~15% slower). Fixed thresholds keep such blocks in the heap for reuse
/// while still handing back large frees. `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
/// / `MALLOC_ARENA_MAX` in the environment take precedence.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters (under glibc's arena locks); the
        // binary calls it before any other thread starts.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
            }
            if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
            }
            // Each arena keeps up to the trim threshold of free memory; glibc makes up to
            // 8 per core (measured: 150-174 MiB peak RSS in `bench` with 2 arenas, depending
            // on which threads got which, 150 with one, at the same speed: allocations here
            // are per op, not per element, so one arena is not contended).
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
    }
}
