//! Streaming detokenization that never splits a UTF-8 character.
//!
//! One token may hold part of a character (byte-level BPE pieces, SentencePiece `<0xNN>` byte
//! fallback), and a decoder may change earlier text once more tokens arrive (SentencePiece strips
//! the leading space of the whole text only). So, as HF tokenizers' `DecodeStream` and
//! text-generation-inference do, we decode a short window of ids twice: the ids already shown
//! (`prefix`) and the same ids plus the new one, and emit the difference only when it does not
//! end in U+FFFD, the replacement the decoders put for an incomplete byte sequence.

use super::Tokenizer;
use crate::{Error, Result};

/// Turns ids into text as they are generated. Create with [`Tokenizer::decode_stream`].
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// The window: ids already shown (`..prefix_len`) and ids held back (`prefix_len..`).
    ids: Vec<u32>,
    prefix_len: usize,
    /// Decoded text of `ids[..prefix_len]`.
    prefix: String,
}

impl<'a> DecodeStream<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_len: 0,
            prefix: String::new(),
        }
    }

    /// Add one id; returns the text that became complete, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.emit(text).map(Some)
    }

    /// Everything still held back (an incomplete character comes out as U+FFFD).
    pub fn flush(&mut self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        if text.len() <= self.prefix.len() {
            self.ids.clear();
            self.prefix_len = 0;
            self.prefix.clear();
            return Ok(None);
        }
        let out = self.emit(text)?;
        self.ids.clear();
        self.prefix_len = 0;
        self.prefix.clear();
        Ok(Some(out))
    }

    /// Return `text` minus the shown prefix and slide the window: the ids shown before this step
    /// are dropped, the ones just shown become the new prefix (enough context for the decoders).
    fn emit(&mut self, text: String) -> Result<String> {
        let new = text
            .get(self.prefix.len()..)
            .filter(|_| text.starts_with(&self.prefix))
            .ok_or_else(|| {
                Error::Tokenizer(format!(
                    "streaming decode: {text:?} does not extend {:?}",
                    self.prefix
                ))
            })?
            .to_string();
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special)?;
        Ok(new)
    }
}
