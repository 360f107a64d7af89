//! `config.json` of a Llama-family checkpoint, in the forms real checkpoints
//! use (transformers 4.x: `rope_theta`, `rope_scaling`, `torch_dtype`; 5.x:
//! `rope_parameters`, `dtype`), read field by field so that every error names
//! the field, then resolved into one validated [`ModelConfig`].

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Architectures this backend runs (`model_type`).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// How rotary position frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling of low / medium / high frequencies.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelength boundary factor for low frequencies.
        low_freq_factor: f64,
        /// Wavelength boundary factor for high frequencies.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// A validated Llama-family configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (`num_heads` for MHA, fewer for GQA, 1 for MQA).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Positions the model was trained for.
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2 always; Llama if `attention_bias`).
    pub qkv_bias: bool,
    /// Every MLP projection has a bias (`mlp_bias`).
    pub mlp_bias: bool,
    /// Attend only to the last `sliding_window` positions (Mistral), if set.
    pub sliding_window: Option<usize>,
    /// EOS ids from config.json (generation_config.json takes precedence).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint says it was saved in (informational).
    pub stored_dtype: Option<String>,
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

    fn err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.path, self.name(key), message)
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.err(key, format!("expected a positive integer, found {v}"))),
            },
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "missing (a positive integer is required)"))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(self.err(key, format!("expected a positive number, found {v}"))),
            },
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?
            .ok_or_else(|| self.err(key, "missing (a positive number is required)"))
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, found {v}"))),
        }
    }

    fn object_opt(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
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

/// Reads `path` as a JSON object.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match serde_json::from_str::<Value>(&text) {
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

impl ModelConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let map = read_json_object(path)?;
        Self::from_json(path, &map)
    }

    /// Validates an already parsed `config.json`; `path` only names it in errors.
    pub fn from_json(path: &Path, map: &Map<String, Value>) -> Result<Self> {
        let f = Fields {
            path,
            map,
            prefix: "",
        };
        let model_type = f
            .str_opt("model_type")?
            .ok_or_else(|| f.err("model_type", "missing"))?
            .to_string();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(f.err(
                "model_type",
                format!(
                    "unsupported value {model_type:?}; supported: {}",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
            ));
        }
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" && act != "swish" {
                return Err(f.err(
                    "hidden_act",
                    format!("unsupported activation {act:?}; supported: silu"),
                ));
            }
        }
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(f.err(
                    "head_dim",
                    format!("missing, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                format!("{head_dim} is odd; RoPE needs an even head_dim"),
            ));
        }
        let (rope_theta, rope_scaling) = rope(&f)?;
        let qkv_bias = model_type == "qwen2" || f.bool_opt("attention_bias")?.unwrap_or(false);
        let sliding_window = sliding_window(&f, &model_type)?;
        Ok(Self {
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            mlp_bias: f.bool_opt("mlp_bias")?.unwrap_or(false),
            sliding_window,
            eos_token_ids: f.ids("eos_token_id")?,
            stored_dtype: f
                .str_opt("dtype")?
                .or(f.str_opt("torch_dtype")?)
                .map(str::to_string),
            model_type,
        })
    }

    /// Rotary inverse frequencies, `[head_dim / 2]`, with scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The attention window, if every layer has one. Mistral: `sliding_window`,
/// 4096 when the key is absent (as transformers defaults), none when null.
/// Qwen2: only with `use_sliding_window`, and then transformers windows only
/// layers from `max_window_layers` on; a mix of layers is refused.
fn sliding_window(f: &Fields<'_>, model_type: &str) -> Result<Option<usize>> {
    let window = sliding_window_of(f, model_type)?;
    if window == Some(0) {
        return Err(f.err("sliding_window", "0: a query must see at least itself"));
    }
    Ok(window)
}

fn sliding_window_of(f: &Fields<'_>, model_type: &str) -> Result<Option<usize>> {
    match model_type {
        "mistral" if !f.map.contains_key("sliding_window") => Ok(Some(4096)),
        "mistral" => f.usize_opt("sliding_window"),
        "qwen2" if f.bool_opt("use_sliding_window")?.unwrap_or(false) => {
            let layers = f.usize("num_hidden_layers")?;
            match f.usize_opt("max_window_layers")? {
                Some(m) if m >= layers => Ok(None),
                Some(0) | None => f.usize_opt("sliding_window"),
                Some(m) => Err(f.err(
                    "max_window_layers",
                    format!("{m} < num_hidden_layers = {layers}: windowed and full-attention layers mixed is unsupported"),
                )),
            }
        }
        _ => Ok(None),
    }
}

/// `rope_theta` and scaling from either config form.
fn rope(f: &Fields<'_>) -> Result<(f64, RopeScaling)> {
    // 5.x: everything in `rope_parameters`; 4.x: `rope_theta` + `rope_scaling`.
    let (params, prefix) = match f.object_opt("rope_parameters")? {
        Some(p) => (Some(p), "rope_parameters."),
        None => (f.object_opt("rope_scaling")?, "rope_scaling."),
    };
    let sub = params.map(|map| Fields {
        path: f.path,
        map,
        prefix,
    });
    let theta = match (&sub, f.f64_opt("rope_theta")?) {
        (_, Some(t)) => t,
        (Some(s), None) => s.f64_opt("rope_theta")?.unwrap_or(10_000.0),
        (None, None) => 10_000.0,
    };
    let Some(s) = sub else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = match s.str_opt("rope_type")? {
        Some(t) => t,
        None => s.str_opt("type")?.unwrap_or("default"),
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: s.f64("factor")?,
        },
        "llama3" => {
            let scaling = RopeScaling::Llama3 {
                factor: s.f64("factor")?,
                low_freq_factor: s.f64("low_freq_factor")?,
                high_freq_factor: s.f64("high_freq_factor")?,
                original_max_position_embeddings: s.f64("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(s.err(
                        "high_freq_factor",
                        format!("{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"),
                    ));
                }
            }
            scaling
        }
        other => {
            return Err(s.err(
                "rope_type",
                format!("unsupported value {other:?}; supported: default, linear, llama3"),
            ))
        }
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        let v: Value = serde_json::from_str(json).unwrap();
        ModelConfig::from_json(Path::new("config.json"), v.as_object().unwrap())
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100"#;

    #[test]
    fn both_config_forms_resolve_alike() {
        let v4 = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 5e5,
            "rope_scaling": {{"rope_type": "linear", "factor": 2.0}}, "torch_dtype": "bfloat16"}}"#
        ))
        .unwrap();
        let v5 = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "dtype": "bfloat16",
            "rope_parameters": {{"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}}}}"#
        ))
        .unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!((v4.num_kv_heads, v4.head_dim), (4, 16));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"model_type": "gpt2"}"#.to_string(), "model_type"),
            (
                format!(r#"{{"model_type": "llama", {BASE}, "hidden_act": "gelu"}}"#),
                "hidden_act",
            ),
            (
                r#"{"model_type": "llama", "hidden_size": "big"}"#.to_string(),
                "hidden_size",
            ),
            (
                r#"{"model_type": "llama", "hidden_size": 64}"#.to_string(),
                "num_attention_heads",
            ),
            (
                format!(
                    r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4}}}}"#
                ),
                "rope_scaling.rope_type",
            ),
            (
                format!(r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#),
                "num_key_value_heads",
            ),
            (
                format!(r#"{{"model_type": "llama", {BASE}, "eos_token_id": "x"}}"#),
                "eos_token_id",
            ),
            (
                format!(r#"{{"model_type": "mistral", {BASE}, "sliding_window": 0}}"#),
                "sliding_window",
            ),
        ];
        for (json, field) in cases {
            match parse(&json) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn eos_may_be_a_list() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "eos_token_id": [1, 2]}}"#
        ))
        .unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(c.qkv_bias);
    }
}
