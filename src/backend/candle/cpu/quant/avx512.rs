//! The quantized product's AVX-512 kernel (F, BW, VNNI): `vpdpbusd` on a
//! panel's 16 rows at once. The same bits as the AVX2 and portable code
//! (see `super`'s module docs); the repacked layout and the activation
//! quantization are `super`'s.

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
