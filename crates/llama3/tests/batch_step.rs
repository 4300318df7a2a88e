//! Continuous batching: `Llama::forward_step` over sequences at different positions, each with
//! its own cache, gives every sequence bit-for-bit the logits it gets decoded alone (the
//! server's promise that greedy results do not depend on what else is in the batch). The step's
//! timing is a benchmark: `crates/llama3/benches/batch_step.rs`.

use candle_core::Tensor;
use llama3::generate::prefill;
use llama3::loader::{load, LoadOptions};
use llama3::model::Logits;

#[test]
fn batched_step_equals_lone_decode_on_the_default_model() {
    let loaded = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().unwrap());
    // Different lengths, so the sequences sit at different positions; five rows exercise the
    // 4-row kernel and its 1-row tail.
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a land far away, there lived a",
        "1, 2, 3,",
        "def fibonacci(n):",
        "Rust is a systems programming language that",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true, false).unwrap())
        .collect();
    let next = [42u32, 7, 1000, 3, 99];

    // Alone: prefill, then one decode step through the ordinary forward.
    let mut alone = Vec::new();
    for (p, &t) in ids.iter().zip(&next) {
        let mut cache = model.new_cache(1, 128).unwrap();
        prefill(model, &mut cache, p, 512).unwrap();
        let x = Tensor::new(&[t], model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = model.forward(&x, Some(&mut cache), Logits::Last).unwrap();
        alone.push(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    // Batched: the same prefills, then one forward_step for all five.
    let mut caches: Vec<_> = ids
        .iter()
        .map(|p| {
            let mut c = model.new_cache(1, 128).unwrap();
            prefill(model, &mut c, p, 512).unwrap();
            c
        })
        .collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let logits = model.forward_step(&next, &mut refs).unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    assert_eq!(rows.len(), 5);
    for (i, (a, b)) in alone.iter().zip(&rows).enumerate() {
        assert!(
            a == b,
            "sequence {i}: batched logits differ from lone decode"
        );
    }
    for (c, p) in caches.iter().zip(&ids) {
        assert_eq!(c.len(), p.len() + 1);
    }

    // A subset in another order gives the same rows again (a second step).
    let mut sub: Vec<_> = caches.iter_mut().rev().take(2).collect();
    let two = model.forward_step(&[5, 6], &mut sub).unwrap();
    assert_eq!(two.dims(), &[2, model.config.vocab_size]);

    // Bad input is an error, not a panic.
    let mut one: Vec<_> = caches.iter_mut().take(1).collect();
    assert!(model.forward_step(&[u32::MAX], &mut one).is_err());
    assert!(model.forward_step(&[1, 2], &mut one).is_err());
}

/// Mixed batches: prompts prefilled in the same forward as other sequences' decode steps (and
/// one prompt cut into two chunks across two forwards) give every sequence, bit for bit, the
/// logits it gets alone.
#[test]
fn prefill_mixed_with_decode_equals_lone_runs() {
    let loaded = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().unwrap());
    let enc = |p: &str| tok.encode(p, true, false).unwrap();
    let (a, b) = (enc("The capital of France is"), enc("1, 2, 3,"));
    let (c, d) = (
        enc("Once upon a time, in a land far away, there lived a"),
        enc("def fibonacci(n):"),
    );
    let logits_of = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

    // Alone: a and b prefilled then one decode step each; c and d prefilled.
    let decode_alone = |p: &[u32], next: u32| {
        let mut cache = model.new_cache(1, 128).unwrap();
        prefill(model, &mut cache, p, 512).unwrap();
        let x = Tensor::new(&[next], model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        logits_of(model.forward(&x, Some(&mut cache), Logits::Last).unwrap())
    };
    let prefill_alone = |p: &[u32]| {
        let mut cache = model.new_cache(1, 128).unwrap();
        prefill(model, &mut cache, p, 512).unwrap()
    };
    let want = [
        decode_alone(&a, 42),
        prefill_alone(&c),
        decode_alone(&b, 7),
        prefill_alone(&d),
    ];

    // Together: c's first 5 tokens and all of d in the same forward as a's and b's steps,
    // then the rest of c alone.
    let mut caches: Vec<_> = (0..4).map(|_| model.new_cache(1, 128).unwrap()).collect();
    prefill(model, &mut caches[0], &a, 512).unwrap();
    prefill(model, &mut caches[2], &b, 512).unwrap();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let parts: [&[u32]; 4] = [&[42], &c[..5], &[7], &d];
    let rows = model.forward_batch(&parts, &mut refs).unwrap();
    assert_eq!(rows.dims(), &[4, model.config.vocab_size]);
    let rows = rows.to_vec2::<f32>().unwrap();
    let mut c_cache: Vec<_> = caches.iter_mut().skip(1).take(1).collect();
    let c_rest = model.forward_batch(&[&c[5..]], &mut c_cache).unwrap();
    let got = [
        rows[0].clone(),
        logits_of(c_rest),
        rows[2].clone(),
        rows[3].clone(),
    ];
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(w == g, "sequence {i}: logits differ from its lone run");
    }
    let lens: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    assert_eq!(lens, [a.len() + 1, c.len(), b.len() + 1, d.len()]);

    // An empty part or a part without a cache is an error, not a panic.
    let mut one: Vec<_> = caches.iter_mut().take(1).collect();
    assert!(model.forward_batch(&[&[]], &mut one).is_err());
    assert!(model.forward_batch(&[&[1], &[2]], &mut one).is_err());
}

/// The unfused path (dense weights in a dtype the fused CPU loops do not take: f16 here, as
/// on a GPU) runs mixed batches too, each sequence with its own mask and cache, and gives what
/// the sequences give alone (to f16 rounding: candle's matmuls may block rows differently).
#[test]
fn mixed_batch_on_the_unfused_path() {
    let opts = LoadOptions {
        dtype: candle_core::DType::F16,
        tokenizer: false,
        ..LoadOptions::default()
    };
    let model = load(&llama3_testutil::golden("hf/gqa/model"), &opts)
        .unwrap()
        .model;
    let (a, b): (Vec<u32>, Vec<u32>) = ((3..12).collect(), (40..45).collect());
    let lone = |p: &[u32]| {
        let mut c = model.new_cache(1, 64).unwrap();
        prefill(&model, &mut c, p, 512).unwrap()
    };
    let mut caches: Vec<_> = (0..2).map(|_| model.new_cache(1, 64).unwrap()).collect();
    prefill(&model, &mut caches[0], &a[..8], 512).unwrap();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let rows = model
        .forward_batch(&[&a[8..], &b], &mut refs)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (got, want) in rows.iter().zip([lone(&a), lone(&b)]) {
        let d = llama3_testutil::max_abs_diff(got, &want);
        assert!(d < 2e-2, "unfused mixed batch differs by {d}");
    }
    assert_eq!((caches[0].len(), caches[1].len()), (a.len(), b.len()));
}
