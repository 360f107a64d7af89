//! The exact output distribution of a toy target sampling on its own.

use std::collections::BTreeMap;

use super::toy::Toy;
use specdec::sampling::{argmax, warp};
use specdec::{Distribution, Eos, GenerateConfig, Role};

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
        let p = if config.sampling.is_greedy() {
            let row = target.logits_after(&context);
            let best = argmax(&row, &suppress, Role::Target, 0).unwrap();
            Distribution::point(best, target.vocab)
        } else {
            warp(
                &target.logits_after(&context),
                &config.sampling,
                &suppress,
                Role::Target,
                0,
            )
            .unwrap()
        };
        for (token, &pt) in p.probs().iter().enumerate() {
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
