//! Reproducible sampling: for a seed, speculative decoding writes token for
//! token what plain decoding in this mode writes, whatever proposes the
//! drafts (a model, the n-gram drafter, a drafter that is mostly wrong),
//! for windows k = 1..=8, adaptive windows, and through the static-shape
//! adapter. (That plain decoding in this mode follows the target's
//! distribution is `tests/statistical.rs`'s G-test.)

mod common;

use common::toy::{Stubborn, Toy};
use specdec::backend::static_shape::{StaticShapeModel, StaticShapes};
use specdec::{
    CandleModel, Drafter, GenerateConfig, Generator, LanguageModel, NGram, SamplingMode,
    SamplingParams,
};

fn settings() -> Vec<SamplingParams> {
    vec![
        SamplingParams::with_temperature(1.0),
        SamplingParams {
            top_p: Some(0.9),
            ..SamplingParams::with_temperature(0.7)
        },
        SamplingParams {
            top_k: Some(50),
            min_p: Some(0.05),
            ..SamplingParams::with_temperature(1.3)
        },
    ]
}

/// Windows k = 1..=8 with no adaptivity, then two adaptive ones.
fn windows() -> Vec<(usize, f32)> {
    (1..=8)
        .map(|k| (k, 0.0))
        .chain([(8, 0.3), (6, 0.6)])
        .collect()
}

fn config(params: &SamplingParams, seed: u64, (k, confidence): (usize, f32)) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: 24,
        k,
        sampling: params.clone(),
        sampling_mode: SamplingMode::Reproducible,
        seed,
        min_draft_confidence: confidence,
        ..GenerateConfig::default()
    }
}

/// Checks every window of `g`'s drafter against `plain` (indexed by
/// setting); returns the draft tokens accepted and proposed.
fn check<T: LanguageModel, D: Drafter>(
    g: &mut Generator<T, D>,
    prompt: &[u32],
    plain: &[Vec<u32>],
    seeds: &[u64],
    what: &str,
) -> (usize, usize) {
    let (mut accepted, mut drafted) = (0, 0);
    let settings = settings();
    // Every window, the settings (and seeds) taking turns.
    for (j, w) in windows().into_iter().enumerate() {
        let i = j % settings.len();
        let out = g
            .generate(prompt, &config(&settings[i], seeds[i], w))
            .unwrap();
        assert_eq!(
            out.tokens, plain[i],
            "{what}: {:?} seed {} window {w:?}",
            settings[i], seeds[i]
        );
        accepted += out.stats.accepted;
        drafted += out.stats.drafted;
    }
    (accepted, drafted)
}

#[test]
fn real_models_write_the_same_tokens_with_any_draft_and_window() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let seeds = [3, 17, 2026];
    let target = common::load(dir.join("py-m"), 256);
    let tokenizer = target.tokenizer().unwrap().clone();
    let prompt = tokenizer
        .encode("def flatten(items):\n    out = []\n    for item in items:\n")
        .unwrap();
    // Plain decoding in this mode: the reference.
    let mut g = Generator::new(target, NGram::new(3).unwrap()).unwrap();
    let plain: Vec<Vec<u32>> = settings()
        .iter()
        .zip(seeds)
        .map(|(params, seed)| {
            g.generate(&prompt, &config(params, seed, (1, 0.0)))
                .unwrap()
                .tokens
        })
        .collect();
    // The three settings give three different texts.
    assert!(plain[0] != plain[1] && plain[1] != plain[2], "{plain:?}");
    let (a, d) = check(&mut g, &prompt, &plain, &seeds, "n-gram");
    eprintln!("n-gram: {a}/{d} accepted");
    let (target, _) = g.into_parts();

    let mut g = Generator::new(target, Stubborn { vocab: 8192 }).unwrap();
    let (a, d) = check(&mut g, &prompt, &plain, &seeds, "stubborn");
    eprintln!("stubborn: {a}/{d} accepted");
    let (mut target, _) = g.into_parts();

    for name in ["py-s", "py-xs"] {
        let mut g = Generator::new(target, common::load(dir.join(name), 256)).unwrap();
        let (a, d) = check(&mut g, &prompt, &plain, &seeds, name);
        eprintln!("{name}: {a}/{d} accepted");
        assert!(a > 0 && a < d, "{name}: {a}/{d}");
        target = g.into_parts().0;
    }

    // Through the static-shape adapter: compiled windows 1, 2, 4 and 8.
    let shapes = |windows: &[usize]| StaticShapes {
        windows: windows.to_vec(),
        prompt_buckets: vec![32, 64],
        batch_size: 1,
    };
    let fixed: StaticShapeModel<CandleModel> =
        StaticShapeModel::new(target, shapes(&[1, 2, 4, 8]), 200).unwrap();
    let draft =
        StaticShapeModel::new(common::load(dir.join("py-xs"), 256), shapes(&[1]), 200).unwrap();
    let mut g = Generator::new(fixed, draft).unwrap();
    check(&mut g, &prompt, &plain, &seeds, "static shapes");
    let calls = &g.target().graph_calls().token_generation;
    assert!(
        calls.iter().all(|(w, _)| [1, 2, 4, 8].contains(w)),
        "{calls:?}"
    );
}

/// Toys: many seeds, every window, drafts good and bad, EOS on.
#[test]
fn toys_write_the_same_tokens_with_any_draft_and_window_for_every_seed() {
    let target = Toy::new(5, 0.3).with_eos(4);
    let prompt = [1, 2, 1, 2, 3];
    let mut model = Generator::new(target.clone(), Toy::new(5, 1.7).with_eos(4)).unwrap();
    let mut ngram = Generator::new(target.clone(), NGram::new(2).unwrap()).unwrap();
    let mut stubborn = Generator::new(target.clone(), Stubborn { vocab: 5 }).unwrap();
    let mut accepted = 0;
    for seed in 0..40 {
        for params in settings() {
            let plain = model
                .generate(&prompt, &config(&params, seed, (1, 0.0)))
                .unwrap();
            for w in windows() {
                let c = config(&params, seed, w);
                for out in [
                    model.generate(&prompt, &c).unwrap(),
                    ngram.generate(&prompt, &c).unwrap(),
                    stubborn.generate(&prompt, &c).unwrap(),
                ] {
                    assert_eq!(out.tokens, plain.tokens, "seed {seed} {params:?} {w:?}");
                    assert_eq!(out.stop_reason, plain.stop_reason);
                    accepted += out.stats.accepted;
                }
            }
        }
    }
    assert!(accepted > 0);
}

/// Two generations with different seeds differ, and the same seed repeats.
#[test]
fn the_seed_decides_the_text() {
    let target = Toy::new(5, 0.3);
    let mut g = Generator::new(target.clone(), target).unwrap();
    let params = SamplingParams::with_temperature(1.0);
    let run = |g: &mut Generator<Toy, Toy>, seed| {
        let c = GenerateConfig {
            max_new_tokens: 20,
            ..config(&params, seed, (4, 0.0))
        };
        g.generate(&[1], &c).unwrap().tokens
    };
    assert_eq!(run(&mut g, 5), run(&mut g, 5));
    assert_ne!(run(&mut g, 5), run(&mut g, 6));
}
