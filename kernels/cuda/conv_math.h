// Index arithmetic shared by the CUDA conv2d / batch-norm kernels (conv.cu, batch_norm.cu) and their
// CPU-runnable tests (tests/test_cuda_conv.cpp): plain integer math, __host__ __device__ under nvcc and
// ordinary inline functions elsewhere, so the tests check the very code the kernels run.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TS_CONV_HD __host__ __device__ __forceinline__
#else
#define TS_CONV_HD inline
#endif

namespace tessera::cuda::conv {

// Output extent of one axis: (in + 2·pad − k) / stride + 1 (floor), as torch.nn.Conv2d (dilation 1).
TS_CONV_HD int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad) {
  return (in + 2 * pad - k) / stride + 1;
}

struct Shape {
  int64_t N, Cin, H, W, Cout, kh, kw, Ho, Wo, sh, sw, ph, pw, groups;
  TS_CONV_HD int64_t Cg() const { return Cin / groups; }      // input channels per group
  TS_CONV_HD int64_t Coutg() const { return Cout / groups; }  // output channels per group
  TS_CONV_HD int64_t K() const { return Cg() * kh * kw; }     // GEMM inner size of one group
  TS_CONV_HD int64_t rows() const { return Cin * kh * kw; }   // im2col rows of one sample (all groups)
  TS_CONV_HD int64_t P() const { return Ho * Wo; }            // output pixels of one plane
};

// im2col of one sample is a [Cin·kh·kw, Ho·Wo] matrix: row r = (c·kh + i)·kw + j, column p = oh·Wo + ow
// holds x[c, oh·sh − ph + i, ow·sw − pw + j], 0 where that falls in the padding. Rows are ordered by input
// channel, so group g's [K, P] block starts at row g·K (the batched GEMM over groups relies on it).
// Returns false for padding; otherwise sets the input channel and coordinates.
TS_CONV_HD bool im2col_source(const Shape& s, int64_t r, int64_t p, int64_t& c, int64_t& ih, int64_t& iw) {
  const int64_t j = r % s.kw, i = (r / s.kw) % s.kh;
  c = r / (s.kw * s.kh);
  ih = (p / s.Wo) * s.sh - s.ph + i;
  iw = (p % s.Wo) * s.sw - s.pw + j;
  return ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
}

// The outputs that read input position `in` along one axis: o with 0 ≤ in + pad − o·stride < k and
// 0 ≤ o < out, i.e. o ∈ [ceil((in + pad − k + 1) / stride), floor((in + pad) / stride)] clipped; tap
// index = in + pad − o·stride. This is what makes col2im / the depthwise dx a gather: each input pixel
// enumerates exactly its contributors (no modulo test per tap, no atomics). Empty when lo ≥ hi.
struct Range { int64_t lo, hi; };
TS_CONV_HD Range contributors(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t out) {
  const int64_t a = in + pad - k + 1, b = in + pad;  // b ≥ 0 for every in ≥ 0
  int64_t lo = a <= 0 ? 0 : (a + stride - 1) / stride;
  int64_t hi = b / stride + 1;
  if (hi > out) hi = out;
  if (lo > hi) lo = hi;
  return {lo, hi};
}

// Splitting a per-channel reduction over M = N·H·W values into S contiguous slices (one block each):
// slice s covers [s·M/S, (s+1)·M/S) (integer division: sizes differ by at most one, none empty when S ≤ M).
TS_CONV_HD Range slice(int64_t s, int64_t S, int64_t M) { return {s * M / S, (s + 1) * M / S}; }

// How many slices per channel: enough blocks to fill the GPU about 4× over (C·S ≈ 4·SMs), at least
// `min_len` values per slice so a block has work worth its launch, and at most kMaxSlices so the second,
// sequential pass over the partials stays short (its length enters the error bound in the tests).
constexpr int64_t kMaxSlices = 64;
TS_CONV_HD int64_t slices_for(int64_t C, int64_t M, int64_t sms, int64_t min_len) {
  int64_t S = (4 * sms + C - 1) / (C > 0 ? C : 1);
  const int64_t by_len = (M + min_len - 1) / min_len;
  if (S > by_len) S = by_len;
  if (S > kMaxSlices) S = kMaxSlices;
  return S < 1 ? 1 : S;
}

// Samples per im2col chunk: as many as fit in `budget_bytes` of column buffer (at least one, at most N).
// Bounds the scratch memory (a 224² 7×7/4 sample is 147 × 3136 values; batch 64 in f32 would be 118 MB,
// a 56² 3×3/2 64→192 one 576 × 784: 116 MB at batch 64) while keeping each GEMM large.
TS_CONV_HD int64_t chunk_samples(int64_t N, int64_t bytes_per_sample, int64_t budget_bytes) {
  int64_t nb = bytes_per_sample > 0 ? budget_bytes / bytes_per_sample : N;
  if (nb < 1) nb = 1;
  return nb > N ? N : nb;
}
constexpr int64_t kIm2colBudget = int64_t(256) << 20;  // 256 MiB

}  // namespace tessera::cuda::conv
