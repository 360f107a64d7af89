//! Text in, token ids out, and back: a thin, cheaply clonable wrapper around a
//! Hugging Face `tokenizer.json`, plus incremental UTF-8-safe detokenization
//! for streaming.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// The most text bytes a prompt or a rendered chat may have per position of
/// the model (`n_positions`), checked before tokenizing: text longer than
/// `n_positions * MAX_TEXT_BYTES_PER_POSITION` bytes is refused without
/// being tokenized (tokenizing costs about 40 bytes of memory a byte).
///
/// No tokenizer bounds how many bytes one token covers, so this is a
/// generous factor, not a proof: real tokenizers' longest tokens (runs of
/// spaces, `====...`) are up to about 16 to 64 bytes, and text averages 3 to
/// 5 bytes a token. A text every token of which is 64 bytes long is not a
/// prompt anyone writes.
pub const MAX_TEXT_BYTES_PER_POSITION: usize = 64;

/// A Hugging Face tokenizer (`tokenizer.json`). Clones share the same data.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                message: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(inner),
            path: path.to_path_buf(),
        })
    }

    /// Parses a tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: "<memory>".into(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(inner),
            path: "<memory>".into(),
        })
    }

    /// Wraps a tokenizer built in memory (from a GGUF file's metadata);
    /// `origin` names it in errors.
    pub(crate) fn from_inner(inner: tokenizers::Tokenizer, origin: &Path) -> Self {
        Self {
            inner: Arc::new(inner),
            path: origin.to_path_buf(),
        }
    }

    /// The id of a token string, added tokens included.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The file this tokenizer was read from (`<memory>` if from bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes `text` into token ids, without adding special tokens (the
    /// prompt is exactly what the text says).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids into text, skipping special tokens (BOS / EOS).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    /// The token string of `id`, if the tokenizer has one.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Checks that `self` and `other` map every id to the same token string,
    /// which is what sharing a vocabulary means for speculative decoding
    /// (equal sizes are not enough: the ids must mean the same thing).
    pub fn check_same_vocabulary(&self, other: &Tokenizer) -> Result<()> {
        let (a, b) = (self.vocab_size(), other.vocab_size());
        if a != b {
            return Err(Error::VocabularyMismatch {
                message: format!(
                    "{} has {a} tokens, {} has {b}",
                    self.path.display(),
                    other.path.display()
                ),
            });
        }
        for id in 0..a as u32 {
            let (x, y) = (self.id_to_token(id), other.id_to_token(id));
            if x != y {
                return Err(Error::VocabularyMismatch {
                    message: format!(
                        "token id {id} is {x:?} in {} but {y:?} in {}",
                        self.path.display(),
                        other.path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Turns a growing list of token ids into text deltas that never split a
/// UTF-8 character, and that keep the spacing a full decode would give.
///
/// Decodes a short sliding window of ids (`prefix..`) and emits only the part
/// past what the window's older ids (`prefix..read`) already produced; a delta
/// ending in U+FFFD (an incomplete byte sequence) is held until the next id
/// completes it.
#[derive(Debug)]
pub(crate) struct Detokenizer {
    tokenizer: Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// `context`: the last few prompt ids, so the first generated word gets
    /// the leading space a full decode would give it.
    pub(crate) fn new(tokenizer: Tokenizer, context: &[u32]) -> Self {
        let start = context.len().saturating_sub(4);
        let ids = context[start..].to_vec();
        let read = ids.len();
        Self {
            tokenizer,
            ids,
            prefix: 0,
            read,
        }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub(crate) fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tokenizer.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let delta = after[common_prefix(&before, &after)..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the end).
    pub(crate) fn finish(&mut self) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tokenizer.decode(&self.ids[self.prefix..])?;
        self.read = self.ids.len();
        Ok(after[common_prefix(&before, &after)..].to_string())
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a
/// character boundary. Usually all of `a` (byte-level and sentencepiece
/// decoders extend the text); shorter when `a` ended in an incomplete
/// character (U+FFFD) that the next id completed, so that text already
/// emitted is never emitted again.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn a_completed_character_is_not_emitted_twice() {
        assert_eq!(common_prefix("abc", "abcd"), 3);
        // The earlier decode ended in an incomplete character: the delta
        // starts at that character, not at the beginning of the window.
        assert_eq!(common_prefix("ab\u{FFFD}", "abé!"), 2);
        assert_eq!(&"abé!"[common_prefix("ab\u{FFFD}", "abé!")..], "é!");
        assert_eq!(common_prefix("", "x"), 0);
    }
}
