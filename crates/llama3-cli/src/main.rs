//! `llama3`: run, chat with and inspect Llama-family models.

mod args;
mod chat;
mod generate;
mod info;
mod progress;
mod train;

use clap::{Parser, Subcommand};

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
    /// Print the token ids of a text.
    Tokenize(info::TokenizeArgs),
    /// Show a model's architecture, size, weight types, context and chat template.
    Info(info::InfoArgs),
    /// Fetch a model into the cache: the default model, or hf:owner/name from the Hugging Face Hub.
    Pull(info::PullArgs),
    /// Train every weight of a model: from scratch (a preset) or from a checkpoint, on text
    /// files or JSONL; checkpoints, --resume, metrics, and a final HF model directory.
    Train(train::TrainArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLAMA3_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => info::tokenize(a),
        Command::Info(a) => info::info(a),
        Command::Pull(a) => info::pull(a),
        Command::Train(a) => train::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
