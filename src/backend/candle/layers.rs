//! The building blocks the model is made of, on candle tensors ("our
//! candle-nn"): projections ([`Linear`]: dense, packed for our CPU kernel,
//! Q8_0, or ggml blocks as stored, with [`Quantization`] choosing), the
//! token embedding, the SwiGLU activation, RMSNorm and the rotary tables.
//! Each picks our CPU kernels (`super::cpu`) when computing in f32 on the
//! CPU and candle's ops otherwise. Not here: which tensors make a layer and
//! how layers are run (`super::llama`), and where weights come from
//! (`super::load`).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::cpu::f32_rows;
use super::cpu::matmul::PackedWeight;
use super::cpu::quant::QMatrix;
use super::load::{Blocks, Matrix};
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

// The blocks a `WeightSource` hands over become a matrix our kernel computes
// on here, not in `load`, which stays below the kernels.
impl Blocks {
    pub(super) fn into_matrix(self) -> Result<QMatrix> {
        QMatrix::new(self.qtype, self.rows, self.cols, self.data)
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
    /// A projection on ggml blocks already in memory, without a bias (a
    /// tied output head reads the embedding's blocks: one copy for both).
    pub(super) fn ggml(parts: Vec<Arc<QMatrix>>) -> Self {
        Self {
            weight: Weight::Ggml(GgmlWeight::new(parts)),
            bias: None,
        }
    }

    /// Fuses `parts` (each `(out_i, in)`) along the output into one
    /// projection. `cpu_f32`: the model computes in f32 on the CPU, where
    /// our kernels take f32, bf16 and f16 weights and ggml blocks as they are.
    pub(super) fn fused(
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
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
/// (`out` rows in all, `inp` columns each), computed by `cpu::quant` on the
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
    pub(super) fn forward(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
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

/// `silu(gate) * up` of the fused gate and up projection `(n, 2f)`:
/// `(n, f)`, by our op ([`SwiGlu`]) when computing in f32 on the CPU
/// (`cpu_f32`), by candle's ops elsewhere.
pub(super) fn swiglu(gate_up: &Tensor, f: usize, cpu_f32: bool) -> Result<Tensor> {
    Ok(if cpu_f32 {
        gate_up.apply_op1_no_bwd(&SwiGlu)?
    } else {
        (candle_nn::ops::silu(&gate_up.narrow(1, 0, f)?)? * gate_up.narrow(1, f, f)?)?
    })
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
pub(super) fn rope_tables(inv_freq: &[f64], n_positions: usize) -> (Vec<f32>, Vec<f32>) {
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

/// RMSNorm of each row of `x` with `weight` (candle's op).
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?)
}
