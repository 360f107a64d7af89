//! Reproducible sampling: Gumbel-max with noise keyed by position.
//!
//! For a seed `s`, an absolute position `t` (index in prompt + output) and a
//! token `v`, [`uniform`]`(s, t, v)` is a number in `(0, 1)` computed by a
//! counter-based hash of `(s, t, v)` (SplitMix64's mixing function applied
//! three times, as Philox and Threefry in JAX and cuRAND turn a key and a
//! counter into random bits): no sequential state, so any process that
//! knows the seed and the position computes the same noise.
//! [`gumbel_noise`]`(s, t, v) = -ln(-ln u)` is then a standard Gumbel variate, and
//! independent across tokens and positions (to the quality of the hash).
//!
//! The Gumbel-max trick: `argmax_v (ln p(v) + g(t, v))` is distributed
//! exactly as `p`. The same argmax is `argmax_v p(v) / E(t, v)` with
//! `E = -ln u` a standard exponential (the exponential race), since
//! `ln p - ln E` is monotone in `p / E`; [`choose`] computes that form and
//! skips the logarithm of every token that cannot win, which is nearly all
//! of them. [`argmax_with_noise`] is the plain form, for any noise.
//!
//! Used for speculation, every party uses the same noise: the draft
//! proposes `argmax_v (ln q_t(v) + g(t, v))`, the target's choice is
//! `argmax_v (ln p_t(v) + g(t, v))`, and a draft token is accepted iff the
//! two are equal (Daliri et al. 2024, arXiv 2408.07978). What is committed
//! at `t` is then always the target's choice, the token plain decoding in
//! this mode writes there, whatever the draft proposed.

use super::Distribution;

/// SplitMix64's finalizer: a bijection of `u64` whose output bits each
/// depend on every input bit.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits keyed by `(seed, position, token)`.
#[inline(always)]
fn bits(seed_key: u64, position: u64, token: u32) -> u64 {
    // `seed_key` is `mix(seed ^ A)`; each later step xors a distinct odd
    // multiple of its counter into the state and mixes again.
    let h = mix(seed_key ^ position.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    mix(h ^ (token as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03))
}

#[inline(always)]
fn seed_key(seed: u64) -> u64 {
    mix(seed ^ 0x243f_6a88_85a3_08d3)
}

/// The top 52 bits as a float in `(0, 1)`: `(b + 1/2) / 2^52`, exactly
/// representable, so never 0 or 1 (with 53 bits the largest would round
/// up to 1).
#[inline(always)]
fn to_unit(bits: u64) -> f64 {
    ((bits >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// A uniform number in `(0, 1)` keyed by `(seed, position, token)`: a pure
/// function of the three (no state), strictly inside the interval.
pub fn uniform(seed: u64, position: usize, token: u32) -> f64 {
    to_unit(bits(seed_key(seed), position as u64, token))
}

/// The standard Gumbel variate `-ln(-ln u)` with `u = uniform(seed,
/// position, token)`.
pub fn gumbel_noise(seed: u64, position: usize, token: u32) -> f64 {
    gumbel_of(uniform(seed, position, token))
}

fn gumbel_of(u: f64) -> f64 {
    -(-u.ln()).ln()
}

/// `argmax_v (ln p(v) + noise(v))` over the tokens with `p(v) > 0`, the
/// lowest id among ties: with Gumbel noise, an exact draw from `p`. The
/// plain form, for tests and for noises other than [`gumbel_noise`].
pub fn argmax_with_noise(p: &Distribution, mut noise: impl FnMut(u32) -> f64) -> u32 {
    let mut best = (0u32, f64::NEG_INFINITY);
    for (v, pv) in p.support() {
        let score = pv.ln() + noise(v);
        if score > best.1 {
            best = (v, score);
        }
    }
    best.0
}

/// The reproducible choice at absolute `position`: `argmax_v (ln p(v) +
/// gumbel_noise(seed, position, v))`, an exact draw from `p` that depends only on
/// `p`, `seed` and `position`. The lowest id wins a tie (probability 0).
///
/// Computed as the exponential race `argmax_v p(v) / E(v)`, `E = -ln u`.
/// Since `E >= 1 - u`, a token with `1 - u >= p(v) / best` cannot beat the
/// best ratio so far and its logarithm is skipped (with a margin of 1e-9
/// that rounding cannot cross), so only a handful of the vocabulary's
/// tokens cost a logarithm.
pub fn choose(p: &Distribution, seed: u64, position: usize) -> u32 {
    let key = seed_key(seed);
    let position = position as u64;
    // The best ratio so far (0 = none yet) and its token.
    let (mut best, mut best_v) = (0.0f64, 0u32);
    for (v, pv) in p.support() {
        let u = to_unit(bits(key, position, v));
        if best > 0.0 && 1.0 - u >= pv / best * (1.0 + 1e-9) {
            continue; // E >= 1 - u >= pv / best: pv / E <= best
        }
        let ratio = pv / -u.ln();
        if ratio > best {
            (best, best_v) = (ratio, v);
        }
    }
    best_v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(w: &[f64]) -> Distribution {
        Distribution::from_weights(w.to_vec()).unwrap()
    }

    #[test]
    fn noise_is_a_pure_function_of_its_key_and_inside_the_unit_interval() {
        assert_eq!(uniform(7, 3, 5), uniform(7, 3, 5));
        assert_ne!(uniform(7, 3, 5), uniform(8, 3, 5));
        assert_ne!(uniform(7, 3, 5), uniform(7, 4, 5));
        assert_ne!(uniform(7, 3, 5), uniform(7, 3, 6));
        assert_eq!(to_unit(0), 0.5 / (1u64 << 52) as f64);
        assert_eq!(to_unit(u64::MAX), 1.0 - 0.5 / (1u64 << 52) as f64);
        assert!(to_unit(u64::MAX) < 1.0 && gumbel_of(to_unit(u64::MAX)).is_finite());
        assert!(gumbel_of(to_unit(0)).is_finite());
        // Mean and variance of 100,000 uniforms: 1/2 and 1/12.
        let n = 100_000;
        let us: Vec<f64> = (0..n)
            .map(|i| uniform(1, i / 100, (i % 100) as u32))
            .collect();
        let mean = us.iter().sum::<f64>() / n as f64;
        let var = us.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "{var}");
        // The Gumbel's mean is the Euler-Mascheroni constant.
        let g = (0..n).map(|i| gumbel_noise(2, i, 9)).sum::<f64>() / n as f64;
        assert!((g - 0.577_215_66).abs() < 0.02, "{g}");
    }

    #[test]
    fn the_fast_race_picks_what_the_plain_gumbel_argmax_picks() {
        let vocab = 300;
        for case in 0..200u64 {
            // Peaked and flat distributions, with zeros.
            let spread = [0.3, 2.0, 8.0][case as usize % 3];
            let w: Vec<f64> = (0..vocab)
                .map(|v| {
                    if (v as u64 + case).is_multiple_of(7) {
                        0.0
                    } else {
                        (-(((v * 7919 + case as usize * 31) % 301) as f64) / 301.0 * spread).exp()
                    }
                })
                .collect();
            let p = dist(&w);
            for position in [0usize, 17, 1 << 20] {
                let want = argmax_with_noise(&p, |v| gumbel_noise(case, position, v));
                assert_eq!(choose(&p, case, position), want, "case {case}");
            }
        }
        assert_eq!(choose(&Distribution::point(4, 9), 1, 1), 4);
    }

    #[test]
    fn choices_follow_the_distribution() {
        let p = dist(&[0.5, 0.0, 0.2, 0.3]);
        let mut counts = [0usize; 4];
        let n = 200_000;
        for position in 0..n {
            counts[choose(&p, 11, position) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, want) in counts.iter().zip(p.probs()) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.005, "{counts:?}");
        }
    }
}
