//! Zero- and k-shot classification by prompting: every label is verbalized as a word, the
//! example is written into a template up to where the label goes, and the label whose word is
//! most likely there wins ([`super::choice`]).
//!
//! ```text
//! template   "Review: {text}\nSentiment: {label}"
//! shot       template with a train example's text and its label word
//! prompt     shots joined by the separator ("\n\n"), the separator, then the template with the
//!            test text up to "{label}"          -> "...Review: <text>\nSentiment:" + " positive"
//! ```
//!
//! Shots are drawn by seed from the train split without replacement. By default one draw
//! serves the whole test set (a fixed prompt, as in "Calibrate before use", Zhao et al. 2021),
//! which lets the scorer run the shared prefix once; `resample` draws k new shots for each test
//! example (lm-evaluation-harness style), with a generator seeded by (seed, example index).

use rand::seq::IndexedRandom;

use super::choice::ChoiceItem;
use super::data::LabelledExample;
use crate::rng::rng_for;
use crate::{Error, Result};

/// A prompt template with exactly one `{text}` followed (somewhere later) by one `{label}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    before_text: String,
    between: String,
    after_label: String,
}

pub const DEFAULT_TEMPLATE: &str = "Review: {text}\nSentiment: {label}";

impl Template {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: &str| Error::Input(format!("template {s:?}: {m}"));
        if s.matches("{text}").count() != 1 || s.matches("{label}").count() != 1 {
            return Err(bad("needs exactly one {text} and one {label}"));
        }
        let (before_text, rest) = s.split_once("{text}").ok_or_else(|| bad("no {text}"))?;
        let (between, after_label) = rest
            .split_once("{label}")
            .ok_or_else(|| bad("{label} must come after {text}"))?;
        Ok(Self {
            before_text: before_text.into(),
            between: between.into(),
            after_label: after_label.into(),
        })
    }

    /// The template up to where the label goes.
    pub fn context(&self, text: &str) -> String {
        format!("{}{text}{}", self.before_text, self.between)
    }

    /// The whole template, label word included (a shot).
    pub fn render(&self, text: &str, word: &str) -> String {
        format!("{}{word}{}", self.context(text), self.after_label)
    }
}

/// The labels (as written in the data) and the word each is verbalized as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    pub names: Vec<String>,
    pub words: Vec<String>,
}

impl Labels {
    /// `fresh=positive,rotten=negative`: label value = word, in that order. A bare `x` means
    /// `x=x`.
    pub fn parse_map(spec: &str) -> Result<Self> {
        let mut names = Vec::new();
        let mut words = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, w) = part.split_once('=').unwrap_or((part, part));
            let (n, w) = (n.trim(), w.trim());
            if n.is_empty() || w.is_empty() {
                return Err(Error::Input(format!(
                    "labels: empty label or word in {part:?}"
                )));
            }
            names.push(n.to_string());
            words.push(w.to_string());
        }
        Self::new(names, words)
    }

    /// The distinct labels of `examples`, sorted, each verbalized as itself.
    pub fn from_examples(examples: &[LabelledExample]) -> Result<Self> {
        let mut names: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
        names.sort();
        names.dedup();
        Self::new(names.clone(), names)
    }

    fn new(names: Vec<String>, words: Vec<String>) -> Result<Self> {
        if names.len() < 2 {
            return Err(Error::Input(format!(
                "at least two labels are needed, got {names:?}"
            )));
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(Error::Input(format!("label {n:?} is given twice")));
            }
            if words[..i].contains(&words[i]) {
                return Err(Error::Input(format!(
                    "two labels share the word {:?}: they could not be told apart",
                    words[i]
                )));
            }
        }
        Ok(Self { names, words })
    }

    pub fn index(&self, label: &str) -> Option<usize> {
        self.names.iter().position(|n| n == label)
    }

    /// Index of every example's label; an unknown label is an error naming `source` and the line.
    pub fn indices(&self, examples: &[LabelledExample], source: &str) -> Result<Vec<usize>> {
        examples
            .iter()
            .map(|e| {
                self.index(&e.label).ok_or_else(|| {
                    Error::Input(format!(
                        "{source} line {}: label {:?} is not one of the labels {:?} (map it with \
                         --labels VALUE=WORD,...)",
                        e.line, e.label, self.names
                    ))
                })
            })
            .collect()
    }
}

/// How the few-shot prompt is built.
#[derive(Clone, Debug)]
pub struct FewShot {
    pub k: usize,
    pub seed: u64,
    /// Draw new shots for every test example instead of one set for all.
    pub resample: bool,
    pub separator: String,
}

/// The items to score: one per test example, with the label words as choices. `train` (and
/// its name for errors) is needed when `shots.k > 0`; then every label must occur in it and k
/// must not exceed its size.
pub fn build_items(
    test: &[LabelledExample],
    train: Option<(&[LabelledExample], &str)>,
    template: &Template,
    labels: &Labels,
    shots: &FewShot,
    test_name: &str,
) -> Result<(Vec<ChoiceItem>, Vec<usize>)> {
    let gold = labels.indices(test, test_name)?;
    let mut train_ok: &[LabelledExample] = &[];
    let mut train_labels = Vec::new();
    if let Some((train, name)) = train {
        train_labels = labels.indices(train, name)?;
        for (i, label) in labels.names.iter().enumerate() {
            if !train_labels.contains(&i) {
                return Err(Error::Input(format!(
                    "label {label:?} has no example in the train set {name}"
                )));
            }
        }
        train_ok = train;
    }
    if shots.k > 0 {
        if train.is_none() {
            return Err(Error::Input(format!(
                "{}-shot needs a train set to draw examples from",
                shots.k
            )));
        }
        if shots.k > train_ok.len() {
            return Err(Error::Input(format!(
                "{}-shot: the train set has only {} examples",
                shots.k,
                train_ok.len()
            )));
        }
    }
    let shot_text = |idx: &[usize]| -> String {
        let mut s = String::new();
        for &j in idx {
            s.push_str(&template.render(&train_ok[j].text, &labels.words[train_labels[j]]));
            s.push_str(&shots.separator);
        }
        s
    };
    let all: Vec<usize> = (0..train_ok.len()).collect();
    let draw = |stream: u64| -> Vec<usize> {
        let mut rng = rng_for(shots.seed, stream, 2);
        all.choose_multiple(&mut rng, shots.k).copied().collect()
    };
    let fixed = if shots.k > 0 && !shots.resample {
        shot_text(&draw(u64::MAX))
    } else {
        String::new()
    };
    let items = test
        .iter()
        .zip(&gold)
        .enumerate()
        .map(|(i, (ex, &g))| {
            let prefix = match (shots.k > 0, shots.resample) {
                (true, true) => shot_text(&draw(i as u64)),
                _ => fixed.clone(),
            };
            ChoiceItem {
                source: format!("{test_name} line {}", ex.line),
                context: format!("{prefix}{}", template.context(&ex.text)),
                choices: labels.words.clone(),
                gold: (0..labels.words.len())
                    .map(|j| f64::from(u8::from(j == g)))
                    .collect(),
            }
        })
        .collect();
    Ok((items, gold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: &str, line: usize) -> LabelledExample {
        LabelledExample {
            text: text.into(),
            label: label.into(),
            line,
        }
    }

    #[test]
    fn template_and_labels() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(t.context("fun"), "Review: fun\nSentiment: ");
        assert_eq!(
            t.render("fun", "positive"),
            "Review: fun\nSentiment: positive"
        );
        assert!(Template::parse("{label} {text}").is_err());
        assert!(Template::parse("{text}").is_err());
        assert!(Template::parse("{text} {text} {label}").is_err());
        let l = Labels::parse_map("fresh=positive, rotten=negative").unwrap();
        assert_eq!(
            (l.names.clone(), l.words.clone()),
            (
                vec!["fresh".into(), "rotten".into()],
                vec!["positive".into(), "negative".into()]
            )
        );
        assert!(Labels::parse_map("a=x,b=x")
            .unwrap_err()
            .to_string()
            .contains("share"));
        assert!(Labels::parse_map("a").is_err());
        assert!(Labels::parse_map("a=,b=c").is_err());
    }

    #[test]
    fn few_shot_prompts_and_errors() {
        let train = vec![
            ex("good", "fresh", 2),
            ex("bad", "rotten", 3),
            ex("great", "fresh", 4),
        ];
        let test = vec![ex("fine", "fresh", 1), ex("awful", "rotten", 2)];
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let l = Labels::parse_map("fresh=positive,rotten=negative").unwrap();
        let shots = |k, resample| FewShot {
            k,
            seed: 3,
            resample,
            separator: "\n\n".into(),
        };
        let (items, gold) = build_items(
            &test,
            Some((&train, "train")),
            &t,
            &l,
            &shots(0, false),
            "test",
        )
        .unwrap();
        assert_eq!(gold, vec![0, 1]);
        assert_eq!(items[1].context, "Review: awful\nSentiment: ");
        assert_eq!(items[1].gold, vec![0.0, 1.0]);
        // Fixed shots: the same prefix for every item, k rendered train examples.
        let (items, _) = build_items(
            &test,
            Some((&train, "train")),
            &t,
            &l,
            &shots(2, false),
            "test",
        )
        .unwrap();
        let prefix = items[0]
            .context
            .strip_suffix("Review: fine\nSentiment: ")
            .unwrap();
        assert!(items[1].context.starts_with(prefix));
        assert_eq!(prefix.matches("Review: ").count(), 2);
        assert!(
            prefix.ends_with("\n\n")
                && (prefix.contains("Sentiment: positive")
                    || prefix.contains("Sentiment: negative"))
        );
        // Errors: k too large, no train, label unknown, label missing from train.
        let e = build_items(
            &test,
            Some((&train, "train")),
            &t,
            &l,
            &shots(4, false),
            "test",
        )
        .unwrap_err();
        assert!(e.to_string().contains("only 3 examples"), "{e}");
        assert!(build_items(&test, None, &t, &l, &shots(1, false), "test").is_err());
        let bad = vec![ex("meh", "neutral", 7)];
        let e = build_items(&bad, None, &t, &l, &shots(0, false), "test.jsonl").unwrap_err();
        assert!(
            e.to_string()
                .contains("test.jsonl line 7: label \"neutral\""),
            "{e}"
        );
        let only_fresh = vec![ex("good", "fresh", 1)];
        let e = build_items(
            &test,
            Some((&only_fresh, "tr.jsonl")),
            &t,
            &l,
            &shots(1, false),
            "test",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("label \"rotten\" has no example in the train set tr.jsonl"),
            "{e}"
        );
    }
}
