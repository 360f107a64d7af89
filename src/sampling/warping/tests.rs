//! Tests of `warp`: against a plain softmax in the documented order, the
//! AVX2 and scalar paths, cuts and ties, and its errors.

use super::*;
use crate::sampling::argmax;

#[test]
fn exp_f64_is_close_to_libm_and_exact_at_zero() {
    assert_eq!(exp_f64(0.0), 1.0);
    assert_eq!(exp_f64(-0.0), 1.0);
    assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
    assert_eq!(exp_f64(-709.0), 0.0);
    let mut worst = 0.0f64;
    for i in 0..707_990 {
        let x = -(i as f64) / 1000.0 - (i % 7) as f64 * 1.3e-4;
        let want = x.exp();
        worst = worst.max((exp_f64(x) - want).abs() / want);
    }
    assert!(worst < 4e-15, "worst relative error {worst}");
}

fn dist(row: &[f32], params: &SamplingParams) -> Vec<f64> {
    warp(row, params, &[], 0).unwrap().probs().to_vec()
}

#[test]
fn softmax_at_temperature_one() {
    let p = dist(
        &[0.0, (2.0f32).ln()],
        &SamplingParams::with_temperature(1.0),
    );
    // ln 2 rounded to f32 is off by ~1e-8, hence the tolerance.
    assert!((p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7);
}

#[test]
fn top_k_and_top_p_cut_the_tail() {
    let row = [3.0, 2.0, 1.0, 0.0];
    let mut params = SamplingParams::with_temperature(1.0);
    params.top_k = Some(2);
    let p = dist(&row, &params);
    assert!(p[2] == 0.0 && p[3] == 0.0 && p[0] > p[1]);
    params.top_k = None;
    params.top_p = Some(0.5);
    assert_eq!(dist(&row, &params), vec![1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn ties_at_the_cut_keep_the_lower_id() {
    let mut params = SamplingParams::with_temperature(1.0);
    params.top_k = Some(1);
    assert_eq!(dist(&[1.0, 1.0, 1.0], &params), vec![1.0, 0.0, 0.0]);
}

#[test]
fn min_p_is_relative_to_the_top() {
    let mut params = SamplingParams::with_temperature(1.0);
    params.min_p = Some(0.5);
    let p = dist(&[0.0, (0.4f32).ln(), (0.6f32).ln()], &params);
    assert_eq!(p[1], 0.0);
    assert!(p[2] > 0.0);
}

#[test]
fn suppression_and_masking() {
    let params = SamplingParams::with_temperature(1.0);
    let d = warp(&[5.0, 1.0], &params, &[0], 3).unwrap();
    assert_eq!(d.probs(), &[0.0, 1.0]);
    let e = warp(&[f32::NEG_INFINITY, 1.0], &params, &[1], 3).unwrap_err();
    assert!(matches!(
        e,
        Error::EmptyDistribution {
            role: None,
            position: 3
        }
    ));
    assert_eq!(argmax(&[5.0, 1.0, 5.0], &[0], 0).unwrap(), 2);
}
#[test]
fn weight32_is_close_to_exp_and_zero_below_its_range() {
    assert_eq!(weight32(0.0), 1.0);
    assert_eq!(weight32(-0.0), 1.0);
    assert_eq!(weight32(-8.0), 0.5);
    assert_eq!(weight32(f32::NEG_INFINITY), 0.0);
    assert_eq!(weight32(-1008.6), 0.0);
    assert_eq!(weight32(-1009.0), 0.0);
    assert!(weight32(-1008.0) > 0.0);
    let mut worst = 0.0f64;
    for i in 0..=1_008_000 {
        let d = -(i as f32) / 1000.0;
        let want = 2f64.powf(d as f64 / 8.0);
        worst = worst.max((weight32(d) as f64 - want).abs() / want);
    }
    assert!(worst < 3e-7, "worst relative error {worst}");
    // In nats: the rounding of d adds up to 7e-8 per nat.
    for i in 0..=87_000 {
        let n = -(i as f32) / 1000.0;
        let want = (n as f64).exp();
        let got = weight32(n * WEIGHT32_8_LOG2E) as f64;
        assert!(
            (got - want).abs() / want < 3e-7 + 7e-8 * n.abs() as f64,
            "{n}"
        );
    }
}

/// Logits shaped like a language model's (power law in a shuffled rank,
/// `spread` nats from top to bottom), with `-inf` at every 97th id.
fn lm_row(vocab: usize, spread: f32, seed: u64) -> Vec<f32> {
    let ln_vocab = (vocab as f32).ln();
    (0..vocab as u64)
        .map(|v| {
            let rank = (v * 7919 + seed * 131) % vocab as u64;
            match (v + seed) % 97 {
                5 => f32::NEG_INFINITY,
                _ => 3.0 - spread * ((1 + rank) as f32).ln() / ln_vocab,
            }
        })
        .collect()
}

fn row_ctx<'a>(row: &'a [f32], sup: &'a [u32], t: f32) -> Row<'a> {
    let top = max_and_bad(row).0;
    Row {
        row,
        max: live_max(row, top, sup),
        scale: (WEIGHT32_8_LOG2E / t).min(f32::MAX),
        inv_t: 1.0 / t as f64,
        sup,
    }
}

/// The AVX2 kernel (where the CPU has it) and the token-by-token path
/// give the same total, bit for bit, and collect the same ids.
#[test]
fn the_vector_scan_is_the_scalar_scan() {
    for (vocab, sup) in [
        (7usize, vec![]),
        (1003, vec![0u32, 17, 18, 1002]),
        (32000, vec![5]),
        (4096, vec![]),
    ] {
        for (seed, spread) in [(1u64, 20.0f32), (2, 60.0), (3, 400.0)] {
            let row = lm_row(vocab, spread, seed);
            let ctx = row_ctx(&row, &sup, 0.7);
            for (lo, hi) in [
                (FLOORS[0], f32::INFINITY),
                (-24.0, -8.0),
                (f32::NEG_INFINITY, -88.0),
            ] {
                let mut fast = Vec::new();
                let total = scan(&ctx, lo, hi, true, &mut fast);
                let mut slow = Vec::new();
                let mut lanes = Sums::default();
                for c in 0..=vocab / 8 {
                    one_chunk(&ctx, c, lo, hi, true, &mut lanes, &mut slow);
                }
                let want = lanes.total();
                assert_eq!(total.to_bits(), want.to_bits(), "vocab {vocab} {lo}..{hi}");
                assert_eq!(fast, slow, "vocab {vocab} {lo}..{hi}");
                let mut ids = Vec::new();
                assert_eq!(scan(&ctx, lo, hi, false, &mut ids), 0.0);
                assert_eq!(ids, slow);
            }
        }
    }
}

/// What warp keeps, by the module docs' definition computed the plain
/// way: every live id sorted once, the prefix sums token by token.
fn kept_by_full_sort(row: &[f32], params: &SamplingParams, sup: &[u32]) -> Vec<u32> {
    let ctx = row_ctx(row, sup, params.temperature);
    let mut order: Vec<u32> = (0..row.len() as u32)
        .filter(|&i| row[i as usize] != f32::NEG_INFINITY && !sup.contains(&i))
        .collect();
    order.sort_by(|&a, &b| {
        let (xa, xb) = (row[a as usize], row[b as usize]);
        xb.partial_cmp(&xa).unwrap().then(a.cmp(&b))
    });
    if let Some(k) = params.top_k {
        order.truncate(k);
    }
    let w = |i: u32| weight32(ctx.d(row[i as usize])) as f64;
    if let Some(top_p) = params.top_p.filter(|&p| p < 1.0) {
        let total = if params.top_k.is_some() {
            order.iter().map(|&i| w(i)).sum()
        } else {
            // Lane i % 8, in f32 per block of 128 ids, then in f64.
            let mut live = vec![false; row.len()];
            order.iter().for_each(|&i| live[i as usize] = true);
            let mut wide = [0.0f64; 8];
            for block in (0..row.len()).step_by(128) {
                for (lane, wide) in wide.iter_mut().enumerate() {
                    let mut narrow = 0.0f32;
                    for i in (block + lane..(block + 128).min(row.len())).step_by(8) {
                        if live[i] {
                            narrow += weight32(ctx.d(row[i]));
                        }
                    }
                    *wide += narrow as f64;
                }
            }
            let l = wide;
            ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
        };
        let mut acc = 0.0;
        if let Some(n) = order.iter().position(|&i| {
            acc += w(i);
            acc >= top_p as f64 * total
        }) {
            order.truncate(n + 1);
        }
    }
    order
}

/// The bucketed, level-by-level walk keeps exactly the prefix that one
/// full sort gives, and the probabilities are the kept `f64` weights
/// normalized: on peaked and flat rows (cuts in every level), ties,
/// suppressed ids (the top one among them), `-inf` logits, vocabularies
/// that are not a multiple of 8, and every kind of setting.
#[test]
fn warp_keeps_what_a_full_sort_keeps() {
    let mut rows: Vec<(Vec<f32>, Vec<u32>)> = Vec::new();
    for (vocab, spread) in [
        (3000usize, 25.0f32),
        (3001, 60.0),
        (2999, 4.0),
        (4103, 900.0),
    ] {
        rows.push((lm_row(vocab, spread, 7), vec![]));
    }
    // Ties: 20 levels over 3000 ids.
    rows.push((
        (0..3000).map(|i| -(((i * 7919) % 20) as f32)).collect(),
        vec![],
    ));
    // The largest logits suppressed, and ids past the end (ignored).
    let mut row = lm_row(1001, 30.0, 3);
    let top = (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap();
    row[999] = row[top];
    rows.push((row, vec![top as u32, 999, 4, 4, 50_000]));
    let mut checked = 0;
    for (row, suppress) in &rows {
        let sup = suppressed_in(suppress, row.len());
        for t in [0.3f32, 0.7, 1.0, 2.5] {
            for (top_k, top_p, min_p) in [
                (None, Some(0.95), None),
                (None, Some(0.5), None),
                (None, Some(0.999_99), None),
                (None, Some(1.0), None),
                (Some(1), None, None),
                (Some(5), None, None),
                (Some(2500), None, None),
                (Some(100_000), None, None),
                (Some(40), Some(0.5), None),
                (Some(2900), Some(0.9), Some(0.001)),
                (None, Some(0.9), Some(0.05)),
            ] {
                let params = SamplingParams {
                    top_k,
                    top_p,
                    min_p,
                    ..SamplingParams::with_temperature(t)
                };
                let got = warp(row, &params, suppress, 0).unwrap();
                let mut want = kept_by_full_sort(row, &params, &sup);
                want.sort_unstable();
                let ctx = row_ctx(row, &sup, t);
                let xs: Vec<f32> = want.iter().map(|&i| row[i as usize]).collect();
                let w = weights_f64(&xs, ctx.max, ctx.inv_t);
                let cut = min_p.map_or(0.0, f64::from);
                let (ids, w): (Vec<u32>, Vec<f64>) = want
                    .iter()
                    .zip(w)
                    .filter(|&(_, w)| w > 0.0 && w >= cut)
                    .unzip();
                let want = if top_k.is_none() && top_p.is_none_or(|p| p >= 1.0) {
                    // Every live token kept: stored dense.
                    let mut dense = vec![0.0; row.len()];
                    ids.iter()
                        .zip(&w)
                        .for_each(|(&i, &w)| dense[i as usize] = w);
                    Distribution::from_weights(dense).unwrap()
                } else {
                    Distribution::from_sparse_weights(row.len(), ids, w).unwrap()
                };
                assert_eq!(got, want, "{params:?} vocab {}", row.len());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, rows.len() * 4 * 11);
}

/// A sparse row answers as its dense view does: the same probability
/// per id, the same draws from a seeded source, the same Gumbel
/// choice, and the same residual as the dense copy.
#[test]
fn a_sparse_row_is_its_dense_view() {
    use crate::sampling::{gumbel, residual, RandomSource, SeededRandom};
    let params = SamplingParams {
        top_p: Some(0.9),
        ..SamplingParams::with_temperature(0.8)
    };
    let p = warp(&lm_row(5003, 30.0, 1), &params, &[], 0).unwrap();
    let q = warp(&lm_row(5003, 30.0, 2), &params, &[], 0).unwrap();
    assert!(p.stored() < 5003 / 4, "kept {} of 5003", p.stored());
    let dense = p.probs();
    assert_eq!(dense.len(), 5003);
    for (v, &pv) in dense.iter().enumerate() {
        assert_eq!(p.prob(v as u32).to_bits(), pv.to_bits());
    }
    assert_eq!(p.prob(5003), 0.0);
    assert_eq!(
        p.support().count(),
        dense.iter().filter(|&&x| x > 0.0).count()
    );
    assert_eq!(p.max_prob(), dense.iter().copied().fold(0.0, f64::max));
    for seed in 0..300 {
        let want = SeededRandom::new(seed).categorical(dense) as u32;
        assert_eq!(p.sample(&mut SeededRandom::new(seed)), want);
        let dense_p = Distribution::from_weights(dense.to_vec()).unwrap();
        assert_eq!(
            gumbel::choose(&p, seed, 9),
            gumbel::choose(&dense_p, seed, 9)
        );
    }
    let dense_p = Distribution::from_weights(dense.to_vec()).unwrap();
    let (a, b) = (residual(&p, &q).unwrap(), residual(&dense_p, &q).unwrap());
    assert_eq!(a.len(), 5003);
    let (a, b): (Vec<_>, Vec<_>) = (a.support().collect(), b.support().collect());
    assert_eq!(a.len(), b.len());
    for ((ia, pa), (ib, pb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        assert!((pa - pb).abs() < 1e-15, "{pa} vs {pb}");
    }
}

#[test]
fn bad_rows_and_edge_settings() {
    let params = SamplingParams {
        top_p: Some(0.9),
        ..SamplingParams::with_temperature(0.7)
    };
    for bad in [f32::NAN, f32::INFINITY] {
        let mut row = lm_row(1000, 20.0, 1);
        row[321] = bad;
        let e = warp(&row, &params, &[], 6).unwrap_err();
        assert!(matches!(
            e,
            Error::NonFiniteLogits {
                token: 321,
                position: 6,
                ..
            }
        ));
    }
    // Everything suppressed or -inf, with top-p, top-k and neither.
    for params in [
        params.clone(),
        SamplingParams {
            top_k: Some(3),
            ..params.clone()
        },
        SamplingParams::with_temperature(1.0),
    ] {
        let e = warp(&[f32::NEG_INFINITY, 1.0, 2.0], &params, &[1, 2], 2);
        assert!(matches!(
            e,
            Err(Error::EmptyDistribution { position: 2, .. })
        ));
    }
    // A temperature so small that 1 / T overflows f32: the top token.
    let d = warp(
        &[1.0, 3.0, 2.0],
        &SamplingParams {
            top_p: Some(0.5),
            ..SamplingParams::with_temperature(1e-45)
        },
        &[],
        0,
    )
    .unwrap();
    assert_eq!(d.probs(), &[0.0, 1.0, 0.0]);
    // Equal logits and top-p: the lower ids first, and exactly half.
    let d = warp(
        &[0.5; 10],
        &SamplingParams {
            top_p: Some(0.5),
            ..SamplingParams::with_temperature(1.0)
        },
        &[],
        0,
    )
    .unwrap();
    assert_eq!(
        d.support().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // top-p 1.0 keeps every live token.
    let row = lm_row(2001, 500.0, 4);
    let d = warp(
        &row,
        &SamplingParams {
            top_p: Some(1.0),
            ..SamplingParams::with_temperature(1.0)
        },
        &[],
        0,
    )
    .unwrap();
    let live = row
        .iter()
        .filter(|&&x| x > f32::NEG_INFINITY && (x as f64 - 3.0) > -700.0)
        .count();
    assert_eq!(d.support().count(), live);
}

/// Logits at the ends of f32's range (huge, subnormal, -inf) and tiny
/// or large temperatures: always a distribution that sums to 1 and
/// holds the live argmax, the same one whichever way it is computed.
#[test]
fn extreme_rows_give_distributions() {
    let values = [
        3.0e38f32,
        -3.0e38,
        1.0e-40,
        -1.0e-40,
        0.0,
        -0.0,
        f32::NEG_INFINITY,
        1.0,
        -87.0,
        1.0e5,
    ];
    for case in 0..400usize {
        let vocab = 1 + case % 37;
        let row: Vec<f32> = (0..vocab)
            .map(|v| values[(v * 7 + case * 13 + v * case) % values.len()])
            .collect();
        let suppress: Vec<u32> = if case % 5 == 0 { vec![0] } else { vec![] };
        let t = [1e-6f32, 1.0 / 64.0, 0.7, 1.0, 50.0][case % 5];
        for (top_k, top_p, min_p) in [
            (None, None, None),
            (None, Some(0.9), None),
            (Some(2), Some(0.5), Some(0.1)),
            (Some(30), None, None),
            (None, Some(0.999), Some(0.5)),
        ] {
            let params = SamplingParams {
                top_k,
                top_p,
                min_p,
                ..SamplingParams::with_temperature(t)
            };
            let best = argmax(&row, &suppress, 0);
            match warp(&row, &params, &suppress, 0) {
                Ok(d) => {
                    let sum: f64 = d.probs().iter().sum();
                    assert!((sum - 1.0).abs() < 1e-12, "{row:?} {params:?}: {sum}");
                    assert!(d.probs().iter().all(|p| p.is_finite() && *p >= 0.0));
                    assert!(d.prob(best.unwrap()) > 0.0, "{row:?} {params:?}");
                }
                Err(e) => {
                    assert!(best.is_err(), "{row:?} {params:?}: {e}");
                }
            }
        }
    }
}
