//! The prefix cache on the default model: a request finds the shared start of its prompt in the
//! cache after the one slot moved on to other work, answers equal the one-sequence path's with
//! and without the cache, and a budget that forces evictions keeps every answer right.

mod common;

use std::sync::Arc;

use common::{alone, config, job};
use llama3::loader::{load, LoadOptions};
use llama3_engine::prefix_cache::BLOCK;
use llama3_engine::{Engine, Event, Metrics};
use tokio::sync::mpsc;

fn answer(engine: &Engine, prompt: &[u32]) -> (String, usize) {
    receive(submit(engine, prompt))
}

fn submit(engine: &Engine, prompt: &[u32]) -> mpsc::UnboundedReceiver<Event> {
    let (job, rx) = job(prompt, 16, &[], 0);
    engine.submit(job).map_err(|e| format!("{e:?}")).unwrap();
    rx
}

fn receive(mut rx: mpsc::UnboundedReceiver<Event>) -> (String, usize) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("engine answers") {
            Event::Token(t) => text.push_str(&t.text),
            Event::Done(d) => {
                text.push_str(&d.text);
                return (text, d.cached_tokens);
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
}

#[test]
fn prefix_cache_restores_shared_prompts_and_survives_eviction() {
    let loaded = load(&llama3_testutil::default_model(), &LoadOptions::default()).expect("load");
    let tok = Arc::new(loaded.tokenizer.expect("tokenizer"));
    let model = Arc::new(loaded.model);
    let shared =
        "You are a careful assistant. Answer in one short sentence, and never invent facts. \
        The user is a student preparing for an exam in geography and history; keep answers simple \
        and name places and dates exactly. When a question is ambiguous, say which reading you \
        answer. Do not use lists, tables or headings, and do not repeat the question back to the \
        user before answering it. ";
    let prompts: Vec<Vec<u32>> = [
        format!("{shared}What is the capital of France?"),
        "Once upon a time, in a small village by the sea,".to_string(),
        format!("{shared}When did the Second World War end?"),
    ]
    .iter()
    .map(|p| tok.encode(p, true, false).unwrap())
    .collect();
    let common = prompts[0]
        .iter()
        .zip(&prompts[2])
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        common >= 2 * BLOCK,
        "the shared start spans {common} tokens"
    );
    let want: Vec<String> = prompts
        .iter()
        .map(|p| alone(&model, &tok, p, 16, &[]).text)
        .collect();

    // Arriving together, requests sharing the system prompt wait for the first one's prompt
    // and take the shared part from the cache.
    let metrics = Arc::new(Metrics::new(3));
    let cfg = config(3, 48, 64 << 20, None);
    let (engine, thread) =
        Engine::start(model.clone(), tok.clone(), cfg, metrics.clone()).expect("engine");
    let together = [&prompts[0], &prompts[2], &prompts[0]];
    let rxs: Vec<_> = together.iter().map(|p| submit(&engine, p)).collect();
    let got: Vec<(String, usize)> = rxs.into_iter().map(receive).collect();
    assert_eq!(
        (&got[0].0, &got[1].0, &got[2].0),
        (&want[0], &want[2], &want[0])
    );
    assert_eq!(got[0].1, 0);
    assert!(got[1].1 >= 2 * BLOCK && got[2].1 >= 2 * BLOCK, "{got:?}");
    assert_eq!(metrics.prefix_cache_restores.get(), 2);
    drop(engine);
    thread.join().expect("engine thread ends");

    for (cache_ram, restores) in [(64 << 20, true), (512 << 10, false), (0, false)] {
        let metrics = Arc::new(Metrics::new(1));
        let cfg = config(1, 48, cache_ram, None);
        let (engine, thread) =
            Engine::start(model.clone(), tok.clone(), cfg, metrics.clone()).expect("engine");
        // The one slot serves the three in turn: the third's shared start is no longer in it.
        let got: Vec<(String, usize)> = prompts.iter().map(|p| answer(&engine, p)).collect();
        for (i, (text, _)) in got.iter().enumerate() {
            assert_eq!(text, &want[i], "cache_ram {cache_ram}: prompt {i}");
        }
        let cached = got[2].1;
        match restores {
            true => {
                assert_eq!(
                    cached,
                    common / BLOCK * BLOCK,
                    "restored whole blocks of the shared start"
                );
                assert_eq!(metrics.prefix_cache_restores.get(), 1);
                assert!(metrics.prefix_cache_bytes.get() > 0);
            }
            false => {
                assert!(cached < BLOCK, "cache_ram {cache_ram}: {cached} cached");
                assert_eq!(metrics.prefix_cache_restores.get(), 0);
            }
        }
        if cache_ram == 512 << 10 {
            // One block of the default model (720 KiB) is over the budget: every block is evicted.
            assert!(metrics.prefix_cache_evictions.get() > 0);
            assert_eq!(metrics.prefix_cache_bytes.get(), 0);
        }
        drop(engine);
        thread.join().expect("engine thread ends");
    }
}
