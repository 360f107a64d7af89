//! Greedy choice: the argmax of a logits row, and how sure a greedy draft
//! is of it.

use crate::error::{Error, Result};

/// Whether a greedy choice comes with its confidence
/// ([`greedy_confidence`]), in
/// [`LanguageModel::forward_last_greedy`](crate::LanguageModel::forward_last_greedy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    /// The id alone: no drafting stop depends on it.
    Skip,
    /// The id and its softmax probability: the drafter compares it with
    /// [`min_draft_confidence`](crate::GenerateConfig::min_draft_confidence).
    Wanted,
}

/// Checks a logits row for NaN and +inf; `-inf` is allowed (a masked token).
pub fn check_finite(row: &[f32], position: usize) -> Result<()> {
    match row.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
        None => Ok(()),
        Some(token) => Err(Error::NonFiniteLogits {
            role: None,
            position,
            token: token as u32,
            value: row[token],
        }),
    }
}

/// Greedy choice: the id of the largest logit not in `suppress` (the lowest
/// id among ties). Errors on NaN / +inf, or when every token is suppressed or
/// `-inf`.
pub fn argmax(row: &[f32], suppress: &[u32], position: usize) -> Result<u32> {
    // Fast path, all vectorized: the largest logit and whether any is NaN or
    // +inf in one pass, then the first id holding it. A row like that is
    // answered unless the winner is suppressed or -inf.
    let (max, bad) = max_and_bad(row);
    if bad {
        check_finite(row, position)?;
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
    best.map(|(i, _)| i as u32).ok_or(Error::EmptyDistribution {
        role: None,
        position,
    })
}

/// The largest value of `row` (`-inf` if empty), and whether it holds a NaN
/// or `+inf`. Sixteen independent lanes, so the loop vectorizes.
pub(super) fn max_and_bad(row: &[f32]) -> (f32, bool) {
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

/// A row's greedy choice ([`argmax`], row 0 in errors) and, when
/// `confidence` is [`Confidence::Wanted`], its [`greedy_confidence`]: what
/// [`LanguageModel::forward_last_greedy`](crate::LanguageModel::forward_last_greedy)
/// returns by default.
pub(crate) fn greedy_pick(
    row: &[f32],
    suppress: &[u32],
    confidence: Confidence,
) -> Result<(u32, Option<f32>)> {
    let token = argmax(row, suppress, 0)?;
    Ok((
        token,
        (confidence == Confidence::Wanted).then(|| greedy_confidence(row, token, suppress)),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{warp, SamplingParams};
    use rand::{Rng, SeedableRng};

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
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for vocab in [1usize, 7, 8, 9, 100, 8192] {
            let row: Vec<f32> = (0..vocab)
                .map(|_| (rng.random::<f64>() * 30.0 - 15.0) as f32)
                .collect();
            let suppress: Vec<u32> = if vocab > 2 { vec![1, 1, 2] } else { vec![] };
            let best = argmax(&row, &suppress, 0).unwrap();
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

    #[test]
    fn non_finite_logits_name_the_position() {
        let e = argmax(&[0.0, f32::NAN], &[], 4).unwrap_err();
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
            0,
        );
        assert!(e.is_err());
    }
}
