//! Causal attention over the KV cache on the CPU, in f32, computed row by
//! row: each query's scores, softmax and weighted sum of values are done in
//! one fixed order that does not depend on how many queries came in the same
//! call. With the projection kernel ([`super::cpu_matmul`]) holding the same
//! property, a window or a prompt pass gives bit-identical logits to feeding
//! its tokens one at a time, so greedy speculative decoding equals greedy
//! decoding by construction, not by luck of rounding.
//!
//! Shapes (`n` new queries at positions `pos..pos+n`, cache of `n_positions`):
//!
//! ```text
//! q        (heads, n, head_dim)        after RoPE
//! k, v     (kv_heads, n_positions, head_dim)   positions < pos + n written
//! output   (n, heads * head_dim)       ready for the output projection
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// Multiply-adds below which one thread does the whole call.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The op; see the module docs for shapes.
pub(crate) struct CachedAttention {
    /// Position of the first query.
    pub(crate) pos: usize,
    /// Keys a query may see, itself included (`usize::MAX`: all before it).
    pub(crate) window: usize,
    /// Score scale, `1 / sqrt(head_dim)`.
    pub(crate) scale: f32,
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "specdec-cached-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (sq, sk, sv) else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let (Some((q0, q1)), Some((k0, k1)), Some((v0, v1))) = (
            lq.contiguous_offsets(),
            lk.contiguous_offsets(),
            lv.contiguous_offsets(),
        ) else {
            candle_core::bail!("{}: contiguous inputs only", self.name());
        };
        let (heads, n, hd) = lq.shape().dims3()?;
        let (kvh, cap, hd2) = lk.shape().dims3()?;
        if lv.shape() != lk.shape() || hd2 != hd || kvh == 0 || heads % kvh != 0 {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, v {:?} do not fit",
                self.name(),
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        if self.pos + n > cap {
            candle_core::bail!(
                "{}: {} positions past a cache of {cap}",
                self.name(),
                self.pos + n
            );
        }
        let dims = Dims {
            heads,
            group: heads / kvh,
            n,
            hd,
            cap,
        };
        let y = attend(&q[q0..q1], &k[k0..k1], &v[v0..v1], &dims, self);
        Ok((CpuStorage::F32(y), Shape::from((n, heads * hd))))
    }
}

struct Dims {
    heads: usize,
    group: usize,
    n: usize,
    hd: usize,
    cap: usize,
}

fn attend(q: &[f32], k: &[f32], v: &[f32], d: &Dims, op: &CachedAttention) -> Vec<f32> {
    let mut out = vec![0f32; d.n * d.heads * d.hd];
    if d.hd == 0 {
        return out;
    }
    // One item per (query row, head): its hd outputs are contiguous.
    let item = |(idx, o): (usize, &mut [f32])| {
        let (i, h) = (idx / d.heads, idx % d.heads);
        let t = op.pos + i;
        let lo = (t + 1).saturating_sub(op.window);
        let kv = (h / d.group) * d.cap;
        let qv = &q[(h * d.n + i) * d.hd..][..d.hd];
        let keys = &k[(kv + lo) * d.hd..(kv + t + 1) * d.hd];
        let values = &v[(kv + lo) * d.hd..(kv + t + 1) * d.hd];
        row(qv, keys, values, op.scale, o);
    };
    let macs = d.n * d.heads * (op.pos + d.n) * d.hd * 2;
    if macs >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(d.hd).enumerate().for_each(item);
    } else {
        out.chunks_mut(d.hd).enumerate().for_each(item);
    }
    out
}

/// One query against its visible keys: `o = softmax(scale * K q) V`.
fn row(q: &[f32], keys: &[f32], values: &[f32], scale: f32, o: &mut [f32]) {
    let hd = q.len();
    let scores: Vec<f32> = keys.chunks_exact(hd).map(|k| dot(q, k) * scale).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (s, v) in scores.iter().zip(values.chunks_exact(hd)) {
        let p = (s - max).exp();
        sum += p;
        for (a, x) in o.iter_mut().zip(v) {
            *a += p * x;
        }
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|a| *a *= inv);
}

/// Dot product in a fixed order: eight lanes, then a fixed tree.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention in f64 over an explicit mask.
    fn naive(q: &[f32], k: &[f32], v: &[f32], d: &Dims, op: &CachedAttention) -> Vec<f32> {
        let mut out = vec![0f32; d.n * d.heads * d.hd];
        for i in 0..d.n {
            for h in 0..d.heads {
                let t = op.pos + i;
                let kv = (h / d.group) * d.cap;
                let qv = &q[(h * d.n + i) * d.hd..][..d.hd];
                let visible: Vec<usize> = (0..=t).filter(|&j| t - j < op.window).collect();
                let s: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let kj = &k[(kv + j) * d.hd..][..d.hd];
                        qv.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * op.scale as f64
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for dd in 0..d.hd {
                    let val: f64 = visible
                        .iter()
                        .zip(&s)
                        .map(|(&j, x)| (x - m).exp() / z * v[(kv + j) * d.hd + dd] as f64)
                        .sum();
                    out[(i * d.heads + h) * d.hd + dd] = val as f32;
                }
            }
        }
        out
    }

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.618).sin())
            .collect()
    }

    #[test]
    fn matches_naive_attention_with_gqa_and_windows() {
        for (heads, kvh, hd, pos, n, window) in [
            (4, 2, 8, 0, 5, usize::MAX),
            (6, 2, 12, 7, 3, usize::MAX),
            (2, 1, 9, 3, 4, 3),
            (3, 3, 16, 10, 1, 4),
        ] {
            let cap = 20;
            let d = Dims {
                heads,
                group: heads / kvh,
                n,
                hd,
                cap,
            };
            let op = CachedAttention {
                pos,
                window,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q = data(heads * n * hd, 1.0);
            let k = data(kvh * cap * hd, 2.0);
            let v = data(kvh * cap * hd, 3.0);
            let got = attend(&q, &k, &v, &d, &op);
            let want = naive(&q, &k, &v, &d, &op);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{g} vs {w} (heads {heads} pos {pos} n {n})"
                );
            }
        }
    }

    #[test]
    fn a_query_row_does_not_depend_on_the_others_in_its_call() {
        let (heads, kvh, hd, cap) = (4, 2, 16, 40);
        let k = data(kvh * cap * hd, 2.0);
        let v = data(kvh * cap * hd, 3.0);
        let n = 30;
        // Queries laid out (heads, n, hd); row i of a call starting at `pos`.
        let q_all = data(heads * n * hd, 1.0);
        let slice = |from: usize, len: usize| -> Vec<f32> {
            (0..heads)
                .flat_map(|h| q_all[(h * n + from) * hd..(h * n + from + len) * hd].to_vec())
                .collect()
        };
        let op = |pos| CachedAttention {
            pos,
            window: usize::MAX,
            scale: 0.25,
        };
        let dims = |n| Dims {
            heads,
            group: heads / kvh,
            n,
            hd,
            cap,
        };
        let all = attend(&slice(0, n), &k, &v, &dims(n), &op(0));
        for i in 0..n {
            let one = attend(&slice(i, 1), &k, &v, &dims(1), &op(i));
            assert_eq!(
                &all[i * heads * hd..(i + 1) * heads * hd],
                &one[..],
                "row {i}"
            );
        }
    }
}
