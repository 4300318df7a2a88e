//! `llama3 eval` end to end on real data and the default model, kept short with --limit: a
//! BIG-bench task 0- and 1-shot, the Rotten Tomatoes split and a prompted classification, and
//! bad input (each rejected before the model loads).

use llama3_testutil::{json_of, llama3, shared};

fn model() -> String {
    llama3_testutil::default_model()
        .to_string_lossy()
        .into_owned()
}

fn task(name: &str) -> String {
    shared()
        .join("data/bigbench/tasks")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Fails with a one-line error naming `want` on stderr.
fn fails_with(args: &[&str], want: &str) {
    let out = llama3!(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn bigbench_zero_and_one_shot_json() {
    let (m, t) = (model(), task("known_unknowns"));
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds.jsonl");
    let p = preds.to_str().unwrap();
    let args = [
        "eval", "bigbench", "-m", &m, &t, "-k", "0,1", "--limit", "4", "--seed", "3",
    ];
    let j = json_of(&llama3!(
        &[&args[..], &["--json", "--predictions", p]].concat(),
    ));
    assert_eq!(
        (j["seed"].as_u64(), j["limit"].as_u64()),
        (Some(3), Some(4))
    );
    let r = j["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    for (res, k) in r.iter().zip([0, 1]) {
        assert_eq!(res["task"], "known_unknowns");
        assert_eq!((res["k"].as_u64(), res["n"].as_u64()), (Some(k), Some(4)));
        assert_eq!(res["n_examples"], 46);
        assert_eq!(res["chance"], 0.5);
        for key in ["acc", "acc_norm"] {
            let v = res[key].as_f64().unwrap();
            assert!(
                (0.0..=1.0).contains(&v) && (v * 4.0).fract() == 0.0,
                "{key} {v}"
            );
            assert!(res[&format!("{key}_stderr")].as_f64().unwrap() >= 0.0);
        }
        assert!(res["tokens_run"].as_u64().unwrap() > 4 * 10);
    }
    // One prediction line per example and run, consistent with the summary.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    let correct = lines[..4]
        .iter()
        .filter(|l| l["gold"][l["pred"].as_u64().unwrap() as usize] == 1.0)
        .count();
    assert_eq!(correct as f64 / 4.0, r[0]["acc"].as_f64().unwrap());
    assert!(
        lines[4]["context"]
            .as_str()
            .unwrap()
            .matches("\nQ: ")
            .count()
            == 2
    );
}

#[test]
fn rt_split_then_classify_zero_and_few_shot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rt");
    let data = shared().join("data/rotten-tomatoes/rotten_tomatoes_corpus_full.csv.bz2");
    let o = llama3!(&[
        "eval",
        "rt-split",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    assert_eq!(
        (info["movies"].as_u64(), info["plot_rows_dropped"].as_u64()),
        (Some(508), Some(1097))
    );
    assert_eq!(info["test_movies"].as_array().unwrap().len(), 51);
    let (tr, te) = (
        info["train"]["reviews"].as_u64().unwrap(),
        info["test"]["reviews"].as_u64().unwrap(),
    );
    assert_eq!(tr + te, 12_808);
    let test_lines = std::fs::read_to_string(out.join("test.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(test_lines as u64, te);

    let (test, train) = (out.join("test.jsonl"), out.join("train.jsonl"));
    let m = model();
    let j = json_of(&llama3!(&[
        "eval",
        "classify",
        "-m",
        &m,
        "--data",
        test.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--labels",
        "fresh=positive,rotten=negative",
        "-k",
        "0,2",
        "--limit",
        "6",
        "--json",
    ]));
    let r = j["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    for res in r {
        assert_eq!(res["n"], 6);
        assert_eq!(res["labels"], serde_json::json!(["fresh", "rotten"]));
        assert_eq!(res["words"], serde_json::json!(["positive", "negative"]));
        let conf = res["confusion"].as_array().unwrap();
        let total: u64 = conf
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(total, 6);
        let diag = conf[0][0].as_u64().unwrap() + conf[1][1].as_u64().unwrap();
        assert_eq!(diag as f64 / 6.0, res["accuracy"].as_f64().unwrap());
        let per = res["per_class"].as_array().unwrap();
        let support: u64 = per.iter().map(|c| c["support"].as_u64().unwrap()).sum();
        assert_eq!(support, 6);
        let f1 = (per[0]["f1"].as_f64().unwrap() + per[1]["f1"].as_f64().unwrap()) / 2.0;
        assert!((f1 - res["macro_f1"].as_f64().unwrap()).abs() < 1e-12);
    }
}

#[test]
fn bad_input_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let gen = write(
        "gen.json",
        r#"{"examples": [{"input": "2+2=", "target": "4"}]}"#,
    );
    fails_with(&["eval", "bigbench", &gen], "no multiple-choice examples");
    fails_with(
        &["eval", "bigbench", &task("known_unknowns"), "-k", "46"],
        "46-shot needs at least 47",
    );
    let test = write("test.jsonl", "{\"text\": \"Fun.\", \"label\": \"fresh\"}\n{\"text\": \"Dull.\", \"label\": \"rotten\"}\n");
    let train = write(
        "train.jsonl",
        "{\"text\": \"Loved it.\", \"label\": \"fresh\"}\n",
    );
    fails_with(
        &[
            "eval",
            "classify",
            "--data",
            &test,
            "--labels",
            "fresh=good,x=bad",
        ],
        "test.jsonl line 2: label \"rotten\"",
    );
    fails_with(
        &[
            "eval",
            "classify",
            "--data",
            &test,
            "--train",
            &train,
            "--labels",
            "fresh=good,rotten=bad",
        ],
        "label \"rotten\" has no example in the train set",
    );
    let bad = write(
        "bad.jsonl",
        "{\"text\": \"ok\", \"label\": \"fresh\"}\n{\"text\": \"oops\"\n",
    );
    fails_with(
        &["eval", "classify", "--data", &bad],
        "bad.jsonl: line 2: not valid JSON",
    );
    let empty = write("empty.csv", "text,label\n\"\",fresh\n");
    fails_with(
        &["eval", "classify", "--data", &empty],
        "line 2: empty text",
    );
    fails_with(
        &[
            "eval",
            "classify",
            "--data",
            &test,
            "--template",
            "{label}: {text}",
        ],
        "{label} must come after {text}",
    );
    fails_with(
        &["eval", "classify", "--data", &test, "-k", "2"],
        "2-shot needs a train set",
    );
}
