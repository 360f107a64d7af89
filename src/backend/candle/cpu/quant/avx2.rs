//! The quantized product's AVX2 kernel (with FMA and F16C):
//! `vpmaddubsw` / `vpmaddwd` on half a panel per register. The same bits
//! as the AVX-512 and portable code (see `super`'s module docs).

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
