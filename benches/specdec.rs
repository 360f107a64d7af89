//! Criterion benches: the verifier alone, a window's host-side verification
//! at 32k-152k vocabularies, one target forward of 1 and of k tokens, and
//! end-to-end plain vs speculative decoding.
//!
//! Models: py-m target + py-s draft from `../shared/models` (or
//! `SPECDEC_SHARED_MODELS`), falling back to the embedded py-s + py-xs pair.
//!
//!     cargo bench --bench specdec
//!
//! Timings on a shared machine drift; compare ratios within one run.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use specdec::sampling::SeededRandom;
use specdec::sampling::{argmax, gumbel, warp, Sampler, SamplingMode};
use specdec::verify::{verify_greedy, verify_logits, verify_sampled};
use specdec::{
    CandleModel, Eos, GenerateConfig, Generator, LanguageModel, Logits, NGram, SamplingParams,
};

fn pair() -> (PathBuf, PathBuf, &'static str) {
    // Forward passes then run on this thread, as a pool thread, like the
    // examples' (the second bench to ask finds the pool already running).
    let _ = specdec::backend::candle::init_thread_pool(None);
    let shared = std::env::var_os("SPECDEC_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    if shared.join("py-m/config.json").is_file() {
        (shared.join("py-m"), shared.join("py-s"), "py-m+py-s")
    } else {
        let embedded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
        (
            embedded.join("py-s"),
            embedded.join("py-xs"),
            "py-s+py-xs (embedded)",
        )
    }
}

/// Logits rows spread over ~24 nats, like a trained model's.
fn rows(n: usize, vocab: usize, seed: f32) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..vocab)
                .map(|v| 12.0 * ((v as f32 * 0.37 + i as f32 + seed).sin()))
                .collect()
        })
        .collect()
}

/// Logits rows shaped like a language model's: token `v` of rank
/// `r(v)` (a fixed shuffle of the ids, different per row) gets
/// `12 - 1.1 ln(1 + r)`, so probabilities fall off as a power of the rank
/// (Zipf-like, ~100 tokens in top-p 0.95's nucleus at T = 0.7).
fn lm_rows(n: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..n as u64)
        .map(|i| {
            let shift = (seed * 31 + i * 7) % vocab as u64;
            (0..vocab as u64)
                .map(|v| {
                    let rank = (v * 7919 + shift) % vocab as u64;
                    12.0 - 1.1 * ((1 + rank) as f32).ln()
                })
                .collect()
        })
        .collect()
}

fn verifier(c: &mut Criterion) {
    let vocab = 8192;
    let k = 5;
    let params = SamplingParams {
        top_p: Some(0.95),
        ..SamplingParams::with_temperature(0.8)
    };
    let (q_rows, p_rows) = (rows(k - 1, vocab, 0.1), rows(k, vocab, 0.4));
    let q: Vec<_> = q_rows
        .iter()
        .enumerate()
        .map(|(i, r)| warp(r, &params, &[], i).unwrap())
        .collect();
    let p: Vec<_> = p_rows
        .iter()
        .enumerate()
        .map(|(i, r)| warp(r, &params, &[], i).unwrap())
        .collect();
    let draft = [3u32, 17, 99, 1024];
    let mut group = c.benchmark_group("verifier");
    group.bench_function("warp 8192 logits (t=0.8, top-p 0.95)", |b| {
        b.iter(|| warp(&p_rows[0], &params, &[], 0).unwrap())
    });
    group.bench_function("verify_sampled k=5 vocab 8192", |b| {
        b.iter_batched(
            || SeededRandom::new(1),
            |mut rng| verify_sampled(&draft, &q, &p, &mut rng),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("reproducible: keyed Gumbel-max choice, vocab 8192", |b| {
        b.iter(|| gumbel::choose(&p[0], 7, 1234))
    });
    let ngram = NGram::new(3).unwrap();
    // A 1000-token sequence whose last 3 tokens occur once, near the start.
    let mut sequence: Vec<u32> = (0..1000).map(|i| 100 + (i * 7919 % 4001) as u32).collect();
    sequence[10..13].copy_from_slice(&[1, 2, 3]);
    sequence[997..].copy_from_slice(&[1, 2, 3]);
    group.bench_function("n-gram lookup (n=3) in 1000 tokens", |b| {
        b.iter(|| ngram.lookup(&sequence, 7))
    });
    group.bench_function("greedy: 5 argmax rows + verify_greedy", |b| {
        b.iter(|| {
            let best: Vec<u32> = p_rows.iter().map(|r| argmax(r, &[], 0).unwrap()).collect();
            verify_greedy(&draft, &best)
        })
    });
    group.finish();
}

/// One window's host-side verification at real models' vocabularies: what
/// the generator does with the target's `[8, vocab]` logits for a window of
/// 8 (7 draft tokens): greedy, the argmax of each row and the match; sampled
/// (rejection sampling at T = 0.7, top-p 0.95), warping rows up to the
/// first rejection and accepting or resampling, both when all 7 are
/// accepted (every row warped) and when the first is rejected. Llama 2 (32000), Llama 3 (128256) and Qwen2
/// (152064) vocabularies, rows shaped like a language model's
/// ([`lm_rows`]), and one row's warp alone. The goal is under 0.5 ms
/// sampled.
fn host_verify(c: &mut Criterion) {
    let k = 8;
    let draft: Vec<u32> = (0..k as u32 - 1).map(|i| 1000 + 37 * i).collect();
    let mut group = c.benchmark_group("host_verify");
    for vocab in [32000usize, 128256, 152064] {
        let target = Logits::new(lm_rows(k, vocab, 2).concat(), vocab);
        // Greedy on the host: each row's argmax (what the default
        // `forward_greedy` takes), then the longest agreeing prefix.
        group.bench_function(BenchmarkId::new("greedy window of 8", vocab), |b| {
            b.iter(|| {
                let choices: Vec<u32> = (0..k)
                    .map(|i| argmax(target.row(i), &[], i).unwrap())
                    .collect();
                verify_greedy(&draft, &choices)
            })
        });
        let params = SamplingParams {
            top_p: Some(0.95),
            ..SamplingParams::with_temperature(0.7)
        };
        let sampled = Sampler::new(params.clone(), SamplingMode::Rejection, 0, Vec::new());
        // One row alone, on this thread: what each row of a window costs.
        group.bench_function(
            BenchmarkId::new("warp one row (T=0.7, top-p 0.95)", vocab),
            |b| b.iter(|| warp(target.row(0), &params, &[], 0).unwrap()),
        );
        // Worst case: the draft is the target (q = p on every row, each
        // draft token a likely one), so all 7 are accepted and all 8 rows
        // are warped. Then drafts the target rarely agrees with, rejected
        // early (the label says after how many).
        let q_same: Vec<_> = lm_rows(k, vocab, 2)
            .iter()
            .take(k - 1)
            .enumerate()
            .map(|(i, r)| warp(r, &params, &[], i).unwrap())
            .collect();
        let likely: Vec<u32> = (0..k - 1)
            .map(|i| argmax(target.row(i), &[], i).unwrap())
            .collect();
        let q_other: Vec<_> = lm_rows(k - 1, vocab, 1)
            .iter()
            .enumerate()
            .map(|(i, r)| warp(r, &params, &[], i).unwrap())
            .collect();
        let unlikely: Vec<u32> = (0..k - 1)
            .map(|i| argmax(&lm_rows(k - 1, vocab, 1)[i], &[], i).unwrap())
            .collect();
        for (draft, q) in [(&likely, &q_same), (&unlikely, &q_other)] {
            let verdict =
                verify_logits(&sampled, &target, 100, draft, q, &mut SeededRandom::new(1)).unwrap();
            let label = format!(
                "sampled window of 8, {} of 7 accepted (T=0.7, top-p 0.95)",
                verdict.accepted
            );
            group.bench_function(BenchmarkId::new(label, vocab), |b| {
                b.iter_batched(
                    || SeededRandom::new(1),
                    |mut rng| verify_logits(&sampled, &target, 100, draft, q, &mut rng).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn target_forward(c: &mut Criterion) {
    let (target, _, name) = pair();
    let mut model = CandleModel::load(&target).unwrap();
    let prompt: Vec<u32> = (1..=64).collect();
    let mut group = c.benchmark_group(format!("target forward ({name})"));
    group.sample_size(30);
    for n in [1usize, 2, 4, 5, 8] {
        let tokens: Vec<u32> = (100..100 + n as u32).collect();
        model.reset().unwrap();
        model.forward(&prompt).unwrap();
        group.bench_with_input(BenchmarkId::new("tokens", n), &n, |b, _| {
            b.iter(|| {
                model.forward(&tokens).unwrap();
                model.truncate(prompt.len()).unwrap();
            })
        });
    }
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let (target, draft, name) = pair();
    let mut g = Generator::new(
        CandleModel::load(&target).unwrap(),
        CandleModel::load(&draft).unwrap(),
    )
    .unwrap();
    let prompt = g
        .encode("import numpy as np\nfrom typing import List\n\n\ndef ")
        .unwrap();
    let mut group = c.benchmark_group(format!("generate 64 tokens ({name})"));
    group.sample_size(10);
    // Plain, fixed windows, and the default adaptive windows.
    let runs = [(1usize, 0.0f32), (4, 0.0), (8, 0.0), (8, 0.3), (12, 0.3)];
    for (k, min_draft_confidence) in runs {
        let config = GenerateConfig {
            max_new_tokens: 64,
            k,
            eos: Eos::Ignore,
            min_draft_confidence,
            ..GenerateConfig::default()
        };
        let label = match (k, min_draft_confidence > 0.0) {
            (1, _) => "plain".to_string(),
            (_, false) => format!("speculative k={k}"),
            (_, true) => format!("speculative adaptive k<={k}"),
        };
        group.bench_function(label, |b| b.iter(|| g.generate(&prompt, &config).unwrap()));
    }
    // The n-gram drafter, on a prompt it can copy from.
    let target = g.into_parts().0;
    let mut g = Generator::new(target, NGram::new(3).unwrap()).unwrap();
    let prompt = g
        .encode("def area(r):\n    return 3.14159 * r * r\n\n\ndef area(r):\n")
        .unwrap();
    let config = GenerateConfig {
        max_new_tokens: 64,
        k: 8,
        eos: Eos::Ignore,
        ..GenerateConfig::default()
    };
    group.bench_function("n-gram k=8, a prompt to copy", |b| {
        b.iter(|| g.generate(&prompt, &config).unwrap())
    });
    group.finish();
}

criterion_group!(benches, verifier, host_verify, target_forward, end_to_end);
criterion_main!(benches);
