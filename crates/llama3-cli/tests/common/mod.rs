//! Helpers shared by the CLI tests: the reference data folder, running the binary, and the
//! default model (fetched by `llama3 pull` like a user's first run).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// `../shared` beside the checkout (override with `LLAMA3_SHARED`).
pub fn shared() -> PathBuf {
    match std::env::var_os("LLAMA3_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// Runs the `llama3` binary built for these tests.
pub fn llama3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama3"))
        .args(args)
        .output()
        .expect("run llama3")
}

/// Path of the default model, fetched on first use.
pub fn default_model() -> PathBuf {
    let out = llama3(&["pull"]);
    assert!(
        out.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
