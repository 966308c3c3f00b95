// Launch-shape and indexing arithmetic of the layer-norm and cross-entropy kernels, kept apart from the
// kernels so the CPU tests (tests/test_cuda_layer_norm.cpp) check it on machines without a GPU. Plain
// integer / double arithmetic only: TS_HD makes each function __host__ __device__ under nvcc, inline
// elsewhere.
#pragma once
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera::cuda::ln {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;             // 256 threads: one row per warp, 8 rows in flight per block
constexpr int64_t kMaxWarpRowC = 1024;        // rows up to this width live in one warp's registers
constexpr int kBlockThreads = 256;            // wider rows: one block per row

// How a warp holds a row of C ≤ 1024 elements: lane `l` owns `chunks` vectors of `vec` consecutive
// elements, vector k at element (k·32 + l)·vec (one warp-wide access covers 32·vec·sizeof(T) contiguous
// bytes: coalesced, 16-byte loads when vec·sizeof(T) = 16). chunks is a power of two (fewer template
// instantiations); lanes past C are masked.
struct WarpShape {
  int vec = 1, chunks = 1;
};
// vec (only when `aligned`: every row start is a multiple of max_vec·sizeof(T) bytes; vec divides C, so
// all rows stay aligned): the largest power of two ≤ max_vec for which 32·vec divides C (no lane idle),
// else the largest that divides C with 32·vec ≤ C. chunks: the smallest of {1,2,3,4,6,8,16,32} with
// 32·vec·chunks ≥ C; the 3 and 6 make the CvT/ViT widths exact (768 = 32·4·6 in f32, 32·8·3 in bf16).
TS_HD WarpShape warp_shape(int64_t C, int max_vec, bool aligned) {
  WarpShape s;
  if (aligned) {
    for (int v = max_vec; v > 1 && s.vec == 1; v /= 2)
      if (C % (int64_t(kWarp) * v) == 0) s.vec = v;
    for (int v = max_vec; v > 1 && s.vec == 1; v /= 2)
      if (C % v == 0 && int64_t(kWarp) * v <= C) s.vec = v;
  }
  const int options[] = {1, 2, 3, 4, 6, 8, 16, 32};
  for (int c : options) {
    s.chunks = c;
    if (int64_t(kWarp) * s.vec * c >= C) break;
  }
  return s;
}
// Element index of lane `lane`'s vector k, component v.
TS_HD int64_t warp_column(int lane, int k, int v, int vec) { return (int64_t(k) * kWarp + lane) * vec + v; }

// Backward grid of the warp-per-row kernel: enough blocks for `blocks_per_sm` per SM, never more than
// the rows need. Each block writes one row of dweight/dbias partial sums, so this is also the number of
// partial rows the second kernel reduces: fixed by (rows, SM count), hence the same summation order, and
// bit-identical results, on every run on a given GPU.
TS_HD int64_t backward_blocks(int64_t rows, int sm_count, int64_t rows_per_block, int blocks_per_sm = 2) {
  int64_t need = (rows + rows_per_block - 1) / rows_per_block;
  int64_t cap = int64_t(sm_count) * blocks_per_sm;
  return need < cap ? (need < 1 ? 1 : need) : (cap < 1 ? 1 : cap);
}
// Rows of [0, rows) that warp w of block b visits, in order: r = (k·blocks + b)·8 + w, k = 0, 1, ...
// (grid-stride over groups of 8 rows). Their count:
TS_HD int64_t rows_of_warp(int64_t rows, int64_t blocks, int64_t b, int w) {
  const int64_t first = b * kWarpsPerBlock + w, stride = blocks * kWarpsPerBlock;
  return first < rows ? (rows - first + stride - 1) / stride : 0;
}

// The cross-entropy loss from its three device-side sums (kernels/cpu/nn.cpp's definition, torch's):
//   a = Σ_i −w[y_i]·logp[i, y_i],  b = Σ_i Σ_c −w[c]·logp[i, c],  W = Σ_i w[y_i]   over non-ignored rows,
//   loss = (1 − ε)·a / W + (ε / C)·b / W   (the smoothing term only when ε > 0; W = 0 gives NaN as torch).
template <typename A> TS_HD A cross_entropy_value(A a, A b, A W, A eps, int64_t C) {
  A v = (A(1) - eps) * a / W;
  if (eps > A(0)) v += eps / A(C) * b / W;
  return v;
}

}  // namespace tessera::cuda::ln
