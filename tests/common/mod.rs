//! Shared test helpers: where the model fixtures are, and loading them.
#![allow(dead_code)]

use std::path::PathBuf;

use specdec::{CandleModel, Error, LoadOptions};

/// `../shared/models` beside the checkout, or `SPECDEC_SHARED_MODELS`.
/// Prints a visible SKIP line and returns `None` when absent (CI has it).
pub fn shared_models() -> Option<PathBuf> {
    let dir = std::env::var_os("SPECDEC_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    if dir.join("py-m/config.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} not found; tests that need the shared checkpoints did not run",
            dir.display()
        );
        None
    }
}

/// The embedded default pair shipped in the repository: `models/` of the
/// checkout the test was built in, or `SPECDEC_MODELS` (for a test binary
/// carried to another machine, where the build machine's path is absent).
pub fn embedded(name: &str) -> PathBuf {
    std::env::var_os("SPECDEC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
        .join(name)
}

/// Loads a model with a KV cache of `n_positions`.
pub fn load(dir: impl Into<PathBuf>, n_positions: usize) -> CandleModel {
    let options = LoadOptions {
        n_positions: Some(n_positions),
        ..LoadOptions::default()
    };
    CandleModel::load_with(dir.into(), &options).expect("model loads")
}

/// JSON file as a value.
pub fn json(path: impl Into<PathBuf>) -> serde_json::Value {
    let path = path.into();
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// `[u32]` from a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
pub mod exact;
pub mod toy;

/// The setting an [`Error::InvalidSetting`] names; panics on any other error.
pub fn setting_name(e: Error) -> &'static str {
    match e {
        Error::InvalidSetting { name, .. } => name,
        other => panic!("expected InvalidSetting, got {other}"),
    }
}

/// The matrices of a 1-layer llama in GGUF naming, `(name, rows, cols)`:
/// `hidden` wide, `heads` query and `kv_heads` key/value heads of
/// `hidden / heads`, an MLP of `ffn`, a vocabulary of `vocab`.
pub fn llama_matrices(
    hidden: usize,
    ffn: usize,
    vocab: usize,
    heads: usize,
    kv_heads: usize,
) -> [(&'static str, usize, usize); 8] {
    let hd = hidden / heads;
    [
        ("token_embd.weight", vocab, hidden),
        ("blk.0.attn_q.weight", heads * hd, hidden),
        ("blk.0.attn_k.weight", kv_heads * hd, hidden),
        ("blk.0.attn_v.weight", kv_heads * hd, hidden),
        ("blk.0.attn_output.weight", hidden, heads * hd),
        ("blk.0.ffn_gate.weight", ffn, hidden),
        ("blk.0.ffn_up.weight", ffn, hidden),
        ("blk.0.ffn_down.weight", hidden, ffn),
    ]
}
