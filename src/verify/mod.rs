//! The verifier: steps 2 and 3 of the loop. The target's pass over a window
//! and its verdict (`verify_window`, crate-internal), and beneath it
//! rejection sampling as pure functions: draft tokens, `q` rows, `p` rows
//! and a random source in, a [`Verdict`] out.
//!
//! Words as in the [crate docs](crate#words): a *window* of `k`
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

/// Steps 2 and 3 of the loop: the target's one pass over the
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
mod tests;

#[cfg(test)]
mod window_tests;
