//! Property tests of the pure math (the same invariants the fuzz target in
//! `fuzz/` checks with arbitrary bytes): warping yields a finite distribution
//! summing to 1 that respects masks and filters; the verifiers accept within
//! bounds and only ever emit tokens the target gives mass to.

use proptest::prelude::*;
use specdec::sampling::{argmax, greedy_confidence, residual, warp};
use specdec::sampling::{Distribution, RandomSource, SeededRandom};
use specdec::verify::{verify_greedy, verify_sampled, NextKind};
use specdec::SamplingParams;

fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![8 => -30.0f32..30.0, 1 => Just(f32::NEG_INFINITY), 1 => Just(0.0f32)]
}

fn params() -> impl Strategy<Value = SamplingParams> {
    (
        0.05f32..4.0,
        proptest::option::of(1usize..40),
        proptest::option::of(0.01f32..=1.0),
        proptest::option::of(0.0f32..0.99),
    )
        .prop_map(|(temperature, top_k, top_p, min_p)| SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
        })
}

fn check_distribution(d: &Distribution, row: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.len(), row.len());
    let sum: f64 = d.probs().iter().sum();
    prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
    for (p, x) in d.probs().iter().zip(row) {
        prop_assert!(p.is_finite() && *p >= 0.0);
        if *x == f32::NEG_INFINITY {
            prop_assert_eq!(*p, 0.0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn warp_gives_a_distribution_or_names_an_empty_row(
        row in proptest::collection::vec(logit(), 1..64),
        params in params(),
        suppress in proptest::collection::vec(0u32..64, 0..3),
    ) {
        match warp(&row, &params, &suppress, 7) {
            Ok(d) => {
                check_distribution(&d, &row)?;
                for &s in &suppress {
                    prop_assert_eq!(d.prob(s), 0.0);
                }
                let live = d.probs().iter().filter(|&&p| p > 0.0).count();
                if let Some(k) = params.top_k {
                    prop_assert!(live <= k);
                }
                // The most likely unsuppressed token always survives filtering.
                let best = argmax(&row, &suppress, 7).unwrap();
                prop_assert!(d.prob(best) > 0.0);
            }
            Err(specdec::Error::EmptyDistribution { position: 7, .. }) => {
                prop_assert!(row.iter().enumerate().all(|(i, x)| *x == f32::NEG_INFINITY || suppress.contains(&(i as u32))));
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn argmax_is_the_first_largest_allowed_logit(
        row in proptest::collection::vec(prop_oneof![
            6 => (-4i32..4).prop_map(|x| x as f32), // ties
            2 => -30.0f32..30.0,
            1 => Just(f32::NEG_INFINITY),
        ], 1..80),
        suppress in proptest::collection::vec(0u32..80, 0..4),
    ) {
        let naive = row
            .iter()
            .enumerate()
            .filter(|&(i, &x)| x != f32::NEG_INFINITY && !suppress.contains(&(i as u32)))
            .fold(None, |best: Option<(usize, f32)>, (i, &x)| match best {
                Some((_, b)) if b >= x => best,
                _ => Some((i, x)),
            })
            .map(|(i, _)| i as u32);
        match (argmax(&row, &suppress, 1), naive) {
            (Ok(got), Some(want)) => {
                prop_assert_eq!(got, want);
                let sure = greedy_confidence(&row, got, &suppress);
                prop_assert!((0.0..=1.0).contains(&sure));
            }
            (Err(specdec::Error::EmptyDistribution { .. }), None) => {}
            (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
        }
    }

    #[test]
    fn sampled_verification_stays_in_bounds(
        vocab in 2usize..24,
        m in 0usize..6,
        seed in any::<u64>(),
        params in params(),
        raw in proptest::collection::vec(-20.0f32..20.0, 24 * 13),
    ) {
        let row = |i: usize| raw[i * vocab..(i + 1) * vocab].to_vec();
        let mut rng = SeededRandom::new(seed);
        let q: Vec<Distribution> = (0..m).map(|i| warp(&row(i), &params, &[], i).unwrap()).collect();
        let p: Vec<Distribution> = (0..=m).map(|i| warp(&row(6 + i), &params, &[], i).unwrap()).collect();
        let draft: Vec<u32> = q.iter().map(|d| rng.categorical(d.probs()) as u32).collect();
        for (d, t) in q.iter().zip(&draft) {
            prop_assert!(d.prob(*t) > 0.0, "drawn tokens have mass");
        }
        let v = verify_sampled(&draft, &q, &p, &mut rng);
        prop_assert!(v.accepted <= m);
        prop_assert!((v.next as usize) < vocab);
        prop_assert_eq!(v.kind == NextKind::Bonus, v.accepted == m);
        // The committed token always has mass under the target at its position.
        prop_assert!(p[v.accepted].prob(v.next) > 0.0);
        if v.kind == NextKind::Recovered {
            if let Some(r) = residual(&p[v.accepted], &q[v.accepted]) {
                check_distribution(&r, &row(6 + v.accepted))?;
                prop_assert!(r.prob(v.next) > 0.0);
            }
        }
    }

    #[test]
    fn greedy_verification_is_the_longest_matching_prefix(
        draft in proptest::collection::vec(0u32..4, 0..8),
        extra in 0u32..4,
        flips in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let mut target: Vec<u32> = draft.iter().zip(&flips).map(|(&d, &f)| if f { (d + 1) % 4 } else { d }).collect();
        target.push(extra);
        let v = verify_greedy(&draft, &target);
        let want = draft.iter().zip(&target).take_while(|(a, b)| a == b).count();
        prop_assert_eq!(v.accepted, want);
        prop_assert_eq!(v.next, target[want]);
    }
}
