//! The candle backend on an NVIDIA GPU (bf16): the conformance suite and
//! greedy identity. Built only with `--features cuda`; run on the GPU
//! machine with `SPECDEC_SHARED_MODELS` pointing at py-m and py-s
//! (see scripts/build-cuda.sh).
#![cfg(feature = "cuda")]

mod common;

use specdec::conformance::{check_all, Tolerance};
use specdec::{CandleModel, GenerateConfig, Generator, LanguageModel, LoadOptions};

fn gpu(dir: std::path::PathBuf, n_positions: usize) -> CandleModel {
    let options = LoadOptions {
        n_positions: Some(n_positions),
        ..LoadOptions::cuda(0).expect("a CUDA device")
    };
    CandleModel::load_with(dir, &options).unwrap()
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
    let mut g = Generator::new(gpu(dir.join("py-m"), 512), gpu(dir.join("py-s"), 512)).unwrap();
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
        for k in 2..=8 {
            let out = g.generate(&ids, &config(k)).unwrap();
            assert_eq!(out.tokens, plain.tokens, "k={k} {prompt:?}");
        }
    }
}
