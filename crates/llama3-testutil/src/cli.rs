//! Running the `llama3` binary and reading what it printed, for the CLI's tests.

use std::process::{Command, Output};

use serde_json::Value as Json;

/// `llama3!(&["generate", ...])`: runs the `llama3` binary built for this test with the
/// arguments and returns its output. A macro because cargo hands the binary's path
/// (`CARGO_BIN_EXE_llama3`) only to the tests of the crate that builds it, when they compile.
#[macro_export]
macro_rules! llama3 {
    ($args:expr $(,)?) => {
        $crate::run(env!("CARGO_BIN_EXE_llama3"), $args)
    };
}

/// Runs `bin` with `args` and returns its output.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

/// Stdout of a command that must have succeeded (else fails showing its stderr).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "llama3 failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout of a command that must have succeeded, as JSON.
pub fn json_of(out: &Output) -> Json {
    let stdout = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Fails unless the command failed with exactly one line on stderr, `error: ...`, that
/// contains `needle` (case-insensitive): the CLI's contract for bad input.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in: {err}"
    );
}
