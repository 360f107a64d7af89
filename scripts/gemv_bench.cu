// Times tilings of the decode step's matrix-vector kernel on the products
// of a 7B-shape and a 1.1B-shape model (sd_gemv in
// src/backend/candle/cuda/kernels.cu grew from `tiled w8 u4 b2`; it now
// also keeps 8 slabs in flight for grids of one wave and takes two row
// tiles a block for long grids, measured end to end with
// scripts/ab-gpu.sh), against the copy bandwidth, and checks each against a
// plain f32 reference. Weights rotate among copies worth > 4x the L2, so
// nothing is served from cache.
//
// Build here (nvcc from ../shared/cuda/setup-toolchain.sh), run on the GPU:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o .cuda-out/gemv_bench scripts/gemv_bench.cu
//   .cuda-out/gemv_bench
#include "../src/backend/candle/cuda/kernels.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                               \
  do {                                                                         \
    cudaError_t e = (x);                                                       \
    if (e != cudaSuccess) {                                                    \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,               \
              cudaGetErrorString(e));                                          \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

// The row-major kernel before tiles: a block takes 16 * MT rows, each
// thread loads 16 bytes of two rows and of one x row per slab.
template <int MT, int WARPS, int U, int NG, int MODE>
__device__ void rowmajor(const bf16* __restrict__ w, const bf16* __restrict__ x, void* y,
                         int out, int k, int ncols) {
  __shared__ float part[WARPS][16 * MT][8 * NG];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16 * MT;
  const int slabs = k / 32;
  const uint4* wr[2 * MT];
  for (int i = 0; i < 2 * MT; i++)
    wr[i] = reinterpret_cast<const uint4*>(w + (size_t)(row0 + g + 8 * i) * k) + t;
  const uint4* xr[NG];
  for (int q = 0; q < NG; q++)
    xr[q] = reinterpret_cast<const uint4*>(x + (size_t)(8 * q + g) * k) + t;
  float c[MT][NG][4] = {};
  for (int s0 = warp; s0 < slabs; s0 += WARPS * U) {
    uint4 a[U][2 * MT];
    uint4 b[U][NG];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int s = s0 + u * WARPS;
      if (s < slabs) {
#pragma unroll
        for (int i = 0; i < 2 * MT; i++) a[u][i] = __ldcs(wr[i] + 4 * (size_t)s);
#pragma unroll
        for (int q = 0; q < NG; q++) b[u][q] = __ldg(xr[q] + 4 * (size_t)s);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (s0 + u * WARPS < slabs) {
#pragma unroll
        for (int m = 0; m < MT; m++) {
          const uint4 lo = a[u][2 * m], hi = a[u][2 * m + 1];
#pragma unroll
          for (int q = 0; q < NG; q++) {
            mma_bf16(c[m][q], lo.x, hi.x, lo.y, hi.y, b[u][q].x, b[u][q].y);
            mma_bf16(c[m][q], lo.z, hi.z, lo.w, hi.w, b[u][q].z, b[u][q].w);
          }
        }
      }
    }
  }
  for (int m = 0; m < MT; m++)
    for (int q = 0; q < NG; q++) {
      part[warp][16 * m + g][8 * q + 2 * t] = c[m][q][0];
      part[warp][16 * m + g][8 * q + 2 * t + 1] = c[m][q][1];
      part[warp][16 * m + g + 8][8 * q + 2 * t] = c[m][q][2];
      part[warp][16 * m + g + 8][8 * q + 2 * t + 1] = c[m][q][3];
    }
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * MT * 8 * NG; i += blockDim.x) {
    const int r = i % (16 * MT), col = i / (16 * MT);
    if (col >= ncols) continue;
    float v = 0.f;
    for (int ww = 0; ww < WARPS; ww++) v += part[ww][r][col];
    reinterpret_cast<bf16*>(y)[(size_t)col * out + row0 + r] = __float2bfloat16(v);
  }
}

template <int MT, int WARPS, int U, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB)
    plain(const bf16* w, const bf16* x, void* y, int out, int k, int ncols) {
  rowmajor<MT, WARPS, U, 1, 0>(w, x, y, out, k, ncols);
}

// Software-pipelined: the next U slabs' loads are issued before the current
// ones are multiplied.
template <int MT, int WARPS, int U, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB)
    piped(const bf16* __restrict__ w, const bf16* __restrict__ x, void* y, int out, int k,
          int ncols) {
  __shared__ float part[WARPS][16 * MT][8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16 * MT;
  const int slabs = k / 32;
  const uint4* wr[2 * MT];
  for (int i = 0; i < 2 * MT; i++)
    wr[i] = reinterpret_cast<const uint4*>(w + (size_t)(row0 + g + 8 * i) * k) + t;
  const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)g * k) + t;
  float c[MT][4] = {};
  uint4 a0[U][2 * MT], b0[U], a1[U][2 * MT], b1[U];
  auto load = [&](uint4(&a)[U][2 * MT], uint4(&b)[U], int s0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int s = s0 + u * WARPS;
      if (s < slabs) {
#pragma unroll
        for (int i = 0; i < 2 * MT; i++) a[u][i] = __ldcs(wr[i] + 4 * (size_t)s);
        b[u] = __ldg(xr + 4 * (size_t)s);
      }
    }
  };
  auto comp = [&](uint4(&a)[U][2 * MT], uint4(&b)[U], int s0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (s0 + u * WARPS < slabs) {
#pragma unroll
        for (int m = 0; m < MT; m++) {
          const uint4 lo = a[u][2 * m], hi = a[u][2 * m + 1];
          mma_bf16(c[m], lo.x, hi.x, lo.y, hi.y, b[u].x, b[u].y);
          mma_bf16(c[m], lo.z, hi.z, lo.w, hi.w, b[u].z, b[u].w);
        }
      }
    }
  };
  int s0 = warp;
  load(a0, b0, s0);
  for (; s0 < slabs; s0 += 2 * WARPS * U) {
    load(a1, b1, s0 + WARPS * U);
    comp(a0, b0, s0);
    load(a0, b0, s0 + 2 * WARPS * U);
    comp(a1, b1, s0 + WARPS * U);
  }
  for (int m = 0; m < MT; m++) {
    part[warp][16 * m + g][2 * t] = c[m][0];
    part[warp][16 * m + g][2 * t + 1] = c[m][1];
    part[warp][16 * m + g + 8][2 * t] = c[m][2];
    part[warp][16 * m + g + 8][2 * t + 1] = c[m][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * MT * 8; i += blockDim.x) {
    const int r = i % (16 * MT), col = i / (16 * MT);
    if (col >= ncols) continue;
    float v = 0.f;
    for (int ww = 0; ww < WARPS; ww++) v += part[ww][r][col];
    reinterpret_cast<bf16*>(y)[(size_t)col * out + row0 + r] = __float2bfloat16(v);
  }
}

// W re-laid out tile-major (see relayout): tile (16 rows R, slab s) is 1 KB
// at ((R * slabs + s) * 64) uint4, lane L's row-g piece at L, row-(g + 8)
// piece at 32 + L, so one load instruction of a warp reads 512 contiguous
// bytes. MT = 1. x loads are skipped for columns >= ncols.
template <int WARPS, int U, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB)
    tiled(const bf16* __restrict__ w, const bf16* __restrict__ x, void* y, int out, int k,
          int ncols) {
  __shared__ float part[WARPS][16][8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int slabs = k / 32;
  const uint4* wt = reinterpret_cast<const uint4*>(w) + (size_t)blockIdx.x * slabs * 64 + lane;
  const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)g * k) + t;
  const bool col = g < ncols;
  float c[4] = {};
  for (int s0 = warp; s0 < slabs; s0 += WARPS * U) {
    uint4 lo[U], hi[U], b[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int s = s0 + u * WARPS;
      if (s < slabs) {
        lo[u] = __ldcs(wt + 64 * (size_t)s);
        hi[u] = __ldcs(wt + 64 * (size_t)s + 32);
        b[u] = col ? __ldg(xr + 4 * (size_t)s) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (s0 + u * WARPS < slabs) {
        mma_bf16(c, lo[u].x, hi[u].x, lo[u].y, hi[u].y, b[u].x, b[u].y);
        mma_bf16(c, lo[u].z, hi[u].z, lo[u].w, hi[u].w, b[u].z, b[u].w);
      }
    }
  }
  part[warp][g][2 * t] = c[0];
  part[warp][g][2 * t + 1] = c[1];
  part[warp][g + 8][2 * t] = c[2];
  part[warp][g + 8][2 * t + 1] = c[3];
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * 8; i += blockDim.x) {
    const int r = i % 16, cc = i / 16;
    if (cc >= ncols) continue;
    float v = 0.f;
    for (int ww = 0; ww < WARPS; ww++) v += part[ww][r][cc];
    reinterpret_cast<bf16*>(y)[(size_t)cc * out + blockIdx.x * 16 + r] = __float2bfloat16(v);
  }
}

__global__ void relayout(const bf16* w, bf16* p, int out, int k) {
  const int slabs = k / 32;
  const size_t tiles = (size_t)(out / 16) * slabs;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < tiles * 64;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t tile = i / 64;
    const int piece = i % 64, lane = piece % 32, half = piece / 32;
    const int R = tile / slabs, s = tile % slabs;
    const int row = 16 * R + (lane >> 2) + 8 * half, col = 32 * s + 8 * (lane & 3);
    reinterpret_cast<uint4*>(p)[i] = *reinterpret_cast<const uint4*>(w + (size_t)row * k + col);
  }
}

__global__ void reference(const bf16* w, const bf16* x, float* y, int out, int k) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= out) return;
  for (int n = 0; n < 8; n++) {
    float acc = 0.f;
    for (int i = 0; i < k; i++)
      acc += __bfloat162float(w[(size_t)r * k + i]) * __bfloat162float(x[(size_t)n * k + i]);
    y[(size_t)n * out + r] = acc;
  }
}

__global__ void fill(bf16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)(i * 2654435761u) ^ seed;
    h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.f - 0.5f) * 0.1f);
  }
}

typedef void (*Kernel)(const bf16*, const bf16*, void*, int, int, int);
struct Variant {
  const char* name;
  Kernel f;
  int rows, threads;
  int ncols = 8;
};

int main() {
  const Variant variants[] = {
      {"mt2 w8 u4 (now)", plain<2, 8, 4, 1>, 32, 256},
      {"mt1 w8 u4 b3", plain<1, 8, 4, 3>, 16, 256},
      {"mt1 w16 u4", plain<1, 16, 4, 1>, 16, 512},
      {"mt1 w8 u2 b4", plain<1, 8, 2, 4>, 16, 256},
      {"mt1 w8 u6", plain<1, 8, 6, 2>, 16, 256},
      {"tiled w8 u4 b2", tiled<8, 4, 2>, -16, 256},
      {"tiled w8 u4 b3", tiled<8, 4, 3>, -16, 256},
      {"tiled w8 u8", tiled<8, 8, 1>, -16, 256},
      {"tiled w16 u4", tiled<16, 4, 1>, -16, 512},
      {"tiled w4 u8 b4", tiled<4, 8, 4>, -16, 128},
      {"tiled w8 u4 b2 n=1", tiled<8, 4, 2>, -16, 256, 1},
      {"mt1 w8 u4 n=1", plain<1, 8, 4, 2>, 16, 256, 1},
      {"mt1 w8 u4", plain<1, 8, 4, 2>, 16, 256},
      {"mt2 w16 u2", plain<2, 16, 2, 1>, 32, 512},
      {"piped mt2 w8 u2", piped<2, 8, 2, 1>, 32, 256},
      {"piped mt1 w8 u4", piped<1, 8, 4, 1>, 16, 256},
  };
  struct Shape { const char* name; int out, k, per_step; };
  const Shape shapes[] = {
      {"7b qkv", 12288, 4096, 32}, {"7b o", 4096, 4096, 32},   {"7b gate_up", 22016, 4096, 32},
      {"7b down", 4096, 11008, 32}, {"1b qkv", 3072, 2048, 22}, {"1b o", 2048, 2048, 22},
      {"1b gate_up", 11264, 2048, 22}, {"1b down", 2048, 5632, 22},
  };
  const int nv = sizeof(variants) / sizeof(variants[0]);
  std::vector<double> step7(nv, 0.0), step1(nv, 0.0);
  double bytes7 = 0, bytes1 = 0;
  for (const Shape& s : shapes) {
    const size_t wn = (size_t)s.out * s.k;
    const size_t wbytes = wn * 2;
    const int copies = (int)((256u << 20) / wbytes) + 2;  // W and its tiled copy each
    std::vector<bf16*> ws(copies), ps(copies);
    for (int i = 0; i < copies; i++) {
      CHECK(cudaMalloc(&ws[i], wbytes));
      CHECK(cudaMalloc(&ps[i], wbytes));
      fill<<<1024, 256>>>(ws[i], wn, 1000u + i);
      relayout<<<1024, 256>>>(ws[i], ps[i], s.out, s.k);
    }
    bf16 *x, *y;
    float *ref;
    CHECK(cudaMalloc(&x, 16 * (size_t)s.k * 2));
    CHECK(cudaMalloc(&y, 16 * (size_t)s.out * 2));
    CHECK(cudaMalloc(&ref, 8 * (size_t)s.out * 4));
    fill<<<256, 256>>>(x, 16 * (size_t)s.k, 7);
    reference<<<(s.out + 127) / 128, 128>>>(ws[0], x, ref, s.out, s.k);
    CHECK(cudaDeviceSynchronize());
    std::vector<float> r(8 * (size_t)s.out);
    CHECK(cudaMemcpy(r.data(), ref, r.size() * 4, cudaMemcpyDeviceToHost));
    (s.per_step == 32 ? bytes7 : bytes1) += (double)wbytes * s.per_step;
    printf("%-11s %6dx%-6d", s.name, s.out, s.k);
    for (int v = 0; v < nv; v++) {
      const Variant& var = variants[v];
      const int rows = var.rows < 0 ? -var.rows : var.rows;
      const std::vector<bf16*>& mats = var.rows < 0 ? ps : ws;
      if (s.out % rows) { printf(" | %-6s", "-"); continue; }
      const dim3 grid(s.out / rows), block(var.threads);
      var.f<<<grid, block>>>(mats[0], x, y, s.out, s.k, var.ncols);
      CHECK(cudaGetLastError());
      CHECK(cudaDeviceSynchronize());
      std::vector<bf16> got(8 * (size_t)s.out);
      CHECK(cudaMemcpy(got.data(), y, got.size() * 2, cudaMemcpyDeviceToHost));
      double err = 0, norm = 0;
      for (size_t i = 0; i < (size_t)var.ncols * s.out; i++) {
        const double d = (double)__bfloat162float(got[i]) - r[i];
        err += d * d;
        norm += (double)r[i] * r[i];
      }
      if (!(err <= 1e-4 * norm)) { printf(" | WRONG %.1e", sqrt(err / norm)); continue; }
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      cudaStream_t st;
      CHECK(cudaStreamCreate(&st));
      const int reps = 20;
      CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
      for (int i = 0; i < reps; i++)
        for (bf16* w : mats) var.f<<<grid, block, 0, st>>>(w, x, y, s.out, s.k, var.ncols);
      CHECK(cudaStreamEndCapture(st, &graph));
      CHECK(cudaGraphInstantiate(&exec, graph, 0));
      CHECK(cudaGraphLaunch(exec, st));
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      cudaEventRecord(a, st);
      CHECK(cudaGraphLaunch(exec, st));
      cudaEventRecord(b, st);
      CHECK(cudaEventSynchronize(b));
      float ms;
      cudaEventElapsedTime(&ms, a, b);
      const double us = ms * 1e3 / (reps * copies);
      printf(" | %5.1f %4.2f", us, wbytes / (us * 1e-6) / 1e12);
      (s.per_step == 32 ? step7 : step1)[v] += us * s.per_step;
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      cudaStreamDestroy(st);
    }
    printf("\n");
    for (auto p : ws) cudaFree(p);
    for (auto p : ps) cudaFree(p);
    cudaFree(x); cudaFree(y); cudaFree(ref);
  }
  printf("\nvariant              7B step products (ms, TB/s)   1.1B step products (ms, TB/s)\n");
  for (int v = 0; v < nv; v++)
    printf("%-20s %8.3f %5.2f   %8.3f %5.2f\n", variants[v].name, step7[v] / 1e3,
           bytes7 / (step7[v] * 1e-6) / 1e12, step1[v] / 1e3, bytes1 / (step1[v] * 1e-6) / 1e12);
  return 0;
}
