//! The output side of a generation: committed tokens become output tokens
//! and text, ending at EOS, a stop string or the token budget, with text
//! that could still turn into a stop string held back from the stream.

use std::ops::ControlFlow;

use crate::config::GenerateConfig;
use crate::error::Result;
use crate::stats::Stats;
use crate::tokenizer::{Detokenizer, Tokenizer};

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The target produced this EOS id (not included in the output).
    Eos(u32),
    /// The text reached this stop string (cut from the text).
    StopString(String),
    /// The streaming callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// `"max_new_tokens"`, `"eos"`, `"stop_string"` or `"cancelled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::Eos(_) => "eos",
            StopReason::StopString(_) => "stop_string",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Generated token ids (prompt excluded, EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text, when the target has a tokenizer (stop string excluded).
    pub text: Option<String>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Counters and timings.
    pub stats: Stats,
}

/// Newly committed output, handed to a streaming callback as it is committed.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Tokens committed since the last chunk (EOS excluded).
    pub tokens: &'a [u32],
    /// Text that became final since the last chunk: never a split UTF-8
    /// character, never a part of a possible stop string.
    pub text: &'a str,
}

#[derive(Clone, Copy)]
pub(crate) enum Release {
    /// Text that can no longer change.
    Final,
    /// Everything (the generation is over).
    All,
}

/// Output tokens and text as they are committed: EOS, stop strings, budget,
/// and the holding back of text that could still become a stop string.
pub(crate) struct Emitter {
    pub(crate) tokens: Vec<u32>,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
    pub(crate) detok: Option<Detokenizer>,
    pub(crate) text: String,
    stop_strings: Vec<String>,
    sent_tokens: usize,
    sent_text: usize,
}

impl Emitter {
    pub(crate) fn new(
        tokenizer: Option<Tokenizer>,
        prompt: &[u32],
        config: &GenerateConfig,
        stop_ids: Vec<u32>,
    ) -> Self {
        Self {
            tokens: Vec::new(),
            stop_ids,
            max_new_tokens: config.max_new_tokens,
            detok: tokenizer.map(|t| Detokenizer::new(t, prompt)),
            text: String::new(),
            stop_strings: config.stop_strings.clone(),
            sent_tokens: 0,
            sent_text: 0,
        }
    }

    /// Takes one committed token; returns a stop reason if it ends the output.
    pub(crate) fn push(&mut self, token: u32) -> Result<Option<StopReason>> {
        if self.stop_ids.contains(&token) {
            return Ok(Some(StopReason::Eos(token)));
        }
        self.tokens.push(token);
        if let Some(detok) = &mut self.detok {
            let delta = detok.push(token)?;
            self.text.push_str(&delta);
            if let Some(stop) = self.find_stop(delta.len()) {
                return Ok(Some(StopReason::StopString(stop)));
            }
        }
        Ok((self.tokens.len() == self.max_new_tokens).then_some(StopReason::MaxNewTokens))
    }

    /// Looks for a stop string ending in the last `delta` bytes; cuts the
    /// text before the earliest one found.
    fn find_stop(&mut self, delta: usize) -> Option<String> {
        let mut found: Option<(usize, &String)> = None;
        for s in &self.stop_strings {
            let mut from = self.text.len().saturating_sub(delta + s.len());
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            if let Some(at) = self.text[from..].find(s.as_str()) {
                if found.is_none_or(|(f, _)| from + at < f) {
                    found = Some((from + at, s));
                }
            }
        }
        let (at, s) = found?;
        let s = s.clone();
        self.text.truncate(at);
        Some(s)
    }

    /// Bytes at the end of the text that could be the start of a stop string.
    fn held_back(&self) -> usize {
        self.stop_strings
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    /// Flushes the detokenizer at the end (unless a stop string cut the text).
    pub(crate) fn finish(&mut self, reason: &StopReason) -> Result<()> {
        if let (Some(detok), false) = (&mut self.detok, matches!(reason, StopReason::StopString(_)))
        {
            let rest = detok.finish()?;
            self.text.push_str(&rest);
        }
        Ok(())
    }

    pub(crate) fn emit(
        &mut self,
        on_chunk: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
        release: Release,
    ) -> ControlFlow<()> {
        let end = match release {
            Release::All => self.text.len(),
            Release::Final => self.text.len() - self.held_back(),
        };
        let end = end.max(self.sent_text);
        let chunk = Chunk {
            tokens: &self.tokens[self.sent_tokens..],
            text: &self.text[self.sent_text..end],
        };
        if chunk.tokens.is_empty() && chunk.text.is_empty() {
            return ControlFlow::Continue(());
        }
        self.sent_tokens = self.tokens.len();
        self.sent_text = end;
        on_chunk(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/py-xs");
        Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
    }

    /// Feeds `text`'s tokens one by one, streaming after each; returns the
    /// final text, the stop reason, and after each token (text so far,
    /// streamed so far).
    fn emit_all(text: &str, stops: &[&str]) -> (String, Option<StopReason>, Vec<(String, String)>) {
        let tokenizer = tokenizer();
        let prompt = tokenizer.encode("#").unwrap();
        let ids = tokenizer.encode(text).unwrap();
        let config = GenerateConfig {
            max_new_tokens: 1000,
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            ..GenerateConfig::default()
        };
        let mut out = Emitter::new(Some(tokenizer), &prompt, &config, vec![]);
        let mut streamed = String::new();
        let mut steps = Vec::new();
        let mut reason = None;
        for id in ids {
            reason = out.push(id).unwrap();
            let release = if reason.is_some() {
                Release::All
            } else {
                Release::Final
            };
            let _ = out.emit(
                &mut |c: Chunk<'_>| {
                    streamed.push_str(c.text);
                    ControlFlow::Continue(())
                },
                release,
            );
            steps.push((out.text.clone(), streamed.clone()));
            if reason.is_some() {
                break;
            }
        }
        (out.text, reason, steps)
    }

    #[test]
    fn the_earliest_stop_string_wins_whatever_their_order() {
        let text = "total = price * count\nreturn total";
        for stops in [["count", "price"], ["price", "count"]] {
            let (got, reason, steps) = emit_all(text, &stops);
            assert_eq!(got, "total = ", "{stops:?}");
            assert_eq!(reason, Some(StopReason::StopString("price".into())));
            assert_eq!(steps.last().unwrap().1, "total = ");
        }
        // Both inside the text one token adds: still the earlier one.
        for stops in [["urn", "ret"], ["ret", "urn"]] {
            let (got, reason, _) = emit_all("x\nreturn", &stops);
            assert_eq!(got, "x\n", "{stops:?}");
            assert_eq!(reason, Some(StopReason::StopString("ret".into())));
        }
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_back_until_settled() {
        let stop = "return";
        // The longest proper prefix of `stop` that `text` ends with.
        let held = |text: &str| {
            (1..stop.len())
                .rev()
                .find(|&n| text.ends_with(&stop[..n]))
                .unwrap_or(0)
        };
        let mut held_somewhere = false;
        for text in ["x = result + 1", "y = re.sub(a, b)\nr = retry", "done = r"] {
            let (got, reason, steps) = emit_all(text, &[stop]);
            assert_eq!((got.as_str(), reason), (text, None));
            for (so_far, streamed) in &steps {
                let end = so_far.len() - held(so_far);
                assert_eq!(streamed, &so_far[..end], "{steps:?}");
                held_somewhere |= end < so_far.len();
            }
        }
        assert!(held_somewhere, "no text was ever held back");
        // Stopped: the stream never saw any part of the stop string.
        let (got, _, steps) = emit_all("a = 1\nreturn a", &[stop]);
        assert_eq!(got, "a = 1\n");
        assert!(steps.iter().all(|(_, s)| !s.contains('r')), "{steps:?}");
    }
}
