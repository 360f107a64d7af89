//! GGUF files of the llama (and qwen2) architecture: the header and metadata (read with
//! candle-core's `gguf_file`), the [`ModelConfig`] they imply, and their
//! tensors under Hugging Face names, with every size range-checked before
//! a byte is read.
//!
//! Layout conventions undone here, as transformers undoes them:
//! - tensors are named `token_embd`, `blk.N.attn_q`, ..., `output_norm`,
//!   `output` (absent when the head is tied to the embedding);
//! - GGUF lists dimensions innermost first: a `[rows, cols]` matrix is
//!   stored as `ne = [cols, rows]`;
//! - llama.cpp's converter reorders the rows of `attn_q` / `attn_k` within
//!   each head for its interleaved RoPE (`[2, half]` -> `[half, 2]`); we
//!   compute RoPE on halves, as Hugging Face does, so the rows are put
//!   back. A row permutation moves whole rows of blocks, so it applies to
//!   quantized matrices as stored, and to dequantized ones alike;
//! - Llama 3.1's RoPE scaling is not in the metadata but in a tensor,
//!   `rope_freqs.weight` (`[head_dim / 2]` divisors of the inverse
//!   frequencies).
//!
//! The tokenizer in the metadata is rebuilt by `tokenizer`; what a block
//! format's bytes mean is `super::super::quant`'s.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{DType, Device, Tensor};

mod header;
pub(crate) mod tokenizer;

use super::super::quant::QType;
use super::config::{ModelConfig, RopeScaling};
use super::{Blocks, Matrix, WeightSource};
use crate::error::{Error, Result};
use header::check_header;

/// `general.architecture` values we load: Llama (and Mistral, which
/// llama.cpp converts to it) and Qwen2.
pub(crate) const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// An open GGUF file: its parsed header and a handle to read tensors from.
pub(crate) struct GgufFile {
    path: PathBuf,
    content: Content,
    file: RefCell<File>,
    file_size: u64,
    /// Tensors handed out so far, to check at the end that none was ignored.
    used: RefCell<BTreeSet<String>>,
    /// Query and key-value heads, for undoing the q / k row order; `None`
    /// for architectures whose converter keeps Hugging Face's order (qwen2).
    heads: Option<(usize, usize)>,
    /// Keep ggml block matrices as stored (`true`) or dequantize to f32.
    keep_blocks: bool,
}

/// A tensor's place in the file, checked against the file's size.
struct Extent {
    dtype: GgmlDType,
    /// Dimensions outermost first (`[rows, cols]` for a matrix).
    dims: Vec<usize>,
    start: u64,
    bytes: usize,
}

impl GgufFile {
    /// Reads the header of `path` and checks that every tensor lies inside
    /// the file.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let err = |message: String| Error::Gguf {
            path: path.to_path_buf(),
            message,
        };
        let file_size = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        // Our walk checks the whole header first (candle's reader divides by
        // `general.alignment` unchecked, keeps one of two equal keys or
        // tensor names, and holds 32 bytes per metadata value): candle then
        // reads only a header we have accepted, through a buffer.
        let header = check_header(&mut file, file_size).map_err(err)?;
        file.seek(SeekFrom::Start(0)).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = Content::read(&mut BufReader::new(&mut file))
            .map_err(|e| err(format!("not a readable GGUF file: {e}")))?;
        // Defence in depth: candle must have seen what we walked.
        if content.metadata.len() as u64 != header.metadata_entries
            || content.tensor_infos.len() as u64 != header.tensor_count
            || content.tensor_data_offset != header.data_offset
        {
            return Err(err(format!(
                "candle read {} keys, {} tensors, data at {}; our walk found {}, {}, {}",
                content.metadata.len(),
                content.tensor_infos.len(),
                content.tensor_data_offset,
                header.metadata_entries,
                header.tensor_count,
                header.data_offset
            )));
        }
        let this = Self {
            path: path.to_path_buf(),
            content,
            file: RefCell::new(file),
            file_size,
            used: RefCell::new(BTreeSet::new()),
            heads: None,
            keep_blocks: false,
        };
        for name in this.content.tensor_infos.keys() {
            this.extent(name)?;
        }
        Ok(this)
    }

    /// Sets how matrices are handed out, and the head counts `config` implies.
    pub(crate) fn prepare(&mut self, config: &ModelConfig, keep_blocks: bool) {
        // llama.cpp permutes q / k for its interleaved RoPE only in the
        // llama architecture; qwen2 uses the NeoX (halves) layout as stored.
        self.heads =
            (config.model_type == "llama").then_some((config.num_heads, config.num_kv_heads));
        self.keep_blocks = keep_blocks;
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn key_err(&self, key: &str, message: impl std::fmt::Display) -> Error {
        self.err(format!("metadata `{key}`: {message}"))
    }

    // ---- metadata -------------------------------------------------------

    /// The value of `key`, if present.
    pub(crate) fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// An unsigned integer at `key`, or `None` if absent.
    pub(crate) fn uint_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => int(v).map(Some).ok_or_else(|| {
                self.key_err(
                    key,
                    format!("expected a non-negative integer, found {}", show(v)),
                )
            }),
        }
    }

    /// A positive integer that fits `usize` at `key`, or `None` if absent.
    fn size_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.uint_opt(key)? {
            None => Ok(None),
            Some(0) => Err(self.key_err(key, "0: must be positive")),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= 1 << 40)
                .map(Some)
                .ok_or_else(|| self.key_err(key, format!("{n} is out of range"))),
        }
    }

    fn size(&self, key: &str) -> Result<usize> {
        self.size_opt(key)?
            .ok_or_else(|| self.key_err(key, "missing (a positive integer is required)"))
    }

    fn float_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(x)) if x.is_finite() && *x > 0.0 => Ok(Some(*x as f64)),
            Some(Value::F64(x)) if x.is_finite() && *x > 0.0 => Ok(Some(*x)),
            Some(v) => {
                Err(self.key_err(key, format!("expected a positive float, found {}", show(v))))
            }
        }
    }

    /// A string at `key`, or `None` if absent.
    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.key_err(key, format!("expected a string, found {}", show(v)))),
        }
    }

    /// A boolean at `key`, or `None` if absent.
    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.key_err(key, format!("expected a boolean, found {}", show(v)))),
        }
    }

    /// An array of strings at `key`, or `None` if absent.
    pub(crate) fn strings_opt(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => {
                        Err(self.key_err(key, format!("element {i} is {}, not a string", show(v))))
                    }
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.key_err(
                key,
                format!("expected an array of strings, found {}", show(v)),
            )),
        }
    }

    /// An array of integers at `key`, or `None` if absent.
    pub(crate) fn ints_opt(&self, key: &str) -> Result<Option<Vec<u64>>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    int(v).ok_or_else(|| {
                        self.key_err(
                            key,
                            format!("element {i} is {}, not a non-negative integer", show(v)),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.key_err(
                key,
                format!("expected an array of integers, found {}", show(v)),
            )),
        }
    }

    /// A token id at `key` below `vocab`, or `None` if absent.
    pub(crate) fn token_id_opt(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.uint_opt(key)? {
            None => Ok(None),
            Some(id) if (id as u128) < vocab as u128 => Ok(Some(id as u32)),
            Some(id) => Err(self.key_err(
                key,
                format!("token id {id} is outside the vocabulary of {vocab}"),
            )),
        }
    }

    /// The model configuration the `<architecture>.*` keys describe.
    pub(crate) fn config(&self) -> Result<ModelConfig> {
        let arch = self
            .str_opt("general.architecture")?
            .ok_or_else(|| self.key_err("general.architecture", "missing"))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(self.key_err(
                "general.architecture",
                format!(
                    "unsupported value {arch:?}; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        if let Some(n) = self.uint_opt(&key("expert_count"))? {
            if n > 0 {
                return Err(self.key_err(
                    &key("expert_count"),
                    format!("{n}: mixture-of-experts models are unsupported"),
                ));
            }
        }
        let hidden = self.size(&key("embedding_length"))?;
        let heads = self.size(&key("attention.head_count"))?;
        let kv_heads = self
            .size_opt(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads % kv_heads != 0 {
            return Err(self.key_err(
                &key("attention.head_count_kv"),
                format!("{kv_heads} does not divide {arch}.attention.head_count = {heads}"),
            ));
        }
        let head_dim = match self.size_opt(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(self.key_err(
                    &key("attention.head_count"),
                    format!("{heads} does not divide {arch}.embedding_length = {hidden}"),
                ))
            }
        };
        if let Some(v) = self.size_opt(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(self.key_err(
                    &key("attention.value_length"),
                    format!("{v} differs from the key length {head_dim}; unsupported"),
                ));
            }
        }
        if head_dim > 1 << 16 {
            return Err(self.key_err(
                &key("attention.key_length"),
                format!("head size {head_dim} is out of range (at most 65536)"),
            ));
        }
        for (key, n) in [
            (&key("attention.head_count"), heads),
            (&key("attention.head_count_kv"), kv_heads),
        ] {
            if n.checked_mul(head_dim).is_none_or(|w| w > 1 << 40) {
                return Err(self.key_err(key, format!("{n} heads of {head_dim} overflow")));
            }
        }
        if head_dim % 2 != 0 {
            return Err(self.key_err(
                &key("attention.key_length"),
                format!("head size {head_dim} is odd; RoPE needs an even one"),
            ));
        }
        if let Some(r) = self.size_opt(&key("rope.dimension_count"))? {
            if r != head_dim {
                return Err(self.key_err(
                    &key("rope.dimension_count"),
                    format!("{r}: rotating only part of a head ({head_dim}) is unsupported"),
                ));
            }
        }
        let rope_scaling = match self.str_opt(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: self
                    .float_opt(&key("rope.scaling.factor"))?
                    .ok_or_else(|| {
                        self.key_err(
                            &key("rope.scaling.factor"),
                            "missing (linear scaling needs it)",
                        )
                    })?,
            },
            Some(other) => {
                return Err(self.key_err(
                    &key("rope.scaling.type"),
                    format!("unsupported value {other:?}; supported: none, linear"),
                ))
            }
        };
        let embd = self.extent("token_embd.weight")?;
        let vocab = match self.size_opt(&key("vocab_size"))? {
            Some(v) => v,
            None => match self.strings_opt("tokenizer.ggml.tokens")? {
                Some(t) if !t.is_empty() => t.len(),
                _ => embd.dims[0],
            },
        };
        let eos = self.end_tokens(vocab)?;
        let layers = self.size(&key("block_count"))?;
        if layers > self.content.tensor_infos.len() {
            return Err(self.key_err(
                &key("block_count"),
                format!(
                    "{layers} layers, but the file has only {} tensors",
                    self.content.tensor_infos.len()
                ),
            ));
        }
        let stored = self
            .content
            .tensor_infos
            .values()
            .filter(|t| t.shape.rank() == 2)
            .map(|t| format!("{:?}", t.ggml_dtype))
            .collect::<BTreeSet<_>>();
        Ok(ModelConfig {
            model_type: arch.to_string(),
            hidden_size: hidden,
            intermediate_size: self.size(&key("feed_forward_length"))?,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            vocab_size: vocab,
            rms_norm_eps: self
                .float_opt(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: self.float_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self.size_opt(&key("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            mlp_bias: false,
            sliding_window: None,
            eos_token_ids: eos,
            stored_dtype: Some(format!(
                "gguf {}",
                stored.into_iter().collect::<Vec<_>>().join("+")
            )),
        })
    }

    /// Ids that end a generation: EOS, the end-of-turn token (EOT), and a
    /// control token named like a known chat end-of-turn marker
    /// (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`).
    fn end_tokens(&self, vocab: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = self.token_id_opt(key, vocab)? {
                ids.push(id);
            }
        }
        if let (Some(tokens), Some(types)) = (
            self.strings_opt("tokenizer.ggml.tokens")?,
            self.ints_opt("tokenizer.ggml.token_type")?,
        ) {
            for (id, (t, ty)) in tokens.iter().zip(&types).enumerate().take(vocab) {
                let turn_end = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];
                if *ty == 3 && turn_end.contains(t) {
                    ids.push(id as u32);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    // ---- tensors --------------------------------------------------------

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// Where `name` lies, with its byte count computed with checked
    /// arithmetic and checked to end inside the file.
    fn extent(&self, name: &str) -> Result<Extent> {
        let info = self.info(name)?;
        let dims = info.shape.dims().to_vec();
        let terr = |m: String| self.err(format!("tensor `{name}`: {m}"));
        let elems = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("dimensions {dims:?} overflow")))?;
        let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        let inner = dims.last().copied().unwrap_or(1);
        if inner % block != 0 {
            return Err(terr(format!(
                "{:?} rows of {inner} values are not a multiple of its block of {block}",
                info.ggml_dtype
            )));
        }
        let bytes = (elems / block)
            .checked_mul(size)
            .ok_or_else(|| terr(format!("dimensions {dims:?} overflow")))?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .ok_or_else(|| terr(format!("offset {} overflows", info.offset)))?;
        match start.checked_add(bytes as u64) {
            Some(end) if end <= self.file_size => {}
            _ => {
                return Err(terr(format!(
                    "{bytes} bytes at offset {start} run past the end of the file ({} bytes): truncated?",
                    self.file_size
                )))
            }
        }
        Ok(Extent {
            dtype: info.ggml_dtype,
            dims,
            start,
            bytes,
        })
    }

    /// The bytes of `name`, after checking it has `shape`.
    fn read(&self, name: &str, shape: &[usize]) -> Result<(Extent, Vec<u8>)> {
        let e = self.extent(name)?;
        if e.dims != shape {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: e.dims,
            });
        }
        let mut data = vec![0u8; e.bytes];
        let mut file = self.file.borrow_mut();
        file.seek(SeekFrom::Start(e.start))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        self.used.borrow_mut().insert(name.to_string());
        Ok((e, data))
    }

    /// `name` as an f32 tensor on the CPU, dequantized by candle.
    fn dense_f32(&self, name: &str, e: &Extent, data: &[u8]) -> Result<Tensor> {
        let q = ggml_file::qtensor_from_ggml(e.dtype, data, e.dims.clone(), &Device::Cpu)
            .map_err(|err| self.err(format!("tensor `{name}`: {err}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// `name` as stored when it is f32 / f16 / bf16, else dequantized to f32.
    fn dense(&self, name: &str, e: &Extent, data: &[u8]) -> Result<Tensor> {
        let dtype = match e.dtype {
            GgmlDType::F16 => DType::F16,
            GgmlDType::BF16 => DType::BF16,
            _ => return self.dense_f32(name, e, data),
        };
        Ok(Tensor::from_raw_buffer(data, dtype, &e.dims, &Device::Cpu)?)
    }

    /// Checks that every tensor of the file was loaded.
    pub(crate) fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        match self
            .content
            .tensor_infos
            .keys()
            .find(|k| !used.contains(*k))
        {
            None => Ok(()),
            Some(extra) => Err(self.err(format!(
                "tensor `{extra}` is not part of the llama architecture as loaded here \
                 (unsupported: loading without it would compute a different model)"
            ))),
        }
    }
}

/// GGUF row `h * hd + 2 i + j` is Hugging Face row `h * hd + j * hd / 2 + i`:
/// returns the rows in Hugging Face order. `rows` must be a multiple of
/// `2 * heads` (the caller checked the shape).
fn unpermute_rows(data: &[u8], heads: usize, rows: usize, row_bytes: usize) -> Vec<u8> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + 2 * i + j;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

fn int(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// A short rendering of a metadata value for error messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        Value::Array(a) => format!("an array of {}", a.len()),
        v => format!("{v:?}"),
    }
}

/// The GGUF name of a Hugging Face tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, suffix) = part.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

fn qtype(d: GgmlDType) -> Option<QType> {
    Some(match d {
        GgmlDType::Q4_0 => QType::Q4_0,
        GgmlDType::Q4_1 => QType::Q4_1,
        GgmlDType::Q8_0 => QType::Q8_0,
        GgmlDType::Q4K => QType::Q4K,
        GgmlDType::Q5K => QType::Q5K,
        GgmlDType::Q6K => QType::Q6K,
        _ => return None,
    })
}

/// Formats the loader takes: dense ones, the block formats `cpu::quant`
/// computes on, and the other ggml storage formats (Q5_0, Q5_1, Q2_K,
/// Q3_K, which files fall back to for rows not a multiple of 256), which
/// candle dequantizes to f32 on either path. Q8_1 and Q8_K are ggml's
/// activation formats, never stored weights.
fn supported(d: GgmlDType) -> bool {
    !matches!(d, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

impl GgufFile {
    fn named(&self, hf: &str) -> Result<String> {
        gguf_name(hf).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: hf.to_string(),
        })
    }

    fn checked(&self, name: &str, shape: &[usize]) -> Result<(Extent, Vec<u8>)> {
        let (e, data) = self.read(name, shape)?;
        if !supported(e.dtype) {
            return Err(self.err(format!(
                "tensor `{name}` is stored as {:?}, an activation format, not a weight format",
                e.dtype
            )));
        }
        Ok((e, data))
    }
}

impl GgufFile {
    /// A tensor read from `data` as a dense tensor in `dtype` (`None`: as
    /// stored for f32 / f16 / bf16, f32 otherwise), q / k rows unpermuted.
    fn dense_tensor(
        &self,
        g: &str,
        e: &Extent,
        data: &[u8],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Tensor> {
        let mut t = self.dense(g, e, data)?;
        if let Some(heads) = self.qk_heads(g) {
            let idx = unpermute_index(e.dims[0], heads);
            t = t.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?;
        }
        if let Some(d) = dtype {
            t = t.to_dtype(d)?;
        }
        Ok(t.to_device(device)?)
    }

    /// The head count whose row order llama.cpp changed in `g`, if any.
    fn qk_heads(&self, g: &str) -> Option<usize> {
        let (q, kv) = self.heads?;
        if g.ends_with(".attn_q.weight") || g.ends_with(".attn_q.bias") {
            Some(q)
        } else if g.ends_with(".attn_k.weight") || g.ends_with(".attn_k.bias") {
            Some(kv)
        } else {
            None
        }
    }
}

impl WeightSource for GgufFile {
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn rope_factors(&self, half: usize) -> Result<Option<Vec<f64>>> {
        const NAME: &str = "rope_freqs.weight";
        if !self.content.tensor_infos.contains_key(NAME) {
            return Ok(None);
        }
        let (e, data) = self.checked(NAME, &[half])?;
        let factors: Vec<f32> = self.dense_f32(NAME, &e, &data)?.to_vec1()?;
        match factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            Some(bad) => Err(self.err(format!(
                "tensor `{NAME}`: factor {bad} is not a positive number"
            ))),
            None => Ok(Some(factors.iter().map(|&f| f as f64).collect())),
        }
    }

    fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Tensor> {
        let g = self.named(name)?;
        let (e, data) = self.checked(&g, shape)?;
        self.dense_tensor(&g, &e, &data, dtype, device)
    }

    fn matrix(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Matrix> {
        let g = self.named(name)?;
        let (e, data) = self.checked(&g, shape)?;
        match (qtype(e.dtype), shape) {
            (Some(qt), &[rows, cols]) if self.keep_blocks => {
                let data = match self.qk_heads(&g) {
                    Some(heads) => unpermute_rows(&data, heads, rows, e.bytes / rows),
                    None => data,
                };
                Ok(Matrix::Ggml(Blocks {
                    qtype: qt,
                    rows,
                    cols,
                    data,
                }))
            }
            _ => Ok(Matrix::Dense(
                self.dense_tensor(&g, &e, &data, dtype, device)?,
            )),
        }
    }
}

/// Source rows, in Hugging Face order, of a q or k matrix with `rows` rows
/// over `heads` heads (see [`unpermute_rows`]).
fn unpermute_index(rows: usize, heads: usize) -> Vec<u32> {
    let hd = rows / heads.max(1);
    let half = hd / 2;
    let mut idx = Vec::with_capacity(rows);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                idx.push((h * hd + 2 * i + j) as u32);
            }
        }
    }
    idx
}

#[cfg(test)]
mod tests;
