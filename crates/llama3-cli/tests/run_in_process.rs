//! `llama3_cli::run`, the CLI as a library (the Python wheel's in-process `llama3` command),
//! ends with the binary's exit status for help, version, usage errors and failed commands.

use std::ffi::OsString;

use llama3_testutil::llama3;

#[test]
fn run_returns_the_binarys_exit_status() {
    let missing = std::env::temp_dir().join("llama3-no-such-model.gguf");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], i32); 6] = [
        (&["--version"], 0),
        (&["--help"], 0),
        (&["train", "--help"], 0),
        (&["bogus"], 2),
        (&["train", "--batch-size", "eight"], 2),
        (&["tokenize", "-m", missing, "-p", "hi"], 1),
    ];
    for (args, want) in cases {
        let binary = llama3!(args).status.code();
        let argv: Vec<OsString> = std::iter::once("llama3")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        assert_eq!(binary, Some(want), "{args:?}");
        assert_eq!(llama3_cli::run(argv), want, "{args:?}");
    }
}

/// `llama3 train --help` states the defaults taken without --init and --tokenizer, and what
/// Ctrl-C does.
#[test]
fn train_help_states_the_defaults_and_ctrl_c() {
    let out = llama3!(&["train", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Without --init and --tokenizer, the preset \"tiny\" is trained from scratch with the \
         default model's tokenizer",
        "Default: tiny, from scratch",
        "with a preset, the default model's",
        "0 trains on the CPU",
        "exits with status 130",
    ] {
        assert!(help.contains(needle), "{needle:?} not in: {help}");
    }
}
