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
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template from its Jinja `source`; `origin` names it in errors;
    /// `bos_token` / `eos_token` are the strings templates see under those
    /// names. Errors with [`Error::ChatTemplate`] if it does not parse.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let t = Self {
            source: source.into(),
            origin: origin.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
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
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                path: jinja.clone(),
                source,
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

    /// Renders `messages` into prompt text (special tokens as text, which
    /// the tokenizer turns back into their ids).
    pub fn render(&self, messages: &[ChatMessage], prompt: GenerationPrompt) -> Result<String> {
        let mut env = self.env()?;
        env.add_template("chat", &self.source)
            .map_err(|e| self.err(e))?;
        let template = env.get_template("chat").map_err(|e| self.err(e))?;
        template
            .render(minijinja::context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => prompt == GenerationPrompt::Add,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| self.err(e))
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
