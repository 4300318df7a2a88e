//! Rebuild a tokenizer from GGUF metadata so that it tokenizes as llama.cpp does
//! (src/llama-vocab.cpp, `llama_vocab::impl::load`).
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE from `tokens` + `merges` (rank = position),
//!   pre-tokenized as `tokenizer.ggml.pre` names ([`super::pretok`]).
//! - `tokenizer.ggml.model = llama`: SentencePiece BPE. llama.cpp merges the adjacent pair whose
//!   concatenation is the vocabulary entry of highest score; HF's `LlamaConverter` gets the same
//!   from a BPE whose merges are all two-piece splits of every entry, ordered by that entry's
//!   score (`generate_merges` in convert_slow_tokenizer.py). Byte fallback (`<0xNN>`), `▁` for
//!   spaces, a space prefix (`add_space_prefix`, default true); decoding turns `▁` back into
//!   spaces, fuses bytes and strips the one leading space.
//!
//! Control (3) and unknown (2) tokens become special added tokens (matched only with
//! `parse_special`); user-defined (4) ones become normal added tokens (always matched), as
//! llama.cpp's `tokenizer_st_partition` does.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use super::pretok::{byte_level_pre_tokenizer, spec_for};
use super::{tok_err, Meta};
use crate::{Error, Result};

type Metadata = HashMap<String, Value>;

/// GGUF `tokenizer.ggml.token_type` values (llama.h `llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's space marker U+2581.
const SPACE: &str = "\u{2581}";

fn int(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn bad(key: &str, what: &str) -> Error {
    Error::Tokenizer(format!("GGUF metadata {key}: expected {what}"))
}

fn get_str<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(key, "a string")),
    }
}

fn get_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => int(v)
            .map(|i| Some(i != 0))
            .ok_or_else(|| bad(key, "a bool")),
    }
}

/// A token id key; out-of-range ids are dropped, as llama.cpp keeps its default then.
fn get_id(md: &Metadata, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = int(v).ok_or_else(|| bad(key, "an integer"))?;
            Ok(u32::try_from(id).ok().filter(|&i| (i as usize) < n_vocab))
        }
    }
}

fn get_array<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(bad(key, "an array")),
    }
}

fn strings(md: &Metadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(arr) = get_array(md, key)? else {
        return Ok(None);
    };
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(key, "an array of strings")),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The tokenizer and its metadata from GGUF `tokenizer.*` keys.
pub(crate) fn build(md: &Metadata) -> Result<(tokenizers::Tokenizer, Meta)> {
    let model = get_str(md, "tokenizer.ggml.model")?
        .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.model".into()))?;
    let mut tokens = strings(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    if tokens.is_empty() {
        return Err(Error::Tokenizer(
            "GGUF tokenizer.ggml.tokens is empty".into(),
        ));
    }
    let n = tokens.len();
    // llama.cpp renames empty tokens so that every id keeps a distinct text.
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[EMPTY_{i}]");
        }
    }
    let types: Vec<i64> = match get_array(md, "tokenizer.ggml.token_type")? {
        Some(a) if a.len() == n => a
            .iter()
            .map(|v| int(v).ok_or_else(|| bad("tokenizer.ggml.token_type", "integers")))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("tokenizer.ggml.token_type", "one entry per token")),
        None => vec![1; n],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != n {
        return Err(Error::Tokenizer(
            "GGUF tokenizer.ggml.tokens holds duplicate tokens".into(),
        ));
    }

    let id = |key: &str| get_id(md, key, n);
    let (mut tok, mut meta) = match model {
        "gpt2" => {
            let pre = get_str(md, "tokenizer.ggml.pre")?.unwrap_or("");
            if pre.is_empty() {
                tracing::warn!("GGUF has no tokenizer.ggml.pre: using llama.cpp's 'default'");
            }
            let spec = spec_for(pre)?;
            let merges = strings(md, "tokenizer.ggml.merges")?
                .ok_or_else(|| Error::Tokenizer("GGUF gpt2 tokenizer has no merges".into()))?;
            let tok = byte_level_bpe(vocab, &merges, &spec)?;
            let meta = Meta {
                bos_id: if spec.no_bos {
                    None
                } else {
                    id("tokenizer.ggml.bos_token_id")?
                },
                eos_id: id("tokenizer.ggml.eos_token_id")?,
                add_bos: spec.add_bos,
                ..Meta::default()
            };
            (tok, meta)
        }
        "llama" => {
            let scores = match get_array(md, "tokenizer.ggml.scores")? {
                Some(a) if a.len() == n => a
                    .iter()
                    .map(|v| match v {
                        Value::F32(x) => Ok(*x),
                        _ => Err(bad("tokenizer.ggml.scores", "f32 scores")),
                    })
                    .collect::<Result<Vec<f32>>>()?,
                _ => return Err(bad("tokenizer.ggml.scores", "one f32 score per token")),
            };
            let unk = id("tokenizer.ggml.unknown_token_id")?.or(Some(0));
            let space_prefix = get_bool(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let tok = sentencepiece_bpe(&tokens, &scores, vocab, unk, space_prefix)?;
            // llama.cpp defaults for SPM: BOS 1, EOS 2, add BOS.
            let meta = Meta {
                bos_id: id("tokenizer.ggml.bos_token_id")?.or(Some(1).filter(|_| n > 2)),
                eos_id: id("tokenizer.ggml.eos_token_id")?.or(Some(2).filter(|_| n > 2)),
                add_bos: true,
                ..Meta::default()
            };
            (tok, meta)
        }
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer.ggml.model = {other:?} (supported: llama, gpt2)"
            )))
        }
    };

    add_typed_tokens(&mut tok, &tokens, &types)?;
    if let Some(b) = get_bool(md, "tokenizer.ggml.add_bos_token")? {
        meta.add_bos = b;
    }
    meta.add_eos = get_bool(md, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        meta.end_ids.extend(id(key)?);
    }
    meta.chat_template = get_str(md, "tokenizer.chat_template")?.map(str::to_string);
    meta.pad_id = id("tokenizer.ggml.padding_token_id")?;
    Ok((tok, meta))
}

/// Control/unknown tokens as special added tokens, user-defined ones as normal added tokens.
fn add_typed_tokens(
    tok: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i64],
) -> Result<()> {
    let added = |want: &[i64], special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, t)| want.contains(t))
            .map(|(s, _)| AddedToken::from(s.as_str(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(added(&[TYPE_CONTROL, TYPE_UNKNOWN], true))
        .map_err(tok_err)?;
    tok.add_tokens(added(&[TYPE_USER_DEFINED], false))
        .map_err(tok_err)?;
    Ok(())
}

/// Byte-level BPE: merges ranked by position. llama.cpp splits a merge at the first space after
/// its first byte; merges naming tokens outside the vocabulary can never fire and are dropped.
fn byte_level_bpe(
    vocab: Vocab,
    merges: &[String],
    spec: &super::pretok::PreSpec,
) -> Result<tokenizers::Tokenizer> {
    let pairs: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            let pos = m.bytes().skip(1).position(|b| b == b' ')? + 1;
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let ok = vocab.contains_key(a)
                && vocab.contains_key(b)
                && vocab.contains_key(&format!("{a}{b}"));
            ok.then(|| (a.to_string(), b.to_string()))
        })
        .collect();
    if pairs.len() < merges.len() {
        tracing::debug!(
            "dropped {} GGUF merges outside the vocabulary",
            merges.len() - pairs.len()
        );
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(byte_level_pre_tokenizer(&spec.regexes)?));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tok)
}

/// Merges of a SentencePiece BPE vocabulary as HF's `generate_merges(vocab, vocab_scores)`:
/// every split of every entry into two entries, per entry ordered by the halves' ids, then
/// (stable) by the entry's score, highest first.
pub(crate) fn spm_merges(
    tokens: &[String],
    scores: &[f32],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        let mut local: Vec<(u32, u32, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let l = vocab.get(&piece[..at])?;
                let r = vocab.get(&piece[at..])?;
                Some((*l, *r, at))
            })
            .collect();
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r, at)| (scores[i], l, r, i, at)));
    }
    // Stable sort: equal scores keep vocabulary order, as Python's sorted() does.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, _, _, i, at)| (tokens[i][..at].to_string(), tokens[i][at..].to_string()))
        .collect()
}

/// SentencePiece BPE as HF's `LlamaConverter` (legacy) builds it.
fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f32],
    vocab: Vocab,
    unk: Option<u32>,
    space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let merges = spm_merges(tokens, scores, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk.and_then(|u| tokens.get(u as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let mut tok = tokenizers::Tokenizer::new(builder.build().map_err(tok_err)?);

    let mut norm = Vec::new();
    if space_prefix {
        norm.push(NormalizerWrapper::Prepend(Prepend::new(SPACE.to_string())));
    }
    norm.push(NormalizerWrapper::Replace(
        Replace::new(" ", SPACE).map_err(tok_err)?,
    ));
    tok.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(
        norm,
    ))))
    .map_err(tok_err)?;

    let mut dec = vec![
        DecoderWrapper::Replace(Replace::new(SPACE, " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        dec.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(dec))));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: Vec<(&str, Value)>) -> Metadata {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    #[test]
    fn spm_merges_follow_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .map(String::from)
            .to_vec();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = spm_merges(&tokens, &scores, &vocab);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn unknown_model_and_pre_are_unsupported() {
        let err = build(&md(vec![
            ("tokenizer.ggml.model", Value::String("t5".into())),
            ("tokenizer.ggml.tokens", strs(&["a"])),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported(_)) && err.to_string().contains("t5"),
            "{err}"
        );

        let err = build(&md(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("mystery".into())),
            ("tokenizer.ggml.tokens", strs(&["a", "b", "ab"])),
            ("tokenizer.ggml.merges", strs(&["a b"])),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("mystery"), "{err}");
    }

    #[test]
    fn missing_or_mistyped_keys_are_errors() {
        assert!(build(&md(vec![])).is_err());
        let err = build(&md(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", Value::U32(3)),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
        let err = build(&md(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strs(&["a", "b"])),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("scores"), "{err}");
    }

    #[test]
    fn tiny_gpt2_vocab() {
        let (tok, meta) = build(&md(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
            (
                "tokenizer.ggml.tokens",
                strs(&["<s>", "a", "b", "ab", "Ġ", "Ġab"]),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array([3, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
            ),
            ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab", "x y"])),
            ("tokenizer.ggml.bos_token_id", Value::U32(0)),
            ("tokenizer.ggml.eos_token_id", Value::U32(99)),
        ]))
        .unwrap();
        assert_eq!(meta.bos_id, Some(0));
        assert_eq!(meta.eos_id, None, "out-of-range id is dropped");
        let ids = tok.encode("ab ab<s>", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [3, 5, 0]);
    }
}
