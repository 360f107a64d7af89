//! Tests of the quantized kernels: the repacking against candle's
//! dequantization, the products against an f64 emulation and the
//! activation-rounding bound, and the same bits on every instruction set.

use super::*;

const ALL: [QType; 6] = [
    QType::Q4_0,
    QType::Q4_1,
    QType::Q8_0,
    QType::Q4K,
    QType::Q5K,
    QType::Q6K,
];

/// The ISAs this CPU can run, best first.
fn isas() -> Vec<Isa> {
    let all = [Isa::Avx512, Isa::Avx2, Isa::Portable];
    let best = all.iter().position(|&i| i == Isa::detect_int8()).unwrap();
    all[best..].to_vec()
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `rows * cols / block_elems` random blocks with finite f16 fields.
fn random_blocks(qtype: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15 + 1);
    let bb = qtype.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / qtype.block_elems() * bb)
        .map(|_| rng.next() as u8)
        .collect();
    for b in data.chunks_exact_mut(bb) {
        match qtype {
            QType::Q4_0 | QType::Q8_0 => put_f16(b, 0, 0.05 * rng.f32()),
            QType::Q4_1 => {
                put_f16(b, 0, 0.01 * rng.f32());
                put_f16(b, 2, 0.1 * rng.f32());
            }
            QType::Q4K | QType::Q5K => {
                put_f16(b, 0, 0.002 * rng.f32());
                put_f16(b, 2, 0.004 * rng.f32());
            }
            QType::Q6K => put_f16(b, 208, 0.001 * rng.f32()),
        }
    }
    data
}

fn candle_dequantize(qtype: QType, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::Device;
    let dtype = match qtype {
        QType::Q4_0 => GgmlDType::Q4_0,
        QType::Q4_1 => GgmlDType::Q4_1,
        QType::Q8_0 => GgmlDType::Q8_0,
        QType::Q4K => GgmlDType::Q4K,
        QType::Q5K => GgmlDType::Q5K,
        QType::Q6K => GgmlDType::Q6K,
    };
    let storage =
        QStorage::from_data(std::borrow::Cow::Borrowed(data), &Device::Cpu, dtype).unwrap();
    let t = QTensor::new(storage, (rows, cols)).unwrap();
    t.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn new_checks_the_shape_and_the_byte_count() {
    for q in ALL {
        let be = q.block_elems();
        let err = QMatrix::new(q, 2, be + 16, vec![0; 1000])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("columns") && err.contains(&format!("multiple of {be}")),
            "{err}"
        );
        let err = QMatrix::new(q, 3, be, vec![0; 2 * q.block_bytes()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{}", 3 * q.block_bytes())), "{err}");
        let err = QMatrix::new(q, usize::MAX, 2 * be, vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows"), "{err}");
        let err = QMatrix::new(q, 0, be, vec![]).unwrap_err().to_string();
        assert!(err.contains("0 x"), "{err}");
        let m = QMatrix::new(q, 3, be, vec![0; 3 * q.block_bytes()]).unwrap();
        assert_eq!((m.rows(), m.cols(), m.qtype()), (3, be, q));
    }
    assert_eq!(ALL.map(|q| q.block_bytes()), [18, 20, 34, 144, 176, 210]);
    // The kernels rely on it: a zero point or an offset, never both.
    assert!(ALL.iter().all(|q| q.kind().offset == (q.kind().zero == 0)));
}

#[test]
fn dequantize_hand_built_blocks() {
    use super::super::super::quant::scale_min_k4;
    // Q4_0: d = 0.5, qs[j] = j | (15 - j) << 4: element j is (j - 8) / 2,
    // element 16 + j is (7 - j) / 2.
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 0.5);
    for j in 0..16 {
        b[2 + j] = j as u8 | ((15 - j as u8) << 4);
    }
    let want: Vec<f32> = (0..16)
        .map(|j| (j as f32 - 8.0) / 2.0)
        .chain((0..16).map(|j| (7.0 - j as f32) / 2.0))
        .collect();
    assert_eq!(
        QMatrix::new(QType::Q4_0, 1, 32, b.clone())
            .unwrap()
            .dequantize(),
        want
    );

    // Q4_1: d = 0.25, m = -1, same nibbles: q * 0.25 - 1.
    let mut b1 = vec![0u8; 20];
    put_f16(&mut b1, 0, 0.25);
    put_f16(&mut b1, 2, -1.0);
    b1[4..].copy_from_slice(&b[2..]);
    let want: Vec<f32> = (0..16)
        .map(|j| j as f32 * 0.25 - 1.0)
        .chain((0..16).map(|j| (15 - j) as f32 * 0.25 - 1.0))
        .collect();
    assert_eq!(
        QMatrix::new(QType::Q4_1, 1, 32, b1).unwrap().dequantize(),
        want
    );

    // Q8_0: d = 2, qs = -128, -127, ..., -97.
    let mut b8 = vec![0u8; 34];
    put_f16(&mut b8, 0, 2.0);
    for j in 0..32 {
        b8[2 + j] = (j as i32 - 128) as i8 as u8;
    }
    let want: Vec<f32> = (0..32).map(|j| 2.0 * (j as f32 - 128.0)).collect();
    assert_eq!(
        QMatrix::new(QType::Q8_0, 1, 32, b8).unwrap().dequantize(),
        want
    );

    // Q4_K: d = 1, dmin = 0.5. Sub-block 0 (ggml's j < 4 rule): scale 3
    // in byte 0, min 2 in byte 4. Sub-block 5 (j >= 4): scale 0x25 and
    // min 0x13, their low 4 bits in byte 9 and high 2 bits in the top
    // bits of bytes 1 and 5. Quants 0 but byte 64 of qs: 9 in the low
    // nibble (element 128, sub-block 4: scale 0, min 0) and 7 in the
    // high one (element 160, sub-block 5).
    let mut bk = vec![0u8; 144];
    put_f16(&mut bk, 0, 1.0);
    put_f16(&mut bk, 2, 0.5);
    bk[4] = 3;
    bk[4 + 4] = 2;
    bk[4 + 9] = 0x5 | (0x3 << 4);
    bk[4 + 1] = 0b10 << 6;
    bk[4 + 5] = 0b01 << 6;
    bk[16 + 64] = 0x9 | (0x7 << 4);
    assert_eq!(scale_min_k4(5, &bk[4..16]), (0x25, 0x13));
    let got = QMatrix::new(QType::Q4K, 1, 256, bk).unwrap().dequantize();
    assert!(got[..32].iter().all(|&v| v == -1.0)); // 3 * 0 - 0.5 * 2
    assert_eq!((got[128], got[129]), (0.0, 0.0));
    assert_eq!((got[160], got[161]), (37.0 * 7.0 - 9.5, -9.5));

    // Q5_K: as Q4_K with the fifth bit from qh: element l of sub-block
    // s gets 16 when bit s of qh[l] is set.
    let mut b5 = vec![0u8; 176];
    put_f16(&mut b5, 0, 1.0);
    put_f16(&mut b5, 2, 0.0);
    b5[4] = 1; // sub-block 0: scale 1
    b5[5] = 1; // sub-block 1: scale 1
    b5[16] = 0b11; // qh[0]: element 0 of sub-blocks 0 and 1
    b5[48] = 0x2 | (0x4 << 4);
    let got = QMatrix::new(QType::Q5K, 1, 256, b5).unwrap().dequantize();
    assert_eq!((got[0], got[32], got[1]), (18.0, 20.0, 0.0));

    // Q6_K: d = 0.5, scale of 16-element sub-block s = s - 8; quant 63 at
    // element 0 (ql low nibble 0xF, qh bits 0-1 = 3) and 0 elsewhere (so
    // -32 once the zero is subtracted).
    let mut b6 = vec![0u8; 210];
    put_f16(&mut b6, 208, 0.5);
    for s in 0..16 {
        b6[192 + s] = (s as i8 - 8) as u8;
    }
    b6[0] = 0xF;
    b6[128] = 0b11;
    let got = QMatrix::new(QType::Q6K, 1, 256, b6).unwrap().dequantize();
    assert_eq!(got[0], 0.5 * -8.0 * 31.0);
    for (e, v) in got.iter().enumerate().skip(1) {
        assert_eq!(*v, 0.5 * ((e / 16) as f32 - 8.0) * -32.0, "element {e}");
    }
}

#[test]
fn dequantize_equals_candle_for_random_blocks() {
    for (s, q) in ALL.into_iter().enumerate() {
        let (rows, cols) = (19, 512);
        let data = random_blocks(q, rows, cols, s as u64);
        let m = QMatrix::new(q, rows, cols, data.clone()).unwrap();
        let want = candle_dequantize(q, rows, cols, &data);
        let got = m.dequantize();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{q:?} element {i}: {g} vs {w}");
        }
        let mut row = vec![0f32; cols];
        m.dequantize_row(17, &mut row);
        assert_eq!(row, want[17 * cols..18 * cols]);
    }
}

fn acts(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
    // Activations with outliers, as in a transformer's residual stream.
    (0..n * cols)
        .map(|i| rng.f32() * if i % 97 == 5 { 20.0 } else { 1.0 })
        .collect()
}

/// Each weight's sub-block offset (0 without), `[rows, cols]`.
fn offsets(m: &QMatrix) -> Vec<f64> {
    let kind = m.qtype.kind();
    let (subs, pb, cb) = (m.cols / kind.sub, kind.panel_bytes(), kind.chunk_bytes());
    let mut off = vec![0f64; m.rows * m.cols];
    if kind.offset {
        for (k, o) in off.iter_mut().enumerate() {
            let (r, c) = (k / m.cols, k % m.cols);
            let chunk = &m.data[((r / PANEL) * subs + c / kind.sub) * cb..][..cb];
            *o = kind.read_scale(&chunk[pb + PANEL * kind.scale_bytes()..], r % PANEL) as f64;
        }
    }
    off
}

/// What the kernels compute, in f64: `(w - offset) * dx * xq + offset *
/// sum x`, with `x` quantized by the kernels' own code, `[n, rows]`.
fn emulate(w: &[f32], off: &[f64], x: &[f32], n: usize, cols: usize) -> Vec<f64> {
    let rows = w.len() / cols;
    let mut q = vec![0i8; x.len()];
    let (mut d, mut sum) = (vec![0f32; x.len() / 32], vec![0f32; x.len() / 32]);
    quantize_blocks(x, &mut q, &mut d, &mut sum);
    let mut y = vec![0f64; n * rows];
    for i in 0..n {
        for r in 0..rows {
            let mut acc = 0f64;
            for b in 0..cols / 32 {
                let (mut dot, mut o) = (0f64, 0f64);
                for c in b * 32..(b + 1) * 32 {
                    let k = r * cols + c;
                    dot += (w[k] as f64 - off[k]) * q[i * cols + c] as f64;
                    // Offsets are constant over a 32-block.
                    o = off[k];
                }
                let blk = i * cols / 32 + b;
                acc += dot * d[blk] as f64 + o * sum[blk] as f64;
            }
            y[i * rows + r] = acc;
        }
    }
    y
}

#[test]
fn matmul_is_within_the_activation_rounding_of_an_f64_product() {
    let mut rng = Rng(7);
    for (s, q) in ALL.into_iter().enumerate() {
        let be = q.block_elems();
        for (rows, cols) in [(1, be), (15, 2 * be), (17, be.max(96)), (50, 3 * be)] {
            let data = random_blocks(q, rows, cols, 100 + s as u64);
            let m = QMatrix::new(q, rows, cols, data).unwrap();
            let w = m.dequantize();
            let off = offsets(&m);
            for n in 1..=9 {
                let x = acts(&mut rng, n, cols);
                let emulated = emulate(&w, &off, &x, n, cols);
                for isa in isas() {
                    let mut y = vec![f32::NAN; n * rows];
                    // SAFETY: `isas()` lists only what this CPU has.
                    unsafe { m.matmul_on(isa, &x, n, &mut y) };
                    for i in 0..n {
                        let xi = &x[i * cols..(i + 1) * cols];
                        for r in 0..rows {
                            let wr = &w[r * cols..(r + 1) * cols];
                            let exact: f64 =
                                xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            // |x - dx xq| <= dx / 2 per element, dx = max|x| / 127 per block.
                            let mut bound = 0f64;
                            for (xb, wb) in xi.chunks(32).zip(wr.chunks(32)) {
                                let dx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                                bound += dx / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
                            }
                            let mag: f64 = xi
                                .iter()
                                .zip(wr)
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            let got = y[i * rows + r] as f64;
                            assert!(
                                (got - exact).abs() <= bound * 1.001 + 1e-5 * mag + 1e-30,
                                "{isa:?} {q:?} {rows}x{cols} n={n} [{i},{r}]: {got} vs {exact} (bound {bound})"
                            );
                            // And tightly: f32 rounding away from the
                            // product the quantized activations give.
                            let e = emulated[i * rows + r];
                            assert!(
                                (got - e).abs() <= 1e-5 * mag + 1e-30,
                                "{isa:?} {q:?} {rows}x{cols} n={n} [{i},{r}]: {got} vs emulated {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn activation_quantization_rounds_ties_to_even_on_every_path() {
    // One block with scale 1 (max |x| = 127) and ties, then random ones.
    let mut x = vec![127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -126.5];
    x.resize(32, 0.25);
    let mut rng = Rng(3);
    x.extend(acts(&mut rng, 1, 32 * 40));
    let blocks = x.len() / 32;
    let mut want = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks]);
    quantize_blocks(&x, &mut want.0, &mut want.1, &mut want.2);
    assert_eq!(want.0[..9], [127, 0, 2, 2, 0, -2, -2, 3, -126]);
    assert_eq!(want.1[0], 1.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let mut got = (vec![0i8; x.len()], vec![0f32; blocks], vec![0f32; blocks]);
        // SAFETY: detected.
        unsafe { quantize_blocks_avx2(&x, &mut got.0, &mut got.1, &mut got.2) };
        assert_eq!(got, want);
    }
}

#[test]
fn the_smollm2_gguf_matrices_dequantize_as_candle_and_multiply_within_the_bound() {
    // Real weights: SmolLM2-135M's Q4_1 projections and Q8_0 embedding.
    use candle_core::quantized::gguf_file;
    use candle_core::Device;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let Ok(mut file) = std::fs::File::open(&path) else {
        eprintln!("SKIP: {} is absent", path.display());
        return;
    };
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut rng = Rng(5);
    for (name, qtype) in [
        ("blk.0.attn_q.weight", QType::Q4_1),
        ("blk.0.attn_k.weight", QType::Q4_1),
        ("blk.7.ffn_down.weight", QType::Q4_1),
        ("token_embd.weight", QType::Q8_0),
    ] {
        let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let (rows, cols) = t.shape().dims2().unwrap();
        let m = QMatrix::new(qtype, rows, cols, t.data().unwrap().into_owned()).unwrap();
        let want: Vec<f32> = t
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w = m.dequantize();
        assert!(
            w.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
        // Activations with and without outliers (one in 97 is 20x).
        let n = 3;
        for outliers in [true, false] {
            let x: Vec<f32> = acts(&mut rng, n, cols)
                .iter()
                .map(|v| {
                    if outliers {
                        0.5 * v
                    } else {
                        v.clamp(-1.0, 1.0)
                    }
                })
                .collect();
            let mut y = vec![0f32; n * rows];
            m.matmul(&x, n, &mut y);
            let (mut worst, mut rms) = (0f64, 0f64);
            for i in 0..n {
                let xi = &x[i * cols..(i + 1) * cols];
                for r in 0..rows {
                    let wr = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mut bound = 0f64;
                    for (xb, wb) in xi.chunks(32).zip(wr.chunks(32)) {
                        let dx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                        bound += dx / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
                    }
                    let err = (y[i * rows + r] as f64 - exact).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-6,
                        "{name} [{i},{r}]: {err} > {bound}"
                    );
                    worst = worst.max(err);
                    rms += exact * exact;
                }
            }
            let rms = (rms / (n * rows) as f64).sqrt();
            eprintln!(
                "{name} (outliers: {outliers}): max |error| {worst:.2e} = {:.2e} of the outputs' rms",
                worst / rms
            );
        }
    }
}

#[test]
fn rows_do_not_depend_on_n_nor_on_the_isa() {
    // One row at a time equals all rows at once, bit for bit, for every
    // tile shape (n = 1..9) and every kernel; and the kernels agree.
    let mut rng = Rng(11);
    for (s, q) in ALL.into_iter().enumerate() {
        let (rows, cols) = (16 * 5 + 3, 2 * q.block_elems());
        let m = QMatrix::new(q, rows, cols, random_blocks(q, rows, cols, 200 + s as u64)).unwrap();
        let x = acts(&mut rng, 9, cols);
        let mut reference: Option<Vec<f32>> = None;
        for isa in isas() {
            let mut one = vec![0f32; 9 * rows];
            for (xi, yi) in x.chunks(cols).zip(one.chunks_mut(rows)) {
                // SAFETY: `isas()` lists only what this CPU has.
                unsafe { m.matmul_on(isa, xi, 1, yi) };
            }
            for n in 1..=9 {
                let mut all = vec![0f32; n * rows];
                // SAFETY: as above.
                unsafe { m.matmul_on(isa, &x[..n * cols], n, &mut all) };
                let same = all
                    .iter()
                    .zip(&one)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{isa:?} {q:?}: n = {n} differs from one row at a time"
                );
            }
            match &reference {
                None => reference = Some(one),
                Some(r) => assert!(
                    r.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} {q:?} differs from {:?}",
                    isas()[0]
                ),
            }
        }
    }
}
