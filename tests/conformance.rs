//! One conformance suite, every backend: the candle backend (trained and
//! random-weight checkpoints, dense and Q8_0), the static-shape adapter
//! around it, and the toy models. Plus two broken backends the suite must
//! catch, so it is known to have teeth.

mod common;

use common::toy::Toy;
use specdec::backend::conformance::{check_all, Tolerance};
use specdec::backend::static_shape::{StaticShapeModel, StaticShapes};
use specdec::{AttentionWindow, CandleModel, LanguageModel, LoadOptions, Logits, Quantization};

/// Ordinary text as token ids, from the embedded tokenizer.
fn tokens() -> Vec<u32> {
    let m = common::load(common::embedded("py-xs"), 8);
    m.tokenizer()
        .unwrap()
        .encode("import os\nimport sys\n\ndef main(argv):\n    for arg in argv[1:]:\n        print(os.path.abspath(arg))\n")
        .unwrap()
}

fn static_shapes() -> StaticShapes {
    StaticShapes {
        windows: vec![1, 3, 4],
        prompt_buckets: vec![8, 16],
        batch_size: 1,
    }
}

#[test]
fn embedded_candle_models_conform() {
    for name in ["py-s", "py-xs"] {
        let mut m = common::load(common::embedded(name), 48);
        check_all(&mut m, &tokens(), &Tolerance::exact()).unwrap_or_else(|f| panic!("{name}: {f}"));
    }
}

/// The shared checkpoints: trained py-m, and random-weight ones with q/k/v
/// biases (qwen2), another config form (mistral) and llama3 RoPE scaling.
const SHARED: [&str; 4] = [
    "py-m",
    "arch/qwen2-tiny",
    "arch/mistral-tiny",
    "arch/llama3-tiny",
];

#[test]
fn shared_candle_models_conform() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    for path in SHARED {
        let mut m = common::load(dir.join(path), 40);
        check_all(&mut m, &tokens(), &Tolerance::exact()).unwrap_or_else(|f| panic!("{path}: {f}"));
    }
}

/// Attention sinks + a recent window shorter than the prompt, so the mask
/// matters: still exact (the mask is by absolute position), on a trained
/// model and on the random-weight ones.
#[test]
fn windowed_candle_models_conform() {
    let ids = tokens();
    let window = AttentionWindow {
        sinks: 2,
        recent: 5,
    };
    // The suite's rollback check runs at positions 8..12: past the window.
    assert!(ids.len() > 16);
    let options = LoadOptions {
        n_positions: Some(48),
        attention_window: Some(window),
        ..LoadOptions::default()
    };
    let mut dirs = vec![common::embedded("py-s")];
    if let Some(dir) = common::shared_models() {
        dirs.extend(["arch/qwen2-tiny", "arch/llama3-tiny"].map(|p| dir.join(p)));
    }
    for dir in dirs {
        let mut m = CandleModel::load_with(&dir, &options).unwrap();
        check_all(&mut m, &ids, &Tolerance::exact())
            .unwrap_or_else(|f| panic!("{}: {f}", dir.display()));
    }
}

#[test]
fn quantized_candle_model_conforms() {
    let options = LoadOptions {
        n_positions: Some(40),
        quantization: Quantization::Q8_0,
        ..LoadOptions::default()
    };
    let mut m = CandleModel::load_with(common::embedded("py-xs"), &options).unwrap();
    check_all(&mut m, &tokens(), &Tolerance::f32()).unwrap();
}

#[test]
fn static_shape_adapter_conforms() {
    let inner = common::load(common::embedded("py-xs"), 64);
    let mut m = StaticShapeModel::new(inner, static_shapes(), 40).unwrap();
    check_all(&mut m, &tokens(), &Tolerance::exact()).unwrap();
    let mut toy = StaticShapeModel::new(Toy::new(7, 0.5), static_shapes(), 40).unwrap();
    check_all(
        &mut toy,
        &(0..30).map(|i| i % 7).collect::<Vec<_>>(),
        &Tolerance::f32(),
    )
    .unwrap();
}

#[test]
fn toy_models_conform() {
    let mut toy = Toy::new(7, 0.5);
    toy.n_positions = 40;
    check_all(
        &mut toy,
        &(0..30).map(|i| i % 7).collect::<Vec<_>>(),
        &Tolerance::f32(),
    )
    .unwrap();
}

/// Forgets to roll back: truncate moves the length but keeps the old context.
struct NoRollback(Toy, usize);

/// Batched forwards drift from sequential ones.
struct Drifts(Toy);

impl LanguageModel for NoRollback {
    fn forward(&mut self, tokens: &[u32]) -> specdec::Result<Logits> {
        self.1 += tokens.len();
        self.0.forward(tokens)
    }
    fn truncate(&mut self, len: usize) -> specdec::Result<()> {
        if len > self.1 {
            return self.0.truncate(len);
        }
        if len == 0 {
            self.0.truncate(0)?;
        }
        self.1 = len;
        Ok(())
    }
    fn cached_len(&self) -> usize {
        self.1
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn n_positions(&self) -> usize {
        self.0.n_positions()
    }
}

impl LanguageModel for Drifts {
    fn forward(&mut self, tokens: &[u32]) -> specdec::Result<Logits> {
        let l = self.0.forward(tokens)?;
        let drift = if tokens.len() > 1 { 1e-3 } else { 0.0 };
        Ok(Logits::new(
            l.as_slice().iter().map(|x| x + drift).collect(),
            l.vocab(),
        ))
    }
    fn truncate(&mut self, len: usize) -> specdec::Result<()> {
        self.0.truncate(len)
    }
    fn cached_len(&self) -> usize {
        self.0.cached_len()
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn n_positions(&self) -> usize {
        self.0.n_positions()
    }
}

#[test]
fn the_suite_catches_broken_backends() {
    let tokens: Vec<u32> = (0..30).map(|i| i % 7).collect();
    let mut toy = Toy::new(7, 0.5);
    toy.n_positions = 40;
    let failure =
        check_all(&mut NoRollback(toy.clone(), 0), &tokens, &Tolerance::f32()).unwrap_err();
    assert_eq!(failure.check, "rollback_equals_never_fed", "{failure}");
    let failure = check_all(&mut Drifts(toy), &tokens, &Tolerance::f32()).unwrap_err();
    assert_eq!(failure.check, "batched_equals_sequential", "{failure}");
}

/// On the CPU, in f32, the candle backend's batched passes are not just
/// close to sequential decoding but bit-identical, for windows of any size,
/// prompt passes included: its projection and attention kernels sum each
/// output in one order whatever the number of rows.
fn assert_prompt_passes_are_exact(m: &mut CandleModel, tokens: &[u32], what: &str) {
    let n = tokens.len();
    assert!(n > 33, "{n} tokens");
    m.reset().unwrap();
    let one_by_one: Vec<Logits> = tokens
        .iter()
        .map(|t| m.forward(std::slice::from_ref(t)).unwrap())
        .collect();
    for split in [1, 8, 17, 33] {
        m.reset().unwrap();
        let head = m.forward(&tokens[..split]).unwrap();
        let tail = m.forward(&tokens[split..]).unwrap();
        for (i, want) in one_by_one.iter().enumerate() {
            let (block, row) = if i < split {
                (&head, i)
            } else {
                (&tail, i - split)
            };
            assert!(
                block.row(row) == want.row(0),
                "{what}: passes of {split} and {} tokens: position {i} differs from one at a time",
                n - split
            );
        }
    }
}

#[test]
fn cpu_prompt_passes_and_windows_are_bit_identical_to_one_token_at_a_time() {
    let tokens = tokens();
    let mut m = common::load(common::embedded("py-xs"), 64);
    assert_prompt_passes_are_exact(&mut m, &tokens, "py-xs");
    let Some(dir) = common::shared_models() else {
        return;
    };
    for path in SHARED {
        let mut m = common::load(dir.join(path), 64);
        assert_prompt_passes_are_exact(&mut m, &tokens, path);
    }
}
