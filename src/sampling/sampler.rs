//! How the generator picks tokens in each mode: greedy, rejection sampling
//! and reproducible sampling, for a drafter and for the target's verdict.

use super::{argmax, greedy_confidence, gumbel, warp, Distribution, RandomSource, SamplingParams};
use crate::error::{Result, Role};
use crate::model::Logits;
use crate::verify::{verify_point_with, verify_sampled_with, verify_token_match, Verdict};

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

    /// Ids that get probability 0 (EOS under [`Eos::Ignore`](crate::Eos::Ignore)).
    pub fn suppressed(&self) -> &[u32] {
        &self.suppress
    }

    /// The distribution `row` (`[vocab]` logits) is sampled from.
    pub fn distribution(&self, row: &[f32], role: Role, index: usize) -> Result<Distribution> {
        warp(row, &self.params, &self.suppress, role, index)
    }

    /// A model drafter's pick for absolute `position` from its logits `row`,
    /// or `None` when its confidence is below `stop_below` (0 never stops).
    /// Whether to stop is settled before any random draw, from the draft's
    /// distribution for this position alone, so stopping never depends on
    /// the token it would have drawn.
    pub fn draft(
        &self,
        row: &[f32],
        position: usize,
        stop_below: f32,
        rng: &mut dyn RandomSource,
    ) -> Result<Option<Pick>> {
        if self.is_greedy() {
            let token = argmax(row, &self.suppress, Role::Draft, 0)?;
            if stop_below > 0.0 && greedy_confidence(row, token, &self.suppress) < stop_below {
                return Ok(None);
            }
            return Ok(Some(Pick { token, q: None }));
        }
        let q = self.distribution(row, Role::Draft, 0)?;
        let sure = q.max_prob();
        if sure < stop_below as f64 {
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

    /// The target's verdict on one window. `logits`: `[m + 1, vocab]`, row
    /// `i` for absolute position `position + i`; `drafts`: `[m]`; `q`: the
    /// distributions the drafts were drawn from (`[m]`), or empty when each
    /// was chosen outright, which rejection sampling treats as a point mass.
    pub fn verify(
        &self,
        logits: &Logits,
        position: usize,
        drafts: &[u32],
        q: &[Distribution],
        rng: &mut dyn RandomSource,
    ) -> Result<Verdict> {
        let p = |i: usize| self.distribution(logits.row(i), Role::Target, i);
        if self.is_greedy() {
            return verify_token_match(drafts, |i| {
                argmax(logits.row(i), &self.suppress, Role::Target, i)
            });
        }
        match self.mode {
            SamplingMode::Reproducible => verify_token_match(drafts, |i| {
                Ok(gumbel::choose(&p(i)?, self.seed, position + i))
            }),
            SamplingMode::Rejection => {
                // The target's rows are warped only as far as verification
                // reads them (up to the first rejection); large rows two at
                // a time on rayon. Each row is the same function of its
                // logits either way, so the verdict and draws are too.
                let rows = drafts.len() + 1;
                let pairs = rows > 1 && logits.vocab() >= 1 << 13;
                let mut ahead: Option<(usize, Result<Distribution>)> = None;
                let mut p_of = |i: usize| -> Result<Distribution> {
                    if let Some((j, row)) = ahead.take() {
                        if j == i {
                            return row;
                        }
                    }
                    if pairs && i + 1 < rows {
                        let (this, next) = rayon::join(|| p(i), || p(i + 1));
                        ahead = Some((i + 1, next));
                        return this;
                    }
                    p(i)
                };
                if q.is_empty() {
                    verify_point_with(drafts, &mut p_of, rng)
                } else {
                    verify_sampled_with(drafts, q, &mut p_of, rng)
                }
            }
        }
    }
}
