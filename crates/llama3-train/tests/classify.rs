//! Classifier training (`llama3_train::classify`) on the tiny HF model: the head alone, LoRA +
//! head, and full fine-tuning learn a task whose label is set by the last token; the saved HF
//! directory (`Classifier::load`) and PEFT SEQ_CLS adapter (`Classifier::with_adapter`)
//! reload with the same logits; bad input is an error.

use llama3::classify::Classifier;
use llama3::loader::{load, LoadOptions};
use llama3::peft::LoraConfig;
use llama3_train::classify::{self, ClsConfig, ClsMethod, Example, Progress};
use rand::{Rng, SeedableRng};

fn model() -> llama3::Llama {
    load(
        &llama3_testutil::golden("hf/gqa/model"),
        &LoadOptions::default(),
    )
    .unwrap()
    .model
}

/// Label 0 when the text ends in token 10 or 11, label 1 for 20 or 21; random prefixes.
fn data(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(2..8);
            let mut ids: Vec<u32> = (0..len).map(|_| rng.random_range(30..120)).collect();
            let label = rng.random_range(0..2usize);
            ids.push([10, 20][label] + rng.random_range(0..2));
            Example { ids, label }
        })
        .collect()
}

fn config(method: ClsMethod, epochs: usize, lr: f64) -> ClsConfig {
    ClsConfig {
        method,
        epochs,
        batch_size: 8,
        lr,
        weight_decay: 0.0,
        warmup_ratio: 0.1,
        clip: 1.0,
        seed: 3,
        // With PEFT's usual dropout: training must learn through it.
        lora: LoraConfig {
            lora_dropout: 0.05,
            ..LoraConfig::new(4, 8.0, &["q_proj", "v_proj"], false)
        },
        targets: vec!["q_proj".into(), "v_proj".into()],
        dense_base: false,
    }
}

fn accuracy(cls: &Classifier, data: &[Example]) -> f64 {
    let rows: Vec<Vec<u32>> = data.iter().map(|e| e.ids.clone()).collect();
    let ids = cls.batch(&rows, cls.model.device()).unwrap();
    let logits = cls.forward(&ids).unwrap().to_vec2::<f32>().unwrap();
    let right = logits
        .iter()
        .zip(data)
        .filter(|(l, e)| (l[1] > l[0]) as usize == e.label)
        .count();
    right as f64 / data.len() as f64
}

fn run(method: ClsMethod, epochs: usize, lr: f64) -> (Classifier, Vec<f64>) {
    let train = data(64, 1);
    let mut losses = vec![];
    let cls = classify::train(
        model(),
        vec!["low".into(), "high".into()],
        0,
        &train,
        &config(method, epochs, lr),
        &llama3_train::dist::Single,
        &mut |p| {
            if let Progress::Step { loss, .. } = p {
                losses.push(loss)
            }
        },
    )
    .unwrap();
    (cls, losses)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn head_lora_and_full_learn_the_task() {
    let test = data(64, 2);
    for (method, epochs, lr) in [
        (ClsMethod::Head, 40, 3e-2),
        (ClsMethod::Lora, 15, 1e-2),
        (ClsMethod::Full, 10, 3e-3),
    ] {
        let (cls, losses) = run(method, epochs, lr);
        let k = losses.len() / 5;
        let (first, last) = (mean(&losses[..k]), mean(&losses[losses.len() - k..]));
        let acc = accuracy(&cls, &test);
        eprintln!("{method:?}: loss {first:.3} -> {last:.3}, held-out accuracy {acc:.3}");
        assert!(last < 0.7 * first, "{method:?}: loss {first} -> {last}");
        assert!(acc >= 0.9, "{method:?}: held-out accuracy {acc}");
    }
}

#[test]
fn saved_directory_reloads_with_the_same_logits() {
    let (mut cls, _) = run(ClsMethod::Lora, 2, 1e-2);
    let test = data(8, 5);
    let rows: Vec<Vec<u32>> = test.iter().map(|e| e.ids.clone()).collect();
    let ids = cls.batch(&rows, cls.model.device()).unwrap();
    let before = cls.forward(&ids).unwrap();
    // The PEFT sequence-classification adapter (before `save` merges the LoRA) on a fresh
    // base gives the same logits.
    let adir = tempfile::tempdir().unwrap();
    let lora = config(ClsMethod::Lora, 2, 1e-2).lora;
    classify::save_adapter(adir.path(), &mut cls, &lora, "tiny-gqa").unwrap();
    let adapter = llama3::peft::Adapter::load(adir.path(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(adapter.config.task_type(), Some("SEQ_CLS"));
    assert_eq!(adapter.config.saved_modules(), ["classifier", "score"]);
    assert_eq!(adapter.weights.len(), 4); // q and v of two layers
    let names = Some(vec!["low".to_string(), "high".to_string()]);
    let via_adapter = Classifier::with_adapter(model(), None, &adapter, names).unwrap();
    assert_eq!(via_adapter.labels, ["low", "high"]);
    let max_diff = |a: &candle_core::Tensor, c: &Classifier| -> f32 {
        (a - c.forward(&ids).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d = max_diff(&before, &via_adapter);
    assert!(d < 1e-5, "logits through the saved adapter differ by {d}");

    let dir = tempfile::tempdir().unwrap();
    classify::save(dir.path(), &mut cls, None).unwrap();
    let (back, _) = Classifier::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(back.labels, vec!["low", "high"]);
    assert_eq!(back.pad_token_id, 0);
    let diff = max_diff(&before, &back);
    assert!(diff < 1e-4, "reloaded logits differ by {diff}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["label2id"]["high"], 1);
}

#[test]
fn bad_input_is_an_error() {
    let cfg = config(ClsMethod::Head, 1, 1e-2);
    let err = |labels: Vec<String>, data: Vec<Example>| {
        classify::train(
            model(),
            labels,
            0,
            &data,
            &cfg,
            &llama3_train::dist::Single,
            &mut |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let two = || vec!["a".to_string(), "b".to_string()];
    assert!(err(vec!["a".into()], data(4, 1)).contains("at least 2 labels"));
    assert!(err(two(), vec![]).contains("no training examples"));
    let empty = vec![Example {
        ids: vec![],
        label: 0,
    }];
    assert!(err(two(), empty).contains("no tokens"));
    let bad = vec![Example {
        ids: vec![5],
        label: 7,
    }];
    assert!(err(two(), bad).contains("outside"));
}

/// The trained head's (L, D) weights.
fn head(cls: &Classifier) -> Vec<f32> {
    match &cls.score.weight {
        llama3::model::LinearWeight::Dense(t) => t.flatten_all().unwrap().to_vec1().unwrap(),
        _ => panic!("a dense head"),
    }
}

/// `clip: 0` means no clipping, as in `TrainConfig::clip` and `llama3 train --clip 0`: the
/// head trains. Clipping to a norm of 0 would scale every gradient to 0, leaving the head at
/// its initial weights and the loss flat.
#[test]
fn clip_zero_means_no_clipping() {
    let train = data(64, 1);
    let run = |clip: f64, lr: f64| {
        let mut losses = vec![];
        let cfg = ClsConfig {
            clip,
            ..config(ClsMethod::Head, 20, lr)
        };
        let labels = vec!["low".into(), "high".into()];
        let cls = classify::train(
            model(),
            labels,
            0,
            &train,
            &cfg,
            &llama3_train::dist::Single,
            &mut |p| {
                if let Progress::Step { loss, .. } = p {
                    losses.push(loss)
                }
            },
        )
        .unwrap();
        (head(&cls), losses)
    };
    // A learning rate of 0 leaves the seeded initial head.
    let (initial, _) = run(1.0, 0.0);
    let (trained, losses) = run(0.0, 3e-2);
    let moved = initial
        .iter()
        .zip(&trained)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the head did not move from its initial weights ({moved})"
    );
    let k = losses.len() / 5;
    let (first, last) = (mean(&losses[..k]), mean(&losses[losses.len() - k..]));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}
