//! A test that cannot run here says so instead of passing green.
//!
//! libtest shows a test that returns early as `ok`, and it captures `eprintln!` unless the test
//! fails, so an early return is silent. [`skip`] writes `SKIPPED <test>: <reason>` straight to
//! the process's stderr (libtest does not capture that) and appends the same line to the file
//! named by `LLAMA3_SKIPPED_FILE`; `scripts/test.sh` sets it and lists the skipped tests, with
//! their reasons, after `cargo test`.

use std::io::Write;
use std::path::Path;

/// The environment variable naming the file that collects the skipped tests' lines.
pub const SKIPPED_FILE_ENV: &str = "LLAMA3_SKIPPED_FILE";

/// Reports that `test` did not run, and why. The caller returns right after.
pub fn skip(test: &str, reason: &str) {
    let file = std::env::var_os(SKIPPED_FILE_ENV).filter(|p| !p.is_empty());
    // Straight to fd 2, past libtest's capture of `eprintln!`.
    report(
        test,
        reason,
        &mut std::io::stderr(),
        file.as_deref().map(Path::new),
    );
}

/// Writes the line `SKIPPED <test>: <reason>` to `out` and appends it to `file`.
fn report(test: &str, reason: &str, out: &mut impl Write, file: Option<&Path>) {
    let line = format!("SKIPPED {test}: {}\n", reason.trim().replace('\n', " "));
    let _ = out.write_all(line.as_bytes());
    if let Some(path) = file {
        let what = format!("{SKIPPED_FILE_ENV}={}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // One O_APPEND write a line: lines from parallel test binaries do not interleave.
        f.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Like [`skip`], but under CI (`CI` set and not `false`/`0`, as CI services set it) it is a
/// failure: there `.ci/run` installs what the test needs, so a skip would hide a broken setup.
pub fn skip_or_fail_on_ci(test: &str, reason: &str) {
    if on_ci() {
        panic!("{test} must run on CI but cannot: {reason}");
    }
    skip(test, reason);
}

/// Whether the environment says this is a CI run.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "False"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_writes_one_line_and_appends_it_to_the_file() {
        let dir = std::env::temp_dir().join(format!("llama3-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skipped.txt");
        let mut out = Vec::new();
        report("a::b", "no tool\nhere ", &mut out, Some(&file));
        report("c::d", "why", &mut out, Some(&file));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let want = "SKIPPED a::b: no tool here\nSKIPPED c::d: why\n";
        assert_eq!(text, want);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
