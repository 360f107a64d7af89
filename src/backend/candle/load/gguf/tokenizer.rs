//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`),
//! rebuilt as the `tokenizer.json` that Hugging Face transformers builds
//! from the same keys, then parsed by the tokenizers crate.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is built here; for a
//! SentencePiece file (`llama`), put the model's `tokenizer.json` beside
//! the `.gguf` and it is used instead.
//!
//! The pre-tokenizer follows transformers (whose ids the golden references
//! hold), by `tokenizer.ggml.pre`: `gpt2`, `default` and `smollm` get GPT-2's
//! byte-level regex; `llama-bpe` / `llama3` / `smaug-bpe` and `qwen2` get
//! their published split regexes. (llama.cpp's own `smollm` pre-tokenizer
//! also splits digits one by one; transformers' does not, which only differs
//! on whitespace runs before digits, as in `"  1"`.)

use serde_json::{json, Value as Json};

use super::GgufFile;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer in `g`'s metadata; `Ok(None)` when it has none.
pub(crate) fn from_gguf(g: &GgufFile) -> Result<Option<Tokenizer>> {
    let Some(json) = tokenizer_json(g)? else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(&json).map_err(|e| g_err(g, "tokenizer", e))?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
        path: g.path().to_path_buf(),
        message: format!("building the tokenizer from its metadata: {e}"),
    })?;
    Ok(Some(Tokenizer::from_inner(inner, g.path())))
}

fn g_err(g: &GgufFile, key: &str, m: impl std::fmt::Display) -> Error {
    Error::Gguf {
        path: g.path().to_path_buf(),
        message: format!("metadata `{key}`: {m}"),
    }
}

/// The `tokenizer.json` equivalent of `g`'s `tokenizer.ggml.*` keys.
pub(crate) fn tokenizer_json(g: &GgufFile) -> Result<Option<Json>> {
    let Some(model) = g.str_opt("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if model != "gpt2" {
        return Err(g_err(
            g,
            "tokenizer.ggml.model",
            format!(
                "{model:?} is unsupported (byte-level BPE, gpt2, is); \
                 put the model's tokenizer.json beside the file to use it instead"
            ),
        ));
    }
    let tokens = g
        .strings_opt("tokenizer.ggml.tokens")?
        .ok_or_else(|| g_err(g, "tokenizer.ggml.tokens", "missing"))?;
    let types = g
        .ints_opt("tokenizer.ggml.token_type")?
        .unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(g_err(
            g,
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let merges = g
        .strings_opt("tokenizer.ggml.merges")?
        .ok_or_else(|| g_err(g, "tokenizer.ggml.merges", "missing"))?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(g_err(
                g,
                "tokenizer.ggml.merges",
                format!("entry {i} ({m:?}) is not two tokens separated by a space"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    // Byte-level BPE maps each string to one id, so a string given to two
    // ids would leave one of them without text: it would decode to nothing.
    // llama.cpp's vocabulary loader refuses such a file (its
    // `id_to_token.size() == token_to_id.size()` assertion); so do we.
    let mut vocab = serde_json::Map::new();
    let mut first = std::collections::HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if let Some(earlier) = first.insert(*t, id) {
            return Err(g_err(
                g,
                "tokenizer.ggml.tokens",
                format!("ids {earlier} and {id} are both {t:?}; a token string must be unique"),
            ));
        }
        vocab.insert(t.to_string(), json!(id));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(id, (t, &ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": ty == CONTROL})
        })
        .collect();
    let pre = g.str_opt("tokenizer.ggml.pre")?.unwrap_or("gpt2");
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false)]})
    };
    let (normalizer, pre_tokenizer) = match pre {
        "gpt2" | "default" | "smollm" => (Json::Null, byte_level(true)),
        "llama-bpe" | "llama3" | "smaug-bpe" => (Json::Null, split(REGEX_LLAMA3)),
        "qwen2" => (json!({"type": "NFC"}), split(REGEX_QWEN2)),
        other => {
            return Err(g_err(
                g,
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer {other:?} is unsupported (gpt2, smollm, llama-bpe, qwen2 are); \
                     put the model's tokenizer.json beside the file to use it instead"
                ),
            ))
        }
    };
    let add_bos = g.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let bos = g.token_id_opt("tokenizer.ggml.bos_token_id", tokens.len())?;
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let b = tokens[id as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [id], "tokens": [b]}}})
        }
        _ => json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}}),
    };
    Ok(Some(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    })))
}
