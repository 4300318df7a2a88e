//! Stopping a run at a safe point and the library API the Python package trains through:
//! Ctrl-C on `llama3 train` (a checkpoint that `--resume` continues exactly), and
//! `llama3_cli::train` with its events, summary and `request_stop`.

use std::path::Path;
use std::process::Command;

use llama3_cli::{TrainEvent, TrainSummary};
use llama3_testutil::{llama_spm_vocab, ok, sotu_corpus};

/// A tiny run's settings, as flag/value pairs. A constant learning rate after warmup: the
/// rate of a step does not depend on the step count, which the tests change.
fn settings(data: &str, out: &Path, max_steps: usize) -> Vec<(String, String)> {
    let out = out.to_string_lossy().into_owned();
    [
        ("data_path", data),
        ("tokenizer", &llama_spm_vocab()),
        ("init", "tiny"),
        ("seq_len", "32"),
        ("batch_size", "2"),
        ("max_steps", &max_steps.to_string()),
        ("eval_every", "2"),
        ("eval_batches", "1"),
        ("warmup", "3"),
        ("lr_schedule", "constant"),
        ("learning_rate", "3e-3"),
        ("model_path", &out),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn train_cmd(data: &str, out: &Path, max_steps: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args(["train", "-t", "2"]);
    for (k, v) in settings(data, out, max_steps) {
        c.arg(format!("--{k}={v}"));
    }
    c
}

/// Metrics lines without the timing fields.
fn losses(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_s");
            }
            v.to_string()
        })
        .collect()
}

fn train_steps(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"train\"")).count()
}

/// SIGINT after a few steps: the run finishes its step, writes a checkpoint, says how to
/// resume and exits with 130 within seconds; `--resume` then continues it to the same losses
/// as a run never stopped.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_at_a_step_with_a_checkpoint_that_resumes_exactly() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 2);
    let stopped = dir.path().join("stopped");
    let mut child = train_cmd(&data, &stopped, 100_000)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while train_steps(&stopped) < 3 {
        assert!(Instant::now() < deadline, "no steps logged");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{:?}: {err}", out.status);
    assert!(out.status.signal().is_none());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop: {err}"
    );
    let n = train_steps(&stopped);
    assert!(n >= 3, "{n} steps");
    let latest = std::fs::read_to_string(stopped.join("checkpoints/latest")).unwrap();
    assert_eq!(
        latest.trim(),
        format!("step-{n:08}"),
        "the last step checkpointed"
    );
    assert!(
        err.contains(&format!("stopped after step {n} of 100000"))
            && err.contains("the same command with --resume"),
        "{err}"
    );
    assert!(!stopped.join("model.safetensors").exists(), "not finished");

    // Resumed to n + 4 steps, it matches a run of n + 4 steps never stopped.
    let resumed = train_cmd(&data, &stopped, n + 4)
        .arg("--resume")
        .output()
        .unwrap();
    ok(&resumed);
    let straight = dir.path().join("straight");
    ok(&train_cmd(&data, &straight, n + 4).output().unwrap());
    assert_eq!(losses(&stopped), losses(&straight));
    let wa = std::fs::read(straight.join("model.safetensors")).unwrap();
    let wb = std::fs::read(stopped.join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
}

/// `llama3_cli::train` (Python's `llama3.train`): the CLI's settings by name, an event per
/// logged step and evaluation, a serializable summary; `request_stop` from the callback ends
/// the run after that step, resumable with `resume`.
#[test]
fn the_library_trains_reports_events_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 2);
    let run = dir.path().join("run");
    let pairs = |extra: &[(&str, &str)]| -> Vec<(String, Vec<String>)> {
        let mut s = settings(&data, &run, 6);
        s.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        s.into_iter().map(|(k, v)| (k, vec![v])).collect()
    };
    let mut events: Vec<serde_json::Value> = Vec::new();
    let summary = llama3_cli::train(&pairs(&[]), &mut |e: &TrainEvent| {
        if let TrainEvent::Step(s) = e {
            if s.step == 3 {
                llama3_cli::request_stop();
            }
        }
        events.push(serde_json::to_value(e).unwrap());
    })
    .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["start", "eval", "step", "step", "eval", "step", "saved", "stopped"]
    );
    assert_eq!(events[2]["step"], 1);
    assert!(events[2]["loss"].as_f64().unwrap() > 0.0 && events[2]["lr"].is_number());
    assert!(events[1]["ppl"].is_number());
    assert!(summary.interrupted && summary.model.is_none());
    assert_eq!((summary.steps, summary.total_steps), (3, 6));
    let checkpoint = summary.checkpoint.clone().unwrap();
    assert!(
        checkpoint.ends_with("checkpoints/step-00000003"),
        "{checkpoint:?}"
    );
    assert_eq!(events[6]["path"], checkpoint.to_str().unwrap());
    assert_eq!(summary.final_loss, events[5]["loss"].as_f64());
    assert_eq!(summary.tokens_seen, 3 * 2 * 32);

    // Resumed: a new run clears the old request and finishes.
    let mut steps = Vec::new();
    let summary = llama3_cli::train(&pairs(&[("resume", "true")]), &mut |e| {
        if let TrainEvent::Step(s) = e {
            steps.push(s.step);
        }
    })
    .unwrap();
    assert_eq!(steps, [4, 5, 6]);
    assert!(!summary.interrupted);
    assert_eq!((summary.start_step, summary.steps), (3, 6));
    assert_eq!(summary.model.as_deref(), Some(run.as_path()));
    let evals: Vec<f64> = llama3_train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            llama3_train::metrics::Record::Eval(e) => Some(e.loss),
            llama3_train::metrics::Record::Train(_) => None,
        })
        .collect();
    assert_eq!(evals.len(), 4, "steps 0, 2, 4, 6");
    let best = evals.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(summary.best_eval.as_ref().unwrap().loss, best);
    assert_eq!(summary.final_eval.as_ref().unwrap().loss, evals[3]);
    let json = serde_json::to_string(&summary).unwrap();
    let back: TrainSummary = serde_json::from_str(&json).unwrap();
    assert_eq!((back.steps, &back.model), (6, &summary.model), "{json}");

    // Bad settings are typed errors naming the setting.
    let err = llama3_cli::train(&pairs(&[("batch_sise", "2")]), &mut |_| {}).unwrap_err();
    let typed = err.downcast_ref::<llama3_cli::SettingsError>().unwrap();
    assert!(typed.0.contains("batch_sise"), "{typed}");
}
