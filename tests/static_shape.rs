//! The generator through the static-shape adapter (Inferentia2's rules):
//! identical greedy output, identically distributed samples, only compiled
//! shapes used, and limits checked before generating.

mod common;

use common::exact::{assert_same, reference, speculative};
use common::toy::{Stubborn, Toy};
use specdec::backend::static_shape::{StaticShapeModel, StaticShapes};
use specdec::{
    Drafter, Error, GenerateConfig, Generator, LanguageModel, NGram, SamplingMode, SamplingParams,
};

fn shapes(windows: &[usize], buckets: &[usize]) -> StaticShapes {
    StaticShapes {
        windows: windows.to_vec(),
        prompt_buckets: buckets.to_vec(),
        batch_size: 1,
    }
}

fn wrap<M: LanguageModel>(
    m: M,
    windows: &[usize],
    buckets: &[usize],
    n: usize,
) -> StaticShapeModel<M> {
    StaticShapeModel::new(m, shapes(windows, buckets), n).unwrap()
}

#[test]
fn greedy_output_is_identical_through_compiled_shapes() {
    let (t, d) = (common::embedded("py-s"), common::embedded("py-xs"));
    let mut dynamic = Generator::new(common::load(&t, 256), common::load(&d, 256)).unwrap();
    let target = wrap(common::load(&t, 256), &[1, 2, 4], &[8, 16, 32], 200);
    let draft = wrap(common::load(&d, 256), &[1], &[8, 16, 32], 200);
    let mut fixed = Generator::new(target, draft).unwrap();
    for prompt in [
        "import numpy as np\n",
        "class Stack:\n    def push(self, item):",
    ] {
        let ids = dynamic.encode(prompt).unwrap();
        // Fixed windows, and adaptive ones (the default confidence).
        for (k, min_draft_confidence) in [(1, 0.0), (2, 0.0), (4, 0.0), (4, 0.3)] {
            let config = GenerateConfig {
                max_new_tokens: 40,
                k,
                min_draft_confidence,
                ..GenerateConfig::default()
            };
            let want = dynamic.generate(&ids, &config).unwrap();
            let got = fixed.generate(&ids, &config).unwrap();
            assert_eq!(
                got.tokens, want.tokens,
                "k={k} {min_draft_confidence} {prompt:?}"
            );
        }
    }
    let calls = fixed.target().graph_calls().clone();
    assert!(
        calls.context_encoding > 0 && calls.padded_positions > 0,
        "{calls:?}"
    );
    assert!(
        calls
            .token_generation
            .iter()
            .all(|(w, _)| [1, 2, 4].contains(w)),
        "{calls:?}"
    );
    let draft_calls = fixed.drafter().graph_calls();
    assert!(
        draft_calls.token_generation.iter().all(|(w, _)| *w == 1),
        "{draft_calls:?}"
    );
}

#[test]
fn an_uncompiled_window_falls_back_to_the_largest_compiled_one() {
    let target = wrap(Toy::new(5, 0.2), &[1, 3, 5], &[4, 8], 64);
    let draft = wrap(Toy::new(5, 0.9), &[1, 2], &[4, 8], 64);
    let mut g = Generator::new(target, draft).unwrap();
    assert_eq!(g.effective_k(4), 3);
    assert_eq!(g.effective_k(9), 5);
    let out = g
        .generate(
            &[1, 2, 3],
            &GenerateConfig {
                max_new_tokens: 20,
                k: 4,
                ..GenerateConfig::default()
            },
        )
        .unwrap();
    assert_eq!(out.stats.k, 3);
    assert_eq!(out.tokens.len(), 20);
    // Near the end of the budget the window shrinks to compiled sizes only.
    let windows = &g.target().graph_calls().token_generation;
    assert!(
        windows.iter().all(|(w, _)| [1, 3].contains(w)),
        "{windows:?}"
    );
}

#[test]
fn sampled_output_is_distributed_exactly_as_the_target_through_compiled_shapes() {
    let target = Toy::new(4, 0.3).with_eos(3);
    let cases = [(&[1, 3][..], 3), (&[1, 2, 4][..], 4), (&[1, 4][..], 3)];
    // With adaptive windows the draft may stop only where the window it
    // leaves is compiled; several drafts and thresholds, so that stops fall
    // at every position.
    let mut stops = 0;
    for (draft_seed, min_draft_confidence) in [(1.1, 0.0), (1.1, 0.55), (0.2, 0.65), (2.5, 0.8)] {
        let draft = Toy::new(4, draft_seed).with_eos(3);
        for (windows, k) in cases {
            let config = GenerateConfig {
                min_draft_confidence,
                max_new_tokens: 3,
                k,
                sampling: SamplingParams {
                    temperature: 0.9,
                    top_k: Some(3),
                    top_p: None,
                    min_p: None,
                },
                ..GenerateConfig::default()
            };
            let mut g = Generator::new(
                wrap(target.clone(), windows, &[2, 4], 16),
                wrap(draft.clone(), &[1, 2], &[2, 4], 16),
            )
            .unwrap();
            let got = speculative(&mut g, &[1, 2], &config);
            if min_draft_confidence > 0.0 {
                // The enumeration must have taken early stops, or this case
                // tests nothing adaptive.
                stops += (0..8)
                    .map(|seed| {
                        g.generate(
                            &[1, 2],
                            &GenerateConfig {
                                seed,
                                ..config.clone()
                            },
                        )
                        .unwrap()
                        .stats
                        .stopped_early
                    })
                    .sum::<usize>();
            }
            assert_same(
                &got,
                &reference(&target, &[1, 2], &config),
                &format!("windows {windows:?} k={k} draft {draft_seed} confidence {min_draft_confidence}"),
            );
        }
    }
    assert!(stops > 0, "no adaptive window stopped early");
}

/// Drafts with no distribution (the n-gram drafter, and one that always
/// fills the window but is mostly wrong) through compiled shapes: an n-gram
/// proposal that ends short is cut to the largest compiled window it fills,
/// a cut that depends only on the committed tokens, so the output is still
/// exactly the target's, sampled and greedy.
#[test]
fn point_mass_drafts_cut_to_compiled_windows_keep_the_targets_distribution() {
    let target = Toy::new(4, 0.3).with_eos(3);
    // The last token's earlier occurrence is followed by one token only, so
    // proposals of every length come up, many of them cut.
    let prompt = [2, 1, 0, 0];
    let mut matched = 0;
    for params in [
        SamplingParams {
            top_k: Some(3),
            ..SamplingParams::with_temperature(0.8)
        },
        SamplingParams::greedy(),
    ] {
        for (windows, k) in [(&[1, 3][..], 4), (&[1, 2, 4][..], 5), (&[1, 4][..], 6)] {
            let config = GenerateConfig {
                max_new_tokens: 4,
                k,
                sampling: params.clone(),
                ..GenerateConfig::default()
            };
            let want = reference(&target, &prompt, &config);
            let drafters: [Box<dyn Drafter>; 3] = [
                Box::new(NGram::new(1).unwrap()),
                Box::new(NGram::new(3).unwrap()),
                Box::new(Stubborn { vocab: 4 }),
            ];
            for (i, drafter) in drafters.into_iter().enumerate() {
                let mut g =
                    Generator::new(wrap(target.clone(), windows, &[8], 16), drafter).unwrap();
                assert_same(
                    &speculative(&mut g, &prompt, &config),
                    &want,
                    &format!("drafter {i} windows {windows:?} k={k} {params:?}"),
                );
                matched += g.generate(&prompt, &config).unwrap().stats.matched;
            }
        }
    }
    assert!(matched > 0, "no window had a proposal");
}

#[test]
fn the_adapter_rejects_shapes_that_were_not_compiled() {
    let mut m = wrap(Toy::new(5, 0.2), &[1, 4], &[8], 16);
    m.forward(&[1, 2, 3]).unwrap(); // a prompt pass, padded to the bucket of 8
    assert_eq!(m.cached_len(), 3);
    assert_eq!(m.graph_calls().padded_positions, 5);
    match m.forward(&[1, 2, 3]) {
        Err(Error::NotCompiled { message, .. }) => assert!(
            message.contains("no compiled graph for 3 tokens"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.cached_len(),
        3,
        "a rejected call leaves the cache as it was"
    );
    m.forward(&[1, 2, 3, 4]).unwrap();
    m.truncate(5).unwrap(); // rollback = next write position
    m.forward(&[1, 2, 3, 4]).unwrap();
    assert_eq!(m.cached_len(), 9);
    assert!(
        m.forward(&[1, 2, 3, 4, 1, 2, 3, 4]).is_err(),
        "a bucket serves only an empty cache"
    );
    m.forward(&[1, 2, 3, 4]).unwrap();
    assert!(m.forward(&[1, 2, 3, 4]).is_err(), "past n_positions = 16");
}

#[test]
fn bad_compiled_shapes_are_refused_at_construction() {
    let cases: [(StaticShapes, usize, &str); 4] = [
        (shapes(&[], &[8]), 16, "windows"),
        (shapes(&[1], &[]), 16, "prompt_buckets"),
        (
            StaticShapes {
                batch_size: 4,
                ..shapes(&[1], &[8])
            },
            16,
            "batch_size",
        ),
        (shapes(&[1], &[8]), 1000, "n_positions"),
    ];
    for (s, n, name) in cases {
        match StaticShapeModel::new(Toy::new(3, 0.1), s, n) {
            Err(Error::InvalidSetting { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A target without the 1-token graph cannot decode its last tokens.
    let no_plain = wrap(Toy::new(3, 0.1), &[4], &[8], 16);
    assert!(matches!(
        Generator::new(no_plain, Toy::new(3, 0.2)),
        Err(Error::NotCompiled { .. })
    ));
}

#[test]
fn limits_are_checked_before_generating() {
    let target = wrap(Toy::new(5, 0.2), &[1, 4], &[4], 32);
    let mut g = Generator::new(target, Toy::new(5, 0.4)).unwrap();
    let config = GenerateConfig {
        max_new_tokens: 30,
        k: 4,
        ..GenerateConfig::default()
    };
    assert!(matches!(
        g.generate(&[1, 2, 3], &config),
        Err(Error::TooLong {
            limit: 32,
            needed: 33,
            ..
        })
    ));
    let long_prompt = [1u32; 10];
    let config = GenerateConfig {
        max_new_tokens: 4,
        ..config
    };
    assert!(
        matches!(
            g.generate(&long_prompt, &config),
            Err(Error::NotCompiled { .. })
        ),
        "prompt beyond the largest bucket"
    );
    assert_eq!(g.target().graph_calls().context_encoding, 0, "nothing ran");
}

/// Records the size of every forward the wrapped model runs.
struct Recorder {
    inner: Toy,
    sizes: std::rc::Rc<std::cell::RefCell<Vec<usize>>>,
}

impl LanguageModel for Recorder {
    fn forward(&mut self, tokens: &[u32]) -> specdec::Result<specdec::Logits> {
        self.sizes.borrow_mut().push(tokens.len());
        self.inner.forward(tokens)
    }
    fn truncate(&mut self, len: usize) -> specdec::Result<()> {
        self.inner.truncate(len)
    }
    fn cached_len(&self) -> usize {
        self.inner.cached_len()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn n_positions(&self) -> usize {
        self.inner.n_positions()
    }
}

/// Independent of the adapter's own checks: what the wrapped model really
/// ran, for every drafter and mode, is only ever a compiled window or a
/// compiled prompt bucket (and a bucket only for the prompt pass).
#[test]
fn the_wrapped_model_only_ever_runs_compiled_sizes() {
    let (windows, buckets) = ([1usize, 3, 4], [4usize, 8]);
    let sizes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let target = || Recorder {
        inner: Toy::new(5, 0.2).with_eos(4),
        sizes: sizes.clone(),
    };
    let modes = [
        (SamplingParams::greedy(), SamplingMode::Rejection),
        (
            SamplingParams::with_temperature(0.9),
            SamplingMode::Rejection,
        ),
        (
            SamplingParams::with_temperature(0.9),
            SamplingMode::Reproducible,
        ),
    ];
    let prompt = [1u32, 2, 1, 2, 3, 1];
    for (params, mode) in &modes {
        for (k, min_draft_confidence) in [(2, 0.0), (4, 0.0), (5, 0.0), (4, 0.6)] {
            let config = GenerateConfig {
                max_new_tokens: 12,
                k,
                min_draft_confidence,
                sampling: params.clone(),
                sampling_mode: *mode,
                seed: k as u64,
                ..GenerateConfig::default()
            };
            let mut g = Generator::new(
                wrap(target(), &windows, &buckets, 32),
                wrap(Toy::new(5, 0.9).with_eos(4), &[1, 2], &buckets, 32),
            )
            .unwrap();
            g.generate(&prompt, &config).unwrap();
            let mut g = Generator::new(
                wrap(target(), &windows, &buckets, 32),
                NGram::new(2).unwrap(),
            )
            .unwrap();
            let out = g.generate(&prompt, &config).unwrap();
            assert!(out.stats.target_calls > 0);
        }
    }
    let sizes = sizes.borrow();
    assert!(sizes.len() > 50, "{sizes:?}");
    // The prompt pass is prompt.len() - 1 = 5 tokens, padded to 8.
    assert!(
        sizes.iter().all(|n| windows.contains(n) || *n == 8),
        "{sizes:?}"
    );
    assert!(sizes.contains(&3) && sizes.contains(&4), "{sizes:?}");
}

/// Independent of the exact-distribution test: adaptive windows on real
/// models stop early, yet every window the target scored is a compiled
/// one (2 and 3 are not), and greedy output is the dynamic target's.
#[test]
fn adaptive_windows_stop_only_where_a_compiled_window_remains() {
    let (t, d) = (common::embedded("py-s"), common::embedded("py-xs"));
    let mut dynamic = Generator::new(common::load(&t, 256), common::load(&d, 256)).unwrap();
    let target = wrap(common::load(&t, 256), &[1, 4, 6], &[16, 32], 200);
    let mut fixed = Generator::new(target, common::load(&d, 256)).unwrap();
    let ids = dynamic.encode("def area(r):\n    return").unwrap();
    let (mut stopped, mut uncompiled) = (0, 0);
    for min_draft_confidence in [0.3, 0.6, 0.9] {
        let config = GenerateConfig {
            max_new_tokens: 40,
            k: 6,
            min_draft_confidence,
            ..GenerateConfig::default()
        };
        let got = fixed.generate(&ids, &config).unwrap();
        let want = dynamic.generate(&ids, &config).unwrap();
        assert_eq!(got.tokens, want.tokens, "confidence {min_draft_confidence}");
        stopped += got.stats.stopped_early;
        for (i, &n) in got.stats.windows.iter().enumerate() {
            assert!(
                n == 0 || [1, 4, 6].contains(&(i + 1)),
                "{n} windows of {} positions: {:?}",
                i + 1,
                got.stats.windows
            );
        }
        uncompiled += want.stats.windows[1] + want.stats.windows[2];
    }
    assert!(stopped > 0, "no window stopped early");
    // Left alone, the draft does stop where no window is compiled.
    assert!(uncompiled > 0, "the dynamic run never used windows 2 or 3");
}
