//! `y = x @ W^T` on the CPU with `W` in ggml's quantized block formats, as a
//! GGUF file stores them (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K), without
//! widening the matrix to f32: a decode step reads the 4- or 8-bit weights.
//!
//! # How a product runs
//!
//! 1. **Weights, once, at load.** Every format is re-laid into one shape:
//!    *sub-blocks* of `S` consecutive weights of a row (`S` = 32, or 16 for
//!    Q6_K) with unsigned integer quants `q`, a scale and either a zero
//!    point or an offset, so that a weight is `scale * (q - zero) [+ offset]`
//!    with the same f32 values ggml's dequantization gives (Q4_K's and
//!    Q5_K's `d * sc` and `-dmin * m` are multiplied out once, as ggml does
//!    per block). Rows are grouped in *panels* of 16: the quants of a
//!    panel's sub-block are stored so that one 64-byte vector holds 4
//!    consecutive quants of each of the 16 rows (4-bit formats keep two such
//!    groups in the low and high nibbles, as ggml does), which is the
//!    operand shape of AVX-512 VNNI's `vpdpbusd`: one instruction does 64
//!    multiply-adds and leaves each row's sum in its own lane, so no
//!    horizontal sums are needed. A sub-block's quants, its 16 scales and
//!    16 offsets sit together, so a panel streams from memory as one
//!    sequence. Q4_0, Q4_1 and Q8_0 keep their f16 scales (the same bytes
//!    per weight as the file); Q4_K keeps 4-bit quants with f32 scales and
//!    offsets (6 bits a weight against the file's 4.5), and Q5_K and Q6_K
//!    quants are widened to a byte each (10 bits a weight).
//! 2. **Activations, per call.** Each row of `x` is quantized to 8 bits in
//!    blocks of 32 (`dx = max|x| / 127`, `xq = x * (127 / max|x|)` rounded
//!    to the nearest integer, ties to even), as llama.cpp does for its CPU
//!    dot products; each block also keeps the f32 sum of its `x`, which the
//!    offsets multiply (so Q4_1's `m` term has no activation rounding).
//! 3. **Dot products.** Per sub-block, the integer dot product
//!    `sum q * xq - zero * sum xq` (exact in i32), then
//!    `acc = fma(f32(isum), scale * dx, acc)` and, with offsets,
//!    `acc_m = fma(offset, sum x, acc_m)`; the output is `acc + acc_m`.
//!
//! The kernel is chosen at run time: AVX-512 (F, BW, VNNI), AVX2 (with FMA
//! and F16C; `vpmaddubsw` instead of `vpdpbusd`), or portable code. Rows of
//! `x` go in tiles of up to 6 (AVX-512) or 3 (AVX2) against one panel at a
//! time, so a k-token window reads the weights once; panels split across
//! rayon's threads.
//!
//! # Exactness
//!
//! Each output element is one fixed sequence of f32 operations over its
//! sub-blocks in order, fed by exact integer dot products: the result for a
//! row of `x` does not depend on `n`, on which rows share its tile, on which
//! thread computes it, nor on the instruction set (AVX-512, AVX2 and the
//! portable code give the same bits). A window verified in one pass gets
//! bit-identical projections to tokens fed one at a time.
//!
//! Against the f32 product with the dequantized weights, the only error is
//! the activation rounding: `|x - dx * xq| <= dx / 2` per element, so an
//! output is off by at most `sum_k |W[r, k]| * dx(k) / 2` plus f32 rounding.
//! The tests check that bound, and that every kernel is within f32 rounding
//! of an f64 emulation of its arithmetic. On SmolLM2-135M's own matrices,
//! with random activations, the largest error measured was 1.5-9% of the
//! outputs' rms, and 6-35% with a 20x outlier in every 97 activations (an
//! outlier coarsens its whole block of 32).

// Until the GGUF loader (branch `gguf`) calls into this module.

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// ggml block formats we compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QType {
    /// `block_q4_0 { f16 d; u8 qs[16] }`: `d * (q - 8)`, 32 per block.
    Q4_0,
    /// `block_q4_1 { f16 d, m; u8 qs[16] }`: `d * q + m`, 32 per block.
    Q4_1,
    /// `block_q8_0 { f16 d; i8 qs[32] }`: `d * q`, 32 per block.
    Q8_0,
    /// `block_q4_K { f16 d, dmin; u8 scales[12], qs[128] }`: 8 sub-blocks
    /// of 32 with 6-bit scales and mins, 256 per block.
    Q4K,
    /// `block_q5_K { f16 d, dmin; u8 scales[12], qh[32], qs[128] }`: as
    /// Q4_K with a fifth bit per quant.
    Q5K,
    /// `block_q6_K { u8 ql[128], qh[64]; i8 scales[16]; f16 d }`: 16
    /// sub-blocks of 16, `d * scale * (q - 32)`.
    Q6K,
}

impl QType {
    /// Elements per block: 32, or 256 for the k-quants.
    pub(crate) fn block_elems(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => 32,
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    /// Bytes per block in the file.
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    /// How the repacked matrix stores it.
    fn kind(self) -> Kind {
        let (nibbles, sub, zero, offset) = match self {
            QType::Q4_0 => (true, 32, 8, false),
            QType::Q4_1 => (true, 32, 0, true),
            QType::Q8_0 => (false, 32, 128, false),
            QType::Q4K => (true, 32, 0, true),
            QType::Q5K => (false, 32, 0, true),
            QType::Q6K => (false, 16, 32, false),
        };
        Kind {
            nibbles,
            sub,
            zero,
            offset,
            f16_scales: matches!(self, QType::Q4_0 | QType::Q4_1 | QType::Q8_0),
        }
    }
}

/// The repacked storage of a format: a weight is
/// `scale * (q - zero) [+ offset]` per sub-block of `sub` elements.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// Quants are 4-bit (two per byte) rather than a byte each.
    nibbles: bool,
    /// Elements per sub-block (one scale each): 32 or 16.
    sub: usize,
    /// The integer subtracted from every quant.
    zero: i32,
    /// Whether sub-blocks carry an additive offset. Exactly the formats
    /// with `zero == 0`: the kernels skip the zero-point correction for them.
    offset: bool,
    /// Scales and offsets are the file's f16 values (else computed f32).
    f16_scales: bool,
}

impl Kind {
    /// Bytes of quants of one panel's sub-block.
    fn panel_bytes(self) -> usize {
        PANEL * self.sub / if self.nibbles { 2 } else { 1 }
    }

    /// Bytes of one scale or offset.
    fn scale_bytes(self) -> usize {
        if self.f16_scales {
            2
        } else {
            4
        }
    }

    /// Bytes of one panel's sub-block: its quants, then its 16 scales, then
    /// (with offsets) its 16 offsets.
    fn chunk_bytes(self) -> usize {
        self.panel_bytes() + PANEL * self.scale_bytes() * (1 + self.offset as usize)
    }

    /// Scale (or offset) `j` of the 16 at the start of `b`.
    fn read_scale(self, b: &[u8], j: usize) -> f32 {
        if self.f16_scales {
            f16::from_le_bytes([b[2 * j], b[2 * j + 1]]).to_f32()
        } else {
            f32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]])
        }
    }

    /// Writes `v` as scale (or offset) `j` of the 16 at the start of `b`
    /// (exactly: f16 scales were f16 in the file).
    fn write_scale(self, b: &mut [u8], j: usize, v: f32) {
        if self.f16_scales {
            b[2 * j..2 * j + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        } else {
            b[4 * j..4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Output rows per panel: one AVX-512 vector of lanes.
const PANEL: usize = 16;

/// Activation block: one scale per 32 elements of `x`.
const XBLOCK: usize = 32;

/// 1.5 * 2^23: `v + ROUND` is `ROUND + v` rounded to an integer (ties to
/// even) for `|v| < 2^22`, in any f32 code, vector or not.
const ROUND: f32 = 12_582_912.0;

/// Multiply-adds below which one thread does the whole product (~0.6 us of
/// work; a decode step's 192 x 576 key and value projections are ~1.1 us).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A weight matrix `[rows, cols]` in ggml blocks, repacked for the kernels
/// (see the module docs): `[panel][sub-block]` chunks of quants, 16 scales
/// and 16 offsets (see [`Kind::chunk_bytes`]), so that a panel streams from
/// memory as one sequence. Rows past `rows` in the last panel are zero.
pub(crate) struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
    panels: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("qtype", &self.qtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// One block of a file decoded: `q` `[block_elems]` unsigned quants, and per
/// sub-block a scale and an offset (0 where the format has none).
fn decode_block(qtype: QType, b: &[u8], q: &mut [u8], scale: &mut [f32], offset: &mut [f32]) {
    let half = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match qtype {
        QType::Q4_0 | QType::Q4_1 => {
            let qs = if qtype == QType::Q4_0 {
                &b[2..18]
            } else {
                &b[4..20]
            };
            for (j, &v) in qs.iter().enumerate() {
                q[j] = v & 0xF;
                q[j + 16] = v >> 4;
            }
            scale[0] = half(0);
            offset[0] = if qtype == QType::Q4_1 { half(2) } else { 0.0 };
        }
        QType::Q8_0 => {
            for (dst, &v) in q.iter_mut().zip(&b[2..34]) {
                // i8 -> i8 + 128 as u8.
                *dst = v ^ 0x80;
            }
            scale[0] = half(0);
            offset[0] = 0.0;
        }
        QType::Q4K | QType::Q5K => {
            let (d, dmin, sc) = (half(0), half(2), &b[4..16]);
            let (qh, qs) = if qtype == QType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for j in 0..4 {
                let ql = &qs[32 * j..32 * j + 32];
                for (s, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                    let (scv, mv) = scale_min_k4(s, sc);
                    scale[s] = d * scv as f32;
                    offset[s] = -(dmin * mv as f32);
                    for l in 0..32 {
                        let high = qh.map_or(0, |h| ((h[l] >> s) & 1) << 4);
                        q[32 * s + l] = ((ql[l] >> shift) & 0xF) | high;
                    }
                }
            }
        }
        QType::Q6K => {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], half(208));
            for h in 0..2 {
                let (ql, qh, y) = (&ql[64 * h..], &qh[32 * h..], &mut q[128 * h..]);
                for l in 0..32 {
                    y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for (s, &v) in sc.iter().enumerate() {
                scale[s] = d * (v as i8) as f32;
                offset[s] = 0.0;
            }
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a
/// Q4_K / Q5_K block's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Byte offset, within a panel's sub-block, of quant `e` of panel row `j`,
/// and whether it is the high nibble.
#[inline(always)]
fn quant_pos(kind: Kind, j: usize, e: usize) -> (usize, bool) {
    let (e, high) = if kind.nibbles && e >= 16 {
        (e - 16, true)
    } else {
        (e, false)
    };
    ((e / 4) * 64 + j * 4 + e % 4, high)
}

impl QMatrix {
    /// Repacks `data`, `rows * cols / block_elems` blocks of `qtype` in the
    /// file's byte layout, row-major. Errors with
    /// [`Error::InvalidSetting`] when `cols` is not a multiple of the block
    /// size, a dimension is 0, or `data` has the wrong length.
    pub(crate) fn new(qtype: QType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let (be, bb) = (qtype.block_elems(), qtype.block_bytes());
        if !cols.is_multiple_of(be) {
            return Err(setting(
                "quantized matrix columns",
                cols,
                format!("a multiple of {be}, the block size of {qtype:?}"),
            ));
        }
        if rows == 0 || cols == 0 {
            return Err(setting(
                "quantized matrix shape",
                format!("{rows} x {cols}"),
                "at least one row and one block of columns".into(),
            ));
        }
        let want = rows
            .checked_mul(cols / be)
            .and_then(|blocks| blocks.checked_mul(bb));
        if want != Some(data.len()) {
            return Err(setting(
                "quantized matrix bytes",
                data.len(),
                match want {
                    Some(w) => {
                        format!("{w} for {rows} x {cols} in {qtype:?} ({bb} bytes per {be})")
                    }
                    None => format!("a size that fits memory: {rows} x {cols} overflows"),
                },
            ));
        }
        let kind = qtype.kind();
        let (subs, pb, cb) = (cols / kind.sub, kind.panel_bytes(), kind.chunk_bytes());
        let (sbytes, panels) = (kind.scale_bytes(), rows.div_ceil(PANEL));
        let mut packed = vec![0u8; panels * subs * cb];
        let row_bytes = cols / be * bb;
        let per_block = be / kind.sub;
        packed
            .par_chunks_mut(subs * cb)
            .enumerate()
            .for_each(|(p, panel)| {
                let (mut q, mut s, mut o) =
                    (vec![0u8; be], vec![0f32; per_block], vec![0f32; per_block]);
                for j in 0..PANEL.min(rows - p * PANEL) {
                    let row = &data[(p * PANEL + j) * row_bytes..][..row_bytes];
                    for (blk, bytes) in row.chunks_exact(bb).enumerate() {
                        decode_block(qtype, bytes, &mut q, &mut s, &mut o);
                        for t in 0..per_block {
                            let sb = blk * per_block + t;
                            let chunk = &mut panel[sb * cb..(sb + 1) * cb];
                            kind.write_scale(&mut chunk[pb..], j, s[t]);
                            if kind.offset {
                                kind.write_scale(&mut chunk[pb + PANEL * sbytes..], j, o[t]);
                            }
                            for (e, &v) in q[t * kind.sub..(t + 1) * kind.sub].iter().enumerate() {
                                let (at, high) = quant_pos(kind, j, e);
                                chunk[at] |= if high { v << 4 } else { v };
                            }
                        }
                    }
                }
            });
        Ok(Self {
            qtype,
            rows,
            cols,
            panels,
            data: packed,
        })
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The block format.
    pub(crate) fn qtype(&self) -> QType {
        self.qtype
    }

    /// Row `r` dequantized to f32, `[cols]`, written into `out`: the values
    /// ggml's `dequantize_row_*` gives, bit for bit.
    ///
    /// Panics if `r >= rows` or `out.len() != cols`.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "dequantize_row({r}) of {self:?} into {}",
            out.len()
        );
        let kind = self.qtype.kind();
        let (subs, pb, cb) = (self.cols / kind.sub, kind.panel_bytes(), kind.chunk_bytes());
        let (p, j) = (r / PANEL, r % PANEL);
        for (sb, y) in out.chunks_exact_mut(kind.sub).enumerate() {
            let bytes = &self.data[(p * subs + sb) * cb..][..cb];
            let scale = kind.read_scale(&bytes[pb..], j);
            let offset = kind
                .offset
                .then(|| kind.read_scale(&bytes[pb + PANEL * kind.scale_bytes()..], j));
            // Row j's quants: 4 bytes in each 64-byte group (see `quant_pos`).
            let mut q = [0u8; 32];
            for (g, four) in bytes[..pb].chunks_exact(64).enumerate() {
                let four = &four[j * 4..j * 4 + 4];
                for t in 0..4 {
                    if kind.nibbles {
                        q[4 * g + t] = four[t] & 0xF;
                        q[16 + 4 * g + t] = four[t] >> 4;
                    } else {
                        q[4 * g + t] = four[t];
                    }
                }
            }
            for (v, &q) in y.iter_mut().zip(&q) {
                let w = scale * (q as i32 - kind.zero) as f32;
                *v = match offset {
                    Some(m) => w + m,
                    None => w,
                };
            }
        }
    }

    /// The whole matrix `[rows, cols]` in f32.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_mut(self.cols)
                .enumerate()
                .for_each(|(r, row)| self.dequantize_row(r, row));
        }
        out
    }

    /// `out[i, r] = sum_c x[i, c] * W[r, c]` for `x` `[n, cols]` f32
    /// row-major, `out` `[n, rows]`, with `x` quantized to 8 bits per block
    /// of 32 (see the module docs for the error bound); parallel over panels
    /// of 16 rows with rayon. Row `i` of `out` depends only on row `i` of
    /// `x`, bit for bit, whatever `n` is.
    ///
    /// Panics if `x.len() != n * cols` or `out.len() != n * rows`.
    pub(crate) fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        // SAFETY: detected on this CPU.
        unsafe { self.matmul_on(Isa::detect(), x, n, out) }
    }

    /// [`Self::matmul`] with a chosen kernel.
    ///
    /// # Safety
    /// The CPU must have `isa` (as [`Isa::detect`] or a lesser one reports).
    unsafe fn matmul_on(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        assert!(
            x.len() == n * self.cols && out.len() == n * self.rows,
            "matmul of {self:?}: x has {} values for n = {n}, out {}",
            x.len(),
            out.len()
        );
        if n == 0 || self.rows == 0 {
            return;
        }
        let kind = self.qtype.kind();
        let acts = Acts::quantize(x, n, self.cols, kind);
        let threads = rayon::current_num_threads();
        let tasks = if n * self.rows * self.cols < PARALLEL_MIN_MACS {
            1
        } else {
            // One task per thread for small matrices (a 192-row one splits
            // 96 + 96 over 2 threads), one more per thread for every 16
            // panels up to 4, so that a large one balances when a thread lags.
            threads * (self.panels / 16).clamp(1, 4)
        };
        let chunk = self.panels.div_ceil(tasks);
        let dst = Out(out.as_mut_ptr());
        let task = |t: usize| {
            let (p0, p1) = (t * chunk, ((t + 1) * chunk).min(self.panels));
            // SAFETY: the lengths were checked above, task `t` writes only the
            // columns of panels p0..p1, and the caller vouches for `isa`.
            unsafe { self.panels_times_x(isa, &acts, n, p0, p1, dst.get()) };
        };
        let tasks = self.panels.div_ceil(chunk);
        if tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            task(0);
        }
    }

    /// Panels `p0..p1` times every row of `acts`, into their columns of `y`.
    ///
    /// # Safety
    /// `y` points at `n * rows` floats no other thread writes in these
    /// columns; the CPU has `isa`.
    unsafe fn panels_times_x(
        &self,
        isa: Isa,
        acts: &Acts,
        n: usize,
        p0: usize,
        p1: usize,
        y: *mut f32,
    ) {
        let m = self.view();
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match self.qtype {
                QType::Q4_0 => avx512::panels::<true, 32, false, f16>(&m, acts, n, p0, p1, y),
                QType::Q4_1 => avx512::panels::<true, 32, true, f16>(&m, acts, n, p0, p1, y),
                QType::Q8_0 => avx512::panels::<false, 32, false, f16>(&m, acts, n, p0, p1, y),
                QType::Q4K => avx512::panels::<true, 32, true, f32>(&m, acts, n, p0, p1, y),
                QType::Q5K => avx512::panels::<false, 32, true, f32>(&m, acts, n, p0, p1, y),
                QType::Q6K => avx512::panels::<false, 16, false, f32>(&m, acts, n, p0, p1, y),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match self.qtype {
                QType::Q4_0 => avx2::panels::<true, 32, false, false, f16>(&m, acts, n, p0, p1, y),
                QType::Q4_1 => avx2::panels::<true, 32, true, false, f16>(&m, acts, n, p0, p1, y),
                QType::Q8_0 => avx2::panels::<false, 32, false, true, f16>(&m, acts, n, p0, p1, y),
                QType::Q4K => avx2::panels::<true, 32, true, false, f32>(&m, acts, n, p0, p1, y),
                QType::Q5K => avx2::panels::<false, 32, true, false, f32>(&m, acts, n, p0, p1, y),
                QType::Q6K => avx2::panels::<false, 16, false, false, f32>(&m, acts, n, p0, p1, y),
            },
            _ => portable(&m, acts, n, p0, p1, y),
        }
    }

    /// Raw pointers for the kernels.
    fn view(&self) -> View {
        View {
            kind: self.qtype.kind(),
            rows: self.rows,
            cols: self.cols,
            data: self.data.as_ptr(),
        }
    }
}

fn setting(name: &'static str, value: impl std::fmt::Display, expected: String) -> Error {
    Error::InvalidSetting {
        name,
        value: value.to_string(),
        expected,
    }
}

/// A [`QMatrix`] as the kernels read it.
struct View {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// `[panel][sub-block][chunk_bytes]`.
    data: *const u8,
}

/// `x` `[n, cols]` quantized to 8 bits per block of 32.
struct Acts {
    /// `[n, cols]`.
    q: Vec<i8>,
    /// Scale per block, `[n, cols / 32]`.
    d: Vec<f32>,
    /// f32 sum of `x` per block (8 lanes, then pairwise), `[n, cols / 32]`.
    sum: Vec<f32>,
    /// `zero * sum(q)` per sub-block of the matrix, `[n, cols / sub]`; empty
    /// for formats without a zero point.
    corr: Vec<i32>,
}

impl Acts {
    /// Quantizes `x` `[n, cols]` for a matrix stored as `kind`.
    fn quantize(x: &[f32], n: usize, cols: usize, kind: Kind) -> Self {
        let blocks = n * cols / XBLOCK;
        let mut a = Acts {
            q: vec![0; n * cols],
            d: vec![0.0; blocks],
            sum: vec![0.0; blocks],
            corr: if kind.zero == 0 {
                Vec::new()
            } else {
                vec![0; n * cols / kind.sub]
            },
        };
        #[cfg(target_arch = "x86_64")]
        let simd = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detected on this CPU.
            unsafe {
                quantize_blocks_avx2(&x[..n * cols], &mut a.q, &mut a.d, &mut a.sum)
            };
        } else {
            quantize_blocks(&x[..n * cols], &mut a.q, &mut a.d, &mut a.sum);
        }
        for (c, qs) in a.corr.iter_mut().zip(a.q.chunks_exact(kind.sub)) {
            *c = kind.zero * qs.iter().map(|&v| v as i32).sum::<i32>();
        }
        a
    }
}

/// A block's scale, `1 / scale` and sum from its eight lanes of running
/// maxima of `|x|` and sums (each lane `l` over `x[l], x[8 + l], ...` in
/// order), combined pairwise in a fixed order.
fn block_scale(mx: &[f32; 8], sm: &[f32; 8]) -> (f32, f32, f32) {
    let amax =
        ((mx[0].max(mx[1])).max(mx[2].max(mx[3]))).max((mx[4].max(mx[5])).max(mx[6].max(mx[7])));
    let sum = ((sm[0] + sm[1]) + (sm[2] + sm[3])) + ((sm[4] + sm[5]) + (sm[6] + sm[7]));
    // A NaN or infinite x makes its block's outputs NaN.
    let d = if sum.is_finite() {
        amax / 127.0
    } else {
        f32::NAN
    };
    // 127 / amax rather than 1 / d: one division fewer on the way to the
    // quants (|x| * id may exceed 127 by a rounding; the quants clamp).
    let id = if d > 0.0 { 127.0 / amax } else { 0.0 };
    (d, id, sum)
}

/// `x` in blocks of 32 into `q`, with each block's scale `d` and sum.
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [f32]) {
    for (b, (xs, qs)) in x
        .chunks_exact(XBLOCK)
        .zip(q.chunks_exact_mut(XBLOCK))
        .enumerate()
    {
        let (mut mx, mut sm) = ([0f32; 8], [0f32; 8]);
        for c in xs.chunks_exact(8) {
            for l in 0..8 {
                mx[l] = mx[l].max(c[l].abs());
                sm[l] += c[l];
            }
        }
        let (db, id, s) = block_scale(&mx, &sm);
        for (q, v) in qs.iter_mut().zip(xs) {
            // Adding 1.5 * 2^23 to |v| <= 127 rounds it to an integer, ties
            // to even, which is then the low bits of the sum.
            let r = (v * id).clamp(-127.0, 127.0) + ROUND;
            *q = (r.to_bits() as i32 - ROUND.to_bits() as i32) as i8;
        }
        d[b] = db;
        sum[b] = s;
    }
}

/// [`quantize_blocks`] in AVX2: the same IEEE operations lane by lane, so
/// the same values (for finite `x`; a block with a NaN gets a NaN scale
/// either way).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [f32]) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let (round, round_bits) = (
        _mm256_set1_ps(ROUND),
        _mm256_set1_epi32(ROUND.to_bits() as i32),
    );
    // Undoes the lane interleaving of the two packs below.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, (xs, qs)) in x
        .chunks_exact(XBLOCK)
        .zip(q.chunks_exact_mut(XBLOCK))
        .enumerate()
    {
        let p = xs.as_ptr();
        let v = [0, 8, 16, 24].map(|k| _mm256_loadu_ps(p.add(k)));
        let (mut mx, mut sm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for vk in v {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, vk));
            sm = _mm256_add_ps(sm, vk);
        }
        let (mut m8, mut s8) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(m8.as_mut_ptr(), mx);
        _mm256_storeu_ps(s8.as_mut_ptr(), sm);
        let (db, id, s) = block_scale(&m8, &s8);
        let idv = _mm256_set1_ps(id);
        let ints = v.map(|vk| {
            let t = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(vk, idv), lo), hi);
            _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(t, round)), round_bits)
        });
        let w0 = _mm256_packs_epi32(ints[0], ints[1]);
        let w1 = _mm256_packs_epi32(ints[2], ints[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w0, w1), order);
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes);
        d[b] = db;
        sum[b] = s;
    }
}

/// Where tasks write their columns of `y`.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a disjoint set of columns of `y`, which outlives
// the tasks (they are joined before `matmul` returns).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Which kernel runs; all give the same bits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX-512 F + BW + VNNI.
    Avx512,
    /// AVX2 + FMA + F16C.
    Avx2,
    Portable,
}

impl Isa {
    /// The best one this CPU has.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Reference code for every CPU: per output, the integer dot product of each
/// sub-block, then the same f32 operations (fused multiply-adds) as the
/// vector kernels, in the same order.
unsafe fn portable(m: &View, a: &Acts, n: usize, p0: usize, p1: usize, y: *mut f32) {
    let kind = m.kind;
    let (subs, pb, cb) = (m.cols / kind.sub, kind.panel_bytes(), kind.chunk_bytes());
    let offsets = pb + PANEL * kind.scale_bytes();
    for p in p0..p1 {
        for i in 0..n {
            let mut acc = [0f32; PANEL];
            let mut acc_m = [0f32; PANEL];
            for sb in 0..subs {
                let bytes = std::slice::from_raw_parts(m.data.add((p * subs + sb) * cb), cb);
                let xq = &a.q[i * m.cols + sb * kind.sub..][..kind.sub];
                let b = i * m.cols / XBLOCK + sb * kind.sub / XBLOCK;
                let corr = if kind.offset {
                    0
                } else {
                    a.corr[i * subs + sb]
                };
                for j in 0..PANEL {
                    let mut isum = 0i32;
                    for (e, &xv) in xq.iter().enumerate() {
                        let (at, high) = quant_pos(kind, j, e);
                        let q = if high {
                            bytes[at] >> 4
                        } else if kind.nibbles {
                            bytes[at] & 0xF
                        } else {
                            bytes[at]
                        };
                        isum += q as i32 * xv as i32;
                    }
                    let sd = kind.read_scale(&bytes[pb..], j) * a.d[b];
                    acc[j] = ((isum - corr) as f32).mul_add(sd, acc[j]);
                    if kind.offset {
                        let off = kind.read_scale(&bytes[offsets..], j);
                        acc_m[j] = off.mul_add(a.sum[b], acc_m[j]);
                    }
                }
            }
            let rows = PANEL.min(m.rows - p * PANEL);
            for j in 0..rows {
                let v = if kind.offset {
                    acc[j] + acc_m[j]
                } else {
                    acc[j]
                };
                *y.add(i * m.rows + p * PANEL + j) = v;
            }
        }
    }
}

/// Starts and sizes of the row tiles for `n` rows: as few tiles of at most
/// `max` rows as will do, as even as can be (8 rows in tiles of 6 go 4 + 4).
fn row_tiles(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = n.div_ceil(max);
    (0..tiles).map(move |t| {
        let (start, end) = (t * n / tiles, (t + 1) * n / tiles);
        (start, end - start)
    })
}

/// A scale type the vector kernels widen to f32 exactly.
trait Scale: Copy {
    /// Sixteen scales at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p..p+16` readable; AVX-512F available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const u8) -> std::arch::x86_64::__m512;
    /// Eight scales at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p..p+8` readable; AVX and F16C available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const u8) -> std::arch::x86_64::__m256;
}

impl Scale for f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Scale for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p as *const f32)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p as *const f32)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{row_tiles, Acts, Scale, View, PANEL, XBLOCK};
    use std::arch::x86_64::*;

    /// Rows `i0..i0+R` of `x` times panel `p`: per row, two integer
    /// accumulators (two dependency chains), an f32 accumulator and, with
    /// offsets, a second.
    ///
    /// `NIB`: 4-bit quants; `S`: sub-block size; `OFF`: offsets; `SC`: the
    /// scale type.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn tile<const R: usize, const NIB: bool, const S: usize, const OFF: bool, SC: Scale>(
        m: &View,
        a: &Acts,
        i0: usize,
        p: usize,
        y: *mut f32,
    ) {
        let subs = m.cols / S;
        let pb = PANEL * S / if NIB { 2 } else { 1 };
        let sbytes = std::mem::size_of::<SC>();
        let cb = pb + PANEL * sbytes * (1 + OFF as usize);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_m = [_mm512_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0F);
        let xq = a.q.as_ptr();
        for sb in 0..subs {
            let chunk = m.data.add((p * subs + sb) * cb);
            let mut isum = [[_mm512_setzero_si512(); 2]; R];
            // 4 columns per group; a 4-bit vector holds groups v and v + 4.
            for v in 0..S / 4 / if NIB { 2 } else { 1 } {
                let w = _mm512_loadu_si512(chunk.add(v * 64) as *const __m512i);
                // The high nibbles stay in place, 16 times their value: one
                // instruction fewer per vector; their sum is shifted back
                // (exactly) below.
                let (w0, w1) = if NIB {
                    (_mm512_and_si512(w, low), _mm512_andnot_si512(low, w))
                } else {
                    (w, w)
                };
                for (r, s) in isum.iter_mut().enumerate() {
                    let x = xq.add((i0 + r) * m.cols + sb * S + v * 4);
                    let x0 = _mm512_set1_epi32((x as *const i32).read_unaligned());
                    if NIB {
                        let x1 = _mm512_set1_epi32((x.add(16) as *const i32).read_unaligned());
                        s[0] = _mm512_dpbusd_epi32(s[0], w0, x0);
                        s[1] = _mm512_dpbusd_epi32(s[1], w1, x1);
                    } else {
                        s[v % 2] = _mm512_dpbusd_epi32(s[v % 2], w0, x0);
                    }
                }
            }
            let scale = SC::load16(chunk.add(pb));
            for (r, s) in isum.iter().enumerate() {
                let i = i0 + r;
                let b = i * m.cols / XBLOCK + sb * S / XBLOCK;
                let high = if NIB {
                    // A multiple of 16: the arithmetic shift is exact.
                    _mm512_srai_epi32::<4>(s[1])
                } else {
                    s[1]
                };
                let mut is = _mm512_add_epi32(s[0], high);
                if !OFF {
                    // A format has a zero point or an offset, not both.
                    is = _mm512_sub_epi32(is, _mm512_set1_epi32(a.corr[i * subs + sb]));
                }
                let sd = _mm512_mul_ps(scale, _mm512_set1_ps(a.d[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), sd, acc[r]);
                if OFF {
                    let off = SC::load16(chunk.add(pb + PANEL * sbytes));
                    acc_m[r] = _mm512_fmadd_ps(off, _mm512_set1_ps(a.sum[b]), acc_m[r]);
                }
            }
        }
        let c = p * PANEL;
        for r in 0..R {
            let v = if OFF {
                _mm512_add_ps(acc[r], acc_m[r])
            } else {
                acc[r]
            };
            let dst = y.add((i0 + r) * m.rows + c);
            if c + PANEL <= m.rows {
                _mm512_storeu_ps(dst, v);
            } else {
                _mm512_mask_storeu_ps(dst, ((1u32 << (m.rows - c)) - 1) as __mmask16, v);
            }
        }
    }

    /// See [`super::QMatrix::panels_times_x`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn panels<const NIB: bool, const S: usize, const OFF: bool, SC: Scale>(
        m: &View,
        a: &Acts,
        n: usize,
        p0: usize,
        p1: usize,
        y: *mut f32,
    ) {
        // One panel at a time (one stream from memory: several panels in
        // flight read the weights of a decode step ~2x slower), every row tile
        // against it while it is in L1.
        for p in p0..p1 {
            for (i, rows) in row_tiles(n, 6) {
                match rows {
                    1 => tile::<1, NIB, S, OFF, SC>(m, a, i, p, y),
                    2 => tile::<2, NIB, S, OFF, SC>(m, a, i, p, y),
                    3 => tile::<3, NIB, S, OFF, SC>(m, a, i, p, y),
                    4 => tile::<4, NIB, S, OFF, SC>(m, a, i, p, y),
                    5 => tile::<5, NIB, S, OFF, SC>(m, a, i, p, y),
                    _ => tile::<6, NIB, S, OFF, SC>(m, a, i, p, y),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Acts, Scale, View, PANEL, XBLOCK};
    use std::arch::x86_64::*;

    /// As the AVX-512 tile, on half a panel (8 rows of `W`) per register:
    /// rows `i0..i0+R` of `x` times halves `h0..h0+H` (panel `h / 2`, half
    /// `h % 2`). Without VNNI the 4-column dot products are `vpmaddubsw`
    /// (pairs, in i16) then `vpmaddwd` by ones: exact, as no pair exceeds
    /// i16 (2 * 63 * 127) except Q8_0's biased bytes, which `SIGNED` turns
    /// back into i8 and multiplies with the sign trick (|w| * (x sign w),
    /// at most 2 * 128 * 127), giving `sum q * xq - 128 * sum xq` directly.
    /// 4-bit pairs are summed in i16 over the whole sub-block first.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<
        const R: usize,
        const H: usize,
        const NIB: bool,
        const S: usize,
        const OFF: bool,
        const SIGNED: bool,
        SC: Scale,
    >(
        m: &View,
        a: &Acts,
        i0: usize,
        h0: usize,
        y: *mut f32,
    ) {
        let subs = m.cols / S;
        let pb = PANEL * S / if NIB { 2 } else { 1 };
        let sbytes = std::mem::size_of::<SC>();
        let cb = pb + PANEL * sbytes * (1 + OFF as usize);
        let mut acc = [[_mm256_setzero_ps(); H]; R];
        let mut acc_m = [[_mm256_setzero_ps(); H]; R];
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let xq = a.q.as_ptr();
        let dot = |w: __m256i, x: __m256i| {
            let p16 = if SIGNED {
                let ws = _mm256_xor_si256(w, flip);
                _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(x, ws))
            } else {
                _mm256_maddubs_epi16(w, x)
            };
            _mm256_madd_epi16(p16, ones)
        };
        for sb in 0..subs {
            let mut isum = [[[_mm256_setzero_si256(); 2]; H]; R];
            for v in 0..S / 4 / if NIB { 2 } else { 1 } {
                for hh in 0..H {
                    let (p, half) = ((h0 + hh) / 2, (h0 + hh) % 2);
                    let at = (p * subs + sb) * cb + v * 64 + half * 32;
                    let w = _mm256_loadu_si256(m.data.add(at) as *const __m256i);
                    let (w0, w1) = if NIB {
                        (
                            _mm256_and_si256(w, low),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(w), low),
                        )
                    } else {
                        (w, w)
                    };
                    for (r, s) in isum.iter_mut().enumerate() {
                        let x = xq.add((i0 + r) * m.cols + sb * S + v * 4);
                        let x0 = _mm256_set1_epi32((x as *const i32).read_unaligned());
                        if NIB {
                            // Pairs of 4-bit products stay in i16 for the
                            // whole sub-block: 8 * 2 * 15 * 127 < 2^15.
                            let x1 = _mm256_set1_epi32((x.add(16) as *const i32).read_unaligned());
                            s[hh][0] = _mm256_add_epi16(s[hh][0], _mm256_maddubs_epi16(w0, x0));
                            s[hh][1] = _mm256_add_epi16(s[hh][1], _mm256_maddubs_epi16(w1, x1));
                        } else {
                            s[hh][v % 2] = _mm256_add_epi32(s[hh][v % 2], dot(w0, x0));
                        }
                    }
                }
            }
            for r in 0..R {
                let i = i0 + r;
                let b = i * m.cols / XBLOCK + sb * S / XBLOCK;
                let dx = _mm256_set1_ps(a.d[b]);
                for hh in 0..H {
                    let (p, half) = ((h0 + hh) / 2, (h0 + hh) % 2);
                    let at = m.data.add((p * subs + sb) * cb + pb + half * 8 * sbytes);
                    let mut is = if NIB {
                        _mm256_madd_epi16(_mm256_add_epi16(isum[r][hh][0], isum[r][hh][1]), ones)
                    } else {
                        _mm256_add_epi32(isum[r][hh][0], isum[r][hh][1])
                    };
                    if !SIGNED && !OFF {
                        is = _mm256_sub_epi32(is, _mm256_set1_epi32(a.corr[i * subs + sb]));
                    }
                    let sd = _mm256_mul_ps(SC::load8(at), dx);
                    acc[r][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), sd, acc[r][hh]);
                    if OFF {
                        let off = SC::load8(at.add(PANEL * sbytes));
                        acc_m[r][hh] = _mm256_fmadd_ps(off, _mm256_set1_ps(a.sum[b]), acc_m[r][hh]);
                    }
                }
            }
        }
        for r in 0..R {
            for hh in 0..H {
                let v = if OFF {
                    _mm256_add_ps(acc[r][hh], acc_m[r][hh])
                } else {
                    acc[r][hh]
                };
                let c = (h0 + hh) * 8;
                if c >= m.rows {
                    continue;
                }
                let dst = y.add((i0 + r) * m.rows + c);
                if c + 8 <= m.rows {
                    _mm256_storeu_ps(dst, v);
                } else {
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, m.rows - c);
                }
            }
        }
    }

    /// See [`super::QMatrix::panels_times_x`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panels<
        const NIB: bool,
        const S: usize,
        const OFF: bool,
        const SIGNED: bool,
        SC: Scale,
    >(
        m: &View,
        a: &Acts,
        n: usize,
        p0: usize,
        p1: usize,
        y: *mut f32,
    ) {
        for p in p0..p1 {
            if n == 1 {
                tile::<1, 2, NIB, S, OFF, SIGNED, SC>(m, a, 0, 2 * p, y);
                continue;
            }
            for h in [2 * p, 2 * p + 1] {
                let mut i = 0;
                while i < n {
                    match n - i {
                        1 => tile::<1, 1, NIB, S, OFF, SIGNED, SC>(m, a, i, h, y),
                        2 => tile::<2, 1, NIB, S, OFF, SIGNED, SC>(m, a, i, h, y),
                        _ => tile::<3, 1, NIB, S, OFF, SIGNED, SC>(m, a, i, h, y),
                    }
                    i += (n - i).min(3);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [QType; 6] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
    ];

    /// The ISAs this CPU can run, best first.
    fn isas() -> Vec<Isa> {
        let all = [Isa::Avx512, Isa::Avx2, Isa::Portable];
        let best = all.iter().position(|&i| i == Isa::detect()).unwrap();
        all[best..].to_vec()
    }

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    fn put_f16(b: &mut [u8], at: usize, v: f32) {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }

    /// `rows * cols / block_elems` random blocks with finite f16 fields.
    fn random_blocks(qtype: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15 + 1);
        let bb = qtype.block_bytes();
        let mut data: Vec<u8> = (0..rows * cols / qtype.block_elems() * bb)
            .map(|_| rng.next() as u8)
            .collect();
        for b in data.chunks_exact_mut(bb) {
            match qtype {
                QType::Q4_0 | QType::Q8_0 => put_f16(b, 0, 0.05 * rng.f32()),
                QType::Q4_1 => {
                    put_f16(b, 0, 0.01 * rng.f32());
                    put_f16(b, 2, 0.1 * rng.f32());
                }
                QType::Q4K | QType::Q5K => {
                    put_f16(b, 0, 0.002 * rng.f32());
                    put_f16(b, 2, 0.004 * rng.f32());
                }
                QType::Q6K => put_f16(b, 208, 0.001 * rng.f32()),
            }
        }
        data
    }

    fn candle_dequantize(qtype: QType, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
        use candle_core::quantized::{GgmlDType, QStorage, QTensor};
        use candle_core::Device;
        let dtype = match qtype {
            QType::Q4_0 => GgmlDType::Q4_0,
            QType::Q4_1 => GgmlDType::Q4_1,
            QType::Q8_0 => GgmlDType::Q8_0,
            QType::Q4K => GgmlDType::Q4K,
            QType::Q5K => GgmlDType::Q5K,
            QType::Q6K => GgmlDType::Q6K,
        };
        let storage =
            QStorage::from_data(std::borrow::Cow::Borrowed(data), &Device::Cpu, dtype).unwrap();
        let t = QTensor::new(storage, (rows, cols)).unwrap();
        t.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn new_checks_the_shape_and_the_byte_count() {
        for q in ALL {
            let be = q.block_elems();
            let err = QMatrix::new(q, 2, be + 16, vec![0; 1000])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("columns") && err.contains(&format!("multiple of {be}")),
                "{err}"
            );
            let err = QMatrix::new(q, 3, be, vec![0; 2 * q.block_bytes()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{}", 3 * q.block_bytes())), "{err}");
            let err = QMatrix::new(q, usize::MAX, 2 * be, vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains("overflows"), "{err}");
            let err = QMatrix::new(q, 0, be, vec![]).unwrap_err().to_string();
            assert!(err.contains("0 x"), "{err}");
            let m = QMatrix::new(q, 3, be, vec![0; 3 * q.block_bytes()]).unwrap();
            assert_eq!((m.rows(), m.cols(), m.qtype()), (3, be, q));
        }
        assert_eq!(ALL.map(|q| q.block_bytes()), [18, 20, 34, 144, 176, 210]);
        // The kernels rely on it: a zero point or an offset, never both.
        assert!(ALL.iter().all(|q| q.kind().offset == (q.kind().zero == 0)));
    }

    #[test]
    fn dequantize_hand_built_blocks() {
        // Q4_0: d = 0.5, qs[j] = j | (15 - j) << 4: element j is (j - 8) / 2,
        // element 16 + j is (7 - j) / 2.
        let mut b = vec![0u8; 18];
        put_f16(&mut b, 0, 0.5);
        for j in 0..16 {
            b[2 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let want: Vec<f32> = (0..16)
            .map(|j| (j as f32 - 8.0) / 2.0)
            .chain((0..16).map(|j| (7.0 - j as f32) / 2.0))
            .collect();
        assert_eq!(
            QMatrix::new(QType::Q4_0, 1, 32, b.clone())
                .unwrap()
                .dequantize(),
            want
        );

        // Q4_1: d = 0.25, m = -1, same nibbles: q * 0.25 - 1.
        let mut b1 = vec![0u8; 20];
        put_f16(&mut b1, 0, 0.25);
        put_f16(&mut b1, 2, -1.0);
        b1[4..].copy_from_slice(&b[2..]);
        let want: Vec<f32> = (0..16)
            .map(|j| j as f32 * 0.25 - 1.0)
            .chain((0..16).map(|j| (15 - j) as f32 * 0.25 - 1.0))
            .collect();
        assert_eq!(
            QMatrix::new(QType::Q4_1, 1, 32, b1).unwrap().dequantize(),
            want
        );

        // Q8_0: d = 2, qs = -128, -127, ..., -97.
        let mut b8 = vec![0u8; 34];
        put_f16(&mut b8, 0, 2.0);
        for j in 0..32 {
            b8[2 + j] = (j as i32 - 128) as i8 as u8;
        }
        let want: Vec<f32> = (0..32).map(|j| 2.0 * (j as f32 - 128.0)).collect();
        assert_eq!(
            QMatrix::new(QType::Q8_0, 1, 32, b8).unwrap().dequantize(),
            want
        );

        // Q4_K: d = 1, dmin = 0.5. Sub-block 0 (ggml's j < 4 rule): scale 3
        // in byte 0, min 2 in byte 4. Sub-block 5 (j >= 4): scale 0x25 and
        // min 0x13, their low 4 bits in byte 9 and high 2 bits in the top
        // bits of bytes 1 and 5. Quants 0 but byte 64 of qs: 9 in the low
        // nibble (element 128, sub-block 4: scale 0, min 0) and 7 in the
        // high one (element 160, sub-block 5).
        let mut bk = vec![0u8; 144];
        put_f16(&mut bk, 0, 1.0);
        put_f16(&mut bk, 2, 0.5);
        bk[4] = 3;
        bk[4 + 4] = 2;
        bk[4 + 9] = 0x5 | (0x3 << 4);
        bk[4 + 1] = 0b10 << 6;
        bk[4 + 5] = 0b01 << 6;
        bk[16 + 64] = 0x9 | (0x7 << 4);
        assert_eq!(scale_min_k4(5, &bk[4..16]), (0x25, 0x13));
        let got = QMatrix::new(QType::Q4K, 1, 256, bk).unwrap().dequantize();
        assert!(got[..32].iter().all(|&v| v == -1.0)); // 3 * 0 - 0.5 * 2
        assert_eq!((got[128], got[129]), (0.0, 0.0));
        assert_eq!((got[160], got[161]), (37.0 * 7.0 - 9.5, -9.5));

        // Q5_K: as Q4_K with the fifth bit from qh: element l of sub-block
        // s gets 16 when bit s of qh[l] is set.
        let mut b5 = vec![0u8; 176];
        put_f16(&mut b5, 0, 1.0);
        put_f16(&mut b5, 2, 0.0);
        b5[4] = 1; // sub-block 0: scale 1
        b5[5] = 1; // sub-block 1: scale 1
        b5[16] = 0b11; // qh[0]: element 0 of sub-blocks 0 and 1
        b5[48] = 0x2 | (0x4 << 4);
        let got = QMatrix::new(QType::Q5K, 1, 256, b5).unwrap().dequantize();
        assert_eq!((got[0], got[32], got[1]), (18.0, 20.0, 0.0));

        // Q6_K: d = 0.5, scale of 16-element sub-block s = s - 8; quant 63 at
        // element 0 (ql low nibble 0xF, qh bits 0-1 = 3) and 0 elsewhere (so
        // -32 once the zero is subtracted).
        let mut b6 = vec![0u8; 210];
        put_f16(&mut b6, 208, 0.5);
        for s in 0..16 {
            b6[192 + s] = (s as i8 - 8) as u8;
        }
        b6[0] = 0xF;
        b6[128] = 0b11;
        let got = QMatrix::new(QType::Q6K, 1, 256, b6).unwrap().dequantize();
        assert_eq!(got[0], 0.5 * -8.0 * 31.0);
        for (e, v) in got.iter().enumerate().skip(1) {
            assert_eq!(*v, 0.5 * ((e / 16) as f32 - 8.0) * -32.0, "element {e}");
        }
    }

    #[test]
    fn dequantize_equals_candle_for_random_blocks() {
        for (s, q) in ALL.into_iter().enumerate() {
            let (rows, cols) = (19, 512);
            let data = random_blocks(q, rows, cols, s as u64);
            let m = QMatrix::new(q, rows, cols, data.clone()).unwrap();
            let want = candle_dequantize(q, rows, cols, &data);
            let got = m.dequantize();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{q:?} element {i}: {g} vs {w}");
            }
            let mut row = vec![0f32; cols];
            m.dequantize_row(17, &mut row);
            assert_eq!(row, want[17 * cols..18 * cols]);
        }
    }

    fn acts(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
        // Activations with outliers, as in a transformer's residual stream.
        (0..n * cols)
            .map(|i| rng.f32() * if i % 97 == 5 { 20.0 } else { 1.0 })
            .collect()
    }

    /// Each weight's sub-block offset (0 without), `[rows, cols]`.
    fn offsets(m: &QMatrix) -> Vec<f64> {
        let kind = m.qtype.kind();
        let (subs, pb, cb) = (m.cols / kind.sub, kind.panel_bytes(), kind.chunk_bytes());
        let mut off = vec![0f64; m.rows * m.cols];
        if kind.offset {
            for (k, o) in off.iter_mut().enumerate() {
                let (r, c) = (k / m.cols, k % m.cols);
                let chunk = &m.data[((r / PANEL) * subs + c / kind.sub) * cb..][..cb];
                *o = kind.read_scale(&chunk[pb + PANEL * kind.scale_bytes()..], r % PANEL) as f64;
            }
        }
        off
    }

    /// What the kernels compute, in f64: `(w - offset) * dx * xq + offset *
    /// sum x`, with `x` quantized by the kernels' own code, `[n, rows]`.
    fn emulate(w: &[f32], off: &[f64], x: &[f32], n: usize, cols: usize) -> Vec<f64> {
        let rows = w.len() / cols;
        let mut q = vec![0i8; x.len()];
        let (mut d, mut sum) = (vec![0f32; x.len() / 32], vec![0f32; x.len() / 32]);
        quantize_blocks(x, &mut q, &mut d, &mut sum);
        let mut y = vec![0f64; n * rows];
        for i in 0..n {
            for r in 0..rows {
                let mut acc = 0f64;
                for b in 0..cols / 32 {
                    let (mut dot, mut o) = (0f64, 0f64);
                    for c in b * 32..(b + 1) * 32 {
                        let k = r * cols + c;
                        dot += (w[k] as f64 - off[k]) * q[i * cols + c] as f64;
                        // Offsets are constant over a 32-block.
                        o = off[k];
                    }
                    let blk = i * cols / 32 + b;
                    acc += dot * d[blk] as f64 + o * sum[blk] as f64;
                }
                y[i * rows + r] = acc;
            }
        }
        y
    }

    #[test]
    fn matmul_is_within_the_activation_rounding_of_an_f64_product() {
        let mut rng = Rng(7);
        for (s, q) in ALL.into_iter().enumerate() {
            let be = q.block_elems();
            for (rows, cols) in [(1, be), (15, 2 * be), (17, be.max(96)), (50, 3 * be)] {
                let data = random_blocks(q, rows, cols, 100 + s as u64);
                let m = QMatrix::new(q, rows, cols, data).unwrap();
                let w = m.dequantize();
                let off = offsets(&m);
                for n in 1..=9 {
                    let x = acts(&mut rng, n, cols);
                    let emulated = emulate(&w, &off, &x, n, cols);
                    for isa in isas() {
                        let mut y = vec![f32::NAN; n * rows];
                        // SAFETY: `isas()` lists only what this CPU has.
                        unsafe { m.matmul_on(isa, &x, n, &mut y) };
                        for i in 0..n {
                            let xi = &x[i * cols..(i + 1) * cols];
                            for r in 0..rows {
                                let wr = &w[r * cols..(r + 1) * cols];
                                let exact: f64 =
                                    xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                                // |x - dx xq| <= dx / 2 per element, dx = max|x| / 127 per block.
                                let mut bound = 0f64;
                                for (xb, wb) in xi.chunks(32).zip(wr.chunks(32)) {
                                    let dx =
                                        xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                                    bound +=
                                        dx / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
                                }
                                let mag: f64 = xi
                                    .iter()
                                    .zip(wr)
                                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                    .sum();
                                let got = y[i * rows + r] as f64;
                                assert!(
                                    (got - exact).abs() <= bound * 1.001 + 1e-5 * mag + 1e-30,
                                    "{isa:?} {q:?} {rows}x{cols} n={n} [{i},{r}]: {got} vs {exact} (bound {bound})"
                                );
                                // And tightly: f32 rounding away from the
                                // product the quantized activations give.
                                let e = emulated[i * rows + r];
                                assert!(
                                    (got - e).abs() <= 1e-5 * mag + 1e-30,
                                    "{isa:?} {q:?} {rows}x{cols} n={n} [{i},{r}]: {got} vs emulated {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn activation_quantization_rounds_ties_to_even_on_every_path() {
        // One block with scale 1 (max |x| = 127) and ties, then random ones.
        let mut x = vec![127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -126.5];
        x.resize(32, 0.25);
        let mut rng = Rng(3);
        x.extend(acts(&mut rng, 1, 32 * 40));
        let blocks = x.len() / 32;
        let mut want = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks]);
        quantize_blocks(&x, &mut want.0, &mut want.1, &mut want.2);
        assert_eq!(want.0[..9], [127, 0, 2, 2, 0, -2, -2, 3, -126]);
        assert_eq!(want.1[0], 1.0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut got = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks]);
            // SAFETY: detected.
            unsafe { quantize_blocks_avx2(&x, &mut got.0, &mut got.1, &mut got.2) };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn the_smollm2_gguf_matrices_dequantize_as_candle_and_multiply_within_the_bound() {
        // Real weights: SmolLM2-135M's Q4_1 projections and Q8_0 embedding.
        use candle_core::quantized::gguf_file;
        use candle_core::Device;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let Ok(mut file) = std::fs::File::open(&path) else {
            eprintln!("SKIP: {} is absent", path.display());
            return;
        };
        let content = gguf_file::Content::read(&mut file).unwrap();
        let mut rng = Rng(5);
        for (name, qtype) in [
            ("blk.0.attn_q.weight", QType::Q4_1),
            ("blk.0.attn_k.weight", QType::Q4_1),
            ("blk.7.ffn_down.weight", QType::Q4_1),
            ("token_embd.weight", QType::Q8_0),
        ] {
            let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
            let (rows, cols) = t.shape().dims2().unwrap();
            let m = QMatrix::new(qtype, rows, cols, t.data().unwrap().into_owned()).unwrap();
            let want: Vec<f32> = t
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = m.dequantize();
            assert!(
                w.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
            // Activations with and without outliers (one in 97 is 20x).
            let n = 3;
            for outliers in [true, false] {
                let x: Vec<f32> = acts(&mut rng, n, cols)
                    .iter()
                    .map(|v| {
                        if outliers {
                            0.5 * v
                        } else {
                            v.clamp(-1.0, 1.0)
                        }
                    })
                    .collect();
                let mut y = vec![0f32; n * rows];
                m.matmul(&x, n, &mut y);
                let (mut worst, mut rms) = (0f64, 0f64);
                for i in 0..n {
                    let xi = &x[i * cols..(i + 1) * cols];
                    for r in 0..rows {
                        let wr = &w[r * cols..(r + 1) * cols];
                        let exact: f64 =
                            xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mut bound = 0f64;
                        for (xb, wb) in xi.chunks(32).zip(wr.chunks(32)) {
                            let dx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                            bound += dx / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
                        }
                        let err = (y[i * rows + r] as f64 - exact).abs();
                        assert!(
                            err <= bound * 1.001 + 1e-6,
                            "{name} [{i},{r}]: {err} > {bound}"
                        );
                        worst = worst.max(err);
                        rms += exact * exact;
                    }
                }
                let rms = (rms / (n * rows) as f64).sqrt();
                eprintln!(
                    "{name} (outliers: {outliers}): max |error| {worst:.2e} = {:.2e} of the outputs' rms",
                    worst / rms
                );
            }
        }
    }

    #[test]
    fn row_tiles_cover_every_row_once_and_evenly() {
        for n in 0..40 {
            let tiles: Vec<_> = row_tiles(n, 6).collect();
            let mut next = 0;
            for &(start, len) in &tiles {
                assert!(start == next && (1..=6).contains(&len), "n={n}: {tiles:?}");
                next += len;
            }
            assert_eq!(next, n);
            let lens = tiles.iter().map(|t| t.1);
            assert!(lens.clone().max().unwrap_or(0) - lens.min().unwrap_or(0) <= 1);
        }
    }

    #[test]
    fn rows_do_not_depend_on_n_nor_on_the_isa() {
        // One row at a time equals all rows at once, bit for bit, for every
        // tile shape (n = 1..9) and every kernel; and the kernels agree.
        let mut rng = Rng(11);
        for (s, q) in ALL.into_iter().enumerate() {
            let (rows, cols) = (16 * 5 + 3, 2 * q.block_elems());
            let m =
                QMatrix::new(q, rows, cols, random_blocks(q, rows, cols, 200 + s as u64)).unwrap();
            let x = acts(&mut rng, 9, cols);
            let mut reference: Option<Vec<f32>> = None;
            for isa in isas() {
                let mut one = vec![0f32; 9 * rows];
                for (xi, yi) in x.chunks(cols).zip(one.chunks_mut(rows)) {
                    // SAFETY: `isas()` lists only what this CPU has.
                    unsafe { m.matmul_on(isa, xi, 1, yi) };
                }
                for n in 1..=9 {
                    let mut all = vec![0f32; n * rows];
                    // SAFETY: as above.
                    unsafe { m.matmul_on(isa, &x[..n * cols], n, &mut all) };
                    let same = all
                        .iter()
                        .zip(&one)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{isa:?} {q:?}: n = {n} differs from one row at a time"
                    );
                }
                match &reference {
                    None => reference = Some(one),
                    Some(r) => assert!(
                        r.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} {q:?} differs from {:?}",
                        isas()[0]
                    ),
                }
            }
        }
    }
}
