//! Pre-tokenizers named by GGUF `tokenizer.ggml.pre`, as llama.cpp's `llm_tokenizer_bpe`
//! (src/llama-vocab.cpp) defines them.
//!
//! llama.cpp applies a list of regexes one after the other (`unicode_regex_split`): each regex
//! splits every current piece into its matches and the text between them, and the byte-level
//! mapping comes last. That is `Sequence[Split(re, Isolated)..., ByteLevel(use_regex = false)]`
//! in `tokenizers` terms.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::tok_err;
use crate::{Error, Result};

/// GPT-2's pattern without the trailing `|\s+`: llama.cpp keeps unmatched text as pieces anyway.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3 pattern as llama.cpp spells it: `(?i:'s|...)` written out as `'[sS]` so that Unicode
/// case folding (e.g. `ſ` -> `s` in Oniguruma) cannot match more than llama.cpp does
/// (llama.cpp PR #6920).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: the Llama 3 pattern with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral Tekken: the original tokenizer.json pattern (llama.cpp rewrites the case classes with
/// lookaheads because std::regex lacks `\p{Lu}`; Oniguruma has them).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// BLOOM / Poro / GPT-3 Finnish.
const BLOOM: &str = r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+";

/// CJK ranges shared by the DeepSeek patterns.
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// Cased letters (Lu, Ll, Lt): llama.cpp spells this class as an explicit list of ranges taken
/// from DeepSeek's tokenizer.json; the Unicode categories say the same for the ranges it lists.
const DEEPSEEK_LLM_LATIN: &str = r"\s?[\p{Lu}\p{Ll}\p{Lt}]+";

const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

/// How llama.cpp pre-tokenizes and treats one `tokenizer.ggml.pre` value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreSpec {
    pub regexes: Vec<&'static str>,
    /// Emit a pre-token that is itself a vocabulary entry without running merges.
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the GGUF has no `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// llama.cpp drops the BOS id for this pre-tokenizer (`chatglm-bpe`).
    pub no_bos: bool,
}

impl PreSpec {
    fn new(regexes: &[&'static str]) -> Self {
        Self {
            regexes: regexes.to_vec(),
            ignore_merges: false,
            add_bos: false,
            no_bos: false,
        }
    }
}

/// The spec for `pre`; an unknown name is an error naming it (as llama.cpp refuses to load).
pub(crate) fn spec_for(pre: &str) -> Result<PreSpec> {
    let llama3 = PreSpec {
        ignore_merges: true,
        add_bos: true,
        ..PreSpec::new(&[LLAMA3])
    };
    Ok(match pre {
        // An empty or missing `pre` is llama.cpp's "default" (it warns that quality degrades).
        "" | "default" => {
            PreSpec::new(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"])
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => llama3,
        "dbrx" | "smaug-bpe" => PreSpec::new(&[LLAMA3]),
        "chatglm-bpe" => PreSpec {
            no_bos: true,
            ..PreSpec::new(&[LLAMA3])
        },
        "deepseek-llm" => PreSpec::new(&[
            r"[\r\n]",
            DEEPSEEK_LLM_LATIN,
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ]),
        "deepseek-coder" => PreSpec::new(&[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            DEEPSEEK_CJK,
            r"\p{N}",
        ]),
        "deepseek-v3" => PreSpec::new(&[
            r"\p{N}{1,3}",
            r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+",
            DEEPSEEK3_WORDS,
        ]),
        "falcon" => PreSpec::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            PreSpec::new(&[r"\p{N}", GPT2])
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en" | "jina-v2-es"
        | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" => {
            PreSpec::new(&[GPT2])
        }
        "qwen2" | "megrez" | "stablelm2" => PreSpec::new(&[QWEN2]),
        "poro-chat" | "bloom" | "gpt3-finnish" => PreSpec::new(&[BLOOM]),
        "viking" => PreSpec::new(&[BLOOM, r"\p{N}"]),
        "tekken" => PreSpec {
            ignore_merges: true,
            add_bos: true,
            ..PreSpec::new(&[TEKKEN])
        },
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer.ggml.pre = {other:?}: unknown pre-tokenizer"
            )))
        }
    })
}

/// `Sequence[Split(re, Isolated)..., ByteLevel(add_prefix_space = false, use_regex = false)]`.
pub(crate) fn byte_level_pre_tokenizer(regexes: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut seq = Vec::with_capacity(regexes.len() + 1);
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {re:?}: {}", tok_err(e))))?;
        seq.push(PreTokenizerWrapper::Split(split));
    }
    seq.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "default",
        "llama3",
        "llama-bpe",
        "dbrx",
        "smaug-bpe",
        "chatglm-bpe",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "starcoder",
        "refact",
        "smollm",
        "gpt-2",
        "mpt",
        "olmo",
        "qwen2",
        "stablelm2",
        "bloom",
        "viking",
        "tekken",
        "command-r",
    ];

    #[test]
    fn every_regex_compiles() {
        for name in NAMES {
            let spec = spec_for(name).unwrap();
            byte_level_pre_tokenizer(&spec.regexes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn unknown_pre_is_unsupported_and_named() {
        let err = spec_for("no-such-pre").unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)));
        assert!(err.to_string().contains("no-such-pre"));
    }
}
