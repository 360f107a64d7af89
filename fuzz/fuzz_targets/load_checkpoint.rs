//! Fuzzes the loading path with arbitrary bytes: config.json parsed into a
//! `ModelConfig` (every size checked with checked arithmetic), the
//! safetensors header, a shard index's `weight_map`, generation_config.json's
//! EOS ids, the comparison of config sizes with the tensors, the KV cache
//! and rotary tables sized for `n_positions`, and the load itself.
//!
//! Invariant: an error or `Ok`, never a panic, an abort or a hang.
//!
//! Input layout (so that mutations keep the parts apart):
//!
//! ```text
//! byte 0      bit 0: a shard index follows; bit 1: a generation_config.json follows
//! byte 1      n_positions = 1 + byte % 64
//! u16 LE n, n bytes of config.json
//! [u16 LE n, n bytes of model.safetensors.index.json]   (bit 0; every shard is the weights below)
//! [u16 LE n, n bytes of generation_config.json]         (bit 1)
//! the rest    the safetensors file
//! ```
//!
//!     python3 fuzz/seeds.py      (writes a valid tiny checkpoint as seeds)
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run load_checkpoint    (from the repository root)
#![no_main]

use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        let all = *data;
        *data = &[];
        return all;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let part = &data[2..2 + n];
    *data = &data[2 + n..];
    part
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, n_positions) = (data[0], 1 + data[1] as usize % 64);
    let mut rest = &data[2..];
    let config = take(&mut rest);
    let index = (flags & 1 != 0).then(|| take(&mut rest));
    let generation = (flags & 2 != 0).then(|| take(&mut rest));
    let _ = specdec::backend::candle::fuzz_load(config, rest, index, generation, n_positions);
});
