//! The sampler: logits + settings -> a normalized distribution, and how a
//! token is chosen from it.
//!
//! Both models' logits go through the *same* [`warp()`]: suppression, then
//! temperature, top-k, top-p and min-p, then a softmax in `f64`. The draft's
//! token is drawn from exactly the distribution `q` that [`warp()`] returns, and
//! that same `q` is what the verifier divides by. Nothing here hands out a
//! token without the distribution it came from.
//!
//! One concern per module: [`warp`](mod@warp) (logits to a distribution),
//! [`greedy`] (argmax and a greedy draft's confidence), [`gumbel`] (noise
//! keyed by seed, position and token, for reproducible sampling) and
//! [`random`] (the sequential random source of rejection sampling).
//! [`Sampler`] puts them together: how the generator picks a token in each
//! mode.

pub mod greedy;
pub mod gumbel;
pub mod random;
mod sampler;
pub mod warp;

pub(crate) use greedy::greedy_pick;
pub use greedy::{argmax, check_finite, greedy_confidence};
pub use random::{RandomSource, SeededRandom};
pub(crate) use sampler::greedy_draft;
pub use sampler::{Pick, Sampler, SamplingMode};
pub use warp::warp;

use crate::error::{Error, Result};

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

    /// True for an empty vocabulary (never produced by [`warp()`]).
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }
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
}
