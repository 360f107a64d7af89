//! Where the weights come from: the seam [`WeightSource`], through which
//! the model (`super::llama`) asks for its tensors by Hugging Face name,
//! and one module per file format behind it: `safetensors` (a Hugging Face
//! directory: safetensors shards, with `config` for its `config.json`) and
//! `gguf` (one GGUF file: configuration, tensors and tokenizer). Nothing
//! here computes on the weights: `super::layers` and `super::cpu` do.

pub(super) mod config;
pub(super) mod gguf;
pub(super) mod safetensors;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::quant::QType;
use crate::error::{Error, Result};

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

/// Where `Llama::load` gets its tensors, by Hugging Face name
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

/// Metadata of `path`, following symlinks: `None` if nothing is there.
/// Any other failure (a symlink loop, no permission) is an [`Error::Io`]
/// that says so.
pub(crate) fn probe(path: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
