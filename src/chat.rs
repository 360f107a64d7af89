//! Chat templates: a model's Jinja template, rendered over a list of
//! role / content messages into the prompt text the model was tuned on.
//!
//! The template comes with the model: a GGUF file's `tokenizer.chat_template`
//! metadata, or beside a model directory `chat_template.jinja` or the
//! `chat_template` field of `tokenizer_config.json`. It is rendered with
//! [minijinja](https://docs.rs/minijinja) in the environment Hugging Face
//! transformers uses (`trim_blocks`, `lstrip_blocks`, `raise_exception`,
//! Python string and dict methods such as `.strip()` and `.items()`), with
//! the variables `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`.
//!
//! ```
//! use specdec::{ChatMessage, ChatTemplate, GenerationPrompt};
//!
//! # fn main() -> specdec::Result<()> {
//! let template = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     "example",
//!     "<s>",
//!     "</s>",
//! )?;
//! let text = template.render(&[ChatMessage::user("Hi!")], GenerationPrompt::Add)?;
//! assert_eq!(text, "<|user|>Hi!\n<|assistant|>");
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Whether the rendered text ends with the opening of an assistant turn
/// (the template's `add_generation_prompt`), so that the model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationPrompt {
    /// Open an assistant turn: for generating a reply.
    Add,
    /// Render the conversation as it is.
    Omit,
}

/// A model's chat template (Jinja source), checked to parse.
///
/// A template is a program from the model file, so its rendering is
/// bounded: it runs on a budget of minijinja fuel ([`ChatTemplate::BASE_FUEL`]
/// plus a share of the output cap), which bounds both its steps and the
/// data it builds (strings from `~`, `*`, `join`, `{% set %}` blocks: about
/// 64 bytes a fuel), and its output may not exceed
/// [`ChatTemplate::max_output_bytes`]. A [`crate::CandleModel`]'s template
/// is capped at what its `n_positions` could ever read
/// ([`crate::MAX_TEXT_BYTES_PER_POSITION`] bytes a position).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
    max_output_bytes: usize,
}

impl ChatTemplate {
    /// Fuel every render may spend whatever its output cap: about a million
    /// template steps, or 64 MB of strings built. SmolLM2's template spends
    /// about 150 on a three-message chat and about 40,000 on a
    /// thousand-message one (see `tests/hostile_text.rs`).
    pub const BASE_FUEL: u64 = 1_000_000;

    /// The output cap of a template that no model sized:
    /// [`crate::MAX_TEXT_BYTES_PER_POSITION`] times 131,072 positions (8 MiB).
    pub const DEFAULT_MAX_OUTPUT_BYTES: usize = crate::MAX_TEXT_BYTES_PER_POSITION * 131_072;

    /// The longest template source accepted: 1 MiB, some 25 times the
    /// longest real ones (tool-calling templates of about 40 KB).
    pub const MAX_SOURCE_BYTES: usize = 1 << 20;

    /// A template from its Jinja `source`; `origin` names it in errors;
    /// `bos_token` / `eos_token` are the strings templates see under those
    /// names. Errors with [`Error::ChatTemplate`] if it does not parse.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let source = source.into();
        let origin = origin.into();
        if source.len() > Self::MAX_SOURCE_BYTES {
            return Err(Error::ChatTemplate {
                origin,
                message: format!(
                    "{} bytes long, more than the {} a template may have",
                    source.len(),
                    Self::MAX_SOURCE_BYTES
                ),
            });
        }
        let t = Self {
            source,
            origin,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
        };
        let mut env = t.env()?;
        env.add_template("chat", &t.source).map_err(|e| t.err(e))?;
        Ok(t)
    }

    /// The template beside a model directory: `chat_template.jinja`, else
    /// `chat_template` in `tokenizer_config.json` (a string, or a list of
    /// named templates of which `default` is taken). `Ok(None)` if neither
    /// exists.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            Some(crate::json::read_json_object(&config_path)?)
        } else {
            None
        };
        let token = |key: &str| -> String {
            match config.as_ref().and_then(|c| c.get(key)) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => o
                    .get("content")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        // `exists`, not `is_file`: a link to a device is read (and capped), not skipped.
        if jinja.exists() {
            let bytes =
                crate::json::read_capped(&jinja, Self::MAX_SOURCE_BYTES, "a chat template")?;
            let source = String::from_utf8(bytes).map_err(|e| Error::ChatTemplate {
                origin: jinja.display().to_string(),
                message: format!(
                    "not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            let origin = jinja.display().to_string();
            return Self::new(source, origin, token("bos_token"), token("eos_token")).map(Some);
        }
        let origin = format!("{} (chat_template)", config_path.display());
        let source = match config.as_ref().and_then(|c| c.get("chat_template")) {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .ok_or_else(|| Error::ChatTemplate {
                    origin: origin.clone(),
                    message: "a list of templates without one named `default`".into(),
                })?
                .to_string(),
            Some(other) => {
                return Err(Error::ChatTemplate {
                    origin,
                    message: format!("expected a string, found {other}"),
                })
            }
        };
        Self::new(source, origin, token("bos_token"), token("eos_token")).map(Some)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Caps the rendered text at `bytes`: a longer rendering is an error
    /// (found as it is written, so nothing longer is ever held). The fuel
    /// budget grows with the cap: [`ChatTemplate::BASE_FUEL`] plus one fuel
    /// per 4 bytes of cap, 16 times what writing that much output costs.
    pub fn with_max_output_bytes(mut self, bytes: usize) -> Self {
        self.max_output_bytes = bytes;
        self
    }

    /// The longest rendering allowed, in bytes.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// The fuel a render may spend.
    pub fn fuel(&self) -> u64 {
        Self::BASE_FUEL.saturating_add(self.max_output_bytes as u64 / 4)
    }

    /// Renders as [`ChatTemplate::render`] and also returns the fuel spent.
    pub fn render_measured(
        &self,
        messages: &[ChatMessage],
        prompt: GenerationPrompt,
    ) -> Result<(String, u64)> {
        let mut env = self.env()?;
        env.set_fuel(Some(self.fuel()));
        env.add_template("chat", &self.source)
            .map_err(|e| self.err(e))?;
        let template = env.get_template("chat").map_err(|e| self.err(e))?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.max_output_bytes,
            exceeded: false,
        };
        let ctx = minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => prompt == GenerationPrompt::Add,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let fuel = match template.render_captured_to(ctx, &mut out) {
            Ok(captured) => captured
                .state()
                .fuel_levels()
                .map_or(0, |(consumed, _)| consumed),
            Err(_) if out.exceeded => return Err(self.too_long()),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                return Err(Error::ChatTemplate {
                    origin: self.origin.clone(),
                    message: format!(
                        "rendering used up its budget of {} fuel (a fuel a step, or about 64 \
                         bytes built): a loop that runs too long or a string that grows too large",
                        self.fuel()
                    ),
                })
            }
            Err(e) => return Err(self.err(e)),
        };
        let text = String::from_utf8(out.buf).map_err(|_| Error::ChatTemplate {
            origin: self.origin.clone(),
            message: "rendered text is not UTF-8".into(),
        })?;
        Ok((text, fuel))
    }

    fn too_long(&self) -> Error {
        Error::ChatTemplate {
            origin: self.origin.clone(),
            message: format!(
                "renders more than {} bytes, more than the model could read \
                 ({} bytes a position at most)",
                self.max_output_bytes,
                crate::MAX_TEXT_BYTES_PER_POSITION
            ),
        }
    }

    /// Renders `messages` into prompt text (special tokens as text, which
    /// the tokenizer turns back into their ids).
    ///
    /// Errors with [`Error::ChatTemplate`] if the template fails, runs out
    /// of fuel, or renders more than [`ChatTemplate::max_output_bytes`].
    pub fn render(&self, messages: &[ChatMessage], prompt: GenerationPrompt) -> Result<String> {
        self.render_measured(messages, prompt).map(|(text, _)| text)
    }

    /// The environment transformers renders in.
    fn env(&self) -> Result<minijinja::Environment<'_>> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| self.err(e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        Ok(env)
    }

    fn err(&self, e: minijinja::Error) -> Error {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::ChatTemplate {
            origin: self.origin.clone(),
            message,
        }
    }
}

/// The rendered text, refused past `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    exceeded: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            self.exceeded = true;
            return Err(std::io::Error::other("the rendered text is too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_origin() {
        let e = ChatTemplate::new("{% for %}", "here", "", "").unwrap_err();
        assert!(
            matches!(e, Error::ChatTemplate { ref origin, .. } if origin == "here"),
            "{e}"
        );
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "t", "", "").unwrap();
        let e = t.render(&[], GenerationPrompt::Add).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn python_methods_and_trimmed_blocks_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.content.strip() }}|\n{% endfor %}",
            "t",
            "",
            "",
        )
        .unwrap();
        let text = t
            .render(
                &[ChatMessage::user("  a "), ChatMessage::assistant("b")],
                GenerationPrompt::Omit,
            )
            .unwrap();
        assert_eq!(text, "  a|\n  b|\n");
    }
}
