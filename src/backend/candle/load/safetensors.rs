//! A Hugging Face model directory's weights: `model.safetensors` or a
//! sharded `model.safetensors.index.json`, memory-mapped, every tensor
//! checked for presence, dtype and shape before it is used, and every
//! tensor of the checkpoint accounted for; [`Checkpoint`] is the
//! directory's [`WeightSource`]. Also the directory's EOS ids
//! (`generation_config.json`). Its `config.json` is read by `super::config`;
//! the model built from the weights is `super::super::llama`'s.
//!
//! The order of the checks is what keeps a hostile checkpoint from crashing
//! or hanging the process:
//!
//! 1. [`model_dir`]: the directory and its `config.json` exist (a symlink loop
//!    or a permission problem is reported as such, not as "does not exist").
//! 2. [`ModelConfig::from_json`]: every size is a positive integer and every
//!    size derived from them (heads x head_dim, the parameter count in bytes)
//!    fits the address space, computed with checked arithmetic.
//! 3. [`Checkpoint::open`]: the safetensors headers parse; a sharded
//!    checkpoint reads each tensor from the shard its `weight_map` names,
//!    never from another shard that happens to hold a stale copy.
//! 4. [`Checkpoint::check_before_load`]: the sizes config.json gives are
//!    compared with what the tensors hold (layer count, embedding, the first
//!    layer's projections), and the KV cache and rotary tables for
//!    `n_positions` are sized with checked arithmetic, before anything big
//!    is allocated.
//! 5. The forward pass loads its tensors through [`Checkpoint::tensor`],
//!    which checks each one's dtype and shape.
//! 6. [`Checkpoint::refuse_unused`]: a tensor the architecture never asked
//!    for means config.json describes another model; it is refused by name.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{BufferedSafetensors, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

use super::config::{check_eos, ModelConfig};
use super::{probe, WeightSource};
use crate::error::{Error, Result};
use crate::json::{read_json_object, Fields};

/// Tensors some checkpoints carry that are recomputed from config.json and
/// so safe to skip: older transformers versions saved RoPE's inverse
/// frequencies as a buffer of every attention layer.
const RECOMPUTED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

/// Checks `dir` is a model directory and returns its `config.json`.
pub(crate) fn model_dir(dir: &Path) -> Result<PathBuf> {
    let reason = match probe(dir)? {
        None => "does not exist",
        Some(m) if !m.is_dir() => "is not a directory",
        Some(_) => {
            let config = dir.join("config.json");
            match probe(&config)? {
                Some(m) if m.is_file() => return Ok(config),
                _ => "has no config.json",
            }
        }
    };
    Err(Error::ModelDir {
        path: dir.to_path_buf(),
        reason: reason.into(),
    })
}

/// One safetensors file, memory-mapped (or, for the fuzzer, in memory).
enum Data {
    Mapped(MmapedSafetensors),
    Buffered(BufferedSafetensors),
}

struct Shard {
    path: PathBuf,
    data: Data,
}

impl Shard {
    fn map(path: PathBuf) -> Result<Self> {
        // SAFETY: the map is only read while loading, and the tensors are
        // copied out of it; a file changed underneath during load would give
        // wrong weights, not memory unsafety beyond what memmap2 documents.
        let data = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| weights_err(&path, e))?;
        Ok(Self {
            path,
            data: Data::Mapped(data),
        })
    }

    fn buffer(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let data = BufferedSafetensors::new(bytes).map_err(|e| weights_err(&path, e))?;
        Ok(Self {
            path,
            data: Data::Buffered(data),
        })
    }

    fn view(&self, name: &str) -> Option<safetensors::tensor::TensorView<'_>> {
        match &self.data {
            Data::Mapped(d) => d.get(name).ok(),
            Data::Buffered(d) => d.get(name).ok(),
        }
    }

    fn names(&self) -> Vec<String> {
        let tensors = match &self.data {
            Data::Mapped(d) => d.tensors(),
            Data::Buffered(d) => d.tensors(),
        };
        tensors.into_iter().map(|(name, _)| name).collect()
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let t = match &self.data {
            Data::Mapped(d) => d.load(name, &Device::Cpu),
            Data::Buffered(d) => d.load(name, &Device::Cpu),
        };
        t.map_err(|e| weights_err(&self.path, e))
    }
}

/// The safetensors files of one checkpoint and which tensor lives where.
pub(crate) struct Checkpoint {
    shards: Vec<Shard>,
    /// Every tensor of the checkpoint -> the shard it is read from.
    routes: BTreeMap<String, usize>,
    /// Named in errors about the checkpoint as a whole: the single file, or
    /// the shard index.
    origin: PathBuf,
    /// Tensors the architecture has asked for.
    used: RefCell<BTreeSet<String>>,
}

impl Checkpoint {
    /// Opens the weights in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if probe(&single)?.is_some_and(|m| m.is_file()) {
            return Ok(Self::single(Shard::map(single)?));
        }
        if probe(&index)?.is_some_and(|m| m.is_file()) {
            let map = read_json_object(&index)?;
            return Self::sharded(&index, &map, |name| {
                let path = dir.join(name);
                match probe(&path)? {
                    Some(m) if m.is_file() => Shard::map(path),
                    _ => Err(Error::ModelDir {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "{} names shard {name}, which does not exist",
                            index.display()
                        ),
                    }),
                }
            });
        }
        Err(Error::ModelDir {
            path: dir.to_path_buf(),
            reason: "no weights: neither model.safetensors nor model.safetensors.index.json".into(),
        })
    }

    fn single(shard: Shard) -> Self {
        let routes = shard.names().into_iter().map(|n| (n, 0)).collect();
        Self {
            origin: shard.path.clone(),
            shards: vec![shard],
            routes,
            used: RefCell::default(),
        }
    }

    /// A sharded checkpoint: each tensor of `weight_map` is read from the
    /// shard it names (`open` opens a shard by its file name). A shard's
    /// tensors the index does not route to it are never read: the index is
    /// what transformers loads by, and a stale copy left in another shard
    /// must not replace the real weights.
    fn sharded(
        index: &Path,
        map: &Map<String, Value>,
        mut open: impl FnMut(&str) -> Result<Shard>,
    ) -> Result<Self> {
        let Some(Value::Object(weight_map)) = map.get("weight_map") else {
            return Err(Error::config(
                index,
                "weight_map",
                "missing, or not an object of tensor -> shard file",
            ));
        };
        if weight_map.is_empty() {
            return Err(Error::config(index, "weight_map", "empty: no tensors"));
        }
        let mut shards: Vec<Shard> = Vec::new();
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (tensor, shard) in weight_map {
            let field = || format!("weight_map.{tensor}");
            let Some(name) = shard.as_str() else {
                return Err(Error::config(
                    index,
                    field(),
                    format!("expected a shard file name, found {shard}"),
                ));
            };
            if !is_plain_file_name(name) {
                return Err(Error::config(
                    index,
                    field(),
                    format!("{name:?} is not a file name in the model directory"),
                ));
            }
            let i = match by_name.get(name) {
                Some(&i) => i,
                None => {
                    shards.push(open(name)?);
                    by_name.insert(name, shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[i].view(tensor).is_none() {
                return Err(Error::MissingTensor {
                    path: shards[i].path.clone(),
                    tensor: format!("{tensor} (the index names this shard for it)"),
                });
            }
            routes.insert(tensor.clone(), i);
        }
        Ok(Self {
            shards,
            routes,
            origin: index.to_path_buf(),
            used: RefCell::default(),
        })
    }

    /// Whether the checkpoint has `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The shard holding `name`, after checking its dtype is one we load and
    /// its shape is `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<&Shard> {
        let missing = || Error::MissingTensor {
            path: self.origin.clone(),
            tensor: name.to_string(),
        };
        let shard = &self.shards[*self.routes.get(name).ok_or_else(missing)?];
        let view = shard.view(name).ok_or_else(missing)?;
        let stored = view.dtype();
        use safetensors::Dtype as S;
        if !matches!(stored, S::BF16 | S::F16 | S::F32) {
            return Err(Error::UnsupportedDtype {
                path: shard.path.clone(),
                tensor: name.to_string(),
                dtype: format!("{stored:?}"),
            });
        }
        if view.shape() != shape {
            return Err(Error::ShapeMismatch {
                path: shard.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        Ok(shard)
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
        let t = self.checked(name, shape)?.load(name)?;
        self.used.borrow_mut().insert(name.to_string());
        let t = match dtype {
            Some(dtype) => t.to_dtype(dtype)?,
            None => t,
        };
        Ok(t.to_device(device)?)
    }

    /// Compares config.json's sizes with what the tensors hold, and sizes
    /// the KV cache and rotary tables for `n_positions` (`bytes_per_value`:
    /// 4 for f32), all before anything big is allocated. `config_path` is
    /// named in errors about config.json.
    pub(crate) fn check_before_load(
        &self,
        cfg: &ModelConfig,
        config_path: &Path,
        n_positions: usize,
        bytes_per_value: usize,
        device: &Device,
    ) -> Result<()> {
        self.check_layer_count(cfg, config_path)?;
        // These bound every size of config.json by the file's contents
        // (vocab and hidden, heads x head_dim, kv heads x head_dim,
        // intermediate); config.json made sure the products do not overflow.
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        self.checked("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let p = "model.layers.0";
        self.checked(
            &format!("{p}.self_attn.q_proj.weight"),
            &[cfg.num_heads * hd, h],
        )?;
        self.checked(
            &format!("{p}.self_attn.k_proj.weight"),
            &[cfg.num_kv_heads * hd, h],
        )?;
        self.checked(
            &format!("{p}.mlp.gate_proj.weight"),
            &[cfg.intermediate_size, h],
        )?;
        cfg.check_positions(config_path, n_positions, bytes_per_value, device.is_cpu())
    }

    /// `num_hidden_layers` against the `model.layers.{i}` the checkpoint has.
    fn check_layer_count(&self, cfg: &ModelConfig, config_path: &Path) -> Result<()> {
        let layer_of = |name: &str| -> Option<usize> {
            name.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        };
        let layers = self
            .routes
            .keys()
            .filter_map(|n| layer_of(n))
            .max()
            .map_or(0, |i| i + 1);
        let n = cfg.num_layers;
        if n > layers {
            return Err(Error::config(
                config_path,
                "num_hidden_layers",
                format!(
                    "{n}, but {} has tensors for {layers} layer(s)",
                    self.origin.display()
                ),
            ));
        }
        let extra: Vec<&String> = self
            .routes
            .keys()
            .filter(|name| layer_of(name).is_some_and(|i| i >= n))
            .collect();
        if let Some(first) = extra.iter().min_by_key(|name| layer_of(name)) {
            return Err(Error::UnusedTensor {
                path: self.origin.clone(),
                tensor: first.to_string(),
                count: extra.len(),
                hint: format!(
                    "config.json says num_hidden_layers = {n}, but the checkpoint has {layers} layers"
                ),
            });
        }
        Ok(())
    }

    /// Refuses a checkpoint with tensors the architecture never loaded
    /// (other than [`RECOMPUTED_SUFFIXES`]): config.json then describes a
    /// different model than the weights, and the output would be wrong.
    pub(crate) fn refuse_unused(&self, cfg: &ModelConfig) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&String> = self
            .routes
            .keys()
            .filter(|name| !used.contains(*name))
            .filter(|name| !RECOMPUTED_SUFFIXES.iter().any(|s| name.ends_with(s)))
            .collect();
        let Some(first) = unused.first() else {
            return Ok(());
        };
        let hint = if first.ends_with(".bias") {
            format!(
                "config.json enables no such bias (attention_bias = {}, mlp_bias = {})",
                cfg.qkv_bias, cfg.mlp_bias
            )
        } else {
            format!(
                "is the checkpoint of the architecture config.json names (model_type = {})?",
                cfg.model_type
            )
        };
        Err(Error::UnusedTensor {
            path: self.origin.clone(),
            tensor: first.to_string(),
            count: unused.len(),
            hint,
        })
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

/// A shard name must stay inside the model directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.contains('\0')
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
}

fn weights_err(path: &Path, e: candle_core::Error) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// EOS ids from `generation_config.json`, if it exists and has them, checked
/// against the vocabulary of `cfg`.
pub(crate) fn generation_eos(dir: &Path, cfg: &ModelConfig) -> Result<Option<Vec<u32>>> {
    let path = dir.join("generation_config.json");
    if !probe(&path)?.is_some_and(|m| m.is_file()) {
        return Ok(None);
    }
    let map = read_json_object(&path)?;
    let ids = Fields {
        path: &path,
        map: &map,
        prefix: "",
    }
    .ids("eos_token_id")?;
    check_eos(&path, &ids, cfg.vocab_size)?;
    Ok((!ids.is_empty()).then_some(ids))
}

/// The checkpoint half of `fuzz_load` (in `super::super`, which builds
/// the model): parses `config_json` into a [`ModelConfig`], checks
/// `generation_config_json`'s EOS ids if given, reads `weights` as a
/// safetensors file (every shard of `index_json`, when given, is these
/// bytes), and runs every check of [`Checkpoint`] that comes before the
/// tensors are loaded, for `n_positions` positions on the CPU.
pub(crate) fn fuzz_checkpoint(
    config_json: &[u8],
    weights: &[u8],
    index_json: Option<&[u8]>,
    generation_config_json: Option<&[u8]>,
    n_positions: usize,
) -> Result<(ModelConfig, Checkpoint)> {
    let object = |path: &str, bytes: &[u8]| -> Result<Map<String, Value>> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::Json {
                path: path.into(),
                message: "not an object".into(),
            }),
            Err(e) => Err(Error::Json {
                path: path.into(),
                message: e.to_string(),
            }),
        }
    };
    let config_path = Path::new("config.json");
    let cfg = ModelConfig::from_json(config_path, &object("config.json", config_json)?)?;
    if let Some(bytes) = generation_config_json {
        let path = Path::new("generation_config.json");
        let map = object("generation_config.json", bytes)?;
        let ids = Fields {
            path,
            map: &map,
            prefix: "",
        }
        .ids("eos_token_id")?;
        check_eos(path, &ids, cfg.vocab_size)?;
    }
    let ckpt = match index_json {
        None => Checkpoint::single(Shard::buffer("model.safetensors".into(), weights.to_vec())?),
        Some(bytes) => {
            let index = Path::new("model.safetensors.index.json");
            let map = object("model.safetensors.index.json", bytes)?;
            Checkpoint::sharded(index, &map, |name| {
                Shard::buffer(name.into(), weights.to_vec())
            })?
        }
    };
    let device = Device::Cpu;
    ckpt.check_before_load(&cfg, config_path, n_positions, 4, &device)?;
    Ok((cfg, ckpt))
}
