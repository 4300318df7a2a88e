//! `llama3 serve`: the OpenAI-compatible HTTP server (crate `llama3-server`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3_server::{EngineConfig, ServeConfig};

use crate::args::{DraftArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,
    /// TCP port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (repeatable; also read
    /// from LLAMA3_API_KEY).
    #[arg(
        long,
        value_name = "KEY",
        env = "LLAMA3_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Read API keys from a file, one per line (blank lines and # comments ignored).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Sequences decoded together (slots); more wait in the queue.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Context of each slot in tokens, prompt plus answer (capped by the model's).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub ctx: usize,
    /// Requests that may wait for a slot; beyond that the server answers 429 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Most tokens one request may generate (a larger max_tokens is a 400).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: usize,
    /// Prompt tokens per prefill step: long prompts are processed in chunks of this size, so
    /// running sequences keep decoding in between.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub prefill_chunk: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub body_limit: usize,
    /// The model's name in the API (default: the model file or directory name).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// Speculative decoding by prompt lookup: up to N draft tokens per sequence and step,
    /// copied from its prompt and answer, verified in the batched forward (same output). A
    /// request may set its own with the `lookup` field. 0 = off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lookup: usize,
    /// MiB of KV the prefix cache keeps beside the slots: prompts and answers in blocks, so a
    /// request starts from the longest prefix any earlier one computed (least recently used
    /// blocks go first). 0 = only what the slots hold.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub cache_ram: usize,
    /// Speculative decoding with a draft model for requests without `lookup`.
    #[command(flatten)]
    pub draft: DraftArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    for (flag, v) in [
        ("--parallel", a.parallel),
        ("--ctx", a.ctx),
        ("--queue", a.queue),
        ("--max-tokens", a.max_tokens),
        ("--prefill-chunk", a.prefill_chunk),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let mut keys: Vec<String> = a.api_key.iter().map(|k| k.trim().to_string()).collect();
    if let Some(f) = &a.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --api-key-file {}", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        if keys.is_empty() {
            bail!("--api-key-file {} holds no key", f.display());
        }
    }
    if keys.iter().any(|k| k.is_empty()) {
        bail!("an empty --api-key would accept anyone; give a real key");
    }
    let model_id = a.alias.clone().unwrap_or_else(|| model_name(&a.model));
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        api_keys: keys,
        engine: EngineConfig {
            parallel: a.parallel,
            ctx: a.ctx,
            queue: a.queue,
            prefill_chunk: a.prefill_chunk,
            lookup: a.lookup,
            cache_ram: a.cache_ram << 20,
            draft: None, // loaded with the model
            draft_max: a.draft.draft_max,
        },
        max_tokens: a.max_tokens,
        body_limit: a.body_limit,
        model_id,
    };
    let (model, draft) = (a.model.clone(), a.draft.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(llama3_server::serve(
        cfg,
        move || {
            let loaded = model.load()?;
            let draft = draft.load(&model, &loaded)?;
            Ok((loaded, draft))
        },
        llama3_server::shutdown_signal(),
    ))
}

/// `SmolLM2-135M-Instruct.Q4_1` for a file, the directory name for an HF directory.
fn model_name(m: &ModelArgs) -> String {
    let spec = m
        .model
        .clone()
        .unwrap_or_else(|| "SmolLM2-135M-Instruct.Q4_1.gguf".to_string());
    let spec = spec.trim_end_matches('/');
    let last = spec.rsplit(['/', ':']).next().unwrap_or(spec);
    last.strip_suffix(".gguf").unwrap_or(last).to_string()
}
