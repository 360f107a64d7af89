//! `config.json` of a Llama-family checkpoint, in the forms real checkpoints
//! use (transformers 4.x: `rope_theta`, `rope_scaling`, `torch_dtype`; 5.x:
//! `rope_parameters`, `dtype`), read field by field so that every error names
//! the field, then resolved into one validated [`ModelConfig`]. Reading the
//! JSON itself (the file, a field's type) is `crate::json`'s; a GGUF file's
//! configuration is read by `load::gguf`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::json::{read_json_object, Fields};

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

/// Checks EOS ids read from `path` against a vocabulary of `vocab` ids:
/// each must be an id of it, and they must not be all of it (no token could
/// then be generated).
pub(crate) fn check_eos(path: &Path, ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::config(
            path,
            "eos_token_id",
            format!("{bad} is outside the vocabulary of {vocab} ids (vocab_size)"),
        ));
    }
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    if distinct.len() == vocab {
        return Err(Error::config(
            path,
            "eos_token_id",
            format!("every one of the {vocab} ids is an EOS id: no token could be generated"),
        ));
    }
    Ok(())
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
        let config = Self {
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
        };
        config.check_sizes(&f)?;
        check_eos(path, &config.eos_token_ids, config.vocab_size)?;
        Ok(config)
    }

    /// Every size derived from config.json, with checked arithmetic: the
    /// projections' widths and the parameter count in f32 bytes must fit the
    /// address space, so that no later product overflows or wraps.
    fn check_sizes(&self, f: &Fields<'_>) -> Result<()> {
        let overflow = |field: &str, what: &str| {
            f.err(
                field,
                format!(
                    "{what} overflows: config.json describes more than this machine can address \
                     (hidden_size {}, intermediate_size {}, num_hidden_layers {}, \
                     num_attention_heads {}, num_key_value_heads {}, head_dim {}, vocab_size {})",
                    self.hidden_size,
                    self.intermediate_size,
                    self.num_layers,
                    self.num_heads,
                    self.num_kv_heads,
                    self.head_dim,
                    self.vocab_size
                ),
            )
        };
        let mul = |a: usize, b: usize, field: &str, what: &str| {
            a.checked_mul(b).ok_or_else(|| overflow(field, what))
        };
        let add = |a: usize, b: usize, field: &str, what: &str| {
            a.checked_add(b).ok_or_else(|| overflow(field, what))
        };
        let h = self.hidden_size;
        let q_out = mul(
            self.num_heads,
            self.head_dim,
            "head_dim",
            "num_attention_heads x head_dim",
        )?;
        let kv_out = mul(
            self.num_kv_heads,
            self.head_dim,
            "head_dim",
            "num_key_value_heads x head_dim",
        )?;
        let kv2 = mul(kv_out, 2, "head_dim", "the fused k and v projection")?;
        let qkv = add(q_out, kv2, "head_dim", "the fused q, k and v projection")?;
        let attn_rows = add(qkv, q_out, "head_dim", "the attention projections")?;
        let attn = mul(attn_rows, h, "hidden_size", "the attention weights")?;
        let mlp_rows = mul(self.intermediate_size, 3, "intermediate_size", "the MLP")?;
        let mlp = mul(mlp_rows, h, "intermediate_size", "the MLP weights")?;
        // Weights, biases and norms of one layer (an upper bound).
        let layer = [qkv, mlp_rows, h, h]
            .into_iter()
            .try_fold(add(attn, mlp, "hidden_size", "one layer")?, |acc, x| {
                add(acc, x, "hidden_size", "one layer")
            })?;
        let layers = mul(
            layer,
            self.num_layers,
            "num_hidden_layers",
            "the layers' weights",
        )?;
        let embed = mul(self.vocab_size, h, "vocab_size", "the embedding")?;
        let embed2 = mul(embed, 2, "vocab_size", "the embedding and output head")?;
        let total = add(layers, embed2, "num_hidden_layers", "the parameter count")?;
        let bytes = mul(
            total,
            4,
            "num_hidden_layers",
            "the parameter count in f32 bytes",
        )?;
        if bytes > isize::MAX as usize {
            let field = if layers >= embed2 {
                "num_hidden_layers"
            } else {
                "vocab_size"
            };
            return Err(overflow(field, "the parameter count in f32 bytes"));
        }
        Ok(())
    }

    /// Sizes the KV cache (`bytes_per_value` bytes a value) and the rotary
    /// tables of `n_positions` positions with checked arithmetic, probes that
    /// the host can allocate them when `probe_host`, and checks every rotary
    /// angle is finite up to the last position (`config_path` is named in
    /// that error). Call only after the checkpoint's tensors have bounded
    /// `head_dim` (the rotary frequencies are computed).
    pub(crate) fn check_positions(
        &self,
        config_path: &Path,
        n_positions: usize,
        bytes_per_value: usize,
        probe_host: bool,
    ) -> Result<()> {
        let n = n_positions;
        // Both sizes are < isize::MAX bytes by `check_sizes`.
        let kv = self.num_kv_heads * self.head_dim;
        let per_position = kv
            .checked_mul(2 * self.num_layers)
            .and_then(|x| x.checked_mul(bytes_per_value))
            .and_then(|x| x.checked_add(self.head_dim * 4)); // cos + sin, f32
        let bytes = per_position.and_then(|p| p.checked_mul(n));
        let too_many =
            |why: String| Error::setting("n_positions", n, format!("fewer positions: {why}"));
        match bytes {
            None => {
                return Err(too_many(
                    "the KV cache size overflows the address space".into(),
                ))
            }
            Some(b) if b > isize::MAX as usize => {
                return Err(too_many(format!(
                    "the KV cache would take {b} bytes, more than the address space"
                )))
            }
            Some(b) if probe_host && Vec::<u8>::new().try_reserve_exact(b).is_err() => {
                return Err(too_many(format!(
                    "the KV cache and rotary tables would take {b} bytes, which this machine cannot allocate"
                )))
            }
            Some(_) => {}
        }
        let last = n.saturating_sub(1) as f32;
        for (i, f) in self.rope_inv_freq().into_iter().enumerate() {
            let f = f as f32;
            if !f.is_finite() || !(last * f).is_finite() {
                return Err(Error::config(
                    config_path,
                    "rope_theta",
                    format!(
                        "{} (with rope scaling {:?}) gives rotary frequency {i} = {f}, \
                         whose angle at position {last} is not finite",
                        self.rope_theta, self.rope_scaling
                    ),
                ));
            }
        }
        Ok(())
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
    fn eos_ids_are_checked_against_the_vocabulary() {
        for (eos, ok) in [("99", true), ("100", false), ("[1, 100]", false)] {
            let r = parse(&format!(
                r#"{{"model_type": "llama", {BASE}, "eos_token_id": {eos}}}"#
            ));
            assert_eq!(r.is_ok(), ok, "{eos}: {r:?}");
        }
        let all: Vec<u32> = (0..100).collect();
        let r = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "eos_token_id": {all:?}}}"#
        ));
        assert!(
            matches!(&r, Err(Error::Config { field, .. }) if field == "eos_token_id"),
            "{r:?}"
        );
    }

    use proptest::prelude::*;

    const SIZE_FIELDS: [&str; 8] = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
    ];

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            1u64..5000,
            prop::sample::select(vec![
                u64::MAX,
                u64::MAX - 1,
                1 << 63,
                (1 << 63) - 2,
                1 << 62,
                1 << 58,
                1 << 32,
                (1 << 32) - 1,
            ]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No u64 in any size field panics; whatever is accepted has every
        /// derived size representable, and sizing a cache for any
        /// `n_positions` is an error or fine, never a panic.
        #[test]
        fn no_u64_in_a_size_field_panics(
            values in prop::array::uniform8(size()),
            n_positions in prop_oneof![any::<usize>(), 1usize..10_000],
        ) {
            let mut map = Map::new();
            map.insert("model_type".into(), "llama".into());
            for (field, v) in SIZE_FIELDS.iter().zip(values) {
                map.insert(field.to_string(), v.into());
            }
            let Ok(c) = ModelConfig::from_json(Path::new("config.json"), &map) else {
                return Ok(());
            };
            let q = c.num_heads.checked_mul(c.head_dim).unwrap();
            let kv = c.num_kv_heads.checked_mul(c.head_dim).unwrap();
            q.checked_add(2 * kv).unwrap().checked_mul(c.hidden_size).unwrap();
            c.vocab_size.checked_mul(c.hidden_size).unwrap();
            c.intermediate_size.checked_mul(3).unwrap().checked_mul(c.hidden_size).unwrap();
            if c.head_dim <= 4096 {
                // Without the host probe: only the arithmetic is under test.
                let _ = c.check_positions(Path::new("config.json"), n_positions, 4, false);
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
