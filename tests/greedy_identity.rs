//! Greedy speculative output is token-for-token the target's own greedy
//! output, on the shared trained checkpoints: py-m target with py-s and
//! py-xs drafts, windows k = 1..=8 and two adaptive ones, every reference
//! and benchmark prompt.

mod common;

use specdec::{CandleModel, GenerateConfig, Generator, LanguageModel, StopReason};

// One target, loaded once, serves both drafts.

/// py-m's reference prompts, then those of `prompts_py.json`.
fn prompts(dir: &std::path::Path) -> Vec<String> {
    let mut prompts = reference_prompts(dir);
    prompts.extend(bench_prompts(dir, "prompts_py.json"));
    prompts
}

/// The prompts of py-m's cases in reference.json.
fn reference_prompts(dir: &std::path::Path) -> Vec<String> {
    common::json(dir.join("reference.json"))["models"]["py-m"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prompt"].as_str().unwrap().to_string())
        .collect()
}

/// The prompts of `../bench/NAME` beside the models, or none (said on
/// stderr) when it is absent.
fn bench_prompts(dir: &std::path::Path, name: &str) -> Vec<String> {
    let path = dir.join("../bench").join(name);
    if !path.is_file() {
        eprintln!("SKIP part: {} not found", path.display());
        return Vec::new();
    }
    common::json(path)
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn speculative_greedy_equals_plain_greedy_for_every_k_and_draft() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let prompts = prompts(&dir);
    let mut checked = 0;
    let mut shortened = 0;
    let mut generator: Option<Generator<CandleModel, CandleModel>> = None;
    for draft_name in ["py-s", "py-xs"] {
        let draft = common::load(dir.join(draft_name), 512);
        let target = match generator.take() {
            Some(g) => g.into_parts().0,
            None => common::load(dir.join("py-m"), 512),
        };
        let mut g = Generator::new(target, draft).unwrap();
        for prompt in &prompts {
            let ids = g.encode(prompt).unwrap();
            let config = |k| GenerateConfig {
                max_new_tokens: 48,
                k,
                ..GenerateConfig::default()
            };
            let plain = g.generate(&ids, &config(1)).unwrap();
            assert_eq!(plain.stats.drafted, 0);
            assert_eq!(
                plain.stats.target_calls,
                plain.tokens.len() + usize::from(matches!(plain.stop_reason, StopReason::Eos(_)))
            );
            // Fixed windows 2..=8, then adaptive ones (the draft stops
            // below the confidence), which only change the windows.
            let adaptive = [(8, 0.4), (12, 0.2)];
            let runs = (2..=8).map(|k| (k, 0.0)).chain(adaptive);
            for (k, min_draft_confidence) in runs {
                let out = g
                    .generate(
                        &ids,
                        &GenerateConfig {
                            min_draft_confidence,
                            ..config(k)
                        },
                    )
                    .unwrap();
                shortened += out.stats.stopped_early;
                if min_draft_confidence == 0.0 {
                    assert_eq!(out.stats.stopped_early, 0);
                }
                assert_eq!(
                    out.tokens, plain.tokens,
                    "{draft_name} k={k} confidence {min_draft_confidence} prompt {prompt:?}"
                );
                assert_eq!(out.text, plain.text);
                assert_eq!(out.stop_reason, plain.stop_reason);
                assert!(out.stats.target_calls <= plain.stats.target_calls);
                checked += 1;
            }
        }
        generator = Some(g);
    }
    assert_eq!(checked, 2 * 9 * prompts.len());
    assert!(shortened > 0, "no adaptive window stopped early");
}

#[test]
fn greedy_matches_the_transformers_reference_through_the_generator() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let reference = common::json(dir.join("reference.json"));
    let mut g = Generator::new(
        common::load(dir.join("py-m"), 256),
        common::load(dir.join("py-xs"), 256),
    )
    .unwrap();
    for r in reference["models"]["py-m"].as_array().unwrap() {
        let prompt = common::ids(&r["prompt_ids"]);
        let want = common::ids(&r["greedy_48"]);
        let out = g
            .generate(
                &prompt,
                &GenerateConfig {
                    max_new_tokens: 48,
                    k: 5,
                    ..GenerateConfig::default()
                },
            )
            .unwrap();
        assert_eq!(out.tokens, want);
        assert_eq!(out.text.as_deref(), r["greedy_48_text"].as_str());
        assert!(g.target().cached_len() <= prompt.len() + 48);
    }
}

/// The n-gram drafter: greedy output is the target's own, on the reference
/// prompts and on prompts that repeat themselves (where most windows match).
#[test]
fn ngram_greedy_equals_plain_greedy() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let mut prompts = reference_prompts(&dir);
    prompts.extend(
        bench_prompts(&dir, "prompts_repeat.json")
            .into_iter()
            .take(2),
    );
    let target = common::load(dir.join("py-m"), 1024);
    let mut g = Generator::new(target, specdec::NGram::new(3).unwrap()).unwrap();
    let mut matched = 0;
    for prompt in &prompts {
        let ids = g.encode(prompt).unwrap();
        let config = |k| GenerateConfig {
            max_new_tokens: 32,
            k,
            ..GenerateConfig::default()
        };
        let plain = g.generate(&ids, &config(1)).unwrap();
        for k in [2, 4, 8] {
            let out = g.generate(&ids, &config(k)).unwrap();
            assert_eq!(out.tokens, plain.tokens, "k={k} prompt {prompt:?}");
            assert_eq!(out.stop_reason, plain.stop_reason);
            assert_eq!(out.stats.draft_calls, 0, "no forward pass to draft");
            assert!(out.stats.matched <= out.stats.target_calls);
            matched += out.stats.matched;
        }
    }
    assert!(matched > 0);
}
