//! `LoadOptions::attention_window`: a model that attends only to its first
//! positions plus a recent window. Before the context outgrows the window its
//! logits are the full model's, bit for bit; after, they differ. As a draft
//! it changes acceptance only: greedy speculative output is still the
//! target's own greedy output. Settings it cannot honour are refused.

mod common;

use specdec::{
    AttentionWindow, CandleModel, DType, GenerateConfig, Generator, LanguageModel, LoadOptions,
};

fn windowed(sinks: usize, recent: usize, n_positions: usize) -> LoadOptions {
    LoadOptions {
        n_positions: Some(n_positions),
        attention_window: Some(AttentionWindow { sinks, recent }),
        ..LoadOptions::default()
    }
}

fn tokens(m: &CandleModel) -> Vec<u32> {
    m.tokenizer()
        .unwrap()
        .encode("import os\nimport sys\n\ndef main(argv):\n    for arg in argv[1:]:\n        print(os.path.abspath(arg))\n")
        .unwrap()
}

#[test]
fn logits_equal_the_full_models_until_the_context_outgrows_the_window() {
    let dir = common::embedded("py-s");
    let mut full = common::load(&dir, 64);
    let ids = tokens(&full);
    let (sinks, recent) = (3, 7);
    assert!(ids.len() > sinks + recent + 5, "prompt of {}", ids.len());
    let mut bounded = CandleModel::load_with(&dir, &windowed(sinks, recent, 64)).unwrap();
    let want = full.forward(&ids).unwrap();
    // In one call and in pieces: the same rows (the mask is by absolute
    // position).
    let got = bounded.forward(&ids).unwrap();
    bounded.truncate(0).unwrap();
    let mut pieces = bounded.forward(&ids[..5]).unwrap().row(4).to_vec();
    for &t in &ids[5..] {
        pieces = bounded.forward(&[t]).unwrap().row(0).to_vec();
    }
    assert_eq!(pieces, got.row(ids.len() - 1));
    let window = AttentionWindow { sinks, recent };
    for p in 0..ids.len() {
        if window.masks_at(p) {
            assert_ne!(
                got.row(p),
                want.row(p),
                "position {p}: the window hides keys"
            );
        } else {
            assert_eq!(got.row(p), want.row(p), "position {p}: nothing hidden yet");
        }
    }
    assert!(!window.masks_at(sinks + recent - 1) && window.masks_at(sinks + recent));
    // A window wider than the context is the full model.
    let mut wide = CandleModel::load_with(&dir, &windowed(0, ids.len(), 64)).unwrap();
    let wide_logits = wide.forward(&ids).unwrap();
    assert_eq!(wide_logits.row(ids.len() - 1), want.row(ids.len() - 1));
}

#[test]
fn refused_where_it_cannot_be_honoured() {
    let dir = common::embedded("py-xs");
    let err = |options: LoadOptions| {
        common::setting_name(CandleModel::load_with(&dir, &options).unwrap_err())
    };
    assert_eq!(err(windowed(4, 0, 16)), "attention_window");
    // Candle's ops (CPU bf16) would attend to every key and mask: refused.
    assert_eq!(
        err(LoadOptions {
            dtype: DType::BF16,
            ..windowed(4, 16, 16)
        }),
        "attention_window"
    );
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = LoadOptions::cuda(0) {
        let options = LoadOptions {
            attention_window: Some(AttentionWindow {
                sinks: 4,
                recent: 16,
            }),
            ..cuda
        };
        assert_eq!(err(options), "attention_window");
    }
}

/// A long prompt's prefix, the 4k pair, a draft that sees 4 + 64 of its
/// ~1,000 positions: greedy speculative output is still plain decoding's.
#[test]
fn greedy_speculative_output_with_a_windowed_draft_is_the_targets() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let path = dir.join("../bench/prompts_long.json");
    if !path.is_file() {
        eprintln!("SKIP: {} not found", path.display());
        return;
    }
    let prompts = common::json(path);
    // The first ~1,500-token prompt.
    let prompt = prompts[2].as_str().unwrap();
    let n_positions = 1200;
    let target = common::load(dir.join("py-m-4k"), n_positions);
    let draft = CandleModel::load_with(dir.join("py-s-4k"), &windowed(4, 64, n_positions)).unwrap();
    let mut g = Generator::new(target, draft).unwrap();
    let mut ids = g.encode(prompt).unwrap();
    ids.truncate(1000);
    let config = |k| GenerateConfig {
        max_new_tokens: 24,
        k,
        ..GenerateConfig::default()
    };
    let plain = g.generate(&ids, &config(1)).unwrap();
    for k in [4, 8] {
        let out = g.generate(&ids, &config(k)).unwrap();
        assert_eq!(out.tokens, plain.tokens, "k = {k}");
        assert!(
            out.stats.drafted > 0 && out.stats.accepted > 0,
            "k = {k}: {:?}",
            out.stats
        );
    }
}
