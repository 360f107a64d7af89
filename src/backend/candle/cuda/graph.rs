//! The CUDA decode step as replayed graphs of fused kernels.
//!
//! candle runs a Llama layer as ~25 kernels, each launched from the host
//! with its own allocation: a 1.1B-shape draft pass took 5.5 ms on an
//! H200, almost all of it launch overhead, where its bytes take 0.5 ms.
//! Here a step is 7 launches a layer into buffers allocated once: RMSNorm;
//! the fused q/k/v product with RoPE and the KV-cache write in its
//! epilogue; attention over the cache; the output product adding into the
//! residual; RMSNorm; the fused gate/up product with SwiGLU in its
//! epilogue; the down product adding into the residual. Then the final
//! norm, the head (f32 logits) and a per-row argmax. The products are our
//! own tensor-core matrix-vector kernel (`sd_gemv_*`), which reads each
//! weight once, 512 contiguous bytes per warp load, from matrices re-laid
//! out tile-major in place at load (so candle's ops can no longer run on
//! the model, and its prompt goes through the graphs too). cuBLAS, with
//! separate RoPE and SwiGLU kernels, is the fallback for a matrix whose
//! rows are not a multiple of 16 or columns not a multiple of 32. The
//! whole step is captured once
//! per width as a CUDA graph and replayed; the position, row count and
//! token ids are read from a small device header (`meta`) rewritten before
//! each replay, so one graph serves every position.
//!
//! A forward of `n` tokens runs in the smallest captured width `w >= n`
//! (rows `n..w` are padding: computed, never written to the cache, never
//! read back), or in chunks of the largest. Every kernel computes a row on
//! its own with a reduction order that does not depend on how many rows
//! are valid (attention in graphs wider than 1 takes 2-4 rows a block,
//! reading the cache once for them, but does for each row what the
//! one-row kernel of width 1 does), and the product kernel always
//! computes 8 columns on the tensor cores, each from its own row alone: a
//! token's logits are the same bits whether it is decoded alone or
//! verified in a window, at any width, which makes greedy speculative
//! output identical to plain decoding by construction. (On the cuBLAS
//! fallback this holds within one width.)

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cublas::{sys as blas, CudaBlas};
use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::{DType, Device, Storage, Tensor};

use super::super::llama::{LayerCache, Llama};
use crate::error::{Error, Result};

/// The kernels of `kernels.cu`, compiled to PTX by build.rs for sm_80
/// (no programmatic dependent launch) and for sm_90 (with it).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/specdec_kernels.ptx"));
const PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/specdec_kernels_sm90.ptx"));

/// Switches for measuring what each part of the decode step gains (read
/// once, when a model loads): `SPECDEC_CUDA_PDL=0` launches without
/// programmatic dependent launch on GPUs that have it;
/// `SPECDEC_CUDA_GEMV_UNROLL=4` or `8` sets the product kernel's slabs in
/// flight per warp, and `SPECDEC_CUDA_GEMV_TILES=1` or `2` its 16-row
/// tiles per block, for every matrix (else see [`GraphDecoder::tiling`]);
/// `SPECDEC_CUDA_ATT_PREFETCH=0` makes attention read the whole cache after
/// its wait for the q/k/v product (kernels.cu's `sd_attention_{D}_late`);
/// `SPECDEC_CUDA_ATT_ROWS=0` runs a block per (head, row) in graphs wider
/// than 1 too, instead of a block per head and 2-4 rows
/// (`sd_attention_rows_{D}`);
/// `SPECDEC_CUDA_SKIP=part,...` leaves kernels out of the step to time the
/// rest (parts: `norm`, `qkv`, `attention`, `o`, `gate_up`, `down`,
/// `head`): the output is then wrong, so it is for timing only.
const PDL_ENV: &str = "SPECDEC_CUDA_PDL";
const GEMV_UNROLL_ENV: &str = "SPECDEC_CUDA_GEMV_UNROLL";
const GEMV_TILES_ENV: &str = "SPECDEC_CUDA_GEMV_TILES";
const ATT_PREFETCH_ENV: &str = "SPECDEC_CUDA_ATT_PREFETCH";
const ATT_ROWS_ENV: &str = "SPECDEC_CUDA_ATT_ROWS";
const SKIP_ENV: &str = "SPECDEC_CUDA_SKIP";

/// The parts of a step that `SPECDEC_CUDA_SKIP` can leave out, by bit.
const SKIP_PARTS: [&str; 7] = ["norm", "qkv", "attention", "o", "gate_up", "down", "head"];

/// The product kernel's instantiations (kernels.cu): `(UNROLL, MT)`, its
/// 32-wide k slabs of weight loads in flight per warp and its 16-row tiles
/// per block.
const GEMV_TILINGS: [(usize, usize); 3] = [(4, 1), (8, 1), (4, 2)];

/// A switch's value among `allowed`, `None` when unset.
fn choice(name: &str, allowed: &[usize]) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|u| allowed.contains(u))
            .map(Some)
            .ok_or_else(|| backend(format!("{name}={v}: expected one of {allowed:?}"))),
        Err(_) => Ok(None),
    }
}

/// Whether the switch `name` is on: anything but `0` (default on).
fn switch(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v.trim() != "0")
}

/// The [`SKIP_PARTS`] named (comma-separated) by the variable `name`, as
/// bits; 0 when unset or empty.
fn parts(name: &str) -> Result<u32> {
    let Ok(v) = std::env::var(name) else {
        return Ok(0);
    };
    let mut bits = 0;
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let i = SKIP_PARTS.iter().position(|&q| q == p).ok_or_else(|| {
            backend(format!(
                "{name}={v}: unknown part {p:?}, expected some of {SKIP_PARTS:?}"
            ))
        })?;
        bits |= 1 << i;
    }
    Ok(bits)
}

/// A kernel's arguments as `cuLaunchKernelEx` takes them: pointers to the
/// values, which live until the end of the statement that launches.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$(&$a as *const _ as *mut c_void),*] };
}

/// cuBLAS workspace set on the handle before capture, so that no product
/// allocates while a graph is being captured.
const WORKSPACE_BYTES: usize = 32 << 20;

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;

/// Threads per block of `sd_attention_*` (32 * ATT_WARPS in kernels.cu).
const ATT_THREADS: u32 = 256;

/// Rows of W per block of `sd_gemv_*` (one 16-row tile).
const GEMV_ROWS: usize = 16;

/// Threads per block of `sd_gemv_*` (32 * GEMV_WARPS in kernels.cu).
const GEMV_THREADS: u32 = 256;

/// The widest hidden size `sd_rms_norm` takes: 8 bf16 a load, NORM_CHUNKS
/// loads for each of NORM_THREADS threads (kernels.cu).
const MAX_NORM_HIDDEN: usize = 8 * 8 * 256;

struct Kernels {
    embed: CudaFunction,
    /// `sd_gemv_{NG}_{MODE}_{U}_{MT}` (see kernels.cu) by `(NG, MODE, U, MT)`.
    gemv: HashMap<(usize, usize, usize, usize), CudaFunction>,
    rms_norm: CudaFunction,
    rope_kv: CudaFunction,
    attention: CudaFunction,
    /// `sd_attention_rows_{D}` and its rows per block (kernels.cu's
    /// ATT_ROWS), for graphs wider than 1, where the model has no sliding
    /// window and head_dim <= 128.
    attention_rows: Option<(CudaFunction, usize)>,
    swiglu: CudaFunction,
    argmax: CudaFunction,
}

/// A weight matrix `[rows, cols]` in device memory owned by the [`Llama`]:
/// tile-major for `sd_gemv` (re-laid out in place at load) when its sides
/// allow, else row-major for cuBLAS.
#[derive(Clone, Copy)]
struct Mat {
    ptr: u64,
    rows: usize,
    cols: usize,
    tiled: bool,
    /// Row order of the tiles (`sd_relayout`'s perm): 0 as stored, 1
    /// gate/up interleaved for the SwiGLU epilogue, 2 RoPE halves together
    /// for the q/k/v epilogue.
    perm: i32,
}

/// Device addresses of one layer's weights and cache (owned by the
/// [`Llama`] and its cache, which outlive the decoder).
struct LayerPtrs {
    input_norm: u64,
    qkv: Mat,
    qkv_bias: u64,
    o: Mat,
    post_norm: u64,
    gate_up: Mat,
    down: Mat,
    k_cache: u64,
    v_cache: u64,
}

/// Buffer addresses (see [`GraphDecoder::addr`]).
#[derive(Clone, Copy, Default)]
struct Addrs {
    meta: u64,
    x: u64,
    xn: u64,
    qkv: u64,
    q: u64,
    att: u64,
    gu: u64,
    act: u64,
    logits: u64,
    argmax: u64,
    cos: u64,
    sin: u64,
}

/// Model shapes the kernels need.
#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    vocab: usize,
    n_positions: usize,
    window: usize,
    eps: f32,
}

/// The replayed decode step of one model on one CUDA device.
pub(crate) struct GraphDecoder {
    stream: Arc<CudaStream>,
    /// Kernels after the first of a step are launched with programmatic
    /// stream serialization (sm_90 and up; kernels.cu's PDL_WAIT).
    pdl: bool,
    /// The product kernel's slabs in flight per warp and tiles per block,
    /// when set by `SPECDEC_CUDA_GEMV_UNROLL` / `_TILES`; else picked per
    /// matrix ([`Self::tiling`]).
    unroll: Option<usize>,
    tiles: Option<usize>,
    /// Parts of the step left out (`SPECDEC_CUDA_SKIP`), a bit per
    /// [`SKIP_PARTS`] entry; 0 in normal use.
    skip: u32,
    /// Streaming multiprocessors of the GPU.
    sms: usize,
    blas: Arc<CudaBlas>,
    kernels: Kernels,
    dims: Dims,
    layers: Vec<LayerPtrs>,
    embed: u64,
    norm: u64,
    lm_head: Mat,
    /// `[pos, n, ids[max_width]]`
    meta: CudaSlice<i32>,
    /// Activations, bf16 (as u16), `w` rows (a multiple of 8): x and xn
    /// `[w, hidden]`, qkv `[w, (heads + 2 kv) * head_dim]`, q and att
    /// `[w, heads * head_dim]`, gu `[w, 2 ffn]`, act `[w, ffn]`.
    x: CudaSlice<u16>,
    xn: CudaSlice<u16>,
    qkv: CudaSlice<u16>,
    q: CudaSlice<u16>,
    att: CudaSlice<u16>,
    gu: CudaSlice<u16>,
    act: CudaSlice<u16>,
    /// `[w, vocab]` f32
    logits: CudaSlice<f32>,
    /// `[w, 3]`: argmax id, NaN/+inf flag, f32 bits of the sum over the
    /// row of `e^(logit - largest)`
    argmax: CudaSlice<i32>,
    /// `[n_positions, head_dim / 2]` f32
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    _workspace: CudaSlice<u8>,
    /// Device addresses of the buffers above, taken once before any
    /// capture: asking a `CudaSlice` for its address makes the stream wait
    /// on the slice's last write event, which a capture must not record.
    addr: Addrs,
    /// `(width, graph)`, widths ascending.
    graphs: Vec<(usize, CudaGraph)>,
    /// Rows of the last step.
    rows: usize,
}

// SAFETY: the only members that are not `Send` are the `CudaGraph`s, raw
// driver handles that CUDA allows to be used from any thread as long as
// calls on one graph are not concurrent (cudarc binds the context to the
// calling thread before each launch). The decoder is owned by one
// `CandleModel` and used only through `&mut self` or `&self` methods of
// it, and it is not `Sync`, so calls on its graphs never overlap.
unsafe impl Send for GraphDecoder {}

fn backend(message: impl std::fmt::Display) -> Error {
    Error::Backend {
        model: "cuda graph".into(),
        message: message.to_string(),
    }
}

/// The device address of a contiguous bf16 tensor's first element.
fn bf16_ptr(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    if t.dtype() != DType::BF16 || !t.is_contiguous() {
        return Err(backend(format!(
            "expected a contiguous bf16 tensor, got {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(backend("tensor is not on a CUDA device"));
    };
    let slice = cs.as_cuda_slice::<half::bf16>()?;
    let (ptr, _sync) = slice.device_ptr(stream);
    Ok(ptr + (layout.start_offset() * 2) as u64)
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

/// Why a model cannot take the graph path (`None`: it can).
fn unsupported(llama: &Llama) -> Option<String> {
    let c = &llama.cfg;
    // Positions, ids and sizes travel to the kernels as 32-bit ints.
    let positions = llama.rope_positions();
    if positions > i32::MAX as usize || c.vocab_size > i32::MAX as usize {
        return Some(format!(
            "n_positions {positions} or vocab_size {} above i32::MAX",
            c.vocab_size
        ));
    }
    if llama.dtype != DType::BF16 {
        return Some(format!(
            "dtype {:?} (the fused kernels are bf16)",
            llama.dtype
        ));
    }
    if !matches!(c.head_dim, 16 | 32 | 64 | 128 | 256) {
        return Some(format!(
            "head_dim {} (not 16, 32, 64, 128 or 256)",
            c.head_dim
        ));
    }
    if c.mlp_bias {
        return Some("mlp_bias".into());
    }
    if !c.hidden_size.is_multiple_of(8) || c.hidden_size > MAX_NORM_HIDDEN {
        return Some(format!(
            "hidden_size {} (the norm kernel takes multiples of 8 up to {MAX_NORM_HIDDEN})",
            c.hidden_size
        ));
    }
    if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return Some("heads not a multiple of kv heads".into());
    }
    None
}

impl GraphDecoder {
    /// Captures one graph per width of `widths` (each in `1..=16`, checked
    /// by the caller) for `llama` writing `cache`. `None` when the model is
    /// not on a CUDA device, `widths` is empty, or the model cannot take
    /// this path (see [`unsupported`]); errors when a CUDA call fails.
    pub(crate) fn new(
        llama: &mut Llama,
        cache: &[LayerCache],
        widths: &[usize],
    ) -> Result<Option<Self>> {
        let Device::Cuda(dev) = &llama.device else {
            return Ok(None);
        };
        if widths.is_empty() || unsupported(llama).is_some() {
            return Ok(None);
        }
        let mut widths = widths.to_vec();
        widths.sort_unstable();
        widths.dedup();
        let max_w = *widths.last().ok_or_else(|| backend("no graph width"))?;
        let stream = dev.cuda_stream();
        let blas = dev.cublas_handle();
        let (major, _) = stream.context().compute_capability().map_err(backend)?;
        let pdl = major >= 9 && switch(PDL_ENV);
        let unroll = choice(GEMV_UNROLL_ENV, &[4, 8])?;
        let tiles = choice(GEMV_TILES_ENV, &[1, 2])?;
        let skip = parts(SKIP_ENV)?;
        let sms = stream
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(backend)? as usize;
        let module = stream
            .context()
            .load_module(Ptx::from_src(if pdl { PTX_SM90 } else { PTX }))
            .map_err(backend)?;
        let f = |name: &str| module.load_function(name).map_err(backend);
        let c = &llama.cfg;
        let mut gemv = HashMap::new();
        for ng in 1..=2 {
            for (u, mt) in GEMV_TILINGS {
                for mode in 0..=4 {
                    let name = format!("sd_gemv_{ng}_{mode}_{u}_{mt}");
                    gemv.insert((ng, mode, u, mt), f(&name)?);
                }
            }
        }
        let kernels = Kernels {
            embed: f("sd_embed")?,
            gemv,
            rms_norm: f("sd_rms_norm")?,
            rope_kv: f("sd_rope_kv")?,
            attention: f(&format!(
                "sd_attention_{}{}",
                c.head_dim,
                if switch(ATT_PREFETCH_ENV) {
                    ""
                } else {
                    "_late"
                }
            ))?,
            attention_rows: match c.head_dim {
                16 | 32 | 64 | 128 if c.sliding_window.is_none() && switch(ATT_ROWS_ENV) => Some((
                    f(&format!("sd_attention_rows_{}", c.head_dim))?,
                    if c.head_dim == 128 { 2 } else { 4 },
                )),
                _ => None,
            },
            swiglu: f("sd_swiglu")?,
            argmax: f("sd_argmax")?,
        };
        let relayout = f("sd_relayout")?;
        let n_positions = cache.first().map(|l| l.k.dim(1)).transpose()?.unwrap_or(0);
        let dims = Dims {
            hidden: c.hidden_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            ffn: c.intermediate_size,
            vocab: c.vocab_size,
            n_positions,
            window: c.sliding_window.unwrap_or(0),
            eps: c.rms_norm_eps as f32,
        };
        let mat = |t: &Tensor, perm: i32| -> Result<Mat> {
            let (rows, cols) = t.dims2()?;
            let ptr = bf16_ptr(t, &stream)?;
            let tiled = rows.is_multiple_of(GEMV_ROWS) && cols.is_multiple_of(32) && ptr % 16 == 0;
            Ok(Mat {
                ptr,
                rows,
                cols,
                tiled,
                perm: if tiled { perm } else { 0 },
            })
        };
        let mut layers = Vec::with_capacity(llama.layers.len());
        for (l, kv) in llama.layers.iter().zip(cache) {
            layers.push(LayerPtrs {
                input_norm: bf16_ptr(&l.input_norm, &stream)?,
                qkv: mat(l.qkv.dense()?, 2)?,
                qkv_bias: match l.qkv.bias() {
                    Some(b) => bf16_ptr(b, &stream)?,
                    None => 0,
                },
                o: mat(l.o.dense()?, 0)?,
                post_norm: bf16_ptr(&l.post_norm, &stream)?,
                gate_up: mat(l.gate_up.dense()?, 1)?,
                down: mat(l.down.dense()?, 0)?,
                k_cache: bf16_ptr(&kv.k, &stream)?,
                v_cache: bf16_ptr(&kv.v, &stream)?,
            });
        }
        let embed = bf16_ptr(llama.embed.dense()?, &stream)?;
        let norm = bf16_ptr(&llama.norm, &stream)?;
        let lm_head = mat(llama.lm_head.dense()?, 0)?;
        let (cos, sin) = llama.rope_tables_f32();
        let d = dims;
        let zeros = |n: usize| stream.alloc_zeros::<u16>(n).map_err(backend);
        let qkv_w = (d.heads + 2 * d.kv_heads) * d.head_dim;
        // The product kernel reads whole groups of 8 rows (tokens).
        let rows = max_w.next_multiple_of(8);
        let mut me = Self {
            meta: stream.alloc_zeros::<i32>(2 + max_w).map_err(backend)?,
            x: zeros(rows * d.hidden)?,
            xn: zeros(rows * d.hidden)?,
            qkv: zeros(rows * qkv_w)?,
            q: zeros(rows * d.heads * d.head_dim)?,
            att: zeros(rows * d.heads * d.head_dim)?,
            gu: zeros(rows * 2 * d.ffn)?,
            act: zeros(rows * d.ffn)?,
            logits: stream.alloc_zeros::<f32>(rows * d.vocab).map_err(backend)?,
            argmax: stream.alloc_zeros::<i32>(rows * 3).map_err(backend)?,
            cos: stream.clone_htod(&cos).map_err(backend)?,
            sin: stream.clone_htod(&sin).map_err(backend)?,
            _workspace: stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(backend)?,
            stream,
            pdl,
            unroll,
            tiles,
            skip,
            sms,
            blas,
            kernels,
            dims,
            layers,
            embed,
            norm,
            lm_head,
            addr: Addrs::default(),
            graphs: Vec::new(),
            rows: 0,
        };
        let s = &me.stream;
        me.addr = Addrs {
            meta: ptr(&me.meta, s),
            x: ptr(&me.x, s),
            xn: ptr(&me.xn, s),
            qkv: ptr(&me.qkv, s),
            q: ptr(&me.q, s),
            att: ptr(&me.att, s),
            gu: ptr(&me.gu, s),
            act: ptr(&me.act, s),
            logits: ptr(&me.logits, s),
            argmax: ptr(&me.argmax, s),
            cos: ptr(&me.cos, s),
            sin: ptr(&me.sin, s),
        };
        // From here on the model's matrices are the decoder's layout:
        // candle's ops must not run on them again.
        let mats: Vec<Mat> = me
            .layers
            .iter()
            .flat_map(|l| [l.qkv, l.o, l.gate_up, l.down])
            .chain([me.lm_head])
            .filter(|m| m.tiled)
            .collect();
        if let Some(largest) = mats.iter().map(|m| m.rows * m.cols).max() {
            llama.mark_graph_only();
            let scratch = me.stream.alloc_zeros::<u16>(largest).map_err(backend)?;
            let tmp = ptr(&scratch, &me.stream);
            let hd = me.dims.head_dim as i32;
            for m in &mats {
                let (rows, cols) = (m.rows as i32, m.cols as i32);
                unsafe {
                    me.stream
                        .launch_builder(&relayout)
                        .arg(&m.ptr)
                        .arg(&tmp)
                        .arg(&rows)
                        .arg(&cols)
                        .arg(&m.perm)
                        .arg(&hd)
                        .launch(LaunchConfig {
                            grid_dim: (1024, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        })
                        .map_err(backend)?;
                    result::memcpy_dtod_async(
                        m.ptr,
                        tmp,
                        m.rows * m.cols * 2,
                        me.stream.cu_stream(),
                    )
                    .map_err(backend)?;
                }
            }
            me.stream.synchronize().map_err(backend)?;
        }
        let status = unsafe {
            blas::cublasSetWorkspace_v2(
                *me.blas.handle(),
                ptr(&me._workspace, &me.stream) as *mut c_void,
                WORKSPACE_BYTES,
            )
        };
        check_blas(status)?;
        for &w in &widths {
            // One eager run (n = 0: nothing is written to the cache) loads
            // cuBLAS's kernels and picks its algorithms before capture.
            me.write_meta(&[], 0)?;
            me.enqueue(w)?;
            me.stream.synchronize().map_err(backend)?;
            me.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(backend)?;
            let recorded = me.enqueue(w);
            let graph = me
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(backend)?;
            recorded?;
            let graph = graph.ok_or_else(|| backend("stream capture recorded nothing"))?;
            graph.upload().map_err(backend)?;
            me.graphs.push((w, graph));
        }
        me.stream.synchronize().map_err(backend)?;
        Ok(Some(me))
    }

    /// The largest captured width: the most tokens one replay takes.
    pub(crate) fn max_width(&self) -> usize {
        self.graphs.last().map_or(0, |(w, _)| *w)
    }

    /// Runs `tokens` (`1..=max_width()`, ids checked by the caller) at
    /// positions `pos..pos + n`, writing the cache there; the logits stay
    /// on the device until [`Self::logits`] or [`Self::argmax`].
    pub(crate) fn step(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let n = tokens.len();
        let Some(i) = self.graphs.iter().position(|(w, _)| *w >= n) else {
            return Err(backend(format!(
                "{n} tokens exceed the widest graph, {}",
                self.max_width()
            )));
        };
        if n == 0 || pos + n > self.dims.n_positions {
            return Err(backend(format!(
                "positions {pos}..{} are not a window within n_positions {}",
                pos + n,
                self.dims.n_positions
            )));
        }
        self.write_meta(tokens, pos)?;
        self.graphs[i].1.launch().map_err(backend)?;
        self.rows = n;
        Ok(())
    }

    /// Logits of rows `first..rows` of the last step, `[rows - first, vocab]`.
    pub(crate) fn logits(&self, first: usize) -> Result<Vec<f32>> {
        let v = self.dims.vocab;
        let view = self.logits.slice(first * v..self.rows * v);
        let mut out = vec![0f32; (self.rows - first) * v];
        self.stream.memcpy_dtoh(&view, &mut out).map_err(backend)?;
        Ok(out)
    }

    /// Logits of the last row of the last step, `[vocab]`.
    pub(crate) fn last_logits(&self) -> Result<Vec<f32>> {
        self.logits(self.rows.saturating_sub(1))
    }

    /// Per row of the last step: the first id of the largest logit and the
    /// sum over the row of `e^(logit - largest)` (so that id's softmax
    /// probability is its inverse), or `None` when the row needs a look on
    /// the host (a NaN or +inf in it, or no finite value).
    pub(crate) fn argmax(&self) -> Result<Vec<Option<(u32, f32)>>> {
        let mut out = vec![0i32; 3 * self.rows];
        let view = self.argmax.slice(0..3 * self.rows);
        self.stream.memcpy_dtoh(&view, &mut out).map_err(backend)?;
        Ok(out
            .chunks_exact(3)
            .map(|r| {
                let ok = r[1] == 0 && r[0] >= 0 && (r[0] as usize) < self.dims.vocab;
                ok.then_some((r[0] as u32, f32::from_bits(r[2] as u32)))
            })
            .collect())
    }

    /// Writes the step header: `pos`, the row count and the ids (padding
    /// rows get id 0).
    fn write_meta(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        let mut meta = vec![0i32; self.meta.len()];
        meta[0] = pos as i32;
        meta[1] = tokens.len() as i32;
        for (m, &t) in meta[2..].iter_mut().zip(tokens) {
            *m = t as i32;
        }
        self.stream
            .memcpy_htod(&meta, &mut self.meta)
            .map_err(backend)
    }

    /// Enqueues one step of width `w` on the stream (eagerly, or into a
    /// capture). Only plain values go to the launches, so nothing records
    /// or waits on events.
    fn enqueue(&self, w: usize) -> Result<()> {
        let d = self.dims;
        self.stream.context().bind_to_thread().map_err(backend)?;
        let Addrs {
            meta,
            x,
            xn,
            qkv,
            q,
            att,
            gu,
            act,
            logits,
            argmax,
            cos,
            sin,
        } = self.addr;
        let wi = w as u32;
        let (hidden, vocab) = (d.hidden as i32, d.vocab as i32);
        // The first kernel follows the host's header write: plain order.
        unsafe {
            self.launch(
                &self.kernels.embed,
                (wi, 1, 1),
                ROW_THREADS,
                false,
                &mut args![meta, self.embed, x, hidden, vocab],
            )?;
        }
        let (heads, kv, hd, npos) = (
            d.heads as i32,
            d.kv_heads as i32,
            d.head_dim as i32,
            d.n_positions as i32,
        );
        let window = d.window as i32;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let ffn = d.ffn as i32;
        let swiglu_blocks = ((w * d.ffn).div_ceil(ROW_THREADS as usize)).min(4096) as u32;
        for l in &self.layers {
            if !self.skips("norm") {
                self.rms_norm(w, x, l.input_norm, xn)?;
            }
            if self.skips("qkv") {
                // Left out for timing (SPECDEC_CUDA_SKIP).
            } else if l.qkv.tiled {
                // RoPE and the KV-cache write in the product's epilogue.
                self.gemv(w, l.qkv, xn, 0, 4, Some(l))?;
            } else {
                self.gemm(w, l.qkv, xn, qkv, 0.0, false)?;
                unsafe {
                    self.launch(
                        &self.kernels.rope_kv,
                        (wi, (d.heads + 2 * d.kv_heads) as u32, 1),
                        (d.head_dim as u32 / 2).clamp(32, 128),
                        self.pdl,
                        &mut args![
                            meta, qkv, l.qkv_bias, cos, sin, q, l.k_cache, l.v_cache, heads, kv,
                            hd, npos
                        ],
                    )?;
                }
            }
            if !self.skips("attention") {
                // A block per (head, row) at width 1; wider, a block per
                // head and `rb` rows, which reads the cache once for them
                // (the same bits a row, kernels.cu).
                let (f, rb) = match &self.kernels.attention_rows {
                    Some((f, rb)) if w > 1 => (f, *rb),
                    _ => (&self.kernels.attention, 1),
                };
                unsafe {
                    self.launch(
                        f,
                        (d.heads as u32, w.div_ceil(rb) as u32, 1),
                        ATT_THREADS,
                        self.pdl,
                        &mut args![
                            meta, q, l.k_cache, l.v_cache, att, heads, kv, npos, window, scale
                        ],
                    )?;
                }
            }
            if !self.skips("o") {
                self.product(w, l.o, att, x, 1)?;
            }
            if !self.skips("norm") {
                self.rms_norm(w, x, l.post_norm, xn)?;
            }
            if self.skips("gate_up") {
                // Left out for timing (SPECDEC_CUDA_SKIP).
            } else if l.gate_up.tiled {
                // SwiGLU in the product's epilogue (mode 3), straight to act.
                self.gemv(w, l.gate_up, xn, act, 3, None)?;
            } else {
                self.gemm(w, l.gate_up, xn, gu, 0.0, false)?;
                unsafe {
                    self.launch(
                        &self.kernels.swiglu,
                        (swiglu_blocks, 1, 1),
                        ROW_THREADS,
                        self.pdl,
                        &mut args![gu, act, (w as i32), ffn],
                    )?;
                }
            }
            if !self.skips("down") {
                self.product(w, l.down, act, x, 1)?;
            }
        }
        if !self.skips("norm") {
            self.rms_norm(w, x, self.norm, xn)?;
        }
        if !self.skips("head") {
            self.product(w, self.lm_head, xn, logits, 2)?;
        }
        unsafe {
            self.launch(
                &self.kernels.argmax,
                (wi, 1, 1),
                1024,
                self.pdl,
                &mut args![logits, argmax, vocab],
            )
        }
    }

    /// Whether `SPECDEC_CUDA_SKIP` leaves `part` (one of [`SKIP_PARTS`]) out.
    fn skips(&self, part: &str) -> bool {
        self.skip != 0
            && SKIP_PARTS
                .iter()
                .position(|&p| p == part)
                .is_some_and(|i| self.skip & (1 << i) != 0)
    }

    /// Launches `f` on the decoder's stream with `args` (pointers to the
    /// kernel's parameters, in order); `pdl`: with programmatic stream
    /// serialization, so that it may start before the kernel before it
    /// ends (it then waits in PDL_WAIT, kernels.cu).
    ///
    /// # Safety
    /// `args` must match `f`'s parameters in number, order and types.
    unsafe fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        pdl: bool,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(pdl),
        };
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(backend)
    }

    /// `(UNROLL, MT)` of the product kernel for a matrix of `tiles` 16-row
    /// tiles. A grid that fits in one wave (2 blocks an SM) is short: its
    /// blocks keep 8 slabs in flight. A grid of at least two waves' worth
    /// of tiles takes two tiles a block, which reads each x slab once for
    /// both (half the L2 traffic of a verify window's x). Between the two,
    /// one tile and 4 slabs.
    fn tiling(&self, tiles: usize) -> (usize, usize) {
        let wave = 2 * self.sms;
        let mut pick = if tiles <= wave {
            (8, 1)
        } else if tiles >= 2 * wave && tiles.is_multiple_of(2) {
            (4, 2)
        } else {
            (4, 1)
        };
        if let Some(u) = self.unroll {
            pick = (u, if u == 8 { 1 } else { pick.1 });
        }
        if let Some(mt) = self.tiles {
            if mt == 1 || tiles.is_multiple_of(2) {
                pick = (if mt == 2 { 4 } else { pick.0 }, mt);
            }
        }
        pick
    }

    /// `sd_gemv_{NG}_{mode}_{U}_{MT}` on the tiled matrix `m` (see kernels.cu);
    /// `layer` gives the q/k/v epilogue's (mode 4) bias and cache.
    fn gemv(
        &self,
        w: usize,
        m: Mat,
        x: u64,
        y: u64,
        mode: usize,
        layer: Option<&LayerPtrs>,
    ) -> Result<()> {
        let (unroll, mt) = self.tiling(m.rows / GEMV_ROWS);
        let blocks = m.rows / GEMV_ROWS / mt;
        let key = (w.div_ceil(8), mode, unroll, mt);
        let f = self
            .kernels
            .gemv
            .get(&key)
            .ok_or_else(|| backend(format!("no product kernel for {key:?}")))?;
        let d = self.dims;
        let a = self.addr;
        let (out, inp, cols) = (m.rows as i32, m.cols as i32, w as i32);
        let (bias, k_cache, v_cache) =
            layer.map_or((0, 0, 0), |l| (l.qkv_bias, l.k_cache, l.v_cache));
        let (heads, kv, hd, npos) = (
            d.heads as i32,
            d.kv_heads as i32,
            d.head_dim as i32,
            d.n_positions as i32,
        );
        unsafe {
            self.launch(
                f,
                (blocks as u32, 1, 1),
                GEMV_THREADS,
                self.pdl,
                &mut args![
                    a.meta, m.ptr, x, y, out, inp, cols, bias, a.cos, a.sin, a.q, k_cache, v_cache,
                    heads, kv, hd, npos
                ],
            )
        }
    }

    /// `y = x @ m^T` (mode 0, bf16), `y += x @ m^T` (1, bf16) or `y = x @
    /// m^T` (2, f32): on `sd_gemv` when `m` is tiled, else cuBLAS.
    fn product(&self, w: usize, m: Mat, x: u64, y: u64, mode: usize) -> Result<()> {
        if m.tiled {
            self.gemv(w, m, x, y, mode, None)
        } else {
            self.gemm(w, m, x, y, f32::from(u8::from(mode == 1)), mode == 2)
        }
    }

    fn rms_norm(&self, w: usize, x: u64, weight: u64, out: u64) -> Result<()> {
        let hidden = self.dims.hidden as i32;
        let eps = self.dims.eps;
        unsafe {
            self.launch(
                &self.kernels.rms_norm,
                (w as u32, 1, 1),
                ROW_THREADS,
                self.pdl,
                &mut args![x, weight, out, hidden, eps],
            )
        }
    }

    /// `y[w, out] = x[w, inp] @ W[out, inp]^T (+ beta * y)` on cuBLAS for
    /// `W` = `m` (`[out, inp]`, row-major), bf16 inputs, f32 accumulation,
    /// `y` in bf16 (or f32 when `y_f32`); `beta` is 0 or 1.
    fn gemm(&self, w: usize, m: Mat, x: u64, y: u64, beta: f32, y_f32: bool) -> Result<()> {
        let (out, inp, weight) = (m.rows, m.cols, m.ptr);
        let alpha = 1f32;
        let y_type = if y_f32 {
            blas::cudaDataType::CUDA_R_32F
        } else {
            blas::cudaDataType::CUDA_R_16BF
        };
        // Column-major: y^T (out x w) = W^T^T ... cuBLAS sees W (inp x out,
        // ld inp) transposed, times x^T (inp x w, ld inp).
        let status = unsafe {
            blas::cublasGemmEx(
                *self.blas.handle(),
                blas::cublasOperation_t::CUBLAS_OP_T,
                blas::cublasOperation_t::CUBLAS_OP_N,
                out as i32,
                w as i32,
                inp as i32,
                &alpha as *const f32 as *const c_void,
                weight as *const c_void,
                blas::cudaDataType::CUDA_R_16BF,
                inp as i32,
                x as *const c_void,
                blas::cudaDataType::CUDA_R_16BF,
                inp as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                y_type,
                out as i32,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        check_blas(status)
    }
}

fn check_blas(status: blas::cublasStatus_t) -> Result<()> {
    if status == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(backend(format!("cuBLAS: {status:?}")))
    }
}
