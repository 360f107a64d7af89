//! The verifier: rejection sampling as a pure function.
//!
//! Vocabulary, used the same way in code, docs and stats: a *window* of `k`
//! target positions holds the last committed token plus `k - 1` *draft tokens*
//! `d_1..d_{k-1}`. The verifier *accepts* a prefix `d_1..d_a`, then emits one
//! more token: a *recovered* token when `d_{a+1}` was rejected, or a *bonus*
//! token when all `k - 1` were accepted. Output tokens per window =
//! accepted + 1 (recovered or bonus), between 1 and `k`.
//!
//! Sampling (Leviathan et al. 2023; Chen et al. 2023): accept `d_i` with
//! probability `min(1, p_i(d_i) / q_i(d_i))`; on rejection draw from
//! `norm(max(0, p_i - q_i))`; if all are accepted draw the bonus from
//! `p_{k}`. The committed tokens then follow the target's `p` exactly.
//!
//! A draft token chosen without a distribution (the n-gram drafter's) is a
//! draft whose `q` is a point mass on it: [`verify_point`] accepts it with
//! probability `p_i(d_i)` and on rejection draws from `p_i` with `d_i`
//! removed and renormalized, which is `norm(max(0, p_i - q_i))` for that `q`.
//!
//! Greedy decoding and reproducible sampling verify by *token match*
//! ([`verify_token_match`]): a draft token is accepted iff it equals the
//! target's own choice there (its argmax, or its Gumbel-max choice with the
//! position's keyed noise), and the first mismatch, or the row after the
//! last draft, emits the target's choice.

use std::borrow::Borrow;
use std::convert::Infallible;

use crate::drafter::Proposal;
use crate::error::{Error, Result, Role};
use crate::model::{LanguageModel, Logits};
use crate::sampling::{
    gumbel, residual, without, Distribution, RandomSource, Sampler, SamplingMode,
};

/// What follows the accepted draft tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextKind {
    /// Draft token `accepted` was rejected; this token replaces it.
    Recovered,
    /// Every draft token was accepted; this token comes from the last row.
    Bonus,
}

/// The outcome of verifying one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Number of leading draft tokens kept (`0..=drafted`).
    pub accepted: usize,
    /// The token committed after them.
    pub next: u32,
    /// Whether `next` is a recovered or a bonus token.
    pub kind: NextKind,
}

/// Step 2 of the loop, the whole of it: the target's one pass over the
/// window `tokens` (`[m + 1]`: the last committed token, then the `m`
/// draft tokens of `proposal`) at absolute positions `position..`, and the
/// verdict. Greedy windows ask the target for its choices
/// ([`LanguageModel::forward_greedy`]) and keep the longest agreeing prefix
/// ([`verify_greedy`]); sampled ones take its logits and verify them
/// ([`verify_logits`]). A logits fault names the target.
pub(crate) fn verify_window<T: LanguageModel + ?Sized>(
    target: &mut T,
    sampler: &Sampler,
    tokens: &[u32],
    proposal: &Proposal,
    position: usize,
    rng: &mut dyn RandomSource,
) -> Result<Verdict> {
    let verdict = if sampler.is_greedy() {
        // Ids, not logits: a device backend takes the argmax where the
        // logits are.
        target
            .forward_greedy(tokens, sampler.suppressed())
            .and_then(|choices| {
                if choices.len() != tokens.len() {
                    return Err(Error::Contract {
                        model: target.name().to_string(),
                        message: format!(
                            "forward_greedy of {} tokens returned {} choices",
                            tokens.len(),
                            choices.len()
                        ),
                    });
                }
                Ok(verify_greedy(&proposal.tokens, &choices))
            })
    } else {
        target.forward(tokens).and_then(|logits| {
            logits.expect_shape(tokens.len(), target.vocab_size(), target.name())?;
            verify_logits(
                sampler,
                &logits,
                position,
                &proposal.tokens,
                &proposal.q,
                rng,
            )
        })
    };
    verdict.map_err(|e| e.for_role(Role::Target))
}

/// Sampled verification of one window from the target's logits, as
/// `sampler` picks tokens: rejection sampling ([`verify_sampled_with`], or
/// [`verify_point_with`] when `q` is empty) or, in reproducible mode, a
/// match with the target's keyed Gumbel-max choices
/// ([`verify_token_match`]). `logits`: `[m + 1, vocab]`, row `i` for
/// absolute position `position + i`; `drafts`: `[m]`; `q`: the
/// distributions the draft tokens were drawn from (`[m]`), or empty when
/// each was chosen outright, which rejection sampling treats as a point
/// mass. The rows are warped only as far as verification reads them.
///
/// Errors with [`Error::InvalidSetting`] for a greedy `sampler` (greedy
/// windows are verified on the target's choices, by [`verify_greedy`]),
/// and with [`Error::Contract`] when the shapes do not line up.
pub fn verify_logits(
    sampler: &Sampler,
    logits: &Logits,
    position: usize,
    drafts: &[u32],
    q: &[Distribution],
    rng: &mut dyn RandomSource,
) -> Result<Verdict> {
    if sampler.is_greedy() {
        return Err(Error::setting(
            "temperature",
            0,
            "> 0: greedy windows are verified on the target's choices (verify_greedy)",
        ));
    }
    let want_q = if q.is_empty() { 0 } else { drafts.len() };
    if logits.rows() != drafts.len() + 1 || q.len() != want_q {
        return Err(Error::Contract {
            model: "verify_logits' caller".into(),
            message: format!(
                "verifying {} draft tokens takes {} logits rows and {} or 0 draft \
                 distributions; got {} rows and {}",
                drafts.len(),
                drafts.len() + 1,
                drafts.len(),
                logits.rows(),
                q.len()
            ),
        });
    }
    let p = |i: usize| sampler.distribution(logits.row(i), i);
    match sampler.mode() {
        SamplingMode::Reproducible => {
            let choose = |p_of: &mut dyn FnMut(usize) -> Result<Distribution>| {
                verify_token_match(drafts, |i| {
                    Ok(gumbel::choose(&p_of(i)?, sampler.seed(), position + i))
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

/// Token-match verification, lazily: `choice(i)` is the target's choice at
/// window row `i` (`0..=m`), asked for in order and only until the first
/// mismatch with `draft` (`[m]`). Accepts the longest prefix of `draft` that
/// equals the target's choices, then emits the target's choice at the next
/// row: the output is exactly the tokens the target chooses on its own.
pub fn verify_token_match(
    draft: &[u32],
    mut choice: impl FnMut(usize) -> Result<u32>,
) -> Result<Verdict> {
    for (i, &d) in draft.iter().enumerate() {
        let next = choice(i)?;
        if next != d {
            return Ok(Verdict {
                accepted: i,
                next,
                kind: NextKind::Recovered,
            });
        }
    }
    Ok(Verdict {
        accepted: draft.len(),
        next: choice(draft.len())?,
        kind: NextKind::Bonus,
    })
}

/// Greedy verification. `draft`: `[m]` draft tokens; `target_argmax`:
/// `[m + 1]`, the target's argmax at each window position. Accepts the
/// longest prefix where the draft equals the target's choice, so the output
/// is exactly the target's own greedy output.
///
/// # Panics
/// If `target_argmax.len() != draft.len() + 1`.
pub fn verify_greedy(draft: &[u32], target_argmax: &[u32]) -> Verdict {
    assert_eq!(
        target_argmax.len(),
        draft.len() + 1,
        "one target row per draft token, plus one"
    );
    let accepted = draft
        .iter()
        .zip(target_argmax)
        .take_while(|(d, t)| d == t)
        .count();
    Verdict {
        accepted,
        next: target_argmax[accepted],
        kind: if accepted == draft.len() {
            NextKind::Bonus
        } else {
            NextKind::Recovered
        },
    }
}

/// Sampled verification. `draft`: `[m]` tokens, each drawn from the matching
/// `q` row (`[m]` distributions, the exact ones sampled from); `p`: `[m + 1]`
/// target distributions after the same warping. Randomness comes only from
/// `rng`, and only where a decision is not already certain.
///
/// # Panics
/// If the lengths do not line up (`q.len() == m`, `p.len() == m + 1`).
pub fn verify_sampled(
    draft: &[u32],
    q: &[Distribution],
    p: &[Distribution],
    rng: &mut dyn RandomSource,
) -> Verdict {
    assert_eq!(q.len(), draft.len(), "one q row per draft token");
    assert_eq!(
        p.len(),
        draft.len() + 1,
        "one p row per draft token, plus one"
    );
    infallible(verify_sampled_with(
        draft,
        q,
        |i| Ok::<_, Infallible>(&p[i]),
        rng,
    ))
}

/// [`verify_sampled`] with the target's rows computed on demand: `p_of(i)`
/// is asked for rows in order, each once, and only up to the first
/// rejection (or all `m + 1` when every draft token is accepted), so a
/// window rejected early never warps its later rows. The same verdicts and
/// draws as [`verify_sampled`] on the same rows; an error from `p_of` ends
/// verification with it.
pub fn verify_sampled_with<D: Borrow<Distribution>, E>(
    draft: &[u32],
    q: &[Distribution],
    p_of: impl FnMut(usize) -> std::result::Result<D, E>,
    rng: &mut dyn RandomSource,
) -> std::result::Result<Verdict, E> {
    assert_eq!(q.len(), draft.len(), "one q row per draft token");
    accept_or_recover(
        draft,
        p_of,
        |i, token| q[i].prob(token),
        |p, i, _| residual(p, &q[i]),
        rng,
    )
}

/// The value of a result that cannot be an error.
fn infallible<T>(r: std::result::Result<T, Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Sampled verification of draft tokens chosen without a distribution (a
/// point-mass `q`): `draft`: `[m]`; `p`: `[m + 1]` target distributions.
/// `d_i` is accepted with probability `p_i(d_i)`; on rejection the
/// recovered token is drawn from `p_i` with `d_i` removed and renormalized.
/// The same verdicts, with the same draws, as [`verify_sampled`] with `q_i`
/// the point mass on `d_i`, without building a vocabulary-sized `q`.
///
/// # Panics
/// If `p.len() != draft.len() + 1`.
pub fn verify_point(draft: &[u32], p: &[Distribution], rng: &mut dyn RandomSource) -> Verdict {
    assert_eq!(
        p.len(),
        draft.len() + 1,
        "one p row per draft token, plus one"
    );
    infallible(verify_point_with(
        draft,
        |i| Ok::<_, Infallible>(&p[i]),
        rng,
    ))
}

/// [`verify_point`] with the target's rows computed on demand, as
/// [`verify_sampled_with`] does.
pub fn verify_point_with<D: Borrow<Distribution>, E>(
    draft: &[u32],
    p_of: impl FnMut(usize) -> std::result::Result<D, E>,
    rng: &mut dyn RandomSource,
) -> std::result::Result<Verdict, E> {
    // p without the rejected token: max(0, p - point mass), which has
    // mass because p(d) < 1.
    accept_or_recover(
        draft,
        p_of,
        |_, _| 1.0,
        |p, _, token| without(p, token),
        rng,
    )
}

/// Rejection sampling over a window, shared by [`verify_sampled`] and
/// [`verify_point`]: `p_of(i)` is `p_i`, asked for in order and only up to
/// the row that decides; `q_of(i, d_i)` is `q_i(d_i)` and `residual_of(p_i,
/// i, d_i)` the normalized `max(0, p_i - q_i)` (`None` if rounding left it
/// no mass; then `p_i` is the limit it tends to). `d_i` is accepted with
/// probability `min(1, p_i(d_i) / q_i(d_i))`, drawing only when that is not
/// already certain; the first rejection draws the recovered token from the
/// residual, and a window with none draws the bonus token from `p_m`.
fn accept_or_recover<D: Borrow<Distribution>, E>(
    draft: &[u32],
    mut p_of: impl FnMut(usize) -> std::result::Result<D, E>,
    q_of: impl Fn(usize, u32) -> f64,
    residual_of: impl Fn(&Distribution, usize, u32) -> Option<Distribution>,
    rng: &mut dyn RandomSource,
) -> std::result::Result<Verdict, E> {
    for (i, &token) in draft.iter().enumerate() {
        let row = p_of(i)?;
        let p_i: &Distribution = row.borrow();
        let (pi, qi) = (p_i.prob(token), q_of(i, token));
        // qi > 0 for a token drawn from q; qi == 0 (a caller's bug) rejects.
        let accept = if pi >= qi && qi > 0.0 {
            true
        } else if pi <= 0.0 || qi <= 0.0 {
            false
        } else {
            rng.bernoulli(pi / qi)
        };
        if !accept {
            let next = match residual_of(p_i, i, token) {
                Some(r) => r.sample(rng),
                None => p_i.sample(rng),
            };
            return Ok(Verdict {
                accepted: i,
                next,
                kind: NextKind::Recovered,
            });
        }
    }
    let m = draft.len();
    let last = p_of(m)?;
    Ok(Verdict {
        accepted: m,
        next: last.borrow().sample(rng),
        kind: NextKind::Bonus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SeededRandom;

    fn d(w: &[f64]) -> Distribution {
        Distribution::from_weights(w.to_vec()).unwrap()
    }

    /// Fails the test if the verifier asks for a decision that is not
    /// certain (a draw from a point mass is certain).
    struct NoRandom;
    impl RandomSource for NoRandom {
        fn categorical(&mut self, probs: &[f64]) -> usize {
            let live: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
            assert_eq!(live.len(), 1, "unexpected draw from {probs:?}");
            live[0]
        }
        fn bernoulli(&mut self, p: f64) -> bool {
            panic!("unexpected coin with p = {p}")
        }
    }

    /// Always rejects, and draws the first index with mass.
    struct Reject;
    impl RandomSource for Reject {
        fn categorical(&mut self, probs: &[f64]) -> usize {
            probs.iter().position(|&p| p > 0.0).unwrap()
        }
        fn bernoulli(&mut self, _: f64) -> bool {
            false
        }
    }

    #[test]
    fn greedy_all_accepted_gives_the_bonus() {
        let v = verify_greedy(&[4, 5], &[4, 5, 6]);
        assert_eq!((v.accepted, v.next, v.kind), (2, 6, NextKind::Bonus));
    }

    #[test]
    fn greedy_first_rejected_gives_the_target_token() {
        let v = verify_greedy(&[4, 5], &[7, 5, 6]);
        assert_eq!((v.accepted, v.next, v.kind), (0, 7, NextKind::Recovered));
        let v = verify_greedy(&[], &[3]);
        assert_eq!((v.accepted, v.next, v.kind), (0, 3, NextKind::Bonus));
    }

    #[test]
    fn p_at_least_q_accepts_without_randomness() {
        let q = [d(&[0.5, 0.5, 0.0])];
        let p = [d(&[0.6, 0.4, 0.0]), Distribution::point(2, 3)];
        let v = verify_sampled(&[0], &q, &p, &mut NoRandom);
        assert_eq!((v.accepted, v.next, v.kind), (1, 2, NextKind::Bonus));
    }

    #[test]
    fn zero_residual_p_equals_q_always_accepts() {
        let same = d(&[0.2, 0.3, 0.5]);
        let p = [same.clone(), same.clone(), Distribution::point(1, 3)];
        let v = verify_sampled(&[2, 0], &[same.clone(), same], &p, &mut NoRandom);
        assert_eq!(v.accepted, 2);
    }

    #[test]
    fn target_zero_rejects_and_recovers_from_the_residual() {
        // p gives token 1 nothing: rejected for sure, no coin needed; the
        // residual max(0, p - q) has mass only on token 0.
        let q = [d(&[0.5, 0.5])];
        let p = [d(&[1.0, 0.0]), d(&[0.5, 0.5])];
        let v = verify_sampled(&[1], &q, &p, &mut Reject);
        assert_eq!((v.accepted, v.next, v.kind), (0, 0, NextKind::Recovered));
    }

    #[test]
    fn draft_zero_q_is_rejected_not_divided_by() {
        let q = [d(&[1.0, 0.0])];
        let p = [d(&[0.5, 0.5]), d(&[0.5, 0.5])];
        let v = verify_sampled(&[1], &q, &p, &mut Reject);
        assert_eq!((v.accepted, v.kind), (0, NextKind::Recovered));
        assert_eq!(v.next, 1, "residual is all on token 1");
    }

    #[test]
    fn rejection_at_a_later_position_keeps_the_prefix() {
        let q = [d(&[0.5, 0.5]), d(&[0.5, 0.5])];
        let p = [d(&[0.5, 0.5]), d(&[0.9, 0.1]), d(&[1.0, 0.0])];
        let v = verify_sampled(&[1, 1], &q, &p, &mut Reject);
        assert_eq!((v.accepted, v.next, v.kind), (1, 0, NextKind::Recovered));
    }

    #[test]
    fn single_window_matches_p_in_frequency() {
        // One draft token: P(output = x) must be p(x) for q != p.
        let q = d(&[0.7, 0.2, 0.1]);
        let p = d(&[0.2, 0.3, 0.5]);
        let mut rng = SeededRandom::new(1);
        let mut counts = [0usize; 3];
        let n = 200_000;
        for _ in 0..n {
            let x = rng.categorical(q.probs()) as u32;
            let v = verify_sampled(
                &[x],
                std::slice::from_ref(&q),
                &[p.clone(), p.clone()],
                &mut rng,
            );
            let out = if v.accepted == 1 { x } else { v.next };
            counts[out as usize] += 1;
        }
        for (c, want) in counts.iter().zip(p.probs()) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.01, "{counts:?}");
        }
    }

    /// Records every draw and answers from a fixed script.
    struct Script(Vec<f64>, Vec<Vec<f64>>);
    impl RandomSource for Script {
        fn categorical(&mut self, probs: &[f64]) -> usize {
            self.1.push(probs.to_vec());
            probs.iter().rposition(|&p| p > 0.0).unwrap()
        }
        fn bernoulli(&mut self, p: f64) -> bool {
            self.0.push(p);
            false
        }
    }

    #[test]
    fn point_drafts_verify_as_point_mass_q_rows_do() {
        let p = [
            d(&[0.2, 0.5, 0.3]),
            d(&[0.6, 0.0, 0.4]),
            d(&[0.1, 0.1, 0.8]),
        ];
        for drafts in [[1u32, 0], [1, 1], [2, 2], [0, 2]] {
            let q: Vec<_> = drafts.iter().map(|&t| Distribution::point(t, 3)).collect();
            let (mut a, mut b) = (Script(vec![], vec![]), Script(vec![], vec![]));
            let got = verify_point(&drafts, &p, &mut a);
            let want = verify_sampled(&drafts, &q, &p, &mut b);
            assert_eq!(got, want, "{drafts:?}");
            assert_eq!((a.0, a.1), (b.0, b.1), "the same draws, {drafts:?}");
        }
        // A certain token is accepted without a coin; the bonus follows.
        let p = [Distribution::point(2, 3), d(&[0.5, 0.5, 0.0])];
        let v = verify_point(&[2], &p, &mut Reject);
        assert_eq!((v.accepted, v.next, v.kind), (1, 0, NextKind::Bonus));
        // Rejection draws from p with the draft removed.
        let p = [d(&[0.2, 0.5, 0.3]), d(&[1.0, 0.0, 0.0])];
        let mut s = Script(vec![], vec![]);
        let v = verify_point(&[1], &p, &mut s);
        assert_eq!(s.0, vec![0.5]);
        assert_eq!(s.1, vec![vec![0.4, 0.0, 0.6]]);
        assert_eq!((v.accepted, v.next, v.kind), (0, 2, NextKind::Recovered));
    }

    #[test]
    fn token_match_asks_for_rows_only_up_to_the_first_mismatch() {
        let mut asked = Vec::new();
        let v = verify_token_match(&[4, 5, 6], |i| {
            asked.push(i);
            Ok([4, 9, 6, 7][i])
        })
        .unwrap();
        assert_eq!((v.accepted, v.next, v.kind), (1, 9, NextKind::Recovered));
        assert_eq!(asked, vec![0, 1]);
        let v = verify_token_match(&[4, 5], |i| Ok([4, 5, 8][i])).unwrap();
        assert_eq!((v.accepted, v.next, v.kind), (2, 8, NextKind::Bonus));
        assert_eq!(v, verify_greedy(&[4, 5], &[4, 5, 8]));
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::sampling::{argmax, SamplingParams, SeededRandom};

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
        let q = sampler.distribution(target.row(0), 0).unwrap();
        let mut rng = SeededRandom::new(1);
        for (drafts, qs) in [
            (vec![1u32, 2, 3], vec![]),
            (vec![1, 2], vec![q.clone()]),
            (vec![1], vec![]),
        ] {
            let err = verify_logits(&sampler, &target, 0, &drafts, &qs, &mut rng);
            assert!(
                matches!(err, Err(Error::Contract { .. })),
                "{drafts:?}: {err:?}"
            );
        }
        assert!(verify_logits(&sampler, &target, 0, &[1, 2], &[], &mut rng).is_ok());
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
                        kind: NextKind::Bonus,
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
            .map(|i| sampler.distribution(target.row(i), i).unwrap())
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
                    sampler.distribution(row, i).unwrap()
                })
                .collect();
            let mut draw = SeededRandom::new(seed + 1000);
            let drafts: Vec<u32> = q.iter().map(|d| d.sample(&mut draw)).collect();
            let got = verify_logits(
                &sampler,
                &target,
                50,
                &drafts,
                &q,
                &mut SeededRandom::new(seed),
            )
            .unwrap();
            let want = verify_sampled(&drafts, &q, &p, &mut SeededRandom::new(seed));
            assert_eq!(got, want, "seed {seed}");
            depths.insert(got.accepted);
            let got = verify_logits(
                &sampler,
                &target,
                50,
                &drafts,
                &[],
                &mut SeededRandom::new(seed),
            )
            .unwrap();
            assert_eq!(got, verify_point(&drafts, &p, &mut SeededRandom::new(seed)));
        }
        assert!(depths.len() >= 3, "accepted counts seen: {depths:?}");
        // A bad row is an error when verification reaches it, and only then.
        let mut data = rows(k + 1, vocab, 2);
        data[2 * vocab + 17] = f32::NAN;
        let bad = Logits::new(data, vocab);
        let q: Vec<Distribution> = (0..k)
            .map(|i| sampler.distribution(target.row(i), i).unwrap())
            .collect();
        let likely: Vec<u32> = (0..k as u32)
            .map(|i| argmax(target.row(i as usize), &[3], 0).unwrap())
            .collect();
        let e =
            verify_logits(&sampler, &bad, 50, &likely, &q, &mut SeededRandom::new(1)).unwrap_err();
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
        let v = verify_logits(&sampler, &bad, 50, &drafts, &q, &mut SeededRandom::new(1)).unwrap();
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
                    let p = sampler.distribution(target.row(i), i).unwrap();
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
            let v = verify_logits(
                &sampler,
                &target,
                position,
                &drafts,
                &[],
                &mut SeededRandom::new(0),
            )
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
