//! Exact output distributions: of a toy target sampling on its own, and of
//! any generator, by enumerating every random branch it takes.
//!
//! The target's own distribution is computed from its logits with
//! [`reference_warp`], written here from the documented order of
//! operations and sharing no code with the crate's `warp`: a bug in
//! warping shows up as a difference, not twice on both sides.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::toy::Toy;
use specdec::sampling::RandomSource;
use specdec::{Drafter, Eos, GenerateConfig, Generator, LanguageModel, SamplingParams, StopReason};

/// Warping as `SamplingParams` documents it, in the plainest code: softmax
/// of `row / temperature` with `suppress`ed ids removed; then top-k (the `k`
/// most likely, lower id first among ties); then top-p (the smallest
/// most-likely-first prefix of what is left whose mass, relative to what is
/// left, reaches `top_p`); then min-p (drop what is below `min_p` times the
/// most likely); renormalize. Greedy (temperature 0) is the point mass on
/// the argmax. Returns `[vocab]` probabilities.
pub fn reference_warp(row: &[f32], params: &SamplingParams, suppress: &[u32]) -> Vec<f64> {
    let vocab = row.len();
    let live = |v: usize| !suppress.contains(&(v as u32)) && row[v] != f32::NEG_INFINITY;
    if params.temperature == 0.0 {
        let mut best: Option<usize> = None;
        for v in (0..vocab).filter(|&v| live(v)) {
            if best.is_none_or(|b| row[v] > row[b]) {
                best = Some(v);
            }
        }
        let mut p = vec![0.0; vocab];
        p[best.expect("a live token")] = 1.0;
        return p;
    }
    let t = params.temperature as f64;
    let top = (0..vocab)
        .filter(|&v| live(v))
        .map(|v| row[v] as f64 / t)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut p: Vec<f64> = (0..vocab)
        .map(|v| {
            if live(v) {
                (row[v] as f64 / t - top).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    // Most likely first, lower id first among ties.
    let mut order: Vec<usize> = (0..vocab).filter(|&v| p[v] > 0.0).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    if let Some(k) = params.top_k {
        order.truncate(k);
    }
    if let Some(top_p) = params.top_p {
        let left: f64 = order.iter().map(|&v| p[v]).sum();
        let mut acc = 0.0;
        let mut keep = order.len();
        for (i, &v) in order.iter().enumerate() {
            acc += p[v] / left;
            if acc >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        order.truncate(keep);
    }
    if let Some(min_p) = params.min_p {
        let most = p[order[0]];
        order.retain(|&v| p[v] >= min_p as f64 * most);
    }
    let mass: f64 = order.iter().map(|&v| p[v]).sum();
    let mut out = vec![0.0; vocab];
    for v in order {
        out[v] = p[v] / mass;
    }
    out
}

/// (generated tokens, ended by EOS)
pub type Outcome = (Vec<u32>, bool);

/// Exact output distribution of the target sampling on its own.
pub fn reference(target: &Toy, prompt: &[u32], config: &GenerateConfig) -> BTreeMap<Outcome, f64> {
    let (stop, suppress) = match &config.eos {
        Eos::Model => (target.eos.clone(), vec![]),
        Eos::Tokens(t) => (t.clone(), vec![]),
        Eos::Ignore => (vec![], target.eos.clone()),
    };
    let mut dist = BTreeMap::new();
    let mut stack = vec![(prompt.to_vec(), 1.0f64)];
    while let Some((context, prob)) = stack.pop() {
        let generated = context[prompt.len()..].to_vec();
        if generated.len() == config.max_new_tokens {
            *dist.entry((generated, false)).or_insert(0.0) += prob;
            continue;
        }
        let p = reference_warp(&target.logits_after(&context), &config.sampling, &suppress);
        for (token, &pt) in p.iter().enumerate() {
            if pt == 0.0 {
                continue;
            }
            let token = token as u32;
            if stop.contains(&token) {
                *dist.entry((generated.clone(), true)).or_insert(0.0) += prob * pt;
            } else {
                let mut next = context.clone();
                next.push(token);
                stack.push((next, prob * pt));
            }
        }
    }
    dist
}

/// Follows `path` of (choice, number of options), extending it with first
/// choices, and multiplies the probability of the choices made.
pub struct Branches {
    path: Vec<(usize, usize)>,
    depth: usize,
    prob: f64,
}

impl Branches {
    fn choose(&mut self, probs: &[f64]) -> usize {
        let live: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
        if self.depth == self.path.len() {
            self.path.push((0, live.len()));
        }
        let (choice, options) = self.path[self.depth];
        assert_eq!(
            options,
            live.len(),
            "replay diverged at depth {}",
            self.depth
        );
        let pick = live[choice];
        self.depth += 1;
        self.prob *= probs[pick];
        pick
    }
}

impl RandomSource for Branches {
    fn categorical(&mut self, probs: &[f64]) -> usize {
        let total: f64 = probs.iter().sum();
        let normalized: Vec<f64> = probs.iter().map(|p| p / total).collect();
        self.choose(&normalized)
    }
    fn bernoulli(&mut self, p: f64) -> bool {
        assert!(
            p > 0.0 && p < 1.0,
            "a certain outcome must not consume randomness: p = {p}"
        );
        self.choose(&[p, 1.0 - p]) == 0
    }
}

/// Exact output distribution of the speculative generator.
pub fn speculative<T: LanguageModel, D: Drafter>(
    generator: &mut Generator<T, D>,
    prompt: &[u32],
    config: &GenerateConfig,
) -> BTreeMap<Outcome, f64> {
    let mut dist = BTreeMap::new();
    let mut path = Vec::new();
    loop {
        let mut src = Branches {
            path,
            depth: 0,
            prob: 1.0,
        };
        let out = generator
            .generate_with(prompt, config, &mut src, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(
            src.depth,
            src.path.len(),
            "every recorded choice was replayed"
        );
        let eos = matches!(out.stop_reason, StopReason::Eos(_));
        *dist.entry((out.tokens, eos)).or_insert(0.0) += src.prob;
        // Next path: bump the deepest choice that has siblings left.
        path = src.path;
        while let Some((choice, options)) = path.pop() {
            if choice + 1 < options {
                path.push((choice + 1, options));
                break;
            }
        }
        if path.is_empty() {
            return dist;
        }
    }
}

/// Asserts two distributions are equal to 1e-9 and the first sums to 1.
pub fn assert_same(a: &BTreeMap<Outcome, f64>, b: &BTreeMap<Outcome, f64>, what: &str) {
    let total: f64 = a.values().sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "{what}: speculative probabilities sum to {total}"
    );
    for key in a.keys().chain(b.keys()) {
        let (x, y) = (
            a.get(key).copied().unwrap_or(0.0),
            b.get(key).copied().unwrap_or(0.0),
        );
        assert!(
            (x - y).abs() < 1e-9,
            "{what}: P{key:?} = {x} speculative vs {y} target"
        );
    }
}
