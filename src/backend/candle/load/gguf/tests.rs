//! Tests of the GGUF loader's own helpers (names and row orders); whole
//! files are loaded in `tests/gguf.rs`.

use super::*;

#[test]
fn names_map_both_ways_we_need() {
    assert_eq!(
        gguf_name("model.layers.12.self_attn.q_proj.weight").unwrap(),
        "blk.12.attn_q.weight"
    );
    assert_eq!(
        gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(),
        "blk.0.ffn_down.weight"
    );
    assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
    assert!(gguf_name("model.layers.0.mystery.weight").is_none());
}

/// llama.cpp's `permute` (reshape to `[heads, 2, half]`, swap the last
/// two axes) followed by ours is the identity.
#[test]
fn unpermute_inverts_the_converter() {
    let (heads, hd) = (3, 8);
    let rows = heads * hd;
    let hf: Vec<u8> = (0..rows as u8).collect();
    let mut gguf = vec![0u8; rows];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                gguf[h * hd + 2 * i + j] = hf[h * hd + j * hd / 2 + i];
            }
        }
    }
    assert_eq!(unpermute_rows(&gguf, heads, rows, 1), hf);
    let idx = unpermute_index(rows, heads);
    let by_index: Vec<u8> = idx.iter().map(|&i| gguf[i as usize]).collect();
    assert_eq!(by_index, hf);
}
