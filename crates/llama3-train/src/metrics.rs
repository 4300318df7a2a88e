//! Metrics as JSONL (`<run>/metrics.jsonl`), one object per line with `kind` `train` or
//! `eval`, and, with the `tensorboard` feature, as TensorBoard event files
//! (`<run>/events.out.tfevents.*`, see `tfevents`). A resume drops the JSONL lines past its
//! checkpoint, so the file reads as one run; it starts a new event file (TensorBoard shows the
//! resumed steps over the old ones).
//!
//! Both files start through `llama3::weights::atomic` (0644, fsynced) and then grow by
//! appends of whole records: rewriting them at every step would cost a copy of the log per
//! step. A kill mid-append can only tear the last JSONL line, which [`read`] drops.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use llama3::weights::atomic;

#[cfg(feature = "tensorboard")]
use crate::tfevents::EventWriter;
use crate::{Error, Result};

/// One optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Steps done after this one (1-based).
    pub step: usize,
    /// Mean loss over the step's counted tokens.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the step's micro-batches.
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Seconds of the step spent in collectives (data-parallel runs only): the gradient
    /// all-reduce and the few numbers the ranks agree on, the wait for the slowest rank excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
    /// Seconds this rank waited at the step's end for the slowest one (load imbalance,
    /// machine noise); data-parallel runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<f64>,
    /// Preference tuning (`dpo`): the step's rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
}

/// Preference tuning's rewards `beta (log p - log p_ref)` over pairs, as TRL logs them
/// (`rewards/accuracies`, `margins`, `chosen`, `rejected`): means.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rewards {
    /// Pairs whose chosen answer's reward is above the rejected one's.
    pub accuracy: f64,
    /// Chosen minus rejected reward.
    pub margin: f64,
    pub chosen: f64,
    pub rejected: f64,
}

/// One evaluation on the held-out blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// Steps done when it ran.
    pub step: usize,
    pub loss: f64,
    pub ppl: f64,
    /// Preference tuning: the held-out pairs' rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
    /// Continual learning (`--replay-data`): the held-out loss on the replayed data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_loss: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Train(StepLog),
    Eval(EvalLog),
}

impl Record {
    pub fn step(&self) -> usize {
        match self {
            Record::Train(s) => s.step,
            Record::Eval(e) => e.step,
        }
    }
}

/// Fails when TensorBoard event files are asked for in a build without them: never a run
/// that silently writes none.
pub fn check_tensorboard(wanted: bool) -> Result<()> {
    if wanted && !cfg!(feature = "tensorboard") {
        return Err(Error::Input(
            "TensorBoard event files need llama3-train built with its `tensorboard` cargo \
             feature; set `tensorboard = false` or enable the feature"
                .into(),
        ));
    }
    Ok(())
}

pub struct Metrics {
    /// None for the ranks of a data-parallel job other than 0, which keep records only.
    file: Option<std::fs::File>,
    path: PathBuf,
    /// Every record of the run so far: those kept on opening, then those written.
    records: Vec<Record>,
    #[cfg(feature = "tensorboard")]
    events: Option<EventWriter>,
}

impl Metrics {
    /// Opens `<run>/metrics.jsonl`, keeping only the records up to step `resume_step` (a
    /// resume from a checkpoint at that step, whose evaluation was done before it was saved);
    /// a fresh run (`0`) starts an empty file. With `tensorboard`, also a new event file
    /// (an error without the `tensorboard` feature).
    pub fn open(run: &Path, resume_step: usize, tensorboard: bool) -> Result<Self> {
        check_tensorboard(tensorboard)?;
        let path = run.join("metrics.jsonl");
        let kept: Vec<Record> = read(&path)?
            .into_iter()
            .filter(|r| resume_step > 0 && r.step() <= resume_step)
            .collect();
        let mut text = String::new();
        for r in &kept {
            text.push_str(&line(r, &path)?);
        }
        atomic::write_bytes(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if resume_step == 0 {
            // A fresh run: event files of an earlier run in this directory would mix in.
            for old in event_files(run)? {
                std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
        Ok(Self {
            file: Some(file),
            path,
            records: kept,
            #[cfg(feature = "tensorboard")]
            events: tensorboard.then(|| EventWriter::create(run)).transpose()?,
        })
    }

    /// Records kept in memory only, no file: a data-parallel rank other than 0 (rank 0
    /// writes the run's metrics).
    pub fn in_memory() -> Self {
        Self {
            file: None,
            path: PathBuf::new(),
            records: Vec::new(),
            #[cfg(feature = "tensorboard")]
            events: None,
        }
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        if let Some(file) = &mut self.file {
            let l = line(r, &self.path)?;
            file.write_all(l.as_bytes())
                .map_err(|e| Error::io(&self.path, e))?;
        }
        #[cfg(feature = "tensorboard")]
        if let Some(events) = &mut self.events {
            events_write(events, r)?;
        }
        self.records.push(r.clone());
        Ok(())
    }

    /// The run's records so far, in order (a resumed run's earlier ones included).
    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

#[cfg(feature = "tensorboard")]
fn events_write(events: &mut EventWriter, r: &Record) -> Result<()> {
    let rewards = |prefix: &str, r: &Option<Rewards>| -> Vec<(String, f64)> {
        r.iter()
            .flat_map(|r| {
                [
                    ("rewards/accuracies", r.accuracy),
                    ("rewards/margins", r.margin),
                    ("rewards/chosen", r.chosen),
                    ("rewards/rejected", r.rejected),
                ]
            })
            .map(|(k, v)| (format!("{prefix}/{k}"), v))
            .collect()
    };
    let (step, scalars) = match r {
        Record::Train(s) => {
            let mut v: Vec<(String, f64)> = [
                ("train/loss", s.loss),
                ("train/lr", s.lr),
                ("train/grad_norm", s.grad_norm),
                ("train/tokens_per_s", s.tokens_per_s),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
            v.extend(rewards("train", &s.rewards));
            (s.step, v)
        }
        Record::Eval(e) => {
            let mut v = vec![
                ("eval/loss".to_string(), e.loss),
                ("eval/ppl".into(), e.ppl),
            ];
            v.extend(rewards("eval", &e.rewards));
            v.extend(e.replay_loss.map(|l| ("eval/replay_loss".to_string(), l)));
            (e.step, v)
        }
    };
    let refs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    events.scalars(step, &refs)
}

/// The TensorBoard event files in `run`.
pub fn event_files(run: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(run) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(run, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(run, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn line(r: &Record, path: &Path) -> Result<String> {
    let mut s = serde_json::to_string(r).map_err(|e| Error::format(path, e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// The records of a metrics file (none when it does not exist). A last line without its
/// newline that does not parse was torn by a kill mid-append: dropped, not an error.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let n = text.lines().count();
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n && !text.ends_with('\n') => {}
            Err(e) => return Err(Error::format(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(step: usize) -> Record {
        Record::Eval(EvalLog {
            step,
            loss: 2.0,
            ppl: 7.4,
            rewards: None,
            replay_loss: None,
        })
    }

    #[test]
    fn a_resume_keeps_its_records_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut m = Metrics::open(dir.path(), 0, false).unwrap();
        for s in 1..=3 {
            m.write(&eval(s)).unwrap();
        }
        drop(m);
        // A kill mid-append: half a record, no newline.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"kind":"eval","st"#).unwrap();
        assert_eq!(read(&path).unwrap(), [eval(1), eval(2), eval(3)]);
        let mut m = Metrics::open(dir.path(), 2, false).unwrap();
        assert_eq!(read(&path).unwrap(), [eval(1), eval(2)]);
        m.write(&eval(3)).unwrap();
        assert_eq!(m.records(), [eval(1), eval(2), eval(3)]);
        // A bad line elsewhere is corruption, not a torn append.
        std::fs::write(&path, "{\"kind\":\"eval\"\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(event_files(dir.path()).unwrap().len(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn the_metrics_file_is_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Metrics::open(dir.path(), 0, false).unwrap();
        let meta = std::fs::metadata(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }

    #[cfg(not(feature = "tensorboard"))]
    #[test]
    fn tensorboard_without_the_feature_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Metrics::open(dir.path(), 0, true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`tensorboard` cargo feature"), "{err}");
    }
}
