//! Prompt-based evaluation (`llama3::eval`) on real data: the continuation scorer against a
//! direct full-sequence forward of the default model, joint tokenization, BIG-bench tasks from
//! ../shared/data/bigbench, the Rotten Tomatoes split, and bad input.

use std::collections::HashSet;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use llama3::eval::data::{read_labelled, Columns};
use llama3::eval::prompted::{build_items, FewShot, Labels, Template, DEFAULT_TEMPLATE};
use llama3::eval::{bigbench, encode_pair, rotten, score_items, summarize, Scorer};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::model::{Llama, Logits};
use llama3::sample::log_softmax;

fn default_model() -> Loaded {
    load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap()
}

fn bigbench_dir() -> PathBuf {
    llama3_testutil::shared().join("data/bigbench/tasks")
}

fn rt_file() -> PathBuf {
    llama3_testutil::shared()
        .join("data/rotten-tomatoes")
        .join(rotten::FILE_NAME)
}

/// `sum log p(cont | ctx)` from one `Logits::All` forward over `ctx + cont[..n-1]` from an
/// empty cache (`cache = false`: no cache at all, the training path).
fn reference(model: &Llama, ctx: &[u32], cont: &[u32], cache: bool) -> f64 {
    let ids: Vec<u32> = ctx.iter().chain(&cont[..cont.len() - 1]).copied().collect();
    let t = Tensor::new(ids.as_slice(), model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut kv = model.new_cache(1, ids.len()).unwrap();
    let logits = model
        .forward(&t, cache.then_some(&mut kv), Logits::All)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    cont.iter()
        .enumerate()
        .map(|(i, &tok)| f64::from(log_softmax(&logits[ctx.len() - 1 + i])[tok as usize]))
        .sum()
}

const CONTEXTS: [&str; 3] = [
    "The capital of France is",
    "The capital of France is a city where",
    "Question: How many legs do horses have?\nAnswer:",
];
const CONTS: [&str; 4] = [
    " Paris",
    " the old town of Lyon, on the Rhône",
    " four",
    "\n\nfour legs",
];

/// The default model dequantized to f32: no 8-bit activation rounding, so a cached, chunked run
/// and one full forward differ only by float summation order.
#[test]
fn scorer_with_cache_rewinds_equals_one_full_forward() {
    let mut l = default_model();
    let tok = l.tokenizer.take().unwrap();
    l.model.dequantize().unwrap();
    assert_eq!(l.model.kv_dtype(), DType::F32);
    // One scorer for all contexts: the second reuses the first's cached prefix. Its cache
    // starts at 4 positions and grows (dropping what it held) as longer items come.
    let mut scorer = Scorer::with_capacity(&l.model, 256, 4).unwrap();
    for ctx in CONTEXTS {
        let pairs: Vec<_> = CONTS
            .iter()
            .map(|c| encode_pair(&tok, ctx, c).unwrap())
            .collect();
        let ctx_ids = pairs[0].0.clone();
        let cont_ids: Vec<Vec<u32>> = pairs.iter().map(|p| p.1.clone()).collect();
        assert!(cont_ids.iter().any(|c| c.len() > 3), "{cont_ids:?}");
        let got = scorer.score(&ctx_ids, &cont_ids).unwrap();
        for (g, cont) in got.iter().zip(&cont_ids) {
            for cache in [true, false] {
                let want = reference(&l.model, &ctx_ids, cont, cache);
                assert!(
                    (g.logprob - want).abs() < 1e-4,
                    "{ctx:?} {cont:?}: {} vs {want}",
                    g.logprob
                );
            }
            assert_eq!(g.n_tokens, cont.len());
            assert!(g.logprob < 0.0);
        }
    }
    assert!(scorer.forwards > 0);
    // Errors: empty inputs, and too long for the cache (nothing is truncated).
    let mut scorer = Scorer::new(&l.model, 8).unwrap();
    assert!(scorer.score(&[], &[vec![1]]).is_err());
    assert!(scorer.score(&[1], &[vec![]]).is_err());
    let e = scorer.score(&[1; 6], &[vec![2; 4]]).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}

/// The Q4_1 model as evaluated. Its matmuls round activations to 8 bits, so a last-bit
/// difference (candle's f32 attention matmul sums differently for another sequence length)
/// can flip a rounding and the logits depend on how the tokens were split into forwards. A
/// one-token continuation is scored from the context's own forward, the same computation as
/// the reference: exact. Longer ones run in a second forward: close, not equal.
#[test]
fn scorer_on_the_quantized_model() {
    let l = default_model();
    let tok = l.tokenizer.as_ref().unwrap();
    for ctx in CONTEXTS {
        let mut scorer = Scorer::new(&l.model, 256).unwrap();
        let pairs: Vec<_> = CONTS
            .iter()
            .map(|c| encode_pair(tok, ctx, c).unwrap())
            .collect();
        let cont_ids: Vec<Vec<u32>> = pairs.iter().map(|p| p.1.clone()).collect();
        let got = scorer.score(&pairs[0].0, &cont_ids).unwrap();
        for (g, cont) in got.iter().zip(&cont_ids) {
            let want = reference(&l.model, &pairs[0].0, cont, true);
            let tol = if cont.len() == 1 {
                1e-6
            } else {
                0.1 * cont.len() as f64
            };
            assert!(
                (g.logprob - want).abs() < tol,
                "{ctx:?} {cont:?}: {} vs {want}",
                g.logprob
            );
        }
    }
}

#[test]
fn joint_tokenization_moves_the_space_and_keeps_the_text() {
    let l = default_model();
    let tok = l.tokenizer.unwrap();
    let (ctx, cont) = encode_pair(&tok, "Sentiment: ", "positive").unwrap();
    assert_eq!(tok.decode(&ctx, false).unwrap(), "Sentiment:");
    assert_eq!(tok.decode(&cont, false).unwrap(), " positive");
    // " positive" is one token in SmolLM2's byte-level BPE: scored as such, not as " " + "positive".
    assert_eq!(cont, tok.encode(" positive", false, false).unwrap());
    // A context that adds no token: EOS stands for it (this model adds no BOS).
    let (ctx, cont) = encode_pair(&tok, "", "Hello").unwrap();
    assert_eq!(
        (ctx.len(), tok.decode(&cont, false).unwrap().as_str()),
        (1, "Hello")
    );
    assert!(encode_pair(&tok, "abc", "").is_err());
}

#[test]
fn bigbench_real_tasks_parse_and_format() {
    let t = bigbench::load(&bigbench_dir().join("general_knowledge")).unwrap();
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(
        (t.name.as_str(), t.examples.len(), t.n_generative),
        ("general_knowledge", 70, 0)
    );
    let ex = &t.examples[0];
    assert_eq!(ex.input, "How many legs do horses have?");
    assert_eq!(
        ex.choices,
        vec!["four", "none", "one", "six", "three", "two"]
    );
    assert_eq!(ex.scores, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // Defaults: "\nQ: " input, choices appended with "\n  choice: ", "\nA: " output prefix.
    let item = t.item(0, 0, 1).unwrap();
    assert!(item
        .context
        .starts_with("\nQ: How many legs do horses have?\n  choice: "));
    assert!(item.context.ends_with("\nA: "));
    assert_eq!(item.context.matches("\n  choice: ").count(), 6);
    // 3-shot: three other examples with an answer each, then the question.
    let item = t.item(5, 3, 1).unwrap();
    assert_eq!(item.context.matches("\nQ: ").count(), 4);
    assert_eq!(item.context.matches("\nA: ").count(), 4);
    assert_eq!(
        item.context.matches(t.examples[5].input.as_str()).count(),
        1
    );

    // A task with its own prefixes and no appended choices.
    let s = &bigbench::load(&bigbench_dir().join("sports_understanding/task.json")).unwrap()[0];
    let item = s.item(0, 0, 1).unwrap();
    assert_eq!(
        item.context,
        "Determine whether the following statement or statements are plausible or implausible:\
         \nStatement: Jamal Murray was perfect from the line\nPlausible/implausible? "
    );
    assert_eq!(item.choices, vec!["implausible", "plausible"]);
    assert_eq!(item.gold, vec![0.0, 1.0]);

    // A folder of subtasks.
    let a = bigbench::load(&bigbench_dir().join("arithmetic")).unwrap();
    let names: Vec<&str> = a.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 6);
    assert_eq!(names[0], "arithmetic/1_digit_addition");
    assert!(a.iter().all(|t| !t.examples.is_empty()));
    assert!(t.item(0, 70, 1).is_err()); // 70-shot of a 70-example task
}

#[test]
fn bigbench_examples_score_end_to_end() {
    let l = default_model();
    let tok = l.tokenizer.as_ref().unwrap();
    let t = &bigbench::load(&bigbench_dir().join("known_unknowns")).unwrap()[0];
    let items: Vec<_> = (0..3).map(|i| t.item(i, 1, 7).unwrap()).collect();
    let scores = score_items(&l.model, tok, &items, |_| {}).unwrap();
    let s = summarize(&items, &scores);
    assert_eq!(s.n, 3);
    assert!((0.0..=1.0).contains(&s.acc) && (0.0..=1.0).contains(&s.acc_norm));
    assert_eq!(s.chance, 0.5); // every known_unknowns example has two choices
    for (item, sc) in items.iter().zip(&scores) {
        assert_eq!(sc.logprobs.len(), item.choices.len());
        assert!(sc.logprobs.iter().all(|lp| lp.is_finite() && *lp < 0.0));
        assert_eq!(
            sc.n_bytes,
            item.choices.iter().map(String::len).collect::<Vec<_>>()
        );
    }
}

#[test]
fn rotten_tomatoes_split_by_movie() {
    let s = rotten::split(&rt_file(), 0.1, 0).unwrap();
    assert_eq!(
        (s.n_movies, s.test_movies.len(), s.n_plot_dropped),
        (508, 51, 1097)
    );
    assert_eq!(s.train.len() + s.test.len(), 12_808);
    let frac = s.test.len() as f64 / 12_808.0;
    assert!((0.07..0.13).contains(&frac), "{frac}");
    let train_movies: HashSet<&str> = s.train.iter().map(|r| r.movie_name.as_str()).collect();
    let test_movies: HashSet<&str> = s.test.iter().map(|r| r.movie_name.as_str()).collect();
    assert!(train_movies.is_disjoint(&test_movies));
    assert_eq!((train_movies.len(), test_movies.len()), (457, 51));
    for r in s.train.iter().chain(&s.test) {
        assert!(r.example.label == "fresh" || r.example.label == "rotten");
        assert!(!r.example.text.is_empty());
    }
    // Deterministic; another seed, another split.
    let again = rotten::split(&rt_file(), 0.1, 0).unwrap();
    assert_eq!(
        (again.test_movies, again.test.len()),
        (s.test_movies.clone(), s.test.len())
    );
    assert_ne!(
        rotten::split(&rt_file(), 0.1, 1).unwrap().test_movies,
        s.test_movies
    );
    assert!(rotten::split(&rt_file(), 0.0, 0).is_err());
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // BIG-bench: generative only, malformed JSON, not a task.
    let g = write(
        "gen.json",
        r#"{"examples": [{"input": "2+2=", "target": "4"}]}"#,
    );
    let e = bigbench::load(&g).unwrap_err().to_string();
    assert!(
        e.contains("gen.json") && e.contains("no multiple-choice examples"),
        "{e}"
    );
    let m = write("bad.json", "{\"examples\": [\n{\"input\": }]}");
    let e = bigbench::load(&m).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("line 2"), "{e}");
    let e = bigbench::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("task.json"), "{e}");

    // Classification: a test label the label map does not know, a label missing from the
    // train set, an empty text, k larger than the train set.
    let test = write("test.jsonl", "{\"text\": \"Great fun.\", \"label\": \"fresh\"}\n{\"text\": \"Dull.\", \"label\": \"rotten\"}\n");
    let train = write("train.jsonl", "{\"text\": \"Loved it.\", \"label\": \"fresh\"}\n{\"text\": \"A mess.\", \"label\": \"fresh\"}\n");
    let cols = Columns::default();
    let (test, train) = (
        read_labelled(&test, &cols).unwrap(),
        read_labelled(&train, &cols).unwrap(),
    );
    let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
    let shots = |k| FewShot {
        k,
        seed: 1,
        resample: false,
        separator: "\n\n".into(),
    };
    let l = Labels::parse_map("fresh=positive").unwrap_err();
    assert!(l.to_string().contains("two labels"), "{l}");
    let labels = Labels::parse_map("fresh=positive,meh=neutral").unwrap();
    let e = build_items(&test, None, &t, &labels, &shots(0), "test.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.jsonl line 2: label \"rotten\""), "{e}");
    let labels = Labels::parse_map("fresh=positive,rotten=negative").unwrap();
    let e = build_items(
        &test,
        Some((&train, "train.jsonl")),
        &t,
        &labels,
        &shots(1),
        "test.jsonl",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"rotten\" has no example in the train set train.jsonl"),
        "{e}"
    );
    let e = build_items(
        &test,
        Some((&test, "t2")),
        &t,
        &labels,
        &shots(3),
        "test.jsonl",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("only 2 examples"), "{e}");
    let empty = write("empty.csv", "text,label\n\"Good.\",fresh\n\"  \",rotten\n");
    let e = read_labelled(&empty, &cols).unwrap_err().to_string();
    assert!(
        e.contains("empty.csv") && e.contains("line 3: empty text"),
        "{e}"
    );
}
