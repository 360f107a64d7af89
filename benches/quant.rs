//! Criterion bench of the quantized CPU kernels (`src/backend/candle/cpu/quant/`,
//! compiled into this bench as a module, since the crate keeps it private).
//!
//! The shapes of SmolLM2-135M (hidden 576, 3 KV heads of 64, MLP 1536,
//! vocabulary 49152): its Q4_1 projections and its Q8_0 output head, one row
//! of `x` (a decode step) and 8 (a verified window), and `token`: every
//! matrix product of one decode step of the 30-layer model, on 30 distinct
//! layers of weights (96.5 MB, so they stream from memory as in a real
//! forward), beside plain reads of as many bytes from memory (the floor on
//! this machine). Throughput is in bytes of weights (GGUF bytes) per second.
//!
//!     cargo bench --bench quant
//!
//! Runs on a rayon pool of 2 threads (`SPECDEC_BENCH_THREADS` overrides),
//! the calling thread one of them, as `init_thread_pool` sets up the model.
//! Timings on a shared machine drift; compare ratios within one run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

// The kernels' modules as the crate lays them out (`cpu` is every CPU
// kernel with their shared scaffolding; `quant` the block formats), of
// which only the quantized product is benched here.
#[allow(dead_code)]
#[path = "../src/backend/candle/cpu/mod.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../src/backend/candle/quant.rs"]
mod quant;

/// What `cpu` imports as `crate::error`.
mod error {
    pub use specdec::{Error, Result};
}

use cpu::quant::QMatrix;
use quant::QType;

/// Random blocks with finite, small f16 scales (and Q4_1 mins).
fn matrix(qtype: QType, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let bb = qtype.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / qtype.block_elems() * bb)
        .map(|_| next() as u8)
        .collect();
    for b in data.chunks_exact_mut(bb) {
        let d = half::f16::from_f32(0.01 * ((next() % 200) as f32 - 100.0) / 100.0);
        b[0..2].copy_from_slice(&d.to_le_bytes());
        if qtype == QType::Q4_1 {
            b[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    QMatrix::new(qtype, rows, cols, data).expect("valid shape")
}

fn weight_bytes(m: &QMatrix) -> u64 {
    (m.rows() * m.cols() / m.qtype().block_elems() * m.qtype().block_bytes()) as u64
}

fn x(n: usize, cols: usize) -> Vec<f32> {
    (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect()
}

fn setup() {
    let threads = std::env::var("SPECDEC_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // The second bench to ask finds the pool already running.
    let _ = specdec::backend::candle::init_thread_pool(Some(threads));
}

fn shapes(c: &mut Criterion) {
    setup();
    let mut g = c.benchmark_group("quant");
    for (name, qtype, rows, cols) in [
        ("q4_1 576x576", QType::Q4_1, 576, 576),
        ("q4_1 192x576", QType::Q4_1, 192, 576),
        ("q4_1 1536x576", QType::Q4_1, 1536, 576),
        ("q4_1 576x1536", QType::Q4_1, 576, 1536),
        ("q8_0 49152x576", QType::Q8_0, 49152, 576),
    ] {
        let m = matrix(qtype, rows, cols, rows as u64 + cols as u64);
        g.throughput(Throughput::Bytes(weight_bytes(&m)));
        for n in [1, 8] {
            let xs = x(n, cols);
            let mut out = vec![0f32; n * rows];
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| m.matmul(&xs, n, &mut out))
            });
        }
    }
    g.finish();
}

fn token(c: &mut Criterion) {
    setup();
    let (hidden, kv, mlp, vocab, layers) = (576, 192, 1536, 49152, 30);
    let mut mats = Vec::new();
    for l in 0..layers {
        for (i, (rows, cols)) in [
            (hidden, hidden),
            (kv, hidden),
            (kv, hidden),
            (hidden, hidden),
            (mlp, hidden),
            (mlp, hidden),
            (hidden, mlp),
        ]
        .into_iter()
        .enumerate()
        {
            mats.push(matrix(QType::Q4_1, rows, cols, (l * 7 + i) as u64));
        }
    }
    mats.push(matrix(QType::Q8_0, vocab, hidden, 99));
    let bytes: u64 = mats.iter().map(weight_bytes).sum();
    let mut g = c.benchmark_group("quant token");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    // The floor: reading as many bytes from memory, split over the pool.
    let plain: Vec<u64> = (0..bytes / 8).collect();
    g.bench_function("memory read (baseline)", |b| {
        b.iter(|| {
            use rayon::prelude::*;
            plain
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, v| a ^ v))
                .reduce(|| 0, |a, b| a ^ b)
        })
    });
    for n in [1, 8] {
        let xs = x(n, mlp);
        let mut out = vec![0f32; n * vocab];
        g.bench_with_input(BenchmarkId::new("smollm2-135m q4_1", n), &n, |b, &n| {
            b.iter(|| {
                for m in &mats {
                    m.matmul(&xs[..n * m.cols()], n, &mut out[..n * m.rows()]);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, shapes, token);
criterion_main!(benches);
