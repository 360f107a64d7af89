//! The sampler: logits + settings -> a normalized distribution, and how a
//! token is chosen from it.
//!
//! Both models' logits go through the *same* [`warp()`]: suppression, then
//! temperature, top-k, top-p and min-p (top-p's cut decided on `f32`
//! weights), the kept tokens' probabilities in `f64`, stored sparse when a
//! cut keeps a part of the vocabulary (see [`warping`]). The draft's
//! token is drawn from exactly the distribution `q` that [`warp()`] returns, and
//! that same `q` is what the verifier divides by. Nothing here hands out a
//! token without the distribution it came from.
//!
//! One concern per module: [`warping`] (logits to a distribution),
//! [`greedy`] (argmax and a greedy draft's confidence), [`gumbel`] (noise
//! keyed by seed, position and token, for reproducible sampling) and
//! [`random`] (the sequential random source of rejection sampling).
//! [`Sampler`] puts them together: how the generator picks a token in each
//! mode.

pub mod greedy;
pub mod gumbel;
pub mod random;
mod sampler;
pub mod warping;

pub(crate) use greedy::greedy_pick;
pub use greedy::{argmax, check_finite, greedy_confidence, Confidence};
pub use random::{RandomSource, SeededRandom};
pub(crate) use sampler::greedy_draft;
pub use sampler::{Pick, Sampler, SamplingMode};
pub use warping::warp;

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
    /// in `(0, 1]` (the mass measured on single-precision weights, within
    /// about 1e-6 relative; see [`warping`]). 1 keeps every token.
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

/// A probability distribution over the vocabulary: `vocab` ids, entries
/// `>= 0` summing to 1 (to rounding), in `f64`.
///
/// Stored dense (`[vocab]` probabilities) or sparse (the ids with mass in
/// ascending order, and their probabilities): [`warp()`] with top-k or
/// top-p keeps a few hundred of a 32k-152k vocabulary, and a sparse row is
/// warped, looked up and drawn from without touching the rest. Both forms
/// answer every method alike; [`probs`](Self::probs) builds the dense
/// `[vocab]` view of a sparse one on first use.
#[derive(Debug, Clone)]
pub struct Distribution {
    vocab: usize,
    /// `None`: dense, `probs` is `[vocab]`. `Some(ids)`: sparse, ascending,
    /// `probs[j]` belongs to `ids[j]` (an entry may be 0).
    ids: Option<Vec<u32>>,
    probs: Vec<f64>,
    /// The dense view of a sparse distribution, built on first use.
    dense: std::sync::OnceLock<Vec<f64>>,
}

impl PartialEq for Distribution {
    /// Equal when the vocabularies and every id's probability are equal,
    /// whichever form each is stored in.
    fn eq(&self, other: &Self) -> bool {
        self.vocab == other.vocab && self.support().eq(other.support())
    }
}

impl Distribution {
    /// Normalizes nonnegative finite `weights`; `None` if they sum to 0 or are
    /// not all finite and nonnegative.
    pub fn from_weights(mut weights: Vec<f64>) -> Option<Self> {
        let dense = |probs: Vec<f64>| Self {
            vocab: probs.len(),
            ids: None,
            probs,
            dense: std::sync::OnceLock::new(),
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { normalize_avx2(&mut weights) }.then(|| dense(weights));
        }
        normalize(&mut weights).then(|| dense(weights))
    }

    /// A sparse distribution over `vocab` ids: `ids` (ascending, each below
    /// `vocab`) with nonnegative finite `weights` (`[ids.len()]`), normalized
    /// by their sum (eight fixed lanes over `weights` in order); every other
    /// id gets 0. `None` if the lengths differ, an id is out of order or
    /// range, or the weights are not finite, nonnegative and of positive
    /// sum.
    pub fn from_sparse_weights(vocab: usize, ids: Vec<u32>, mut weights: Vec<f64>) -> Option<Self> {
        let ordered = ids.windows(2).all(|w| w[0] < w[1]);
        let in_range = ids.last().is_none_or(|&last| (last as usize) < vocab);
        if ids.len() != weights.len() || !ordered || !in_range || !normalize(&mut weights) {
            return None;
        }
        Some(Self {
            vocab,
            ids: Some(ids),
            probs: weights,
            dense: std::sync::OnceLock::new(),
        })
    }

    /// All-mass-on-`token` distribution over `vocab` ids (stored sparse).
    ///
    /// # Panics
    /// If `token >= vocab`.
    pub fn point(token: u32, vocab: usize) -> Self {
        assert!(
            (token as usize) < vocab,
            "token {token} outside vocabulary of {vocab}"
        );
        Self {
            vocab,
            ids: Some(vec![token]),
            probs: vec![1.0],
            dense: std::sync::OnceLock::new(),
        }
    }

    /// Probabilities, `[vocab]` (for a sparse distribution, built on the
    /// first call: `8 * vocab` bytes).
    pub fn probs(&self) -> &[f64] {
        match &self.ids {
            None => &self.probs,
            Some(ids) => self.dense.get_or_init(|| {
                let mut dense = vec![0.0; self.vocab];
                for (&id, &p) in ids.iter().zip(&self.probs) {
                    dense[id as usize] = p;
                }
                dense
            }),
        }
    }

    /// Probability of `token` (0 outside the vocabulary).
    pub fn prob(&self, token: u32) -> f64 {
        match &self.ids {
            None => self.probs.get(token as usize).copied().unwrap_or(0.0),
            Some(ids) => ids.binary_search(&token).map_or(0.0, |j| self.probs[j]),
        }
    }

    /// The ids with mass and their probabilities, `(id, p)` with `p > 0`,
    /// in ascending id order.
    pub fn support(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        let ids = self.ids.as_deref();
        self.probs
            .iter()
            .enumerate()
            .map(move |(j, &p)| (ids.map_or(j as u32, |ids| ids[j]), p))
            .filter(|&(_, p)| p > 0.0)
    }

    /// The largest probability.
    pub fn max_prob(&self) -> f64 {
        self.probs.iter().copied().fold(0.0, f64::max)
    }

    /// Draws a token with `rng`: one [`RandomSource::categorical`] call,
    /// given the `[vocab]` probabilities of a dense distribution, or the
    /// stored entries (ids ascending) of a sparse one, its answer mapped
    /// back to the id. [`SeededRandom`] skips zero entries and sums in
    /// order, so it draws the same token from either form.
    pub fn sample(&self, rng: &mut dyn RandomSource) -> u32 {
        let j = rng.categorical(&self.probs);
        match &self.ids {
            None => j as u32,
            Some(ids) => ids[j],
        }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.vocab
    }

    /// True for an empty vocabulary (never produced by [`warp()`]).
    pub fn is_empty(&self) -> bool {
        self.vocab == 0
    }

    /// Number of stored entries: `vocab` for a dense distribution, the
    /// kept ids for a sparse one (an upper bound on the ids with mass).
    pub fn stored(&self) -> usize {
        self.probs.len()
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
///
/// Computed over `p`'s ids with mass alone (the residual is 0 elsewhere) and
/// returned sparse over them, so a row `p` that top-k or top-p cut costs its
/// kept ids, not the vocabulary.
pub fn residual(p: &Distribution, q: &Distribution) -> Option<Distribution> {
    let (ids, weights): (Vec<u32>, Vec<f64>) = p
        .support()
        .map(|(id, pi)| (id, (pi - q.prob(id)).max(0.0)))
        .unzip();
    Distribution::from_sparse_weights(p.len(), ids, weights)
}

/// `p` with `token` removed and the rest renormalized: the residual of a
/// rejection when `q` is the point mass on `token` (`norm(max(0, p -
/// q))`), computed as [`residual`] does, over `p`'s ids with mass. `None`
/// when `token` holds all of `p`'s mass.
pub(crate) fn without(p: &Distribution, token: u32) -> Option<Distribution> {
    let (ids, weights): (Vec<u32>, Vec<f64>) = p
        .support()
        .map(|(id, pi)| (id, if id == token { 0.0 } else { pi }))
        .unzip();
    Distribution::from_sparse_weights(p.len(), ids, weights)
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

    #[test]
    fn sparse_distributions_check_their_input_and_equal_their_dense_form() {
        let sparse =
            |ids: &[u32], w: &[f64]| Distribution::from_sparse_weights(5, ids.to_vec(), w.to_vec());
        let d = sparse(&[1, 3], &[1.0, 3.0]).unwrap();
        assert_eq!(d.probs(), &[0.0, 0.25, 0.0, 0.75, 0.0]);
        assert_eq!((d.len(), d.stored(), d.max_prob()), (5, 2, 0.75));
        assert_eq!((d.prob(3), d.prob(2), d.prob(99)), (0.75, 0.0, 0.0));
        assert_eq!(d.support().collect::<Vec<_>>(), vec![(1, 0.25), (3, 0.75)]);
        let dense = Distribution::from_weights(vec![0.0, 1.0, 0.0, 3.0, 0.0]).unwrap();
        assert_eq!(d, dense);
        assert_ne!(
            d,
            Distribution::from_weights(vec![0.0, 1.0, 0.0, 3.0]).unwrap()
        );
        assert_ne!(d, sparse(&[1, 4], &[1.0, 3.0]).unwrap());
        // Zero entries are stored but are not support.
        let z = sparse(&[0, 2, 4], &[0.0, 2.0, 0.0]).unwrap();
        assert_eq!(z, Distribution::point(2, 5));
        assert_eq!(z.support().count(), 1);
        for (ids, w) in [
            (&[3u32, 1][..], &[1.0, 1.0][..]), // out of order
            (&[1, 1], &[1.0, 1.0]),            // repeated
            (&[5], &[1.0]),                    // outside the vocabulary
            (&[1, 2], &[1.0]),                 // lengths differ
            (&[1, 2], &[1.0, -1.0]),
            (&[1, 2], &[1.0, f64::NAN]),
            (&[1, 2], &[1.0, f64::INFINITY]),
            (&[1, 2], &[0.0, 0.0]),
            (&[], &[]),
        ] {
            assert!(sparse(ids, w).is_none(), "{ids:?} {w:?}");
        }
    }

    #[test]
    fn residuals_are_over_the_support_of_p() {
        let p = Distribution::from_sparse_weights(6, vec![1, 2, 4], vec![0.5, 0.3, 0.2]).unwrap();
        let q = Distribution::from_weights(vec![0.1, 0.4, 0.1, 0.0, 0.1, 0.3]).unwrap();
        let r = residual(&p, &q).unwrap();
        // max(0, p - q) = [0, 0.1, 0.2, 0, 0.1, 0] over the ids 1, 2, 4.
        let want = [0.0, 0.25, 0.5, 0.0, 0.25, 0.0];
        for (got, want) in r.probs().iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", r.probs());
        }
        assert!(r.stored() <= 3);
        assert!(residual(&p, &p).is_none());
        let w = without(&p, 1).unwrap();
        assert_eq!(w.support().map(|(i, _)| i).collect::<Vec<_>>(), vec![2, 4]);
        assert!((w.prob(2) - 0.6).abs() < 1e-15);
        assert!(without(&Distribution::point(3, 6), 3).is_none());
    }
}
