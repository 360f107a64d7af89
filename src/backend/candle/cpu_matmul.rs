//! `y = x @ W^T` on the CPU for the few rows a decode step has.
//!
//! candle's general matmul (the `gemm` crate) is tuned for large matrices:
//! for 2..16 rows it costs about twice a 1-row product, which throws away
//! the point of verifying a window in one pass. This kernel walks `W` once,
//! a block of rows at a time, and multiplies each block by every row of `x`
//! while it sits in L1, so a k-token pass reads the weights once, like a
//! 1-token pass. AVX2 + FMA when the CPU has them (checked at run time),
//! portable code otherwise; output rows split across rayon's threads.
//!
//! Weights stay in the dtype the checkpoint stores (bf16, f16 or f32) and are
//! widened to f32 in registers. Widening bf16 / f16 to f32 is exact, so the
//! products are the ones f32 weights would give, bit for bit, while a decode
//! step reads half the bytes.
//!
//! Each output element is one dot product whose order of operations does not
//! depend on how many rows of `x` there are: a window verified in one pass
//! gets the same projections as tokens fed one at a time.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use half::{bf16, f16};
use rayon::prelude::*;

/// Multiply-adds below which one thread does the whole product.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Rows of `W` per task.
const ROWS_PER_TASK: usize = 64;

/// The op: `x (n, in)` f32 and `W (out, in)` f32 / bf16 / f16, both
/// contiguous, give `(n, out)` f32.
pub(crate) struct MatVecT;

impl CustomOp2 for MatVecT {
    fn name(&self) -> &'static str {
        "specdec-matvec-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xs) = s1 else {
            candle_core::bail!("{}: x must be f32", self.name());
        };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: contiguous inputs only", self.name());
        };
        let (n, k) = l1.shape().dims2()?;
        let (out, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("{}: x is (_, {k}) but W is (_, {k2})", self.name());
        }
        let x = &xs[x0..x1];
        let y = match s2 {
            CpuStorage::F32(ws) => matmul_t(x, &ws[w0..w1], n, k, out),
            CpuStorage::BF16(ws) => matmul_t(x, &ws[w0..w1], n, k, out),
            CpuStorage::F16(ws) => matmul_t(x, &ws[w0..w1], n, k, out),
            _ => candle_core::bail!("{}: W must be f32, bf16 or f16", self.name()),
        };
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }
}

/// A weight element the kernel widens to f32 exactly.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Eight elements at `p` widened to f32 lanes.
    ///
    /// # Safety
    /// `p..p+8` must be readable; AVX2 must be available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: widen to 32 bits and shift up.
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
}

impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// `x (n, k)` times `w (out, k)` transposed: `(n, out)`, row-major.
pub(crate) fn matmul_t<W: Elem>(x: &[f32], w: &[W], n: usize, k: usize, out: usize) -> Vec<f32> {
    // Computed as (out, n) so each task writes one contiguous piece.
    let mut yt = vec![0f32; out * n];
    let task = |(t, chunk): (usize, &mut [f32])| {
        let r0 = t * ROWS_PER_TASK;
        let rows = chunk.len() / n;
        rows_times_x(&w[r0 * k..(r0 + rows) * k], x, n, k, chunk);
    };
    if out * k * n >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        yt.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(task);
    } else {
        yt.chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(task);
    }
    if n == 1 {
        return yt;
    }
    let mut y = vec![0f32; n * out];
    for (o, col) in yt.chunks_exact(n).enumerate() {
        for (j, v) in col.iter().enumerate() {
            y[j * out + o] = *v;
        }
    }
    y
}

/// `w (rows, k)` times each of the `n` rows of `x`: `yt (rows, n)`.
fn rows_times_x<W: Elem>(w: &[W], x: &[f32], n: usize, k: usize, yt: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just detected.
            unsafe { avx2::rows_times_x(w, x, n, k, yt) };
            return;
        }
    }
    portable(w, x, n, k, yt);
}

fn portable<W: Elem>(w: &[W], x: &[f32], n: usize, k: usize, yt: &mut [f32]) {
    for (r, wr) in w.chunks_exact(k).enumerate() {
        for j in 0..n {
            let xr = &x[j * k..(j + 1) * k];
            let mut acc = [0f32; 8];
            let mut wc = wr.chunks_exact(8);
            let mut xc = xr.chunks_exact(8);
            for (a, b) in (&mut wc).zip(&mut xc) {
                for l in 0..8 {
                    acc[l] += a[l].to_f32() * b[l];
                }
            }
            let tail: f32 = wc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a.to_f32() * b)
                .sum();
            yt[r * n + j] = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Elem;
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `R` rows of `w` times `J` rows of `x` over `len` columns, 8 lanes at a
    /// time; rows are `stride` elements apart.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<W: Elem, const R: usize, const J: usize>(
        w: *const W,
        x: *const f32,
        len: usize,
        stride: usize,
    ) -> [[f32; J]; R] {
        let mut acc = [[_mm256_setzero_ps(); J]; R];
        let body = len / 8 * 8;
        let mut i = 0;
        while i < body {
            let mut xv = [_mm256_setzero_ps(); J];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(j * stride + i));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = W::load8(w.add(r * stride + i));
                for j in 0..J {
                    a[j] = _mm256_fmadd_ps(wv, xv[j], a[j]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; J]; R];
        for r in 0..R {
            for j in 0..J {
                let mut s = hsum(acc[r][j]);
                for t in body..len {
                    s += (*w.add(r * stride + t)).to_f32() * *x.add(j * stride + t);
                }
                out[r][j] = s;
            }
        }
        out
    }

    /// Puts a block's results at rows `r..`, columns `j..` of `yt (rows, n)`,
    /// or adds them there (a later slice of the columns).
    #[inline]
    fn put<const R: usize, const J: usize>(
        yt: &mut [f32],
        n: usize,
        r: usize,
        j: usize,
        b: &[[f32; J]; R],
        add: bool,
    ) {
        for (dr, row) in b.iter().enumerate() {
            let dst = &mut yt[(r + dr) * n + j..(r + dr) * n + j + J];
            if add {
                dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            } else {
                dst.copy_from_slice(row);
            }
        }
    }

    /// Rows of x beyond which the columns are cut into slices (a prompt pass).
    const SINGLE_PASS_ROWS: usize = 16;
    /// Columns per slice: a slice of every x row stays in L2.
    const SLICE: usize = 512;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_times_x<W: Elem>(
        w: &[W],
        x: &[f32],
        n: usize,
        k: usize,
        yt: &mut [f32],
    ) {
        debug_assert!(x.len() == n * k && yt.len() == w.len() / k * n);
        if n <= SINGLE_PASS_ROWS {
            // Decode windows: one pass, so each output's order of operations
            // does not depend on n.
            pass(w, x, n, k, 0, k, yt, false);
        } else {
            // Prompt passes: slices of the columns, so the x rows are read
            // from L2 rather than memory for every block of W.
            for (s, start) in (0..k).step_by(SLICE).enumerate() {
                pass(w, x, n, k, start, SLICE.min(k - start), yt, s > 0);
            }
        }
    }

    /// Columns `start..start + len` of `w (rows, k)` times those of `x (n, k)`,
    /// put (or added) into `yt (rows, n)`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pass<W: Elem>(
        w: &[W],
        x: &[f32],
        n: usize,
        k: usize,
        start: usize,
        len: usize,
        yt: &mut [f32],
        add: bool,
    ) {
        let rows = w.len() / k;
        let (wp, xp) = (w.as_ptr().add(start), x.as_ptr().add(start));
        let mut r = 0;
        if n == 1 {
            // One row of x: eight independent FMA chains hide the FMA latency.
            while r + 8 <= rows {
                put(
                    yt,
                    1,
                    r,
                    0,
                    &block::<W, 8, 1>(wp.add(r * k), xp, len, k),
                    add,
                );
                r += 8;
            }
        }
        // Several rows of x: two rows of W against up to four rows of x at a
        // time (8 accumulators + 4 x vectors fit AVX2's 16 registers), so W
        // streams through once for a window of up to 4 and stays in L1 for
        // the next group of x rows.
        while r + 2 <= rows {
            let mut j = 0;
            while j + 4 <= n {
                put(
                    yt,
                    n,
                    r,
                    j,
                    &block::<W, 2, 4>(wp.add(r * k), xp.add(j * k), len, k),
                    add,
                );
                j += 4;
            }
            let (wr, xr) = (wp.add(r * k), xp.add(j * k));
            match n - j {
                3 => put(yt, n, r, j, &block::<W, 2, 3>(wr, xr, len, k), add),
                2 => put(yt, n, r, j, &block::<W, 2, 2>(wr, xr, len, k), add),
                1 => put(yt, n, r, j, &block::<W, 2, 1>(wr, xr, len, k), add),
                _ => {}
            }
            r += 2;
        }
        while r < rows {
            for j in 0..n {
                put(
                    yt,
                    n,
                    r,
                    j,
                    &block::<W, 1, 1>(wp.add(r * k), xp.add(j * k), len, k),
                    add,
                );
            }
            r += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], n: usize, k: usize, out: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * out];
        for j in 0..n {
            for o in 0..out {
                y[j * out + o] = (0..k)
                    .map(|i| x[j * k + i] as f64 * w[o * k + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn matches_a_naive_product_on_odd_shapes() {
        for (n, k, out) in [
            (1, 8, 4),
            (3, 13, 7),
            (5, 384, 130),
            (16, 100, 515),
            (2, 7, 1),
        ] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..out * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let got = matmul_t(&x, &w, n, k, out);
            let want = naive(&x, &w, n, k, out);
            let mut port = vec![0f32; out * n];
            portable(&w, &x, n, k, &mut port);
            for j in 0..n {
                for o in 0..out {
                    assert!(
                        (got[j * out + o] - want[j * out + o]).abs()
                            < 1e-4 * (1.0 + want[j * out + o].abs()),
                        "n={n} k={k} out={out}"
                    );
                    assert!(
                        (port[o * n + j] - want[j * out + o]).abs()
                            < 1e-4 * (1.0 + want[j * out + o].abs())
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_and_f16_weights_give_the_f32_product_of_their_values() {
        let (n, k, out) = (3, 40, 9);
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let wh32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        assert_eq!(matmul_t(&x, &wb, n, k, out), matmul_t(&x, &wb32, n, k, out));
        assert_eq!(matmul_t(&x, &wh, n, k, out), matmul_t(&x, &wh32, n, k, out));
    }

    #[test]
    fn each_row_is_independent_of_the_others() {
        // The product for row j must not depend on how many rows ride along:
        // that is what keeps batched verification equal to sequential decoding.
        let (k, out) = (96, 40);
        let x: Vec<f32> = (0..4 * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let all = matmul_t(&x, &w, 4, k, out);
        for j in 0..4 {
            let one = matmul_t(&x[j * k..(j + 1) * k], &w, 1, k, out);
            assert_eq!(&all[j * out..(j + 1) * out], &one[..]);
        }
    }
}
