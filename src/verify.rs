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

use crate::sampling::{residual, Distribution, RandomSource};

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
    for (i, &token) in draft.iter().enumerate() {
        let (pi, qi) = (p[i].prob(token), q[i].prob(token));
        // qi > 0 for a token drawn from q; qi == 0 (a caller's bug) rejects.
        let accept = if pi >= qi && qi > 0.0 {
            true
        } else if pi <= 0.0 || qi <= 0.0 {
            false
        } else {
            rng.bernoulli(pi / qi)
        };
        if !accept {
            // Rejection only happens where p < q somewhere, so the residual
            // has mass; if rounding left none, p is the limit it tends to.
            let next = match residual(&p[i], &q[i]) {
                Some(r) => rng.categorical(r.probs()),
                None => rng.categorical(p[i].probs()),
            } as u32;
            return Verdict {
                accepted: i,
                next,
                kind: NextKind::Recovered,
            };
        }
    }
    let m = draft.len();
    Verdict {
        accepted: m,
        next: rng.categorical(p[m].probs()) as u32,
        kind: NextKind::Bonus,
    }
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
}
