//! Our Llama forward pass against candle-transformers' `models::llama::Llama`
//! on the trained checkpoints `../shared/models/py-m` and `py-s` (f32, CPU).
//!
//! candle-transformers is an independent reference: the same weights and the
//! same tensor library underneath, but a different implementation of the
//! model (its own config parsing, weight naming, RoPE tables, causal mask,
//! GQA head repetition, tied-embedding handling and KV cache). We cannot use
//! it as our backend (its `forward` returns only the last position's logits
//! and its `Cache` cannot be rolled back, both of which verification needs),
//! but where it does apply it must agree with us: the last-position logits
//! of real Python text, at several prompt lengths, and then token by token
//! through a few decode steps with each side on its own KV cache. The
//! transformers golden outputs (`backend_reference.rs`) only keep the top-5
//! logits; this compares the full vocabulary row.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};
use specdec::{CandleModel, LanguageModel};

/// Real text for the prompt: a Python snippet like the checkpoints' training data.
const SNIPPET: &str = r#"import os
import json


def load_config(path, defaults=None):
    """Read a JSON config file and fill in missing keys from defaults."""
    config = dict(defaults or {})
    if os.path.exists(path):
        with open(path, "r") as f:
            config.update(json.load(f))
    return config


class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1
"#;

/// Prompt prefix lengths to compare at (clamped to the encoded snippet's length).
const PROMPT_LENS: [usize; 4] = [1, 9, 40, usize::MAX];

/// Greedy decode steps after the full prompt, one token per forward on each side.
const DECODE_STEPS: usize = 8;

/// Largest allowed |ours - candle-transformers| over a whole logits row.
/// Measured max |diff| (f32, CPU, x86-64, 2 threads), the same on every run:
/// py-m 2.0e-5, py-s 1.4e-5 over all the prompt lengths and decode steps
/// here, on logits of magnitude up to ~17. Both sides compute in f32 from the
/// same bf16-exact weights, so what is left is summation-order rounding; the
/// tolerance is 5x the worst measured value.
const TOLERANCE: f32 = 1e-4;

/// candle-transformers' Llama for the checkpoint in `dir`, as it loads
/// Hugging Face directories: `LlamaConfig` from config.json, weights through
/// an mmaped `VarBuilder` converting the stored bf16 to f32.
fn load_reference(dir: &Path) -> (Llama, Config) {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: LlamaConfig = serde_json::from_str(&text).unwrap();
    let config = config.into_config(false);
    // candle-transformers derives head_dim as hidden_size / num_attention_heads
    // and ignores config.json's `head_dim`: only valid where those agree.
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    if let Some(head_dim) = raw["head_dim"].as_u64() {
        assert_eq!(
            head_dim as usize,
            config.hidden_size / config.num_attention_heads,
            "{}: head_dim differs from hidden_size / num_attention_heads, which candle-transformers assumes",
            dir.display()
        );
    }
    // SAFETY: the checkpoint is a read-only fixture nobody rewrites while tests run.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    (Llama::load(vb, &config).unwrap(), config)
}

/// candle-transformers' logits for the last of `tokens`, fed at `index_pos`.
fn reference_last(model: &Llama, cache: &mut Cache, tokens: &[u32], index_pos: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, index_pos, cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Index of the largest value, the lowest among ties.
fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap() as u32
}

/// Compares the two rows; returns their max |diff|.
fn compare(name: &str, at: &str, ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "{name} {at}: vocabulary size");
    assert!(
        ours.iter().all(|x| x.is_finite()),
        "{name} {at}: non-finite logits"
    );
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= TOLERANCE,
        "{name} {at}: logits differ from candle-transformers by {diff} (tolerance {TOLERANCE})"
    );
    assert_eq!(
        argmax(ours),
        argmax(reference),
        "{name} {at}: argmax differs from candle-transformers"
    );
    diff
}

fn check(name: &str) {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let dir = dir.join(name);
    let (reference, config) = load_reference(&dir);
    let mut ours = CandleModel::load(&dir).unwrap();
    let prompt = ours.tokenizer().unwrap().encode(SNIPPET).unwrap();
    assert!(
        prompt.len() > 40,
        "{name}: prompt of {} tokens",
        prompt.len()
    );

    let mut worst = 0f32;
    let mut full = None;
    for len in PROMPT_LENS {
        let len = len.min(prompt.len());
        let tokens = &prompt[..len];
        let mut cache = Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap();
        let want = reference_last(&reference, &mut cache, tokens, 0);
        ours.reset().unwrap();
        let got = ours.forward_last(tokens).unwrap();
        let diff = compare(name, &format!("prompt of {len}"), got.row(0), &want);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{name}: prompt of {len} tokens, max |diff| {diff:.3e}, max |logit| {scale:.1}");
        worst = worst.max(diff);
        full = Some((cache, got.row(0).to_vec()));
    }

    // Decode from the full prompt, each side on the cache it just filled.
    let (mut cache, mut row) = full.unwrap();
    let mut continuation = Vec::new();
    for step in 0..DECODE_STEPS {
        let pos = prompt.len() + step;
        let next = argmax(&row);
        continuation.push(next);
        let want = reference_last(&reference, &mut cache, &[next], pos);
        let got = ours.forward_last(&[next]).unwrap();
        assert_eq!(ours.cached_len(), pos + 1, "{name}: our cache length");
        let diff = compare(name, &format!("decode step {step}"), got.row(0), &want);
        eprintln!("{name}: decode step {step} (position {pos}), max |diff| {diff:.3e}");
        worst = worst.max(diff);
        row = got.row(0).to_vec();
    }
    eprintln!(
        "{name}: {} prompt tokens, greedy continuation {continuation:?}, worst max |diff| {worst:.3e}",
        prompt.len()
    );
}

#[test]
fn py_m_matches_candle_transformers() {
    check("py-m");
}

/// py-s ties its embeddings (`tie_word_embeddings: true`, no `lm_head` tensor)
/// and has no GQA: candle-transformers' other loading path.
#[test]
fn py_s_matches_candle_transformers() {
    check("py-s");
}
