//! Causal attention over the KV cache on the CPU, in f32, within the
//! checkpoint's sliding window and, optionally, attention sinks plus a
//! recent window (`AttentionWindow`: the keys outside it are never read),
//! computed row by row: each query's scores, softmax and weighted sum of values are done in
//! one fixed order that does not depend on how many queries came in the same
//! call. With the projection kernel ([`super::matmul`]) holding the same
//! property, a window or a prompt pass gives bit-identical logits to feeding
//! its tokens one at a time (dense weights; the Q8_0 option goes through
//! candle's quantized matmul), so greedy speculative decoding equals greedy
//! decoding by construction, not by luck of rounding.
//!
//! Shapes (`n` new queries at positions `pos..pos+n`, cache of `n_positions`):
//!
//! ```text
//! q        (heads, n, head_dim)        after RoPE
//! k, v     (kv_heads, n_positions, head_dim)   positions < pos + n written
//! output   (n, heads * head_dim)       ready for the output projection
//! ```

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// Multiply-adds below which one thread does the whole call.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The op; see the module docs for shapes.
pub(crate) struct CachedAttention {
    /// Position of the first query.
    pub(crate) pos: usize,
    /// Keys a query may see, itself included (`usize::MAX`: all before it):
    /// the checkpoint's own sliding window.
    pub(crate) window: usize,
    /// Attention sinks: keys at positions `0..sinks` that a query sees
    /// beyond `recent` (still within `window`). 0: none.
    pub(crate) sinks: usize,
    /// Recent keys a query sees, itself included, besides the sinks
    /// (`usize::MAX`: all). Never read outside this and the sinks.
    pub(crate) recent: usize,
    /// Score scale, `1 / sqrt(head_dim)`.
    pub(crate) scale: f32,
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "specdec-cached-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (sq, sk, sv) else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let (Some((q0, q1)), Some((k0, k1)), Some((v0, v1))) = (
            lq.contiguous_offsets(),
            lk.contiguous_offsets(),
            lv.contiguous_offsets(),
        ) else {
            candle_core::bail!("{}: contiguous inputs only", self.name());
        };
        let (heads, n, hd) = lq.shape().dims3()?;
        let (kvh, cap, hd2) = lk.shape().dims3()?;
        if lv.shape() != lk.shape() || hd2 != hd || kvh == 0 || heads % kvh != 0 {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} do not fit",
                self.name(),
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        if self.pos + n > cap {
            candle_core::bail!(
                "{}: {} positions past a cache of {cap}",
                self.name(),
                self.pos + n
            );
        }
        let dims = Dims {
            heads,
            group: heads / kvh,
            n,
            hd,
            cap,
        };
        let y = attend(&q[q0..q1], &k[k0..k1], &v[v0..v1], &dims, self);
        Ok((CpuStorage::F32(y), Shape::from((n, heads * hd))))
    }
}

struct Dims {
    heads: usize,
    group: usize,
    n: usize,
    hd: usize,
    cap: usize,
}

impl CachedAttention {
    /// The keys the query at position `t` sees, as up to two ranges of
    /// positions in order: the sinks, then the recent window. Key `j` is
    /// visible when `t - j < window` and (`j < sinks` or `t - j < recent`).
    /// When the two touch they come back as one range (the second empty),
    /// so that a query that sees every key is computed exactly as without
    /// sinks or a recent window.
    fn visible(&self, t: usize) -> [Range<usize>; 2] {
        let end = t + 1;
        let lo = end.saturating_sub(self.window);
        let recent = end.saturating_sub(self.recent).max(lo);
        let sinks_end = self.sinks.min(end);
        if lo >= sinks_end || recent <= sinks_end {
            // No sink left in the window, or sinks and recent keys touch.
            let start = if lo < sinks_end { lo } else { recent };
            [start..end, end..end]
        } else {
            [lo..sinks_end, recent..end]
        }
    }
}

fn attend(q: &[f32], k: &[f32], v: &[f32], d: &Dims, op: &CachedAttention) -> Vec<f32> {
    let mut out = vec![0f32; d.n * d.heads * d.hd];
    if d.hd == 0 {
        return out;
    }
    // One item per (query row, head): its hd outputs are contiguous.
    let item = |(idx, o): (usize, &mut [f32])| {
        let (i, h) = (idx / d.heads, idx % d.heads);
        let kv = (h / d.group) * d.cap;
        let qv = &q[(h * d.n + i) * d.hd..][..d.hd];
        // Only the visible keys are read: the others cost nothing.
        let segment = |r: &Range<usize>| {
            let span = (kv + r.start) * d.hd..(kv + r.end) * d.hd;
            (&k[span.clone()], &v[span])
        };
        let [a, b] = op.visible(op.pos + i);
        row(qv, &[segment(&a), segment(&b)], op.scale, o);
    };
    let seen = |t: usize| op.visible(t).iter().map(|r| r.len()).sum::<usize>();
    let macs = d.n * d.heads * seen((op.pos + d.n).saturating_sub(1)) * d.hd * 2;
    if macs >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(d.hd).enumerate().for_each(item);
    } else {
        out.chunks_mut(d.hd).enumerate().for_each(item);
    }
    out
}

/// Keys and values of consecutive positions: the same number of rows each.
type Segment<'a> = (&'a [f32], &'a [f32]);

/// One query against its visible keys: `o = softmax(scale * K q) V`, `K`
/// and `V` being the segments' keys and values one after the other. The
/// result is the same bits as for one segment holding them all (each key's
/// score, the softmax and the chain of multiply-adds into `o` run in the
/// same order). Each segment holds the same number of rows of `q.len()` in
/// its keys and values, and `o` is `q.len()` long (the SIMD path reads and
/// writes them unchecked).
fn row(q: &[f32], segments: &[Segment<'_>], scale: f32, o: &mut [f32]) {
    assert!(
        o.len() == q.len()
            && segments
                .iter()
                .all(|(keys, values)| keys.len() == values.len()
                    && keys.len().is_multiple_of(q.len().max(1))),
        "attention row: shapes do not fit"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if q.len().is_multiple_of(8)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected; lengths are multiples
            // of hd, itself a multiple of 8.
            unsafe { avx2::row(q, segments, scale, o) };
            return;
        }
    }
    portable_row(q, segments, scale, o);
}

/// [`row`] without SIMD: the reference, and the path for other CPUs.
fn portable_row(q: &[f32], segments: &[Segment<'_>], scale: f32, o: &mut [f32]) {
    let hd = q.len();
    let scores: Vec<f32> = segments
        .iter()
        .flat_map(|(keys, _)| keys.chunks_exact(hd))
        .map(|k| dot(q, k) * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    let values = segments.iter().flat_map(|(_, v)| v.chunks_exact(hd));
    for (p, v) in probs.iter().zip(values) {
        for (a, x) in o.iter_mut().zip(v) {
            *a += p * x;
        }
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|a| *a *= inv);
}

/// Dot product in a fixed order: eight lanes, then a fixed tree.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// `v[i] = exp(v[i] - shift)`. Sixteen lanes at a time with AVX-512 (the
/// softmax of a long context is mostly `exp`), the tail with `f32::exp`.
/// Which path an element takes depends only on its index, so a query's
/// result still does not depend on the other queries of its call.
fn exp_shifted(v: &mut [f32], shift: f32) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            done = unsafe { avx512::exp_shifted(v, shift) };
        }
    }
    for x in &mut v[done..] {
        *x = (*x - shift).exp();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `exp` of 16 lanes: Cody-Waite reduction by ln 2, the Cephes
    /// polynomial, and `vscalefps` to scale back (which gives inf, 0 and
    /// subnormals at the ends of the range, and NaN for NaN). Within 2 ulp.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp16(x: __m512) -> __m512 {
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // x - n ln2, with ln2 in two parts so that n * ln2_hi is exact.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        // e^r = 1 + r + r^2 p(r), then times 2^n.
        let er = _mm512_add_ps(
            _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r),
            _mm512_set1_ps(1.0),
        );
        _mm512_scalef_ps(er, n)
    }

    /// The whole 16-lane chunks of [`super::exp_shifted`]; returns how many
    /// elements it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(v: &mut [f32], shift: f32) -> usize {
        let len = v.len() / 16 * 16;
        let s = _mm512_set1_ps(shift);
        let mut i = 0;
        while i < len {
            let p = v.as_mut_ptr().add(i);
            _mm512_storeu_ps(p, exp16(_mm512_sub_ps(_mm512_loadu_ps(p), s)));
            i += 16;
        }
        len
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Segment;

    /// Sum of the 8 lanes, in a fixed order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `q . k` for `K` keys at once (independent FMA chains); each key's
    /// sum is the same whichever group it is computed in.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots<const K: usize>(q: *const f32, k: *const f32, hd: usize) -> [f32; K] {
        let mut acc = [_mm256_setzero_ps(); K];
        let mut d = 0;
        while d < hd {
            let qv = _mm256_loadu_ps(q.add(d));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(j * hd + d)), *a);
            }
            d += 8;
        }
        let mut out = [0f32; K];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }

    /// See [`super::row`]; `hd` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(q: &[f32], segments: &[Segment<'_>], scale: f32, o: &mut [f32]) {
        let hd = q.len();
        let total: usize = segments.iter().map(|(keys, _)| keys.len() / hd).sum();
        let mut scores = Vec::with_capacity(total);
        for (keys, _) in segments {
            let len = keys.len() / hd;
            let mut j = 0;
            while j + 4 <= len {
                let s = dots::<4>(q.as_ptr(), keys.as_ptr().add(j * hd), hd);
                scores.extend(s.iter().map(|x| x * scale));
                j += 4;
            }
            while j < len {
                let s = dots::<1>(q.as_ptr(), keys.as_ptr().add(j * hd), hd);
                scores.push(s[0] * scale);
                j += 1;
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        super::exp_shifted(&mut scores, max);
        let sum: f32 = scores.iter().sum();
        // Each segment continues the multiply-add chains of the one before
        // (they go through `o` between segments, which rounds nothing).
        let mut first = 0;
        for (_, values) in segments {
            let p = &scores[first..first + values.len() / hd];
            first += p.len();
            match hd {
                64 => weighted::<8>(p, values, o),
                128 => weighted::<16>(p, values, o),
                _ => {
                    for (jj, &pj) in p.iter().enumerate() {
                        let (pv, v) = (_mm256_set1_ps(pj), values.as_ptr().add(jj * hd));
                        let mut d = 0;
                        while d < hd {
                            let a = o.as_mut_ptr().add(d);
                            let acc = _mm256_loadu_ps(a);
                            _mm256_storeu_ps(
                                a,
                                _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.add(d)), acc),
                            );
                            d += 8;
                        }
                    }
                }
            }
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|a| *a *= inv);
    }

    /// `o += sum_j p_j v_j` for `hd = 8 * V`, with `o` held in registers:
    /// the same FMA chain per output as the general loop.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted<const V: usize>(p: &[f32], values: &[f32], o: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); V];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(o.as_ptr().add(c * 8));
        }
        for (&pj, v) in p.iter().zip(values.chunks_exact(8 * V)) {
            let pv = _mm256_set1_ps(pj);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.as_ptr().add(c * 8)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.as_mut_ptr().add(c * 8), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_within_two_ulp_and_saturates_like_exp() {
        let mut xs: Vec<f32> = (-1100..=1100).map(|i| i as f32 * 0.0805).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-8,
            -1e-8,
            88.7,
            88.8,
            -87.3,
            -103.0,
            -104.0,
            200.0,
            -200.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let mut got = xs.clone();
        exp_shifted(&mut got, 0.0);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = (x as f64).exp();
            if x.is_nan() {
                assert!(g.is_nan());
            } else if want > f32::MAX as f64 {
                assert_eq!(g, f32::INFINITY, "exp({x})");
            } else if want < f32::MIN_POSITIVE as f64 {
                assert!(
                    g >= 0.0 && (g as f64 - want).abs() < 1e-38,
                    "exp({x}) = {g}"
                );
            } else {
                let ulp = (want as f32).to_bits().abs_diff(g.to_bits());
                assert!(ulp <= 2, "exp({x}) = {g}, want {want} ({ulp} ulp)");
            }
        }
    }

    /// Plain softmax attention in f64 over an explicit mask.
    fn naive(q: &[f32], k: &[f32], v: &[f32], d: &Dims, op: &CachedAttention) -> Vec<f32> {
        let mut out = vec![0f32; d.n * d.heads * d.hd];
        for i in 0..d.n {
            for h in 0..d.heads {
                let t = op.pos + i;
                let kv = (h / d.group) * d.cap;
                let qv = &q[(h * d.n + i) * d.hd..][..d.hd];
                let visible: Vec<usize> = (0..=t)
                    .filter(|&j| t - j < op.window && (j < op.sinks || t - j < op.recent))
                    .collect();
                let s: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let kj = &k[(kv + j) * d.hd..][..d.hd];
                        qv.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * op.scale as f64
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for dd in 0..d.hd {
                    let val: f64 = visible
                        .iter()
                        .zip(&s)
                        .map(|(&j, x)| (x - m).exp() / z * v[(kv + j) * d.hd + dd] as f64)
                        .sum();
                    out[(i * d.heads + h) * d.hd + dd] = val as f32;
                }
            }
        }
        out
    }

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.618).sin())
            .collect()
    }

    #[test]
    fn matches_naive_attention_with_gqa_and_windows() {
        const ALL: usize = usize::MAX;
        // (heads, kv heads, head_dim, pos, n, window, sinks, recent)
        for (heads, kvh, hd, pos, n, window, sinks, recent) in [
            (4, 2, 8, 0, 5, ALL, 0, ALL),
            (6, 2, 12, 7, 3, ALL, 0, ALL),
            (2, 1, 9, 3, 4, 3, 0, ALL),
            (3, 3, 16, 10, 1, 4, 0, ALL),
            (2, 1, 64, 9, 3, ALL, 0, ALL),
            (2, 2, 128, 4, 2, 5, 0, ALL),
            (4, 2, 64, 30, 5, ALL, 0, ALL),
            // Sinks and a recent window: apart, touching, covering all.
            (4, 2, 64, 30, 5, ALL, 4, 8),
            (2, 2, 128, 20, 6, ALL, 2, 5),
            (2, 1, 9, 10, 8, ALL, 3, 4),
            (4, 2, 8, 0, 12, ALL, 4, 4),
            (4, 2, 64, 5, 4, ALL, 3, 7),
            (2, 1, 64, 25, 3, ALL, 0, 6),
            // Within the checkpoint's own window as well.
            (2, 1, 64, 25, 3, 12, 4, 6),
            (2, 1, 16, 25, 3, 6, 4, 3),
            (2, 1, 16, 3, 9, 6, 2, 3),
        ] {
            let cap = 40;
            let d = Dims {
                heads,
                group: heads / kvh,
                n,
                hd,
                cap,
            };
            let op = CachedAttention {
                pos,
                window,
                sinks,
                recent,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q = data(heads * n * hd, 1.0);
            let k = data(kvh * cap * hd, 2.0);
            let v = data(kvh * cap * hd, 3.0);
            let got = attend(&q, &k, &v, &d, &op);
            let want = naive(&q, &k, &v, &d, &op);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{g} vs {w} (heads {heads} pos {pos} n {n} sinks {sinks} recent {recent})"
                );
            }
        }
    }

    #[test]
    fn a_query_row_does_not_depend_on_the_others_in_its_call() {
        // Full attention, then sinks and a recent window.
        for (sinks, recent) in [(0, usize::MAX), (3, 9), (0, 5)] {
            rows_are_independent(sinks, recent);
        }
    }

    fn rows_are_independent(sinks: usize, recent: usize) {
        let (heads, kvh, hd, cap) = (4, 2, 64, 40);
        let k = data(kvh * cap * hd, 2.0);
        let v = data(kvh * cap * hd, 3.0);
        let n = 30;
        // Queries laid out (heads, n, hd); row i of a call starting at `pos`.
        let q_all = data(heads * n * hd, 1.0);
        let slice = |from: usize, len: usize| -> Vec<f32> {
            (0..heads)
                .flat_map(|h| q_all[(h * n + from) * hd..(h * n + from + len) * hd].to_vec())
                .collect()
        };
        let op = |pos| CachedAttention {
            pos,
            window: usize::MAX,
            sinks,
            recent,
            scale: 0.25,
        };
        let dims = |n| Dims {
            heads,
            group: heads / kvh,
            n,
            hd,
            cap,
        };
        let all = attend(&slice(0, n), &k, &v, &dims(n), &op(0));
        for i in 0..n {
            let one = attend(&slice(i, 1), &k, &v, &dims(1), &op(i));
            assert_eq!(
                &all[i * heads * hd..(i + 1) * heads * hd],
                &one[..],
                "row {i} (sinks {sinks}, recent {recent})"
            );
        }
    }

    #[test]
    fn two_segments_give_the_bits_of_one() {
        // The same keys split anywhere: the same output bits, on the SIMD
        // path (hd 64 and 128 hold `o` in registers, 24 does not) and the
        // portable one.
        for hd in [24, 64, 128, 9] {
            let len = 13;
            let q = data(hd, 1.0);
            let k = data(len * hd, 2.0);
            let v = data(len * hd, 3.0);
            let mut whole = vec![0f32; hd];
            row(&q, &[(&k, &v)], 0.3, &mut whole);
            let mut portable = vec![0f32; hd];
            portable_row(&q, &[(&k, &v)], 0.3, &mut portable);
            for cut in [0, 1, 4, 5, 12, 13] {
                let (k1, k2) = k.split_at(cut * hd);
                let (v1, v2) = v.split_at(cut * hd);
                let mut split = vec![0f32; hd];
                row(&q, &[(k1, v1), (k2, v2)], 0.3, &mut split);
                assert_eq!(split, whole, "hd {hd}, cut {cut}");
                let mut split = vec![0f32; hd];
                portable_row(&q, &[(k1, v1), (k2, v2)], 0.3, &mut split);
                assert_eq!(split, portable, "portable, hd {hd}, cut {cut}");
            }
        }
    }

    #[test]
    fn visible_ranges() {
        let op = |window, sinks, recent| CachedAttention {
            pos: 0,
            window,
            sinks,
            recent,
            scale: 1.0,
        };
        let all = usize::MAX;
        assert_eq!(op(all, 0, all).visible(9), [0..10, 10..10]);
        assert_eq!(op(4, 0, all).visible(9), [6..10, 10..10]);
        assert_eq!(op(all, 4, 6).visible(9), [0..10, 10..10]);
        assert_eq!(op(all, 4, 5).visible(9), [0..4, 5..10]);
        assert_eq!(op(all, 4, 5).visible(2), [0..3, 3..3]);
        assert_eq!(op(all, 0, 5).visible(9), [5..10, 10..10]);
        assert_eq!(op(8, 4, 3).visible(9), [2..4, 7..10]);
        assert_eq!(op(6, 4, 3).visible(9), [7..10, 10..10]);
        assert_eq!(op(5, 4, 3).visible(9), [7..10, 10..10]);
        assert_eq!(op(6, 4, all).visible(9), [4..10, 10..10]);
        assert_eq!(op(all, 4, 1).visible(100), [0..4, 100..101]);
    }
}
