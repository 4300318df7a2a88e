//! BIG-bench JSON tasks (`task.json`, github.com/google/BIG-bench `docs/doc.md`), multiple
//! choice only: examples with `target_scores`. Generative examples (`target` alone) are left
//! out and counted; a task with none of the other kind is refused.
//!
//! Prompts follow BIG-bench's `json_task.py` (`default_format_fn`, `make_nshot_dataset`) with
//! its defaults, as lm-evaluation-harness's BIG-bench port reads them:
//!
//! ```text
//! text(ex)  = example_input_prefix ("\nQ: ") + input
//!             [+ choice_prefix ("\n  choice: ") + choices joined by choice_prefix,
//!                when append_choices_to_input (true)]
//!             + example_output_prefix ("\nA: ")
//! 0-shot    = task_prefix ("") + text(ex)
//! k-shot    = task_prefix + join(sep, [text(s) + answer(s) for s in shots]) + sep + text(ex)
//!             with sep = few_shot_example_separator ("\n")
//! ```
//!
//! and each choice is scored as the continuation of that context. Shots are k other examples of
//! the same task (never the evaluated one) drawn without replacement, and a shot's answer is one
//! of its best-scored choices; both are drawn with a generator seeded by (seed, example index),
//! so an example's prompt does not depend on which others are evaluated. Appended choice lists
//! are the sorted choices in a seeded permutation (BIG-bench permutes them with numpy's
//! generator; the permutation here is not numpy's). Exact duplicate examples are dropped, as
//! lm-evaluation-harness does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::Value as Json;

use super::choice::ChoiceItem;
use crate::rng::rng_for;
use crate::{Error, Result};

/// One multiple-choice example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub input: String,
    /// The `target_scores` keys, sorted.
    pub choices: Vec<String>,
    /// Their scores, same order.
    pub scores: Vec<f64>,
}

/// A task's prompt settings and its multiple-choice examples.
#[derive(Clone, Debug)]
pub struct Task {
    /// The folder name, `parent/folder` for a subtask (`arithmetic/1_digit_addition`).
    pub name: String,
    pub path: PathBuf,
    pub task_prefix: String,
    pub input_prefix: String,
    pub output_prefix: String,
    pub choice_prefix: String,
    pub append_choices: bool,
    pub separator: String,
    pub examples: Vec<Example>,
    /// Examples left out: exact duplicates, and generative ones (no `target_scores`).
    pub n_duplicates: usize,
    pub n_generative: usize,
}

/// The tasks at `path`: a `task.json`, a task folder holding one, or a folder whose
/// `task.json` has no examples and whose subfolders hold the subtasks (BIG-bench's layout for
/// `arithmetic`, `logical_deduction`...), each loaded as its own task.
pub fn load(path: &Path) -> Result<Vec<Task>> {
    let file = if path.is_dir() {
        path.join("task.json")
    } else {
        path.to_path_buf()
    };
    let json = read_json(&file)?;
    let has_examples = json
        .get("examples")
        .and_then(Json::as_array)
        .is_some_and(|e| !e.is_empty());
    let dir = file.parent().unwrap_or(Path::new("."));
    if has_examples {
        return Ok(vec![parse(&file, &json, task_name(&file))?]);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("task.json").is_file())
        .collect();
    subdirs.sort();
    if subdirs.is_empty() {
        return Err(Error::format(
            &file,
            "no examples and no subtask folders: not a BIG-bench JSON task",
        ));
    }
    subdirs
        .iter()
        .map(|d| {
            let f = d.join("task.json");
            let j = read_json(&f)?;
            parse(&f, &j, task_name(&f))
        })
        .collect()
}

fn read_json(file: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(file, format!("not valid JSON: {e}")))
}

/// `folder`, or `parent/folder` when the parent folder is a task too.
fn task_name(file: &Path) -> String {
    let dir = file.parent().unwrap_or(Path::new("."));
    let base = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match dir.parent() {
        Some(parent) if parent.join("task.json").is_file() => {
            format!("{}/{}", base(parent), base(dir))
        }
        _ => base(dir),
    }
}

/// Builds a task from a parsed `task.json`.
pub fn parse(file: &Path, json: &Json, name: String) -> Result<Task> {
    let err = |msg: String| Error::format(file, msg);
    let text = |key: &str, default: &str| -> Result<String> {
        match json.get(key) {
            None => Ok(default.to_string()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(other) => Err(err(format!("{key} must be a string, not {other}"))),
        }
    };
    let append_choices = match json.get("append_choices_to_input") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            err(format!(
                "append_choices_to_input must be true or false, not {v}"
            ))
        })?,
    };
    let raw = json
        .get("examples")
        .and_then(Json::as_array)
        .ok_or_else(|| err("no \"examples\" list: not a BIG-bench JSON task".into()))?;
    let mut examples = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    let (mut n_duplicates, mut n_generative) = (0, 0);
    for (i, ex) in raw.iter().enumerate() {
        let input = ex
            .get("input")
            .and_then(Json::as_str)
            .ok_or_else(|| err(format!("example {i}: no \"input\" string")))?;
        let Some(scores) = ex.get("target_scores") else {
            if ex.get("target").is_none() {
                return Err(err(format!(
                    "example {i}: neither target_scores nor target"
                )));
            }
            n_generative += 1;
            continue;
        };
        let scores = scores
            .as_object()
            .ok_or_else(|| err(format!("example {i}: target_scores must be an object")))?;
        if scores.len() < 2 {
            return Err(err(format!("example {i}: fewer than two choices")));
        }
        let mut pairs = Vec::with_capacity(scores.len());
        for (choice, score) in scores {
            let s = score.as_f64().ok_or_else(|| {
                err(format!(
                    "example {i}: the score of {choice:?} is not a number"
                ))
            })?;
            if choice.is_empty() {
                return Err(err(format!("example {i}: an empty choice")));
            }
            pairs.push((choice.clone(), s));
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let key = serde_json::to_string(&(input, &pairs)).unwrap_or_default();
        if !seen.insert(key) {
            n_duplicates += 1;
            continue;
        }
        let (choices, scores) = pairs.into_iter().unzip();
        examples.push(Example {
            input: input.to_string(),
            choices,
            scores,
        });
    }
    if examples.is_empty() {
        return Err(Error::Unsupported(format!(
            "{}: task {name} has no multiple-choice examples ({n_generative} generative ones, \
             with a target but no target_scores); only multiple-choice tasks can be scored",
            file.display()
        )));
    }
    Ok(Task {
        name,
        path: file.to_path_buf(),
        task_prefix: text("task_prefix", "")?,
        input_prefix: text("example_input_prefix", "\nQ: ")?,
        output_prefix: text("example_output_prefix", "\nA: ")?,
        choice_prefix: text("choice_prefix", "\n  choice: ")?,
        append_choices,
        separator: text("few_shot_example_separator", "\n")?,
        examples,
        n_duplicates,
        n_generative,
    })
}

impl Task {
    /// `text(ex)` of the module docs: the example up to where its answer goes.
    pub fn example_text(&self, index: usize, seed: u64) -> String {
        let ex = &self.examples[index];
        let mut s = format!("{}{}", self.input_prefix, ex.input);
        if self.append_choices {
            let mut order: Vec<&str> = ex.choices.iter().map(String::as_str).collect();
            order.shuffle(&mut rng_for(seed, index as u64, 0));
            s.push_str(&self.choice_prefix);
            s.push_str(&order.join(&self.choice_prefix));
        }
        s.push_str(&self.output_prefix);
        s
    }

    /// The scored item of example `index` with `k` shots.
    pub fn item(&self, index: usize, k: usize, seed: u64) -> Result<ChoiceItem> {
        let n = self.examples.len();
        if k >= n {
            return Err(Error::Input(format!(
                "task {}: {k}-shot needs at least {} distinct examples, it has {n}",
                self.name,
                k + 1
            )));
        }
        let mut context = self.task_prefix.clone();
        if k > 0 {
            let mut rng: StdRng = rng_for(seed, index as u64, 1);
            let others: Vec<usize> = (0..n).filter(|&j| j != index).collect();
            let shots: Vec<usize> = others.choose_multiple(&mut rng, k).copied().collect();
            let parts: Vec<String> = shots
                .iter()
                .map(|&j| {
                    let ex = &self.examples[j];
                    let best = ex.scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let answers: Vec<&String> = ex
                        .choices
                        .iter()
                        .zip(&ex.scores)
                        .filter(|(_, &s)| s == best)
                        .map(|(c, _)| c)
                        .collect();
                    let answer = answers.choose(&mut rng).map_or("", |a| a.as_str());
                    format!("{}{answer}", self.example_text(j, seed))
                })
                .collect();
            context.push_str(&parts.join(&self.separator));
            context.push_str(&self.separator);
        }
        context.push_str(&self.example_text(index, seed));
        let ex = &self.examples[index];
        Ok(ChoiceItem {
            source: format!("{} example {index}", self.name),
            context,
            choices: ex.choices.clone(),
            gold: ex.scores.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> Result<Task> {
        let j: Json = serde_json::from_str(json).unwrap();
        parse(Path::new("t/task.json"), &j, "t".into())
    }

    #[test]
    fn defaults_and_zero_shot_prompt() {
        let t = task(
            r#"{"examples": [
                {"input": "2+2?", "target_scores": {"4": 1, "5": 0}},
                {"input": "2+2?", "target_scores": {"5": 0, "4": 1}},
                {"input": "Say hi", "target": "hi"},
                {"input": "1+1?", "target_scores": {"2": 1, "3": 0}}]}"#,
        )
        .unwrap();
        assert_eq!(
            (t.examples.len(), t.n_duplicates, t.n_generative),
            (2, 1, 1)
        );
        assert_eq!(t.examples[0].choices, vec!["4", "5"]);
        let item = t.item(1, 0, 7).unwrap();
        // Choices appended in some order, then the output prefix.
        assert!(
            item.context == "\nQ: 1+1?\n  choice: 2\n  choice: 3\nA: "
                || item.context == "\nQ: 1+1?\n  choice: 3\n  choice: 2\nA: ",
            "{:?}",
            item.context
        );
        assert_eq!(
            (item.choices.clone(), item.gold.clone()),
            (vec!["2".into(), "3".into()], vec![1.0, 0.0])
        );
        assert!(t.item(0, 2, 7).is_err()); // 2 shots need 3 examples
    }

    #[test]
    fn k_shot_uses_other_examples_with_their_answers() {
        let t = task(
            r#"{"task_prefix": "Add.", "example_input_prefix": "\nIn: ",
                "example_output_prefix": "\nOut:", "append_choices_to_input": false,
                "few_shot_example_separator": "\n--",
                "examples": [
                {"input": "a", "target_scores": {"A": 1, "x": 0}},
                {"input": "b", "target_scores": {"B": 1, "x": 0}},
                {"input": "c", "target_scores": {"C": 1, "x": 0}}]}"#,
        )
        .unwrap();
        let item = t.item(2, 2, 0).unwrap();
        let ok = [
            "Add.\nIn: a\nOut:A\n--\nIn: b\nOut:B\n--\nIn: c\nOut:",
            "Add.\nIn: b\nOut:B\n--\nIn: a\nOut:A\n--\nIn: c\nOut:",
        ];
        assert!(ok.contains(&item.context.as_str()), "{:?}", item.context);
        // Same seed, same prompt; the shot draw depends on the example, not on call order.
        assert_eq!(t.item(2, 2, 0).unwrap(), item);
        assert_eq!(t.item(0, 1, 5).unwrap(), t.item(0, 1, 5).unwrap());
    }

    #[test]
    fn refuses_generative_only_and_malformed() {
        let e = task(r#"{"examples": [{"input": "Say hi", "target": "hi"}]}"#).unwrap_err();
        assert!(e.to_string().contains("no multiple-choice examples"), "{e}");
        let e = task(r#"{"examples": [{"input": "q", "target_scores": {"a": "yes", "b": 0}}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("example 0") && e.to_string().contains("not a number"));
        assert!(task(r#"{"examples": [{"target_scores": {"a": 1, "b": 0}}]}"#).is_err());
        assert!(task(r#"{"name": "x"}"#).is_err());
    }
}
