//! Tokenizer and chat-template tests against references (HF `tokenizers`, llama.cpp, Python
//! jinja2 as transformers configures it), never against our own output.
//!
//! Needs the real files: `$LLAMA3_HOME/llama3.2-tokenizer/{tokenizer.json,tokenizer.model,
//! tokenizer_config.json}` and `$LLAMA3_HOME/SmolLM2-135M-Instruct.Q4_1.gguf` (LLAMA3_HOME
//! defaults to ~/.cache/llama3), and the shared goldens (`$LLAMA3_SHARED`, default
//! `<workspace>/../shared`).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use llama3::tokenizer::{ChatTemplate, Message, Tokenizer};
use llama3::Error;
use llama3_testutil::{ids, llama3_home, shared};
use serde_json::Value as Json;

/// The path, or a failure that says what to put where.
fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "missing test file {}: set LLAMA3_HOME / LLAMA3_SHARED or put it there \
         (see crates/llama3/tests/tokenizer.rs)",
        path.display()
    );
    path
}

fn llama32_dir() -> PathBuf {
    require(llama3_home().join("llama3.2-tokenizer"))
}

fn read_json(path: PathBuf) -> Json {
    llama3_testutil::read_json(&require(path))
}

fn gguf_tokenizer(path: PathBuf) -> Tokenizer {
    let path = require(path);
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    Tokenizer::from_gguf(&content.metadata).unwrap()
}

fn smollm() -> Tokenizer {
    gguf_tokenizer(llama3_home().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// golden/tokenizer/llama3.2.json: HF tokenizers on the Llama 3.2 tokenizer.json.
fn check_llama32_golden(tok: &Tokenizer, what: &str, check_decode: bool) {
    let golden = read_json(shared().join("golden/tokenizer/llama3.2.json"));
    for s in golden["samples"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let short: String = text.chars().take(40).collect();
        assert_eq!(
            tok.encode(text, false, true).unwrap(),
            ids(&s["ids"]),
            "{what}: {short:?}"
        );
        assert_eq!(
            tok.encode(text, true, true).unwrap(),
            ids(&s["ids_with_special"]),
            "{what} with special: {short:?}"
        );
        if check_decode {
            let decoded = tok.decode(&ids(&s["ids"]), false).unwrap();
            assert_eq!(
                decoded,
                s["decoded"].as_str().unwrap(),
                "{what} decode: {short:?}"
            );
        }
    }
}

#[test]
fn llama32_tokenizer_json_matches_hf() {
    let dir = llama32_dir();
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    check_llama32_golden(&tok, "hf dir", true);
    assert_eq!(tok.bos_id(), Some(128000));
    assert_eq!(tok.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(tok.eos_id(), Some(128001));
    assert_eq!(tok.pad_id(), tok.token_id("<|finetune_right_pad_id|>"));
    assert!(tok.adds_bos());
    for id in [128001, 128008, 128009] {
        assert!(tok.is_end(id), "{id} should end generation");
    }
    let file = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    check_llama32_golden(&file, "tokenizer.json", true);
    assert_eq!(file.bos_id(), Some(128000));
    assert!(file.adds_bos(), "post-processor adds BOS");
}

#[test]
fn llama32_tiktoken_model_matches_tokenizer_json() {
    let dir = llama32_dir();
    let tik = Tokenizer::from_file(&require(dir.join("tokenizer.model"))).unwrap();
    check_llama32_golden(&tik, "tokenizer.model", true);
    assert_eq!(tik.vocab_size(), 128256);
    assert_eq!(tik.end_ids(), [128001, 128008, 128009]);
    assert_eq!(tik.token_id("<|python_tag|>"), Some(128010));
    assert_eq!(tik.token_id("<|reserved_special_token_247|>"), Some(128255));

    // Same vocabulary and same ids as tokenizer.json, except 128005, which Meta's 3.1/3.2 text
    // list calls <|reserved_special_token_2|> and this (vision) tokenizer.json <|step_id|>.
    let hf = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    for id in (0..128000)
        .step_by(997)
        .chain(128000..128005)
        .chain(128006..128011)
    {
        assert_eq!(tik.id_to_piece(id), hf.id_to_piece(id), "id {id}");
    }
    // In a directory, added_tokens_decoder supplies the specials: then all of them agree.
    let tmp = std::env::temp_dir().join(format!("llama3-tiktoken-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("tokenizer.model"), tmp.join("tokenizer.model")).unwrap();
    std::fs::copy(
        dir.join("tokenizer_config.json"),
        tmp.join("tokenizer_config.json"),
    )
    .unwrap();
    let tik_dir = Tokenizer::from_hf_dir(&tmp).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(tik_dir.vocab_size(), hf.vocab_size());
    for id in 128000..128257 {
        assert_eq!(tik_dir.id_to_piece(id), hf.id_to_piece(id), "id {id}");
    }
    check_llama32_golden(&tik_dir, "tokenizer.model dir", false);
}

/// llama.cpp test-tokenizer-0 vectors: `.inp` strings separated by `\n__ggml_vocab_test__\n`,
/// `.out` one line of ids per string (add_special = false, parse_special = false).
fn check_vocab_gguf(name: &str) {
    let dir = shared().join("data/llama-vocab-gguf");
    check_vocab_vectors(&gguf_tokenizer(dir.join(name)), name, "");
}

/// The vectors of vocabulary `name` against `tok` (`what` says which copy it is).
fn check_vocab_vectors(tok: &Tokenizer, name: &str, what: &str) {
    let dir = shared().join("data/llama-vocab-gguf");
    let inp = std::fs::read_to_string(require(dir.join(format!("{name}.inp")))).unwrap();
    let out = std::fs::read_to_string(require(dir.join(format!("{name}.out")))).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<&str> = out.split('\n').collect();
    assert_eq!(texts.len(), 47, "46 cases and the empty tail");
    let mut failures = Vec::new();
    for (text, line) in texts.iter().zip(&expected).take(46) {
        let want: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let got = tok.encode(text, false, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}{what}: {} of 46 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm_gguf_matches_llamacpp() {
    check_vocab_gguf("ggml-vocab-llama-spm.gguf");
}

#[test]
fn llama_bpe_gguf_matches_llamacpp() {
    check_vocab_gguf("ggml-vocab-llama-bpe.gguf");
}

/// Both vocabularies written as tokenizer.json (as `llama3 train` saves them), exported back
/// to GGUF metadata (`llama3 export`), and rebuilt from it: llama.cpp's vectors still match,
/// and the SentencePiece metadata has what llama.cpp's loader needs (scores, byte tokens).
#[test]
fn vocab_ggufs_survive_tokenizer_json_and_export() {
    use candle_core::quantized::gguf_file::Value;
    for name in ["ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-bpe.gguf"] {
        let tok = gguf_tokenizer(shared().join("data/llama-vocab-gguf").join(name));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            tok.inner().to_string(false).unwrap(),
        )
        .unwrap();
        let cfg = serde_json::json!({
            "add_bos_token": tok.adds_bos(),
            "bos_token": tok.bos_token(),
            "eos_token": tok.eos_token(),
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let n = tok.vocab_size();
        let md: std::collections::HashMap<String, Value> =
            llama3::tokenizer::gguf_metadata_from_hf_dir(dir.path(), n)
                .unwrap()
                .into_iter()
                .collect();
        let back = Tokenizer::from_gguf(&md).unwrap();
        check_vocab_vectors(&back, name, "exported");
        assert_eq!((back.bos_id(), back.eos_id()), (tok.bos_id(), tok.eos_id()));
        if name.contains("spm") {
            assert_eq!(md["tokenizer.ggml.model"].to_string().unwrap(), "llama");
            let Value::Array(types) = &md["tokenizer.ggml.token_type"] else {
                panic!("no token types")
            };
            let ty = |i: usize| format!("{:?}", types[i]);
            // <unk>, <s>, </s>, <0x00>, then a normal token.
            let want = ["I32(2)", "I32(3)", "I32(3)", "I32(6)"];
            assert_eq!((0..4).map(ty).collect::<Vec<_>>(), want);
            assert_eq!(ty(300), "I32(1)");
        }
    }
}

#[test]
fn spm_gguf_metadata_and_decode() {
    let tok = gguf_tokenizer(shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf"));
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.adds_bos());
    // PROVENANCE.md: 15043 = "▁Hello", 3186 = "▁world".
    assert_eq!(
        tok.encode("Hello world", true, false).unwrap(),
        [1, 15043, 3186]
    );
    assert_eq!(tok.decode(&[1, 15043, 3186], true).unwrap(), "Hello world");
    // llama.cpp .out for " this is 🦙.cpp": "▁" then the four byte-fallback tokens of 🦙.
    assert_eq!(
        tok.decode(&[445, 29871, 243, 162, 169, 156], false)
            .unwrap(),
        "this 🦙"
    );
}

/// golden/llamacpp/tokenize.json: llama-tokenize on the SmolLM2 GGUF.
#[test]
fn smollm_gguf_matches_llama_tokenize() {
    let tok = smollm();
    let golden = read_json(shared().join("golden/llamacpp/tokenize.json"));
    let strings = golden["strings"].as_array().unwrap();
    assert_eq!(strings.len(), 20);
    for s in strings {
        let name = s["name"].as_str().unwrap();
        let text = s["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true, true).unwrap(),
            ids(&s["ids"]),
            "{name}"
        );
        let plain = s.get("ids_no_parse_special").unwrap_or(&s["ids"]);
        assert_eq!(
            tok.encode(text, true, false).unwrap(),
            ids(plain),
            "{name} no parse_special"
        );
        let pieces: Vec<String> = ids(&s["ids"])
            .iter()
            .map(|&i| tok.id_to_piece(i).unwrap())
            .collect();
        let want: Vec<&str> = s["tokens_vocab"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(pieces, want, "{name} pieces");
        assert_eq!(
            tok.decode(&ids(&s["ids"]), false).unwrap(),
            text,
            "{name} decode"
        );
    }
    // README "Tokenization conventions": no BOS added; BOS 1, EOS 2; EOG 0 and 2.
    assert!(!tok.adds_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.end_ids(), [0, 2]);
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.vocab_size(), 49152);
}

#[test]
fn smollm_golden_prompts() {
    let tok = smollm();
    let root = shared().join("golden/llamacpp");
    let golden = read_json(root.join("golden.json"));
    let prompts = golden["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 7);
    for p in prompts {
        let name = p["name"].as_str().unwrap();
        let file = require(root.join(format!("prompts/{name}.txt")));
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            tok.encode(&text, true, true).unwrap(),
            ids(&p["prompt_ids"]),
            "{name}"
        );
    }
}

/// p6_chat.txt was rendered by Python jinja2 (trim/lstrip blocks, as transformers) from the
/// GGUF's template; chat_template.jinja is that template verbatim.
#[test]
fn smollm_chat_template_renders_p6() {
    let tok = smollm();
    let root = shared().join("golden/llamacpp");
    let want = std::fs::read_to_string(require(root.join("prompts/p6_chat.txt"))).unwrap();
    let msgs = [Message::new(
        "user",
        "What is the boiling point of water in Celsius?",
    )];
    let t = tok
        .chat_template()
        .expect("GGUF has tokenizer.chat_template");
    assert_eq!(t.render(&msgs, true).unwrap(), want);
    let src = std::fs::read_to_string(require(root.join("chat_template.jinja"))).unwrap();
    assert_eq!(t.source(), src);
    let from_file = ChatTemplate::new(&src, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
    assert_eq!(from_file.render(&msgs, true).unwrap(), want);

    let golden = read_json(root.join("golden.json"));
    let prompts = golden["prompts"].as_array().unwrap();
    let p6 = prompts.iter().find(|p| p["name"] == "p6_chat").unwrap();
    assert_eq!(
        tok.encode_chat(&msgs, true).unwrap(),
        ids(&p6["prompt_ids"])
    );
}

// Expected renderings of the Llama 3.2 template: Python jinja2 3.1.6 with transformers'
// settings (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, tojson =
// json.dumps(ensure_ascii=False)), bos_token "<|begin_of_text|>", tools=None unless given.
const LLAMA32_EXPECTED_SYSTEM_USER: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
const LLAMA32_EXPECTED_MULTI_TURN: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me a joke about llamas 🦙.<|eot_id|>";
const LLAMA32_EXPECTED_TOOLS: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n{\n    \"function\": {\n        \"description\": \"Get the weather <now> & \\\"later\\\"\",\n        \"name\": \"get_weather\",\n        \"parameters\": {\n            \"properties\": {\n                \"city\": {\n                    \"description\": \"City name, e.g. Zürich\",\n                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n            ],\n            \"type\": \"object\"\n        }\n    },\n    \"type\": \"function\"\n}\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

/// Llama 3.2 Instruct chat template (meta-llama/Llama-3.2-1B-Instruct tokenizer_config.json
/// `chat_template`); the tokenizer_config.json in `llama3.2-tokenizer/` carries none.
const LLAMA32_TEMPLATE: &str = include_str!("data/llama3.2_chat_template.jinja");

fn llama32_with_template() -> Tokenizer {
    let mut tok = Tokenizer::from_hf_dir(&llama32_dir()).unwrap();
    if tok.chat_template().is_none() {
        tok.set_chat_template(LLAMA32_TEMPLATE).unwrap();
    }
    tok
}

fn extra(v: Json) -> serde_json::Map<String, Json> {
    v.as_object().unwrap().clone()
}

#[test]
fn llama32_chat_template_matches_jinja2() {
    let tok = llama32_with_template();
    let t = ChatTemplate::new(LLAMA32_TEMPLATE, tok.bos_token(), tok.eos_token()).unwrap();
    let msgs = [
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "What is the capital of France?"),
    ];
    let date = extra(serde_json::json!({"date_string": "26 Jul 2024"}));
    assert_eq!(
        t.render_with(&msgs, true, &date).unwrap(),
        LLAMA32_EXPECTED_SYSTEM_USER
    );

    let msgs = [
        Message::new("user", "  Hi there!  "),
        Message::new("assistant", "Hello! How can I help?"),
        Message::new("user", "Tell me a joke about llamas 🦙."),
    ];
    let date = extra(serde_json::json!({"date_string": "01 Jan 2025"}));
    assert_eq!(
        t.render_with(&msgs, false, &date).unwrap(),
        LLAMA32_EXPECTED_MULTI_TURN
    );

    let tools = extra(serde_json::json!({
        "date_string": "26 Jul 2024",
        "tools": [{
            "function": {
                "description": "Get the weather <now> & \"later\"",
                "name": "get_weather",
                "parameters": {
                    "properties": {"city": {"description": "City name, e.g. Zürich", "type": "string"}},
                    "required": ["city"],
                    "type": "object"
                }
            },
            "type": "function"
        }],
    }));
    let msgs = [Message::new("user", "Weather in Paris?")];
    assert_eq!(
        t.render_with(&msgs, true, &tools).unwrap(),
        LLAMA32_EXPECTED_TOOLS
    );
}

#[test]
fn llama32_encode_chat_has_one_bos_and_a_date() {
    let tok = llama32_with_template();
    let msgs = [Message::new("user", "Hi")];
    let ids = tok.encode_chat(&msgs, true).unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| i == 128000).count(),
        1,
        "exactly one BOS"
    );
    assert_eq!(ids[0], 128000);
    let header = [
        128006,
        tok.token_id("assistant").unwrap(),
        128007,
        tok.token_id("ĊĊ").unwrap(),
    ];
    assert_eq!(
        &ids[ids.len() - 4..],
        header,
        "assistant header then \\n\\n"
    );
    // No date_string: the template calls strftime_now("%d %b %Y").
    let text = tok.chat_template().unwrap().render(&msgs, true).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Today Date: "))
        .unwrap();
    let date: Vec<&str> = line["Today Date: ".len()..].split(' ').collect();
    assert!(
        date.len() == 3 && date[0].len() == 2 && date[1].len() == 3 && date[2].len() == 4,
        "{line}"
    );
}

/// Stream ids one by one: no chunk may hold a broken character, and the chunks add up to the
/// full decode. Returns how many steps held text back.
fn check_stream(tok: &Tokenizer, text: &str) -> usize {
    let ids = tok.encode(text, false, true).unwrap();
    let mut stream = tok.decode_stream();
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        match stream.step(id).unwrap() {
            Some(chunk) => {
                assert!(!chunk.contains('\u{FFFD}'), "broken char in {chunk:?}");
                out.push_str(&chunk);
            }
            None => held += 1,
        }
    }
    if let Some(rest) = stream.flush().unwrap() {
        out.push_str(&rest);
    }
    assert_eq!(out, tok.decode(&ids, false).unwrap());
    assert_eq!(out, text);
    held
}

#[test]
fn streaming_decode_never_splits_characters() {
    let texts = [
        "Emoji: 🦙🔥👍🏽 👨‍👩‍👧‍👦 and flags 🇫🇷",
        "大语言模型（LLM）已经成为推动技术发展的重要力量。",
        "日本語のテキストとカタカナ、ひらがな。 한국어 텍스트",
        "plain ASCII, then é and ∑ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ];
    let llama = Tokenizer::from_hf_dir(&llama32_dir()).unwrap();
    let smol = smollm();
    let spm = gguf_tokenizer(shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf"));
    for (name, tok) in [("llama3.2", &llama), ("smollm", &smol), ("spm", &spm)] {
        let held: usize = texts.iter().map(|t| check_stream(tok, t)).sum();
        assert!(held > 0, "{name}: some token must end inside a character");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let tok = smollm();
    let err = tok.decode(&[49152], false).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err}");
    assert!(tok.decode_stream().step(u32::MAX).is_err());

    // Unknown pre-tokenizer or model in otherwise valid metadata.
    let path = require(llama3_home().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let mut f = std::fs::File::open(path).unwrap();
    let mut md = gguf_file::Content::read(&mut f).unwrap().metadata;
    let pre = gguf_file::Value::String("made-up-pre".into());
    md.insert("tokenizer.ggml.pre".into(), pre);
    let err = Tokenizer::from_gguf(&md).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("made-up-pre"), "{err}");
    md.insert(
        "tokenizer.ggml.model".into(),
        gguf_file::Value::String("bert".into()),
    );
    assert!(matches!(
        Tokenizer::from_gguf(&md),
        Err(Error::Unsupported(_))
    ));

    // A model without a chat template cannot encode a chat.
    let spm = gguf_tokenizer(shared().join("data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf"));
    let chat = spm.encode_chat(&[Message::new("user", "hi")], true);
    assert!(matches!(chat, Err(Error::Template(_))));
    assert!(Tokenizer::from_hf_dir(Path::new("/nonexistent/model")).is_err());
}
