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
//! ops (`cpu::matmul`, `cpu::attention`), which keep every row of a pass
//! independent of the others; `scores` above is then never materialized.
//! Other devices and dtypes take candle's matmul, mask and softmax.
//!
//! Here: the layer loop and attention over the KV cache. The blocks it is
//! built from (projections, embedding, SwiGLU, RMSNorm, rotary tables) are
//! in `layers`; its tensors come through `load::WeightSource`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::cpu::attention::CachedAttention;
use super::layers::{rms_norm, rope_tables, swiglu, Embedding, Linear, Quantization};
use super::load::config::ModelConfig;
use super::load::{Matrix, WeightSource};
use crate::error::Result;
use crate::model::Rows;

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
    /// Attention sinks: key positions `0..sinks` stay visible to every
    /// query beyond the recent window (0: none).
    sinks: usize,
    /// Recent keys a query sees, itself included (`usize::MAX`: all).
    /// Both apply within the checkpoint's own `sliding_window`.
    recent: usize,
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
            Embedding::Ggml(q) if tied => Linear::ggml(vec![q.clone()]),
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
            sinks: 0,
            recent: usize::MAX,
        })
    }

    /// Bounds attention to key positions `0..sinks` plus the last `recent`
    /// (see `AttentionWindow`). Only our CPU f32 kernel honours it: the
    /// loader refuses it on other paths before calling this.
    pub(super) fn set_attention_window(&mut self, sinks: usize, recent: usize) {
        self.sinks = sinks;
        self.recent = recent;
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
    /// Returns logits `(n, vocab)` in f32 for [`Rows::All`], or `(1, vocab)`
    /// for the last position only for [`Rows::Last`].
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        pos: usize,
        cache: &mut [LayerCache],
        rows: Rows,
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
            let act = swiglu(&gate_up, f, self.cpu_f32())?;
            x = (x + layer.down.forward(&act)?)?;
        }
        if rows == Rows::Last && n > 1 {
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
                sinks: self.sinks,
                recent: self.recent,
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
