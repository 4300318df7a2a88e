//! Hugging Face model directories: `tokenizer.json` (or Meta's tiktoken `tokenizer.model`),
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`, `config.json`.
//!
//! Precedence follows transformers: `tokenizer_config.json` names BOS/EOS and `add_bos_token`;
//! a separate `chat_template.jinja` wins over the config's `chat_template`; generation stops on
//! every `eos_token_id` of `generation_config.json` and `config.json` (int or list).

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::AddedToken;

use super::{tiktoken, tok_err, Meta};
use crate::{Error, Result};

/// Token names tried when nothing says which token is BOS/EOS (a bare tokenizer.json).
const BOS_GUESSES: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
const EOS_GUESSES: &[&str] = &[
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|im_end|>",
];

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// BOS/EOS and whether they are added, read off the tokenizer.json post-processor: encode "a"
/// with and without special tokens and look at what surrounds it.
pub(crate) fn meta_from_tokenizer(tok: &tokenizers::Tokenizer) -> Meta {
    let mut meta = Meta::default();
    if let (Ok(with), Ok(without)) = (tok.encode_fast("a", true), tok.encode_fast("a", false)) {
        let (with, without) = (with.get_ids(), without.get_ids());
        if let Some(p) = with.windows(without.len()).position(|w| w == without) {
            let (prefix, suffix) = (&with[..p], &with[p + without.len()..]);
            if let [bos] = prefix {
                meta.bos_id = Some(*bos);
                meta.add_bos = true;
            }
            if let [eos] = suffix {
                meta.eos_id = Some(*eos);
                meta.add_eos = true;
            }
        }
    }
    let guess = |names: &[&str]| names.iter().find_map(|n| tok.token_to_id(n));
    meta.bos_id = meta.bos_id.or_else(|| guess(BOS_GUESSES));
    meta.eos_id = meta.eos_id.or_else(|| guess(EOS_GUESSES));
    meta
}

/// A special-token entry of tokenizer_config.json: `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// `eos_token_id`: an int or a list of ints.
fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

/// `chat_template`: a string, or a list of `{name, template}` of which "default" is used.
fn chat_template(cfg: &Json, file: &Path) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter()
                    .find(|t| want.is_none() || t.get("name").and_then(Json::as_str) == want)
            };
            let t = named(Some("default")).or_else(|| named(None));
            Ok(t.and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string))
        }
        Some(_) => Err(Error::format(
            file,
            "chat_template is neither a string nor a list",
        )),
    }
}

/// `added_tokens_decoder` of tokenizer_config.json as `(id, content, special)`, sorted by id.
fn added_tokens(cfg: &Json) -> Vec<(u32, String, bool)> {
    let mut out: Vec<(u32, String, bool)> = cfg
        .get("added_tokens_decoder")
        .and_then(Json::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(id, t)| {
                    let id = id.parse().ok()?;
                    let special = t.get("special").and_then(Json::as_bool).unwrap_or(true);
                    Some((id, token_text(t)?.to_string(), special))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|t| t.0);
    out
}

/// Load the tokenizer of a model directory and everything around it.
pub(crate) fn load_dir(dir: &Path) -> Result<(tokenizers::Tokenizer, Meta)> {
    if !dir.is_dir() {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
        return Err(Error::io(dir, e));
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = read_json(&cfg_path)?.unwrap_or(Json::Null);
    let added = added_tokens(&cfg);

    let json_path = dir.join("tokenizer.json");
    let model_path = dir.join("tokenizer.model");
    let (mut tok, mut meta) = if json_path.exists() {
        let bytes = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let tok = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(&json_path, format!("not a valid tokenizer.json: {e}")))?;
        let meta = meta_from_tokenizer(&tok);
        (tok, meta)
    } else if model_path.exists() {
        (load_tiktoken(&model_path, &added)?, tiktoken::llama3_meta())
    } else {
        let e = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no tokenizer.json or tokenizer.model",
        );
        return Err(Error::io(dir, e));
    };

    // Added tokens the tokenizer lacks, when they take the next free ids (as transformers adds
    // them); anything else would shift ids and is only reported.
    for (id, content, special) in &added {
        if tok.token_to_id(content).is_some() {
            continue;
        }
        if *id as usize == tok.get_vocab_size(true) {
            let t = AddedToken::from(content.as_str(), *special).normalized(false);
            tok.add_tokens([t]).map_err(tok_err)?;
        } else {
            tracing::warn!(
                "{}: added token {content:?} at id {id} skipped",
                cfg_path.display()
            );
        }
    }

    let named = |key: &str| {
        cfg.get(key)
            .and_then(token_text)
            .and_then(|t| tok.token_to_id(t))
    };
    if let Some(b) = named("bos_token") {
        meta.bos_id = Some(b);
    }
    meta.pad_id = named("pad_token");
    if let Some(e) = named("eos_token") {
        meta.eos_id = Some(e);
    }
    if let Some(b) = cfg.get("add_bos_token").and_then(Json::as_bool) {
        meta.add_bos = b;
    }
    if let Some(e) = cfg.get("add_eos_token").and_then(Json::as_bool) {
        meta.add_eos = e;
    }
    meta.chat_template = chat_template(&cfg, &cfg_path)?.or(meta.chat_template);
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let src = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        meta.chat_template = Some(src);
    }

    for name in ["generation_config.json", "config.json"] {
        if let Some(c) = read_json(&dir.join(name))? {
            let eos = ids(c.get("eos_token_id"));
            meta.eos_id = meta.eos_id.or(eos.first().copied());
            meta.end_ids.extend(eos);
            meta.bos_id = meta.bos_id.or(ids(c.get("bos_token_id")).first().copied());
            meta.pad_id = meta.pad_id.or(ids(c.get("pad_token_id")).first().copied());
        }
    }
    Ok((tok, meta))
}

/// Meta's tokenizer.model; the special tokens come from `added_tokens_decoder` when it lists them
/// right after the ranks (e.g. Llama 3.2 Vision's `<|step_id|>`), else Meta's Llama 3.1 list.
fn load_tiktoken(path: &Path, added: &[(u32, String, bool)]) -> Result<tokenizers::Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !tiktoken::looks_like_tiktoken(&bytes) {
        return Err(Error::Unsupported(format!(
            "{}: SentencePiece tokenizer.model files are not supported; use tokenizer.json or a GGUF",
            path.display()
        )));
    }
    let ranks = tiktoken::parse_ranks(path, &bytes)?;
    let n = ranks.len() as u32;
    let from_config: Vec<String> = added
        .iter()
        .enumerate()
        .take_while(|(i, t)| t.0 == n + *i as u32)
        .map(|(_, t)| t.1.clone())
        .collect();
    let specials = if from_config.is_empty() {
        if ranks.len() != 128_000 {
            return Err(Error::Unsupported(format!(
                "{}: {} ranks and no added_tokens_decoder; only Meta's Llama 3 file is known",
                path.display(),
                ranks.len()
            )));
        }
        tiktoken::llama3_special_tokens()
    } else {
        from_config
    };
    tiktoken::build(&ranks, tiktoken::LLAMA3_PATTERN, &specials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values() {
        let cfg: Json = serde_json::json!({
            "bos_token": {"content": "<s>", "special": true},
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
        });
        assert_eq!(token_text(&cfg["bos_token"]), Some("<s>"));
        assert_eq!(
            chat_template(&cfg, Path::new("x")).unwrap().as_deref(),
            Some("D")
        );
        assert_eq!(ids(Some(&serde_json::json!([1, 2]))), [1, 2]);
        assert_eq!(ids(Some(&serde_json::json!(7))), [7]);
        let bad = serde_json::json!({"chat_template": 3});
        assert!(chat_template(&bad, Path::new("x")).is_err());
    }

    #[test]
    fn missing_dir_and_empty_dir_are_errors() {
        assert!(matches!(
            load_dir(Path::new("/nonexistent-dir")),
            Err(Error::Io { .. })
        ));
        let dir = std::env::temp_dir().join(format!("llama3-hf-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("no tokenizer.json"), "{err}");
        std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
