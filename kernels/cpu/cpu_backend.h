// The CPU reference backend: every op of engine/core/backend.h, in fp32 and fp64 (copy/fill: every dtype;
// gemm also bf16). bf16 tensors reach the other ops through CpuBf16 (bf16.cpp), the CPU's registered
// backend, which widens them to fp32 around these kernels. Obvious code first; the GEMM is cache-blocked
// and multithreaded so the CPU path is usable, and the other hot loops run in parallel over rows or
// channels (engine/core/parallel.h).
// Method bodies live with their op family: elementwise.cpp, reduce.cpp, gemm.cpp, nn.cpp, index.cpp, ...
#pragma once
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/core/backend.h"
#include "kernels/devices.h"

namespace tessera {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  TESSERA_PRIMITIVES(TS_OVERRIDE)
  TS_OVERRIDE(linear)     // the bias added in the GEMM's epilogue, not in a second pass
  TS_OVERRIDE(linear_gelu)  // fp32: bias and GELU on each block of the product while it is in cache
  TS_OVERRIDE(attention_tokens)  // heads read and written in place (row-by-row heads), no split or merge
  TS_OVERRIDE(attention_tokens_backward)
  TS_OVERRIDE(drop_path)  // one pass: the composite multiplies through a broadcast and adds in a second
  TS_OVERRIDE(bias_gelu)  // one pass instead of the composite's bias add, GELU and column reduction
  TS_OVERRIDE(bias_gelu_backward)
  TS_OVERRIDE(conv_embedding)  // the convolution as one GEMM straight into the token layout
  TS_OVERRIDE(conv_embedding_backward)
  TS_OVERRIDE(conv_embedding_nhwc)  // the same GEMMs, each receptive-field row gathered as kw·Cin-long runs
  TS_OVERRIDE(conv_embedding_nhwc_backward)
  TS_OVERRIDE(depthwise_conv2d_nhwc)  // loops along the contiguous channels
  TS_OVERRIDE(depthwise_conv2d_nhwc_backward)
  TS_OVERRIDE(batch_norm_nhwc)
  TS_OVERRIDE(batch_norm_nhwc_backward)
  TS_OVERRIDE(sum_of_squares)  // one parallel pass per tensor, no f64 copies
  TS_OVERRIDE(column_sums)     // in place, by fixed row blocks: no transposing copy
  TS_OVERRIDE(scale)
};

// The fp32 GEMM's blocking, for kernels that call it in pieces (attention in blocks of query rows, nn.cpp):
// each element's sum is formed a depth panel of kGemmDepthPanel terms at a time, each panel's sum added to C,
// so a caller that splits the depth at the same points reproduces the GEMM's sums bit for bit; the register
// tile has kGemmTileRows rows, so blocks of whole tiles compute no padded rows.
constexpr int64_t kGemmDepthPanel = 384;
#if defined(__AVX512F__)
constexpr int64_t kGemmTileRows = 12;
#else
constexpr int64_t kGemmTileRows = 6;
#endif

// Whether the GEMM sums an M × N product's depth in slices (1024 deep, added in order), which changes the
// sums' order: deep products with few output blocks, whose tiles alone would keep one or two threads busy
// (weight gradients: dW = dYᵀ·X over every token). A function of the shape alone, never of the thread count
// or of whether the product runs inside a parallel region, so a product's bits are the same on every machine.
bool gemm_splits_depth(int64_t M, int64_t N, int64_t K);

// y [M, N] = x [M, K] · weight [N, K]ᵀ in fp32 (every thread), then after(i0, rows, j0, cols) on each finished
// block of y, by the thread that finished it while the block is in its cache: a fused op's epilogue.
using BlockEpilogue = std::function<void(int64_t i0, int64_t rows, int64_t j0, int64_t cols)>;
void gemm_f32_then(const float* x, const float* weight, float* y, int64_t M, int64_t N, int64_t K,
                   const BlockEpilogue& after);

// The fp32 GEMM's B operand packed once for many products (attention's K and V, per head): pack() takes
// B [K, N], or its transpose stored [N, K] (trans), each row ld apart; a PackedB packed again reuses its
// memory.
struct PackedB {
  void pack(const float* B, int64_t ld, bool trans, int64_t K, int64_t N);
  int64_t K = 0, N = 0;
  std::vector<float> panels;
};
// C [M, N] (row stride ldc) = alpha·op(A)·B + beta·C, op(A) [M, K] stored row-major with row stride lda
// (transposed: A stored [K, M]), on the calling thread: the sums gemm_f32 forms for every element, in the
// same order, so the results equal the GEMM's.
void gemm_f32_packed(const float* A, int64_t lda, bool trans_a, const PackedB& B, float* C, int64_t ldc, int64_t M,
                     float alpha, float beta);

// gemm with bf16 A and B and an fp32 C (beta 0): attention's scores, which its softmax reads in fp32. The
// contract's gemm keeps one dtype; this is for the CPU's own kernels.
void gemm_bf16_into_f32(const GemmArgs& g);

// Calls f(T{}) for T = float or double, and fails naming `op` for any other dtype.
template <typename F> decltype(auto) visit_float(DType dt, const char* op, F&& f) {
  if (dt == DType::f32) return f(float{});
  if (dt == DType::f64) return f(double{});
  fail(std::string(op) + " on the CPU supports f32 and f64, not " + dtype_name(dt));
}

// A kernel that stores bf16 itself (the elementwise ops: widening their operands would cost more than
// they do) computes in Compute<T>, loading through widen() and storing through narrow(): fp32 arithmetic,
// one rounding per stored result, the contract's rule for 16-bit data. For float and double both are the
// identity.
template <typename T> using Compute = std::conditional_t<std::is_same_v<T, bf16_t>, float, T>;
template <typename T> [[gnu::always_inline]] inline Compute<T> widen(T v) {
  if constexpr (std::is_same_v<T, bf16_t>) return bf16_to_float(v);
  else return v;
}
template <typename T> [[gnu::always_inline]] inline T narrow(Compute<T> v) {
  if constexpr (std::is_same_v<T, bf16_t>) return float_to_bf16(v);
  else return v;
}
// visit_float, and bf16 as bf16_t.
template <typename F> decltype(auto) visit_float_or_bf16(DType dt, const char* op, F&& f) {
  if (dt == DType::bf16) return f(bf16_t{});
  return visit_float(dt, op, std::forward<F>(f));
}

}  // namespace tessera
