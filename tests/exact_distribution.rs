//! Proof without sampling noise: the speculative generator's output
//! distribution equals the target's own, computed exactly.
//!
//! The generator draws all its randomness through `RandomSource`. `Branches`
//! answers each draw by following a recorded path of choices and multiplies
//! the path's probability; a depth-first walk over paths visits every random
//! branch of a generation exactly once, so summing path probabilities per
//! output gives the generator's exact output distribution. The target's own
//! distribution is enumerated directly from its logits, warped by the
//! tests' own `reference_warp` (independent of the crate's `warp`).

mod common;

use std::collections::BTreeMap;

use common::exact::{assert_same, reference, reference_warp, speculative as enumerate, Outcome};
use common::toy::{Stubborn, Toy};
use specdec::sampling::warp;
use specdec::{Drafter, Eos, GenerateConfig, Generator, NGram, SamplingParams};

fn speculative<D: Drafter + Clone>(
    target: &Toy,
    draft: &D,
    prompt: &[u32],
    config: &GenerateConfig,
) -> BTreeMap<Outcome, f64> {
    enumerate(
        &mut Generator::new(target.clone(), draft.clone()).unwrap(),
        prompt,
        config,
    )
}

fn sampling(
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
    }
}

#[test]
fn speculative_output_distribution_is_the_targets_exactly() {
    let target = Toy::new(4, 0.3).with_eos(3);
    let draft = Toy::new(4, 1.7).with_eos(3);
    let prompt = [1, 2];
    let settings = [
        sampling(1.0, None, None, None),
        sampling(0.6, None, None, None),
        sampling(1.7, Some(2), None, None),
        sampling(1.0, None, Some(0.8), None),
        sampling(1.3, Some(3), Some(0.9), None),
        sampling(1.0, None, None, Some(0.2)),
        sampling(0.7, Some(3), Some(0.85), Some(0.3)),
        SamplingParams::greedy(),
    ];
    let mut checked = 0;
    for params in &settings {
        for k in [1, 2, 3, 4, 5] {
            for eos in [Eos::Model, Eos::Ignore] {
                let config = GenerateConfig {
                    max_new_tokens: 3,
                    k,
                    sampling: params.clone(),
                    eos: eos.clone(),
                    min_draft_confidence: 0.0,
                    ..GenerateConfig::default()
                };
                let what = format!("{params:?} k={k} {eos:?}");
                assert_same(
                    &speculative(&target, &draft, &prompt, &config),
                    &reference(&target, &prompt, &config),
                    &what,
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, settings.len() * 10);
}

#[test]
fn adaptive_windows_keep_the_targets_distribution_exactly() {
    // Thresholds around the toy draft's top probabilities, so that some
    // windows stop early and some run full.
    let target = Toy::new(4, 0.3).with_eos(3);
    let draft = Toy::new(4, 1.7).with_eos(3);
    let prompt = [1, 2];
    let mut shortened = 0;
    let mut full = 0;
    for params in [
        sampling(1.0, None, None, None),
        sampling(0.7, Some(3), Some(0.9), None),
        SamplingParams::greedy(),
    ] {
        for k in [2, 3, 5] {
            for min_draft_confidence in [0.55, 0.7, 0.85, 1.0] {
                let config = GenerateConfig {
                    max_new_tokens: 3,
                    k,
                    sampling: params.clone(),
                    min_draft_confidence,
                    ..GenerateConfig::default()
                };
                let what = format!("{params:?} k={k} confidence {min_draft_confidence}");
                assert_same(
                    &speculative(&target, &draft, &prompt, &config),
                    &reference(&target, &prompt, &config),
                    &what,
                );
                for seed in 0..8 {
                    let out = Generator::new(target.clone(), draft.clone())
                        .unwrap()
                        .generate(
                            &prompt,
                            &GenerateConfig {
                                seed,
                                ..config.clone()
                            },
                        )
                        .unwrap();
                    let s = &out.stats;
                    assert_eq!(s.windows.iter().sum::<usize>(), s.target_calls, "{what}");
                    if min_draft_confidence < 1.0 {
                        shortened += s.stopped_early;
                        full += s.target_calls - s.stopped_early;
                    }
                }
            }
        }
    }
    assert!(
        shortened > 0 && full > 0,
        "{shortened} windows stopped by a confidence below 1, {full} not"
    );
}

#[test]
fn four_tokens_five_symbols_and_a_draft_that_is_often_wrong() {
    let target = Toy::new(5, 2.2).with_eos(0);
    let mut draft = Toy::new(5, -0.4).with_eos(0);
    draft.scale = 3.5; // sharper and mostly elsewhere: many rejections
    let prompt = [4];
    for k in [2, 4, 6] {
        let config = GenerateConfig {
            max_new_tokens: 4,
            k,
            sampling: sampling(1.1, Some(4), None, None),
            ..GenerateConfig::default()
        };
        let what = format!("vocab 5, k={k}");
        assert_same(
            &speculative(&target, &draft, &prompt, &config),
            &reference(&target, &prompt, &config),
            &what,
        );
    }
}

#[test]
fn identical_draft_accepts_everything_without_randomness_in_the_verifier() {
    let target = Toy::new(3, 0.9);
    let config = GenerateConfig {
        max_new_tokens: 4,
        k: 4,
        sampling: sampling(1.0, None, None, None),
        ..GenerateConfig::default()
    };
    let dist = speculative(&target, &target, &[0], &config);
    assert_same(&dist, &reference(&target, &[0], &config), "draft == target");
    let mut generator = Generator::new(target.clone(), target.clone()).unwrap();
    let out = generator.generate(&[0], &config).unwrap();
    assert_eq!(out.stats.acceptance_rate(), 1.0);
}

#[test]
fn greedy_equals_target_argmax_path() {
    let target = Toy::new(5, 0.1).with_eos(4);
    let draft = Toy::new(5, 0.5).with_eos(4);
    for k in 1..=6 {
        let config = GenerateConfig {
            max_new_tokens: 8,
            k,
            ..GenerateConfig::default()
        };
        let mut generator = Generator::new(target.clone(), draft.clone()).unwrap();
        let out = generator.generate(&[1, 2], &config).unwrap();
        let mut plain = Generator::new(target.clone(), draft.clone()).unwrap();
        let want = plain
            .generate(
                &[1, 2],
                &GenerateConfig {
                    k: 1,
                    ..config.clone()
                },
            )
            .unwrap();
        assert_eq!(out.tokens, want.tokens, "k={k}");
        assert_eq!(out.stop_reason, want.stop_reason, "k={k}");
    }
}

#[test]
fn eos_inside_a_window_ends_the_output_there() {
    // The draft equals the target, so whole windows are accepted; EOS must
    // still cut the output at its first occurrence, with nothing after it.
    let mut target = Toy::new(4, 0.3).with_eos(3);
    target.scale = 6.0;
    let config = GenerateConfig {
        max_new_tokens: 30,
        k: 8,
        min_draft_confidence: 0.0, // whole windows
        ..GenerateConfig::default()
    };
    let mut generator = Generator::new(target.clone(), target.clone()).unwrap();
    let out = generator.generate(&[1], &config).unwrap();
    let mut plain = Generator::new(target.clone(), target).unwrap();
    let want = plain
        .generate(&[1], &GenerateConfig { k: 1, ..config })
        .unwrap();
    assert_eq!(out.tokens, want.tokens);
    assert_eq!(out.stop_reason, want.stop_reason);
    assert!(!out.tokens.contains(&3));
}

/// Rows spread like a trained model's, and many settings with temperature
/// other than 1 and top-k, top-p and min-p together: the crate's `warp`
/// equals the independent reference to 1e-12 everywhere.
#[test]
fn warp_equals_the_independent_reference() {
    let mut checked = 0;
    for case in 0..300u32 {
        let vocab = [5usize, 17, 64][case as usize % 3];
        let row: Vec<f32> = (0..vocab)
            .map(|v| {
                6.0 * ((v as f32 * 1.37 + case as f32 * 0.61).sin()
                    + 0.3 * (case as f32 + v as f32).cos())
            })
            .collect();
        let suppress: Vec<u32> = if case % 4 == 0 { vec![1] } else { vec![] };
        for t in [0.35f32, 0.7, 1.0, 1.6] {
            for (top_k, top_p, min_p) in [
                (None, None, None),
                (Some(3), None, None),
                (None, Some(0.7), None),
                (None, None, Some(0.15)),
                (Some(4), Some(0.8), Some(0.1)),
                (Some(9), Some(0.95), Some(0.02)),
                (Some(2), Some(0.5), Some(0.4)),
            ] {
                let params = sampling(t, top_k, top_p, min_p);
                let got = warp(&row, &params, &suppress, 0).unwrap();
                let want = reference_warp(&row, &params, &suppress);
                for (v, (a, b)) in got.probs().iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{params:?} case {case} token {v}: warp {a} vs reference {b}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 300 * 4 * 7);
}

/// The n-gram drafter and a drafter that is mostly wrong: drafts with no
/// distribution are point masses, and the output is still exactly the
/// target's, greedy and sampled, with EOS and without.
#[test]
fn point_mass_drafts_keep_the_targets_distribution_exactly() {
    let target = Toy::new(4, 0.3).with_eos(3);
    // Repeats, so the n-gram drafter finds matches.
    let prompt = [1, 2, 1, 2, 0, 1];
    let mut matched = 0;
    for params in [
        sampling(1.0, None, None, None),
        sampling(0.6, Some(3), Some(0.9), Some(0.1)),
        sampling(1.4, None, Some(0.85), None),
        SamplingParams::greedy(),
    ] {
        for k in [2, 3, 5] {
            for eos in [Eos::Model, Eos::Ignore] {
                let config = GenerateConfig {
                    max_new_tokens: 3,
                    k,
                    sampling: params.clone(),
                    eos: eos.clone(),
                    ..GenerateConfig::default()
                };
                let want = reference(&target, &prompt, &config);
                for n in [1, 3] {
                    let ngram = NGram::new(n).unwrap();
                    let what = format!("ngram {n} {params:?} k={k} {eos:?}");
                    assert_same(
                        &speculative(&target, &ngram, &prompt, &config),
                        &want,
                        &what,
                    );
                    let mut g = Generator::new(target.clone(), ngram).unwrap();
                    matched += g.generate(&prompt, &config).unwrap().stats.matched;
                }
                let stubborn = Stubborn { vocab: 4 };
                let what = format!("stubborn {params:?} k={k} {eos:?}");
                assert_same(
                    &speculative(&target, &stubborn, &prompt, &config),
                    &want,
                    &what,
                );
            }
        }
    }
    assert!(matched > 0, "the n-gram drafter never matched");
}
