//! Tests of `verify_logits`: shape checks, and the helper that warps rows
//! ahead gives the sequential verdicts and draws.

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
    let e = verify_logits(&sampler, &bad, 50, &likely, &q, &mut SeededRandom::new(1)).unwrap_err();
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
