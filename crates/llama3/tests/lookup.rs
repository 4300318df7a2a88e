//! Prompt-lookup speculation gives what plain decoding gives: the same tokens, text and finish
//! reason, greedy and (same seed) sampled, under a grammar, at a `max_tokens` boundary; drafts
//! are accepted on a prompt the answer copies from.

use llama3::generate::{FinishReason, GenerateOptions, Generator, Session};
use llama3::grammar::{Constraint, Grammar};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Message;

const PARAGRAPH: &str = "The committee met on Tuesday to review the budget. After a long \
    discussion, the members agreed to fund the new library, repair the bridge on Main Street, \
    and hire two more teachers for the primary school. The vote was unanimous.";

struct Run {
    ids: Vec<u32>,
    text: String,
    finish: FinishReason,
    drafted: usize,
    accepted: usize,
}

fn run(m: &Loaded, prompt: &[u32], opts: GenerateOptions, stop: &[String]) -> Run {
    let tok = m.tokenizer.as_ref().unwrap();
    let mut s = Session::new(&m.model, prompt.len() + opts.max_tokens).unwrap();
    let mut g = Generator::with_text(&m.model, &mut s, prompt, opts, Some(tok), stop).unwrap();
    let (mut ids, mut text) = (vec![], String::new());
    while let Some(out) = g.next_token().unwrap() {
        ids.push(out.step.token);
        text.push_str(&out.text);
    }
    let (rest, finish) = g.finish().unwrap();
    text.push_str(&rest);
    let (drafted, accepted) = g.drafts();
    Run {
        ids,
        text,
        finish,
        drafted,
        accepted,
    }
}

fn opts(m: &Loaded, max_tokens: usize, sampling: SamplingParams, lookup: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling,
        end_ids: m.tokenizer.as_ref().unwrap().end_ids().to_vec(),
        lookup,
        ..GenerateOptions::default()
    }
}

#[test]
fn lookup_output_equals_plain_decoding() {
    let m = load(&llama3_testutil::default_model(), &LoadOptions::default()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let copy = tok
        .encode_chat(
            &[Message::new(
                "user",
                format!("Repeat this paragraph word for word:\n\n{PARAGRAPH}"),
            )],
            true,
        )
        .unwrap();
    let plain = run(&m, &copy, opts(&m, 120, SamplingParams::greedy(), 0), &[]);
    assert_eq!(plain.drafted, 0);
    for k in [1, 4, 10] {
        let spec = run(&m, &copy, opts(&m, 120, SamplingParams::greedy(), k), &[]);
        assert_eq!(spec.ids, plain.ids, "lookup {k}");
        assert_eq!(
            (spec.text.as_str(), spec.finish),
            (plain.text.as_str(), plain.finish)
        );
        assert!(
            spec.accepted > 0 && spec.accepted <= spec.drafted,
            "lookup {k}: {}/{}",
            spec.accepted,
            spec.drafted
        );
    }
    // The copy task accepts most drafts.
    let spec = run(&m, &copy, opts(&m, 120, SamplingParams::greedy(), 8), &[]);
    assert!(
        spec.accepted * 2 > spec.ids.len(),
        "{} of {} tokens from drafts",
        spec.accepted,
        spec.ids.len()
    );

    // Sampling: the same seed gives the same tokens (each position draws once, in order).
    for seed in 1..=3 {
        let s = SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::default()
        };
        let a = run(&m, &copy, opts(&m, 80, s.clone(), 0), &[]);
        let b = run(&m, &copy, opts(&m, 80, s, 6), &[]);
        assert_eq!(a.ids, b.ids, "seed {seed}");
    }

    // max_tokens inside a run of accepted drafts, and a stop string.
    for max in [1, 2, 17] {
        let a = run(&m, &copy, opts(&m, max, SamplingParams::greedy(), 0), &[]);
        let b = run(&m, &copy, opts(&m, max, SamplingParams::greedy(), 8), &[]);
        assert_eq!((a.ids, a.finish), (b.ids, b.finish), "max_tokens {max}");
    }
    let stop = vec!["library".to_string()];
    let a = run(&m, &copy, opts(&m, 120, SamplingParams::greedy(), 0), &stop);
    let b = run(&m, &copy, opts(&m, 120, SamplingParams::greedy(), 8), &stop);
    assert_eq!((a.text.as_str(), a.finish), (b.text.as_str(), b.finish));
    assert_eq!(a.finish, FinishReason::Stop);

    // A draft model (the model itself, loaded again: every greedy draft is right).
    let same = std::sync::Arc::new(
        load(&llama3_testutil::default_model(), &LoadOptions::default())
            .unwrap()
            .model,
    );
    let with_draft = |s: SamplingParams| {
        let mut o = opts(&m, 60, s, 0);
        o.draft = Some(llama3::generate::DraftModel(same.clone()));
        o.draft_max = 5;
        o
    };
    let open = tok
        .encode_chat(&[Message::new("user", "Why is the sky blue?")], true)
        .unwrap();
    let a = run(&m, &open, opts(&m, 60, SamplingParams::greedy(), 0), &[]);
    let b = run(&m, &open, with_draft(SamplingParams::greedy()), &[]);
    assert_eq!((a.ids.clone(), a.finish), (b.ids, b.finish));
    assert!(
        b.drafted > 0 && b.accepted == b.drafted,
        "{}/{}",
        b.accepted,
        b.drafted
    );
    let s = SamplingParams {
        temperature: 1.0,
        seed: 5,
        ..SamplingParams::default()
    };
    let a = run(&m, &open, opts(&m, 60, s.clone(), 0), &[]);
    let b = run(&m, &open, with_draft(s), &[]);
    assert_eq!(a.ids, b.ids, "sampled with a draft model");
    let mut both = with_draft(SamplingParams::greedy());
    both.lookup = 4;
    let mut sess = Session::new(&m.model, 256).unwrap();
    assert!(Generator::new(&m.model, &mut sess, &open, both).is_err());

    // Under a grammar: drafts pass through the same mask.
    let schema = Constraint::JsonSchema(serde_json::json!({
        "type": "object", "properties": {"summary": {"type": "string", "maxLength": 200}},
        "required": ["summary"], "additionalProperties": false}));
    let with_grammar = |k| {
        let mut o = opts(&m, 100, SamplingParams::greedy(), k);
        o.grammar = Some(Grammar::new(tok, &schema).unwrap());
        run(&m, &copy, o, &[])
    };
    let (a, b) = (with_grammar(0), with_grammar(8));
    assert_eq!(a.ids, b.ids);
    assert!(
        serde_json::from_str::<serde_json::Value>(&b.text).is_ok()
            || b.finish == FinishReason::Length
    );
}
