// specdec's fused CUDA kernels for the decode step (see cuda/mod.rs).
//
// Every kernel computes each row (token) of a window on its own, with a
// reduction order fixed by the shapes alone, never by how many rows are
// valid: a token's numbers are the same bits whether it is decoded alone or
// verified among seven draft tokens. `meta` is the step's device-side
// header, rewritten before each graph replay:
//   meta[0] = pos (first position of the window), meta[1] = n (valid rows),
//   meta[2 .. 2 + width] = token ids (rows >= n hold 0).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define FULL 0xffffffffu

// Programmatic dependent launch (sm_90 and up; build.rs also compiles this
// file for compute_90, and graph.rs launches with the attribute there).
// PDL_LAUNCH lets the next kernel in the stream start its blocks now;
// PDL_WAIT blocks until every earlier kernel has finished and its writes
// are visible. Each kernel reads nothing an earlier kernel of the step
// wrote, and writes nothing, before its PDL_WAIT: only weights (constant
// for the graph's life) may be loaded before it. On older GPUs (and in the
// compute_80 PTX) both are nothing, and launches are plain stream order.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_LAUNCH()
#define PDL_WAIT()
#endif

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
  return v;
}

// Sum over a block of blockDim.x (a multiple of 32, at most 1024) threads,
// in a fixed order; every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();
  return v;
}

// x[row] = table[meta ids[row]]; grid (width), any block size.
extern "C" __global__ void sd_embed(const int* meta, const bf16* table, bf16* x,
                                    int hidden, int vocab) {
  PDL_LAUNCH();
  PDL_WAIT();
  const int row = blockIdx.x;
  int id = meta[2 + row];
  if (id < 0 || id >= vocab) id = 0;
  const bf16* src = table + (size_t)id * hidden;
  bf16* dst = x + (size_t)row * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

// RMSNorm, computed in f32: out = x / rms(x) * w. hidden % 8 == 0 and
// hidden <= 8 * NORM_THREADS * NORM_CHUNKS (the host checks): a row is read
// once, 16 bytes a load, all loads in flight together. (Folding the norm
// into the products that read it, each block reading its x rows whole, was
// measured slower: a block's prologue adds its latency in every wave.)
#define NORM_THREADS 256
#define NORM_CHUNKS 8

// 1 / sqrt(mean(x^2) + eps) of the row x [hidden], summed in a fixed order
// (thread i: chunks i, i + NORM_THREADS, ...; then block_sum); v gets the
// thread's chunks. Call from all NORM_THREADS threads of a block.
__device__ __forceinline__ float rms_scale(const bf16* x, int hidden, float eps,
                                           uint4 (&v)[NORM_CHUNKS]) {
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  const int chunks = hidden / 8;
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i < chunks) v[c] = __ldcg(xr + i);
  }
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i < chunks) {
      const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&v[c]);
#pragma unroll
      for (int t = 0; t < 4; t++) {
        const float2 f = __bfloat1622float2(e[t]);
        acc = __fmaf_rn(f.x, f.x, acc);
        acc = __fmaf_rn(f.y, f.y, acc);
      }
    }
  }
  return rsqrtf(__fdiv_rn(block_sum(acc), (float)hidden) + eps);
}

// Eight features x of a row, normalized by its scale r and weighted by w.
__device__ __forceinline__ uint4 norm8(uint4 x, uint4 w, float r) {
  const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&x);
  const __nv_bfloat162* we = reinterpret_cast<const __nv_bfloat162*>(&w);
  uint4 res;
  __nv_bfloat162* re = reinterpret_cast<__nv_bfloat162*>(&res);
#pragma unroll
  for (int t = 0; t < 4; t++) {
    const float2 f = __bfloat1622float2(e[t]);
    const float2 g = __bfloat1622float2(we[t]);
    re[t] = __floats2bfloat162_rn(__fmul_rn(__fmul_rn(f.x, r), g.x),
                                  __fmul_rn(__fmul_rn(f.y, r), g.y));
  }
  return res;
}

// out[row] = RMSNorm(x[row]) * w; grid (width), block NORM_THREADS.
extern "C" __global__ void sd_rms_norm(const bf16* x, const bf16* w, bf16* out,
                                       int hidden, float eps) {
  const int row = blockIdx.x;
  const uint4* wr = reinterpret_cast<const uint4*>(w);
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)row * hidden);
  const int chunks = hidden / 8;
  uint4 v[NORM_CHUNKS], wv[NORM_CHUNKS];
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i < chunks) wv[c] = wr[i];
  }
  PDL_LAUNCH();
  PDL_WAIT();
  const float r = rms_scale(x + (size_t)row * hidden, hidden, eps, v);
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i < chunks) o[i] = norm8(v[c], wv[c], r);
  }
}

// y[n, out] = x[n, k] @ W[out, k]^T for the 8 * NG columns (tokens) n of x,
// on the tensor cores (mma m16n8k16, bf16 in, f32 accumulate). A decode
// step has a few tokens, so this is a matrix-vector product bound by
// reading W once.
//
// W is stored tile-major (sd_relayout writes it so at load): tile (16 rows
// R, 32-wide k slab s) is 1 KB at uint4 (R * slabs + s) * 64, holding lane
// L's 8 values of row 16R + L/4 at uint4 L and of row 16R + 8 + L/4 at
// uint4 32 + L, columns 32s + 8 (L % 4) ... + 7. So every load instruction
// of a warp reads 512 contiguous bytes (4.0 TB/s on an H200 where
// row-major 64-byte pieces gave 3.6). The k order inside a slab is
// permuted alike for W and x, which a dot product does not see.
//
// A block takes 16 rows; its GEMV_WARPS warps split the slabs (warp w takes
// w, w + WARPS, ...) with UNROLL (4 or 8) slabs of loads in flight, and the
// warps' sums are added in warp order. The tensor cores compute each column
// from its own x row alone, and nothing here depends on how many columns
// are valid: a token's result is the same bits at any width. x rows >=
// min(ncols, meta n) are not read (their columns come out 0). x is read
// through L2 (ld.global.cg), never the non-coherent read-only path: under
// PDL the kernel writing x may still run when this one starts.
// MODE 0: y (bf16) = result; 1: y (bf16) += result (the residual add);
// 2: y (f32) = result; 3: y = act [n, out / 2] = silu(gate) * up, W being
// the gate/up matrix with rows interleaved by sd_relayout's perm 1; 4: RoPE
// and the KV-cache write of W = the q/k/v matrix interleaved by perm 2 (see
// QkvOut). Only columns < ncols are written (< min(ncols, n) for 3 and 4). out % 16 == 0,
// k % 32 == 0, x has 8 * NG rows, x 16-byte aligned (the host checks).
// Grid (out / 16), block 32 * GEMV_WARPS. The tiling was picked with
// scripts/gemv_bench.cu.
#define GEMV_WARPS 8

__device__ __forceinline__ void mma_bf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// What the q/k/v epilogue (MODE 4) needs: the RoPE tables, the bias and
// where q, k and v go (as sd_rope_kv, which it replaces on tiled weights).
struct QkvOut {
  const bf16* bias;
  const float* cos_t;
  const float* sin_t;
  bf16* q_out;
  bf16* k_cache;
  bf16* v_cache;
  int heads, kv, d, n_positions;
};

template <int NG, int MODE, int UNROLL, int MT>
__device__ void gemv(const int* meta, const bf16* __restrict__ w, const bf16* __restrict__ x,
                     void* y, int out, int k, int ncols, QkvOut qo) {
  __shared__ float part[GEMV_WARPS][16 * MT][8 * NG];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int slabs = k / 32;
  // The block's MT row tiles are consecutive, so their slabs are one run.
  const uint4* wt = reinterpret_cast<const uint4*>(w) + (size_t)blockIdx.x * MT * slabs * 64 + lane;
  const size_t tile_step = (size_t)slabs * 64;
  constexpr int STEP = GEMV_WARPS * UNROLL;
  // The first round of weight loads goes out before PDL_WAIT, while the
  // kernel before this one is still finishing.
  uint4 lo[UNROLL][MT], hi[UNROLL][MT];
#pragma unroll
  for (int u = 0; u < UNROLL; u++) {
    const int s = warp + u * GEMV_WARPS;
    if (s < slabs) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        lo[u][mt] = __ldcs(wt + mt * tile_step + 64 * (size_t)s);
        hi[u][mt] = __ldcs(wt + mt * tile_step + 64 * (size_t)s + 32);
      }
    }
  }
  PDL_LAUNCH();
  PDL_WAIT();
  const int cols = min(ncols, meta[1]);
  const uint4* xr[NG];
  bool live[NG];
#pragma unroll
  for (int q = 0; q < NG; q++) {
    xr[q] = reinterpret_cast<const uint4*>(x + (size_t)(8 * q + g) * k) + t;
    live[q] = 8 * q + g < cols;
  }
  float c[MT][NG][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int q = 0; q < NG; q++)
#pragma unroll
      for (int e = 0; e < 4; e++) c[mt][q][e] = 0.f;
  for (int s0 = warp; s0 < slabs; s0 += STEP) {
    uint4 b[UNROLL][NG];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int s = s0 + u * GEMV_WARPS;
#pragma unroll
      for (int q = 0; q < NG; q++)
        b[u][q] = live[q] && s < slabs ? __ldcg(xr[q] + 4 * (size_t)s) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      if (s0 + u * GEMV_WARPS < slabs) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
          for (int q = 0; q < NG; q++) {
            mma_bf16(c[mt][q], lo[u][mt].x, hi[u][mt].x, lo[u][mt].y, hi[u][mt].y, b[u][q].x,
                     b[u][q].y);
            mma_bf16(c[mt][q], lo[u][mt].z, hi[u][mt].z, lo[u][mt].w, hi[u][mt].w, b[u][q].z,
                     b[u][q].w);
          }
        }
      }
    }
    // The next round's weights.
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      const int s = s0 + STEP + u * GEMV_WARPS;
      if (s < slabs) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          lo[u][mt] = __ldcs(wt + mt * tile_step + 64 * (size_t)s);
          hi[u][mt] = __ldcs(wt + mt * tile_step + 64 * (size_t)s + 32);
        }
      }
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int q = 0; q < NG; q++) {
      part[warp][16 * mt + g][8 * q + 2 * t] = c[mt][q][0];
      part[warp][16 * mt + g][8 * q + 2 * t + 1] = c[mt][q][1];
      part[warp][16 * mt + g + 8][8 * q + 2 * t] = c[mt][q][2];
      part[warp][16 * mt + g + 8][8 * q + 2 * t + 1] = c[mt][q][3];
    }
  }
  __syncthreads();
  if (MODE >= 3) {
    // Pair epilogues: rows r and r + 8 of each 16-row tile hold a gate and
    // its up row (MODE 3), or the two halves RoPE rotates together (MODE 4).
    for (int i = threadIdx.x; i < MT * 8 * 8 * NG; i += blockDim.x) {
      const int r = i % 8, col = (i / 8) % (8 * NG), mt = i / (8 * 8 * NG);
      if (col >= cols) continue;
      const int tile = blockIdx.x * MT + mt;
      float lo = 0.f, hi = 0.f;
#pragma unroll
      for (int ww = 0; ww < GEMV_WARPS; ww++) {
        lo += part[ww][16 * mt + r][col];
        hi += part[ww][16 * mt + r + 8][col];
      }
      // Rounded as the product's bf16 output would be.
      lo = __bfloat162float(__float2bfloat16(lo));
      hi = __bfloat162float(__float2bfloat16(hi));
      if (MODE == 3) {
        const int f = out / 2;
        reinterpret_cast<bf16*>(y)[(size_t)col * f + 8 * tile + r] =
            __float2bfloat16(lo / (1.f + __expf(-lo)) * hi);
      } else {
        const int tiles = qo.d / 16, half = qo.d / 2;
        const int slot = tile / tiles, j = 8 * (tile % tiles) + r;
        if (qo.bias) {
          lo = __bfloat162float(__float2bfloat16(lo + __bfloat162float(qo.bias[slot * qo.d + j])));
          hi = __bfloat162float(
              __float2bfloat16(hi + __bfloat162float(qo.bias[slot * qo.d + half + j])));
        }
        const int at = meta[0] + col;
        bf16* dst;
        if (slot < qo.heads + qo.kv) {
          const float c = qo.cos_t[(size_t)at * half + j], sn = qo.sin_t[(size_t)at * half + j];
          const float a1 = lo * c - hi * sn, a2 = hi * c + lo * sn;
          lo = a1;
          hi = a2;
          dst = slot < qo.heads
              ? qo.q_out + ((size_t)col * qo.heads + slot) * qo.d
              : qo.k_cache + ((size_t)(slot - qo.heads) * qo.n_positions + at) * qo.d;
        } else {
          dst = qo.v_cache + ((size_t)(slot - qo.heads - qo.kv) * qo.n_positions + at) * qo.d;
        }
        dst[j] = __float2bfloat16(lo);
        dst[j + half] = __float2bfloat16(hi);
      }
    }
    return;
  }
  for (int i = threadIdx.x; i < 16 * MT * 8 * NG; i += blockDim.x) {
    const int r = i % (16 * MT), col = i / (16 * MT);
    if (col >= ncols) continue;
    float v = 0.f;
#pragma unroll
    for (int ww = 0; ww < GEMV_WARPS; ww++) v += part[ww][r][col];
    const size_t at = (size_t)col * out + (size_t)blockIdx.x * 16 * MT + r;
    if (MODE == 2) {
      reinterpret_cast<float*>(y)[at] = v;
    } else if (MODE == 1) {
      bf16* yb = reinterpret_cast<bf16*>(y);
      yb[at] = __float2bfloat16(__bfloat162float(yb[at]) + v);
    } else {
      reinterpret_cast<bf16*>(y)[at] = __float2bfloat16(v);
    }
  }
}

// Every product kernel, sd_gemv_{NG}_{MODE}_{U}_{MT} with UNROLL = U and MT
// row tiles a block (out % (16 * MT) == 0), takes the same parameters; those
// after ncols are the q/k/v epilogue's (MODE 4; 0 otherwise). Two tiles a
// block read each x slab once for both, halving x's traffic from L2 where
// a window has many columns.
#define GEMV(NG, MODE, U, MT)                                                            \
  extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS, 2)                       \
      sd_gemv_##NG##_##MODE##_##U##_##MT(                                                \
          const int* meta, const bf16* w, const bf16* x, void* y, int out, int k,        \
          int ncols, const bf16* bias, const float* cos_t, const float* sin_t,           \
          bf16* q_out, bf16* k_cache, bf16* v_cache, int heads, int kv, int d,           \
          int n_positions) {                                                             \
    gemv<NG, MODE, U, MT>(meta, w, x, y, out, k, ncols,                                  \
                          QkvOut{bias, cos_t, sin_t, q_out, k_cache, v_cache, heads, kv, \
                                 d, n_positions});                                       \
  }
#define GEMV_MODES(NG, U, MT) \
  GEMV(NG, 0, U, MT)          \
  GEMV(NG, 1, U, MT)          \
  GEMV(NG, 2, U, MT)          \
  GEMV(NG, 3, U, MT)          \
  GEMV(NG, 4, U, MT)
GEMV_MODES(1, 4, 1)
GEMV_MODES(2, 4, 1)
GEMV_MODES(1, 8, 1)
GEMV_MODES(2, 8, 1)
GEMV_MODES(1, 4, 2)
GEMV_MODES(2, 4, 2)

// dst = W [out, k] row-major re-laid out tile-major for sd_gemv (see
// there); tile row r of tile R is source row src_row(R, r): perm 0: 16 R +
// r; perm 1 (gate/up, out = 2 f): gate row 8 R + r for r < 8, up row f +
// 8 R + r - 8 after it; perm 2 (q/k/v, heads of `d` rows): in head R / (d /
// 16), block jb = R % (d / 16), the rows 8 jb + r and d / 2 + 8 jb + r - 8
// that RoPE rotates together. out % 16 == 0, k % 32 == 0, d % 16 == 0;
// grid-stride over the 16-byte pieces.
extern "C" __global__ void sd_relayout(const bf16* w, bf16* dst, int out, int k, int perm,
                                       int d) {
  const int slabs = k / 32;
  const size_t pieces = (size_t)(out / 16) * slabs * 64;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < pieces;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t tile = i / 64;
    const int piece = i % 64, lane = piece % 32, half = piece / 32;
    const int tile_row = tile / slabs, s = tile % slabs;
    const int r = (lane >> 2) + 8 * half;
    int row;
    if (perm == 1) {
      row = r < 8 ? 8 * tile_row + r : out / 2 + 8 * tile_row + r - 8;
    } else if (perm == 2) {
      const int tiles = d / 16, head = tile_row / tiles, jb = tile_row % tiles;
      row = head * d + (r < 8 ? 8 * jb + r : d / 2 + 8 * jb + r - 8);
    } else {
      row = 16 * tile_row + r;
    }
    const int col = 32 * s + 8 * (lane & 3);
    reinterpret_cast<uint4*>(dst)[i] =
        *reinterpret_cast<const uint4*>(w + (size_t)row * k + col);
  }
}

// Splits the fused projection qkv [width, (heads + 2 kv) * D] (plus `bias`,
// same length, or null), rotates q and k by RoPE (halves rotated, as Hugging
// Face's Llama does; cos/sin [n_positions, D/2] in f32) and writes q to
// q_out [width, heads, D], k and v into the caches [kv, n_positions, D] at
// pos + row. Rows >= n write nothing. Grid (width, heads + 2 kv), block >= D/2.
extern "C" __global__ void sd_rope_kv(const int* meta, const bf16* qkv, const bf16* bias,
                                      const float* cos_t, const float* sin_t,
                                      bf16* q_out, bf16* k_cache, bf16* v_cache,
                                      int heads, int kv, int d, int n_positions) {
  PDL_LAUNCH();
  PDL_WAIT();
  const int row = blockIdx.x, slot = blockIdx.y;
  const int pos = meta[0], n = meta[1];
  if (row >= n) return;
  const int at = pos + row;
  const int width_qkv = (heads + 2 * kv) * d;
  const bf16* src = qkv + (size_t)row * width_qkv + (size_t)slot * d;
  const bf16* b = bias ? bias + (size_t)slot * d : nullptr;
  const int half = d / 2;
  if (slot < heads + kv) {
    bf16* dst = slot < heads
        ? q_out + ((size_t)row * heads + slot) * d
        : k_cache + ((size_t)(slot - heads) * n_positions + at) * d;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
      float x1 = __bfloat162float(src[j]);
      float x2 = __bfloat162float(src[j + half]);
      if (b) {
        x1 = __bfloat162float(__float2bfloat16(x1 + __bfloat162float(b[j])));
        x2 = __bfloat162float(__float2bfloat16(x2 + __bfloat162float(b[j + half])));
      }
      const float c = cos_t[(size_t)at * half + j], s = sin_t[(size_t)at * half + j];
      dst[j] = __float2bfloat16(x1 * c - x2 * s);
      dst[j + half] = __float2bfloat16(x2 * c + x1 * s);
    }
  } else {
    bf16* dst = v_cache + ((size_t)(slot - heads - kv) * n_positions + at) * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      float v = __bfloat162float(src[j]);
      if (b) v += __bfloat162float(b[j]);
      dst[j] = __float2bfloat16(v);
    }
  }
}

// Causal attention of one query (row, head) over the cache, flash-decoding
// style in one block of ATT_WARPS warps: warp w scores keys in chunks of 32
// (a key per lane), chunk c covering keys start + 32 (w + ATT_WARPS i);
// each warp keeps an online softmax, and the warps are merged in order.
// Which keys a warp sees depends on the query's position only.
// q [width, heads, D]; caches [kv, n_positions, D]; out [width, heads * D].
// window > 0: a key more than window - 1 positions back is not seen.
// D is 16, 32, 64, 128 or 256. Grid (heads, width), block 32 * ATT_WARPS.
//
// The header (meta) is written by the host before the graph runs, and the
// cache rows before position meta[0] by earlier steps; only q and the rows
// from meta[0] on come from the q/k/v product this kernel follows. So each
// warp loads its first chunk's K rows (D <= 128) and V words (D <= 64) of
// earlier positions before PDL_WAIT, while that product is still streaming its
// weights: a decode step's cache reads (HBM round trips, the cache having
// left L2 since the last step) are then off the critical path, and after
// the wait one L2 round trip fetches q and the new rows. The arithmetic,
// and so every bit of the result, is as if all were loaded after it.
#define ATT_WARPS 8

template <int D>
struct Att {
  static constexpr int DPL = D >= 32 ? D / 32 : 1;      // output dims per lane
  static constexpr int WORDS = DPL >= 2 ? DPL / 2 : 1;  // 32-bit words of V a lane takes a key
  static constexpr int VB = WORDS <= 2 ? 32 : 16;       // V rows in flight per batch
  static constexpr int KW = D / 8;                      // 16-byte loads per K row
  // The first chunk's K rows (D <= 128) and V words (D <= 64) are loaded
  // before PDL_WAIT: at most 64 registers more, so that a block still fits
  // (<= 128 registers a thread) beside a product block on its SM.
  static constexpr bool PRE_K = D <= 128;
  static constexpr bool PRE_V = D <= 64;
};

template <int D>
__device__ __forceinline__ const uint4* k_row(const bf16* kb, int j) {
  return reinterpret_cast<const uint4*>(kb + (size_t)j * D);
}

// This lane's V words of key j (its DPL output dims).
template <int D>
__device__ __forceinline__ void load_v(const bf16* vb, int j, int lane,
                                       uint32_t (&w)[Att<D>::WORDS]) {
  const bf16* vr = vb + (size_t)j * D + lane * Att<D>::DPL;
  if constexpr (Att<D>::DPL == 1) {
    w[0] = *reinterpret_cast<const uint16_t*>(vr);
  } else if constexpr (Att<D>::WORDS == 1) {
    w[0] = *reinterpret_cast<const uint32_t*>(vr);
  } else if constexpr (Att<D>::WORDS == 2) {
    const uint2 u = *reinterpret_cast<const uint2*>(vr);
    w[0] = u.x;
    w[1] = u.y;
  } else {
    const uint4 u = *reinterpret_cast<const uint4*>(vr);
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
  }
}

// One warp's chunk of keys c ... c + 31 (<= last): lane L scores key c + L
// from its K row's 16-byte pieces k(0 ... KW - 1), the online softmax (m,
// l) and acc take the chunk, and v(jj, words) gives the lane's V words of
// key c + jj, in batches of VB keys whose words are all in hand before any
// is added (one round trip a batch when v loads), added in key order.
template <int D, typename K, typename V>
__device__ __forceinline__ void attend_chunk(const float* qs, int c, int last, int lane,
                                             bool owns, K&& k, V&& v, float& m, float& l,
                                             float (&acc)[Att<D>::DPL]) {
  using A = Att<D>;
  const int j = c + lane;
  float s = -INFINITY;
  if (j <= last) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < A::KW; i++) {
      const uint4 raw = k(i);
      const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
      for (int t = 0; t < 4; t++) {
        const float2 f = __bfloat1622float2(e[t]);
        dot += qs[8 * i + 2 * t] * f.x;
        dot += qs[8 * i + 2 * t + 1] * f.y;
      }
    }
    s = dot;
  }
  const float new_m = fmaxf(m, warp_max(s));  // lane 0's key exists: finite
  const float corr = __expf(m - new_m);
  const float p = j <= last ? __expf(s - new_m) : 0.f;
  l = l * corr + warp_sum(p);
#pragma unroll
  for (int t = 0; t < A::DPL; t++) acc[t] *= corr;
  const int count = min(32, last - c + 1);
#pragma unroll
  for (int j0 = 0; j0 < 32; j0 += A::VB) {
    uint32_t raw[A::VB][A::WORDS];
#pragma unroll
    for (int jj = 0; jj < A::VB; jj++) {
      if (j0 + jj < count && owns) v(j0 + jj, raw[jj]);
    }
#pragma unroll
    for (int jj = 0; jj < A::VB; jj++) {
      const float pj = __shfl_sync(FULL, p, j0 + jj);
      if (j0 + jj < count && owns) {
        if constexpr (A::DPL == 1) {
          acc[0] += pj * __bfloat162float(__ushort_as_bfloat16((unsigned short)raw[jj][0]));
        } else {
#pragma unroll
          for (int t = 0; t < A::WORDS; t++) {
            const float2 f =
                __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw[jj][t]));
            acc[2 * t] += pj * f.x;
            acc[2 * t + 1] += pj * f.y;
          }
        }
      }
    }
  }
  m = new_m;
}

template <int D, bool PREFETCH>
__device__ void attend(const int* meta, const bf16* q, const bf16* k_cache,
                       const bf16* v_cache, bf16* out, int heads, int kv,
                       int n_positions, int window, float scale) {
  using A = Att<D>;
  constexpr bool PRE_K = A::PRE_K && PREFETCH, PRE_V = A::PRE_V && PREFETCH;
  PDL_LAUNCH();
  // For D < 32, lanes D.. hold no output dims.
  const bool owns = D >= 32 || (int)(threadIdx.x & 31) < D;
  __shared__ float qs[D];
  __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
  __shared__ float wacc[ATT_WARPS][D];
  const int head = blockIdx.x, row = blockIdx.y;
  const int pos = meta[0], n = meta[1];
  if (row >= n) return;
  const int kvh = head / (heads / kv);
  const int last = pos + row;
  const int start = (window > 0 && last + 1 > window) ? last + 1 - window : 0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bf16* kb = k_cache + (size_t)kvh * n_positions * D;
  const bf16* vb = v_cache + (size_t)kvh * n_positions * D;
  // This warp's first chunk, keys c0 ... c0 + count0 - 1; those before pos
  // are loaded now, the rest after the wait.
  const int c0 = start + warp * 32;
  const int count0 = c0 <= last ? min(32, last - c0 + 1) : 0;
  uint4 k0[PRE_K ? A::KW : 1];
  uint32_t v0[PRE_V ? 32 : 1][A::WORDS];
  if constexpr (PRE_K) {
    if (lane < count0 && c0 + lane < pos) {
#pragma unroll
      for (int i = 0; i < A::KW; i++) k0[i] = k_row<D>(kb, c0 + lane)[i];
    }
  }
  if constexpr (PRE_V) {
#pragma unroll
    for (int jj = 0; jj < 32; jj++) {
      if (jj < count0 && c0 + jj < pos && owns) load_v<D>(vb, c0 + jj, lane, v0[jj]);
    }
  }
  PDL_WAIT();
  const bf16* qr = q + ((size_t)row * heads + head) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = __bfloat162float(qr[i]) * scale;
  float m = -INFINITY, l = 0.f;
  float acc[A::DPL];
#pragma unroll
  for (int t = 0; t < A::DPL; t++) acc[t] = 0.f;
  if constexpr (PRE_K) {
    if (lane < count0 && c0 + lane >= pos) {
#pragma unroll
      for (int i = 0; i < A::KW; i++) k0[i] = k_row<D>(kb, c0 + lane)[i];
    }
  }
  if constexpr (PRE_V) {
#pragma unroll
    for (int jj = 0; jj < 32; jj++) {
      if (jj < count0 && c0 + jj >= pos && owns) load_v<D>(vb, c0 + jj, lane, v0[jj]);
    }
  }
  __syncthreads();
  int c = c0;
  if constexpr (PRE_K) {
    if (count0 > 0) {
      auto from_v0 = [&](int jj, uint32_t(&w)[A::WORDS]) {
#pragma unroll
        for (int t = 0; t < A::WORDS; t++) w[t] = v0[jj][t];
      };
      auto load = [&](int jj, uint32_t(&w)[A::WORDS]) { load_v<D>(vb, c0 + jj, lane, w); };
      auto k = [&](int i) { return k0[i]; };
      if constexpr (PRE_V) {
        attend_chunk<D>(qs, c0, last, lane, owns, k, from_v0, m, l, acc);
      } else {
        attend_chunk<D>(qs, c0, last, lane, owns, k, load, m, l, acc);
      }
    }
    c += ATT_WARPS * 32;
  }
  for (; c <= last; c += ATT_WARPS * 32) {
    const uint4* kr = k_row<D>(kb, c + lane);
    attend_chunk<D>(
        qs, c, last, lane, owns, [&](int i) { return kr[i]; },
        [&](int jj, uint32_t(&w)[A::WORDS]) { load_v<D>(vb, c + jj, lane, w); }, m, l, acc);
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
  if (owns) {
#pragma unroll
    for (int t = 0; t < A::DPL; t++) wacc[warp][lane * A::DPL + t] = acc[t];
  }
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, wm[w]);
  bf16* o = out + ((size_t)row * heads + head) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float total = 0.f, sum = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) {
      if (wl[w] > 0.f) {
        const float e = __expf(wm[w] - big);
        total += wl[w] * e;
        sum += wacc[w][i] * e;
      }
    }
    o[i] = __float2bfloat16(sum / total);
  }
}

// sd_attention_{D} loads the first chunk's earlier cache rows before its
// PDL_WAIT; sd_attention_{D}_late all after it, as before that (for
// measuring, graph.rs's SPECDEC_CUDA_ATT_PREFETCH=0).
#define ATTEND(D, NAME, PREFETCH)                                                     \
  extern "C" __global__ void NAME(const int* meta, const bf16* q, const bf16* k_cache, \
                                  const bf16* v_cache, bf16* out, int heads, int kv,   \
                                  int n_positions, int window, float scale) {          \
    attend<D, PREFETCH>(meta, q, k_cache, v_cache, out, heads, kv, n_positions, window, \
                        scale);                                                        \
  }
#define ATTENDS(D)                        \
  ATTEND(D, sd_attention_##D, true)       \
  ATTEND(D, sd_attention_##D##_late, false)
ATTENDS(16)
ATTENDS(32)
ATTENDS(64)
ATTENDS(128)
ATTENDS(256)

// Attention of up to ATT_ROWS(D) consecutive queries (rows) of one head in one
// block, for models without a sliding window and D <= 128: the block reads
// each cache row once for all its rows, where sd_attention_{D} has a block
// per (head, row) that each read the head's whole cache (a verify window
// of 16 read it 16 times). For each of its rows it does exactly what
// sd_attention_{D} does (the same chunks per warp, the same online softmax
// and order of adds, the same merge), so a row's output is the same bits
// in either kernel and with any rows beside it. As there, cache rows of
// earlier steps in a warp's first chunk are loaded before PDL_WAIT (K for
// D <= 128, V for D <= 64). Grid (heads, ceil(width / ATT_ROWS(D))), block
// 32 * ATT_WARPS; `window` is not read (the host uses this kernel only
// without one). Rows a block: 4, or 2 at D = 128, where 4 rows' state
// beside a K row and a batch of V would not fit in 128 registers (2
// blocks an SM).
#define ATT_ROWS(D) ((D) >= 128 ? 2 : 4)

// One warp's chunk of keys c ... c + 31 for the block's rows (row r's last
// key is first_last + r; only rows that see the chunk take it): as
// attend_chunk for each row, with key c + L's K row from k(0 ... KW - 1)
// on lane L and the lane's V words of key c + jj from v(jj, words), each
// loaded once for all rows.
template <int D, int RB, typename K, typename V>
__device__ __forceinline__ void attend_rows_chunk(const float (*qs)[D], int c, int first_last,
                                                  int rows, int lane, bool owns, K&& k, V&& v,
                                                  float (&m)[RB], float (&l)[RB],
                                                  float (&acc)[RB][Att<D>::DPL]) {
  using A = Att<D>;
  const int j = c + lane;
  float s[RB];
  {
    uint4 kr[A::KW];
    if (j <= first_last + rows - 1) {
#pragma unroll
      for (int i = 0; i < A::KW; i++) kr[i] = k(i);
    }
#pragma unroll
    for (int r = 0; r < RB; r++) {
      s[r] = -INFINITY;
      if (r < rows && j <= first_last + r) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < A::KW; i++) {
          const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&kr[i]);
#pragma unroll
          for (int t = 0; t < 4; t++) {
            const float2 f = __bfloat1622float2(e[t]);
            dot += qs[r][8 * i + 2 * t] * f.x;
            dot += qs[r][8 * i + 2 * t + 1] * f.y;
          }
        }
        s[r] = dot;
      }
    }
  }
  float p[RB];
#pragma unroll
  for (int r = 0; r < RB; r++) {
    p[r] = 0.f;
    // Uniform across the warp: whether row r sees this chunk at all.
    if (r < rows && c <= first_last + r) {
      const float new_m = fmaxf(m[r], warp_max(s[r]));  // lane 0's key exists: finite
      const float corr = __expf(m[r] - new_m);
      p[r] = j <= first_last + r ? __expf(s[r] - new_m) : 0.f;
      l[r] = l[r] * corr + warp_sum(p[r]);
#pragma unroll
      for (int t = 0; t < A::DPL; t++) acc[r][t] *= corr;
      m[r] = new_m;  // only the adds below remain, which do not read m
    }
  }
  const int count = min(32, first_last + rows - c);
  // V rows in flight: half of attend_chunk's at D = 128, for registers.
  constexpr int VB = A::WORDS == 2 ? A::VB / 2 : A::VB;
#pragma unroll
  for (int j0 = 0; j0 < 32; j0 += VB) {
    uint32_t raw[VB][A::WORDS];
#pragma unroll
    for (int jj = 0; jj < VB; jj++) {
      if (j0 + jj < count && owns) v(j0 + jj, raw[jj]);
    }
#pragma unroll
    for (int jj = 0; jj < VB; jj++) {
#pragma unroll
      for (int r = 0; r < RB; r++) {
        const float pj = __shfl_sync(FULL, p[r], j0 + jj);
        // Row r adds key c + j0 + jj when it is one of its keys.
        if (r < rows && c + j0 + jj <= first_last + r && owns) {
          if constexpr (A::DPL == 1) {
            acc[r][0] += pj * __bfloat162float(__ushort_as_bfloat16((unsigned short)raw[jj][0]));
          } else {
#pragma unroll
            for (int t = 0; t < A::WORDS; t++) {
              const float2 f =
                  __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw[jj][t]));
              acc[r][2 * t] += pj * f.x;
              acc[r][2 * t + 1] += pj * f.y;
            }
          }
        }
      }
    }
  }
}

template <int D, int RB>
__device__ void attend_rows(const int* meta, const bf16* q, const bf16* k_cache,
                            const bf16* v_cache, bf16* out, int heads, int kv,
                            int n_positions, float scale) {
  using A = Att<D>;
  PDL_LAUNCH();
  const bool owns = D >= 32 || (int)(threadIdx.x & 31) < D;
  __shared__ float qs[RB][D];
  __shared__ float wm[ATT_WARPS][RB], wl[ATT_WARPS][RB];
  __shared__ float wacc[ATT_WARPS][RB][D];
  const int head = blockIdx.x, row0 = blockIdx.y * RB;
  const int pos = meta[0], n = meta[1];
  if (row0 >= n) return;
  const int rows = min(RB, n - row0);
  const int kvh = head / (heads / kv);
  // Row r sees keys 0 ... first_last + r; the block reads up to the last.
  const int first_last = pos + row0, last_max = first_last + rows - 1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bf16* kb = k_cache + (size_t)kvh * n_positions * D;
  const bf16* vb = v_cache + (size_t)kvh * n_positions * D;
  const int c0 = warp * 32;
  const int count0 = c0 <= last_max ? min(32, last_max - c0 + 1) : 0;
  uint4 k0[A::KW];
  uint32_t v0[A::PRE_V ? 32 : 1][A::WORDS];
  if (lane < count0 && c0 + lane < pos) {
#pragma unroll
    for (int i = 0; i < A::KW; i++) k0[i] = k_row<D>(kb, c0 + lane)[i];
  }
  if constexpr (A::PRE_V) {
#pragma unroll
    for (int jj = 0; jj < 32; jj++) {
      if (jj < count0 && c0 + jj < pos && owns) load_v<D>(vb, c0 + jj, lane, v0[jj]);
    }
  }
  PDL_WAIT();
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    qs[r][d] = __bfloat162float(q[((size_t)(row0 + r) * heads + head) * D + d]) * scale;
  }
  if (lane < count0 && c0 + lane >= pos) {
#pragma unroll
    for (int i = 0; i < A::KW; i++) k0[i] = k_row<D>(kb, c0 + lane)[i];
  }
  if constexpr (A::PRE_V) {
#pragma unroll
    for (int jj = 0; jj < 32; jj++) {
      if (jj < count0 && c0 + jj >= pos && owns) load_v<D>(vb, c0 + jj, lane, v0[jj]);
    }
  }
  __syncthreads();
  float m[RB], l[RB], acc[RB][A::DPL];
#pragma unroll
  for (int r = 0; r < RB; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int t = 0; t < A::DPL; t++) acc[r][t] = 0.f;
  }
  if (count0 > 0) {
    auto k = [&](int i) { return k0[i]; };
    auto from_v0 = [&](int jj, uint32_t(&w)[A::WORDS]) {
#pragma unroll
      for (int t = 0; t < A::WORDS; t++) w[t] = v0[A::PRE_V ? jj : 0][t];
    };
    auto load = [&](int jj, uint32_t(&w)[A::WORDS]) { load_v<D>(vb, c0 + jj, lane, w); };
    if constexpr (A::PRE_V) {
      attend_rows_chunk<D, RB>(qs, c0, first_last, rows, lane, owns, k, from_v0, m, l, acc);
    } else {
      attend_rows_chunk<D, RB>(qs, c0, first_last, rows, lane, owns, k, load, m, l, acc);
    }
  }
  for (int c = c0 + ATT_WARPS * 32; c <= last_max; c += ATT_WARPS * 32) {
    const uint4* kr = k_row<D>(kb, c + lane);
    attend_rows_chunk<D, RB>(
        qs, c, first_last, rows, lane, owns, [&](int i) { return kr[i]; },
        [&](int jj, uint32_t(&w)[A::WORDS]) { load_v<D>(vb, c + jj, lane, w); }, m, l, acc);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < RB; r++) {
      wm[warp][r] = m[r];
      wl[warp][r] = l[r];
    }
  }
  if (owns) {
#pragma unroll
    for (int r = 0; r < RB; r++)
#pragma unroll
      for (int t = 0; t < A::DPL; t++) wacc[warp][r][lane * A::DPL + t] = acc[r][t];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, i = e % D;
    float big = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, wm[w][r]);
    float total = 0.f, sum = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) {
      if (wl[w][r] > 0.f) {
        const float ex = __expf(wm[w][r] - big);
        total += wl[w][r] * ex;
        sum += wacc[w][r][i] * ex;
      }
    }
    out[((size_t)(row0 + r) * heads + head) * D + i] = __float2bfloat16(sum / total);
  }
}

#define ATTEND_ROWS(D)                                                                   \
  extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS, 2) sd_attention_rows_##D( \
      const int* meta, const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out, \
      int heads, int kv, int n_positions, int window, float scale) {                     \
    attend_rows<D, ATT_ROWS(D)>(meta, q, k_cache, v_cache, out, heads, kv, n_positions, \
                                scale);                                                  \
  }
ATTEND_ROWS(16)
ATTEND_ROWS(32)
ATTEND_ROWS(64)
ATTEND_ROWS(128)

// act[row, j] = silu(gu[row, j]) * gu[row, f + j] in f32; grid-stride over width * f.
extern "C" __global__ void sd_swiglu(const bf16* gu, bf16* act, int rows, int f) {
  PDL_LAUNCH();
  PDL_WAIT();
  const size_t total = (size_t)rows * f;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t row = i / f, j = i % f;
    const float g = __bfloat162float(gu[row * 2 * f + j]);
    const float u = __bfloat162float(gu[row * 2 * f + f + j]);
    act[i] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
  }
}

// (best, id, sum) of the row so far joined with (ov, oi, os): the larger
// value (the lower id among ties), and the sum of e^(v - best) over both
// parts, each rescaled to the new best.
__device__ __forceinline__ void join_best(float& bv, int& bi, float& bs, float ov, int oi,
                                          float os) {
  const float m = fmaxf(bv, ov);
  const float s = (bv == -INFINITY ? 0.f : bs * __expf(bv - m)) +
                  (ov == -INFINITY ? 0.f : os * __expf(ov - m));
  if (ov > bv || (ov == bv && oi < bi)) {
    bv = ov;
    bi = oi;
  }
  bs = s;
}

// Per row of logits [width, vocab] (f32): the first id holding the largest
// value, whether the row holds a NaN or +inf (then the host looks at the
// row itself), and the sum over the row of e^(v - largest) in one online
// pass (so the winner's softmax probability is 1 / sum; a drafter's
// confidence). out[3 * row] = id, out[3 * row + 1] = 1 if bad,
// out[3 * row + 2] = the sum's f32 bits. Grid (width), block 1024.
extern "C" __global__ void sd_argmax(const float* logits, int* out, int vocab) {
  PDL_LAUNCH();
  PDL_WAIT();
  __shared__ float best_v[32], best_s[32];
  __shared__ int best_i[32];
  __shared__ int any_bad;
  const int row = blockIdx.x;
  const float* r = logits + (size_t)row * vocab;
  if (threadIdx.x == 0) any_bad = 0;
  __syncthreads();
  float bv = -INFINITY, bs = 0.f;
  int bi = 0x7fffffff;
  int bad = 0;
  // A thread's ids in increasing order, 8 loads in flight at a time.
  constexpr int BATCH = 8;
  for (int base = threadIdx.x; base < vocab; base += BATCH * blockDim.x) {
    float vs[BATCH];
#pragma unroll
    for (int u = 0; u < BATCH; u++) {
      const int i = base + u * blockDim.x;
      vs[u] = i < vocab ? r[i] : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < BATCH; u++) {
      const float v = vs[u];
      if (isnan(v) || v == INFINITY) bad = 1;
      if (v > bv) {
        bs = bs * __expf(bv - v) + 1.f;  // bs is 0 while bv is -inf
        bv = v;
        bi = base + u * blockDim.x;
      } else if (v > -INFINITY) {
        bs += __expf(v - bv);
      }
    }
  }
  if (bad) atomicOr(&any_bad, 1);
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL, bv, o);
    const int oi = __shfl_xor_sync(FULL, bi, o);
    const float os = __shfl_xor_sync(FULL, bs, o);
    join_best(bv, bi, bs, ov, oi, os);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    best_v[warp] = bv;
    best_i[warp] = bi;
    best_s[warp] = bs;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    bv = lane < warps ? best_v[lane] : -INFINITY;
    bi = lane < warps ? best_i[lane] : 0x7fffffff;
    bs = lane < warps ? best_s[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(FULL, bv, o);
      const int oi = __shfl_xor_sync(FULL, bi, o);
      const float os = __shfl_xor_sync(FULL, bs, o);
      join_best(bv, bi, bs, ov, oi, os);
    }
    if (lane == 0) {
      // An all -inf row: id 0x7fffffff marks "no finite best"; the host decides.
      out[3 * row] = bi;
      out[3 * row + 1] = any_bad;
      out[3 * row + 2] = __float_as_int(bs);
    }
  }
}
