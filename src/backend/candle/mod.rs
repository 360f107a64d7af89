//! The candle backend: loads a Hugging Face Llama / Mistral / Qwen2 directory
//! or a llama / qwen2 GGUF file and runs it on the CPU (f32) or, with
//! the `cuda` feature, an NVIDIA GPU.
//!
//! A model directory is what `save_pretrained` writes: `config.json`,
//! `model.safetensors` (or `model.safetensors.index.json` + shards) in bf16,
//! f16 or f32, `tokenizer.json`, and optionally `generation_config.json`.
//!
//! A GGUF file (the format of llama.cpp and Ollama) holds all of that in
//! one: the configuration in `llama.*` / `qwen2.*` metadata, the tensors in f32, f16,
//! bf16 or ggml blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K; also Q5_0,
//! Q5_1, Q2_K, Q3_K, always dequantized), the tokenizer (byte-level BPE)
//! and the chat template. Its blocks are dequantized to f32 at load
//! ([`Quantization::None`], the exact reference path) or computed on as
//! stored ([`Quantization::AsStored`], CPU only). A `tokenizer.json`
//! beside the file replaces the one in its metadata.
//!
//! # Where things live
//!
//! Each layer imports only the ones below it:
//!
//! ```text
//! mod.rs        CandleModel (LanguageModel), LoadOptions, fuzz_load
//! cuda/         the CUDA decode step: fused kernels replayed as graphs
//! llama.rs      the forward pass: Llama, its layers and KV cache
//! layers.rs     projections (Linear, Quantization), embedding, SwiGLU,
//!               RMSNorm, rotary tables: our candle-nn
//! cpu/          our CPU kernels (matmul, quant, attention) and what they
//!               share
//! pool.rs       rayon's thread pool the kernels run on (init_thread_pool)
//! load/         WeightSource, the seam the model reads its tensors through;
//!   config.rs       config.json -> ModelConfig
//!   safetensors.rs  a Hugging Face directory's safetensors shards
//!   gguf/           a GGUF file: metadata, tensors, tokenizer
//! quant.rs      ggml block formats: sizes, byte layouts, what the bytes mean
//! ```
//!
//! Reading JSON files is the crate's `json` module, shared with the chat
//! template.

mod cpu;
mod cuda;
mod layers;
mod llama;
mod load;
mod pool;
mod quant;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use layers::Quantization;
pub use load::config::{ModelConfig, RopeScaling, SUPPORTED_MODEL_TYPES};
pub use pool::{init_thread_pool, max_threads, THREADS_PER_CORE};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::model::{check_feed, check_truncate, LanguageModel, Logits, Rows};
use crate::sampling::{argmax, greedy_pick, Confidence};
use crate::tokenizer::Tokenizer;
use cuda::GraphDecoder;
use llama::{LayerCache, Llama};
use load::gguf::{self, GgufFile};
use load::safetensors::{self, Checkpoint};
use load::{probe, WeightSource};

/// Runs the loading path on bytes instead of files, for `fuzz/`: parses
/// `config_json` into a [`ModelConfig`], reads `weights` as a safetensors
/// file (every shard of `index_json`, when given, is these bytes), runs every
/// check of the checkpoint loader, loads the model with `n_positions`
/// positions on the CPU, checks `generation_config_json`'s EOS ids if given,
/// and runs one forward pass of up to two tokens.
/// Whatever the bytes, it returns an error or `Ok`, and never panics.
#[doc(hidden)]
pub fn fuzz_load(
    config_json: &[u8],
    weights: &[u8],
    index_json: Option<&[u8]>,
    generation_config_json: Option<&[u8]>,
    n_positions: usize,
) -> Result<()> {
    let (cfg, ckpt) = safetensors::fuzz_checkpoint(
        config_json,
        weights,
        index_json,
        generation_config_json,
        n_positions,
    )?;
    let device = Device::Cpu;
    let llama = Llama::load(
        &cfg,
        &ckpt,
        n_positions,
        DType::F32,
        &device,
        Quantization::None,
    )?;
    ckpt.refuse_unused(&cfg)?;
    // One forward of two tokens (when they fit), so that shapes a hostile
    // config makes possible are run, not only loaded.
    let mut cache = llama.new_cache(n_positions)?;
    let n = n_positions.min(2);
    let tokens: Vec<u32> = (0..n).map(|t| (t % cfg.vocab_size) as u32).collect();
    llama.forward(&tokens, 0, &mut cache, Rows::All)?;
    Ok(())
}

/// Positions allocated when neither the caller nor a small
/// `max_position_embeddings` sets fewer (a 128k-context checkpoint would
/// otherwise allocate its whole KV cache up front).
pub const DEFAULT_MAX_POSITIONS: usize = 4096;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to run: `Device::Cpu` (default) or a CUDA device.
    pub device: Device,
    /// Compute dtype. F32 on CPU (candle's bf16 CPU matmul is far slower);
    /// BF16 suits GPUs.
    pub dtype: DType,
    /// KV-cache positions (`n_positions`). `None`: the smaller of
    /// `max_position_embeddings` and [`DEFAULT_MAX_POSITIONS`].
    pub n_positions: Option<usize>,
    /// Weight storage for the matrix products (Q8_0 and AsStored: CPU only).
    pub quantization: Quantization,
    /// CUDA only: the widths (tokens per pass, each `1..=`[`MAX_GRAPH_WIDTH`])
    /// of the decode step captured as CUDA graphs of fused kernels. A
    /// forward of `n` tokens replays the smallest width `>= n`, padded, or
    /// chunks of the largest (a prompt too: the graph's kernel reads weights
    /// re-laid out for it, which candle's ops then cannot).
    /// Each row's logits are the same bits whatever window or width it is
    /// computed in, so greedy speculative output equals plain decoding by
    /// construction (for a matrix whose rows are not a multiple of 16 or
    /// columns not a multiple of 32, computed by cuBLAS instead, only
    /// within one width). Empty: every
    /// forward runs candle's ops (also the case for dtypes other than bf16,
    /// head_dim not 16/32/64/128/256, MLP biases, hidden sizes that are not
    /// multiples of 8 or exceed 16384). Ignored on the CPU.
    pub cuda_graph_widths: Vec<usize>,
    /// Bound each query's attention to the first few positions plus a
    /// recent window ([`AttentionWindow`]): a draft whose cost per token
    /// stays flat however long the context. `None` (default): full causal
    /// attention (within the checkpoint's own `sliding_window`, if any).
    /// CPU in f32 only; refused elsewhere.
    pub attention_window: Option<AttentionWindow>,
}

/// Attention sinks plus a sliding window of recent keys (as StreamingLLM,
/// MagicDec and TriForce bound a draft's context): the query at absolute
/// position `p` attends only to the keys at positions
/// `[0, sinks) ∪ [p + 1 - recent, p]`, each key keeping the RoPE of its true
/// position and each query computed at its true position.
///
/// The mask is a function of absolute positions only, so the backend
/// contract is untouched: feeding `a ++ b` in one call gives the same logits
/// as `a` then `b` (bit for bit on the CPU in f32), and
/// [`LanguageModel::truncate`] rolls back as before. A model loaded with a
/// window is simply another model; used as the draft, the generator's
/// exactness holds by construction (its `q` is the distribution the draft
/// sampled from). While the context is at most `sinks + recent` tokens the
/// logits are bit for bit those of the full model.
///
/// The CPU attention kernel never reads the keys outside the window: one
/// token's attention costs `sinks + recent` keys however long the context.
/// The rest of the pass is unchanged: every token still goes through the
/// projections and MLP (a prompt costs what it did, less its attention), and
/// the KV cache is still allocated for all `n_positions` and written at
/// every position (keys the window has passed stay in memory, so that
/// truncating to any earlier length needs nothing recomputed).
///
/// With a checkpoint's own `sliding_window` of `w` (Mistral), both masks
/// apply: a key is visible only when it is within the last `w` positions
/// *and* a sink or within the last `recent` (the option only ever removes
/// keys; sinks older than `w` are not brought back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionWindow {
    /// Positions at the start of the context (tokens `0..sinks`) that every
    /// query attends to, the "attention sinks". May be 0.
    pub sinks: usize,
    /// Most recent positions a query attends to, itself included, in
    /// tokens: `p + 1 - recent ..= p`. At least 1.
    pub recent: usize,
}

impl AttentionWindow {
    /// Whether the window hides anything from a query at `position`
    /// (0-based): only once the context `position + 1` exceeds
    /// `sinks + recent`.
    pub fn masks_at(&self, position: usize) -> bool {
        position + 1 > self.sinks.saturating_add(self.recent)
    }
}

/// The widest CUDA graph [`LoadOptions::cuda_graph_widths`] may ask for.
pub const MAX_GRAPH_WIDTH: usize = 16;

/// The CUDA graph widths of [`LoadOptions::cuda`]: windows up to 8 verify
/// in one replay of the width-8 graph; prompts go through in chunks of 16.
pub const DEFAULT_GRAPH_WIDTHS: [usize; 2] = [8, 16];

impl Default for LoadOptions {
    /// CPU, f32, dense.
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            n_positions: None,
            quantization: Quantization::None,
            cuda_graph_widths: Vec::new(),
            attention_window: None,
        }
    }
}

impl LoadOptions {
    /// Options for a CUDA device (`ordinal` 0 for the first GPU) in bf16,
    /// decoding through CUDA graphs of width [`DEFAULT_GRAPH_WIDTHS`].
    /// Errors when the crate was built without the `cuda` feature.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(Self {
            device: Device::new_cuda(ordinal)?,
            dtype: DType::BF16,
            cuda_graph_widths: DEFAULT_GRAPH_WIDTHS.to_vec(),
            ..Self::default()
        })
    }
}

/// A Llama-family model on candle, with its KV cache and tokenizer.
pub struct CandleModel {
    name: String,
    dir: PathBuf,
    config: ModelConfig,
    /// The CUDA decode step, when the model runs on one. Declared before
    /// `llama` and `cache`, whose device memory its graphs address, so that
    /// it is dropped first (fields drop in declaration order).
    graph: Option<GraphDecoder>,
    llama: Llama,
    cache: Vec<LayerCache>,
    len: usize,
    n_positions: usize,
    tokenizer: Option<Tokenizer>,
    chat_template: LazyTemplate,
    eos: Vec<u32>,
}

/// A chat template as loading found it: one that does not parse (or whose
/// file cannot be read) is an error only for whoever asks for it, so that
/// plain prompts still run. Kept as origin and message, to be given out as
/// an [`Error::ChatTemplate`] on every ask.
type LazyTemplate = std::result::Result<Option<ChatTemplate>, (String, String)>;

/// `found` as a [`LazyTemplate`]; `origin` names where it came from when
/// the error does not.
fn lazy_template(
    found: Result<Option<ChatTemplate>>,
    origin: impl FnOnce() -> String,
) -> LazyTemplate {
    found.map_err(|e| match e {
        Error::ChatTemplate { origin, message } => (origin, message),
        other => (origin(), other.to_string()),
    })
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel")
            .field("dir", &self.dir)
            .field("model_type", &self.config.model_type)
            .field("cached_len", &self.len)
            .field("n_positions", &self.n_positions)
            .finish()
    }
}

impl CandleModel {
    /// Loads the model in `path` (a model directory or a `.gguf` file)
    /// with default options (CPU, f32).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads the model in `path`: a model directory, or a file whose name
    /// ends in `.gguf`.
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let dir = path.as_ref();
        if options.quantization != Quantization::None && !options.device.is_cpu() {
            return Err(Error::setting(
                "quantization",
                format!("{:?}", options.quantization),
                "None on a GPU (Q8_0 and AsStored weights are CPU-backend options)",
            ));
        }
        if let Some(&w) = options
            .cuda_graph_widths
            .iter()
            .find(|&&w| w == 0 || w > MAX_GRAPH_WIDTH)
        {
            return Err(Error::setting(
                "cuda_graph_widths",
                w,
                format!("1..={MAX_GRAPH_WIDTH}"),
            ));
        }
        if options.quantization == Quantization::AsStored && options.dtype != DType::F32 {
            return Err(Error::setting(
                "quantization",
                format!("AsStored with dtype {:?}", options.dtype),
                "dtype F32 (the block kernels compute in f32)",
            ));
        }
        check_attention_window(options)?;
        if is_gguf(dir) && probe(dir)?.is_some_and(|m| m.is_file()) {
            return Self::load_gguf(dir, options);
        }
        let config_path = safetensors::model_dir(dir)?;
        let config = ModelConfig::from_file(&config_path)?;
        let n_positions = n_positions(options, &config)?;
        let checkpoint = Checkpoint::open(dir)?;
        checkpoint.check_before_load(
            &config,
            &config_path,
            n_positions,
            options.dtype.size_in_bytes(),
            &options.device,
        )?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = match probe(&tokenizer_path)? {
            Some(_) => Some(Tokenizer::from_file(&tokenizer_path)?),
            None => None,
        };
        let eos = safetensors::generation_eos(dir, &config)?
            .unwrap_or_else(|| config.eos_token_ids.clone());
        let parts = Parts {
            config,
            tokenizer,
            chat_template: lazy_template(ChatTemplate::from_model_dir(dir), || {
                dir.display().to_string()
            }),
            eos,
        };
        Self::assemble(dir, parts, &checkpoint, options, |c, config| {
            c.refuse_unused(config)
        })
    }

    fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Self> {
        let mut file = GgufFile::open(path)?;
        let config = file.config()?;
        file.prepare(&config, options.quantization == Quantization::AsStored);
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer = if beside.is_file() {
            Some(Tokenizer::from_file(&beside)?)
        } else {
            let tokenizer = gguf::tokenizer::from_gguf(&file)?;
            // An id the model can write but the vocabulary lacks would decode
            // to nothing (llama.cpp sizes the embedding by this list).
            if let (Some(_), Some(tokens)) =
                (&tokenizer, file.strings_opt("tokenizer.ggml.tokens")?)
            {
                if tokens.len() != config.vocab_size {
                    return Err(Error::Gguf {
                        path: path.to_path_buf(),
                        message: format!(
                            "metadata `tokenizer.ggml.tokens`: {} tokens for a vocabulary of {}",
                            tokens.len(),
                            config.vocab_size
                        ),
                    });
                }
            }
            tokenizer
        };
        let origin = format!("{} (tokenizer.chat_template)", path.display());
        let chat_template = lazy_template(
            (|| match file.str_opt("tokenizer.chat_template")? {
                None => Ok(None),
                Some(source) => {
                    let token = |key: &str| -> Result<String> {
                        let id = file.token_id_opt(key, config.vocab_size)?;
                        Ok(id
                            .and_then(|id| tokenizer.as_ref()?.id_to_token(id))
                            .unwrap_or_default())
                    };
                    ChatTemplate::new(
                        source,
                        origin.clone(),
                        token("tokenizer.ggml.bos_token_id")?,
                        token("tokenizer.ggml.eos_token_id")?,
                    )
                    .map(Some)
                }
            })(),
            || origin.clone(),
        );
        let eos = config.eos_token_ids.clone();
        let parts = Parts {
            config,
            tokenizer,
            chat_template,
            eos,
        };
        // The KV cache and rotary tables are sized as for a checkpoint.
        let n = n_positions(options, &parts.config)?;
        parts.config.check_positions(
            path,
            n,
            options.dtype.size_in_bytes(),
            options.device.is_cpu(),
        )?;
        Self::assemble(path, parts, &file, options, |f, _| f.check_all_used())
    }

    /// Builds the model from `source`; `after_load` checks the source once
    /// every tensor has been read.
    fn assemble<S: WeightSource>(
        path: &Path,
        parts: Parts,
        source: &S,
        options: &LoadOptions,
        after_load: impl FnOnce(&S, &ModelConfig) -> Result<()>,
    ) -> Result<Self> {
        let config = parts.config;
        let n_positions = n_positions(options, &config)?;
        let mut llama = Llama::load(
            &config,
            source,
            n_positions,
            options.dtype,
            &options.device,
            options.quantization,
        )?;
        after_load(source, &config)?;
        if let Some(w) = options.attention_window {
            llama.set_attention_window(w.sinks, w.recent);
        }
        let cache = llama.new_cache(n_positions)?;
        let graph = GraphDecoder::new(&mut llama, &cache, &options.cuda_graph_widths)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            name,
            dir: path.to_path_buf(),
            config,
            llama,
            cache,
            graph,
            len: 0,
            n_positions,
            tokenizer: parts.tokenizer,
            // Capped at what the model could ever read.
            chat_template: parts.chat_template.map(|t| {
                t.map(|t| {
                    t.with_max_output_bytes(
                        n_positions.saturating_mul(crate::MAX_TEXT_BYTES_PER_POSITION),
                    )
                })
            }),
            eos: parts.eos,
        })
    }

    /// The model's chat template (GGUF metadata, or `chat_template.jinja` /
    /// `tokenizer_config.json` beside a model directory), if it has one,
    /// with its output capped at what `n_positions` could hold. A template
    /// that does not parse, or whose file cannot be read, does not stop the
    /// model from loading: the error ([`Error::ChatTemplate`]) comes here.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        match &self.chat_template {
            Ok(t) => Ok(t.as_ref()),
            Err((origin, message)) => Err(Error::ChatTemplate {
                origin: origin.clone(),
                message: message.clone(),
            }),
        }
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The directory or GGUF file the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_feed(&self, tokens: &[u32]) -> Result<()> {
        check_feed(
            &self.name,
            tokens,
            self.len,
            self.n_positions,
            self.config.vocab_size,
        )
    }

    fn run(&mut self, tokens: &[u32], rows: Rows) -> Result<Logits> {
        self.check_feed(tokens)?;
        if let Some(graph) = &mut self.graph {
            let width = graph.max_width();
            let chunks = tokens.len().div_ceil(width);
            let mut data = Vec::new();
            for (i, chunk) in tokens.chunks(width).enumerate() {
                graph.step(chunk, self.len + i * width)?;
                if rows == Rows::All {
                    data.extend(graph.logits(0)?);
                } else if i + 1 == chunks {
                    data = graph.logits(chunk.len() - 1)?;
                }
            }
            self.len += tokens.len();
            return Ok(Logits::new(data, self.config.vocab_size));
        }
        let (llama, cache, pos) = (&self.llama, &mut self.cache, self.len);
        let mut pass = || -> Result<Vec<f32>> {
            let logits = llama.forward(tokens, pos, cache, rows)?;
            Ok(logits.flatten_all()?.to_vec1::<f32>()?)
        };
        // On the CPU the pass runs on one of rayon's threads: each of its
        // ~50 parallel kernels then splits work with a worker that is still
        // spinning, instead of the caller handing every kernel to the pool
        // and sleeping until it is done (a wake-up per kernel, which cost a
        // 2-token pass ~40% more than a 1-token one). On a thread that
        // [`init_thread_pool`] made part of the pool this runs in place;
        // elsewhere it costs one hand-over to a worker and back per pass.
        let data = if self.llama.is_cpu() {
            rayon::scope(|_| pass())?
        } else {
            pass()?
        };
        // Only a forward whose logits reached the caller moves the position.
        self.len += tokens.len();
        Ok(Logits::new(data, self.config.vocab_size))
    }
}

/// What a loader found besides the weights.
struct Parts {
    config: ModelConfig,
    tokenizer: Option<Tokenizer>,
    chat_template: LazyTemplate,
    eos: Vec<u32>,
}

/// The KV cache's length: `options.n_positions`, or the model's
/// `max_position_embeddings` capped at [`DEFAULT_MAX_POSITIONS`].
fn n_positions(options: &LoadOptions, config: &ModelConfig) -> Result<usize> {
    match options.n_positions {
        Some(0) => Err(Error::setting("n_positions", 0, "at least 1")),
        Some(n) => Ok(n),
        None => Ok(config.max_position_embeddings.min(DEFAULT_MAX_POSITIONS)),
    }
}

/// Refuses an [`AttentionWindow`] that is empty or that the chosen path
/// cannot honour: only the CPU kernel in f32 skips the keys outside it
/// (candle's ops and the CUDA graph kernels attend to every key).
fn check_attention_window(options: &LoadOptions) -> Result<()> {
    let Some(w) = options.attention_window else {
        return Ok(());
    };
    if w.recent == 0 {
        return Err(Error::setting(
            "attention_window",
            format!("sinks {}, recent 0", w.sinks),
            "recent >= 1 (a query must see at least itself)",
        ));
    }
    if !options.device.is_cpu() || options.dtype != DType::F32 {
        let path = match options.device.is_cpu() {
            true => format!("the CPU in {:?}", options.dtype),
            false if options.cuda_graph_widths.is_empty() => "a GPU (candle's ops)".to_string(),
            false => "a GPU (CUDA graphs)".to_string(),
        };
        return Err(Error::setting(
            "attention_window",
            format!("sinks {}, recent {} on {path}", w.sinks, w.recent),
            "the CPU backend in f32 (its attention kernel skips the keys outside the window; \
             the CUDA graph kernels and candle's ops attend to every key)",
        ));
    }
    Ok(())
}

/// Whether `path` names a GGUF file (by its extension, in any case).
fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl LanguageModel for CandleModel {
    fn forward(&mut self, tokens: &[u32]) -> Result<Logits> {
        self.run(tokens, Rows::All)
    }

    /// On a CUDA graph, the argmax is taken on the device and only ids
    /// come back; a row whose winner is suppressed, or that holds a NaN or
    /// `+inf`, is copied back and decided on the host.
    fn forward_greedy(&mut self, tokens: &[u32], suppress: &[u32]) -> Result<Vec<u32>> {
        // (Without a graph, forward checks the feed itself.)
        if self.graph.is_some() {
            self.check_feed(tokens)?;
        }
        let Some(graph) = &mut self.graph else {
            let logits = self.forward(tokens)?;
            return (0..logits.rows())
                .map(|i| argmax(logits.row(i), suppress, i))
                .collect();
        };
        let width = graph.max_width();
        let mut ids = Vec::with_capacity(tokens.len());
        for (i, chunk) in tokens.chunks(width).enumerate() {
            graph.step(chunk, self.len + i * width)?;
            for (j, best) in graph.argmax()?.into_iter().enumerate() {
                let row = i * width + j;
                ids.push(match best {
                    Some((id, _)) if !suppress.contains(&id) => id,
                    _ => {
                        let logits = graph.logits(j)?;
                        argmax(&logits[..self.config.vocab_size], suppress, row)?
                    }
                });
            }
        }
        self.len += tokens.len();
        Ok(ids)
    }

    /// On a CUDA graph only the id and the row's softmax sum leave the
    /// device, unless `suppress` is not empty and matters (then the row).
    fn forward_last_greedy(
        &mut self,
        tokens: &[u32],
        suppress: &[u32],
        confidence: Confidence,
    ) -> Result<(u32, Option<f32>)> {
        // (Without a graph, forward checks the feed itself.)
        if self.graph.is_some() {
            self.check_feed(tokens)?;
        }
        let Some(graph) = &mut self.graph else {
            let logits = self.forward_last(tokens)?;
            return greedy_pick(logits.row(0), suppress, confidence);
        };
        let width = graph.max_width();
        for (i, chunk) in tokens.chunks(width).enumerate() {
            graph.step(chunk, self.len + i * width)?;
        }
        self.len += tokens.len();
        let wanted = confidence == Confidence::Wanted;
        match graph.argmax()?.pop().flatten() {
            // With suppressed ids the confidence must leave their terms out.
            Some((id, sum)) if suppress.is_empty() || (!wanted && !suppress.contains(&id)) => {
                Ok((id, wanted.then(|| (1.0 / sum).min(1.0))))
            }
            _ => {
                let logits = graph.last_logits()?;
                greedy_pick(&logits, suppress, confidence)
            }
        }
    }

    /// One batched pass of candle's ops; on a CUDA graph, replays of the
    /// widest graph (whose weights candle's ops can no longer read).
    fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        self.check_feed(tokens)?;
        if let Some(graph) = &mut self.graph {
            let width = graph.max_width();
            for (i, chunk) in tokens.chunks(width).enumerate() {
                graph.step(chunk, self.len + i * width)?;
            }
            // Wait for the replays, so that a device fault is reported here.
            graph.argmax()?;
            self.len += tokens.len();
            return Ok(());
        }
        let (llama, cache, pos) = (&self.llama, &mut self.cache, self.len);
        let mut pass = || -> Result<()> {
            // Wait for the pass, so that a device fault is reported here.
            llama
                .forward(tokens, pos, cache, Rows::Last)?
                .to_vec2::<f32>()?;
            Ok(())
        };
        if self.llama.is_cpu() {
            rayon::scope(|_| pass())?;
        } else {
            pass()?;
        }
        self.len += tokens.len();
        Ok(())
    }

    fn forward_last(&mut self, tokens: &[u32]) -> Result<Logits> {
        self.run(tokens, Rows::Last)
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        check_truncate(&self.name, len, self.len)?;
        // The cache beyond `len` is overwritten by the next forward.
        self.len = len;
        Ok(())
    }

    fn cached_len(&self) -> usize {
        self.len
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_positions(&self) -> usize {
        self.n_positions
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    fn name(&self) -> &str {
        &self.name
    }
}
