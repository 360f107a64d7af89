//! Our CPU kernels, as candle custom ops on f32 activations: the dense
//! projection (`matmul`: f32 / bf16 / f16 weights re-laid out in panels),
//! the projection on ggml blocks (`quant`), and attention over the KV cache
//! (`attention`). Each keeps every row of a pass independent of the others,
//! so a window verified in one pass gets the bits of tokens fed one at a
//! time.
//!
//! Here: what the kernels share (the instruction set chosen at run time,
//! the panel height, how rows of `x` are tiled, the output pointer tasks
//! write through, reading an op's f32 input). Not here: rayon's thread
//! pool they run on (`super::pool`), what a ggml block means
//! (`super::quant`), and the layers built on these ops (`super::layers`).

pub(super) mod attention;
pub(super) mod matmul;
pub(super) mod quant;

use candle_core::{CpuStorage, Layout};

/// Output rows per panel, in both projection kernels: one AVX-512 vector
/// of f32 lanes (two AVX2 ones) in `matmul`; in `quant`, the 16 lanes of
/// `vpdpbusd` that each sum one row.
const PANEL: usize = 16;

/// Which kernel runs. The projection kernels pick theirs by different
/// features ([`Isa::detect_f32`], [`Isa::detect_int8`]); within a family
/// every kernel computes each output as the same chain of operations (see
/// each one's doc for the portable code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX-512: F for `matmul`, F + BW + VNNI for `quant`.
    Avx512,
    /// AVX2 + FMA + F16C.
    Avx2,
    Portable,
}

impl Isa {
    /// The best one this CPU has for `matmul` (f32 FMA). AVX-512 and AVX2
    /// give the same bits; the portable code rounds products and sums
    /// separately (no FMA) and may differ from them in the last place.
    fn detect_f32() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            // LLVM's avx512f implies AVX2, FMA and F16C: require them too.
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The best one this CPU has for `quant` (integer dot products); all
    /// give the same bits (see `quant`'s module docs).
    fn detect_int8() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Where tasks write their columns of `y`.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a disjoint set of columns of `y`, which outlives
// the tasks (they are joined before `matmul` returns).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Starts and sizes of the row tiles for `n` rows: as few tiles of at most
/// `max` rows as will do, as even as can be (8 rows in tiles of 6 go 4 + 4,
/// not 6 + 2).
fn row_tiles(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = n.div_ceil(max);
    (0..tiles).map(move |t| {
        let (start, end) = (t * n / tiles, (t + 1) * n / tiles);
        (start, end - start)
    })
}

/// The input of one of our CPU ops: a contiguous f32 `(n, k)` tensor, as
/// its `[n * k]` slice, `n` and `k`.
pub(crate) fn f32_rows<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let CpuStorage::F32(xs) = s else {
        candle_core::bail!("{op}: input must be f32");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only");
    };
    let (n, k) = l.shape().dims2()?;
    Ok((&xs[a..b], n, k))
}

#[cfg(test)]
mod tests {
    #[test]
    fn row_tiles_cover_every_row_once_and_evenly() {
        use super::row_tiles;
        for (n, max) in (0..50).flat_map(|n| [(n, 6), (n, 8)]) {
            let tiles: Vec<_> = row_tiles(n, max).collect();
            assert_eq!(tiles.iter().map(|t| t.1).sum::<usize>(), n);
            let mut next = 0;
            for &(start, len) in &tiles {
                assert_eq!(start, next);
                assert!((1..=max).contains(&len));
                next += len;
            }
            if let (Some(lo), Some(hi)) = (
                tiles.iter().map(|t| t.1).min(),
                tiles.iter().map(|t| t.1).max(),
            ) {
                assert!(hi - lo <= 1, "n={n}: {tiles:?}");
            }
        }
    }
}
