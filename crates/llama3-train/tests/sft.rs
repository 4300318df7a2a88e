//! Fine-tuning data: with the default model's tokenizer and chat template (SmolLM2, ChatML),
//! only assistant turns (with their `<|im_end|>`) or completions (with EOS) are labelled.

use llama3::tokenizer::Tokenizer;
use llama3_train::sft::{self, Example};

fn tokenizer() -> Tokenizer {
    let path = llama3::hub::ensure_default_model(|m| eprintln!("{m}")).expect("default model");
    llama3::loader::load(&path, &Default::default())
        .unwrap()
        .tokenizer
        .expect("the default model has a tokenizer")
}

fn examples(lines: &[&str], max_len: usize) -> (Vec<Example>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    assert!(sft::is_sft_file(&file));
    sft::load(&[file], &tokenizer(), max_len).unwrap()
}

/// The labelled and the unlabelled text of an example.
fn split(tok: &Tokenizer, e: &Example) -> (String, String) {
    let pick = |counted: bool| -> Vec<u32> {
        e.ids
            .iter()
            .zip(&e.labels)
            .filter(|(_, &l)| (l != -100) == counted)
            .map(|(&i, _)| i)
            .collect()
    };
    (
        tok.decode(&pick(true), false).unwrap(),
        tok.decode(&pick(false), false).unwrap(),
    )
}

#[test]
fn chat_labels_only_assistant_turns() {
    let tok = tokenizer();
    let line = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]}"#;
    let (ex, dropped) = examples(&[line], 512);
    assert_eq!((ex.len(), dropped), (1, 0));
    let (learned, context) = split(&tok, &ex[0]);
    assert_eq!(learned, "Hello there!<|im_end|>\nSee you.<|im_end|>\n");
    assert!(
        context.contains("<|im_start|>user\nHi<|im_end|>"),
        "{context}"
    );
    assert!(context.ends_with("<|im_start|>assistant\n"), "{context}");
    // Labels are the ids where counted (the loss shifts them itself).
    for (i, l) in ex[0].ids.iter().zip(&ex[0].labels) {
        assert!(*l == -100 || *l == *i as i64);
    }
    // The whole sequence is the template's rendering, tokenized.
    let msgs: Vec<llama3::tokenizer::Message> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(line).unwrap()["messages"].clone(),
    )
    .unwrap();
    assert_eq!(ex[0].ids, tok.encode_chat(&msgs, false).unwrap());
}

#[test]
fn prompt_completion_labels_the_completion_and_eos() {
    let tok = tokenizer();
    let (ex, _) = examples(&[r#"{"prompt": "2 + 2 =", "completion": " 4"}"#], 512);
    let (learned, context) = split(&tok, &ex[0]);
    assert_eq!(learned, format!(" 4{}", tok.eos_token().unwrap()));
    assert_eq!(context, "2 + 2 =");
}

#[test]
fn truncation_drops_examples_with_nothing_to_learn() {
    let long = format!(
        r#"{{"prompt": "{}", "completion": " end"}}"#,
        "word ".repeat(100)
    );
    let no_assistant = r#"{"messages": [{"role": "user", "content": "Hi"}]}"#;
    let (ex, dropped) = examples(
        &[&long, no_assistant, r#"{"prompt": "a", "completion": "b"}"#],
        32,
    );
    assert_eq!((ex.len(), dropped), (1, 2));
    assert!(ex[0].ids.len() <= 32);
}

#[test]
fn bad_lines_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let e = sft::load(&[file], &tokenizer(), 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 2"), "{e}");
    let text = dir.path().join("text.jsonl");
    std::fs::write(&text, "{\"text\": \"plain\"}\n").unwrap();
    assert!(!sft::is_sft_file(&text));
}
