//! Prompt-lookup speculative decoding against plain decoding on the default model, greedy, at
//! equal work (the outputs are identical, so both make the same tokens): tokens/s of each,
//! their ratio, and the share of drafts accepted, on two tasks that copy from their prompt
//! (rewrite a paragraph, edit a function) and one that does not (an open question).
//!
//!     cargo bench -p llama3 --bench lookup
//!
//! `cargo test --benches` only builds and starts it; it measures when cargo passes `--bench`.

use std::time::Instant;

use llama3::generate::{GenerateOptions, Generator, Session};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Message;

const TASKS: &[(&str, &str)] = &[
    (
        "rewrite a paragraph",
        "Rewrite this paragraph, changing nothing but the spelling of \"colour\" to \"color\":\n\n\
         The committee met on Tuesday to review the budget. After a long discussion about the \
         colour of the new buses, the members agreed to fund the new library, repair the bridge \
         on Main Street, and hire two more teachers for the primary school. The vote was \
         unanimous, and the chair thanked everyone for their patience and their careful work.",
    ),
    (
        "edit a function",
        "Rename the variable `total` to `sum` in this function and return the whole function:\n\n\
         def average(values):\n    total = 0\n    for v in values:\n        total += v\n    \
         if not values:\n        return 0.0\n    return total / len(values)\n",
    ),
    (
        "open question (no copying)",
        "Why is the sky blue? Explain in a few sentences.",
    ),
];

fn run(m: &Loaded, prompt: &[u32], lookup: usize) -> (Vec<u32>, f64, usize, usize) {
    let tok = m.tokenizer.as_ref().unwrap();
    let opts = GenerateOptions {
        max_tokens: 128,
        sampling: SamplingParams::greedy(),
        end_ids: tok.end_ids().to_vec(),
        lookup,
        ..GenerateOptions::default()
    };
    let mut s = Session::new(&m.model, prompt.len() + 128).unwrap();
    let mut g = Generator::with_text(&m.model, &mut s, prompt, opts, Some(tok), &[]).unwrap();
    let t = Instant::now();
    let mut ids = vec![];
    while let Some(out) = g.next_token().unwrap() {
        ids.push(out.step.token);
    }
    let (d, a) = g.drafts();
    (ids, t.elapsed().as_secs_f64(), d, a)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("lookup: a benchmark; run it with `cargo bench -p llama3 --bench lookup`");
        return;
    }
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    println!(
        "{:<28} {:>7} {:>7} {:>10} {:>10} {:>7} {:>9}",
        "task", "tokens", "lookup", "plain t/s", "lookup t/s", "ratio", "accepted"
    );
    for (name, text) in TASKS {
        let prompt = tok
            .encode_chat(&[Message::new("user", *text)], true)
            .unwrap();
        run(&m, &prompt, 0); // warm-up
        for k in [4, 8, 16] {
            // Alternate the two, best of 3 each, so machine load hits both alike.
            let (mut plain, mut spec) = (f64::MAX, f64::MAX);
            let (mut drafted, mut accepted, mut n) = (0, 0, 0);
            for _ in 0..3 {
                let (a, ta, ..) = run(&m, &prompt, 0);
                let (b, tb, d, acc) = run(&m, &prompt, k);
                assert_eq!(a, b, "lookup changed the output");
                plain = plain.min(ta);
                spec = spec.min(tb);
                (drafted, accepted, n) = (d, acc, a.len());
            }
            println!(
                "{:<28} {:>7} {:>7} {:>10.1} {:>10.1} {:>7.2} {:>5}/{:<4}",
                name,
                n,
                k,
                n as f64 / plain,
                n as f64 / spec,
                plain / spec,
                accepted,
                drafted
            );
        }
    }
}
