//! Training settings given as (name, values) pairs, as Python's keyword arguments arrive,
//! turned into the flags of `llama3 train` and parsed by the same clap definition
//! ([`TrainArgs`]): one list of settings, one set of defaults and checks.

use std::ffi::OsString;

use clap::{Arg, Args, Command, FromArgMatches};

use super::TrainArgs;

/// A setting that is not one of `llama3 train`'s, or a value it does not take. The Python
/// binding raises it as a `ValueError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// The settings as `llama3 train` flags, parsed (see [`super::train`] for the forms).
pub fn parse(settings: &[(String, Vec<String>)]) -> Result<TrainArgs, SettingsError> {
    let cmd = TrainArgs::augment_args(Command::new("train"));
    let mut argv: Vec<OsString> = vec!["train".into()];
    for (name, values) in settings {
        let arg = find(&cmd, name).ok_or_else(|| {
            SettingsError(format!(
                "unknown training setting {name:?}: the settings are the flags of \
                 `llama3 train --help`, with underscores (data_path, learning_rate, ...)"
            ))
        })?;
        if values.is_empty() {
            continue;
        }
        let Some(long) = arg.get_long() else {
            continue; // every setting has a long name; none without
        };
        let flag = format!("--{long}");
        if !arg.get_action().takes_values() {
            // A switch: true or false.
            match values.as_slice() {
                [v] if is_true(v) == Some(true) => argv.push(flag.into()),
                [v] if is_true(v) == Some(false) => {}
                _ => {
                    return Err(SettingsError(format!(
                        "{name} is a switch: give true or false, not {values:?}"
                    )))
                }
            }
            continue;
        }
        if let Some(d) = arg.get_value_delimiter() {
            // A list flag (betas, lora_targets): one value, delimited, as typed on a shell.
            argv.push(format!("{flag}={}", values.join(&d.to_string())).into());
            continue;
        }
        let most = arg.get_num_args().map_or(1, |r| r.max_values());
        match values.as_slice() {
            // `--flag=value`: a value that starts with `-` stays a value.
            [v] => argv.push(format!("{flag}={v}").into()),
            _ if values.len() <= most => {
                argv.push(flag.into());
                argv.extend(values.iter().map(OsString::from));
            }
            _ => {
                return Err(SettingsError(format!(
                    "{name} takes one value, not {values:?}"
                )))
            }
        }
    }
    let matches = cmd
        .try_get_matches_from(argv)
        .map_err(|e| SettingsError(clap_message(&e)))?;
    TrainArgs::from_arg_matches(&matches).map_err(|e| SettingsError(clap_message(&e)))
}

/// The flag named `name`: its long name with `_` or `-`, or one of its aliases.
fn find<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    let dashed = name.replace('_', "-");
    cmd.get_arguments().find(|a| {
        a.get_long().is_some_and(|l| l == name || l == dashed)
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name))
    })
}

fn is_true(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// clap's first line without its `error: ` (the rest is usage and a pointer to --help).
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn pairs(s: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// The CLI's parse of `line` (`llama3 train` + flags).
    fn cli(line: &[&str]) -> TrainArgs {
        Cli::try_parse_from(line).unwrap().train
    }

    #[test]
    fn settings_parse_as_the_same_flags_would() {
        let got = parse(&pairs(&[
            ("data_path", &["a.txt", "b"]),
            ("valid_data_path", &["v.txt"]),
            ("model_path", &["out"]),
            ("num_gpus", &["0"]),
            ("batch_size", &["8"]),
            ("learning_rate", &["0.0001"]),
            ("num_epochs", &["3"]),
            ("betas", &["0.9", "0.99"]),
            ("lora_targets", &["q_proj", "v_proj"]),
            ("rslora", &["True"]),
            ("gradient_checkpointing", &["false"]),
            ("seq-len", &["64"]),
            ("min_lr", &["-0.5"]),
            ("init", &[]),
        ]))
        .unwrap();
        let want = cli(&[
            "llama3",
            "--data_path",
            "a.txt",
            "b",
            "--valid_data_path=v.txt",
            "--model_path=out",
            "--num_gpus=0",
            "--batch_size=8",
            "--learning_rate=0.0001",
            "--num_epochs=3",
            "--betas",
            "0.9,0.99",
            "--lora-targets",
            "q_proj,v_proj",
            "--rslora",
            "--seq-len",
            "64",
            "--min-lr=-0.5",
        ]);
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert_eq!(got.betas, Some(vec![0.9, 0.99]));
        assert_eq!(got.min_lr, Some(-0.5));
        assert!(got.rslora && !got.gradient_checkpointing && got.init.is_none());
        // An alias names the same setting.
        let lr = parse(&pairs(&[("lr", &["0.5"])])).unwrap();
        assert_eq!(lr.learning_rate, Some(0.5));
    }

    #[test]
    fn bad_names_and_values_are_settings_errors() {
        let err = |s: &[(&str, &[&str])]| parse(&pairs(s)).unwrap_err().0;
        let e = err(&[("learning_rte", &["1"])]);
        assert!(
            e.contains("unknown training setting \"learning_rte\""),
            "{e}"
        );
        let e = err(&[("help", &["true"])]);
        assert!(e.contains("unknown training setting"), "{e}");
        let e = err(&[("batch_size", &["eight"])]);
        assert!(
            e.contains("invalid value 'eight'") && !e.contains('\n'),
            "{e}"
        );
        let e = err(&[("batch_size", &["8", "9"])]);
        assert!(e.contains("takes one value"), "{e}");
        let e = err(&[("resume", &["maybe"])]);
        assert!(e.contains("switch"), "{e}");
        let e = err(&[("method", &["dora"])]);
        assert!(e.contains("dora"), "{e}");
    }
}
