//! One training run as `llama3 train` shows it: defaults reported, a progress bar on a
//! terminal (lines otherwise), the loop, and the last lines (where the model is, or how to
//! continue a stopped run). The CLI and Python's `llama3.train` both come through here.

use std::io::IsTerminal;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use llama3_train::dist::{self, Collective, Launch};
use llama3_train::pretrain::Event;
use llama3_train::setup::{prepare_as, Phase, Setup};
use llama3_train::{TrainConfig, TrainSummary};

use super::config::to_config;
use super::TrainArgs;

/// Runs `a`; `resume_hint` says how to continue a stopped run in the caller's terms.
pub(super) fn train(
    a: &TrainArgs,
    resume_hint: &str,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary> {
    // A stop asked for before this run (an earlier run's Ctrl-C) is not meant for it.
    llama3_train::clear_stop();
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    // A rank of a data-parallel job (one process alone: rank 0 of 1); rank 0 speaks for it.
    let launch = Launch::from_env().map_err(anyhow::Error::msg)?;
    let owner = launch.rank == 0;
    let mut cfg = to_config(a, &mut |m| {
        if owner {
            eprintln!("{m}")
        }
    })?;
    if cfg.num_gpus > 1 && launch.world_size != cfg.num_gpus {
        anyhow::bail!(
            "--num-gpus {}: the `llama3 train` command starts one rank per GPU (here {} \
             started {} rank{}); run it from a shell, or start the ranks with torchrun",
            cfg.num_gpus,
            launch.launcher,
            launch.world_size,
            if launch.world_size == 1 { "" } else { "s" }
        );
    }
    let timeout = std::time::Duration::from_secs(cfg.dist_timeout);
    let comm = dist::connect(&launch, cfg.device()?.is_cuda(), timeout)?;
    cfg.world_size = comm.size();
    let tty = owner && std::io::stderr().is_terminal();
    let tok_bar = bar(
        tty,
        "tokenize",
        "{prefix} [{bar:30}] {bytes}/{total_bytes} eta {eta}",
    );
    let progress = |phase: Phase| match phase {
        _ if !owner => {}
        Phase::Tokenizing(what, done, total) => {
            if let Some(b) = &tok_bar {
                b.set_prefix(format!("tokenize {what}"));
                b.set_length(total);
                b.set_position(done);
            }
        }
        Phase::Pairs(what, kept, dropped) => {
            eprintln!("{what}: {kept} preference pairs");
            if dropped > 0 {
                eprintln!(
                    "{what}: {dropped} pairs dropped: the prompt alone fills --seq-len {}",
                    cfg.seq_len
                );
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
        Phase::Regrouped(old, new) => eprintln!(
            "resuming a run of {old} rank(s) on {new}: the same global batch and data order; \
             the gradient sums are grouped differently, so the results agree to rounding, not \
             bit for bit"
        ),
    };
    let setup = prepare_ranks(&cfg, a.resume, comm.as_ref(), &progress)?;
    if let Some(b) = tok_bar {
        b.finish_and_clear();
    }
    if owner {
        let ranks = match comm.size() {
            1 => String::new(),
            n => format!(
                " x {n} ranks ({}, {} threads each)",
                comm.backend(),
                rayon_threads()
            ),
        };
        eprintln!(
            "model: {:.2} M parameters; {} steps of {} x {} x {} tokens{ranks}; output {}",
            setup.model.config.num_parameters() as f64 / 1e6,
            setup.total_steps,
            cfg.grad_accum,
            cfg.batch_size,
            cfg.seq_len,
            cfg.model_path.display()
        );
    }
    let step_bar = bar(
        tty,
        "train",
        "{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
    );
    let summary = llama3_train::pretrain::train(&cfg, setup, a.resume, comm.as_ref(), &mut |e| {
        if owner {
            show(&e, step_bar.as_ref());
        }
        on_event(&e);
    })?;
    if !owner {
        return Ok(summary);
    }
    if let Some(b) = step_bar {
        b.finish_and_clear();
    }
    if summary.interrupted {
        let at = match &summary.checkpoint {
            Some(dir) => format!("checkpoint {}", dir.display()),
            None => "no checkpoint yet".into(),
        };
        eprintln!(
            "stopped after step {} of {}; {at}. To continue, {resume_hint}.",
            summary.steps, summary.total_steps
        );
        return Ok(summary);
    }
    eprintln!(
        "done: {} steps{}; model in {}",
        summary.steps,
        summary
            .final_eval
            .as_ref()
            .map(|e| format!(", held-out {}", eval_line(e)))
            .unwrap_or_default(),
        cfg.model_path.display()
    );
    // Built without plots (the Python wheel): `llama3 plot RUN` draws the curve elsewhere.
    if cfg!(feature = "plot") {
        let png = cfg.model_path.join("loss.png");
        match llama3_train::plot::loss_png(&cfg.model_path, &png) {
            Ok(_) => eprintln!("loss curve: {}", png.display()),
            Err(e) => eprintln!("warning: no loss curve: {e}"),
        }
    }
    Ok(summary)
}

/// The run's setup on every rank: rank 0 first (it checks and claims the run directory and
/// tokenizes into the cache), then the others, which read the cache. When rank 0 fails, the
/// others stop too, saying so.
fn prepare_ranks(
    cfg: &TrainConfig,
    resume: bool,
    comm: &dyn Collective,
    progress: &(dyn Fn(Phase) + Sync),
) -> Result<Setup> {
    // Waits here last as long as rank 0's tokenizing: no collective deadline.
    let patient = comm.unwatched();
    if comm.rank() == 0 {
        let setup = prepare_as(cfg, resume, true, progress);
        dist::any(patient, setup.is_err())?;
        return Ok(setup?);
    }
    if dist::any(patient, false)? {
        anyhow::bail!(
            "rank {}: rank 0 could not set up the run (its error says why)",
            comm.rank()
        );
    }
    Ok(prepare_as(cfg, resume, false, progress)?)
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
}

/// An evaluation as the log shows it: loss and perplexity, or DPO's loss and rewards.
fn eval_line(e: &llama3_train::metrics::EvalLog) -> String {
    let replay = e
        .replay_loss
        .map(|l| format!(", replay loss {l:.4}"))
        .unwrap_or_default();
    match e.rewards {
        Some(r) => format!(
            "loss {:.4} reward accuracy {:.3} margin {:.4}",
            e.loss, r.accuracy, r.margin
        ),
        None => format!("loss {:.4} ppl {:.2}{replay}", e.loss, e.ppl),
    }
}

/// The progress bar, or a line every 10 steps and each evaluation without a terminal.
fn show(e: &Event, step_bar: Option<&ProgressBar>) {
    match e {
        Event::Start { step, total } => {
            if let Some(b) = step_bar {
                b.set_length(*total as u64);
                b.set_position(*step as u64);
            }
        }
        Event::Step(s) => {
            let rewards = s
                .rewards
                .map(|r| format!(" reward acc {:.2} margin {:.3}", r.accuracy, r.margin))
                .unwrap_or_default();
            let msg = format!(
                "loss {:.4}{rewards} lr {:.2e} {:.0} tok/s",
                s.loss, s.lr, s.tokens_per_s
            );
            match step_bar {
                Some(b) => {
                    b.set_position(s.step as u64);
                    b.set_message(msg);
                }
                None if s.step % 10 == 0 => eprintln!("step {} {msg}", s.step),
                None => {}
            }
        }
        Event::Eval(e) => {
            let line = format!("eval step {}: {}", e.step, eval_line(e));
            match step_bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        Event::Saved { path, .. } => tracing::info!("checkpoint {}", path.display()),
        Event::Stopped { .. } => {}
    }
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
