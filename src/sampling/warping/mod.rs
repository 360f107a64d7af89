//! Warping: a logits row and [`SamplingParams`] to the distribution tokens
//! are drawn from.
//!
//! What [`warp()`] computes, exactly (the same function for a draft's `q`,
//! the target's `p` and plain sampling, so the same bits on every x86-64,
//! with AVX2 or without):
//!
//! 1. `max`: the largest logit of a token not suppressed (`-inf` logits and
//!    suppressed ids are dead: probability 0).
//! 2. The *order*: live tokens by descending logit, the lower id first among
//!    equal logits. Top-k keeps its first `k`.
//! 3. Top-p's cut is decided on single-precision weights: with `d = (x -
//!    max) * (8 log2(e) / T)` in `f32` (eighths of an octave below the
//!    top), `w = 2^(d / 8)` by straight-line `f32` arithmetic (`weight32`:
//!    `e^((x - max) / T)` to a relative error below `3e-7 + 7e-8 n` at `n`
//!    nats below the top, the second term from rounding `d`; 0 more than
//!    87.4 nats below). It keeps the shortest prefix of the order (of
//!    top-k's tokens when both are set) whose weights, summed in `f64` in
//!    that order, reach `top_p` times the total, or everything if rounding
//!    keeps the sum short of it. The total, without top-k: token `i` in
//!    lane `i % 8`; a lane sums its weights of each block of 128 ids in
//!    `f32` (within 1e-6 relative), then those in `f64`; the eight lanes
//!    are summed in a fixed order. With top-k it is the prefix sum over the
//!    `k` tokens. `top_p == 1` cuts nothing.
//! 4. The kept tokens' weights in `f64`, `exp((x - max) * (1 / T))` to
//!    ~1e-15 relative (the largest is exactly 1); min-p drops those below
//!    `min_p`; the rest are normalized. With neither top-k nor top-p
//!    below 1 every live token is kept and the result is dense; otherwise
//!    it is sparse over the kept ids (see [`Distribution`]).
//!
//! Why it is fast at 32k-152k logits: one pass finds `max`, one more
//! computes every weight in `f32` eight at a time and collects the tokens
//! within 8.3 nats of the top; the order is then sorted only as far as the
//! cut, in buckets of about half a nat, and only the kept tokens get an
//! `f64` weight. Tokens further down are collected (to 25 and 88 nats, then
//! the rest) only when the cut lies below them.

use super::greedy::{check_finite, max_and_bad};
use super::{Distribution, SamplingParams};
use crate::error::{Error, Result};

/// The `suppress`ed ids that fall in a row of `len`, ascending, once each.
fn suppressed_in(suppress: &[u32], len: usize) -> Vec<u32> {
    let mut sup: Vec<u32> = suppress
        .iter()
        .copied()
        .filter(|&s| (s as usize) < len)
        .collect();
    sup.sort_unstable();
    sup.dedup();
    sup
}

/// Turns a logits row (`[vocab]`) into the distribution tokens are drawn
/// from: `suppress`ed ids get probability 0, then temperature, top-k, top-p
/// and min-p as in [`SamplingParams`], computed as the [module
/// docs](self) say. Ties at a top-k / top-p cut are broken by the lower id,
/// so the result is a function of the row alone.
///
/// `params` must not be greedy (use [`argmax`](super::argmax)); `position` only
/// name the row in errors. Errors on settings that
/// [`SamplingParams::validate`] refuses, on a NaN or `+inf` logit, and when
/// no id is left to choose.
pub fn warp(
    row: &[f32],
    params: &SamplingParams,
    suppress: &[u32],
    position: usize,
) -> Result<Distribution> {
    // Out-of-range settings (an infinite temperature, a NaN min-p) would
    // otherwise give different rows on CPUs with and without AVX2.
    params.validate()?;
    let (top, bad) = max_and_bad(row);
    if bad {
        check_finite(row, position)?;
    }
    let empty = || Error::EmptyDistribution {
        role: None,
        position,
    };
    let sup = suppressed_in(suppress, row.len());
    let max = live_max(row, top, &sup);
    if max == f32::NEG_INFINITY {
        return Err(empty());
    }
    let t = params.temperature;
    let ctx = Row {
        row,
        max,
        // A temperature so small that the scale overflows f32 scales by
        // the largest finite value instead (the top token's 0 stays 0).
        scale: (WEIGHT32_8_LOG2E / t).min(f32::MAX),
        inv_t: 1.0 / t as f64,
        sup: &sup,
    };
    let top_p = params.top_p.filter(|&p| p < 1.0).map(f64::from);
    let kept = match (params.top_k, top_p) {
        (None, None) => return dense(&ctx, params.min_p).ok_or_else(empty),
        (None, Some(top_p)) => {
            let mut near = Vec::with_capacity(1024);
            let total = scan(&ctx, FLOORS[0], f32::INFINITY, true, &mut near);
            let target = top_p * total;
            let mut kept = Vec::with_capacity(256);
            let mut acc = 0.0;
            walk(&ctx, near, |i, d| {
                kept.push(i);
                acc += weight32(d) as f64;
                acc >= target
            });
            kept
        }
        (Some(k), top_p) => {
            let mut near = Vec::with_capacity(1024);
            scan(&ctx, FLOORS[0], f32::INFINITY, false, &mut near);
            let mut kept = Vec::with_capacity(k.min(1024));
            walk(&ctx, near, |i, _| {
                kept.push(i);
                kept.len() >= k
            });
            if let Some(top_p) = top_p {
                let w: Vec<f64> = kept
                    .iter()
                    .map(|&i| weight32(ctx.d(row[i as usize])) as f64)
                    .collect();
                let target = top_p * w.iter().sum::<f64>();
                let mut acc = 0.0;
                if let Some(n) = w.iter().position(|&w| {
                    acc += w;
                    acc >= target
                }) {
                    kept.truncate(n + 1);
                }
            }
            kept
        }
    };
    sparse(&ctx, kept, params.min_p).ok_or_else(empty)
}

/// A row being warped: the logits, its live maximum and the temperature.
struct Row<'a> {
    row: &'a [f32],
    /// The largest live logit (finite).
    max: f32,
    /// `8 log2(e) / T` in `f32`, for the single-precision weights.
    scale: f32,
    /// `1 / T` in `f64`, for the kept tokens' weights.
    inv_t: f64,
    /// Suppressed ids inside the row, ascending, no repeats.
    sup: &'a [u32],
}

impl Row<'_> {
    /// Eighths of an octave below the top after temperature, in `f32`:
    /// `(x - max) * (8 log2(e) / T)`, monotone in `x`. The argument of
    /// [`weight32`].
    #[inline(always)]
    fn d(&self, x: f32) -> f32 {
        (x - self.max) * self.scale
    }

    fn suppressed(&self, i: usize) -> bool {
        !self.sup.is_empty() && self.sup.binary_search(&(i as u32)).is_ok()
    }
}

/// The largest logit of a live token, given `top`, the row's largest: only
/// when a suppressed id holds `top` are the stretches between suppressed
/// ids searched again.
fn live_max(row: &[f32], top: f32, sup: &[u32]) -> f32 {
    if !sup.iter().any(|&s| row[s as usize] == top) {
        return top;
    }
    let mut max = f32::NEG_INFINITY;
    let mut from = 0;
    for &s in sup.iter().chain(std::iter::once(&(row.len() as u32))) {
        let m = max_and_bad(&row[from..s as usize]).0;
        max = if m > max { m } else { max };
        from = s as usize + 1;
    }
    max
}

/// Every live token kept (neither top-k nor a top-p below 1): the dense
/// distribution of the `f64` weights, with min-p applied.
fn dense(ctx: &Row, min_p: Option<f32>) -> Option<Distribution> {
    let mut w = weights_f64(ctx.row, ctx.max, ctx.inv_t);
    for &s in ctx.sup {
        w[s as usize] = 0.0;
    }
    if let Some(min_p) = min_p {
        // The largest weight is exp(0) = 1, so the cut is `min_p` itself.
        let cut = min_p as f64;
        w.iter_mut().filter(|w| **w < cut).for_each(|w| *w = 0.0);
    }
    Distribution::from_weights(w)
}

/// The sparse distribution over `kept` (live ids, any order, no repeats):
/// their `f64` weights, min-p, normalized.
fn sparse(ctx: &Row, mut kept: Vec<u32>, min_p: Option<f32>) -> Option<Distribution> {
    kept.sort_unstable();
    let x: Vec<f32> = kept.iter().map(|&i| ctx.row[i as usize]).collect();
    let mut w = weights_f64(&x, ctx.max, ctx.inv_t);
    let cut = min_p.map_or(0.0, f64::from);
    // Only ids with mass are stored (min-p's cut, or beyond f64's range).
    let mut n = 0;
    for j in 0..kept.len() {
        if w[j] > 0.0 && w[j] >= cut {
            (kept[n], w[n]) = (kept[j], w[j]);
            n += 1;
        }
    }
    kept.truncate(n);
    w.truncate(n);
    Distribution::from_sparse_weights(ctx.row.len(), kept, w)
}

/// `exp((x - max) * inv_t)` in `f64` for each of `xs`, vectorized (AVX2
/// where the CPU has it; the same operations, so the same bits, either way).
fn weights_f64(xs: &[f32], max: f32, inv_t: f64) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { weights_f64_avx2(xs, max, inv_t) };
    }
    weights_f64_any(xs, max, inv_t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weights_f64_avx2(xs: &[f32], max: f32, inv_t: f64) -> Vec<f64> {
    weights_f64_any(xs, max, inv_t)
}

#[inline(always)]
fn weights_f64_any(xs: &[f32], max: f32, inv_t: f64) -> Vec<f64> {
    let max = max as f64;
    // Written into a zeroed vector (not collected from a map) so that the
    // loop vectorizes.
    let mut w = vec![0.0; xs.len()];
    for (w, &x) in w.iter_mut().zip(xs) {
        *w = exp_f64((x as f64 - max) * inv_t);
    }
    w
}

/// Where the order is cut into levels, in `d` (eighths of an octave below
/// the top; 11.54 to the nat): level 0 holds `d >= -96` (8.3 nats), level
/// 1 `-288 <= d < -96` (25 nats), level 2 down to -1016 (88 nats, where
/// [`weight32`] is 0); the last holds every other live token. A level is
/// collected only when the cut lies below the ones before.
const FLOORS: [f32; 4] = [-96.0, -288.0, -1016.0, f32::NEG_INFINITY];

/// Buckets a finite level is split into, by `d`, each sorted on its own.
const BUCKETS: usize = 16;

/// Visits the live tokens of `ctx` in the order (descending logit, lower
/// id first among ties) until `visit(id, d)` returns true. `near`: the
/// live ids with `d >= FLOORS[0]`, ascending (what [`scan`] collects).
fn walk(ctx: &Row, near: Vec<u32>, mut visit: impl FnMut(u32, f32) -> bool) {
    let row = ctx.row;
    // Descending logit, then ascending id. Live logits are finite and not
    // NaN, and -0.0 ties with 0.0 as the weights do.
    let order = |a: &u32, b: &u32| {
        let (xa, xb) = (row[*a as usize], row[*b as usize]);
        if xa > xb {
            std::cmp::Ordering::Less
        } else if xa < xb {
            std::cmp::Ordering::Greater
        } else {
            a.cmp(b)
        }
    };
    let mut level = near;
    let mut hi = f32::INFINITY;
    let mut start = [0usize; BUCKETS + 1];
    let mut sorted: Vec<u32> = Vec::new();
    for (n, &lo) in FLOORS.iter().enumerate() {
        if n > 0 {
            level.clear();
            scan(ctx, lo, hi, false, &mut level);
        }
        // Counting sort into buckets by `d` (monotone in the logit, so
        // bucket by bucket is the order), then each bucket sorted.
        let top = if n == 0 { 0.0 } else { hi };
        let width = (top - lo) / BUCKETS as f32;
        let bucket = |i: u32| -> usize {
            if lo == f32::NEG_INFINITY {
                0
            } else {
                (((top - ctx.d(row[i as usize])) / width) as usize).min(BUCKETS - 1)
            }
        };
        start.fill(0);
        for &i in &level {
            start[bucket(i) + 1] += 1;
        }
        for b in 0..BUCKETS {
            start[b + 1] += start[b];
        }
        sorted.clear();
        sorted.resize(level.len(), 0);
        let mut fill = start;
        for &i in &level {
            let b = bucket(i);
            sorted[fill[b]] = i;
            fill[b] += 1;
        }
        for b in 0..BUCKETS {
            let members = &mut sorted[start[b]..start[b + 1]];
            members.sort_unstable_by(order);
            for &i in members.iter() {
                if visit(i, ctx.d(row[i as usize])) {
                    return;
                }
            }
        }
        hi = lo;
    }
}

/// Chunks (of 8 tokens) whose weights a lane sums in `f32` before adding
/// them to its `f64` sum: 128 tokens, so the `f32` sum of at most 16
/// weights (each at most 1) is within 1e-6 relative.
const BLOCK_CHUNKS: usize = 16;

/// The running total of [`scan`]: token `i` goes to lane `i % 8`; a lane
/// sums its weights of one block of [`BLOCK_CHUNKS`] chunks in `f32`, in id
/// order from 0, then adds that to its `f64` sum.
#[derive(Default)]
struct Sums {
    wide: [f64; 8],
    narrow: [f32; 8],
}

impl Sums {
    /// After chunk `c`: the block's `f32` sums go into the `f64` ones when
    /// `c` ends a block.
    #[inline(always)]
    fn end_chunk(&mut self, c: usize) {
        if (c + 1).is_multiple_of(BLOCK_CHUNKS) {
            self.flush();
        }
    }

    #[inline(always)]
    fn flush(&mut self) {
        for (w, n) in self.wide.iter_mut().zip(&mut self.narrow) {
            *w += *n as f64;
            *n = 0.0;
        }
    }

    /// The lanes summed in a fixed order.
    fn total(mut self) -> f64 {
        self.flush();
        let l = self.wide;
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    }
}

/// One pass over the row: the live ids with `lo <= d < hi` are appended to
/// `out` in ascending order, and with `mass` the total of every live
/// token's single-precision weight is returned, summed as [`Sums`] says (0
/// without `mass`). AVX2 where the CPU has it; the same operations per
/// token either way, so the same bits.
fn scan(ctx: &Row, lo: f32, hi: f32, mass: bool, out: &mut Vec<u32>) -> f64 {
    let mut lanes = Sums::default();
    let full = ctx.row.len() / 8;
    let mut chunk = 0;
    let mut next_sup = ctx.sup.iter().map(|&s| s as usize / 8).peekable();
    while chunk < full {
        // Chunks without a suppressed id run eight wide; one with one runs
        // token by token.
        let stop = next_sup.peek().map_or(full, |&c| c.min(full));
        if stop > chunk {
            chunks(ctx, chunk, stop, lo, hi, mass, &mut lanes, out);
            chunk = stop;
        } else {
            one_chunk(ctx, chunk, lo, hi, mass, &mut lanes, out);
            while next_sup.next_if(|&c| c <= chunk).is_some() {}
            chunk += 1;
        }
    }
    one_chunk(ctx, full, lo, hi, mass, &mut lanes, out);
    lanes.total()
}

/// Chunk `c` (tokens `8c..8c+8`, or fewer at the end) token by token,
/// skipping suppressed ids.
fn one_chunk(
    ctx: &Row,
    c: usize,
    lo: f32,
    hi: f32,
    mass: bool,
    lanes: &mut Sums,
    out: &mut Vec<u32>,
) {
    let end = (c * 8 + 8).min(ctx.row.len());
    for i in c * 8..end {
        if ctx.suppressed(i) {
            continue;
        }
        let x = ctx.row[i];
        let d = ctx.d(x);
        if mass {
            lanes.narrow[i % 8] += weight32(d);
        }
        if x != f32::NEG_INFINITY && d >= lo && d < hi {
            out.push(i as u32);
        }
    }
    lanes.end_chunk(c);
}

/// Chunks `from..to`, none holding a suppressed id.
#[allow(clippy::too_many_arguments)]
fn chunks(
    ctx: &Row,
    from: usize,
    to: usize,
    lo: f32,
    hi: f32,
    mass: bool,
    lanes: &mut Sums,
    out: &mut Vec<u32>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above; `to * 8 <= len`.
        unsafe {
            let (row, max, scale) = (ctx.row, ctx.max, ctx.scale);
            let top = hi == f32::INFINITY && lo > f32::NEG_INFINITY;
            match (mass, top) {
                (true, true) => {
                    avx2::chunks::<true, true>(row, max, scale, from, to, lo, hi, lanes, out)
                }
                (true, false) => {
                    avx2::chunks::<true, false>(row, max, scale, from, to, lo, hi, lanes, out)
                }
                (false, true) => {
                    avx2::chunks::<false, true>(row, max, scale, from, to, lo, hi, lanes, out)
                }
                (false, false) => {
                    avx2::chunks::<false, false>(row, max, scale, from, to, lo, hi, lanes, out)
                }
            }
        }
        return;
    }
    for c in from..to {
        one_chunk(ctx, c, lo, hi, mass, lanes, out);
    }
}

/// `2^(d/8)` for `d <= 0` in `f32` (`e^n` for `d = n 8 log2(e)`), in
/// straight-line arithmetic (no fused multiply-adds, so the same bits in
/// every build and in the AVX2 kernel): `d` rounded to the integer `k`
/// plus `g`, `|g| <= 1/2`, as `2^(k >> 3) * 2^((k & 7) / 8) * 2^(g / 8)`,
/// the middle factor from an eight-entry table and the last by its Taylor
/// series to degree 4 (remainder ~1.3e-9): within 3e-7 relative. 0 for `d
/// < -1008.5` (where `k >> 3` is -127; `d` is clamped at -1016 first, so
/// `-inf` gives 0 too).
#[inline(always)]
fn weight32(d: f32) -> f32 {
    let y = if d < -1016.0 { -1016.0 } else { d };
    let shifted = y + WEIGHT32_ROUND;
    let k = shifted - WEIGHT32_ROUND;
    let g = y - k;
    let c = WEIGHT32_POLY;
    let g2 = g * g;
    let p = (c[0] + c[1] * g) + g2 * ((c[2] + c[3] * g) + g2 * c[4]);
    // k sits in the low mantissa bits of `shifted`; 2^(k >> 3) is
    // (k >> 3) + 127 in the exponent field (0, the float 0, at -127).
    let k_bits = shifted.to_bits().wrapping_sub(WEIGHT32_ROUND.to_bits());
    let two_m = f32::from_bits((((k_bits as i32) >> 3) + 127).wrapping_shl(23) as u32);
    (p * WEIGHT32_TABLE[(k_bits & 7) as usize]) * two_m
}

/// `8 log2 e`.
const WEIGHT32_8_LOG2E: f32 = 8.0 * std::f32::consts::LOG2_E;
/// 1.5 * 2^23: adding it rounds an `f32` of magnitude below 2^22 to an integer.
const WEIGHT32_ROUND: f32 = 12_582_912.0;
/// `(ln 2 / 8)^k / k!` for `k = 0..=4`: `2^(g/8)` on `[-1/2, 1/2]`.
const WEIGHT32_POLY: [f32; 5] = [
    1.0,
    0.086_643_4,
    0.003_753_539_2,
    0.000_108_406_464,
    2.348_176e-6,
];
/// `2^(j/8)` for `j = 0..8`.
const WEIGHT32_TABLE: [f32; 8] = [
    1.0,
    1.090_507_7,
    1.189_207_1,
    1.296_839_6,
    std::f32::consts::SQRT_2,
    1.542_210_8,
    1.681_792_9,
    1.834_008_1,
];
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Sums, BLOCK_CHUNKS, WEIGHT32_POLY, WEIGHT32_ROUND, WEIGHT32_TABLE};
    use std::arch::x86_64::*;

    /// [`super::weight32`] on eight lanes: the same operations in the same
    /// order.
    #[inline(always)]
    unsafe fn weight32(d: __m256) -> __m256 {
        let y = _mm256_max_ps(d, _mm256_set1_ps(-1016.0));
        let round = _mm256_set1_ps(WEIGHT32_ROUND);
        let shifted = _mm256_add_ps(y, round);
        let k = _mm256_sub_ps(shifted, round);
        let g = _mm256_sub_ps(y, k);
        let c = |i: usize| _mm256_set1_ps(WEIGHT32_POLY[i]);
        let g2 = _mm256_mul_ps(g, g);
        let p01 = _mm256_add_ps(c(0), _mm256_mul_ps(c(1), g));
        let p23 = _mm256_add_ps(c(2), _mm256_mul_ps(c(3), g));
        let p = _mm256_add_ps(
            p01,
            _mm256_mul_ps(g2, _mm256_add_ps(p23, _mm256_mul_ps(g2, c(4)))),
        );
        let k_bits = _mm256_sub_epi32(
            _mm256_castps_si256(shifted),
            _mm256_set1_epi32(WEIGHT32_ROUND.to_bits() as i32),
        );
        let two_m = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_srai_epi32::<3>(k_bits),
            _mm256_set1_epi32(127),
        )));
        // vpermps reads the low three bits of each index: `k & 7`.
        let table = _mm256_loadu_ps(WEIGHT32_TABLE.as_ptr());
        let frac = _mm256_permutevar8x32_ps(table, k_bits);
        _mm256_mul_ps(_mm256_mul_ps(p, frac), two_m)
    }

    /// [`super::one_chunk`] for chunks `from..to` (no suppressed ids),
    /// eight tokens at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, and `to * 8 <= row.len()`.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn chunks<const MASS: bool, const TOP: bool>(
        row: &[f32],
        max: f32,
        scale: f32,
        from: usize,
        to: usize,
        lo: f32,
        hi: f32,
        lanes: &mut Sums,
        out: &mut Vec<u32>,
    ) {
        debug_assert!(to * 8 <= row.len());
        let (vmax, vscale) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let dead = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut sum_lo = _mm256_loadu_pd(lanes.wide.as_ptr());
        let mut sum_hi = _mm256_loadu_pd(lanes.wide.as_ptr().add(4));
        let mut narrow = _mm256_loadu_ps(lanes.narrow.as_ptr());
        // Blocks of chunks with room reserved for every token in them, so
        // the loop writes hits without a call (and keeps its sums in
        // registers).
        const BLOCK: usize = 512;
        let mut block = from;
        while block < to {
            let end = (block + BLOCK).min(to);
            out.reserve((end - block) * 8);
            let base = out.as_mut_ptr();
            let mut len = out.len();
            let mut c = block;
            while c < end {
                // Up to the end of this block of sums (Sums::end_chunk).
                let stop = ((c / BLOCK_CHUNKS + 1) * BLOCK_CHUNKS).min(end);
                for c in c..stop {
                    let x = _mm256_loadu_ps(row.as_ptr().add(c * 8));
                    let d = _mm256_mul_ps(_mm256_sub_ps(x, vmax), vscale);
                    if MASS {
                        narrow = _mm256_add_ps(narrow, weight32(d));
                    }
                    // Level 0 (no upper bound, a finite floor) needs one
                    // comparison: a -inf logit has d = -inf below any floor.
                    let keep = if TOP {
                        _mm256_cmp_ps::<_CMP_GE_OQ>(d, vlo)
                    } else {
                        _mm256_and_ps(
                            _mm256_and_ps(
                                _mm256_cmp_ps::<_CMP_GE_OQ>(d, vlo),
                                _mm256_cmp_ps::<_CMP_LT_OQ>(d, vhi),
                            ),
                            _mm256_cmp_ps::<_CMP_NEQ_OQ>(x, dead),
                        )
                    };
                    let mut bits = _mm256_movemask_ps(keep) as u32;
                    while bits != 0 {
                        // SAFETY: `reserve` made room for 8 per chunk of the block.
                        base.add(len).write((c * 8) as u32 + bits.trailing_zeros());
                        len += 1;
                        bits &= bits - 1;
                    }
                }
                if MASS && stop.is_multiple_of(BLOCK_CHUNKS) {
                    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(narrow));
                    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(narrow));
                    sum_lo = _mm256_add_pd(sum_lo, lo);
                    sum_hi = _mm256_add_pd(sum_hi, hi);
                    narrow = _mm256_setzero_ps();
                }
                c = stop;
            }
            // SAFETY: the first `len` entries are written, within capacity.
            out.set_len(len);
            block = end;
        }
        _mm256_storeu_pd(lanes.wide.as_mut_ptr(), sum_lo);
        _mm256_storeu_pd(lanes.wide.as_mut_ptr().add(4), sum_hi);
        _mm256_storeu_ps(lanes.narrow.as_mut_ptr(), narrow);
    }
}

/// `e^x` for `x <= 0` in f64 to about 1e-15 relative, in straight-line
/// arithmetic that vectorizes (libm's `exp` is a call per element, and was
/// most of the time of [`warp()`]). Below -708 (where `e^x` leaves the normal
/// range, under 1e-307) it is 0; `e^0` is exactly 1.
#[inline(always)]
fn exp_f64(x: f64) -> f64 {
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    const LN2_HI: f64 = 0.693_147_180_369_123_8; // ln 2 with trailing zeros: n * LN2_HI is exact
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let tiny = x < -708.0;
    let x = if tiny { 0.0 } else { x };
    // e^x = 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2 (Cody and Waite).
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to degree 12 (the remainder is about 2e-16) in
    // Estrin's scheme: pairs, then powers r^2, r^4, r^8, for a short
    // dependency chain.
    let (r2, c) = (r * r, |k: f64| 1.0 / k);
    let (r4, q0, q1) = (r2 * r2, 1.0 + r, 0.5 + c(6.0) * r);
    let (q2, q3) = (c(24.0) + c(120.0) * r, c(720.0) + c(5_040.0) * r);
    let (q4, q5) = (
        c(40_320.0) + c(362_880.0) * r,
        c(3_628_800.0) + c(39_916_800.0) * r,
    );
    let q6 = c(479_001_600.0);
    let (s0, s1, s2) = (q0 + q1 * r2, q2 + q3 * r2, q4 + q5 * r2);
    let p = (s0 + s1 * r4) + (s2 + q6 * r4) * (r4 * r4);
    // n sits in the low mantissa bits of `shifted`; 2^n is n + 1023 placed
    // in the exponent field.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let e = p * f64::from_bits(n_bits.wrapping_add(1023) << 52);
    if tiny {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests;
