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

use crate::error::Result;
use crate::sampling::{residual, without, Distribution, RandomSource};

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
