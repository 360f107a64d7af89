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
//!
//! Here: the repacking, the activation quantization, the portable kernel
//! and the dispatch; the vector kernels are `avx512` and `avx2`. What a
//! file's block bytes mean ([`QType`], `decode_block`) is `super::super::quant`'s.

use half::f16;
use rayon::prelude::*;

use super::super::quant::{decode_block, QType};
use super::{row_tiles, Isa, Out, PANEL};
use crate::error::{Error, Result};

// `QType` (the file's formats) is `quant`'s; how the kernels store each is ours.
impl QType {
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
        unsafe { self.matmul_on(Isa::detect_int8(), x, n, out) }
    }

    /// [`Self::matmul`] with a chosen kernel.
    ///
    /// # Safety
    /// The CPU must have `isa` (as [`Isa::detect_int8`] or a lesser one reports).
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
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests;
