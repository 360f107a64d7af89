//! Fuzzes GGUF loading with arbitrary bytes as a `.gguf` file: our header
//! walk, candle's reader behind it, the metadata read as a `ModelConfig`,
//! the tokenizer and chat template rebuilt from the metadata, the tensors
//! (kept as blocks when the input's length is even, dequantized when odd),
//! then one forward pass of up to two tokens when it loads.
//!
//! Invariant: an error or `Ok`, never a panic, an abort, a hang or a large
//! allocation (run with `-rss_limit_mb=1024`).
//!
//!     python3 fuzz/seeds.py      (also writes tiny valid GGUF files as seeds)
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run load_gguf -O -- -rss_limit_mb=1024 -timeout=60
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use specdec::{CandleModel, LanguageModel, LoadOptions, Quantization};

/// A directory of this process's own (no tokenizer.json beside the file).
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("specdec-fuzz-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("model.gguf")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).unwrap();
    let options = LoadOptions {
        n_positions: Some(4),
        quantization: if data.len() % 2 == 0 {
            Quantization::AsStored
        } else {
            Quantization::None
        },
        ..LoadOptions::default()
    };
    if let Ok(mut m) = CandleModel::load_with(path, &options) {
        let vocab = m.config().vocab_size as u32;
        let _ = m.forward(&[0, 1 % vocab]);
    }
});
