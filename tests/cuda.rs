//! The candle backend on an NVIDIA GPU (bf16): the conformance suite,
//! greedy identity, and the CUDA graph decode path (bit-identical rows in
//! any window, agreement with candle's ops, device argmax). Built only with
//! `--features cuda`; run on the GPU machine with `SPECDEC_SHARED_MODELS`
//! pointing at py-m, py-s and the tiny architecture checkpoints (see
//! scripts/build-cuda.sh).
#![cfg(feature = "cuda")]

mod common;

use std::path::{Path, PathBuf};

use specdec::backend::conformance::{check_all, Tolerance};
use specdec::sampling::argmax;
use specdec::{CandleModel, GenerateConfig, Generator, LanguageModel, LoadOptions, Role};

/// bf16 on GPU 0 with the default graph widths (`DEFAULT_GRAPH_WIDTHS`).
fn gpu(dir: PathBuf, n_positions: usize) -> CandleModel {
    gpu_with(
        dir,
        n_positions,
        &specdec::backend::candle::DEFAULT_GRAPH_WIDTHS,
    )
}

/// bf16 on GPU 0 with these CUDA graph widths (`[]`: candle's ops).
fn gpu_with(dir: PathBuf, n_positions: usize, widths: &[usize]) -> CandleModel {
    let options = LoadOptions {
        n_positions: Some(n_positions),
        cuda_graph_widths: widths.to_vec(),
        ..LoadOptions::cuda(0).expect("a CUDA device")
    };
    CandleModel::load_with(&dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The tiny random checkpoints of other architectures (Qwen2 with q/k/v
/// biases, Llama 3, Mistral; head_dim 16), under `arch/` of the shared
/// models or beside py-m (as scripts/build-cuda.sh packs them).
fn arch_models(shared: &Path) -> Vec<PathBuf> {
    ["qwen2-tiny", "llama3-tiny", "mistral-tiny"]
        .iter()
        .filter_map(|name| {
            [shared.join("arch").join(name), shared.join(name)]
                .into_iter()
                .find(|d| d.join("config.json").is_file())
        })
        .collect()
}

fn rows(logits: &specdec::Logits) -> Vec<Vec<f32>> {
    (0..logits.rows()).map(|i| logits.row(i).to_vec()).collect()
}

fn tokens() -> Vec<u32> {
    let m = common::load(common::embedded("py-xs"), 8);
    m.tokenizer().unwrap().encode("import os\nimport sys\n\ndef main(argv):\n    for arg in argv[1:]:\n        print(arg)\n").unwrap()
}

#[test]
fn conformance_on_the_gpu() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    for name in ["py-m", "py-s"] {
        let mut m = gpu(dir.join(name), 48);
        check_all(&mut m, &tokens(), &Tolerance::bf16()).unwrap_or_else(|f| panic!("{name}: {f}"));
    }
}

#[test]
fn greedy_speculative_equals_greedy_plain_on_the_gpu() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let mut g = Generator::new(
        gpu(dir.join("py-m"), 512),
        gpu_with(dir.join("py-s"), 512, &[1, 8]),
    )
    .unwrap();
    let prompts = [
        "import numpy as np\nfrom typing import List\n\n\ndef ",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
        "from sympy.core import S, sympify\nfrom sympy.core.cache import cacheit\n",
    ];
    for prompt in prompts {
        let ids = g.encode(prompt).unwrap();
        let config = |k| GenerateConfig {
            max_new_tokens: 64,
            k,
            ..GenerateConfig::default()
        };
        let plain = g.generate(&ids, &config(1)).unwrap();
        // 12: verified in two replays of the width-8 graph.
        for k in (2..=8).chain([12]) {
            let out = g.generate(&ids, &config(k)).unwrap();
            assert_eq!(out.tokens, plain.tokens, "k={k} {prompt:?}");
        }
    }
}

#[test]
fn graph_rows_are_the_same_bits_in_any_window() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let toks = tokens();
    let mut dirs = vec![dir.join("py-m"), dir.join("py-s")];
    // qwen2-tiny: q/k/v biases and head_dim 16 through the same paths.
    dirs.extend(arch_models(&dir));
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let mut m = gpu_with(d.clone(), 64, &[8]);
        let vocab = m.vocab_size() as u32;
        let fit: Vec<u32> = toks.iter().map(|&t| t % vocab).collect();
        let (head, rest) = fit.split_at(8);
        let rest = &rest[..20];
        m.prefill(head).unwrap();
        let one: Vec<Vec<f32>> = rest
            .iter()
            .map(|&t| m.forward(&[t]).unwrap().row(0).to_vec())
            .collect();
        // 20 = chunks of 8 + 8 + 4 through the width-8 graph; a second
        // model replays graphs of widths 1, 3 and 16 (two column groups).
        let mut other = gpu_with(d, 64, &[1, 3, 16]);
        other.prefill(head).unwrap();
        for (label, model) in [("width 8", &mut m), ("widths 1, 3, 16", &mut other)] {
            for window in [1, 2, 3, 5, 8, 16, 20] {
                model.truncate(head.len()).unwrap();
                let mut got = Vec::new();
                for chunk in rest.chunks(window) {
                    got.extend(rows(&model.forward(chunk).unwrap()));
                }
                for (i, (a, b)) in one.iter().zip(&got).enumerate() {
                    assert!(
                        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{name} ({label}): row {i} differs between a window of 1 at width 8 and a window of {window}"
                    );
                }
            }
        }
    }
}

#[test]
fn graph_decoding_matches_candles_ops() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let mut dirs = vec![dir.join("py-m"), dir.join("py-s")];
    dirs.extend(arch_models(&dir));
    assert!(dirs.len() >= 3, "no tiny architecture checkpoints found");
    let toks = tokens();
    let (head, rest) = toks.split_at(10);
    for d in dirs {
        let mut graph = gpu_with(d.clone(), 48, &[8]);
        let mut ops = gpu_with(d.clone(), 48, &[]);
        let vocab = graph.vocab_size();
        // Arch checkpoints have their own vocabularies.
        let fit = |t: &[u32]| t.iter().map(|&x| x % vocab as u32).collect::<Vec<_>>();
        let (head, rest) = (fit(head), fit(&rest[..8]));
        graph.prefill(&head).unwrap();
        ops.prefill(&head).unwrap();
        let a = graph.forward(&rest).unwrap();
        let b = ops.forward(&rest).unwrap();
        let mut worst = 0f32;
        for i in 0..a.rows() {
            let (ra, rb) = (a.row(i), b.row(i));
            let scale = rb.iter().fold(1f32, |m, x| m.max(x.abs()));
            let diff = ra
                .iter()
                .zip(rb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(diff / scale);
            // Where candle's top choice leads clearly, the graph picks it too.
            let top = argmax(rb, &[], i).unwrap() as usize;
            let second = rb
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != top)
                .fold(f32::NEG_INFINITY, |m, (_, &x)| m.max(x));
            if rb[top] - second > 0.05 * scale {
                assert_eq!(
                    argmax(ra, &[], i).unwrap() as usize,
                    top,
                    "{}: row {i}",
                    d.display()
                );
            }
        }
        eprintln!(
            "{}: largest difference / largest logit = {worst:.4}",
            d.display()
        );
        assert!(
            worst < 0.03,
            "{}: graph vs candle ops differ by {worst} of the largest logit",
            d.display()
        );
    }
}

#[test]
fn graph_argmax_equals_argmax_of_the_logits() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let toks = tokens();
    let (head, rest) = toks.split_at(12);
    let mut m = gpu(dir.join("py-m"), 64);
    m.prefill(head).unwrap();
    let logits = m.forward(&rest[..8]).unwrap();
    for suppress in [vec![], vec![0u32], {
        // Suppress each row's own winner: the device's choice is overruled.
        (0..8)
            .map(|i| argmax(logits.row(i), &[], i).unwrap())
            .collect()
    }] {
        m.truncate(head.len()).unwrap();
        let ids = m.forward_greedy(&rest[..8], &suppress).unwrap();
        let want: Vec<u32> = (0..8)
            .map(|i| argmax(logits.row(i), &suppress, i).unwrap())
            .collect();
        assert_eq!(ids, want, "suppress {suppress:?}");
        assert_eq!(m.cached_len(), head.len() + 8);
    }
}

#[test]
fn conformance_of_the_graph_path_on_other_architectures() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    for d in arch_models(&dir) {
        let mut m = gpu(d.clone(), 48);
        let vocab = m.vocab_size() as u32;
        let toks: Vec<u32> = tokens().iter().map(|t| t % vocab).collect();
        check_all(&mut m, &toks, &Tolerance::bf16())
            .unwrap_or_else(|f| panic!("{}: {f}", d.display()));
    }
}
