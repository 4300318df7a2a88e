//! `llama3 plot`: a run's loss curve as a PNG (also written at the end of `llama3 train`), or
//! the held-out curves of several runs on one plot.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Training run directories (the --model-path of `llama3 train`, holding metrics.jsonl).
    /// One: its training, held-out and replay curves. Several: their held-out (and replayed
    /// data's held-out) curves on one plot, labelled by directory name (needs --output).
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the PNG (default with one run: RUN_DIR/loss.png).
    #[arg(short, long, value_name = "PNG")]
    pub output: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    if let [run] = a.runs.as_slice() {
        let out = a.output.unwrap_or_else(|| run.join("loss.png"));
        let (train, eval) = llama3_train::plot::loss_png(run, &out)?;
        eprintln!(
            "{}: {train} training steps, {eval} evaluations",
            out.display()
        );
        return Ok(());
    }
    let Some(out) = a.output else {
        bail!("several runs go on one plot: give --output PNG");
    };
    let n = llama3_train::plot::compare_png(&a.runs, &out)?;
    eprintln!("{}: {n} curves of {} runs", out.display(), a.runs.len());
    Ok(())
}
