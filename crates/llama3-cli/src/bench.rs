//! `llama3 bench`: prompt-processing and generation throughput, like llama-bench (llama.cpp
//! `tools/llama-bench`): `ppP` runs a prompt of P tokens in one forward (logits of the last
//! position), `tgN` then decodes N tokens one forward each; mean ± sd of tokens/s over `-r`
//! repetitions after one warm-up, as llama-bench reports them. Differences from llama-bench:
//! tg runs after the prompt (its context holds P tokens; llama-bench's tg starts from an empty
//! one unless given `-d`), and we also report load time, time to first token of a 16-token
//! prompt and peak RSS.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use llama3::generate::{generate_text, GenerateOptions, Session};
use llama3::loader::Loaded;
use llama3::model::{Llama, Logits};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Message;

use crate::args::ModelArgs;
use crate::throughput;

/// Tokens of the time-to-first-token prompt.
const TTFT_PROMPT: usize = 16;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one forward (pp test; 0 = skip).
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value_t = 512,
        value_name = "P"
    )]
    pub n_prompt: usize,
    /// Tokens generated one at a time after the prompt (tg test; 0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128, value_name = "N")]
    pub n_gen: usize,
    /// Repetitions of each test (after one warm-up).
    #[arg(
        short = 'r',
        long = "repetitions",
        default_value_t = 5,
        value_name = "R"
    )]
    pub reps: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Random weights of a preset's shape instead of a model file (smollm2-135m, llama3.2-1b,
    /// 15m, tiny), drawn on the device: for comparing with other frameworks on the same shapes.
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// Sequences decoded together in the tg test (aggregate tokens/s over the batch).
    #[arg(short = 'b', long, default_value_t = 1, value_name = "B")]
    pub batch: usize,
    /// Also measure training: forward, backward and AdamW on --train-batch sequences of -p
    /// tokens (f32 master weights; bf16 matmuls on a GPU).
    #[arg(long)]
    pub train: bool,
    /// Sequences per training step of the --train test.
    #[arg(long, default_value_t = 8, value_name = "B")]
    pub train_batch: usize,
    /// The device's peak dense TFLOP/s for MFU (default on a GPU: H100 SXM bf16 tensor cores,
    /// 989; on the CPU no MFU unless given).
    #[arg(long, value_name = "TFLOPS")]
    pub peak_tflops: Option<f64>,
    /// Also a copy task (the model repeats a built-in paragraph, greedy): tokens/s plain and
    /// with prompt-lookup speculation of up to N drafts, and the share of drafts accepted.
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
    /// Also speculation with a draft model (--draft MODEL, --draft-max N) on an open-ended
    /// answer: tokens/s plain and with the draft, and the share of drafts accepted.
    #[command(flatten)]
    pub draft: crate::args::DraftArgs,
}

/// The copy task's paragraph.
const PARAGRAPH: &str = "The committee met on Tuesday to review the budget. After a long \
    discussion, the members agreed to fund the new library, repair the bridge on Main Street, \
    and hire two more teachers for the primary school. The vote was unanimous, and the chair \
    thanked everyone for their patience and their careful work.";

/// The draft-model task's request: an open-ended answer, nothing to copy.
const OPEN_TASK: &str = "Write a short story about a lighthouse keeper who finds a message in a \
    bottle.";

/// How the speculative test drafts.
enum Spec {
    /// Prompt lookup of up to N drafts, on the copy task.
    Lookup(usize),
    /// A draft model of up to N drafts per verify, on the open task.
    Draft(llama3::generate::DraftModel, usize),
}

/// Speculation against plain decoding, greedy, same output checked: (plain tok/s,
/// speculative tok/s, drafts accepted, drafts).
fn spec_test(
    loaded: &Loaded,
    n: usize,
    spec: &Spec,
    reps: usize,
) -> Result<(Summary, Summary, usize, usize)> {
    let tok = loaded
        .tokenizer
        .as_ref()
        .context("--lookup and --draft need the model's tokenizer")?;
    let text = match spec {
        Spec::Lookup(_) => format!("Repeat this paragraph word for word:\n\n{PARAGRAPH}"),
        Spec::Draft(..) => OPEN_TASK.to_string(),
    };
    let prompt = tok.encode_chat(&[Message::new("user", text)], true)?;
    let run = |on: bool| -> Result<(Vec<u32>, f64, usize, usize)> {
        let mut opts = GenerateOptions {
            max_tokens: n,
            sampling: SamplingParams::greedy(),
            end_ids: tok.end_ids().to_vec(),
            ..GenerateOptions::default()
        };
        match (on, spec) {
            (false, _) => {}
            (true, Spec::Lookup(k)) => opts.lookup = *k,
            (true, Spec::Draft(d, k)) => (opts.draft, opts.draft_max) = (Some(d.clone()), *k),
        }
        let mut s = Session::new(&loaded.model, prompt.len() + n)?;
        let out = generate_text(&loaded.model, Some(tok), &mut s, &prompt, opts, &[], |_| {})?;
        let rate = out.ids.len() as f64 / out.gen_seconds.max(1e-12);
        Ok((out.ids, rate, out.accepted, out.drafted))
    };
    let (mut plain, mut fast, mut acc, mut drafted) = (vec![], vec![], 0, 0);
    run(true)?; // warm-up
    for _ in 0..reps {
        let (a, ra, ..) = run(false)?;
        let (b, rb, ac, d) = run(true)?;
        if a != b {
            bail!("speculation changed the output (a bug)");
        }
        plain.push(ra);
        fast.push(rb);
        (acc, drafted) = (ac, d);
    }
    Ok((Summary::of(plain), Summary::of(fast), acc, drafted))
}

/// Mean and sample standard deviation (n - 1), as llama-bench's `stdev`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub mean: f64,
    pub sd: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    fn of(samples: Vec<f64>) -> Self {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n.max(1.0);
        let sd = if samples.len() < 2 {
            0.0
        } else {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Self { mean, sd, samples }
    }
}

/// Deterministic token ids spread over the vocabulary (llama-bench draws `rand() % n_vocab`).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Runs `ids` (1, T) through the model and returns the last position's logits as a Vec, so the
/// timing includes reading them back as a sampler would.
fn step(model: &Llama, cache: &mut llama3::model::KvCache, ids: &[u32]) -> Result<Vec<f32>> {
    let t = Tensor::new(ids, model.device())?.unsqueeze(0)?; // (1, T)
    let out = model.forward(&t, Some(cache), Logits::Last)?; // (1, 1, V)
    Ok(out.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// One repetition: seconds for the prompt and for the `n_gen` decodes.
fn run_once(model: &Llama, prompt: &[u32], gen: &[u32]) -> Result<(f64, f64)> {
    let mut cache = model.new_cache(1, prompt.len() + gen.len())?;
    let t0 = Instant::now();
    if !prompt.is_empty() {
        step(model, &mut cache, prompt)?;
    }
    let pp = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for &tok in gen {
        step(model, &mut cache, &[tok])?;
    }
    Ok((pp, t1.elapsed().as_secs_f64()))
}

/// Seconds from an empty context to the first generated token of a `TTFT_PROMPT`-token prompt
/// (prefill, logits read back, argmax).
fn ttft(model: &Llama, prompt: &[u32]) -> Result<f64> {
    let mut cache = model.new_cache(1, prompt.len() + 1)?;
    let t0 = Instant::now();
    let logits = step(model, &mut cache, prompt)?;
    let first = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    let secs = t0.elapsed().as_secs_f64();
    std::hint::black_box(first);
    Ok(secs)
}

/// VmHWM (peak resident set) from /proc/self/status, in bytes; None off Linux.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.n_prompt == 0 && a.n_gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    if a.batch == 0 || a.train_batch == 0 {
        bail!("--batch and --train-batch must be at least 1");
    }
    if a.train && a.n_prompt < 2 {
        bail!("--train needs -p of at least 2 tokens (the training sequence length)");
    }
    let t0 = Instant::now();
    let loaded = match &a.preset {
        Some(p) => {
            if a.model.model.is_some() {
                bail!("give either --model or --preset, not both");
            }
            let (device, dtype) = a.model.device_and_dtype()?;
            throughput::random_model(p, dtype, &device)?
        }
        // Token ids are drawn at random: no tokenizer (its memory is not the model's), unless
        // the copy task needs one.
        None => a
            .model
            .load_with(a.lookup.is_some() || a.draft.draft.is_some())?,
    };
    let load_seconds = t0.elapsed().as_secs_f64();
    let model = &loaded.model;
    let max_ctx = model.config.max_position_embeddings;
    if a.n_prompt + a.n_gen > max_ctx {
        bail!(
            "-p {} + -n {} exceeds the model's context of {max_ctx} tokens",
            a.n_prompt,
            a.n_gen
        );
    }
    let kernels = model.matmul_kernels();
    for (k, n) in kernels.iter().filter(|(k, _)| k.contains("generic")) {
        eprintln!("note: {n} weight matmuls run through {k}; see `llama3 info`");
    }
    let vocab = model.config.vocab_size;
    let prompt = tokens(a.n_prompt, vocab, 1);
    let gen = tokens(a.n_gen, vocab, 2);
    let short = tokens(TTFT_PROMPT, vocab, 3);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        // rayon's default: one thread per core.
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    // Warm-up as llama-bench: the prompt once and one generated token.
    run_once(model, &prompt, &gen[..gen.len().min(1)])?;
    ttft(model, &short)?;
    if a.batch > 1 {
        throughput::batched_decode(model, a.batch, &prompt, &gen[..gen.len().min(1)])?;
    }
    let (mut pp, mut tg, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..a.reps {
        let (pp_s, mut tg_s) = run_once(model, &prompt, &gen)?;
        if a.batch > 1 {
            tg_s = throughput::batched_decode(model, a.batch, &prompt, &gen)?;
        }
        pp.push(a.n_prompt as f64 / pp_s.max(1e-12));
        tg.push((a.batch * a.n_gen) as f64 / tg_s.max(1e-12));
        first.push(ttft(model, &short)? * 1e3);
        if !a.json {
            eprintln!("rep {}/{}: pp {pp_s:.3} s, tg {tg_s:.3} s", r + 1, a.reps);
        }
    }
    let (pp, tg, first) = (Summary::of(pp), Summary::of(tg), Summary::of(first));
    let train = match a.train {
        true => {
            let mut m = throughput::trainable(model.clone())?;
            let (rates, phases) = throughput::train_steps(&mut m, a.train_batch, &prompt, a.reps)?;
            Some((Summary::of(rates), phases))
        }
        false => None,
    };
    let (train, phases) = match train {
        Some((s, p)) => (Some(s), Some(p)),
        None => (None, None),
    };
    let lookup = match a.lookup {
        Some(0) => bail!("--lookup must be at least 1"),
        Some(k) => Some((
            k,
            spec_test(&loaded, a.n_gen.max(32), &Spec::Lookup(k), a.reps)?,
        )),
        None => None,
    };
    let draft = match a.draft.load(&a.model, &loaded)? {
        Some(d) => {
            let k = a.draft.draft_max;
            let spec = Spec::Draft(d, k);
            Some((k, spec_test(&loaded, a.n_gen.max(32), &spec, a.reps)?))
        }
        None => None,
    };
    let op_us = throughput::op_overhead_us(model.device(), model.dtype())?;
    // Model TFLOP/s and MFU of prefill and training.
    let tflops = |rate: f64, training: bool| {
        rate * throughput::flops_per_token(model, a.n_prompt, training) / 1e12
    };
    let pp_tflops = tflops(pp.mean, false);
    let train_tflops = train.as_ref().map(|s| tflops(s.mean, true));
    let device = llama3::device::name(model.device());
    let peak = a
        .peak_tflops
        .or((!model.device().is_cpu()).then_some(989.0));
    let rss = peak_rss();
    let info = &loaded.info;
    let name = info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if a.json {
        let j = serde_json::json!({
            "model": info.path,
            "model_bytes": info.file_bytes,
            "parameters": info.parameters,
            "threads": threads,
            "device": device,
            "cuda_kernels": cuda_kernels(model.device()),
            "matmul_kernels": kernels,
            "cpu_kernels": llama3::quant::cpu_path(),
            "dtype": format!("{:?}", model.dtype()),
            "batch": a.batch,
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "repetitions": a.reps,
            "load_seconds": load_seconds,
            "pp_tokens_per_second": (a.n_prompt > 0).then_some(&pp),
            "tg_tokens_per_second": (a.n_gen > 0).then_some(&tg),
            "pp_model_tflops": pp_tflops,
            "pp_mfu": peak.map(|p| pp_tflops / p),
            "train_batch": a.train_batch,
            "train_tokens_per_second": &train,
            "train_model_tflops": train_tflops,
            "train_mfu": train_tflops.zip(peak).map(|(t, p)| t / p),
            "train_step_phases_seconds": phases,
            "op_overhead_us": { "add_f32": op_us.0, "matmul_1x576x576": op_us.1 },
            "ttft_ms": first,
            "ttft_prompt_tokens": TTFT_PROMPT,
            "peak_rss_bytes": rss,
            "lookup": lookup.as_ref().map(|(k, (plain, spec, acc, d))| serde_json::json!({
                "max_drafts": k, "copy_task_tokens_per_second": plain,
                "copy_task_lookup_tokens_per_second": spec, "drafts": d, "accepted": acc,
            })),
            "draft": draft.as_ref().map(|(k, (plain, spec, acc, d))| serde_json::json!({
                "model": a.draft.draft, "max_drafts": k, "open_task_tokens_per_second": plain,
                "open_task_draft_tokens_per_second": spec, "drafts": d, "accepted": acc,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let threads = match model.device().is_cpu() {
        true => threads.to_string(),
        false => device.clone(),
    };
    println!("| model | size | params | threads | test | t/s |");
    println!("| --- | ---: | ---: | ---: | --- | ---: |");
    let row = |test: String, s: &Summary| {
        println!(
            "| {name} | {:.2} MiB | {:.2} M | {threads} | {test} | {:.2} ± {:.2} |",
            mib(info.file_bytes),
            info.parameters as f64 / 1e6,
            s.mean,
            s.sd
        );
    };
    if a.n_prompt > 0 {
        row(format!("pp{}", a.n_prompt), &pp);
    }
    if a.n_gen > 0 {
        match a.batch {
            1 => row(format!("tg{}", a.n_gen), &tg),
            b => row(format!("tg{} b{b}", a.n_gen), &tg),
        }
    }
    if let Some(t) = &train {
        row(format!("train {}x{}", a.train_batch, a.n_prompt), t);
    }
    if let Some((k, (plain, spec, acc, d))) = &lookup {
        row("copy task".into(), plain);
        row(format!("copy task lookup{k}"), spec);
        println!(
            "lookup {k}: {:.2}x on the copy task, {acc}/{d} drafts accepted (identical output)",
            spec.mean / plain.mean.max(1e-12)
        );
    }
    if let Some((k, (plain, spec, acc, d))) = &draft {
        row("open task".into(), plain);
        row(format!("open task draft{k}"), spec);
        println!(
            "draft {}: {:.2}x on the open task, {acc}/{d} drafts accepted (identical output)",
            a.draft.draft.as_deref().unwrap_or(""),
            spec.mean / plain.mean.max(1e-12)
        );
    }
    let mfu = |t: f64| match peak {
        Some(p) => format!("{t:.2} TFLOP/s = {:.1}% MFU", 100.0 * t / p),
        None => format!("{t:.3} TFLOP/s"),
    };
    if a.n_prompt > 0 {
        println!("prefill: {}", mfu(pp_tflops));
    }
    if let Some(t) = train_tflops {
        println!("training: {}", mfu(t));
    }
    println!(
        "load {load_seconds:.3} s | time to first token ({TTFT_PROMPT}-token prompt) {:.1} ± {:.1} ms | peak RSS {}",
        first.mean,
        first.sd,
        rss.map_or("n/a".into(), |b| format!("{:.1} MiB", mib(b)))
    );
    Ok(())
}

/// Whether our CUDA kernels run (a GPU, the `cuda` build, not turned off with
/// `LLAMA3_CUDA_KERNELS=0`).
fn cuda_kernels(device: &candle_core::Device) -> bool {
    #[cfg(feature = "cuda")]
    return device.is_cuda() && llama3::cuda::enabled();
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}
