//! Reading JSON files: a whole file as one object ([`read_json_object`]),
//! and fields of an object one by one ([`Fields`]), with errors that name
//! the file and the field. Shared by the model loader (`config.json`,
//! `generation_config.json`, the safetensors shard index) and the chat
//! template (`tokenizer_config.json`). What the fields mean is for the
//! callers; nothing here knows a model.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The largest JSON file read: far above any model's configuration (a
/// `tokenizer_config.json` with a large vocabulary's added tokens is a few
/// MB), and a bound on what a link to `/dev/zero` or a huge file costs.
pub(crate) const MAX_JSON_BYTES: usize = 64 << 20;

/// Up to `max` bytes of `path`: reads at most `max + 1`, so that an endless
/// file (`/dev/zero`) stops; more than `max` is an error naming `what`.
pub(crate) fn read_capped(path: &Path, max: usize, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > max {
        return Err(io(std::io::Error::other(format!(
            "larger than {max} bytes, the most {what} may have"
        ))));
    }
    Ok(bytes)
}

/// Reads `path` as a JSON object.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = read_capped(path, MAX_JSON_BYTES, "a JSON file")?;
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "expected a JSON object at the top level, found {}",
                kind(&other)
            ),
        }),
        Err(e) => Err(Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads fields of one JSON object, naming the file and field in errors.
pub(crate) struct Fields<'a> {
    pub(crate) path: &'a Path,
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.path, self.name(key), message)
    }

    pub(crate) fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().map(usize::try_from) {
                Some(Ok(n)) if n > 0 => Ok(Some(n)),
                Some(Ok(_)) | None => {
                    Err(self.err(key, format!("expected a positive integer, found {v}")))
                }
                Some(Err(_)) => Err(self.err(
                    key,
                    format!("{v} does not fit this machine's usize ({})", usize::MAX),
                )),
            },
        }
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "missing (a positive integer is required)"))
    }

    pub(crate) fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(self.err(key, format!("expected a positive number, found {v}"))),
            },
        }
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?
            .ok_or_else(|| self.err(key, "missing (a positive number is required)"))
    }

    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, found {v}"))),
        }
    }

    pub(crate) fn object_opt(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.err(key, format!("expected an object, found {v}"))),
        }
    }

    /// A token id or a list of them (`eos_token_id`).
    pub(crate) fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| {
            self.err(
                key,
                format!("expected a token id or a list of ids, found {v}"),
            )
        };
        let one = |v: &Value| {
            v.as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as u32)
                .ok_or_else(|| bad(v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}
