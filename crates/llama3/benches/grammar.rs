//! Decoding speed under a JSON-schema constraint against unconstrained decoding, on the default
//! model, at equal work: both generate exactly `GRAMMAR_BENCH_TOKENS` tokens from the same
//! prompt (end tokens are banned in the free run; the schema, an array of at least 100 objects,
//! cannot end sooner), greedy and at temperature 1. Prints tokens/s of each, their ratio, and
//! where the grammar's time goes: checking the sampled token and advancing the parser (every
//! token), and the full mask (only when the sampled token is refused), with what masking every
//! token would cost instead.
//!
//!     cargo bench -p llama3 --bench grammar
//!
//! `cargo test --benches` only builds and starts it; it measures when cargo passes `--bench`.

use std::time::Instant;

use llama3::generate::{GenerateOptions, Generator, Session};
use llama3::grammar::{Constraint, Grammar, GrammarStats};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Message;
use serde_json::json;

struct Run {
    tokens: usize,
    seconds: f64,
    stats: Option<GrammarStats>,
}

fn run(
    m: &Loaded,
    prompt: &[u32],
    sampling: &SamplingParams,
    grammar: Option<Grammar>,
    n: usize,
) -> Run {
    let tok = m.tokenizer.as_ref().unwrap();
    let mut sampling = sampling.clone();
    if grammar.is_none() {
        sampling.logit_bias = tok
            .end_ids()
            .iter()
            .map(|&e| (e, f32::NEG_INFINITY))
            .collect();
    }
    let opts = GenerateOptions {
        max_tokens: n,
        sampling,
        end_ids: tok.end_ids().to_vec(),
        grammar,
        ..GenerateOptions::default()
    };
    let mut session = Session::new(&m.model, prompt.len() + n).unwrap();
    let mut gen =
        Generator::with_text(&m.model, &mut session, prompt, opts, Some(tok), &[]).unwrap();
    let t = Instant::now();
    let mut tokens = 0;
    while gen.next_token().unwrap().is_some() {
        tokens += 1;
    }
    let seconds = t.elapsed().as_secs_f64();
    let stats = gen.grammar_stats();
    Run {
        tokens,
        seconds,
        stats,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("grammar: a benchmark; run it with `cargo bench -p llama3 --bench grammar`");
        return;
    }
    let n: usize = std::env::var("GRAMMAR_BENCH_TOKENS").map_or(256, |v| v.parse().unwrap());
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let msg = Message::new(
        "user",
        "List many people with their name, age and city, as JSON.",
    );
    let prompt = tok.encode_chat(&[msg], true).unwrap();
    let schema = json!({
        "type": "array",
        "minItems": 100,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "city": {"enum": ["Paris", "London", "Tokyo", "Lagos", "Lima"]}
            },
            "required": ["name", "age", "city"],
            "additionalProperties": false
        }
    });
    let c = Constraint::JsonSchema(schema);
    let t = Instant::now();
    let compiled = Grammar::new(tok, &c).unwrap();
    println!(
        "grammar: compile {:.1} ms (the first, with the vocabulary's trie)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    Grammar::new(tok, &c).unwrap();
    println!(
        "grammar: compile {:.2} ms (again)",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Warm up the kernels and caches once.
    run(&m, &prompt, &SamplingParams::greedy(), None, 16);
    println!(
        "\n{:<10} {:>10} {:>12} {:>7} | {:>11} {:>7} {:>9} {:>13}",
        "sampling",
        "free t/s",
        "schema t/s",
        "ratio",
        "check us/t",
        "masked",
        "mask us",
        "all-mask us/t"
    );
    let hot = SamplingParams {
        temperature: 1.0,
        seed: 7,
        ..SamplingParams::default()
    };
    for (name, s) in [("greedy", SamplingParams::greedy()), ("temp 1.0", hot)] {
        // Alternate runs so that a change of machine load hits both alike; keep the best.
        let (mut free, mut held) = (f64::MAX, f64::MAX);
        let mut stats = GrammarStats::default();
        for _ in 0..3 {
            let f = run(&m, &prompt, &s, None, n);
            assert_eq!(f.tokens, n);
            free = free.min(f.seconds);
            let h = run(&m, &prompt, &s, Some(compiled.clone()), n);
            assert_eq!(h.tokens, n, "the constrained run ended early");
            if h.seconds < held {
                held = h.seconds;
                stats = h.stats.unwrap();
            }
        }
        let per_mask = stats.mask.as_secs_f64() * 1e6 / stats.masks.max(1) as f64;
        println!(
            "{:<10} {:>10.1} {:>12.1} {:>7.3} | {:>11.1} {:>6.1}% {:>9.1} {:>13.1}",
            name,
            n as f64 / free,
            n as f64 / held,
            free / held,
            stats.check.as_secs_f64() * 1e6 / stats.tokens.max(1) as f64,
            100.0 * stats.masks as f64 / stats.tokens.max(1) as f64,
            per_mask,
            per_mask + stats.check.as_secs_f64() * 1e6 / stats.tokens.max(1) as f64,
        );
    }
    println!(
        "\ncheck us/t: checking the sampled token and advancing the parser, per token; masked: \
         tokens whose first draw the grammar refused (a full mask and a second draw); mask us: \
         one full mask; all-mask us/t: the grammar's cost per token if every token were masked \
         (the alternative to masking only refused tokens)"
    );
}
