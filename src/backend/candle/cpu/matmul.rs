//! `y = x @ W^T` on the CPU, for decode windows and prompt passes alike.
//!
//! candle's general matmul (the `gemm` crate) is tuned for large matrices:
//! for 2..16 rows it costs about twice a 1-row product, which throws away
//! the point of verifying a window in one pass, and its prompt passes run
//! well below the FMA peak. This kernel instead re-lays each weight matrix
//! once, at load, into *panels*: 16 output rows stored k-major, so that the
//! 16 weights a step needs sit next to each other. A tile of up to 6 rows
//! of `x` times one panel keeps 12 AVX2 accumulators in registers (each x
//! value is broadcast, each weight vector is used by every row of the tile),
//! which is the register-blocked shape of a BLAS micro-kernel: a k-token
//! window streams the weights from memory once, as a 1-token step does, and
//! a prompt pass runs near the FMA peak. AVX-512 (8 rows x 2 panels, 16
//! accumulators of its 32 registers, and software prefetch of the weight
//! stream for the wide tiles) or AVX2 + FMA when the CPU has them (checked
//! at run time), portable code otherwise; panels split across rayon's
//! threads.
//!
//! Weights stay in the dtype the checkpoint stores (bf16, f16 or f32) and are
//! widened to f32 in registers. Widening bf16 / f16 to f32 is exact, so the
//! products are the ones f32 weights would give, bit for bit, while a decode
//! step reads half the bytes.
//!
//! Each output element is one chain of multiply-adds over `k = 0..in` in
//! order, in one register lane, whatever the tile shape: the result for a
//! row of `x` does not depend on how many rows ride along. A window verified
//! in one pass gets bit-identical projections to tokens fed one at a time,
//! and so does a prompt pass.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::{f32_rows, row_tiles, Isa, Out, PANEL};

/// Most rows of `x` in one tile: 6 x 2 accumulators + 2 weight vectors + 1
/// broadcast fill AVX2's 16 registers.
const TILE_ROWS: usize = 6;

/// Panels per task (64 output rows).
const PANELS_PER_TASK: usize = 4;

/// Multiply-adds below which one thread does the whole product.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// A weight matrix `W (out, in)` laid out for the kernel: panel `p` holds
/// rows `16p..16p+16`, k-major, at `[(p * in + k) * 16 + j] = W[16p + j][k]`.
/// Rows past `out` in the last panel are zero. Same dtype, same bytes as `W`
/// (plus the padding).
pub(crate) struct PackedWeight {
    data: Packed,
    out: usize,
    inp: usize,
}

enum Packed {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl PackedWeight {
    /// Packs `w (out, in)`; `None` when its dtype is not f32, bf16 or f16.
    pub(crate) fn new(w: &Tensor) -> candle_core::Result<Option<Self>> {
        let (out, inp) = w.dims2()?;
        let flat = w.flatten_all()?;
        let data = match w.dtype() {
            DType::F32 => Packed::F32(pack(&flat.to_vec1::<f32>()?, out, inp)),
            DType::BF16 => Packed::BF16(pack(&flat.to_vec1::<bf16>()?, out, inp)),
            DType::F16 => Packed::F16(pack(&flat.to_vec1::<f16>()?, out, inp)),
            _ => return Ok(None),
        };
        Ok(Some(Self { data, out, inp }))
    }

    /// `x (n, in)` f32 on the CPU -> `(n, out)` f32.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for PackedWeight {
    fn name(&self) -> &'static str {
        "specdec-packed-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n, k) = f32_rows(self.name(), s, l)?;
        if k != self.inp {
            candle_core::bail!("{}: x is (_, {k}) but W is (_, {})", self.name(), self.inp);
        }
        let y = match &self.data {
            Packed::F32(w) => matmul(x, w, n, k, self.out),
            Packed::BF16(w) => matmul(x, w, n, k, self.out),
            Packed::F16(w) => matmul(x, w, n, k, self.out),
        };
        Ok((CpuStorage::F32(y), Shape::from((n, self.out))))
    }
}

/// `w (out, in)` row-major into panels (see [`PackedWeight`]).
fn pack<E: Copy + Default + Send + Sync>(w: &[E], out: usize, inp: usize) -> Vec<E> {
    let mut dst = vec![E::default(); out.div_ceil(PANEL) * inp * PANEL];
    if inp == 0 {
        return dst;
    }
    dst.par_chunks_mut(inp * PANEL)
        .enumerate()
        .for_each(|(p, panel)| {
            for (j, row) in w[p * PANEL * inp..]
                .chunks_exact(inp)
                .take(PANEL.min(out - p * PANEL))
                .enumerate()
            {
                for (kk, v) in row.iter().enumerate() {
                    panel[kk * PANEL + j] = *v;
                }
            }
        });
    dst
}

/// A weight element the kernel widens to f32 exactly.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Eight elements at `p` widened to f32 lanes.
    ///
    /// # Safety
    /// `p..p+8` must be readable; AVX2 and F16C must be available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen elements at `p` widened to f32 lanes.
    ///
    /// # Safety
    /// `p..p+16` must be readable; AVX-512F must be available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// `x (n, k)` times the packed `W (out, k)`, transposed: `(n, out)`, row-major.
pub(crate) fn matmul<W: Elem>(x: &[f32], wp: &[W], n: usize, k: usize, out: usize) -> Vec<f32> {
    // SAFETY: detected on this CPU.
    unsafe { matmul_on(Isa::detect_f32(), x, wp, n, k, out) }
}

/// [`matmul`] with a chosen kernel.
///
/// # Safety
/// The CPU must have `isa` (as [`Isa::detect_f32`] or a lesser one reports).
unsafe fn matmul_on<W: Elem>(
    isa: Isa,
    x: &[f32],
    wp: &[W],
    n: usize,
    k: usize,
    out: usize,
) -> Vec<f32> {
    let panels = out.div_ceil(PANEL);
    assert!(x.len() == n * k && wp.len() == panels * k * PANEL);
    if n == 0 {
        return Vec::new();
    }
    // Not zeroed: the tasks write every element (all rows of every panel),
    // and zeroing a prompt pass's output first costs as much as a copy.
    let mut y: Vec<f32> = Vec::with_capacity(n * out);
    let dst = Out(y.as_mut_ptr());
    let task = |t: usize| {
        let (p0, p1) = (t * PANELS_PER_TASK, ((t + 1) * PANELS_PER_TASK).min(panels));
        // SAFETY: the lengths were checked above, task `t` writes only the
        // columns of panels p0..p1, and the caller vouches for `isa`.
        unsafe { panels_times_x(isa, x, wp, n, k, out, p0, p1, dst.get()) };
    };
    let tasks = panels.div_ceil(PANELS_PER_TASK);
    if n * k * out >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: every one of the n * out elements was written above.
    unsafe { y.set_len(n * out) };
    y
}

/// Panels `p0..p1` of `wp` times every row of `x`, into columns `16 p0..` of
/// `y (n, out)`.
///
/// # Safety
/// `x` is `(n, k)`, `wp` holds at least `p1` panels of `k`, `y` points at
/// `n * out` writable floats no other thread writes in these columns, and
/// the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn panels_times_x<W: Elem>(
    isa: Isa,
    x: &[f32],
    wp: &[W],
    n: usize,
    k: usize,
    out: usize,
    p0: usize,
    p1: usize,
    y: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::panels_times_x(x.as_ptr(), wp.as_ptr(), n, k, out, p0, p1, y),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::panels_times_x(x.as_ptr(), wp.as_ptr(), n, k, out, p0, p1, y),
        _ => portable(x, wp, n, k, out, p0, p1, y),
    }
}

/// Writes the 16 results of panel `p` for row `r` into `y (n, out)`,
/// dropping the padding columns of the last panel.
///
/// # Safety
/// As [`panels_times_x`].
#[inline(always)]
unsafe fn put(y: *mut f32, out: usize, r: usize, p: usize, v: &[f32; PANEL]) {
    let col = p * PANEL;
    let dst = y.add(r * out + col);
    if col + PANEL <= out {
        // A fixed-size copy: four vector moves, not a call to memmove.
        (dst as *mut [f32; PANEL]).write_unaligned(*v);
    } else {
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, out - col);
    }
}

/// Reference code for CPUs without AVX2: the same order of operations per
/// output (one chain over `k` in order), without fused multiply-adds.
#[allow(clippy::too_many_arguments)]
unsafe fn portable<W: Elem>(
    x: &[f32],
    wp: &[W],
    n: usize,
    k: usize,
    out: usize,
    p0: usize,
    p1: usize,
    y: *mut f32,
) {
    for p in p0..p1 {
        let panel = &wp[p * k * PANEL..(p + 1) * k * PANEL];
        for r in 0..n {
            let mut acc = [0f32; PANEL];
            for (xv, ws) in x[r * k..(r + 1) * k].iter().zip(panel.chunks_exact(PANEL)) {
                for (a, w) in acc.iter_mut().zip(ws) {
                    *a += w.to_f32() * xv;
                }
            }
            put(y, out, r, p, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{row_tiles, Elem, PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// Rows `r..r+R` of `x` (row stride `k`) times panels `p..p+P` of `wp`
    /// (each `k * 16` elements) over all `k`, written into `y (n, out)`:
    /// `R * P * 2` accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<W: Elem, const R: usize, const P: usize>(
        x: *const f32,
        wp: *const W,
        k: usize,
        out: usize,
        r: usize,
        p: usize,
        y: *mut f32,
    ) {
        let (x, w, col) = (x.add(r * k), wp.add(p * k * PANEL), p * PANEL);
        let y = y.add(r * out);
        let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
        let mut wk = w;
        for kk in 0..k {
            let mut wv = [[_mm256_setzero_ps(); 2]; P];
            for (p, v) in wv.iter_mut().enumerate() {
                v[0] = W::load8(wk.add(p * k * PANEL));
                v[1] = W::load8(wk.add(p * k * PANEL + 8));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x.add(r * k + kk));
                for p in 0..P {
                    a[p][0] = _mm256_fmadd_ps(wv[p][0], xv, a[p][0]);
                    a[p][1] = _mm256_fmadd_ps(wv[p][1], xv, a[p][1]);
                }
            }
            wk = wk.add(PANEL);
        }
        // Straight from the registers into y; the last panel's padding
        // columns go through a buffer.
        for (r, row) in acc.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                let c = col + p * PANEL;
                let dst = y.add(r * out + c);
                if c + PANEL <= out {
                    _mm256_storeu_ps(dst, v[0]);
                    _mm256_storeu_ps(dst.add(8), v[1]);
                } else {
                    let mut tmp = [0f32; PANEL];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), v[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, out - c);
                }
            }
        }
    }

    /// See [`super::panels_times_x`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panels_times_x<W: Elem>(
        x: *const f32,
        wp: *const W,
        n: usize,
        k: usize,
        out: usize,
        p0: usize,
        p1: usize,
        y: *mut f32,
    ) {
        let mut p = p0;
        // One or two rows: several panels at once, so that 8 accumulator
        // chains hide the FMA latency.
        if n == 1 {
            while p + 4 <= p1 {
                tile::<W, 1, 4>(x, wp, k, out, 0, p, y);
                p += 4;
            }
        } else if n == 2 {
            while p + 2 <= p1 {
                tile::<W, 2, 2>(x, wp, k, out, 0, p, y);
                p += 2;
            }
        }
        // A panel at a time, every row tile against it while it is in L1/L2.
        while p < p1 {
            for (r, rows) in row_tiles(n, TILE_ROWS) {
                match rows {
                    1 => tile::<W, 1, 1>(x, wp, k, out, r, p, y),
                    2 => tile::<W, 2, 1>(x, wp, k, out, r, p, y),
                    3 => tile::<W, 3, 1>(x, wp, k, out, r, p, y),
                    4 => tile::<W, 4, 1>(x, wp, k, out, r, p, y),
                    5 => tile::<W, 5, 1>(x, wp, k, out, r, p, y),
                    _ => tile::<W, 6, 1>(x, wp, k, out, r, p, y),
                }
            }
            p += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{row_tiles, Elem, PANEL};
    use std::arch::x86_64::*;

    /// Most rows of `x` in one tile: 8 rows x 2 panels = 16 accumulators of
    /// AVX-512's 32 registers, so each weight vector feeds 8 FMAs and each
    /// broadcast 2, enough to run the FMA units near their peak.
    const TILE_ROWS: usize = 8;

    /// How far ahead in a panel to prefetch weights, in elements.
    const PREFETCH: usize = 192 * PANEL;

    /// As the AVX2 tile, one 16-lane register per row and panel: the same
    /// chain of FMAs per output, so the same bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<W: Elem, const R: usize, const P: usize>(
        x: *const f32,
        wp: *const W,
        k: usize,
        out: usize,
        r: usize,
        p: usize,
        y: *mut f32,
    ) {
        let (x, w, col) = (x.add(r * k), wp.add(p * k * PANEL), p * PANEL);
        let y = y.add(r * out);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let mut wk = w;
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                if R >= 3 {
                    // Enough arithmetic per weight that the hardware
                    // prefetcher alone falls behind.
                    // wrapping_add: near the end of the buffer the address
                    // lies past it, which a prefetch may name but `add` may not.
                    let ahead = wk.wrapping_add(p * k * PANEL + PREFETCH);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                *v = W::load16(wk.add(p * k * PANEL));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * k + kk));
                for p in 0..P {
                    a[p] = _mm512_fmadd_ps(wv[p], xv, a[p]);
                }
            }
            wk = wk.add(PANEL);
        }
        // Straight from the registers into y; the last panel's padding
        // columns are masked off.
        for (r, row) in acc.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                let c = col + p * PANEL;
                let dst = y.add(r * out + c);
                if c + PANEL <= out {
                    _mm512_storeu_ps(dst, *v);
                } else {
                    _mm512_mask_storeu_ps(dst, ((1u32 << (out - c)) - 1) as __mmask16, *v);
                }
            }
        }
    }

    /// Every row tile against panels `p..p+P`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<W: Elem, const P: usize>(
        x: *const f32,
        wp: *const W,
        n: usize,
        k: usize,
        out: usize,
        p: usize,
        y: *mut f32,
    ) {
        for (r, rows) in row_tiles(n, TILE_ROWS) {
            match rows {
                1 => tile::<W, 1, P>(x, wp, k, out, r, p, y),
                2 => tile::<W, 2, P>(x, wp, k, out, r, p, y),
                3 => tile::<W, 3, P>(x, wp, k, out, r, p, y),
                4 => tile::<W, 4, P>(x, wp, k, out, r, p, y),
                5 => tile::<W, 5, P>(x, wp, k, out, r, p, y),
                6 => tile::<W, 6, P>(x, wp, k, out, r, p, y),
                7 => tile::<W, 7, P>(x, wp, k, out, r, p, y),
                _ => tile::<W, 8, P>(x, wp, k, out, r, p, y),
            }
        }
    }

    /// See [`super::panels_times_x`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panels_times_x<W: Elem>(
        x: *const f32,
        wp: *const W,
        n: usize,
        k: usize,
        out: usize,
        p0: usize,
        p1: usize,
        y: *mut f32,
    ) {
        let mut p = p0;
        // One or two rows: four panels at once, so that 4 or 8 accumulator
        // chains hide the FMA latency.
        if n <= 2 {
            while p + 4 <= p1 {
                if n == 1 {
                    tile::<W, 1, 4>(x, wp, k, out, 0, p, y);
                } else {
                    tile::<W, 2, 4>(x, wp, k, out, 0, p, y);
                }
                p += 4;
            }
        }
        // Two panels at a time, every row tile against them while they are
        // in L1/L2.
        while p + 2 <= p1 {
            rows::<W, 2>(x, wp, n, k, out, p, y);
            p += 2;
        }
        if p < p1 {
            rows::<W, 1>(x, wp, n, k, out, p, y);
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

    /// The ISAs this CPU can run, best first.
    fn isas() -> Vec<Isa> {
        let all = [Isa::Avx512, Isa::Avx2, Isa::Portable];
        let best = all.iter().position(|&i| i == Isa::detect_f32()).unwrap();
        all[best..].to_vec()
    }

    fn product<W: Elem + Default>(x: &[f32], w: &[W], n: usize, k: usize, out: usize) -> Vec<f32> {
        matmul(x, &pack(w, out, k), n, k, out)
    }

    fn product_on(isa: Isa, x: &[f32], w: &[f32], n: usize, k: usize, out: usize) -> Vec<f32> {
        assert!(isas().contains(&isa));
        // SAFETY: `isas()` lists only what this CPU has.
        unsafe { matmul_on(isa, x, &pack(w, out, k), n, k, out) }
    }

    fn data(len: usize, a: usize, b: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % b) as f32 - (b / 2) as f32) / b as f32)
            .collect()
    }

    #[test]
    fn matches_a_naive_product_on_odd_shapes() {
        for (n, k, out) in [
            (1, 8, 4),
            (3, 13, 7),
            (5, 384, 130),
            (7, 5, 64),
            (16, 100, 515),
            (2, 7, 1),
            (2, 33, 70),
            (1, 50, 100),
            (40, 64, 33),
            (0, 8, 16),
            (0, 8, 100),
            (3, 0, 5),
        ] {
            let x = data(n * k, 37, 101);
            let w = data(out * k, 53, 97);
            let want = naive(&x, &w, n, k, out);
            for isa in isas() {
                let got = product_on(isa, &x, &w, n, k, out);
                for (g, v) in got.iter().zip(&want) {
                    assert!(
                        (g - v).abs() < 1e-4 * (1.0 + v.abs()),
                        "{isa:?}: n={n} k={k} out={out}: {g} vs {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_and_f16_weights_give_the_f32_product_of_their_values() {
        let (n, k, out) = (3, 40, 19);
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let wh32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        assert_eq!(product(&x, &wb, n, k, out), product(&x, &wb32, n, k, out));
        assert_eq!(product(&x, &wh, n, k, out), product(&x, &wh32, n, k, out));
    }

    #[test]
    fn each_row_is_independent_of_the_others() {
        // The product for row j must not depend on how many rows ride along:
        // that is what keeps batched verification (and prompt passes) equal
        // to decoding a token at a time. Every tile shape is covered.
        let (k, out) = (96, 200);
        let rows = 40;
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let wb = pack(
            &w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(),
            out,
            k,
        );
        for isa in isas() {
            let one: Vec<Vec<f32>> = (0..rows)
                // SAFETY: `isas()` lists only what this CPU has.
                .map(|j| unsafe { matmul_on(isa, &x[j * k..(j + 1) * k], &wb, 1, k, out) })
                .collect();
            for n in 1..=rows {
                // SAFETY: as above.
                let all = unsafe { matmul_on(isa, &x[..n * k], &wb, n, k, out) };
                for (j, want) in one.iter().take(n).enumerate() {
                    assert_eq!(
                        &all[j * out..(j + 1) * out],
                        &want[..],
                        "{isa:?}: row {j} of {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn avx512_and_avx2_give_the_same_bits() {
        // The same chain of FMAs per output, 16 lanes or 8 at a time.
        let have = isas();
        if !(have.contains(&Isa::Avx512) && have.contains(&Isa::Avx2)) {
            eprintln!("SKIP: this CPU lacks AVX-512 or AVX2");
            return;
        }
        let (k, out) = (300, 100);
        for n in [1, 2, 3, 7, 8, 9, 20] {
            let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..out * k).map(|i| (i as f32 * 0.11).cos()).collect();
            assert_eq!(
                product_on(Isa::Avx512, &x, &w, n, k, out),
                product_on(Isa::Avx2, &x, &w, n, k, out),
                "n={n}"
            );
        }
    }
}
