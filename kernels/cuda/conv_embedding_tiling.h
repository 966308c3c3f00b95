// Tile shapes and index arithmetic of the fused convolutional token embedding (conv_embedding.cu), kept
// apart from the kernels so tests/test_cuda_conv_embedding.cpp checks them on machines without a GPU.
// Plain integer arithmetic: TS_HD (engine/core/dtype.h) makes each function __host__ __device__ under nvcc.
#pragma once
#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera::cuda::emb {

constexpr int kEmbThreads = 256;         // 8 warps per CTA, every kernel
constexpr int kBK = 32;               // implicit-GEMM K slice staged in shared memory per step
constexpr int kWmmaBM = 64;           // tokens per CTA, tensor-core path (4 row fragments of 16)
constexpr int kFmaBM = 32;            // tokens per CTA, FMA path (8 warps × 4 tokens)
constexpr int64_t kMaxWmmaC = 512;    // 64 tokens × 512 ch × 4 B = 128 KB fp32 tile; 16 fragments per warp
constexpr int64_t kMaxC = 1024;       // beyond this: Backend::conv_embedding's composition
constexpr int kBwdTP = 32;            // tokens (consecutive pixels of one image) per backward CTA
constexpr size_t kSmemLimit = 227 * 1024;  // H100/H200 opt-in dynamic shared memory per block

enum class Path { Wmma, Fma, Composed };

// bf16/f16 with C ≤ 512 use tensor cores; f32/f64 (and 16-bit with 512 < C ≤ 1024) plain FMA; f64 stops at
// C = 512 (its fp64 tile of 32 tokens × C would not fit next to the staging buffers); groups ≠ 1 and
// C > 1024 go to the composition.
inline Path forward_path(int64_t C, int elem_bytes, int64_t groups) {
  if (groups != 1 || C < 1 || C > kMaxC) return Path::Composed;
  if (elem_bytes == 2) return C <= kMaxWmmaC ? Path::Wmma : Path::Fma;
  if (elem_bytes == 8 && C > 512) return Path::Composed;
  return Path::Fma;
}

// C rounded up to whole 16-wide fragments; the 16-column fragments are split between 2 warps per 16-row
// block (8 warps = 4 row blocks × 2), so each warp holds ceil(frags / 2) accumulators, rounded up to one
// of the instantiated counts.
inline int64_t wmma_cpad(int64_t C) { return (C + 15) / 16 * 16; }
inline int wmma_frags_per_warp(int64_t C) {
  const int64_t need = (wmma_cpad(C) / 16 + 1) / 2;
  const int options[] = {1, 2, 4, 6, 8, 12, 16};
  for (int o : options)
    if (o >= need) return o;
  return 0;  // C > 512: not this path
}
// Leading dims (elements) of the wmma path's shared tiles: +8 halves / +4 floats keep every row start a
// multiple of 16 bytes (wmma's ldm rule) and shift rows across banks.
constexpr int kWmmaLdA = kBK + 8;
inline int64_t wmma_ldb(int64_t C) { return wmma_cpad(C) + 8; }
inline int64_t wmma_ldc(int64_t C) { return wmma_cpad(C) + 4; }
// The fp32 accumulator tile aliases the staging buffers (used only after the K loop).
inline size_t wmma_smem_bytes(int64_t C) {
  const size_t stage = size_t(kWmmaBM * kWmmaLdA) * 2 + size_t(kBK * wmma_ldb(C)) * 2;
  const size_t tile = size_t(kWmmaBM * wmma_ldc(C)) * 4;
  return stage > tile ? stage : tile;
}

// FMA path: lane l of warp w owns tokens 4w..4w+3 and channels c0 + l + 32q (q < CQ) of a channel pass;
// CQ is the smallest power of two ≤ 8 covering C, passes cover the rest (C > 256 re-runs the K loop).
inline int fma_cq(int64_t C) {
  int q = 1;
  while (q < 8 && int64_t(32) * q < C) q *= 2;
  return q;
}
inline int64_t fma_passes(int64_t C) { return (C + 32 * fma_cq(C) - 1) / (32 * fma_cq(C)); }
// A [kBK][BM], B [kBK][32·CQ + 1] (odd row length: the transposing store is conflict-free), tile [BM][C],
// all in the compute type (acc_bytes: 4 or 8).
inline size_t fma_smem_bytes(int64_t C, int acc_bytes) {
  return size_t(kBK * kFmaBM + kBK * (32 * fma_cq(C) + 1) + kFmaBM * C) * size_t(acc_bytes);
}

// Implicit-GEMM column k of the [K = Cin·kh·kw] reduction, in the weight's own [C, Cin, kh, kw] order.
struct Tap { int64_t ci, i, j; };
TS_HD Tap decode_k(int64_t k, int64_t kh, int64_t kw) { return {k / (kh * kw), k / kw % kh, k % kw}; }

// Backward: a [C][kBwdTP + 1] tile of dpre in the storage type (the transpose to [N, C, Ho, Wo]).
inline size_t bwd_smem_bytes(int64_t C, int elem_bytes) { return size_t(C * (kBwdTP + 1)) * size_t(elem_bytes); }
inline bool backward_fused(int64_t C, int elem_bytes, int64_t groups) {
  return groups == 1 && C >= 1 && C <= kMaxC && bwd_smem_bytes(C, elem_bytes) <= kSmemLimit;
}
// One row of dln partials per backward CTA: grid (ceil(P / kBwdTP), N).
inline int64_t bwd_tiles(int64_t P) { return (P + kBwdTP - 1) / kBwdTP; }

}  // namespace tessera::cuda::emb
