//! How the generator picks tokens in each mode: greedy, rejection sampling
//! and reproducible sampling, for a drafter and for the target's verdict.

use super::{argmax, greedy_pick, gumbel, warp, Distribution, RandomSource, SamplingParams};
use crate::error::{Error, Result, Role};
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

/// A greedy drafter's pick: `token` with `sure`, its confidence (asked for
/// where `stop_below > 0`), or `None` when that is below `stop_below`.
pub(crate) fn greedy_draft(token: u32, sure: Option<f32>, stop_below: f32) -> Option<Pick> {
    if stop_below > 0.0 && sure.is_some_and(|s| s < stop_below) {
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
            let (token, sure) = greedy_pick(row, &self.suppress, Role::Draft, stop_below > 0.0)?;
            return Ok(greedy_draft(token, sure, stop_below));
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
        let want_q = if q.is_empty() { 0 } else { drafts.len() };
        if logits.rows() != drafts.len() + 1 || q.len() != want_q {
            return Err(Error::Shape {
                model: Role::Target.to_string(),
                message: format!(
                    "verifying {} drafts takes {} logits rows and {} or 0 draft \
                     distributions; got {} rows and {}",
                    drafts.len(),
                    drafts.len() + 1,
                    drafts.len(),
                    logits.rows(),
                    q.len()
                ),
            });
        }
        let p = |i: usize| self.distribution(logits.row(i), Role::Target, i);
        if self.is_greedy() {
            return verify_token_match(drafts, |i| {
                argmax(logits.row(i), &self.suppress, Role::Target, i)
            });
        }
        match self.mode {
            SamplingMode::Reproducible => {
                let choose = |p_of: &mut dyn FnMut(usize) -> Result<Distribution>| {
                    verify_token_match(drafts, |i| {
                        Ok(gumbel::choose(&p_of(i)?, self.seed, position + i))
                    })
                };
                if helped(drafts.len() + 1, logits.vocab()) {
                    verify_with_helper(drafts.len() + 1, &p, choose)
                } else {
                    choose(&mut &p)
                }
            }
            SamplingMode::Rejection => {
                // The target's rows are warped only as far as verification
                // reads them (up to the first rejection); at a large
                // vocabulary a helper on rayon's pool warps rows ahead
                // while this thread verifies. Each row is the same
                // function of its logits either way, and the draws happen
                // here, in order, so the verdict and draws are too.
                let rows = drafts.len() + 1;
                if helped(rows, logits.vocab()) {
                    return verify_with_helper(rows, &p, |p_of| {
                        if q.is_empty() {
                            verify_point_with(drafts, p_of, rng)
                        } else {
                            verify_sampled_with(drafts, q, p_of, rng)
                        }
                    });
                }
                if q.is_empty() {
                    verify_point_with(drafts, p, rng)
                } else {
                    verify_sampled_with(drafts, q, p, rng)
                }
            }
        }
    }
}

/// Whether a window of `rows` rows of `vocab` logits is warped with a
/// helper ([`verify_with_helper`]): more than one row, a vocabulary where a
/// row's warp outweighs a hand-off to the pool, and a pool of two threads
/// or more.
fn helped(rows: usize, vocab: usize) -> bool {
    rows > 1 && vocab >= 1 << 13 && rayon::current_num_threads() > 1
}

/// Runs `verify` (verification over `rows` window rows, asking for
/// them in order through the `p_of` it is given) while one helper task on
/// rayon's pool warps rows ahead of it. Rows are claimed from a shared
/// counter, by the helper and by this thread whenever the row it waits
/// for is not ready, so two cores share the warping with one hand-off per
/// window (not one per pair of rows), and a window rejected early stops the
/// helper after the row it is on. `p(i)` must be a pure function of `i`:
/// which thread warps a row changes nothing.
fn verify_with_helper<P, V>(rows: usize, p: &P, verify: V) -> Result<Verdict>
where
    P: Fn(usize) -> Result<Distribution> + Sync,
    V: FnOnce(&mut dyn FnMut(usize) -> Result<Distribution>) -> Result<Verdict>,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    // A row's slot holds its warp, or the panic that warping it raised
    // (re-raised on this thread when verification asks for the row, so a
    // panic in the helper cannot leave this thread waiting forever).
    let slots: Vec<Mutex<Option<std::thread::Result<Result<Distribution>>>>> =
        (0..rows).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let lock = |i: usize| slots[i].lock().unwrap_or_else(|e| e.into_inner());
    // Warps the next unclaimed row; false when none is left or the verdict
    // is in.
    let claim = || {
        if done.load(Ordering::Acquire) {
            return false;
        }
        let i = next.fetch_add(1, Ordering::AcqRel);
        if i >= rows {
            return false;
        }
        let row = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p(i)));
        *lock(i) = Some(row);
        true
    };
    rayon::in_place_scope(|scope| {
        scope.spawn(|_| while claim() {});
        let mut p_of = |i: usize| loop {
            match lock(i).take() {
                Some(Ok(row)) => return row,
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => {}
            }
            // Row i is being warped by the helper: warp one further ahead
            // meanwhile, or wait.
            if !claim() {
                std::thread::yield_now();
            }
        };
        let verdict = verify(&mut p_of);
        done.store(true, Ordering::Release);
        verdict
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SeededRandom;
    use crate::verify::{verify_point, verify_sampled};

    /// Language-model-like rows over `vocab` ids, a different shuffle per
    /// row and seed.
    fn rows(n: usize, vocab: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .flat_map(|i| {
                (0..vocab as u64).map(move |v| {
                    let rank = (v * 7919 + seed * 31 + i * 7) % vocab as u64;
                    12.0 - 1.1 * ((1 + rank) as f32).ln()
                })
            })
            .collect()
    }

    /// At a vocabulary where a helper warps rows ahead, the verdicts and
    /// draws are those of verifying the fully warped window: for drafts
    /// accepted to every depth, with and without `q`, over many seeds.
    /// A window whose logits or `q` do not match its drafts is an error.
    #[test]
    fn verify_checks_the_window_shape() {
        let vocab = 9001;
        let sampler = Sampler::new(
            SamplingParams::with_temperature(0.7),
            SamplingMode::Rejection,
            0,
            vec![],
        );
        let target = Logits::new(rows(3, vocab, 2), vocab);
        let q = sampler.distribution(target.row(0), Role::Draft, 0).unwrap();
        let mut rng = SeededRandom::new(1);
        for (drafts, qs) in [
            (vec![1u32, 2, 3], vec![]),
            (vec![1, 2], vec![q.clone()]),
            (vec![1], vec![]),
        ] {
            let err = sampler.verify(&target, 0, &drafts, &qs, &mut rng);
            assert!(
                matches!(err, Err(Error::Shape { .. })),
                "{drafts:?}: {err:?}"
            );
        }
        assert!(sampler.verify(&target, 0, &[1, 2], &[], &mut rng).is_ok());
    }

    /// A panic while warping a row, on the helper or on this thread, comes
    /// back to the caller when verification reaches that row, instead of
    /// leaving it waiting for the row forever.
    #[test]
    fn a_panic_in_a_helped_row_reaches_the_caller() {
        for bad in 0..4 {
            let p = |i: usize| -> Result<Distribution> {
                if i == bad {
                    panic!("row {i}");
                }
                Ok(Distribution::from_weights(vec![1.0, 1.0]).unwrap())
            };
            let got = std::panic::catch_unwind(|| {
                verify_with_helper(4, &p, |p_of| {
                    for i in 0..4 {
                        p_of(i)?;
                    }
                    Ok(Verdict {
                        accepted: 0,
                        next: 0,
                        kind: crate::verify::NextKind::Bonus,
                    })
                })
            });
            assert!(got.is_err(), "row {bad}: the panic was lost");
        }
    }

    #[test]
    fn verifying_with_a_helper_gives_the_sequential_verdicts() {
        let (k, vocab) = (6, 9001);
        let params = SamplingParams {
            top_p: Some(0.95),
            ..SamplingParams::with_temperature(0.7)
        };
        let sampler = Sampler::new(params, SamplingMode::Rejection, 0, vec![3]);
        let target = Logits::new(rows(k + 1, vocab, 2), vocab);
        let p: Vec<Distribution> = (0..=k)
            .map(|i| {
                sampler
                    .distribution(target.row(i), Role::Target, i)
                    .unwrap()
            })
            .collect();
        let draft_logits = Logits::new(rows(k, vocab, 1), vocab);
        let mut depths = std::collections::BTreeSet::new();
        for (seed, same) in (0..40u64).zip([true, false].into_iter().cycle()) {
            // A draft equal to the target (accepted deep) or another one.
            let q: Vec<Distribution> = (0..k)
                .map(|i| {
                    let row = if same {
                        target.row(i)
                    } else {
                        draft_logits.row(i)
                    };
                    sampler.distribution(row, Role::Draft, i).unwrap()
                })
                .collect();
            let mut draw = SeededRandom::new(seed + 1000);
            let drafts: Vec<u32> = q.iter().map(|d| d.sample(&mut draw)).collect();
            let got = sampler
                .verify(&target, 50, &drafts, &q, &mut SeededRandom::new(seed))
                .unwrap();
            let want = verify_sampled(&drafts, &q, &p, &mut SeededRandom::new(seed));
            assert_eq!(got, want, "seed {seed}");
            depths.insert(got.accepted);
            let got = sampler
                .verify(&target, 50, &drafts, &[], &mut SeededRandom::new(seed))
                .unwrap();
            assert_eq!(got, verify_point(&drafts, &p, &mut SeededRandom::new(seed)));
        }
        assert!(depths.len() >= 3, "accepted counts seen: {depths:?}");
        // A bad row is an error when verification reaches it, and only then.
        let mut data = rows(k + 1, vocab, 2);
        data[2 * vocab + 17] = f32::NAN;
        let bad = Logits::new(data, vocab);
        let q: Vec<Distribution> = (0..k)
            .map(|i| sampler.distribution(target.row(i), Role::Draft, i).unwrap())
            .collect();
        let likely: Vec<u32> = (0..k as u32)
            .map(|i| argmax(target.row(i as usize), &[3], Role::Target, 0).unwrap())
            .collect();
        let e = sampler
            .verify(&bad, 50, &likely, &q, &mut SeededRandom::new(1))
            .unwrap_err();
        assert!(matches!(
            e,
            Error::NonFiniteLogits {
                position: 2,
                token: 17,
                ..
            }
        ));
        // The first draft token has q = 0 (q is a point mass on another
        // id), so it is rejected at row 0, whatever the helper warped.
        let mut drafts = likely.clone();
        drafts[0] = p[0]
            .support()
            .map(|(i, _)| i)
            .find(|&i| i != likely[0])
            .unwrap();
        let mut q = q;
        q[0] = Distribution::point(likely[0], vocab);
        let v = sampler
            .verify(&bad, 50, &drafts, &q, &mut SeededRandom::new(1))
            .unwrap();
        assert_eq!(v.accepted, 0);
    }

    /// Reproducible mode with a helper: the target's own keyed choices,
    /// row by row, as without one.
    #[test]
    fn reproducible_verification_with_a_helper_matches_the_plain_choices() {
        let (k, vocab) = (5, 8500);
        let params = SamplingParams {
            top_k: Some(400),
            ..SamplingParams::with_temperature(1.3)
        };
        let sampler = Sampler::new(params, SamplingMode::Reproducible, 77, vec![]);
        let target = Logits::new(rows(k + 1, vocab, 4), vocab);
        let mut depths = std::collections::BTreeSet::new();
        for position in 0..60 {
            let chosen: Vec<u32> = (0..=k)
                .map(|i| {
                    let p = sampler
                        .distribution(target.row(i), Role::Target, i)
                        .unwrap();
                    gumbel::choose(&p, 77, position + i)
                })
                .collect();
            // Drafts that agree with the target's choices up to a depth.
            let depth = position % (k + 1);
            let drafts: Vec<u32> = (0..k)
                .map(|i| {
                    if i < depth {
                        chosen[i]
                    } else {
                        (chosen[i] + 1) % vocab as u32
                    }
                })
                .collect();
            let v = sampler
                .verify(&target, position, &drafts, &[], &mut SeededRandom::new(0))
                .unwrap();
            assert_eq!(
                (v.accepted, v.next),
                (depth, chosen[depth]),
                "position {position}"
            );
            depths.insert(v.accepted);
        }
        assert_eq!(depths.len(), k + 1);
    }
}
