//! Tokenizers and chat templates.
//!
//! One [`Tokenizer`] type, whatever the source of the vocabulary:
//! - a Hugging Face `tokenizer.json` (the `tokenizers` crate reads it as is), alone or in a model
//!   directory with `tokenizer_config.json`, `generation_config.json`, `config.json` ([`hf`]);
//! - Meta's Llama 3 `tokenizer.model` (tiktoken ranks), converted the way HF's
//!   `TikTokenConverter` does ([`tiktoken`]);
//! - GGUF metadata (`tokenizer.ggml.*`), rebuilt to tokenize like llama.cpp's `llama-vocab.cpp`
//!   ([`gguf`], [`pretok`]).
//!
//! In every case the work is done by a `tokenizers::Tokenizer`; this wrapper adds what the
//! generation loop needs: BOS/EOS policy, the set of end-of-generation ids, the chat template,
//! and a streaming detokenizer ([`DecodeStream`]) that never splits a UTF-8 character.
//!
//! Special tokens are prepended/appended here, never by the `tokenizers` post-processor, so that a
//! model's `add_bos_token` setting (GGUF metadata or `tokenizer_config.json`) is the one rule.

mod chat;
mod export;
mod gguf;
mod hf;
mod pretok;
mod stream;
mod strftime;
mod tiktoken;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;

pub use chat::{ChatTemplate, Message};
pub use export::gguf_metadata_from_hf_dir;
pub use stream::DecodeStream;
pub use tiktoken::llama3_special_tokens;

use crate::{Error, Result};

/// Token texts llama.cpp treats as end of generation whatever the metadata says
/// (llama-vocab.cpp, "maintain a list of tokens that cause end-of-generation").
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];

/// A text tokenizer with the metadata generation needs (BOS/EOS, end ids, chat template).
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special tokens read as plain text (`parse_special = false`); cloned on first
    /// use because `tokenizers` keeps that switch on the tokenizer, not on the call.
    plain: OnceLock<tokenizers::Tokenizer>,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    end_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    /// The grammar compiler for constrained decoding, built on first use.
    grammar: crate::grammar::GrammarEnv,
}

/// What a loader found besides the `tokenizers::Tokenizer` itself.
#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Extra end-of-generation ids (eot, eom, generation_config's list...).
    pub end_ids: Vec<u32>,
    pub chat_template: Option<String>,
    pub pad_id: Option<u32>,
}

pub(crate) fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Assemble from a loaded `tokenizers::Tokenizer` and its metadata.
    pub(crate) fn assemble(mut inner: tokenizers::Tokenizer, meta: Meta) -> Result<Self> {
        // STYLE: never truncate a prompt silently; tokenizer.json may ask for it.
        inner.with_truncation(None).map_err(tok_err)?;
        inner.with_padding(None);
        let named = |id: Option<u32>| id.and_then(|id| inner.id_to_token(id).map(|t| (id, t)));
        let bos = named(meta.bos_id);
        let eos = named(meta.eos_id);
        let mut end_ids: Vec<u32> = meta.end_ids.clone();
        end_ids.extend(eos.as_ref().map(|e| e.0));
        end_ids.extend(EOG_TEXTS.iter().filter_map(|t| inner.token_to_id(t)));
        end_ids.sort_unstable();
        end_ids.dedup();
        let chat_template = match meta.chat_template.as_deref() {
            Some(src) => Some(ChatTemplate::new(
                src,
                bos.as_ref().map(|b| b.1.as_str()),
                eos.as_ref().map(|e| e.1.as_str()),
            )?),
            None => None,
        };
        Ok(Self {
            add_bos: meta.add_bos && bos.is_some(),
            add_eos: meta.add_eos && eos.is_some(),
            pad_id: meta.pad_id.filter(|&p| inner.id_to_token(p).is_some()),
            inner,
            plain: OnceLock::new(),
            bos,
            eos,
            end_ids,
            chat_template,
            grammar: Default::default(),
        })
    }

    /// `tokenizer.json` (HF), Meta's Llama 3 `tokenizer.model` (tiktoken ranks) or a `.gguf`;
    /// picked by content, not only by name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (inner, meta) = load_file_bytes(path, &bytes)?;
        Self::assemble(inner, meta)
    }

    /// HF model directory: `tokenizer.json` (or `tokenizer.model`), `tokenizer_config.json`
    /// (`bos_token`, `eos_token`, `add_bos_token`, `chat_template`, added tokens),
    /// `chat_template.jinja` if present, and the `eos_token_id` (int or list) of
    /// `generation_config.json` / `config.json` as end tokens.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let (inner, meta) = hf::load_dir(dir)?;
        Self::assemble(inner, meta)
    }

    /// Rebuild from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let (inner, meta) = gguf::build(metadata)?;
        Self::assemble(inner, meta)
    }

    pub(crate) fn grammar_env(&self) -> &crate::grammar::GrammarEnv {
        &self.grammar
    }

    pub(crate) fn plain(&self) -> &tokenizers::Tokenizer {
        self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            // Special (control) added tokens become text; user-defined added tokens still
            // match, as llama.cpp's tokenizer_st_partition does with parse_special = false.
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// Token ids of `text`.
    ///
    /// `add_bos`: add the model's special tokens if it asks for them (`add_bos_token`, and
    /// `add_eos_token` which appends EOS, as llama.cpp's `add_special`). `parse_special`:
    /// recognise special/control token text like `<|im_start|>` in `text`; false treats it as
    /// plain text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special {
            &self.inner
        } else {
            self.plain()
        };
        let enc = tok.encode_fast(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_bos && self.add_bos {
            ids.extend(self.bos_id());
        }
        ids.extend_from_slice(enc.get_ids());
        if add_bos && self.add_eos {
            ids.extend(self.eos_id());
        }
        Ok(ids)
    }

    /// Text of `ids`; `skip_special` drops special tokens (BOS, `<|eot_id|>`...).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is not in the vocabulary (size {})",
                self.vocab_size()
            )));
        }
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The raw vocabulary string of `id` (byte-level `Ġ`, SentencePiece `▁`, `<0x0A>`...).
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a raw vocabulary string.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.0)
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.0)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|b| b.1.as_str())
    }

    /// Padding id for batches, if the model names one (GGUF `tokenizer.ggml.padding_token_id`,
    /// `pad_token` / `pad_token_id` of an HF directory).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|e| e.1.as_str())
    }

    /// Whether `encode(.., add_bos = true, ..)` prepends BOS for this model.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Every end-of-generation id, sorted: EOS, eot, eom and the tokens llama.cpp stops on by
    /// name (`<|eot_id|>`, `<|im_end|>`, `<|endoftext|>`...).
    pub fn end_ids(&self) -> &[u32] {
        &self.end_ids
    }

    pub fn is_end(&self, id: u32) -> bool {
        self.end_ids.binary_search(&id).is_ok()
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Replace (or set) the chat template, e.g. from a `--chat-template` file.
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        self.chat_template = Some(ChatTemplate::new(
            source,
            self.bos_token(),
            self.eos_token(),
        )?);
        Ok(())
    }

    /// Streaming detokenizer that shows special tokens (as llama.cpp's `token_to_piece` with
    /// `special = true`); see [`Tokenizer::decode_stream_with`].
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream::new(self, false)
    }

    /// Streaming detokenizer; `skip_special` drops special tokens from the text.
    pub fn decode_stream_with(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special)
    }

    /// Render `messages` with the chat template and encode the result, special tokens parsed.
    /// BOS is added only if the model wants it and the rendered text does not already start
    /// with it (STYLE: "a rendered chat template already holds BOS").
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode_chat_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`Self::encode_chat`] for any serialisable message list (tool calls, tool results) with
    /// extra template variables (`tools`...).
    pub fn encode_chat_with<M: serde::Serialize + ?Sized>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::Template("this model has no chat template".to_string()))?;
        let text = template.render_with(messages, add_generation_prompt, extra)?;
        let has_bos = self.bos_token().is_some_and(|b| text.starts_with(b));
        self.encode_rendered(&text, !has_bos)
    }

    /// Encode already rendered chat text: special tokens parsed, BOS only if asked and wanted.
    pub fn encode_rendered(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, false, true)?;
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id() {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    /// The wrapped `tokenizers::Tokenizer`, for what this type does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Pick the loader by content: JSON object, GGUF magic, or tiktoken `base64 rank` lines.
fn load_file_bytes(path: &Path, bytes: &[u8]) -> Result<(tokenizers::Tokenizer, Meta)> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        let meta = hf::meta_from_tokenizer(&inner);
        return Ok((inner, meta));
    }
    if bytes.starts_with(b"GGUF") {
        let mut cursor = std::io::Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut cursor)
            .map_err(|e| Error::format(path, format!("bad GGUF header: {e}")))?;
        return gguf::build(&content.metadata);
    }
    if tiktoken::looks_like_tiktoken(bytes) {
        let inner = tiktoken::load_llama3(path, bytes)?;
        return Ok((inner, tiktoken::llama3_meta()));
    }
    Err(Error::format(
        path,
        "not a tokenizer.json, a GGUF or a tiktoken tokenizer.model (SentencePiece protobuf \
         tokenizer.model files are not supported: use tokenizer.json or a GGUF)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/tokenizer.json"));
    }

    #[test]
    fn corrupt_files_are_format_errors() {
        let dir = std::env::temp_dir().join(format!("llama3-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in [
            ("bad.json", &b"{\"model\": 3"[..]),
            ("bad.bin", &b"\x00\x01\x02garbage"[..]),
            ("bad.gguf", &b"GGUF\x03\x00"[..]),
            ("tokenizer.model", &b"IQ== 0\nIg== x\n"[..]),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            let err = Tokenizer::from_file(&p).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
