//! Meta's Llama 3 `tokenizer.model`: tiktoken "mergeable ranks", one `base64(token bytes) rank`
//! per line, no special tokens and no merges in the file.
//!
//! Converted as HF transformers' `TikTokenConverter` (convert_slow_tokenizer.py) does: vocabulary
//! = the ranks with bytes mapped through GPT-2's `bytes_to_unicode`; merges = every split of a
//! token into two tokens, ordered by the rank of the merged token, then by the ranks of the two
//! halves; `ignore_merges` on (a pre-token that is itself a token is emitted as is, as tiktoken
//! does). The special tokens are those of Meta's llama3 `tokenizer.py`.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{tok_err, Meta};
use crate::{Error, Result};

/// Llama 3 pre-tokenizer regex (Meta's tokenizer.py `pat_str`, HF tokenizer.json `Split`).
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Number of special-token slots after the ranks (Meta: `num_reserved_special_tokens = 256`).
const NUM_SPECIAL: usize = 256;
/// Ids of the Llama 3 BOS and end-of-generation tokens for the 128,000-rank file.
const BOS_ID: u32 = 128_000;
const END_OF_TEXT_ID: u32 = 128_001;
const EOM_ID: u32 = 128_008;
const EOT_ID: u32 = 128_009;

/// The 256 Llama 3.1/3.2 special tokens, in id order from 128000 (Meta llama-models
/// `llama3/tokenizer.py`; the same list as HF's convert_llama_weights_to_hf.py for "3.1"/"3.2").
pub fn llama3_special_tokens() -> Vec<String> {
    let named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ];
    let mut out: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    out.extend(
        (3..NUM_SPECIAL - named.len() + 3).map(|i| format!("<|reserved_special_token_{i}|>")),
    );
    out
}

/// GPT-2's reversible byte -> char map (openai/gpt-2 encoder.py `bytes_to_unicode`): printable
/// Latin-1 bytes map to themselves, the others to U+0100.. in byte order.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        map[usize::from(b)] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    map
}

/// True if the first line reads `base64 integer`.
pub(crate) fn looks_like_tiktoken(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = line.split_whitespace();
    matches!((parts.next(), parts.next(), parts.next()), (Some(t), Some(r), None)
        if r.parse::<u32>().is_ok()
            && t.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')))
}

/// Token bytes indexed by rank; ranks must be exactly 0..n.
pub(crate) fn parse_ranks(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::format(path, e.to_string()))?;
    let mut ranks: Vec<Option<Vec<u8>>> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |msg: &str| Error::format(path, format!("line {}: {msg}: {line:?}", n + 1));
        let mut parts = line.split_whitespace();
        let (Some(tok), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `base64 rank`"));
        };
        let tok = base64::engine::general_purpose::STANDARD
            .decode(tok)
            .map_err(|_| bad("bad base64"))?;
        let rank: usize = rank.parse().map_err(|_| bad("bad rank"))?;
        if rank > 10_000_000 {
            return Err(bad("rank too large"));
        }
        if ranks.len() <= rank {
            ranks.resize(rank + 1, None);
        }
        if ranks[rank].replace(tok).is_some() {
            return Err(bad("duplicate rank"));
        }
    }
    if ranks.is_empty() {
        return Err(Error::format(path, "empty tiktoken file"));
    }
    ranks
        .into_iter()
        .enumerate()
        .map(|(r, t)| t.ok_or_else(|| Error::format(path, format!("rank {r} is missing"))))
        .collect()
}

/// Vocabulary and merges as HF's `TikTokenConverter.extract_vocab_merges_from_model`.
pub(crate) fn vocab_and_merges(ranks: &[Vec<u8>]) -> (Vocab, Merges) {
    let b2u = bytes_to_unicode();
    let to_str = |b: &[u8]| -> String { b.iter().map(|&x| b2u[usize::from(x)]).collect() };
    let rank_of: HashMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let mut vocab = Vocab::default();
    let mut merges = Vec::new();
    // Ranks ascend, so appending per token keeps merges sorted by the merged token's rank.
    for (rank, token) in ranks.iter().enumerate() {
        vocab.insert(to_str(token), rank as u32);
        let mut local: Vec<(u32, u32, usize)> = (1..token.len())
            .filter_map(|i| {
                let l = rank_of.get(&token[..i])?;
                let r = rank_of.get(&token[i..])?;
                Some((*l, *r, i))
            })
            .collect();
        local.sort_unstable();
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, i)| (to_str(&token[..i]), to_str(&token[i..]))),
        );
    }
    (vocab, merges)
}

/// Byte-level BPE from ranks with `pattern` as pre-tokenizer and `specials` added after the ranks.
pub(crate) fn build(
    ranks: &[Vec<u8>],
    pattern: &str,
    specials: &[String],
) -> Result<tokenizers::Tokenizer> {
    let (vocab, merges) = vocab_and_merges(ranks);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(tok_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(s.as_str(), true)))
        .map_err(tok_err)?;
    Ok(tok)
}

/// Load Meta's Llama 3 `tokenizer.model` with the Llama 3.1/3.2 special tokens.
pub(crate) fn load_llama3(path: &Path, bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
    let ranks = parse_ranks(path, bytes)?;
    if ranks.len() != BOS_ID as usize {
        return Err(Error::Unsupported(format!(
            "{}: {} ranks; only Meta's Llama 3 tiktoken file (128000 ranks) is known",
            path.display(),
            ranks.len()
        )));
    }
    build(&ranks, LLAMA3_PATTERN, &llama3_special_tokens())
}

/// Llama 3 BOS and end tokens (Meta's generation: stop on `<|end_of_text|>`, `<|eom_id|>`,
/// `<|eot_id|>`; HF generation_config.json of the Instruct models lists the same three ids).
pub(crate) fn llama3_meta() -> Meta {
    Meta {
        bos_id: Some(BOS_ID),
        eos_id: Some(END_OF_TEXT_ID),
        add_bos: true,
        add_eos: false,
        end_ids: vec![END_OF_TEXT_ID, EOM_ID, EOT_ID],
        chat_template: None,
        pad_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        let m = bytes_to_unicode();
        assert_eq!(m[usize::from(b' ')], 'Ġ');
        assert_eq!(m[usize::from(b'\n')], 'Ċ');
        assert_eq!(m[usize::from(b'\t')], 'ĉ');
        assert_eq!(m[usize::from(b'A')], 'A');
        assert_eq!(m[0xAD], 'Ń');
    }

    #[test]
    fn special_tokens_layout() {
        let s = llama3_special_tokens();
        assert_eq!(s.len(), 256);
        assert_eq!(s[9], "<|eot_id|>");
        assert_eq!(s[11], "<|reserved_special_token_3|>");
        assert_eq!(s[255], "<|reserved_special_token_247|>");
    }

    #[test]
    fn merges_from_ranks() {
        // a, b, c, ab, bc, abc: "abc" splits as (a, bc) and (ab, c); ordered by halves' ranks.
        let ranks: Vec<Vec<u8>> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let (_, merges) = vocab_and_merges(&ranks);
        let m: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(m, [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn bad_lines_are_format_errors() {
        let p = Path::new("tokenizer.model");
        assert!(parse_ranks(p, b"IQ== 0\nIg== 2\n").is_err()); // rank 1 missing
        assert!(parse_ranks(p, b"IQ== 0\nIQ== 0\n").is_err());
        assert!(parse_ranks(p, b"!!!! 0\n").is_err());
        assert_eq!(parse_ranks(p, b"IQ== 0\nIg== 1\n").unwrap().len(), 2);
    }
}
