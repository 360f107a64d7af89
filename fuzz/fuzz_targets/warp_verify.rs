//! Fuzzes the sampler's warping and both verifiers with arbitrary logits
//! (NaN, ±inf, huge and tiny values), settings and draft tokens.
//!
//! Invariants: no panic; every returned distribution is finite, nonnegative
//! and sums to 1; non-finite logits and empty rows are errors, not
//! distributions; accepted counts are within `0..=drafted`; the committed
//! token is in the vocabulary and has mass under the target.
//!
//!     cargo fuzz run warp_verify    (from the repository root)
#![no_main]

use libfuzzer_sys::fuzz_target;
use specdec::sampling::warp;
use specdec::verify::{verify_greedy, verify_sampled};
use specdec::SamplingParams;
use specdec::sampling::{Distribution, RandomSource, SeededRandom};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fn check(d: &Distribution) {
    let sum: f64 = d.probs().iter().sum();
    assert!(d.probs().iter().all(|p| p.is_finite() && *p >= 0.0), "{:?}", d.probs());
    assert!((sum - 1.0).abs() < 1e-9, "sum {sum}");
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let vocab = 1 + (b.u8() % 32) as usize;
    let m = (b.u8() % 6) as usize;
    let params = SamplingParams {
        temperature: (b.u8() as f32 + 1.0) / 64.0,
        top_k: (b.u8() % 3 == 0).then(|| 1 + b.u8() as usize % 40),
        top_p: (b.u8() % 3 == 0).then(|| (b.u8() as f32 + 1.0) / 256.0),
        min_p: (b.u8() % 3 == 0).then(|| b.u8() as f32 / 256.0),
    };
    assert!(params.validate().is_ok());
    let suppress: Vec<u32> = (0..b.u8() % 3).map(|_| b.u8() as u32 % 40).collect();
    let rows: Vec<Vec<f32>> = (0..2 * m + 1).map(|_| (0..vocab).map(|_| b.f32()).collect()).collect();
    let mut rng = SeededRandom::new(b.u8() as u64);

    // Warping: a distribution, or an error for a non-finite / empty row.
    let mut dists = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match warp(row, &params, &suppress, i) {
            Ok(d) => {
                check(&d);
                assert!(row.iter().all(|x| !x.is_nan() && *x != f32::INFINITY));
                dists.push(d);
            }
            Err(_) => return,
        }
    }
    let (q, p) = dists.split_at(m);
    let draft: Vec<u32> = (0..m)
        .map(|i| if b.u8() % 4 == 0 { b.u8() as u32 % vocab as u32 } else { rng.categorical(q[i].probs()) as u32 })
        .collect();
    let v = verify_sampled(&draft, q, p, &mut rng);
    assert!(v.accepted <= m);
    assert!((v.next as usize) < vocab);
    assert!(p[v.accepted].prob(v.next) > 0.0, "committed a token the target gives no mass");

    let best: Vec<u32> = (0..=m).map(|i| (rows[m + i].len() as u32 - 1).min(b.u8() as u32)).collect();
    let g = verify_greedy(&draft, &best);
    assert!(g.accepted <= m && g.next == best[g.accepted]);
});
