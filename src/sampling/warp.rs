//! Warping: a logits row and [`SamplingParams`] to the distribution tokens
//! are drawn from.

use super::greedy::{check_finite, max_and_bad};
use super::{Distribution, SamplingParams};
use crate::error::{Error, Result, Role};

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
/// `params` must not be greedy (use [`argmax`](super::argmax)); `role` and `position` only
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
        // What is kept is a prefix of the order (weight descending, lower id
        // first): everything up to its last member, zeroed in place.
        let kept = top_k_top_p(&probs, params);
        match kept.last() {
            None => probs.iter_mut().for_each(|p| *p = 0.0),
            Some(&last) => {
                let cut = probs[last as usize];
                for (i, p) in probs.iter_mut().enumerate() {
                    if *p < cut || (*p == cut && i as u32 > last) {
                        *p = 0.0;
                    }
                }
            }
        }
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
    if let (None, Some(top_p)) = (params.top_k, params.top_p) {
        return top_p_only(weights, top_p as f64);
    }
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

/// Top-p alone: the shortest prefix of the ids sorted by descending weight
/// (lower id first among ties) whose mass, summed in that order, reaches
/// `top_p` of the total; everything if rounding keeps the sum below it.
///
/// The same prefix as a full sort gives, without one: the mass per octave
/// of weight (one pass over the exponent bits) says below which octave the
/// cut must lie; only the ids above it are sorted and summed, in sorted
/// order, and one more octave is taken in if their sum falls short. A
/// language model's nucleus is a few hundred of 32k-152k ids, and the
/// selection-based cut it replaces cost ~400 us a row at 32k.
fn top_p_only(weights: &[f64], top_p: f64) -> Vec<u32> {
    const OCTAVES: usize = 64;
    // Weights are at most 1 (the largest is exp(0)): octave b holds
    // [2^-b, 2^(1-b)), the last one everything smaller. Larger weights
    // never fall in a later octave, so "octave <= b" is a prefix of the
    // sorted order, ties included.
    let octave = |w: f64| -> usize {
        let exponent = ((w.to_bits() >> 52) & 0x7ff) as i64 - 1023;
        (-exponent).clamp(0, OCTAVES as i64 - 1) as usize
    };
    let mut mass = [0.0f64; OCTAVES];
    let mut total = 0.0;
    for &w in weights {
        if w > 0.0 {
            mass[octave(w)] += w;
            total += w;
        }
    }
    let target = top_p * total;
    let mut last = 0;
    let mut acc = 0.0;
    while last < OCTAVES - 1 {
        acc += mass[last];
        if acc >= target {
            break;
        }
        last += 1;
    }
    let cmp = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    loop {
        let mut order: Vec<u32> = (0..weights.len() as u32)
            .filter(|&i| {
                let w = weights[i as usize];
                w > 0.0 && octave(w) <= last
            })
            .collect();
        order.sort_unstable_by(cmp);
        let mut sum = 0.0;
        if let Some(n) = order.iter().position(|&i| {
            sum += weights[i as usize];
            sum >= target
        }) {
            order.truncate(n + 1);
            return order;
        }
        if last == OCTAVES - 1 {
            return order; // rounding: keep everything
        }
        last += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::argmax;

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
        // Distinct weights at three spreads, then many ties (20 levels) and
        // a power law with zeros, as a language model's row with suppressed
        // ids gives.
        let rows: Vec<Vec<f64>> = [0.5f64, 5.0, 40.0]
            .iter()
            .map(|spread| {
                (0..3000)
                    .map(|i| (-(((i * 7919) % 3001) as f64 / 3001.0) * spread).exp())
                    .collect()
            })
            .chain([
                (0..3000)
                    .map(|i| (-(((i * 7919) % 20) as f64)).exp())
                    .collect(),
                (0..3000u64)
                    .map(|i| match i % 97 {
                        0 => 0.0,
                        _ => (1.0 + ((i * 7919) % 3000) as f64).powf(-1.6),
                    })
                    .collect(),
            ])
            .collect();
        for (row, w) in rows.iter().enumerate() {
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
                    top_k_top_p(w, &params),
                    full(w, &params),
                    "row {row} {params:?}"
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
}
