//! ggml's quantized block formats as a GGUF file stores them: which ones
//! we read ([`QType`]), their block sizes and byte layouts, and what a
//! block's bytes mean ([`decode_block`]: quants, scales and offsets, as
//! ggml's `dequantize_row_*` reads them). The kernels that compute on
//! blocks (re-laid out for them) are in `cpu::quant`; reading the blocks
//! out of a file is `load::gguf`'s.

use half::f16;

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
}

/// One block of a file decoded: `q` `[block_elems]` unsigned quants, and per
/// sub-block a scale and an offset (0 where the format has none).
pub(super) fn decode_block(
    qtype: QType,
    b: &[u8],
    q: &mut [u8],
    scale: &mut [f32],
    offset: &mut [f32],
) {
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
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
