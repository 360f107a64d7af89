//! The sampler: logits + settings -> a normalized distribution, and seeded
//! draws from it.
//!
//! Both models' logits go through the *same* [`warp`]: suppression, then
//! temperature, top-k, top-p and min-p, then a softmax in `f64`. The draft's
//! token is drawn from exactly the distribution `q` that [`warp`] returns, and
//! that same `q` is what the verifier divides by. Nothing here hands out a
//! token without the distribution it came from.

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result, Role};

/// How tokens are chosen.
///
/// `temperature == 0` is greedy (argmax; `top_k`, `top_p`, `min_p` are then
/// irrelevant). Otherwise logits are divided by `temperature`, then filtered by
/// `top_k`, `top_p` and `min_p`, in that order, as Hugging Face transformers
/// does.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature, `>= 0` and finite; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`>= 1`).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`,
    /// in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Drop tokens whose probability is below `min_p` times the largest, in `[0, 1]`.
    pub min_p: Option<f32>,
}

impl Default for SamplingParams {
    /// Greedy.
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
        }
    }

    /// Plain sampling at `temperature`, no filtering.
    pub fn with_temperature(temperature: f32) -> Self {
        Self {
            temperature,
            ..Self::greedy()
        }
    }

    /// True when this selects argmax decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field's range; the error names the field and value.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::setting(
                "temperature",
                t,
                "a finite number >= 0 (0 = greedy)",
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::setting("top_k", 0, "an integer >= 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::setting("top_p", p, "a number in (0, 1]"));
            }
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::setting("min_p", m, "a number in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// A probability distribution over the vocabulary, `[vocab]` in `f64`,
/// entries `>= 0` summing to 1 (to rounding).
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    probs: Vec<f64>,
}

impl Distribution {
    /// Normalizes nonnegative finite `weights`; `None` if they sum to 0 or are
    /// not all finite and nonnegative.
    pub fn from_weights(mut weights: Vec<f64>) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { normalize_avx2(&mut weights) }.then_some(Self { probs: weights });
        }
        normalize(&mut weights).then_some(Self { probs: weights })
    }

    /// All-mass-on-`token` distribution over `vocab` ids.
    pub fn point(token: u32, vocab: usize) -> Self {
        let mut probs = vec![0.0; vocab];
        probs[token as usize] = 1.0;
        Self { probs }
    }

    /// Probabilities, `[vocab]`.
    pub fn probs(&self) -> &[f64] {
        &self.probs
    }

    /// Probability of `token` (0 outside the vocabulary).
    pub fn prob(&self, token: u32) -> f64 {
        self.probs.get(token as usize).copied().unwrap_or(0.0)
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.probs.len()
    }

    /// True for an empty vocabulary (never produced by [`warp`]).
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }
}

/// The source of randomness of a generation: every random decision the
/// sampler and verifier make goes through one of these two calls, so a test
/// can replace it with one that enumerates every branch.
pub trait RandomSource {
    /// Returns an index `i` with probability `probs[i]` (`probs` sums to 1;
    /// an index with probability 0 is never returned).
    fn categorical(&mut self, probs: &[f64]) -> usize;
    /// Returns `true` with probability `p` (`0 < p < 1`).
    fn bernoulli(&mut self, p: f64) -> bool;
}

/// The default [`RandomSource`]: a seeded generator, so the same seed and
/// settings give the same output.
#[derive(Debug, Clone)]
pub struct SeededRandom(rand::rngs::StdRng);

impl SeededRandom {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(rand::rngs::StdRng::seed_from_u64(seed))
    }
}

impl RandomSource for SeededRandom {
    fn categorical(&mut self, probs: &[f64]) -> usize {
        let total: f64 = probs.iter().sum();
        let mut u = self.0.random::<f64>() * total;
        let mut last_positive = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                if u < p {
                    return i;
                }
                u -= p;
                last_positive = i;
            }
        }
        // Rounding left `u` just past the end: the last token with mass.
        last_positive
    }

    fn bernoulli(&mut self, p: f64) -> bool {
        self.0.random::<f64>() < p
    }
}

/// Checks a logits row for NaN and +inf; `-inf` is allowed (a masked token).
pub fn check_finite(row: &[f32], role: Role, position: usize) -> Result<()> {
    match row.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
        None => Ok(()),
        Some(token) => Err(Error::NonFiniteLogits {
            role,
            position,
            token: token as u32,
            value: row[token],
        }),
    }
}

/// Greedy choice: the id of the largest logit not in `suppress` (the lowest
/// id among ties). Errors on NaN / +inf, or when every token is suppressed or
/// `-inf`.
pub fn argmax(row: &[f32], suppress: &[u32], role: Role, position: usize) -> Result<u32> {
    // Fast path, all vectorized: the largest logit and whether any is NaN or
    // +inf in one pass, then the first id holding it. A row like that is
    // answered unless the winner is suppressed or -inf.
    let (max, bad) = max_and_bad(row);
    if bad {
        check_finite(row, role, position)?;
    }
    if max != f32::NEG_INFINITY {
        if let Some(i) = row.iter().position(|&x| x == max) {
            if !suppress.contains(&(i as u32)) {
                return Ok(i as u32);
            }
        }
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in row.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b)
            && x != f32::NEG_INFINITY
            && !suppress.contains(&(i as u32))
        {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or(Error::EmptyDistribution { role, position })
}

/// The largest value of `row` (`-inf` if empty), and whether it holds a NaN
/// or `+inf`. Sixteen independent lanes, so the loop vectorizes.
fn max_and_bad(row: &[f32]) -> (f32, bool) {
    const LANES: usize = 16;
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for ((m, b), &x) in max.iter_mut().zip(&mut bad).zip(chunk) {
            *m = if x > *m { x } else { *m };
            *b |= x.is_nan() | (x == f32::INFINITY);
        }
    }
    let mut top = f32::NEG_INFINITY;
    let mut any_bad = bad.contains(&true);
    for &x in max.iter().chain(chunks.remainder()) {
        top = if x > top { x } else { top };
        any_bad |= x.is_nan() | (x == f32::INFINITY);
    }
    (top, any_bad)
}

/// Probability of `token` under `softmax(row)` with the `suppress`ed ids
/// removed (the rest renormalized): how sure a greedy draft is of its choice.
///
/// For deciding whether a draft is worth verifying, not for sampling: `exp`
/// is a polynomial (relative error below 1e-5) so that the sum over the
/// vocabulary vectorizes (a few microseconds for 8192 logits), and logits
/// more than 87 below the largest count as `e^-87`. `row` must be free of NaN and
/// `+inf` ([`argmax`] checks that) and `token` must be in it. Returns a value
/// in `[0, 1]` (0 for a `-inf` token).
pub fn greedy_confidence(row: &[f32], token: u32, suppress: &[u32]) -> f32 {
    let (max, _) = max_and_bad(row);
    let own = row[token as usize];
    if own == f32::NEG_INFINITY {
        return 0.0; // a masked id (argmax never picks one)
    }
    let mut seen = Vec::with_capacity(suppress.len());
    let mut unique = suppress.iter().filter(|&&s| {
        let first = (s as usize) < row.len() && !seen.contains(&s);
        seen.push(s);
        first
    });
    if own < max {
        // A suppressed id holds the largest logit: subtracting its share
        // from the f32 sum would cancel catastrophically, so take the rare
        // path in f64.
        let excluded: Vec<u32> = unique.copied().collect();
        let total: f64 = row
            .iter()
            .enumerate()
            .filter(|(i, _)| !excluded.contains(&(*i as u32)))
            .map(|(_, &x)| ((x - own) as f64).exp())
            .sum();
        return (1.0 / total) as f32;
    }
    let term = |x: f32| fast_exp(x - max);
    let mut sum = exp_sum(row, max);
    for &s in &mut unique {
        sum -= term(row[s as usize]);
    }
    let own = term(own);
    if sum <= own {
        1.0
    } else {
        own / sum
    }
}

/// `sum(e^(x - max))` over `row`, 8 lanes wide: with AVX2 where the CPU
/// has it, else SSE2. Both run the same operations in the same order
/// (no fused multiply-adds), so the sum is the same bits on every x86-64.
fn exp_sum(row: &[f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { exp_sum_avx2(row, max) };
    }
    exp_sum_lanes(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_sum_avx2(row: &[f32], max: f32) -> f32 {
    exp_sum_lanes(row, max)
}

/// Eight independent partial sums: the loop vectorizes and its order of
/// additions is fixed.
#[inline(always)]
fn exp_sum_lanes(row: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += fast_exp(x - max);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| fast_exp(x - max)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` for `x <= 0` to about 5e-6 relative, in straight-line arithmetic
/// that vectorizes (no call into libm); below -87 it is `e^-87` (~1.6e-38),
/// which no sum over a vocabulary notices.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    // e^x = 2^n * 2^f with n = round(x log2 e), |f| <= 1/2.
    let t = x * std::f32::consts::LOG2_E;
    let shifted = t + ROUND;
    let n = shifted - ROUND;
    let f = t - n;
    // 2^f on [-1/2, 1/2]: Taylor series of e^(f ln 2) to degree 6.
    let p = 1.540_353e-4_f32;
    let p = p * f + 1.333_355_8e-3;
    let p = p * f + 9.618_129e-3;
    let p = p * f + 5.550_411e-2;
    let p = p * f + 2.402_265e-1;
    let p = p * f + std::f32::consts::LN_2;
    let p = p * f + 1.0;
    // n sits in the low mantissa bits of `shifted`; 2^n is n + 127 placed
    // in the exponent field (integer arithmetic only, so it vectorizes).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalize_avx2(weights: &mut [f64]) -> bool {
    normalize(weights)
}

/// Divides nonnegative finite `weights` by their sum; `false` (and
/// untouched) if one is not, or the sum is not positive and finite. No
/// early exits, so every loop vectorizes.
#[inline(always)]
fn normalize(weights: &mut [f64]) -> bool {
    let bad = weights.iter().fold(false, |bad, &w| {
        bad | w.is_nan() | (w < 0.0) | (w == f64::INFINITY)
    });
    let total = sum_f64(weights);
    if bad || !(total > 0.0 && total.is_finite()) {
        return false;
    }
    weights.iter_mut().for_each(|w| *w /= total);
    true
}

/// The largest of `xs` (`-inf` if empty; NaN-free input), in eight
/// independent lanes so the loop vectorizes.
#[inline(always)]
fn max_f64(xs: &[f64]) -> f64 {
    let mut lanes = [f64::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    lanes
        .iter()
        .chain(chunks.remainder())
        .fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The sum of `xs` in eight independent lanes (a fixed order, so the same
/// bits on every run), which vectorizes where a running sum cannot.
#[inline(always)]
fn sum_f64(xs: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for chunk in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let tail: f64 = chunks.remainder().iter().sum();
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        + tail
}

/// Unnormalized softmax weights of `row / temperature` with `suppress`ed
/// ids at 0: `e^(x - max)`, so the largest is exactly 1. `None` when every
/// id is suppressed or `-inf`. Vectorized, with AVX2 where the CPU has it
/// (else SSE2): the same operations in the same order either way, so the
/// same bits.
fn softmax_weights(row: &[f32], temperature: f64, suppress: &[u32]) -> Option<Vec<f64>> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { softmax_weights_avx2(row, temperature, suppress) };
    }
    softmax_weights_any(row, temperature, suppress)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_weights_avx2(
    row: &[f32],
    temperature: f64,
    suppress: &[u32],
) -> Option<Vec<f64>> {
    softmax_weights_any(row, temperature, suppress)
}

#[inline(always)]
fn softmax_weights_any(row: &[f32], temperature: f64, suppress: &[u32]) -> Option<Vec<f64>> {
    let mut w: Vec<f64> = row.iter().map(|&x| x as f64 / temperature).collect();
    for &s in suppress {
        if let Some(x) = w.get_mut(s as usize) {
            *x = f64::NEG_INFINITY;
        }
    }
    let max = max_f64(&w);
    if max == f64::NEG_INFINITY {
        return None;
    }
    for x in &mut w {
        *x = exp_f64(*x - max);
    }
    Some(w)
}

/// `e^x` for `x <= 0` in f64 to about 1e-15 relative, in straight-line
/// arithmetic that vectorizes (libm's `exp` is a call per element, and was
/// most of the time of [`warp`]). Below -708 (where `e^x` leaves the normal
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
    // Taylor series of e^r to degree 12: the remainder is about 2e-16.
    let mut p = 1.0 / 479_001_600.0;
    for c in [
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
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

/// Turns a logits row (`[vocab]`) into the distribution tokens are drawn
/// from: `suppress`ed ids get probability 0, then temperature, top-k, top-p
/// and min-p as in [`SamplingParams`]. Ties at a top-k / top-p cut are broken
/// by the lower id, so the result is a function of the row alone.
///
/// `params` must not be greedy (use [`argmax`]); `role` and `position` only
/// name the row in errors.
pub fn warp(
    row: &[f32],
    params: &SamplingParams,
    suppress: &[u32],
    role: Role,
    position: usize,
) -> Result<Distribution> {
    if max_and_bad(row).1 {
        check_finite(row, role, position)?;
    }
    let empty = || Error::EmptyDistribution { role, position };
    let mut probs = softmax_weights(row, params.temperature as f64, suppress).ok_or_else(empty)?;

    if params.top_k.is_some() || params.top_p.is_some() {
        let kept = top_k_top_p(&probs, params);
        let mut filtered = vec![0.0; probs.len()];
        for &i in &kept {
            filtered[i as usize] = probs[i as usize];
        }
        probs = filtered;
    }
    if let Some(min_p) = params.min_p {
        // The largest weight is exp(0) = 1, so the cut is `min_p` itself.
        let cut = min_p as f64;
        probs
            .iter_mut()
            .filter(|p| **p < cut)
            .for_each(|p| *p = 0.0);
    }
    Distribution::from_weights(probs).ok_or_else(empty)
}

/// The ids top-k and top-p keep from `weights` (unnormalized, the largest
/// is 1): a prefix of the ids sorted by descending weight, lower id first
/// among ties.
///
/// Most of the mass sits in few tokens, so the ids with weight `>= 1e-8` are
/// sorted first; the whole vocabulary is sorted only when the cut might lie
/// below them. Both paths give the same prefix: every id below the floor
/// sorts after every id above it.
fn top_k_top_p(weights: &[f64], params: &SamplingParams) -> Vec<u32> {
    let total_all: f64 = weights.iter().sum();
    // A total order (ties broken by id), so unstable sorts and selections
    // agree with a full sort.
    let cmp = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    for floor in [1e-8, 0.0] {
        let complete = floor == 0.0;
        let mut order: Vec<u32> = (0..weights.len() as u32)
            .filter(|&i| weights[i as usize] > 0.0 && weights[i as usize] >= floor)
            .collect();
        let len = order.len();
        if let Some(k) = params.top_k {
            if len < k && !complete {
                continue; // the k-th id may lie below the floor
            }
        }
        // Only the best `m` ids are sorted: top-k's `k`, or for top-p alone
        // a guess that grows until the cut falls inside it.
        let mut m = params.top_k.unwrap_or(64).min(len);
        loop {
            if m < len {
                order.select_nth_unstable_by(m, cmp); // order[..m]: the best m
            }
            order[..m].sort_unstable_by(cmp);
            let mut keep = m;
            if let Some(top_p) = params.top_p {
                // Mass of what top-k kept (everything, without top-k).
                let total = match params.top_k {
                    Some(_) => order[..keep].iter().map(|&i| weights[i as usize]).sum(),
                    None => total_all,
                };
                let target = top_p as f64 * total;
                let mut acc = 0.0;
                match order[..keep].iter().position(|&i| {
                    acc += weights[i as usize];
                    acc >= target
                }) {
                    Some(n) => keep = n + 1,
                    // Without top-k the cut may lie past the sorted part.
                    None if params.top_k.is_none() && m < len => {
                        m = (m * 4).min(len);
                        continue;
                    }
                    None if !complete => break, // the cut lies below the floor
                    None => {}                  // rounding: keep everything
                }
            }
            order.truncate(keep);
            return order;
        }
    }
    unreachable!("the second pass considers every id and always returns")
}

/// The residual distribution of a rejection: `norm(max(0, p - q))`. `None`
/// when `p <= q` everywhere, which happens only when `p == q` up to rounding,
/// and then a rejection has probability 0.
pub fn residual(p: &Distribution, q: &Distribution) -> Option<Distribution> {
    let weights = p
        .probs()
        .iter()
        .enumerate()
        .map(|(i, &pi)| (pi - q.prob(i as u32)).max(0.0))
        .collect();
    Distribution::from_weights(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f64_is_close_to_libm_and_exact_at_zero() {
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f64(-0.0), 1.0);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(-709.0), 0.0);
        let mut worst = 0.0f64;
        for i in 0..707_990 {
            let x = -(i as f64) / 1000.0 - (i % 7) as f64 * 1.3e-4;
            let want = x.exp();
            worst = worst.max((exp_f64(x) - want).abs() / want);
        }
        assert!(worst < 4e-15, "worst relative error {worst}");
        // Same bits with AVX2 and without.
        let row: Vec<f32> = (0..1001).map(|i| -(i as f32) * 0.731).collect();
        let any = softmax_weights_any(&row, 0.7, &[3]).unwrap();
        assert_eq!(softmax_weights(&row, 0.7, &[3]).unwrap(), any);
        assert_eq!((any[0], any[3]), (1.0, 0.0));
    }

    #[test]
    fn fast_exp_is_close_to_exp_on_its_whole_range() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let exact = (x as f64).exp();
            worst = worst.max((fast_exp(x) as f64 - exact).abs() / exact);
        }
        assert!(worst < 1e-5, "worst relative error {worst}");
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn greedy_confidence_is_the_renormalized_softmax_probability() {
        let mut rng = SeededRandom::new(3);
        for vocab in [1usize, 7, 8, 9, 100, 8192] {
            let row: Vec<f32> = (0..vocab)
                .map(|_| (rng.0.random::<f64>() * 30.0 - 15.0) as f32)
                .collect();
            let suppress: Vec<u32> = if vocab > 2 { vec![1, 1, 2] } else { vec![] };
            let best = argmax(&row, &suppress, Role::Draft, 0).unwrap();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let weight = |i: usize| ((row[i] as f64) - max).exp();
            let total: f64 = (0..vocab)
                .filter(|i| !suppress.contains(&(*i as u32)))
                .map(weight)
                .sum();
            let exact = weight(best as usize) / total;
            let got = greedy_confidence(&row, best, &suppress) as f64;
            assert!(
                (got - exact).abs() < 1e-5,
                "vocab {vocab}: {got} vs {exact}"
            );
        }
        // The AVX2 and the baseline (SSE2) sums are the same bits.
        let row: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 / -7.0).collect();
        assert_eq!(
            exp_sum(&row, 0.5).to_bits(),
            exp_sum_lanes(&row, 0.5).to_bits()
        );
        // The largest logit suppressed, far above the rest: still the
        // renormalized probability, not a cancellation artefact.
        let row = [40.0, 1.0, 0.0, -1.0];
        let want = 1.0 / (1.0 + (-1.0f64).exp() + (-2.0f64).exp());
        assert!((greedy_confidence(&row, 1, &[0, 0]) as f64 - want).abs() < 1e-6);
        assert_eq!(greedy_confidence(&[f32::NEG_INFINITY, 1.0], 0, &[]), 0.0);
        // One certain token among masked ones.
        let row = [f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY];
        assert_eq!(greedy_confidence(&row, 1, &[]), 1.0);
        // Two equal logits: one half each.
        assert!((greedy_confidence(&[0.5, 0.5], 0, &[]) - 0.5).abs() < 1e-6);
    }

    fn dist(row: &[f32], params: &SamplingParams) -> Vec<f64> {
        warp(row, params, &[], Role::Target, 0)
            .unwrap()
            .probs()
            .to_vec()
    }

    #[test]
    fn softmax_at_temperature_one() {
        let p = dist(
            &[0.0, (2.0f32).ln()],
            &SamplingParams::with_temperature(1.0),
        );
        // ln 2 rounded to f32 is off by ~1e-8, hence the tolerance.
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let row = [3.0, 2.0, 1.0, 0.0];
        let mut params = SamplingParams::with_temperature(1.0);
        params.top_k = Some(2);
        let p = dist(&row, &params);
        assert!(p[2] == 0.0 && p[3] == 0.0 && p[0] > p[1]);
        params.top_k = None;
        params.top_p = Some(0.5);
        assert_eq!(dist(&row, &params), vec![1.0, 0.0, 0.0, 0.0]);
    }

    /// The two-pass `top_k_top_p` against one full sort, on peaked rows
    /// (cut above the floor) and settings whose cut lies below it.
    #[test]
    fn the_fast_path_keeps_exactly_what_a_full_sort_keeps() {
        fn full(w: &[f64], params: &SamplingParams) -> Vec<u32> {
            let mut order: Vec<u32> = (0..w.len() as u32)
                .filter(|&i| w[i as usize] > 0.0)
                .collect();
            order.sort_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
            let mut keep = params.top_k.map_or(order.len(), |k| k.min(order.len()));
            if let Some(p) = params.top_p {
                let total: f64 = match params.top_k {
                    Some(_) => order[..keep].iter().map(|&i| w[i as usize]).sum(),
                    None => w.iter().sum(),
                };
                let mut acc = 0.0;
                if let Some(n) = order[..keep].iter().position(|&i| {
                    acc += w[i as usize];
                    acc >= p as f64 * total
                }) {
                    keep = n + 1;
                }
            }
            order.truncate(keep);
            order
        }
        for spread in [0.5f64, 5.0, 40.0] {
            let w: Vec<f64> = (0..3000)
                .map(|i| (-(((i * 7919) % 3001) as f64 / 3001.0) * spread).exp())
                .collect();
            for (top_k, top_p) in [
                (None, Some(0.9)),
                (None, Some(1.0)),
                (None, Some(0.3)),
                (None, Some(0.999)),
                (Some(5), None),
                (Some(2999), None),
                (Some(40), Some(0.5)),
                (Some(2900), Some(1.0)),
            ] {
                let params = SamplingParams {
                    top_k,
                    top_p,
                    ..SamplingParams::with_temperature(1.0)
                };
                assert_eq!(
                    top_k_top_p(&w, &params),
                    full(&w, &params),
                    "spread {spread} {params:?}"
                );
            }
        }
    }

    #[test]
    fn ties_at_the_cut_keep_the_lower_id() {
        let mut params = SamplingParams::with_temperature(1.0);
        params.top_k = Some(1);
        assert_eq!(dist(&[1.0, 1.0, 1.0], &params), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn min_p_is_relative_to_the_top() {
        let mut params = SamplingParams::with_temperature(1.0);
        params.min_p = Some(0.5);
        let p = dist(&[0.0, (0.4f32).ln(), (0.6f32).ln()], &params);
        assert_eq!(p[1], 0.0);
        assert!(p[2] > 0.0);
    }

    #[test]
    fn suppression_and_masking() {
        let params = SamplingParams::with_temperature(1.0);
        let d = warp(&[5.0, 1.0], &params, &[0], Role::Draft, 3).unwrap();
        assert_eq!(d.probs(), &[0.0, 1.0]);
        let e = warp(&[f32::NEG_INFINITY, 1.0], &params, &[1], Role::Draft, 3).unwrap_err();
        assert!(matches!(
            e,
            Error::EmptyDistribution {
                role: Role::Draft,
                position: 3
            }
        ));
        assert_eq!(argmax(&[5.0, 1.0, 5.0], &[0], Role::Target, 0).unwrap(), 2);
    }

    #[test]
    fn non_finite_logits_name_the_position() {
        let e = argmax(&[0.0, f32::NAN], &[], Role::Target, 4).unwrap_err();
        assert!(matches!(
            e,
            Error::NonFiniteLogits {
                position: 4,
                token: 1,
                ..
            }
        ));
        let e = warp(
            &[f32::INFINITY],
            &SamplingParams::with_temperature(1.0),
            &[],
            Role::Draft,
            0,
        );
        assert!(e.is_err());
    }

    #[test]
    fn validation_names_the_setting() {
        for (params, name) in [
            (SamplingParams::with_temperature(-1.0), "temperature"),
            (SamplingParams::with_temperature(f32::NAN), "temperature"),
            (
                SamplingParams::with_temperature(f32::INFINITY),
                "temperature",
            ),
            (
                SamplingParams {
                    top_k: Some(0),
                    ..SamplingParams::with_temperature(1.0)
                },
                "top_k",
            ),
            (
                SamplingParams {
                    top_p: Some(0.0),
                    ..SamplingParams::with_temperature(1.0)
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: Some(1.5),
                    ..SamplingParams::with_temperature(1.0)
                },
                "top_p",
            ),
        ] {
            match params.validate() {
                Err(Error::InvalidSetting { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{params:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn seeded_draws_are_reproducible_and_skip_zero_mass() {
        let probs = [0.0, 0.25, 0.0, 0.75, 0.0];
        let draw = |seed| {
            let mut r = SeededRandom::new(seed);
            (0..200).map(|_| r.categorical(&probs)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).iter().all(|&i| i == 1 || i == 3));
    }
}
