//! How the generator picks tokens in each mode: greedy, rejection sampling
//! and reproducible sampling, for a drafter and for the target's verdict.

use super::{argmax, greedy_confidence, gumbel, warp, Distribution, RandomSource, SamplingParams};
use crate::error::Result;

/// How sampled tokens are chosen and verified (greedy decoding, temperature
/// 0, ignores it: the target's argmax is the output either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplingMode {
    /// Rejection sampling (Leviathan et al. 2023), the default: a draft
    /// token `d` drawn from `q` is accepted with probability
    /// `min(1, p(d) / q(d))`, which accepts as often as any exact scheme
    /// can (`1 - TV(p, q)` per token). Draws come from the generation's
    /// [`RandomSource`] in order, so for a fixed seed the sampled tokens
    /// depend on the draft and on the windows.
    #[default]
    Rejection,
    /// Reproducible sampling: Gumbel-max with noise keyed by `(seed,
    /// position, token)` (see [`gumbel`]). Each position's token is
    /// `argmax_v (ln p_t(v) + g(t, v))`, an exact draw from the target's
    /// warped `p_t`; a model draft proposes `argmax_v (ln q_t(v) + g(t,
    /// v))` with the same noise and is accepted iff it equals the target's
    /// choice. For a seed, the output is token for token what plain
    /// decoding in this mode writes, whatever the draft, `k` or adaptive
    /// windows. Acceptance is lower than rejection sampling's (at least
    /// `(1 - TV) / (1 + TV)`). The [`RandomSource`] is not used.
    ///
    /// "Token for token" assumes, as greedy identity does, that the target
    /// gives a position the same logits bit for bit whatever the window it
    /// is scored in (the candle CPU backend in f32 with dense weights does,
    /// see [`LanguageModel`](crate::LanguageModel)). On a backend that only
    /// meets the contract's 1e-4 (bf16 on an accelerator), two tokens whose
    /// noisy scores are within that rounding can swap, and the texts of two
    /// window settings can part there; each still follows the target's
    /// distribution.
    Reproducible,
}

/// The token-choosing rule of one generation: sampling parameters, mode,
/// seed and suppressed ids, applied alike to a model drafter's rows and to
/// the target's.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    mode: SamplingMode,
    seed: u64,
    suppress: Vec<u32>,
}

/// A token a drafter picked.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The draft token.
    pub token: u32,
    /// The distribution it was drawn from at random (rejection sampling);
    /// `None` when it was chosen outright (greedy, reproducible), where the
    /// verifier needs no `q`.
    pub q: Option<Distribution>,
}

/// A greedy draft model's pick: `token` with `sure`, its confidence (asked
/// for where `min_draft_confidence > 0`), or `None` when that is below
/// `min_draft_confidence`.
pub(crate) fn greedy_draft(
    token: u32,
    sure: Option<f32>,
    min_draft_confidence: f32,
) -> Option<Pick> {
    if min_draft_confidence > 0.0 && sure.is_some_and(|s| s < min_draft_confidence) {
        None
    } else {
        Some(Pick { token, q: None })
    }
}

impl Sampler {
    /// The rule for `params` in `mode`, with noise keyed by `seed` in
    /// reproducible mode; `suppress`ed ids get probability 0.
    pub fn new(params: SamplingParams, mode: SamplingMode, seed: u64, suppress: Vec<u32>) -> Self {
        Self {
            params,
            mode,
            seed,
            suppress,
        }
    }

    /// The warping settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// True for greedy decoding (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.params.is_greedy()
    }

    /// The mode of sampled decoding.
    pub fn mode(&self) -> SamplingMode {
        self.mode
    }

    /// The seed of reproducible mode's noise.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Ids that get probability 0 (EOS under [`Eos::Ignore`](crate::Eos::Ignore)).
    pub fn suppressed(&self) -> &[u32] {
        &self.suppress
    }

    /// The distribution `row` (`[vocab]` logits) is sampled from.
    pub fn distribution(&self, row: &[f32], index: usize) -> Result<Distribution> {
        warp(row, &self.params, &self.suppress, index)
    }

    /// A draft model's pick of the draft token at absolute `position` from
    /// its logits `row`, or `None` when its confidence (the most likely
    /// token's probability) is below `min_draft_confidence` (0 never stops).
    /// Whether to stop is settled before any random draw, from the draft's
    /// distribution for this position alone, so stopping never depends on
    /// the token it would have drawn.
    pub fn pick_draft_token(
        &self,
        row: &[f32],
        position: usize,
        min_draft_confidence: f32,
        rng: &mut dyn RandomSource,
    ) -> Result<Option<Pick>> {
        if self.is_greedy() {
            let token = argmax(row, &self.suppress, 0)?;
            let sure =
                (min_draft_confidence > 0.0).then(|| greedy_confidence(row, token, &self.suppress));
            return Ok(greedy_draft(token, sure, min_draft_confidence));
        }
        let q = self.distribution(row, 0)?;
        let sure = q.max_prob();
        if sure < min_draft_confidence as f64 {
            return Ok(None);
        }
        Ok(Some(match self.mode {
            SamplingMode::Rejection => Pick {
                token: q.sample(rng),
                q: Some(q),
            },
            SamplingMode::Reproducible => Pick {
                token: gumbel::choose(&q, self.seed, position),
                q: None,
            },
        }))
    }
}
