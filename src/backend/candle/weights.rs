//! Checkpoint loading: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped, every tensor checked for
//! presence, dtype and shape before it is used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::{read_json_object, Fields};
use crate::error::{Error, Result};

/// The safetensors files of one checkpoint.
pub(crate) struct Checkpoint {
    files: MmapedSafetensors,
    /// Named in errors: the single file, or the shard index.
    origin: PathBuf,
}

impl Checkpoint {
    /// Opens the weights in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            // SAFETY: the map is only read while loading, and the tensors are
            // copied out of it; a file changed underneath during load would give
            // wrong weights, not memory unsafety beyond what memmap2 documents.
            let files =
                unsafe { MmapedSafetensors::new(&single) }.map_err(|e| weights_err(&single, e))?;
            return Ok(Self {
                files,
                origin: single,
            });
        }
        if index.is_file() {
            let shards = shard_files(dir, &index)?;
            // SAFETY: as above.
            let files =
                unsafe { MmapedSafetensors::multi(&shards) }.map_err(|e| weights_err(&index, e))?;
            return Ok(Self {
                files,
                origin: index,
            });
        }
        Err(Error::ModelDir {
            path: dir.to_path_buf(),
            reason: "no weights: neither model.safetensors nor model.safetensors.index.json".into(),
        })
    }

    /// Whether the checkpoint has `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.files.get(name).is_ok()
    }

    /// Loads `name`, checks its shape is `shape`, converts it to `dtype`
    /// (`None`: keeps the stored dtype) on `device`.
    pub(crate) fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Tensor> {
        let view = self.files.get(name).map_err(|_| Error::MissingTensor {
            path: self.origin.clone(),
            tensor: name.to_string(),
        })?;
        let stored = view.dtype();
        use safetensors::Dtype as S;
        if !matches!(stored, S::BF16 | S::F16 | S::F32) {
            return Err(Error::UnsupportedDtype {
                path: self.origin.clone(),
                tensor: name.to_string(),
                dtype: format!("{stored:?}"),
            });
        }
        if view.shape() != shape {
            return Err(Error::ShapeMismatch {
                path: self.origin.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        let t = self
            .files
            .load(name, &Device::Cpu)
            .map_err(|e| weights_err(&self.origin, e))?;
        let t = match dtype {
            Some(dtype) => t.to_dtype(dtype)?,
            None => t,
        };
        Ok(t.to_device(device)?)
    }
}

fn weights_err(path: &Path, e: candle_core::Error) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The shard files a `model.safetensors.index.json` names, each checked to exist.
fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let map = read_json_object(index)?;
    let Some(serde_json::Value::Object(weight_map)) = map.get("weight_map") else {
        return Err(Error::config(
            index,
            "weight_map",
            "missing, or not an object of tensor -> shard file",
        ));
    };
    let mut names = BTreeSet::new();
    for (tensor, shard) in weight_map {
        match shard.as_str() {
            Some(s) => names.insert(s.to_string()),
            None => {
                return Err(Error::config(
                    index,
                    format!("weight_map.{tensor}"),
                    format!("expected a shard file name, found {shard}"),
                ))
            }
        };
    }
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::ModelDir {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "{} names shard {name}, which does not exist",
                        index.display()
                    ),
                })
            }
        })
        .collect()
}

/// EOS ids from `generation_config.json`, if it exists and has them.
pub(crate) fn generation_eos(dir: &Path) -> Result<Option<Vec<u32>>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let map = read_json_object(&path)?;
    let ids = Fields {
        path: &path,
        map: &map,
        prefix: "",
    }
    .ids("eos_token_id")?;
    Ok((!ids.is_empty()).then_some(ids))
}
