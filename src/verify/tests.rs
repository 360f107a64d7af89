//! Tests of the verifiers as pure functions: verdicts, draws, and frequencies.

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
