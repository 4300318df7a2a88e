//! The command line and training from Python: `llama3` (the wheel's console script runs the
//! CLI in-process), `llama3.train(...)` through the same settings type and code as `llama3
//! train`, and the tool functions (`quantize`, `merge`, `export`, `classify`) as CLI calls
//! whose errors become exceptions.

use std::ffi::OsString;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use llama3_cli::CliError;
use pyo3::prelude::*;

use crate::errors::{invalid, raise, to_py};

/// Runs the `llama3` command line (`args[0]` the program name) and returns its exit status,
/// printing as the binary does. The GIL is released meanwhile.
#[pyfunction]
pub fn run_cli(py: Python<'_>, args: Vec<String>) -> i32 {
    let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
    py.detach(move || llama3_cli::run(args))
}

/// A library error inside an anyhow chain as its exception; anything else a `Llama3Error`.
fn anyhow_to_py(e: anyhow::Error) -> PyErr {
    if let Some(s) = e.downcast_ref::<llama3_cli::SettingsError>() {
        return invalid(s.0.clone());
    }
    let msg = format!("{e:#}");
    match e.downcast::<llama3::Error>() {
        // The whole chain's message, the library error's class.
        Ok(inner) => {
            let class = to_py(inner);
            Python::attach(|py| {
                let name = class
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "Llama3Error".into());
                raise(&name, msg)
            })
        }
        Err(_) => raise("Llama3Error", msg),
    }
}

/// Runs one CLI command, its error raised as an exception (bad arguments: a ValueError with
/// clap's message). Returns the exit status of a finished command (130: training stopped).
#[pyfunction]
pub fn call_cli(py: Python<'_>, args: Vec<String>) -> PyResult<i32> {
    let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
    match py.detach(move || llama3_cli::run_command(args)) {
        Ok(code) => Ok(code),
        Err(CliError::Usage(e)) => Err(invalid(e.render().to_string())),
        Err(CliError::Failed(e)) => Err(anyhow_to_py(e)),
    }
}

/// What the training thread sends.
enum Msg {
    Event(String),
    Done(anyhow::Result<String>),
}

/// `llama train` with `settings` (flag name, values); `callback(event_json)` for each event.
/// Training runs on a thread of its own; this thread waits with the GIL released, calls the
/// callback, and checks for Ctrl-C every 100 ms: a `KeyboardInterrupt` asks the run to stop
/// at the end of its step with a checkpoint, waits for that, then is raised. Returns the
/// summary as JSON.
#[pyfunction]
#[pyo3(signature = (settings, callback=None))]
pub fn train(
    py: Python<'_>,
    settings: Vec<(String, Vec<String>)>,
    callback: Option<Py<PyAny>>,
) -> PyResult<String> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let worker = std::thread::Builder::new()
        .name("llama3-train".into())
        .spawn(move || {
            let events = tx.clone();
            let mut on_event = |e: &llama3_cli::TrainEvent| {
                if let Ok(j) = serde_json::to_string(e) {
                    let _ = events.send(Msg::Event(j));
                }
            };
            let out = llama3_cli::train(&settings, &mut on_event)
                .and_then(|s| Ok(serde_json::to_string(&s)?));
            let _ = tx.send(Msg::Done(out));
        })
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    let mut pending: Option<PyErr> = None;
    let mut rx = Some(rx);
    let result = loop {
        // The receiver travels into the GIL-free wait and back (it is not `Sync`).
        let Some(r) = rx.take() else {
            break Err(anyhow::anyhow!(
                "the training thread ended without a result"
            ));
        };
        let (r, got) = py.detach(move || {
            let got = r.recv_timeout(Duration::from_millis(100));
            (r, got)
        });
        rx = Some(r);
        match got {
            Ok(Msg::Event(j)) => {
                if let (Some(cb), None) = (&callback, &pending) {
                    if let Err(e) = cb.call1(py, (j,)) {
                        // A failing callback stops the run like Ctrl-C, then raises.
                        llama3_cli::request_stop();
                        pending = Some(e);
                    }
                }
            }
            Ok(Msg::Done(out)) => break out,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!(
                    "the training thread ended without a result"
                ))
            }
        }
        // Ctrl-C, checked after each event and at least every 100 ms.
        if pending.is_none() {
            if let Err(e) = py.check_signals() {
                llama3_cli::request_stop();
                pending = Some(e);
            }
        }
    };
    let _ = worker.join();
    if let Some(e) = pending {
        return Err(e);
    }
    result.map_err(anyhow_to_py)
}
