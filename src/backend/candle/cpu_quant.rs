//! Weight matrices in ggml's block formats, computed on as stored.
//!
//! This is the scalar reference implementation of the interface: each
//! output row is dequantized and dotted with each input row in f32, in
//! column order. It is exact with respect to the dequantized weights and
//! computes every output element independently of how many input rows ride
//! along, so a batched pass equals a sequential one bit for bit. The block
//! layouts follow llama.cpp's `ggml-quants.c` (`block_q4_0 { d, qs[16] }`,
//! ...), as candle mirrors them in `k_quants.rs`.

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// ggml block formats we compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QType {
    /// `block_q4_0 { d: f16, qs: [u8; 16] }`: `x = (q - 8) * d`.
    Q4_0,
    /// `block_q4_1 { d: f16, m: f16, qs: [u8; 16] }`: `x = q * d + m`.
    Q4_1,
    /// `block_q8_0 { d: f16, qs: [i8; 32] }`: `x = q * d`.
    Q8_0,
    /// `block_q4_K { d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`.
    Q4K,
    /// `block_q5_K { d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`.
    Q5K,
    /// `block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`.
    Q6K,
}

impl QType {
    /// Weights per block: 32 or 256.
    pub(crate) fn block_elems(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => 32,
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    /// Bytes per block.
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
}

/// A weight matrix `[rows, cols]` in ggml blocks, row-major (each row is
/// `cols / block_elems` blocks), bytes exactly as in the GGUF file.
pub(crate) struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
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

impl QMatrix {
    /// Checks `cols % block_elems == 0` and
    /// `data.len() == rows * cols / block_elems * block_bytes` (checked arithmetic).
    pub(crate) fn new(qtype: QType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let err = |message: String| Error::Shape {
            model: "ggml matrix".into(),
            message,
        };
        if !cols.is_multiple_of(qtype.block_elems()) {
            return Err(err(format!(
                "{qtype:?}: {cols} columns are not a multiple of the block size {}",
                qtype.block_elems()
            )));
        }
        let bytes = rows
            .checked_mul(cols / qtype.block_elems())
            .and_then(|b| b.checked_mul(qtype.block_bytes()));
        if bytes != Some(data.len()) {
            return Err(err(format!(
                "{qtype:?} [{rows}, {cols}] needs {bytes:?} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            qtype,
            rows,
            cols,
            data,
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

    fn row_bytes(&self) -> usize {
        self.cols / self.qtype.block_elems() * self.qtype.block_bytes()
    }

    /// Row `r` dequantized to f32, `[cols]`, written into `out`.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let row = &self.data[r * rb..(r + 1) * rb];
        let (be, bb) = (self.qtype.block_elems(), self.qtype.block_bytes());
        for (block, y) in row
            .chunks_exact(bb)
            .zip(out[..self.cols].chunks_exact_mut(be))
        {
            match self.qtype {
                QType::Q4_0 => q4_0(block, y),
                QType::Q4_1 => q4_1(block, y),
                QType::Q8_0 => q8_0(block, y),
                QType::Q4K => q4k(block, y),
                QType::Q5K => q5k(block, y),
                QType::Q6K => q6k(block, y),
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
    /// row-major, `out` `[n, rows]`; parallel over rows with rayon.
    pub(crate) fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), n * cols, "x is not [n, cols]");
        assert_eq!(out.len(), n * rows, "out is not [n, rows]");
        if rows == 0 || n == 0 {
            return;
        }
        // `[rows, n]`: each task owns a run of output rows.
        let mut transposed = vec![0f32; rows * n];
        transposed
            .par_chunks_mut(n * 64)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let mut w = vec![0f32; cols];
                for (j, dst_row) in dst.chunks_exact_mut(n).enumerate() {
                    self.dequantize_row(chunk * 64 + j, &mut w);
                    for (i, d) in dst_row.iter_mut().enumerate() {
                        let xi = &x[i * cols..(i + 1) * cols];
                        *d = dot(xi, &w);
                    }
                }
            });
        for (r, col) in transposed.chunks_exact(n).enumerate() {
            for (i, v) in col.iter().enumerate() {
                out[i * rows + r] = *v;
            }
        }
    }
}

/// `a . b` in 16 interleaved partial sums (which the compiler keeps in
/// vector registers), added up at the end: one fixed order for any `n`.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0xF) as f32 - 8.0) * d;
        y[j + 16] = ((q >> 4) as f32 - 8.0) * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, q) in y.iter_mut().zip(&b[2..34]) {
        *y = *q as i8 as f32 * d;
    }
}

/// Scale and min of sub-block `j` of a Q4_K / Q5_K block (6 bits each).
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

fn q4k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (c, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (
            d * s1 as f32,
            min * m1 as f32,
            d * s2 as f32,
            min * m2 as f32,
        );
        for (l, q) in q.iter().enumerate() {
            y[l] = d1 * (q & 0xF) as f32 - m1;
            y[l + 32] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

fn q5k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (c, (ql, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (
            d * s1 as f32,
            min * m1 as f32,
            d * s2 as f32,
            min * m2 as f32,
        );
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for (l, (q, h)) in ql.iter().zip(qh).enumerate() {
            let hi1 = if h & u1 != 0 { 16.0 } else { 0.0 };
            let hi2 = if h & u2 != 0 { 16.0 } else { 0.0 };
            y[l] = d1 * ((q & 0xF) as f32 + hi1) - m1;
            y[l + 32] = d2 * ((q >> 4) as f32 + hi2) - m2;
        }
    }
}

fn q6k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], half(b, 208));
    for half_block in 0..2 {
        let y = &mut y[128 * half_block..];
        let (ql, qh, sc) = (
            &ql[64 * half_block..],
            &qh[32 * half_block..],
            &sc[8 * half_block..],
        );
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| sc[is + k] as i8 as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Every format dequantizes as candle's reference does, and the
    /// product equals the dense product of the dequantized matrix.
    #[test]
    fn matches_candle_dequantization_and_dense_products() {
        let (rows, cols, n) = (70, 512, 3);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect();
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
            .collect();
        for (qt, gt) in [
            (QType::Q4_0, GgmlDType::Q4_0),
            (QType::Q4_1, GgmlDType::Q4_1),
            (QType::Q8_0, GgmlDType::Q8_0),
            (QType::Q4K, GgmlDType::Q4K),
            (QType::Q5K, GgmlDType::Q5K),
            (QType::Q6K, GgmlDType::Q6K),
        ] {
            let q = QTensor::quantize(&w, gt).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let m = QMatrix::new(qt, rows, cols, q.data().unwrap().into_owned()).unwrap();
            assert_eq!(m.dequantize(), want, "{qt:?}");
            let mut out = vec![0f32; n * rows];
            m.matmul(&x, n, &mut out);
            for i in 0..n {
                for r in 0..rows {
                    let dense: f32 = (0..cols)
                        .map(|c| x[i * cols + c] * want[r * cols + c])
                        .sum();
                    assert!((out[i * rows + r] - dense).abs() < 1e-3, "{qt:?}");
                }
            }
        }
        assert!(QMatrix::new(QType::Q4_0, 2, 33, vec![0; 36]).is_err());
        assert!(QMatrix::new(QType::Q4_0, 2, 32, vec![0; 35]).is_err());
        assert!(QMatrix::new(QType::Q6K, usize::MAX, 256, vec![]).is_err());
    }
}
