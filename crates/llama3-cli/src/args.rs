//! Flags shared by several subcommands, and the one place that maps them to library types.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use llama3::generate::DraftModel;
use llama3::grammar::{Constraint, Grammar};
use llama3::loader::{LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file, an HF model directory, or hf:owner/name[/file.gguf] from the Hugging
    /// Face Hub. Default: SmolLM2-135M-Instruct Q4_1, fetched into the cache on first use.
    #[arg(short, long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Use this tokenizer (tokenizer.json, or a Llama 3 tokenizer.model) instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Use this Jinja chat template (e.g. a model's chat_template.jinja) instead of the
    /// tokenizer's, as llama.cpp's --chat-template-file.
    #[arg(long, value_name = "FILE")]
    pub chat_template_file: Option<PathBuf>,
    /// dtype of dense weights and activations (auto: f32 on the CPU, bf16 on a GPU). GGUF
    /// blocks stay quantized whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16"])]
    pub dtype: String,
    /// Where to run: cpu, cuda, cuda:N, or auto (the first GPU when built with CUDA and one is
    /// present, else the CPU).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) applied
    /// without merging, optionally with a weight: PATH or PATH:SCALE. Repeat to stack several.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// `--device` and `--dtype` resolved (auto: the GPU if any, bf16 there, f32 on the CPU).
    pub fn device_and_dtype(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        let device = llama3::device::parse(&self.device)?;
        let dtype = match self.dtype.as_str() {
            "auto" => llama3::device::default_dtype(&device),
            d => parse_dtype(d)?,
        };
        Ok((device, dtype))
    }

    /// Resolves, fetches if needed, and loads the model; a line on stderr says what and how long.
    pub fn load(&self) -> Result<Loaded> {
        self.load_with(true)
    }

    /// [`Self::load`] without building the tokenizer (`tokenizer` false): for commands that
    /// work on token ids alone.
    pub fn load_with(&self, tokenizer: bool) -> Result<Loaded> {
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            // candle's CPU kernels size their pools from this before first use.
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
        let path = llama3::hub::resolve_model(self.model.as_deref(), |m| eprintln!("{m}"))?;
        let (device, dtype) = self.device_and_dtype()?;
        let start = Instant::now();
        let bar = crate::progress::bar("loading", "tensors");
        let progress = bar.clone().map(|b| {
            let f: llama3::weights::ProgressFn = std::sync::Arc::new(move |done, total| {
                b.set_length(total as u64);
                b.set_position(done as u64);
            });
            f
        });
        let opts = LoadOptions {
            dtype,
            device,
            progress,
            tokenizer,
        };
        // Library errors name the file, tensor and shape already.
        let loaded = llama3::loader::load(&path, &opts);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut loaded = loaded?;
        if let Some(t) = self.tokenizer.as_ref().filter(|_| tokenizer) {
            loaded.tokenizer = Some(Tokenizer::from_file(t)?);
        }
        if let Some(f) = self.chat_template_file.as_ref().filter(|_| tokenizer) {
            let src = std::fs::read_to_string(f)
                .with_context(|| format!("--chat-template-file: cannot read {}", f.display()))?;
            let tok = loaded
                .tokenizer
                .as_mut()
                .context("--chat-template-file: this model has no tokenizer")?;
            tok.set_chat_template(&src)
                .with_context(|| format!("--chat-template-file {}", f.display()))?;
        }
        for spec in &self.lora {
            let applied = llama3::peft::apply_spec(&mut loaded.model, spec)?;
            tracing::info!("{applied}");
        }
        tracing::info!(
            "loaded {} ({:.1} M parameters) on {} in {:.2} s",
            path.display(),
            loaded.info.parameters as f64 / 1e6,
            llama3::device::name(loaded.model.device()),
            start.elapsed().as_secs_f64()
        );
        Ok(loaded)
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<candle_core::DType> {
    Ok(match s {
        "f32" => candle_core::DType::F32,
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        other => bail!("dtype {other:?}: expected f32, f16 or bf16"),
    })
}

/// The tokenizer, or an error that says what to do without one.
pub fn need_tokenizer(l: &Loaded) -> Result<&Tokenizer> {
    l.tokenizer.as_ref().context(
        "this model has no tokenizer: pass --tokenizer FILE, or give token ids with --prompt-ids",
    )
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(
        short = 'n',
        long = "max-tokens",
        default_value_t = 256,
        value_name = "N"
    )]
    pub max_tokens: usize,
    /// Temperature; 0 = greedy.
    #[arg(
        long = "temp",
        alias = "temperature",
        default_value_t = 0.8,
        value_name = "T"
    )]
    pub temperature: f32,
    /// Always pick the most likely token (same as --temp 0).
    #[arg(long)]
    pub greedy: bool,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40, value_name = "K")]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95, value_name = "P")]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, value_name = "P")]
    pub min_p: f32,
    /// Locally typical sampling with mass P (1 = off).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub typical_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1 = off).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub repeat_last_n: usize,
    /// Subtract X times a token's count among recent tokens (OpenAI frequency_penalty).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "X",
        allow_hyphen_values = true
    )]
    pub frequency_penalty: f32,
    /// Subtract X from every token seen among recent tokens (OpenAI presence_penalty).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "X",
        allow_hyphen_values = true
    )]
    pub presence_penalty: f32,
    /// Add BIAS to token ID's logit, e.g. --logit-bias 15043=-inf or 13=2.5 (repeatable).
    #[arg(long, value_name = "ID=BIAS", value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random draw: the same seed gives the same output (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop when this text appears (not included in the output; repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The sampling parameters, checked; the seed actually used is filled in.
    pub fn params(&self, vocab_size: usize) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.repeat_last_n,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed.unwrap_or_else(random_seed),
        };
        if let Err(e) = p.validate(vocab_size) {
            bail!("{e}");
        }
        Ok(p)
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn parse_bias(s: &str) -> std::result::Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=BIAS, got {s:?}"))?;
    let id: u32 = id
        .trim()
        .parse()
        .map_err(|_| format!("bad token id {id:?}"))?;
    let bias = match bias.trim() {
        "-inf" => f32::NEG_INFINITY,
        b => b.parse().map_err(|_| format!("bad bias {b:?}"))?,
    };
    Ok((id, bias))
}

/// Output constraints: the generated text matches a JSON schema, any JSON object, a regex or
/// a Lark grammar (llguidance).
#[derive(Args, Clone, Debug, Default)]
pub struct ConstraintArgs {
    /// Output matches this JSON schema: a file, or the schema itself as JSON text.
    #[arg(long, value_name = "FILE|JSON", conflicts_with_all = ["json_object", "grammar", "regex"])]
    pub json_schema: Option<String>,
    /// Output is one JSON object (any keys).
    #[arg(long, conflicts_with_all = ["grammar", "regex"])]
    pub json_object: bool,
    /// Output matches this grammar file, in llguidance's Lark syntax (`start: ...`).
    #[arg(long, value_name = "FILE", conflicts_with = "regex")]
    pub grammar: Option<PathBuf>,
    /// Output matches this regular expression (Rust regex syntax), as a whole.
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,
}

impl ConstraintArgs {
    /// What the flags ask for, if anything.
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        if let Some(s) = &self.json_schema {
            let text = match s.trim_start().starts_with(['{', '[']) || s.trim() == "true" {
                true => s.clone(),
                false => std::fs::read_to_string(s)
                    .with_context(|| format!("--json-schema: cannot read {s}"))?,
            };
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--json-schema: {s} is not valid JSON"))?;
            return Ok(Some(Constraint::JsonSchema(v)));
        }
        if self.json_object {
            return Ok(Some(Constraint::JsonObject));
        }
        if let Some(f) = &self.grammar {
            let src = std::fs::read_to_string(f)
                .with_context(|| format!("--grammar: cannot read {}", f.display()))?;
            return Ok(Some(Constraint::Lark(src)));
        }
        Ok(self.regex.clone().map(Constraint::Regex))
    }

    /// The compiled constraint for `tok`'s vocabulary.
    pub fn grammar(&self, tok: Option<&Tokenizer>) -> Result<Option<Grammar>> {
        let Some(c) = self.constraint()? else {
            return Ok(None);
        };
        let tok = tok.context("an output constraint needs the model's tokenizer")?;
        Ok(Some(Grammar::new(tok, &c)?))
    }
}

/// Speculative decoding with a draft model.
#[derive(Args, Clone, Debug, Default)]
pub struct DraftArgs {
    /// A smaller model with the same vocabulary that drafts tokens for this one to verify (same
    /// output, faster when its guesses are often right): a GGUF, an HF directory or hf:...
    #[arg(long, value_name = "MODEL", conflicts_with = "lookup")]
    pub draft: Option<String>,
    /// Most draft tokens per verify forward (the length adapts to how many are accepted).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub draft_max: usize,
}

impl DraftArgs {
    /// Loads the draft model on the target's device, after checking it tokenizes as the target.
    pub fn load(&self, target: &ModelArgs, loaded: &Loaded) -> Result<Option<DraftModel>> {
        let Some(spec) = &self.draft else {
            return Ok(None);
        };
        if self.draft_max == 0 {
            bail!("--draft-max must be at least 1");
        }
        let args = ModelArgs {
            model: Some(spec.clone()),
            tokenizer: None,
            chat_template_file: None,
            lora: vec![],
            ..target.clone()
        };
        let draft = args.load().with_context(|| format!("--draft {spec}"))?;
        let probe = "Hello, world! 123 déjà vu <|im_end|>";
        let same = match (&draft.tokenizer, &loaded.tokenizer) {
            (Some(a), Some(b)) => {
                a.vocab_size() == b.vocab_size()
                    && a.encode(probe, true, true)? == b.encode(probe, true, true)?
            }
            _ => draft.model.config.vocab_size == loaded.model.config.vocab_size,
        };
        if !same || draft.model.config.vocab_size != loaded.model.config.vocab_size {
            bail!("--draft {spec}: its vocabulary is not the model's; a draft model must share it");
        }
        Ok(Some(DraftModel(std::sync::Arc::new(draft.model))))
    }
}
