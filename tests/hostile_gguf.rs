//! Hostile GGUF files (issue 23), each built here byte by byte from a valid
//! tiny base: every one must give one `Error::Gguf` naming the key or
//! tensor, never a panic, an abort, a long stall or a silently wrong model.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use specdec::{CandleModel, Error, LanguageModel, LoadOptions, Quantization};

// ---- a byte-level GGUF writer ---------------------------------------------

const H: usize = 32;
const FFN: usize = 32;
const VOCAB: usize = 16;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_I64: u32 = 11;
const T_U64: u32 = 10;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const F32: u32 = 0;
const F16: u32 = 1;
const Q8_0: u32 = 8;

fn string(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

fn u32v(x: u32) -> (u32, Vec<u8>) {
    (T_U32, x.to_le_bytes().to_vec())
}

fn strv(s: &str) -> (u32, Vec<u8>) {
    (T_STRING, string(s.as_bytes()))
}

fn array(elem: u32, n: u64, payload: &[u8]) -> (u32, Vec<u8>) {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(payload);
    (T_ARRAY, b)
}

fn str_array(items: &[&str]) -> (u32, Vec<u8>) {
    let payload: Vec<u8> = items.iter().flat_map(|s| string(s.as_bytes())).collect();
    array(T_STRING, items.len() as u64, &payload)
}

#[derive(Clone)]
struct T {
    name: Vec<u8>,
    /// GGUF order: innermost first.
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Written instead of the running padded sum.
    offset: Option<u64>,
}

#[derive(Clone)]
struct Gguf {
    version: u32,
    kvs: Vec<(Vec<u8>, u32, Vec<u8>)>,
    tensors: Vec<T>,
    /// Overrides the tensor count written.
    tensor_count: Option<u64>,
    /// Overrides the key count written.
    kv_count: Option<u64>,
}

impl Gguf {
    fn set(&mut self, key: &str, (ty, v): (u32, Vec<u8>)) -> &mut Self {
        self.kvs.retain(|(k, _, _)| k != key.as_bytes());
        self.kvs.push((key.as_bytes().to_vec(), ty, v));
        self
    }

    fn push(&mut self, key: &[u8], (ty, v): (u32, Vec<u8>)) -> &mut Self {
        self.kvs.push((key.to_vec(), ty, v));
        self
    }

    fn tensor(&mut self, name: &str) -> &mut T {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name.as_bytes())
            .unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        let n_t = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        b.extend_from_slice(&n_t.to_le_bytes());
        let n_kv = self.kv_count.unwrap_or(self.kvs.len() as u64);
        b.extend_from_slice(&n_kv.to_le_bytes());
        for (k, ty, v) in &self.kvs {
            b.extend(string(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            b.extend(string(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.unwrap_or(offset as u64).to_le_bytes());
            offset += t.data.len().next_multiple_of(ALIGN);
        }
        b.resize(b.len().next_multiple_of(ALIGN), 0);
        for t in &self.tensors {
            b.extend_from_slice(&t.data);
            b.resize(b.len().next_multiple_of(ALIGN), 0);
        }
        b
    }
}

/// Where `name`'s data starts as written (the running padded sum).
fn offset_of(g: &Gguf, name: &str) -> u64 {
    g.tensors
        .iter()
        .take_while(|t| t.name != name.as_bytes())
        .map(|t| t.data.len().next_multiple_of(32) as u64)
        .sum()
}

fn f32_bytes(n: usize, seed: usize, base: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let x = (i.wrapping_mul(2654435761).wrapping_add(seed * 40503)) % 10007;
            (base + (x as f32 / 10007.0 - 0.5) * 0.4).to_le_bytes()
        })
        .collect()
}

/// A valid 1-layer llama with a 16-token byte-level BPE vocabulary.
fn base() -> Gguf {
    let mut g = Gguf {
        version: 3,
        kvs: vec![],
        tensors: vec![],
        tensor_count: None,
        kv_count: None,
    };
    let tokens: Vec<String> = (0..VOCAB)
        .map(|i| ((b'a' + i as u8) as char).into())
        .collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    g.set("general.architecture", strv("llama"))
        .set("general.alignment", u32v(32))
        .set("llama.block_count", u32v(1))
        .set("llama.context_length", u32v(64))
        .set("llama.embedding_length", u32v(H as u32))
        .set("llama.feed_forward_length", u32v(FFN as u32))
        .set("llama.attention.head_count", u32v(HEADS as u32))
        .set("llama.attention.head_count_kv", u32v(KV_HEADS as u32))
        .set("tokenizer.ggml.model", strv("gpt2"))
        .set("tokenizer.ggml.tokens", str_array(&tokens))
        .set("tokenizer.ggml.merges", str_array(&[]))
        .set("tokenizer.chat_template", strv("{{ messages }}"));
    let mats = common::llama_matrices(H, FFN, VOCAB, HEADS, KV_HEADS);
    for (i, (name, r, c)) in mats.into_iter().enumerate() {
        g.tensors.push(T {
            name: name.as_bytes().to_vec(),
            dims: vec![c as u64, r as u64],
            ty: F32,
            data: f32_bytes(r * c, i, 0.0),
            offset: None,
        });
    }
    for (i, name) in [
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
    ]
    .into_iter()
    .enumerate()
    {
        g.tensors.push(T {
            name: name.as_bytes().to_vec(),
            dims: vec![H as u64],
            ty: F32,
            data: f32_bytes(H, 50 + i, 1.0),
            offset: None,
        });
    }
    g
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("specdec-hostile-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(format!("{name}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn try_load(path: &Path) -> specdec::Result<CandleModel> {
    CandleModel::load_with(
        path,
        &LoadOptions {
            n_positions: Some(16),
            quantization: Quantization::AsStored,
            ..LoadOptions::default()
        },
    )
}

/// Loads `bytes` and checks it fails quickly with `Error::Gguf` whose
/// message holds every one of `needles`; returns the message.
fn refused(name: &str, bytes: &[u8], needles: &[&str]) -> String {
    let p = write(name, bytes);
    let t = Instant::now();
    let r = try_load(&p);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{name}: took {:?}",
        t.elapsed()
    );
    let e = match r {
        Ok(_) => panic!("{name}: loaded"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(matches!(e, Error::Gguf { .. }), "{name}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{name}: {msg:?} lacks {n:?}");
    }
    eprintln!("{name}: {msg}");
    std::fs::remove_file(&p).unwrap();
    msg
}

#[test]
fn the_base_file_loads_and_decodes() {
    let p = write("base", &base().bytes());
    let mut m = try_load(&p).unwrap();
    let logits = m.forward(&[1, 2, 3]).unwrap();
    assert!(logits.as_slice().iter().all(|x| x.is_finite()));
    let tok = m.tokenizer().unwrap();
    assert_eq!(tok.decode(&[0, 1, 15]).unwrap(), "abp");
    std::fs::remove_file(&p).unwrap();
}

// ---- class 1: panics from `general.alignment` --------------------------------

#[test]
fn alignment_cannot_reach_candle_unchecked() {
    // A duplicate: candle keeps the last (0, a division by zero).
    let mut g = base();
    g.push(b"general.alignment", u32v(0));
    refused("dup-alignment", &g.bytes(), &["general.alignment", "twice"]);
    // Trailing NULs: candle strips them, so this is general.alignment to it.
    let mut g = base();
    g.kvs.retain(|(k, _, _)| k != b"general.alignment");
    g.push(b"general.alignment\0\0", u32v(0));
    refused("nul-alignment", &g.bytes(), &["general.alignment", "NUL"]);
    // Behind arrays nested deeper than the old walk followed.
    let mut nested = array(T_U8, 1, &[7]);
    for _ in 0..6 {
        nested = array(T_ARRAY, 1, &nested.1);
    }
    let mut g = base();
    g.kvs.insert(0, (b"x.nested".to_vec(), nested.0, nested.1));
    g.set("general.alignment", u32v(0));
    refused("nested", &g.bytes(), &["x.nested", "array of arrays"]);
    // Plain bad values.
    for (name, v) in [("zero", u32v(0)), ("odd", u32v(48))] {
        let mut g = base();
        g.set("general.alignment", v);
        refused(name, &g.bytes(), &["general.alignment", "power of two"]);
    }
}

// ---- class 4: memory ----------------------------------------------------------

#[test]
fn metadata_sizes_are_capped_before_candle_reads() {
    // One u8 array declaring 2^40 elements in a small file.
    let mut g = base();
    g.push(b"x.huge", array(T_U8, 1 << 40, &[0; 64]));
    refused("huge-array", &g.bytes(), &["x.huge", "MAX_ARRAY_ELEMENTS"]);
    // Just over the per-array limit, with the bytes present (1 MiB).
    let mut g = base();
    g.push(
        b"x.big",
        array(T_U8, (1 << 19) + 1, &vec![0; (1 << 19) + 1]),
    );
    refused("big-array", &g.bytes(), &["x.big", "MAX_ARRAY_ELEMENTS"]);
    // Many arrays under the limit, over the total (4 MiB of u8).
    let mut g = base();
    for i in 0..8 {
        g.push(
            format!("x.part{i}").as_bytes(),
            array(T_U8, 1 << 19, &vec![0; 1 << 19]),
        );
    }
    refused(
        "many-arrays",
        &g.bytes(),
        &["x.part7", "MAX_METADATA_VALUES"],
    );
    // Counts in the header.
    let mut g = base();
    g.tensor_count = Some(1 << 40);
    refused("tensor-count", &g.bytes(), &["MAX_TENSORS"]);
    let mut g = base();
    g.kv_count = Some(1 << 40);
    refused("kv-count", &g.bytes(), &["MAX_METADATA_ENTRIES"]);
    // A string longer than the file, and a key longer than GGUF allows.
    let mut g = base();
    let mut s = (1u64 << 40).to_le_bytes().to_vec();
    s.extend_from_slice(b"abc");
    g.push(b"x.long", (T_STRING, s));
    refused("long-string", &g.bytes(), &["x.long", "truncated"]);
    let mut g = base();
    g.push(&[b'k'; 70_000], u32v(1));
    refused("long-key", &g.bytes(), &["metadata key", "70000 bytes"]);
}

// ---- class 5: corrupt files that loaded -----------------------------------------

#[test]
fn corrupt_layouts_are_refused_naming_the_tensor() {
    // Overlapping: ffn_up's offset is ffn_gate's.
    let mut g = base();
    let gate = offset_of(&g, "blk.0.ffn_gate.weight");
    g.tensor("blk.0.ffn_up.weight").offset = Some(gate);
    refused("overlap", &g.bytes(), &["blk.0.ffn_up.weight", "offset"]);
    // Misaligned: 4 bytes late.
    let mut g = base();
    let k = offset_of(&g, "blk.0.attn_k.weight");
    g.tensor("blk.0.attn_k.weight").offset = Some(k + 4);
    refused("misaligned", &g.bytes(), &["blk.0.attn_k.weight", "offset"]);
    // A type that contradicts the layout: f16 for f32 data, mid-file.
    let mut g = base();
    g.tensor("blk.0.attn_norm.weight").ty = F16;
    refused(
        "type-mid",
        &g.bytes(),
        &["blk.0.ffn_norm.weight", "blk.0.attn_norm.weight"],
    );
    // ... and for the last tensor, where no later offset contradicts it.
    let mut g = base();
    g.tensor("output_norm.weight").ty = F16;
    refused("type-last", &g.bytes(), &["output_norm.weight", "after"]);
    // Duplicate tensor names (candle's map keeps one).
    let mut g = base();
    let mut dup = g.tensor("blk.0.ffn_norm.weight").clone();
    dup.data = f32_bytes(H, 99, -5.0);
    g.tensors.push(dup);
    refused(
        "dup-tensor",
        &g.bytes(),
        &["blk.0.ffn_norm.weight", "twice"],
    );
}

#[test]
fn corrupt_metadata_is_refused_naming_the_key() {
    // A duplicate key that changed the model.
    let mut g = base();
    g.push(b"llama.attention.head_count_kv", u32v(2));
    refused(
        "dup-key",
        &g.bytes(),
        &["llama.attention.head_count_kv", "twice"],
    );
    // A u64 / i64 alignment, which candle ignores (reading at 32).
    let mut g = base();
    g.set("general.alignment", (T_U64, 64u64.to_le_bytes().to_vec()));
    refused("u64-alignment", &g.bytes(), &["general.alignment", "u64"]);
    let mut g = base();
    g.set("general.alignment", (T_I64, 32i64.to_le_bytes().to_vec()));
    refused("i64-alignment", &g.bytes(), &["general.alignment", "i64"]);
    // A token string given to two ids: one id would decode to nothing.
    let mut g = base();
    let mut tokens: Vec<String> = (0..VOCAB)
        .map(|i| ((b'a' + i as u8) as char).into())
        .collect();
    tokens[9] = "c".into();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    g.set("tokenizer.ggml.tokens", str_array(&tokens));
    refused(
        "dup-token",
        &g.bytes(),
        &["tokenizer.ggml.tokens", "2 and 9"],
    );
    // Fewer tokens than embedding rows (with the vocabulary size given).
    let mut g = base();
    g.set("tokenizer.ggml.tokens", str_array(&["a", "b", "c"]));
    g.set("llama.vocab_size", u32v(VOCAB as u32));
    refused(
        "few-tokens",
        &g.bytes(),
        &["tokenizer.ggml.tokens", "3 tokens"],
    );
}

// ---- siblings: the rest of the header ----------------------------------------------

#[test]
fn every_other_header_field_is_checked() {
    let mut g = base();
    g.version = 4;
    refused("version", &g.bytes(), &["version 4"]);
    // Keys and strings that are not UTF-8, bools that are not 0 / 1, types
    // that do not exist.
    let mut g = base();
    g.push(b"x.\xff", u32v(1));
    refused("key-utf8", &g.bytes(), &["metadata key", "UTF-8"]);
    let mut g = base();
    g.set("tokenizer.chat_template", (T_STRING, string(b"{{ \xff }}")));
    refused(
        "value-utf8",
        &g.bytes(),
        &["tokenizer.chat_template", "UTF-8"],
    );
    let mut g = base();
    g.push(b"x.flag", (T_BOOL, vec![2]));
    refused("bool", &g.bytes(), &["x.flag", "boolean"]);
    let mut g = base();
    g.push(b"x.flags", array(T_BOOL, 2, &[1, 7]));
    refused("bool-array", &g.bytes(), &["x.flags", "boolean"]);
    let mut g = base();
    g.push(b"x.what", (13, vec![0; 8]));
    refused("value-type", &g.bytes(), &["x.what", "type 13"]);
    let mut g = base();
    g.push(b"x.what", array(77, 1, &[0; 8]));
    refused("elem-type", &g.bytes(), &["x.what", "type 77"]);
    // The chat template and tokenizer keys of the wrong type.
    // A template key of the wrong type does not stop the model from loading
    // (a plain prompt needs no template: templates load lazily); asking for
    // the template names the key.
    let mut g = base();
    g.set("tokenizer.chat_template", u32v(3));
    let model = try_load(&write("template-type", &g.bytes())).expect("loads without its template");
    match model.chat_template() {
        Err(e @ Error::ChatTemplate { .. }) => {
            assert!(e.to_string().contains("tokenizer.chat_template"), "{e}")
        }
        other => panic!("template-type: {other:?}"),
    }
    let mut g = base();
    g.set("tokenizer.ggml.tokens", array(T_U32, 1, &[0; 4]));
    refused("tokens-type", &g.bytes(), &["tokenizer.ggml.tokens"]);
    // Tensor names: a NUL, too long.
    let mut g = base();
    g.tensors[10].name = b"output_norm.weight\0".to_vec();
    refused("tensor-nul", &g.bytes(), &["output_norm.weight", "NUL"]);
    let mut g = base();
    g.tensors[10].name = vec![b'n'; 64];
    refused("tensor-long", &g.bytes(), &["nnnn", "64 bytes"]);
    // Dimensions: too many, overflowing, rows not whole blocks.
    let mut g = base();
    g.tensors[10].dims = vec![H as u64, 1, 1, 1, 1];
    refused(
        "n-dims",
        &g.bytes(),
        &["output_norm.weight", "5 dimensions"],
    );
    let mut g = base();
    g.tensors[10].dims = vec![1 << 32, 1 << 32];
    refused(
        "dims-overflow",
        &g.bytes(),
        &["output_norm.weight", "overflow"],
    );
    let mut g = base();
    g.tensors[10].ty = Q8_0;
    g.tensors[10].dims = vec![16];
    refused(
        "blocks",
        &g.bytes(),
        &["output_norm.weight", "blocks of 32"],
    );
    let mut g = base();
    g.tensors[10].ty = 99;
    refused(
        "tensor-type",
        &g.bytes(),
        &["output_norm.weight", "type 99"],
    );
    // An offset near u64::MAX: offset + size overflows.
    let mut g = base();
    g.tensors[0].offset = Some(u64::MAX - 8);
    refused(
        "offset-overflow",
        &g.bytes(),
        &["token_embd.weight", "offset"],
    );
    // Truncated inside the tensor data, and inside the header.
    let bytes = base().bytes();
    refused(
        "truncated-data",
        &bytes[..bytes.len() - 200],
        &["output_norm.weight", "truncated"],
    );
    refused("truncated-header", &bytes[..300], &["truncated"]);
}

/// The generate example reports a hostile file in one line, exit code 2.
#[test]
fn the_generate_example_reports_a_hostile_file_in_one_line() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("generate{}", std::env::consts::EXE_SUFFIX));
    let mut g = base();
    g.push(b"general.alignment", u32v(0));
    let p = write("cli", &g.bytes());
    let out = std::process::Command::new(bin)
        .args(["--prompt", "x", "--target", p.to_str().unwrap()])
        .output()
        .expect("examples/generate is built by cargo test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("general.alignment"), "{stderr}");
    std::fs::remove_file(&p).unwrap();
}
