//! Constrained decoding: output held to a JSON schema, a regex or a Lark grammar, through
//! `llguidance` (the engine llama.cpp, vLLM, SGLang and mistral.rs use). No grammar engine of
//! our own: this module gives llguidance our vocabulary's bytes and applies its token masks.
//!
//! ```text
//! Tokenizer ──(once: token bytes, trie, ParserFactory)──> GrammarEnv
//! Constraint ──compile──> Grammar (one per sequence; a Matcher)
//! per token: sample; the grammar allows it? keep : mask the raw logits, sample again; consume
//! ```
//!
//! The mask is computed only when the sampled token is rejected (as mistral.rs does): checking
//! one token is cheap, the full mask (V) is not. [`GrammarStats`] says where the time goes.
//! End tokens are allowed only where the grammar may end (llguidance's trie knows them).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON schema (llguidance's JSON schema support: objects, arrays, enums, bounds, refs...).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax) the whole output matches.
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
}

impl Constraint {
    /// From (kind, data): `json_schema` (data: the schema as JSON text), `json_object`, `regex`
    /// or `lark`; the form foreign callers (Python) pass.
    pub fn from_tagged(kind: &str, data: &str) -> Result<Self> {
        Ok(match kind {
            "json_schema" => Constraint::JsonSchema(
                serde_json::from_str(data)
                    .map_err(|e| Error::Grammar(format!("json_schema is not valid JSON: {e}")))?,
            ),
            "json_object" => Constraint::JsonObject,
            "regex" => Constraint::Regex(data.to_string()),
            "lark" => Constraint::Lark(data.to_string()),
            k => {
                return Err(Error::Grammar(format!(
                    "unknown constraint kind {k:?} (json_schema, json_object, regex, lark)"
                )))
            }
        })
    }

    /// OpenAI's `response_format`: `{"type": "text"}` (None), `{"type": "json_object"}`
    /// (llama.cpp and llama-cpp-python also take a `schema` there), `{"type": "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`. Errors name the field at fault.
    pub fn from_response_format(rf: &serde_json::Value) -> Result<Option<Self>> {
        let bad = |m: &str| Error::Input(format!("response_format{m}"));
        let kind = rf
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad(" needs a \"type\": text, json_object or json_schema"))?;
        let at = |field: &str, v: &serde_json::Value| {
            Self::from_schema(v).map_err(|e| Error::Input(format!("response_format.{field}: {e}")))
        };
        match kind {
            "text" => Ok(None),
            "json_object" => match rf.get("schema") {
                Some(s) => at("schema", s).map(Some),
                None => Ok(Some(Constraint::JsonObject)),
            },
            "json_schema" => {
                let s = rf
                    .get("json_schema")
                    .ok_or_else(|| bad(" of type json_schema needs a \"json_schema\" object"))?
                    .get("schema")
                    .ok_or_else(|| bad(".json_schema needs a \"schema\""))?;
                at("json_schema.schema", s).map(Some)
            }
            other => Err(bad(&format!(
                " type {other:?} is not text, json_object or json_schema"
            ))),
        }
    }

    /// A JSON schema given as an object (or true/false) or as a string holding one.
    pub fn from_schema(v: &serde_json::Value) -> Result<Self> {
        let v = match v {
            serde_json::Value::String(s) => serde_json::from_str(s)
                .map_err(|e| Error::Input(format!("the schema is not valid JSON: {e}")))?,
            v => v.clone(),
        };
        if !v.is_object() && !v.is_boolean() {
            return Err(Error::Input(format!(
                "a JSON schema is an object (or true/false), not {v}"
            )));
        }
        Ok(Constraint::JsonSchema(v))
    }

    /// The (kind, data) of [`Self::from_tagged`].
    pub fn to_tagged(&self) -> (&'static str, String) {
        match self {
            Constraint::JsonSchema(v) => ("json_schema", v.to_string()),
            Constraint::JsonObject => ("json_object", String::new()),
            Constraint::Regex(r) => ("regex", r.clone()),
            Constraint::Lark(s) => ("lark", s.clone()),
        }
    }

    fn to_llguidance(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonSchema(v) => {
                if !v.is_object() && !v.is_boolean() {
                    return Err(Error::Grammar(format!(
                        "a JSON schema is an object (or true/false), not {v}"
                    )));
                }
                TopLevelGrammar::from_json_schema(bounded_whitespace(v.clone()))
            }
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(bounded_whitespace(
                serde_json::json!({"type": "object"}),
            )),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(src) => {
                if src.contains("::=") {
                    return Err(Error::Grammar(
                        "this looks like a GBNF grammar (`::=`); grammars are in llguidance's \
                         Lark syntax (`rule: ...`); llguidance's gbnf_to_lark.py converts GBNF"
                            .into(),
                    ));
                }
                TopLevelGrammar::from_lark(src.clone())
            }
        })
    }
}

/// Whitespace between JSON tokens as llama.cpp's schema grammars allow it (`space ::= | " " |
/// "\n" [ \t]{0,20}`): llguidance's default (`[ \t\n\r]+`) lets a small model write blank
/// lines until `max_tokens`. A schema's own `x-guidance` options win.
pub(crate) fn bounded_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_pattern": "\\x20|\\x0A[\\x20\\x09]{0,20}"}),
        );
    }
    schema
}

/// Our vocabulary as llguidance sees it: each token's bytes (special tokens behind 0xFF) in a
/// trie, and our tokenizer for the text llguidance must tokenize itself.
struct Env {
    trie: TokTrie,
    /// The `tokenizers` tokenizer, special tokens read as text.
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            match self.tokenizer.encode_fast(s, false) {
                Ok(e) => e.get_ids().to_vec(),
                // Text our tokenizer refuses is left to the trie's greedy tokenization.
                Err(_) => self.trie.greedy_tokenize(s.as_bytes()),
            }
        })
    }
}

/// One tokenizer's grammar compiler, built on first use (the trie and llguidance's token
/// slices take a moment for a large vocabulary) and shared by every sequence.
#[derive(Default)]
pub(crate) struct GrammarEnv(OnceLock<std::result::Result<Arc<ParserFactory>, String>>);

impl std::fmt::Debug for GrammarEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0.get() {
            None => "not built",
            Some(Ok(_)) => "built",
            Some(Err(_)) => "failed",
        };
        write!(f, "GrammarEnv({state})")
    }
}

impl GrammarEnv {
    fn factory(&self, tokenizer: &Tokenizer) -> Result<Arc<ParserFactory>> {
        self.0
            .get_or_init(|| {
                build_factory(tokenizer)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| Error::Grammar(e.trim_start_matches("grammar: ").to_string()))
    }
}

/// Each token's bytes, as llguidance reads them from `tokenizer.json` (byte-level BPE, or
/// SentencePiece with byte fallback); special tokens are 0xFF followed by their text, ids no
/// token has are 0xFF `<[id]>`.
pub fn vocabulary_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>> {
    let inner = tokenizer.inner();
    let json = inner.to_string(false).map_err(grammar_err)?;
    let json: serde_json::Value = serde_json::from_str(&json).map_err(grammar_err)?;
    // llguidance asserts on malformed byte tokens: keep a panic there from taking the caller
    // down.
    let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
        .map_err(|_| Error::Grammar("the vocabulary has a malformed byte token".into()))?
        .map_err(|e| {
            Error::Grammar(format!(
                "constrained decoding needs a byte-level or byte-fallback vocabulary: {e}"
            ))
        })?;
    let mut words = words;
    words.resize(inner.get_vocab_size(true).max(words.len()), Vec::new());
    for (id, w) in words.iter_mut().enumerate() {
        if w.is_empty() {
            w.push(TokTrie::SPECIAL_TOKEN_MARKER);
            w.extend_from_slice(format!("<[{id}]>").as_bytes());
        }
    }
    Ok(words)
}

fn build_factory(tokenizer: &Tokenizer) -> Result<ParserFactory> {
    let words = vocabulary_bytes(tokenizer)?;
    let vocab = words.len();
    let ends: Vec<u32> = tokenizer.end_ids().to_vec();
    let eos = ends.first().copied().unwrap_or(0);
    let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words);
    let trie = match ends.is_empty() {
        true => trie,
        false => trie.with_eos_tokens(&ends),
    };
    let env: TokEnv = Arc::new(Env {
        trie,
        tokenizer: without_prepended_space(tokenizer.plain().clone()).map_err(Error::Grammar)?,
    });
    let mut factory = ParserFactory::new_simple(&env).map_err(grammar_err)?;
    factory.quiet();
    Ok(factory)
}

/// `tokenizer` without the space SentencePiece vocabularies put before a text (a `Prepend`
/// normalizer, a `Metaspace` pre-tokenizer that prepends): llguidance tokenizes pieces in the
/// middle of the output, which must not gain a space.
fn without_prepended_space(
    mut tokenizer: tokenizers::Tokenizer,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    use tokenizers::normalizers::Sequence as NormSeq;
    use tokenizers::pre_tokenizers::metaspace::PrependScheme;
    use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
    use tokenizers::{NormalizerWrapper as N, PreTokenizerWrapper as P};
    fn norm(n: N) -> Option<N> {
        match n {
            N::Prepend(_) => None,
            N::Sequence(seq) => {
                let kept: Vec<N> = seq.as_ref().iter().cloned().filter_map(norm).collect();
                (!kept.is_empty()).then(|| N::Sequence(NormSeq::new(kept)))
            }
            n => Some(n),
        }
    }
    fn pre(p: P) -> P {
        match p {
            P::Metaspace(mut m) => {
                m.prepend_scheme = PrependScheme::Never;
                P::Metaspace(m)
            }
            P::Sequence(seq) => {
                P::Sequence(PreSeq::new(seq.as_ref().iter().cloned().map(pre).collect()))
            }
            p => p,
        }
    }
    let n = tokenizer.get_normalizer().cloned().and_then(norm);
    tokenizer.with_normalizer(n).map_err(|e| e.to_string())?;
    if let Some(p) = tokenizer.get_pre_tokenizer().cloned() {
        tokenizer.with_pre_tokenizer(Some(pre(p)));
    }
    Ok(tokenizer)
}

/// Where one sequence's grammar time went.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GrammarStats {
    /// Tokens checked against the grammar.
    pub tokens: usize,
    /// Sampled tokens the grammar refused (each cost a full mask and a second draw).
    pub masks: usize,
    /// Time checking sampled tokens and advancing the parser.
    pub check: Duration,
    /// Time computing and applying full masks.
    pub mask: Duration,
}

/// One sequence's constraint: the parser state after the tokens generated so far.
pub struct Grammar {
    matcher: Matcher,
    vocab: usize,
    stats: GrammarStats,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Clone for Grammar {
    /// A fresh copy of the parser state (llguidance's deep clone).
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            vocab: self.vocab,
            stats: self.stats,
        }
    }
}

fn grammar_err(e: impl std::fmt::Display) -> Error {
    Error::Grammar(e.to_string())
}

impl Grammar {
    /// Compiles `constraint` for `tokenizer`'s vocabulary. A bad schema or grammar is an
    /// [`Error::Grammar`] that says what and where.
    pub fn new(tokenizer: &Tokenizer, constraint: &Constraint) -> Result<Self> {
        let factory = tokenizer.grammar_env().factory(tokenizer)?;
        let parser = factory
            .create_parser(constraint.to_llguidance()?)
            .map_err(grammar_err)?;
        let vocab = factory.tok_env().tok_trie().vocab_size();
        Ok(Self {
            matcher: Matcher::new(Ok(parser)),
            vocab,
            stats: GrammarStats::default(),
        })
    }

    /// Whether `token` may come next.
    pub fn allows(&mut self, token: u32) -> Result<bool> {
        let t = Instant::now();
        let ok = (token as usize) < self.vocab
            && self
                .matcher
                .validate_tokens(&[token])
                .map_err(grammar_err)?
                == 1;
        self.stats.check += t.elapsed();
        Ok(ok)
    }

    /// Sets every token the grammar forbids next to -inf in `logits` (V).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let t = Instant::now();
        let allowed = self.matcher.compute_mask().map_err(grammar_err)?;
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= self.vocab || !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        self.stats.masks += 1;
        self.stats.mask += t.elapsed();
        Ok(())
    }

    /// Advances past `token` (which [`Self::allows`]).
    pub fn consume(&mut self, token: u32) -> Result<()> {
        let t = Instant::now();
        self.matcher.consume_token(token).map_err(grammar_err)?;
        self.stats.tokens += 1;
        self.stats.check += t.elapsed();
        Ok(())
    }

    /// The grammar is complete and nothing may follow but an end token.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    pub fn stats(&self) -> GrammarStats {
        self.stats
    }
}
