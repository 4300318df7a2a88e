//! Embeddings against llama.cpp's `llama-embedding` (tests/data/embed_golden.json, made by
//! scripts/make_embed_golden.sh) on the default model: mean, last and cls pooling give
//! llama.cpp's vectors (cosine >= 0.999; the two quantize activations differently), unit norm,
//! and the checks on bad input.

use llama3::embed::{embed, shorten, EmbedOptions, Pooling};
use llama3::loader::{load, LoadOptions};
use llama3::Error;
use serde_json::Value;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn pooled_vectors_match_llama_cpp() {
    let golden: Value = serde_json::from_str(include_str!("data/embed_golden.json")).unwrap();
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let texts: Vec<&str> = golden["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut by_pooling = Vec::new();
    for (name, pooling) in [
        ("mean", Pooling::Mean),
        ("last", Pooling::Last),
        ("cls", Pooling::Cls),
    ] {
        let opts = EmbedOptions {
            pooling,
            // Small chunks: a text spans several forwards, as a long one would.
            chunk: 3,
            ..EmbedOptions::default()
        };
        for (i, text) in texts.iter().enumerate() {
            let ids = tok.encode(text, true, true).unwrap();
            let v = embed(&m.model, &ids, &opts).unwrap();
            let want: Vec<f32> = golden[name][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(v.len(), want.len());
            let c = cosine(&v, &want);
            assert!(c >= 0.999, "{name} pooling, text {i}: cosine {c}");
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
            by_pooling.push(v);
        }
    }
    // The poolings are different vectors (the check above would not tell a mix-up otherwise).
    assert!(cosine(&by_pooling[0], &by_pooling[3]) < 0.99);

    let ids = tok.encode(texts[0], true, true).unwrap();
    let raw = embed(
        &m.model,
        &ids,
        &EmbedOptions {
            normalize: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut short = raw.clone();
    shorten(&mut short, 16, true).unwrap();
    assert_eq!(short.len(), 16);
    assert!(cosine(&short, &raw[..16]) > 0.999_999);
    let too_long = vec![1u32; m.model.config.max_position_embeddings + 1];
    match embed(&m.model, &too_long, &EmbedOptions::default()) {
        Err(Error::Input(msg)) => assert!(msg.contains("context"), "{msg}"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    assert!(matches!(
        embed(&m.model, &[], &EmbedOptions::default()),
        Err(Error::Input(_))
    ));
    assert!("max".parse::<Pooling>().is_err());
}
