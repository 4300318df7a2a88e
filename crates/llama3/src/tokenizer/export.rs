//! GGUF `tokenizer.*` metadata from an HF model directory, as llama.cpp's
//! convert_hf_to_gguf.py writes it for byte-level BPE tokenizers (`_set_vocab_gpt2`:
//! `get_vocab_base`, `get_vocab_base_pre`, gguf-py's `SpecialVocab`), so that llama.cpp and
//! [`super::gguf`] rebuild the same tokenizer from the file.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::{hf, tok_err};
use crate::{Error, Result};

/// GGUF `tokenizer.ggml.token_type` values (gguf-py `TokenType`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// convert_hf_to_gguf.py `get_vocab_base_pre`'s `chktxt`: the sha256 of
/// `str(tokenizer.encode(chktxt))` names the pre-tokenizer.
const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// (chkhsh, `tokenizer.ggml.pre`) from convert_hf_to_gguf.py, for the pre-tokenizers
/// `pretok::spec_for` implements (where two names share a hash, the later one, which the
/// script returns).
const PRE_HASHES: &[(&str, &str)] = &[
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ),
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ),
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ),
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ),
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ),
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ),
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ),
    (
        "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360",
        "poro-chat",
    ),
    (
        "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee",
        "viking",
    ),
    (
        "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901",
        "jais",
    ),
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ),
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ),
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7",
        "bloom",
    ),
    (
        "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21",
        "gpt3-finnish",
    ),
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ),
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ),
    (
        "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65",
        "roberta-bpe",
    ),
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ),
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ),
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ),
    (
        "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b",
        "chatglm-bpe",
    ),
    (
        "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516",
        "chatglm-bpe",
    ),
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ),
];

/// convert_hf_to_gguf.py `does_token_look_special`: added tokens some models forget to mark
/// special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `tokenizer.ggml.pre` name of a tokenizer whose encoding of [`CHKTXT`] (with the
/// special tokens HF's `encode` adds) hashes to a known value.
fn pre_name(ids: &[u32], source: &Path) -> Result<&'static str> {
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let hash = Sha256::digest(format!("[{}]", list.join(", ")).as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    PRE_HASHES
        .iter()
        .find(|(h, _)| *h == hex)
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: cannot tell this tokenizer's BPE pre-tokenizer (chkhsh {hex} is not one \
                 convert_hf_to_gguf.py knows), so llama.cpp could not tokenize like it",
                source.display()
            ))
        })
}

/// `tokenizer.*` GGUF metadata for the tokenizer of HF directory `dir`, with `vocab_size`
/// entries (the model's; missing ids become `[PAD{i}]`, unused, as convert_hf_to_gguf.py does).
/// Byte-level BPE tokenizers (`tokenizer.ggml.model = gpt2`: Llama 3, SmolLM, ...) and
/// SentencePiece BPE ones with byte fallback (`llama`: Llama 1/2, HF's `LlamaConverter`
/// layout) are supported; others are refused.
pub fn gguf_metadata_from_hf_dir(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let (tok, meta) = hf::load_dir(dir)?;
    let json: Json = serde_json::from_str(&tok.to_string(false).map_err(tok_err)?)
        .map_err(|e| Error::Tokenizer(format!("re-reading the tokenizer as JSON: {e}")))?;
    let model = &json["model"];
    let byte_level = json["decoder"]["type"] == "ByteLevel"
        || json["pre_tokenizer"].to_string().contains("\"ByteLevel\"");
    if model["type"] == "BPE" && !byte_level && model["byte_fallback"] == true {
        return spm_metadata(dir, &tok, &json, &meta, vocab_size);
    }
    if model["type"] != "BPE" || !byte_level {
        return Err(Error::Unsupported(format!(
            "{}: only byte-level BPE tokenizers can be written to GGUF (this one is {} {})",
            dir.display(),
            model["type"],
            if byte_level {
                "byte-level"
            } else {
                "not byte-level"
            }
        )));
    }

    // Tokens in id order with their types (get_vocab_base).
    let tokens = tokens_by_id(dir, &tok, vocab_size)?;
    let added = tok.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(vocab_size);
    let mut texts = Vec::with_capacity(vocab_size);
    for (i, t) in tokens.into_iter().enumerate() {
        let (text, ty) = match (t, added.get(&(i as u32))) {
            (None, _) => (format!("[PAD{i}]"), UNUSED),
            (Some(t), Some(a)) if a.special || looks_special(&t) => (t, CONTROL),
            // llama.cpp expects user-defined tokens pre-normalized: SentencePiece's space
            // marker as a space.
            (Some(t), Some(_)) => (t.replace('\u{2581}', " "), USER_DEFINED),
            (Some(t), None) => (t, NORMAL),
        };
        texts.push(Value::String(text));
        types.push(Value::I32(ty));
    }

    // Merges as "a b" (gguf-py SpecialVocab: tokenizer.json lists strings or pairs).
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    Json::String(s) => Some(s.clone()),
                    Json::Array(p) => Some(
                        p.iter()
                            .filter_map(Json::as_str)
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    _ => None,
                })
                .map(Value::String)
                .collect()
        })
        .unwrap_or_default();

    // HF's `encode` adds BOS/EOS as the tokenizer's post-processor or add_bos_token says.
    let body = tok.encode_fast(CHKTXT, false).map_err(tok_err)?;
    let mut chk: Vec<u32> = Vec::new();
    chk.extend(meta.bos_id.filter(|_| meta.add_bos));
    chk.extend_from_slice(body.get_ids());
    chk.extend(meta.eos_id.filter(|_| meta.add_eos));
    let pre = pre_name(&chk, &dir.join("tokenizer.json"))?;

    let mut md: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", Value::Array(texts)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(meta.add_bos)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(meta.add_eos)),
    ];
    let unk = tokenizer_config_token(dir, "unk_token").and_then(|t| tok.token_to_id(&t));
    // llama.cpp finds EOT by text anyway (llama-vocab.cpp); writing it makes it explicit.
    let eot = tok.token_to_id("<|eot_id|>");
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", meta.bos_id),
        ("tokenizer.ggml.eos_token_id", meta.eos_id),
        ("tokenizer.ggml.eot_token_id", eot),
        ("tokenizer.ggml.unknown_token_id", unk),
        ("tokenizer.ggml.padding_token_id", meta.pad_id),
    ] {
        if let Some(id) = id.filter(|&i| (i as usize) < vocab_size) {
            md.push((key, Value::U32(id)));
        }
    }
    if let Some(t) = meta.chat_template {
        md.push(("tokenizer.chat_template", Value::String(t)));
    }
    Ok(md.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `tokenizer.*` metadata (`tokenizer.ggml.model = llama`) for a SentencePiece-style BPE
/// tokenizer.json (byte fallback, `▁` for spaces). GGUF wants a score per token, where
/// llama.cpp merges the adjacent pair whose concatenation scores highest; tokenizer.json has
/// ranked merges instead. A token scores minus the rank of the first merge that makes it, so
/// the best-ranked applicable merge wins in both, and [`super::gguf`] re-derives the same
/// merge list from the scores (merges that make one token are adjacent in such files, as
/// HF's `generate_merges` writes them). Tokens no merge makes score below all others.
fn spm_metadata(
    dir: &Path,
    tok: &tokenizers::Tokenizer,
    json: &Json,
    meta: &super::Meta,
    vocab_size: usize,
) -> Result<Vec<(String, Value)>> {
    let tokens = tokens_by_id(dir, tok, vocab_size)?;
    let mut first_rank: std::collections::HashMap<String, usize> = Default::default();
    let merges = json["model"]["merges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (rank, m) in merges.iter().enumerate() {
        let joined = match m {
            Json::String(s) => s.replacen(' ', "", 1),
            Json::Array(p) => p.iter().filter_map(Json::as_str).collect(),
            _ => continue,
        };
        first_rank.entry(joined).or_insert(rank);
    }
    let unk = json["model"]["unk_token"].as_str();
    let added = tok.get_added_tokens_decoder();
    let (mut texts, mut scores, mut types) = (vec![], vec![], vec![]);
    for (i, t) in tokens.into_iter().enumerate() {
        let Some(t) = t else {
            texts.push(Value::String(format!("[PAD{i}]")));
            scores.push(Value::F32(-1e9));
            types.push(Value::I32(UNUSED));
            continue;
        };
        let is_byte = t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
        let ty = match added.get(&(i as u32)) {
            _ if Some(t.as_str()) == unk => UNKNOWN,
            _ if is_byte => BYTE,
            Some(a) if a.special => CONTROL,
            Some(_) => USER_DEFINED,
            None => NORMAL,
        };
        let score = match first_rank.get(&t) {
            Some(&r) => -(r as f32),
            None if t.chars().count() > 1 && ty == NORMAL => -1e9,
            None => 0.0,
        };
        texts.push(Value::String(t));
        scores.push(Value::F32(score));
        types.push(Value::I32(ty));
    }
    let space_prefix = json["normalizer"].to_string().contains("\"Prepend\"")
        || json["pre_tokenizer"]
            .to_string()
            .contains("\"prepend_scheme\":\"first\"");
    let mut md: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(texts)),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(meta.add_bos)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(meta.add_eos)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(space_prefix)),
    ];
    let unk_id = unk.and_then(|u| tok.token_to_id(u));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", meta.bos_id),
        ("tokenizer.ggml.eos_token_id", meta.eos_id),
        ("tokenizer.ggml.unknown_token_id", unk_id),
        ("tokenizer.ggml.padding_token_id", meta.pad_id),
    ] {
        if let Some(id) = id.filter(|&i| (i as usize) < vocab_size) {
            md.push((key, Value::U32(id)));
        }
    }
    if let Some(t) = &meta.chat_template {
        md.push(("tokenizer.chat_template", Value::String(t.clone())));
    }
    Ok(md.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The vocabulary in id order, `vocab_size` slots (the model's; None where no token has
/// that id).
fn tokens_by_id(
    dir: &Path,
    tok: &tokenizers::Tokenizer,
    vocab_size: usize,
) -> Result<Vec<Option<String>>> {
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    for (text, id) in tok.get_vocab(true) {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Tokenizer(format!(
                "{}: token {text:?} has id {id}, outside the model's vocab_size {vocab_size}",
                dir.display()
            ))
        })?;
        *slot = Some(text);
    }
    Ok(tokens)
}

/// A `*_token` entry of `tokenizer_config.json` (a string or `{"content": ...}`).
fn tokenizer_config_token(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let cfg: Json = serde_json::from_str(&text).ok()?;
    match &cfg[key] {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_pre_is_implemented() {
        for (hash, name) in PRE_HASHES {
            assert_eq!(hash.len(), 64);
            super::super::pretok::spec_for(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn special_looking_tokens() {
        assert!(looks_special("<|im_start|>"));
        assert!(looks_special("<unused3>"));
        assert!(!looks_special("<s>"));
        assert!(!looks_special("hello"));
    }

    #[test]
    fn unknown_hash_is_a_clear_error() {
        let e = pre_name(&[1, 2, 3], Path::new("x/tokenizer.json")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("x/tokenizer.json") && msg.contains("pre-tokenizer"),
            "{msg}"
        );
    }
}
