//! Constrained decoding (llguidance) with the real default model and tokenizers: the vocabulary
//! bytes we hand llguidance spell every text the tokenizer encodes, sampled output matches its
//! regex, JSON schema or grammar, end tokens come only where the grammar may end, and bad
//! constraints are errors that say what is wrong.

use llama3::generate::{generate_text, FinishReason, GenerateOptions, Output, Session};
use llama3::grammar::{vocabulary_bytes, Constraint, Grammar};
use llama3::loader::{load, LoadOptions, Loaded};
use llama3::sample::SamplingParams;
use llama3::tokenizer::{Message, Tokenizer};
use llama3::Error;
use llama3_testutil::{default_model, llama3_home};
use serde_json::{json, Value};

fn model() -> Loaded {
    load(&default_model(), &LoadOptions::default()).unwrap()
}

const TEXTS: &[&str] = &[
    "Hello, world! {\"a\": [1, 2.5e-3, null]}",
    "  two spaces\n\tand a tab\r\n",
    "café naïve Straße — “quotes” 東京 🦙🚀",
    "<|im_end|> is text here",
];

/// The token bytes spell what the tokenizer encodes, for the default model's GGUF vocabulary
/// and the Llama 3.2 `tokenizer.json`; special tokens carry llguidance's 0xFF marker.
#[test]
fn vocabulary_bytes_spell_the_encoded_text() {
    let mut toks: Vec<(String, Tokenizer)> =
        vec![("SmolLM2 GGUF".into(), { model().tokenizer.unwrap() })];
    let l32 = llama3_home().join("llama3.2-tokenizer/tokenizer.json");
    match l32.exists() {
        true => toks.push(("Llama 3.2".into(), Tokenizer::from_file(&l32).unwrap())),
        false => llama3_testutil::skip::skip_or_fail_on_ci(
            "vocabulary_bytes (Llama 3.2)",
            &format!("{} is missing", l32.display()),
        ),
    }
    for (name, tok) in &toks {
        let words = vocabulary_bytes(tok).unwrap();
        assert!(words.len() >= tok.vocab_size(), "{name}");
        for text in TEXTS {
            let ids = tok.encode(text, false, false).unwrap();
            let spelled: Vec<u8> = ids
                .iter()
                .flat_map(|&i| words[i as usize].clone())
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&spelled),
                *text,
                "{name}: bytes of {ids:?}"
            );
        }
        for &end in tok.end_ids() {
            assert_eq!(words[end as usize][0], 0xFF, "{name}: end token {end}");
        }
    }
}

fn run(m: &Loaded, prompt: &[u32], c: Option<&Constraint>, seed: u64, max: usize) -> Output {
    let tok = m.tokenizer.as_ref().unwrap();
    let sampling = match seed {
        0 => SamplingParams::greedy(),
        s => SamplingParams {
            temperature: 1.0,
            seed: s,
            ..SamplingParams::default()
        },
    };
    let opts = GenerateOptions {
        max_tokens: max,
        sampling,
        end_ids: tok.end_ids().to_vec(),
        grammar: c.map(|c| Grammar::new(tok, c).unwrap()),
        ..GenerateOptions::default()
    };
    let mut session = Session::new(&m.model, prompt.len() + max).unwrap();
    generate_text(&m.model, Some(tok), &mut session, prompt, opts, &[], |_| {}).unwrap()
}

fn chat(m: &Loaded, text: &str) -> Vec<u32> {
    let msg = Message::new("user", text.to_string());
    m.tokenizer
        .as_ref()
        .unwrap()
        .encode_chat(&[msg], true)
        .unwrap()
}

/// A regex holds at temperature 1 for several seeds; a complete match ends the sequence
/// without waiting for an end token.
#[test]
fn regex_output_matches() {
    let m = model();
    let tok = m.tokenizer.as_ref().unwrap();
    let prompt = tok.encode("Call me at", true, true).unwrap();
    let c = Constraint::Regex(" [0-9]{3}-[0-9]{4}".into());
    for seed in 1..=5 {
        let out = run(&m, &prompt, Some(&c), seed, 40);
        let b = out.text.as_bytes();
        let ok = b.len() == 9
            && b[0] == b' '
            && b[4] == b'-'
            && b[1..4].iter().chain(&b[5..]).all(u8::is_ascii_digit);
        assert!(ok, "seed {seed}: {:?}", out.text);
        assert_eq!(out.finish_reason, FinishReason::Stop);
        assert!(!tok.end_ids().contains(out.ids.last().unwrap()));
    }
}

/// A constraint that allows whatever the model writes changes nothing: greedy output is the
/// unconstrained greedy output, end token included.
#[test]
fn a_permissive_constraint_leaves_greedy_output_alone() {
    let m = model();
    let prompt = chat(&m, "Name three colors.");
    let free = run(&m, &prompt, None, 0, 48);
    let held = run(
        &m,
        &prompt,
        Some(&Constraint::Regex("(?s:.*)".into())),
        0,
        48,
    );
    assert_eq!(free.ids, held.ids);
    assert_eq!(free.finish_reason, held.finish_reason);
}

fn check_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let name = o["name"].as_str().ok_or("name")?;
    if name.chars().count() > 16 {
        return Err("name too long".into());
    }
    let age = o["age"].as_i64().ok_or("age not an integer")?;
    if !(0..=120).contains(&age) {
        return Err(format!("age {age}"));
    }
    let pets = o["pets"].as_array().ok_or("pets")?;
    if pets.is_empty() || pets.len() > 3 {
        return Err(format!("{} pets", pets.len()));
    }
    for p in pets {
        let kind = p["kind"].as_str().ok_or("pet kind")?;
        if !["cat", "dog", "fish"].contains(&kind) {
            return Err(format!("pet kind {kind}"));
        }
        if !p["legs"].is_u64() || p["legs"].as_u64() > Some(4) {
            return Err(format!("legs {}", p["legs"]));
        }
    }
    if o.keys()
        .any(|k| !["name", "age", "pets"].contains(&k.as_str()))
    {
        return Err("extra key".into());
    }
    Ok(())
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["cat", "dog", "fish"]},
                    "legs": {"type": "integer", "minimum": 0, "maximum": 4}
                },
                "required": ["kind", "legs"],
                "additionalProperties": false
            }}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

/// Samples at temperature 1 all parse and satisfy a schema with nested objects, enums, bounded
/// arrays and integers; the grammar's stats account for every token.
#[test]
fn json_schema_samples_validate() {
    let m = model();
    let prompt = chat(&m, "Describe a person and their pets as JSON.");
    let c = Constraint::JsonSchema(person_schema());
    for seed in 1..=6 {
        let out = run(&m, &prompt, Some(&c), seed, 200);
        assert_eq!(out.finish_reason, FinishReason::Stop, "{}", out.text);
        let v: Value = serde_json::from_str(&out.text)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", out.text));
        check_person(&v).unwrap_or_else(|e| panic!("seed {seed}: {e}: {v}"));
    }
    let mut s = Session::new(&m.model, 512).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let opts = GenerateOptions {
        max_tokens: 3,
        end_ids: tok.end_ids().to_vec(),
        sampling: SamplingParams::greedy(),
        grammar: Some(Grammar::new(tok, &c).unwrap()),
        ..GenerateOptions::default()
    };
    let mut gen =
        llama3::generate::Generator::with_text(&m.model, &mut s, &prompt, opts, Some(tok), &[])
            .unwrap();
    let mut n = 0;
    while gen.next_token().unwrap().is_some() {
        n += 1;
    }
    // max_tokens in the middle of the object: Length, and each token checked once.
    assert_eq!(gen.finish().unwrap().1, FinishReason::Length);
    let stats = gen.grammar_stats().unwrap();
    assert_eq!((stats.tokens, n), (3, 3));
    assert!(stats.masks <= 3);
}

/// "Any JSON object" and a Lark grammar; an end token only where the grammar may end.
#[test]
fn json_object_and_lark_grammars_hold() {
    let m = model();
    let prompt = chat(&m, "Is the sky blue? Answer in JSON.");
    for seed in 1..=3 {
        let out = run(&m, &prompt, Some(&Constraint::JsonObject), seed, 160);
        if out.finish_reason == FinishReason::Stop {
            let v: Value = serde_json::from_str(&out.text).unwrap();
            assert!(v.is_object(), "{v}");
        } else {
            assert!(out.text.trim_start().starts_with('{'), "{}", out.text);
        }
    }
    let lark = Constraint::Lark("start: answer \".\"\nanswer: \"yes\" | \"no\" | \"maybe\"".into());
    for seed in 1..=3 {
        let out = run(&m, &prompt, Some(&lark), seed, 10);
        assert!(
            ["yes.", "no.", "maybe."].contains(&out.text.as_str()),
            "{:?}",
            out.text
        );
    }
    // One or more lowercase letters: an end token may come only after the first.
    let word = Constraint::Regex("[a-z]+".into());
    for seed in 1..=3 {
        let out = run(&m, &prompt, Some(&word), seed, 12);
        assert!(!out.text.is_empty() && out.text.bytes().all(|b| b.is_ascii_lowercase()));
    }
}

/// Bad constraints are `Error::Grammar` naming the problem.
#[test]
fn bad_constraints_say_what_is_wrong() {
    let m = model();
    let tok = m.tokenizer.as_ref().unwrap();
    let cases = [
        (Constraint::JsonSchema(json!({"type": "strnig"})), "strnig"),
        (Constraint::JsonSchema(json!([1, 2])), "JSON schema"),
        (Constraint::Regex("(unclosed".into()), "("),
        (Constraint::Lark("start: foo\n".into()), "foo"),
        (Constraint::Lark("root ::= \"a\"".into()), "GBNF"),
    ];
    for (c, needle) in cases {
        match Grammar::new(tok, &c) {
            Err(Error::Grammar(msg)) => assert!(msg.contains(needle), "{c:?}: {msg}"),
            Err(e) => panic!("{c:?}: not a grammar error: {e}"),
            Ok(_) => panic!("{c:?} compiled"),
        }
    }
}
