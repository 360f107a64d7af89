//! Statistical proof with the real seeded sampler: a G-test of 100,000
//! speculative generations against the target's exact distribution passes
//! (a model draft, the n-gram drafter, and reproducible sampling), and the
//! same test rejects a sampler whose `q` in the acceptance ratio is not the
//! distribution the draft token was drawn from, and reproducible sampling
//! whose noise is uniform instead of Gumbel.

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use common::exact::{reference, Outcome};
use common::toy::Toy;
use specdec::sampling::gumbel::{argmax_with_noise, gumbel_noise, uniform};
use specdec::sampling::warp;
use specdec::sampling::{RandomSource, SeededRandom};
use specdec::verify::verify_sampled;
use specdec::{GenerateConfig, Generator, LanguageModel, NGram, SamplingMode, SamplingParams};

const N: usize = 100_000;

/// Regularized upper incomplete gamma Q(a, x) (Numerical Recipes 6.2).
fn gamma_q(a: f64, x: f64) -> f64 {
    let ln_gamma_a = ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - ln_gamma_a).exp()
    } else {
        let tiny = 1e-300;
        let (mut b, mut c) = (x + 1.0 - a, 1.0 / tiny);
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < tiny { tiny } else { d };
            c = b + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (-x + a * x.ln() - ln_gamma_a).exp() * h
    }
}

/// Lanczos approximation of ln Γ(x).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 6] = [
        76.18009172947146,
        -86.50532032941677,
        24.01409824083091,
        -1.231739572450155,
        0.1208650973866179e-2,
        -0.5395239384953e-5,
    ];
    let mut y = x;
    let tmp = x + 5.5 - (x + 0.5) * (x + 5.5).ln();
    let mut ser = 1.000000000190015;
    for g in G {
        y += 1.0;
        ser += g / y;
    }
    -tmp + (2.5066282746310005 * ser / x).ln()
}

/// p-value of the G-test of observed counts against exact probabilities.
/// Outcomes expected fewer than 5 times are pooled into one bin, where the
/// chi-square approximation of G holds.
fn g_test(counts: &BTreeMap<Outcome, usize>, exact: &BTreeMap<Outcome, f64>) -> f64 {
    let n: usize = counts.values().sum();
    for key in counts.keys() {
        assert!(
            exact.contains_key(key),
            "{key:?} cannot happen under the target"
        );
    }
    let mut bins: Vec<(f64, f64)> = Vec::new(); // (observed, expected)
    let mut rare = (0.0, 0.0);
    for (key, &p) in exact {
        let observed = counts.get(key).copied().unwrap_or(0) as f64;
        let expected = p * n as f64;
        if expected < 5.0 {
            rare = (rare.0 + observed, rare.1 + expected);
        } else {
            bins.push((observed, expected));
        }
    }
    if rare.1 > 0.0 {
        bins.push(rare);
    }
    let g: f64 = bins
        .iter()
        .filter(|(o, _)| *o > 0.0)
        .map(|(o, e)| 2.0 * o * (o / e).ln())
        .sum();
    let df = (bins.len() - 1) as f64;
    gamma_q(df / 2.0, g / 2.0)
}

/// Six tokens, three generated: 216 outcomes. The draft is accepted about
/// half the time, so recovered tokens are as common as accepted ones and a
/// bug in either shows.
fn models() -> (Toy, Toy) {
    let mut draft = Toy::new(6, 1.1);
    draft.scale = 1.0; // flatter than the target (2.0)
    (Toy::new(6, 0.4), draft)
}

fn config() -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: 3,
        k: 3,
        sampling: SamplingParams::with_temperature(0.6),
        seed: 0,
        min_draft_confidence: 0.0,
        ..GenerateConfig::default()
    }
}

#[test]
fn chi_square_machinery_is_right() {
    // Q(1, x) = exp(-x); Q(2.5, 2.5) ≈ 0.4158802; Q(13, 5) = e^-5 Σ_{k<13} 5^k/k!.
    assert!((gamma_q(1.0, 2.0) - (-2.0f64).exp()).abs() < 1e-10);
    assert!((gamma_q(2.5, 2.5) - 0.415_880_2).abs() < 1e-6);
    assert!((gamma_q(13.0, 5.0) - 0.997_981_148_4).abs() < 1e-9);
}

#[test]
fn generator_samples_pass_a_g_test_against_the_exact_target() {
    // Fixed windows, and adaptive ones (the draft stops below 0.45).
    for min_draft_confidence in [0.0, 0.45] {
        let (target, draft) = models();
        let config = GenerateConfig {
            min_draft_confidence,
            ..config()
        };
        let exact = reference(&target, &[1], &config);
        let mut generator = Generator::new(target, draft).unwrap();
        let mut rng = SeededRandom::new(20261127);
        let mut counts = BTreeMap::new();
        let (mut accepted, mut drafted, mut stopped_early) = (0, 0, 0);
        for _ in 0..N {
            let out = generator
                .generate_with(&[1], &config, &mut rng, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            accepted += out.stats.accepted;
            drafted += out.stats.drafted;
            stopped_early += out.stats.stopped_early;
            *counts.entry((out.tokens, false)).or_insert(0) += 1;
        }
        let rate = accepted as f64 / drafted as f64;
        // About half the time with fixed windows; more often where the
        // adaptive draft only drafts what it is sure of.
        let (low, high) = if min_draft_confidence == 0.0 {
            (0.35, 0.65)
        } else {
            (0.5, 0.9)
        };
        assert!(
            rate > low && rate < high,
            "acceptance {rate}, expected in ({low}, {high})"
        );
        let p = g_test(&counts, &exact);
        eprintln!(
            "speculative sampler, confidence {min_draft_confidence}: G-test p = {p:.4}, acceptance {rate:.3}, {drafted} drafted, {} outcomes",
            exact.len()
        );
        assert!(p > 1e-3, "G-test p = {p}");
        // The adaptive run must really have stopped early, often.
        assert_eq!(
            stopped_early > N / 10,
            min_draft_confidence > 0.0,
            "{stopped_early} stops"
        );
    }
}

/// The bug of transformers #47932: the ratio's `q` is the draft's
/// distribution *before* warping, while the token came from the warped one.
fn broken_generation(target: &mut Toy, draft: &mut Toy, rng: &mut dyn RandomSource) -> Vec<u32> {
    let warped = SamplingParams::with_temperature(0.6);
    let unwarped = SamplingParams::with_temperature(1.0);
    let mut context = vec![1u32];
    while context.len() < 4 {
        let remaining = 4 - context.len();
        let m = 2.min(remaining - 1);
        draft.reset().unwrap();
        let mut rows = draft.forward(&context).unwrap();
        let (mut drafts, mut q_wrong) = (Vec::new(), Vec::new());
        for _ in 0..m {
            let row = rows.row(rows.rows() - 1).to_vec();
            let q = warp(&row, &warped, &[], 0).unwrap();
            let token = rng.categorical(q.probs()) as u32;
            q_wrong.push(warp(&row, &unwarped, &[], 0).unwrap());
            drafts.push(token);
            rows = draft.forward(&[token]).unwrap();
        }
        target.reset().unwrap();
        let mut window = context.clone();
        window.extend(&drafts);
        let logits = target.forward(&window).unwrap();
        let start = context.len() - 1;
        let p: Vec<_> = (start..start + m + 1)
            .map(|i| warp(logits.row(i), &warped, &[], 0).unwrap())
            .collect();
        let v = verify_sampled(&drafts, &q_wrong, &p, rng);
        context.extend(&drafts[..v.accepted]);
        context.push(v.next);
    }
    context[1..].to_vec()
}

#[test]
fn the_g_test_rejects_a_wrong_q_in_the_ratio() {
    let (mut target, mut draft) = models();
    let exact = reference(&target, &[1], &config());
    let mut rng = SeededRandom::new(5);
    let mut counts = BTreeMap::new();
    for _ in 0..N {
        *counts
            .entry((broken_generation(&mut target, &mut draft, &mut rng), false))
            .or_insert(0) += 1;
    }
    let p = g_test(&counts, &exact);
    eprintln!("wrong-q sampler: G-test p = {p:.3e}");
    assert!(p < 1e-3, "the broken sampler should fail: p = {p}");
}

/// The n-gram drafter under sampling: its drafts are point masses. The
/// prompt repeats itself, so most windows have a match.
#[test]
fn ngram_samples_pass_a_g_test_against_the_exact_target() {
    let (target, _) = models();
    // Found by a search over prompts: about two thirds of the windows
    // match, and the target accepts about two thirds of what they propose.
    let prompt = [3, 2, 5, 0, 5, 2];
    let config = config();
    let exact = reference(&target, &prompt, &config);
    let mut generator = Generator::new(target, NGram::new(2).unwrap()).unwrap();
    let mut rng = SeededRandom::new(20261130);
    let mut counts = BTreeMap::new();
    let (mut accepted, mut drafted, mut matched, mut windows) = (0, 0, 0, 0);
    for _ in 0..N {
        let out = generator
            .generate_with(&prompt, &config, &mut rng, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        accepted += out.stats.accepted;
        drafted += out.stats.drafted;
        matched += out.stats.matched;
        windows += out.stats.target_calls;
        *counts.entry((out.tokens, false)).or_insert(0) += 1;
    }
    let rate = accepted as f64 / drafted as f64;
    let p = g_test(&counts, &exact);
    eprintln!(
        "n-gram drafter: G-test p = {p:.4}, acceptance {rate:.3}, {matched} of {windows} windows matched"
    );
    assert!(rate > 0.1 && rate < 0.9, "acceptance {rate}");
    assert!(
        matched > windows / 2,
        "{matched} of {windows} windows matched"
    );
    assert!(p > 1e-3, "G-test p = {p}");
}

/// Plain decoding in reproducible mode, one seed per generation: the
/// Gumbel-max choices follow the target's distribution. Speculative
/// decoding with the same seeds writes the very same tokens.
#[test]
fn reproducible_samples_pass_a_g_test_and_equal_plain_decoding() {
    let (target, draft) = models();
    let config = GenerateConfig {
        sampling_mode: SamplingMode::Reproducible,
        ..config()
    };
    let exact = reference(&target, &[1], &config);
    let mut generator = Generator::new(target.clone(), draft).unwrap();
    let mut counts = BTreeMap::new();
    let (mut accepted, mut drafted) = (0, 0);
    for seed in 0..N as u64 {
        let plain = GenerateConfig {
            seed,
            k: 1,
            ..config.clone()
        };
        let out = generator.generate(&[1], &plain).unwrap();
        if seed % 10 == 0 {
            let spec = generator
                .generate(
                    &[1],
                    &GenerateConfig {
                        seed,
                        ..config.clone()
                    },
                )
                .unwrap();
            assert_eq!(spec.tokens, out.tokens, "seed {seed}");
            accepted += spec.stats.accepted;
            drafted += spec.stats.drafted;
        }
        if seed < 100 {
            // The manual decoder below, with Gumbel noise, is this mode.
            assert_eq!(keyed_decode(&target, seed, gumbel_noise), out.tokens);
        }
        *counts.entry((out.tokens, false)).or_insert(0) += 1;
    }
    let p = g_test(&counts, &exact);
    let rate = accepted as f64 / drafted as f64;
    eprintln!("reproducible mode: G-test p = {p:.4}, speculative acceptance {rate:.3}");
    assert!(p > 1e-3, "G-test p = {p}");
}

/// Plain decoding by keyed argmax with `noise(seed, position, token)`.
fn keyed_decode(target: &Toy, seed: u64, noise: fn(u64, usize, u32) -> f64) -> Vec<u32> {
    let config = config();
    let mut context = vec![1u32];
    while context.len() < 1 + config.max_new_tokens {
        let row = target.logits_after(&context);
        let p = warp(&row, &config.sampling, &[], 0).unwrap();
        let position = context.len();
        context.push(argmax_with_noise(&p, |v| noise(seed, position, v)));
    }
    context[1..].to_vec()
}

#[test]
fn the_g_test_rejects_keyed_sampling_with_uniform_noise() {
    let (target, _) = models();
    let exact = reference(&target, &[1], &config());
    let mut counts = BTreeMap::new();
    for seed in 0..N as u64 {
        *counts
            .entry((keyed_decode(&target, seed, uniform), false))
            .or_insert(0) += 1;
    }
    let p = g_test(&counts, &exact);
    eprintln!("uniform noise: G-test p = {p:.3e}");
    assert!(p < 1e-3, "uniform noise should fail: p = {p}");
}
