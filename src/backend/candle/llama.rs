//! The Llama-family forward pass (Llama, Mistral, Qwen2) with candle ops:
//! RMSNorm, RoPE, grouped-query attention over a preallocated KV cache,
//! SwiGLU. Batch size 1; `n` new tokens per call, logits for all of them.
//!
//! Shapes, with `n` new tokens at positions `pos..pos+n` and `len = pos + n`:
//!
//! ```text
//! x        (n, hidden)
//! q        (heads, n, head_dim)          k, v (kv_heads, n, head_dim)
//! cache.k  (kv_heads, n_positions, head_dim)   written at pos..len
//! scores   (kv_heads, group * n, len)    group = heads / kv_heads
//! logits   (n, vocab)
//! ```
//!
//! On the CPU in f32 the projections, attention and SwiGLU run as our own
//! ops (`cpu_matmul`, `cpu_attention`), which keep every row of a pass
//! independent of the others; `scores` above is then never materialized.
//! Other devices and dtypes take candle's matmul, mask and softmax.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::config::ModelConfig;
use super::cpu_attention::CachedAttention;
use super::cpu_matmul::{f32_rows, PackedWeight};
use super::cpu_quant::{QMatrix, QType};
use super::weights::Checkpoint;
use crate::error::Result;

/// How weight matrices are stored for compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// Dense, in the compute dtype.
    #[default]
    None,
    /// ggml Q8_0 (8-bit blocks of 32, ~4x fewer bytes than f32): a faster
    /// matrix-vector product on CPU, at a small cost in fidelity. Meant for
    /// drafts, whose errors only lower acceptance and never change the output.
    Q8_0,
    /// Every matrix as the file stores it. For a GGUF file: Q4_0, Q4_1,
    /// Q8_0, Q4_K, Q5_K and Q6_K matrices (the embedding and a tied output
    /// head included) stay in their ggml blocks and are computed on as they
    /// are (CPU, f32 compute only), reading a fraction of f32's bytes per
    /// token; f32 / f16 / bf16 tensors stay dense. Each activation row is
    /// rounded to 8 bits per block of 32 before a product (as llama.cpp
    /// does), so the output is the quantized model's, not the dequantized
    /// one's: right for a draft, a different model as a target. With
    /// [`Quantization::None`] a GGUF file is instead dequantized to f32 at
    /// load, the exact reference path. For a safetensors directory this is
    /// the same as `None` (bf16 / f16 / f32 matrices are kept as stored).
    AsStored,
}

/// A weight matrix as a [`WeightSource`] hands it over.
pub(crate) enum Matrix {
    /// A dense `(out, in)` tensor.
    Dense(Tensor),
    /// ggml blocks as stored.
    Ggml(Blocks),
}

/// A `[rows, cols]` matrix's ggml blocks, row-major, as read from a file.
pub(crate) struct Blocks {
    pub(crate) qtype: QType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Vec<u8>,
}

impl Blocks {
    fn into_matrix(self) -> Result<QMatrix> {
        QMatrix::new(self.qtype, self.rows, self.cols, self.data)
    }
}

/// Where [`Llama::load`] gets its tensors, by Hugging Face name
/// (`model.layers.0.self_attn.q_proj.weight`): a safetensors checkpoint or
/// a GGUF file.
pub(crate) trait WeightSource {
    /// Whether the source has `name`.
    fn contains(&self, name: &str) -> bool;

    /// Loads `name`, checks its shape is `shape`, converts it to `dtype`
    /// (`None`: keeps the stored dtype) on `device`.
    fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Tensor>;

    /// Per-frequency divisors of the RoPE inverse frequencies, `[half]`
    /// (`half` = head_dim / 2), if the source carries them (a GGUF file's
    /// `rope_freqs.weight`, llama.cpp's form of Llama 3.1 scaling).
    fn rope_factors(&self, _half: usize) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }

    /// A weight matrix `(out, in)`; dense unless the source keeps blocks.
    fn matrix(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Matrix> {
        Ok(Matrix::Dense(self.tensor(name, shape, dtype, device)?))
    }
}

impl WeightSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }

    fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Tensor> {
        Checkpoint::tensor(self, name, shape, dtype, device)
    }
}

/// A projection `x @ W^T (+ b)`; `W` is `(out, in)` as stored in checkpoints.
pub(super) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    /// `(out, in)`, contiguous, as stored.
    Dense(Tensor),
    /// Re-laid out for our CPU kernel, which takes f32 `x`.
    Packed(PackedWeight),
    Quantized(QMatMul),
    /// ggml blocks as stored in a GGUF file (CPU, f32 `x`).
    Ggml(GgmlWeight),
}

impl Linear {
    /// Fuses `parts` (each `(out_i, in)`) along the output into one
    /// projection. `cpu_f32`: the model computes in f32 on the CPU, where
    /// our kernels take f32, bf16 and f16 weights and ggml blocks as they are.
    fn fused(
        parts: Vec<Matrix>,
        bias: Option<Tensor>,
        quant: Quantization,
        cpu_f32: bool,
    ) -> Result<Self> {
        if parts.iter().all(|p| matches!(p, Matrix::Ggml(_))) {
            // Adjacent parts in one format become one matrix (their rows
            // are whole blocks, so the bytes just follow each other).
            let mut merged: Vec<Blocks> = Vec::new();
            let blocks = parts.into_iter().filter_map(|p| match p {
                Matrix::Ggml(b) => Some(b),
                Matrix::Dense(_) => None,
            });
            for b in blocks {
                match merged.last_mut() {
                    Some(last) if last.qtype == b.qtype && last.cols == b.cols => {
                        last.rows += b.rows;
                        last.data.extend_from_slice(&b.data);
                    }
                    _ => merged.push(b),
                }
            }
            let q = merged
                .into_iter()
                .map(|b| Ok(Arc::new(b.into_matrix()?)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self {
                weight: Weight::Ggml(GgmlWeight::new(q)),
                bias,
            });
        }
        // Mixed (a GGUF file with, say, one f16 matrix among quantized
        // ones): all dense, in f32.
        let mixed = parts.iter().any(|p| matches!(p, Matrix::Ggml(_)));
        let dense = parts
            .into_iter()
            .map(|p| match p {
                Matrix::Dense(t) if mixed => Ok(t.to_dtype(DType::F32)?),
                Matrix::Dense(t) => Ok(t),
                Matrix::Ggml(b) => {
                    let (r, c) = (b.rows, b.cols);
                    let q = b.into_matrix()?;
                    Ok(Tensor::from_vec(q.dequantize(), (r, c), &Device::Cpu)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let weight = if dense.len() == 1 {
            dense.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&dense, 0)?
        };
        Self::new(weight, bias, quant, cpu_f32)
    }

    /// `cpu_f32`: the model computes in f32 on the CPU, where our kernel
    /// takes f32, bf16 and f16 weights as they are.
    fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        quant: Quantization,
        cpu_f32: bool,
    ) -> Result<Self> {
        let weight = match quant {
            Quantization::None | Quantization::AsStored if cpu_f32 => {
                match PackedWeight::new(&weight)? {
                    Some(packed) => Weight::Packed(packed),
                    None => Weight::Dense(weight.contiguous()?),
                }
            }
            Quantization::None | Quantization::AsStored => Weight::Dense(weight.contiguous()?),
            Quantization::Q8_0 => Weight::Quantized(QMatMul::from_qtensor(QTensor::quantize(
                &weight.to_dtype(DType::F32)?,
                GgmlDType::Q8_0,
            )?)?),
        };
        Ok(Self { weight, bias })
    }

    /// The dense `(out, in)` weight; errors for packed or quantized ones.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn dense(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(w),
            _ => Err(crate::error::Error::Backend {
                model: "cuda graph".into(),
                message: "a packed or quantized weight matrix".into(),
            }),
        }
    }

    /// The bias `[out]`, if any.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x`: `(n, in)` -> `(n, out)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Packed(w) => w.forward(x)?,
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Ggml(q) => x.contiguous()?.apply_op1_no_bwd(q)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x @ W^T` with `W` in ggml blocks: `parts` stacked along the output
/// (`out` rows in all, `inp` columns each), computed by `cpu_quant` on the
/// CPU from f32 `x (n, inp)` into f32 `(n, out)`.
pub(crate) struct GgmlWeight {
    parts: Vec<Arc<QMatrix>>,
    out: usize,
    inp: usize,
}

impl GgmlWeight {
    /// `parts`: non-empty, all with the same number of columns (the
    /// loader's shape checks guarantee both).
    fn new(parts: Vec<Arc<QMatrix>>) -> Self {
        let out = parts.iter().map(|p| p.rows()).sum();
        let inp = parts.first().map_or(0, |p| p.cols());
        Self { parts, out, inp }
    }
}

impl candle_core::CustomOp1 for GgmlWeight {
    fn name(&self) -> &'static str {
        "specdec-ggml-matmul"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (x, n, k) = f32_rows(self.name(), s, l)?;
        if k != self.inp {
            let formats: Vec<_> = self.parts.iter().map(|p| p.qtype()).collect();
            candle_core::bail!(
                "{}: x is (_, {k}) but W ({formats:?}) is (_, {})",
                self.name(),
                self.inp
            );
        }
        let mut y = vec![0f32; n * self.out];
        if let [one] = self.parts.as_slice() {
            one.matmul(x, n, &mut y);
        } else {
            let mut col = 0;
            for p in &self.parts {
                let rows = p.rows();
                let mut part = vec![0f32; n * rows];
                p.matmul(x, n, &mut part);
                for (dst, src) in y.chunks_exact_mut(self.out).zip(part.chunks_exact(rows)) {
                    dst[col..col + rows].copy_from_slice(src);
                }
                col += rows;
            }
        }
        Ok((candle_core::CpuStorage::F32(y), (n, self.out).into()))
    }
}

/// The token embedding `(vocab, hidden)`.
pub(super) enum Embedding {
    /// Dense, in the compute dtype.
    Dense(Tensor),
    /// ggml blocks; looked-up rows are dequantized to f32.
    Ggml(Arc<QMatrix>),
}

impl Embedding {
    /// The dense `(vocab, hidden)` table; errors for ggml blocks.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn dense(&self) -> Result<&Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t),
            Embedding::Ggml(_) => Err(crate::error::Error::Backend {
                model: "cuda graph".into(),
                message: "a quantized embedding".into(),
            }),
        }
    }

    /// Rows of `tokens` (ids checked against the vocabulary by the caller):
    /// `(n, hidden)`.
    fn forward(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(tokens, device)?, 0)?),
            Embedding::Ggml(q) => {
                let h = q.cols();
                let mut x = vec![0f32; tokens.len() * h];
                for (row, &t) in x.chunks_exact_mut(h.max(1)).zip(tokens) {
                    q.dequantize_row(t as usize, row);
                }
                Ok(Tensor::from_vec(x, (tokens.len(), h), device)?)
            }
        }
    }
}

/// Per-layer KV cache, allocated once for `n_positions`.
pub(crate) struct LayerCache {
    /// `(kv_heads, n_positions, head_dim)`
    pub(super) k: Tensor,
    /// `(kv_heads, n_positions, head_dim)`
    pub(super) v: Tensor,
}

pub(super) struct Layer {
    pub(super) input_norm: Tensor,
    /// q, k and v projections fused into one: `(heads + 2 kv_heads) * head_dim` outputs.
    pub(super) qkv: Linear,
    pub(super) o: Linear,
    pub(super) post_norm: Tensor,
    /// gate and up fused: `2 * intermediate` outputs.
    pub(super) gate_up: Linear,
    pub(super) down: Linear,
}

/// Weights and rotary tables of one model.
pub(crate) struct Llama {
    pub(super) cfg: ModelConfig,
    pub(super) embed: Embedding,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Linear,
    /// RoPE inverse frequencies `[head_dim / 2]`, scaling applied.
    inv_freq: Vec<f64>,
    /// `(n_positions, head_dim / 2)`
    cos: Tensor,
    /// `(n_positions, head_dim / 2)`
    sin: Tensor,
    pub(super) dtype: DType,
    pub(super) device: Device,
    /// The CUDA graph decoder has re-laid out the weight matrices for its
    /// own kernel: [`Llama::forward`] (candle's ops) refuses to run.
    graph_only: bool,
}

impl Llama {
    /// Loads every tensor the config implies, checking names and shapes.
    pub(crate) fn load(
        cfg: &ModelConfig,
        ckpt: &dyn WeightSource,
        n_positions: usize,
        dtype: DType,
        device: &Device,
        quant: Quantization,
    ) -> Result<Self> {
        let c = cfg;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
        let get = |name: &str, shape: &[usize]| ckpt.tensor(name, shape, Some(dtype), device);
        // Our CPU kernel reads bf16 / f16 weight matrices as stored and widens
        // them exactly, so f32 compute need not double their bytes.
        let cpu_f32 = device.is_cpu() && dtype == DType::F32;
        let as_stored = cpu_f32 && matches!(quant, Quantization::None | Quantization::AsStored);
        let matrix = |name: &str, shape: &[usize]| {
            ckpt.matrix(
                name,
                shape,
                if as_stored { None } else { Some(dtype) },
                device,
            )
        };
        let embed = match ckpt.matrix(
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            Some(dtype),
            device,
        )? {
            Matrix::Dense(t) => Embedding::Dense(t),
            Matrix::Ggml(b) => Embedding::Ggml(Arc::new(b.into_matrix()?)),
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let proj = |name: &str,
                        out: usize,
                        inp: usize,
                        bias: bool|
             -> Result<(Matrix, Option<Tensor>)> {
                let w = matrix(&format!("{p}.{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(get(&format!("{p}.{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok((w, b))
            };
            let (qw, qb) = proj("self_attn.q_proj", q_out, h, c.qkv_bias)?;
            let (kw, kb) = proj("self_attn.k_proj", kv_out, h, c.qkv_bias)?;
            let (vw, vb) = proj("self_attn.v_proj", kv_out, h, c.qkv_bias)?;
            let (ow, _) = proj("self_attn.o_proj", h, q_out, false)?;
            let (gw, gb) = proj("mlp.gate_proj", c.intermediate_size, h, c.mlp_bias)?;
            let (uw, ub) = proj("mlp.up_proj", c.intermediate_size, h, c.mlp_bias)?;
            let (dw, db) = proj("mlp.down_proj", h, c.intermediate_size, c.mlp_bias)?;
            let cat = |a: Option<Tensor>,
                       b: Option<Tensor>,
                       c: Option<Tensor>|
             -> Result<Option<Tensor>> {
                Ok(match (a, b, c) {
                    (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
                    (Some(a), Some(b), None) => Some(Tensor::cat(&[a, b], 0)?),
                    _ => None,
                })
            };
            layers.push(Layer {
                input_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv: Linear::fused(vec![qw, kw, vw], cat(qb, kb, vb)?, quant, cpu_f32)?,
                o: Linear::fused(vec![ow], None, quant, cpu_f32)?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: Linear::fused(vec![gw, uw], cat(gb, ub, None)?, quant, cpu_f32)?,
                down: Linear::fused(vec![dw], db, quant, cpu_f32)?,
            });
        }
        let norm = get("model.norm.weight", &[h])?;
        let tied = c.tie_word_embeddings && !ckpt.contains("lm_head.weight");
        let lm_head = match &embed {
            // The head reads the embedding's blocks: one copy for both.
            Embedding::Ggml(q) if tied => Linear {
                weight: Weight::Ggml(GgmlWeight::new(vec![q.clone()])),
                bias: None,
            },
            _ => {
                let name = if tied {
                    "model.embed_tokens.weight"
                } else {
                    "lm_head.weight"
                };
                Linear::fused(
                    vec![matrix(name, &[c.vocab_size, h])?],
                    None,
                    quant,
                    cpu_f32,
                )?
            }
        };
        let mut inv_freq = cfg.rope_inv_freq();
        let half = inv_freq.len();
        if let Some(factors) = ckpt.rope_factors(half)? {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let (cos, sin) = rope_tables(&inv_freq, n_positions);
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n_positions, half), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            cos: table(cos)?,
            sin: table(sin)?,
            dtype,
            device: device.clone(),
            graph_only: false,
        })
    }

    /// Hands the weight matrices to the CUDA graph decoder, which re-lays
    /// them out: from now on [`Llama::forward`] errors.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn mark_graph_only(&mut self) {
        self.graph_only = true;
    }

    /// Positions the RoPE tables (and the caches) hold.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn rope_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// The RoPE tables `(n_positions, head_dim / 2)` in f32, row-major:
    /// cos, then sin.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn rope_tables_f32(&self) -> (Vec<f32>, Vec<f32>) {
        rope_tables(&self.inv_freq, self.rope_positions())
    }

    /// Zeroed caches for `n_positions`.
    pub(crate) fn new_cache(&self, n_positions: usize) -> Result<Vec<LayerCache>> {
        let shape = (self.cfg.num_kv_heads, n_positions, self.cfg.head_dim);
        (0..self.cfg.num_layers)
            .map(|_| {
                Ok(LayerCache {
                    k: Tensor::zeros(shape, self.dtype, &self.device)?,
                    v: Tensor::zeros(shape, self.dtype, &self.device)?,
                })
            })
            .collect()
    }

    /// Runs `tokens` at positions `pos..pos+n`, writing the cache there.
    /// Returns logits `(n, vocab)` in f32, or `(1, vocab)` for the last
    /// position only when `last_only`.
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        pos: usize,
        cache: &mut [LayerCache],
        last_only: bool,
    ) -> Result<Tensor> {
        if self.graph_only {
            return Err(crate::error::Error::Backend {
                model: "cuda graph".into(),
                message: "candle's ops asked to run on weights laid out for the graph decoder"
                    .into(),
            });
        }
        let n = tokens.len();
        let mut x = self.embed.forward(tokens, &self.device)?; // (n, hidden)
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        // Our CPU attention applies causality and the window itself.
        let mask = if self.cpu_f32() {
            None
        } else {
            self.mask(n, pos)?
        };
        for (layer, cache) in self.layers.iter().zip(cache.iter_mut()) {
            let h = rms_norm(&x, &layer.input_norm, self.cfg.rms_norm_eps)?;
            let h = self.attention(layer, &h, pos, &cos, &sin, mask.as_ref(), cache)?;
            x = (x + h)?;
            let h = rms_norm(&x, &layer.post_norm, self.cfg.rms_norm_eps)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let f = self.cfg.intermediate_size;
            let act = if self.cpu_f32() {
                gate_up.apply_op1_no_bwd(&SwiGlu)?
            } else {
                (candle_nn::ops::silu(&gate_up.narrow(1, 0, f)?)? * gate_up.narrow(1, f, f)?)?
            };
            x = (x + layer.down.forward(&act)?)?;
        }
        if last_only && n > 1 {
            x = x.narrow(0, n - 1, 1)?;
        }
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Whether the model runs on the CPU.
    pub(crate) fn is_cpu(&self) -> bool {
        self.device.is_cpu()
    }

    /// Computing in f32 on the CPU, where our own kernels run.
    fn cpu_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Additive attention mask `(n, pos + n)`: 0 where query `i` (at `pos + i`)
    /// may see key `j`, `-inf` where `j` is in its future or, with a sliding
    /// window, too far in its past. `None` when nothing is masked.
    fn mask(&self, n: usize, pos: usize) -> Result<Option<Tensor>> {
        let len = pos + n;
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let visible = |i: usize, j: usize| j <= pos + i && pos + i - j < window;
        if n == 1 && len <= window {
            return Ok(None); // one query at the end sees every key
        }
        let data: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    if visible(i, j) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Ok(Some(
            Tensor::from_vec(data, (n, len), &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        pos: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (n, hd, heads, kvh) = (x.dim(0)?, c.head_dim, c.num_heads, c.num_kv_heads);
        let group = heads / kvh;
        let qkv = layer.qkv.forward(x)?; // (n, (heads + 2 kvh) * hd)
        let split = |start: usize, count: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, start * hd, count * hd)?
                .reshape((n, count, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?)
        };
        let q = candle_nn::rotary_emb::rope(&split(0, heads)?, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope(&split(heads, kvh)?, cos, sin)?.squeeze(0)?;
        let v = split(heads + kvh, kvh)?.squeeze(0)?;
        cache.k.slice_set(&k, 1, pos)?;
        cache.v.slice_set(&v, 1, pos)?;
        if self.cpu_f32() {
            let op = CachedAttention {
                pos,
                window: c.sliding_window.unwrap_or(usize::MAX),
                scale: (1.0 / (hd as f64).sqrt()) as f32,
            };
            let out = q.contiguous()?.apply_op3_no_bwd(&cache.k, &cache.v, &op)?;
            return layer.o.forward(&out); // (n, heads * hd)
        }
        let len = pos + n;
        let mut keys = cache.k.narrow(1, 0, len)?; // (kvh, len, hd)
        let mut values = cache.v.narrow(1, 0, len)?;
        if !self.device.is_cpu() {
            // cuBLAS wants each matrix of a batch contiguous; the CPU gemm
            // takes the strided views as they are.
            keys = keys.contiguous()?;
            values = values.contiguous()?;
        }
        // Query heads sharing a kv head are adjacent: fold them into rows.
        let q = (q.reshape((kvh, group * n, hd))? * (1.0 / (hd as f64).sqrt()))?;
        let mut scores = q.matmul(&keys.t()?)?; // (kvh, group * n, len)
        if let Some(mask) = mask {
            scores = scores
                .reshape((kvh, group, n, len))?
                .broadcast_add(mask)?
                .reshape((kvh, group * n, len))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?; // (kvh, group * n, hd)
        let out = out
            .reshape((heads, n, hd))?
            .transpose(0, 1)?
            .reshape((n, heads * hd))?;
        layer.o.forward(&out)
    }
}

/// `silu(gate) * up` from the fused `(n, 2f)` projection, in one pass and
/// one allocation (candle's ops take two of each, over strided views), on
/// the CPU in f32. Elementwise, so rows stay independent.
struct SwiGlu;

impl candle_core::CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "specdec-swiglu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (v, n, two_f) = f32_rows(self.name(), s, l)?;
        if two_f % 2 != 0 {
            candle_core::bail!("{}: odd width {two_f}", self.name());
        }
        let f = two_f / 2;
        let mut out = vec![0f32; n * f];
        let row = |(o, row): (&mut [f32], &[f32])| {
            let (gate, up) = row.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        };
        if n > 1 && n * f >= 1 << 15 {
            use rayon::prelude::*;
            out.par_chunks_mut(f.max(1))
                .zip(v.par_chunks(two_f.max(1)))
                .for_each(row);
        } else {
            out.chunks_mut(f.max(1))
                .zip(v.chunks(two_f.max(1)))
                .for_each(row);
        }
        Ok((candle_core::CpuStorage::F32(out), (n, f).into()))
    }
}

/// cos and sin of `pos * f` for `pos < n_positions` and each inverse
/// frequency `f`, `(n_positions, inv_freq.len())` row-major.
fn rope_tables(inv_freq: &[f64], n_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(n_positions * half);
    let mut sin = Vec::with_capacity(n_positions * half);
    for pos in 0..n_positions {
        for f in inv_freq {
            // f32 angles, as transformers computes them.
            let angle = (pos as f32 * *f as f32) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?)
}
