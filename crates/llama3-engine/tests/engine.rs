//! The engine against the one-sequence path, on the default model: the same greedy tokens and
//! text whether a request runs alone through `generate_text`, in the engine with others at
//! once, or in a slot whose cache already holds a prefix of its prompt.

mod common;

use std::sync::Arc;

use common::{alone, config, job};
use llama3::generate::FinishReason;
use llama3::loader::{load, LoadOptions};
use llama3_engine::{Engine, Event, Metrics};
use tokio::sync::mpsc;

struct Answer {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
    cached: usize,
}

fn receive(mut rx: mpsc::UnboundedReceiver<Event>) -> Answer {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx.blocking_recv().expect("engine answers") {
            Event::Token(t) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            Event::Done(d) => {
                text.push_str(&d.text);
                return Answer {
                    ids,
                    text,
                    finish: d.finish,
                    cached: d.cached_tokens,
                };
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

#[test]
fn engine_equals_one_sequence_path_with_prefix_reuse() {
    let path = llama3_testutil::default_model();
    let loaded = load(&path, &LoadOptions::default()).expect("load");
    let tok = loaded.tokenizer.expect("tokenizer");
    let model = loaded.model;
    let stop = vec!["\n\n".to_string()];
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "The capital of France is a city where",
        "Once upon a time, in a small village,",
        "one two three four five six, one two three four five six, one two three",
    ]
    .iter()
    .map(|p| tok.encode(p, true, false).unwrap())
    .collect();

    // Alone, through the one-sequence path.
    let want: Vec<_> = prompts
        .iter()
        .map(|p| alone(&model, &tok, p, 24, &stop))
        .collect();

    let metrics = Arc::new(Metrics::new(2));
    let cfg = config(2, 4, 0, None);
    let (engine, thread) =
        Engine::start(Arc::new(model), Arc::new(tok), cfg, metrics.clone()).expect("engine");
    let submit_with = |p: &Vec<u32>, lookup: usize| {
        let (job, rx) = job(p, 24, &stop, lookup);
        engine.submit(job).map_err(|e| format!("{e:?}")).unwrap();
        rx
    };
    let submit = |p: &Vec<u32>| submit_with(p, 0);
    // One after another: the second prompt extends the first, so its slot keeps that prefix.
    for (i, p) in prompts.iter().enumerate().take(2) {
        let got = receive(submit(p));
        let w = &want[i];
        // The engine streams no end token; the one-sequence path reports it as a step.
        let gen: Vec<u32> = w
            .steps
            .iter()
            .filter(|s| !s.is_end)
            .map(|s| s.token)
            .collect();
        assert_eq!(got.ids, gen, "prompt {i}: tokens");
        assert_eq!(got.text, w.text, "prompt {i}: text");
        assert_eq!(got.finish, w.finish_reason, "prompt {i}: finish");
        if i == 1 {
            // The first prompt is a prefix of the second: its tokens came from the cache.
            assert_eq!(got.cached, prompts[0].len(), "cached tokens reported");
        }
    }
    assert!(metrics.prefix_hits.get() >= 1, "a prefix hit is counted");
    let cached = metrics.prompt_tokens_cached.get();
    assert!(
        cached >= prompts[0].len() as u64,
        "the second request reused its prefix: {cached} cached tokens"
    );
    // All at once, chunked prefills mixed with decode steps.
    let rxs: Vec<_> = prompts.iter().map(submit).collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let got = receive(rx);
        assert_eq!(got.text, want[i].text, "concurrent prompt {i}");
    }
    // With prompt-lookup drafts riding in the batched forward: the same answers.
    let rxs: Vec<_> = prompts.iter().map(|p| submit_with(p, 6)).collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let got = receive(rx);
        assert_eq!(got.text, want[i].text, "concurrent prompt {i} with lookup");
        assert_eq!(got.finish, want[i].finish_reason, "prompt {i} with lookup");
    }
    let (drafted, accepted) = (
        metrics.draft_tokens.get(),
        metrics.draft_tokens_accepted.get(),
    );
    assert!(
        accepted > 0 && accepted <= drafted,
        "{accepted}/{drafted} drafts accepted"
    );
    drop(engine);
    thread.join().expect("engine thread ends");
}

/// A draft model (the model itself: every greedy draft is right) drafting for every slot: the
/// same answers as the one-sequence path, all drafts accepted.
#[test]
fn engine_with_a_draft_model_keeps_answers() {
    let loaded = load(&llama3_testutil::default_model(), &LoadOptions::default()).expect("load");
    let tok = Arc::new(loaded.tokenizer.expect("tokenizer"));
    let model = Arc::new(loaded.model);
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "Once upon a time, in a small village,",
    ]
    .iter()
    .map(|p| tok.encode(p, true, false).unwrap())
    .collect();
    let want: Vec<String> = prompts
        .iter()
        .map(|p| alone(&model, &tok, p, 24, &[]).text)
        .collect();
    let metrics = Arc::new(Metrics::new(2));
    let draft = llama3::generate::DraftModel(model.clone());
    let cfg = config(2, 64, 0, Some(draft));
    let (engine, thread) =
        Engine::start(model.clone(), tok.clone(), cfg, metrics.clone()).expect("engine");
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (job, rx) = job(p, 24, &[], 0);
            engine.submit(job).map_err(|e| format!("{e:?}")).unwrap();
            rx
        })
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        assert_eq!(receive(rx).text, want[i], "prompt {i} with a draft model");
    }
    let (drafted, accepted) = (
        metrics.draft_tokens.get(),
        metrics.draft_tokens_accepted.get(),
    );
    assert!(drafted > 0 && accepted == drafted, "{accepted}/{drafted}");
    drop(engine);
    thread.join().expect("engine thread ends");
}
