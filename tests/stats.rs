//! The statistics a generation reports, checked through the identities they
//! must satisfy, and second, independent tests for behaviour that one test
//! alone used to catch (a mutation audit found each of these surviving
//! every other test):
//!
//! - the windows histogram counts the windows actually scored, and sums to
//!   the target passes and (weighted by draft tokens) to the drafted count;
//! - `accepted_at` sums to `accepted`; every window ends in exactly one
//!   recovered or bonus token; `matched` counts the windows that drafted;
//! - a draft model identical to the target is accepted in full, in every
//!   mode (reproducible mode included: draft and target keyed to the same
//!   position's noise);
//! - a static-shape model refuses windows it did not compile, and a draft
//!   model stops only where a compiled window remains;
//! - with two stop strings the text ends before whichever comes first.

mod common;

use common::toy::{Stubborn, Toy};
use specdec::backend::static_shape::{StaticShapeModel, StaticShapes};
use specdec::drafter::{DraftRequest, Proposal};
use specdec::{
    Drafter, Eos, Error, GenerateConfig, Generator, LanguageModel, NGram, SamplingMode,
    SamplingParams, Stats, StopReason,
};

/// Every identity between the counters of one generation.
fn check_identities(s: &Stats, what: &str) {
    let windows: usize = s.windows.iter().sum();
    assert_eq!(
        windows, s.target_calls,
        "{what}: windows sum to target passes"
    );
    let weighted: usize = s.windows.iter().enumerate().map(|(d, c)| d * c).sum();
    assert_eq!(
        weighted, s.drafted,
        "{what}: windows x draft tokens sum to drafted"
    );
    assert_eq!(
        s.accepted_at.iter().sum::<usize>(),
        s.accepted,
        "{what}: accepted_at sums to accepted"
    );
    assert_eq!(
        s.recovered + s.bonus,
        s.target_calls,
        "{what}: one recovered or bonus token per window"
    );
    assert_eq!(
        s.matched,
        s.windows[1..].iter().sum::<usize>(),
        "{what}: matched counts the windows that drafted"
    );
    // Position i + 1 can only be accepted where position i was, and in a
    // window that drafted more than i tokens.
    for i in 0..s.accepted_at.len() {
        let room: usize = s.windows[i + 1..].iter().sum();
        assert!(s.accepted_at[i] <= room, "{what}: accepted_at[{i}]");
        if i > 0 {
            assert!(
                s.accepted_at[i] <= s.accepted_at[i - 1],
                "{what}: accepted_at"
            );
        }
    }
    assert!(s.accepted <= s.drafted, "{what}");
    assert!(s.stopped_early <= s.target_calls, "{what}");
}

fn config(
    k: usize,
    sampling: SamplingParams,
    mode: SamplingMode,
    confidence: f32,
) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: 40,
        k,
        sampling,
        sampling_mode: mode,
        min_draft_confidence: confidence,
        seed: 5,
        eos: Eos::Ignore,
        ..GenerateConfig::default()
    }
}

fn modes() -> Vec<(SamplingParams, SamplingMode, &'static str)> {
    vec![
        (SamplingParams::greedy(), SamplingMode::Rejection, "greedy"),
        (
            SamplingParams::with_temperature(0.8),
            SamplingMode::Rejection,
            "rejection",
        ),
        (
            SamplingParams::with_temperature(0.8),
            SamplingMode::Reproducible,
            "reproducible",
        ),
    ]
}

#[test]
fn the_counters_satisfy_their_identities_for_every_drafter_and_mode() {
    let mut stopped_early = 0;
    let mut partly_accepted = 0;
    for (params, mode, name) in modes() {
        for k in [1, 3, 8] {
            for confidence in [0.0, 0.45] {
                let c = config(k, params.clone(), mode, confidence);
                let what = format!("{name}, k = {k}, min_draft_confidence {confidence}");
                let mut g = Generator::new(Toy::new(6, 0.2), Toy::new(6, 0.9)).unwrap();
                let s = g.generate(&[1, 2, 3], &c).unwrap().stats;
                check_identities(&s, &format!("draft model, {what}"));
                stopped_early += s.stopped_early;
                partly_accepted += usize::from(s.accepted > 0 && s.accepted < s.drafted);
                let mut g = Generator::new(Toy::new(6, 0.2), NGram::new(2).unwrap()).unwrap();
                check_identities(
                    &g.generate(&[1, 2, 3, 1, 2], &c).unwrap().stats,
                    &format!("n-gram, {what}"),
                );
                let mut g = Generator::new(Toy::new(6, 0.2), Stubborn { vocab: 6 }).unwrap();
                check_identities(
                    &g.generate(&[1, 2, 3], &c).unwrap().stats,
                    &format!("stubborn, {what}"),
                );
            }
        }
    }
    // The identities must have had something to check.
    assert!(stopped_early > 0, "no adaptive window stopped early");
    assert!(partly_accepted > 0, "no run accepted part of its drafts");
}

/// The n-gram drafter on text that repeats only in places: `matched` is
/// the windows that found a match, fewer than the windows with room.
#[test]
fn matched_counts_only_the_windows_that_drafted() {
    let mut g = Generator::new(Toy::new(9, 0.3), NGram::new(3).unwrap()).unwrap();
    let c = config(4, SamplingParams::greedy(), SamplingMode::Rejection, 0.0);
    let s = g.generate(&[1, 2, 3, 4], &c).unwrap().stats;
    check_identities(&s, "n-gram");
    assert!(s.windows[0] > 0 && s.matched > 0, "{s:?}");
    assert!(s.matched < s.target_calls, "{s:?}");
}

/// A draft model that is the target: every draft token is accepted and
/// every window ends in a bonus token, in every mode. In reproducible mode
/// this holds only if the draft's token for position t uses the noise of
/// position t, as the target's does.
#[test]
fn an_identical_draft_is_accepted_in_full() {
    for (params, mode, name) in modes() {
        for k in [2, 5, 8] {
            let c = config(k, params.clone(), mode, 0.0);
            let mut g = Generator::new(Toy::new(7, 0.4), Toy::new(7, 0.4)).unwrap();
            let out = g.generate(&[3, 1, 4], &c).unwrap();
            let s = &out.stats;
            let what = format!("{name}, k = {k}");
            check_identities(s, &what);
            assert!(s.drafted > 0, "{what}");
            assert_eq!(
                s.accepted,
                s.drafted,
                "{what}: acceptance {}",
                s.acceptance_rate()
            );
            assert_eq!(s.recovered, 0, "{what}");
            assert_eq!(s.bonus, s.target_calls, "{what}");
            assert_eq!(s.accepted_at[0], s.target_calls - s.windows[0], "{what}");
            assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
        }
    }
}

fn shapes(windows: &[usize], buckets: &[usize]) -> StaticShapes {
    StaticShapes {
        windows: windows.to_vec(),
        prompt_buckets: buckets.to_vec(),
        batch_size: 1,
    }
}

/// The adapter runs compiled windows only, and a refused forward leaves
/// the cache as it was.
#[test]
fn the_static_shape_adapter_refuses_windows_it_did_not_compile() {
    let mut m = StaticShapeModel::new(Toy::new(5, 0.1), shapes(&[1, 4], &[8]), 32).unwrap();
    m.prefill(&[1, 2, 3]).unwrap();
    for n in [2, 3, 5, 7] {
        let tokens = vec![1u32; n];
        match m.forward(&tokens) {
            Err(Error::NotCompiled { message, .. }) => {
                assert!(message.contains(&format!("{n} tokens")), "{message}")
            }
            other => panic!("a window of {n}: {other:?}"),
        }
        assert_eq!(m.cached_len(), 3, "a refused window of {n} moved the cache");
    }
    assert_eq!(m.forward(&[1, 2, 3, 4]).unwrap().rows(), 4);
    assert_eq!(m.forward(&[1]).unwrap().rows(), 1);
    assert_eq!(m.graph_calls().token_generation, vec![(1, 1), (4, 1)]);
}

/// Records the proposals of the drafter it wraps.
struct Recording<D> {
    inner: D,
    /// `(max, proposed)` per window.
    seen: Vec<(usize, usize)>,
    stopped: usize,
}

impl<D: Drafter> Drafter for Recording<D> {
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> specdec::Result<Proposal> {
        let p = self.inner.propose(request)?;
        self.seen.push((request.max, p.tokens.len()));
        self.stopped += usize::from(p.stopped_early);
        Ok(p)
    }
    fn check_target(&self, target: &dyn LanguageModel) -> specdec::Result<()> {
        self.inner.check_target(target)
    }
    fn check_limits(&self, prompt: usize, max_new_tokens: usize) -> specdec::Result<()> {
        self.inner.check_limits(prompt, max_new_tokens)
    }
    fn start(&mut self, head: &[u32]) -> specdec::Result<()> {
        self.inner.start(head)
    }
    fn rollback(&mut self, len: usize) -> specdec::Result<()> {
        self.inner.rollback(len)
    }
}

/// A draft model unsure of itself, on a target compiled for windows 1, 3
/// and 6: every proposal it makes, early stops included, fills a compiled
/// window exactly (so the generator never has to cut drafts it drew).
#[test]
fn a_draft_model_stops_only_where_a_compiled_window_remains() {
    let windows = [1, 3, 6];
    let mut stops = 0;
    for (params, mode, name) in modes() {
        for confidence in [0.3, 0.5, 0.7] {
            let target =
                StaticShapeModel::new(Toy::new(6, 0.2), shapes(&windows, &[16]), 64).unwrap();
            let mut draft = Toy::new(6, 0.7);
            draft.scale = 0.8; // flat rows: often below the threshold
            let drafter = Recording {
                inner: draft,
                seen: Vec::new(),
                stopped: 0,
            };
            let mut g = Generator::new(target, drafter).unwrap();
            let c = config(6, params.clone(), mode, confidence);
            let s = g.generate(&[1, 2, 3], &c).unwrap().stats;
            let (_, drafter) = g.into_parts();
            for &(max, proposed) in &drafter.seen {
                assert!(
                    windows.contains(&(proposed + 1)),
                    "{name}, {confidence}: proposed {proposed} of {max}, no compiled window of {}",
                    proposed + 1
                );
            }
            for (d, &count) in s.windows.iter().enumerate() {
                assert!(
                    count == 0 || windows.contains(&(d + 1)),
                    "{name}: {:?}",
                    s.windows
                );
            }
            stops += drafter.stopped;
        }
    }
    assert!(
        stops > 0,
        "the draft never stopped early: the test checked nothing"
    );
}

/// Two stop strings, listed in either order: the text ends before the one
/// that comes first in it.
#[test]
fn the_first_stop_string_in_the_text_ends_it_whatever_the_list_order() {
    let (t, d) = (common::embedded("py-s"), common::embedded("py-xs"));
    let mut g = Generator::new(common::load(&t, 256), common::load(&d, 256)).unwrap();
    let base = GenerateConfig {
        max_new_tokens: 48,
        k: 4,
        sampling: SamplingParams::greedy(),
        eos: Eos::Ignore,
        ..GenerateConfig::default()
    };
    let prompt = "def fibonacci(n):";
    let full = g.generate_text(prompt, &base).unwrap().text.unwrap();
    // Two short pieces of the output, the second starting later.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() > 40, "{full:?}");
    let piece = |at: usize| -> String { full[chars[at].0..].chars().take(3).collect() };
    let (early, late) = (piece(12), piece(30));
    let first_early = full.find(&early).unwrap();
    let first_late = full.find(&late).unwrap();
    assert!(first_early < first_late || first_late < first_early);
    let cut = first_early.min(first_late);
    for stops in [
        vec![early.clone(), late.clone()],
        vec![late.clone(), early.clone()],
    ] {
        let config = GenerateConfig {
            stop_strings: stops.clone(),
            ..base.clone()
        };
        for k in [1, 4] {
            let out = g
                .generate_text(
                    prompt,
                    &GenerateConfig {
                        k,
                        ..config.clone()
                    },
                )
                .unwrap();
            assert_eq!(
                out.text.as_deref(),
                Some(&full[..cut]),
                "stops {stops:?}, k = {k}"
            );
            assert!(
                matches!(out.stop_reason, StopReason::StopString(_)),
                "{:?}",
                out.stop_reason
            );
        }
    }
}
