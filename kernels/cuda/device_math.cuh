// The device math every CUDA kernel shares, in one place: loads and stores between the storage types and
// their accumulation type (the bf16/f16 conversions), 16-byte vectors, exp/log in the accumulation type,
// warp and block reductions, the online (max, Σ exp) merge behind softmax and log-sum-exp, and the launch
// helpers (the stream, grid sizes, the dtype visitor, the column sum of per-block partials).
//
// Reductions are deterministic: a warp reduces by xor shuffles at distances 16, 8, 4, 2, 1 (every lane ends
// with the same value), a block then adds its warps' results in warp order. The error bound of that
// tree, from which the tests derive their tolerances, is stated in kernels/cuda/reduce.cu.
//
// nvcc only (kernels/cuda/cuda_backend.h includes it under __CUDACC__). The dtype of the statistics a
// kernel hands back (stat_dtype) is part of the Backend contract, engine/core/backend.h.
#pragma once
#if !defined(__CUDACC__)
#error "kernels/cuda/device_math.cuh is device code: include it from .cu files only (nvcc)"
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "engine/core/cuda.h"
#include "engine/core/cuda_check.h"
#include "engine/core/backend.h"

namespace tessera {

// The type a kernel accumulates (and computes) in for a storage type: 16-bit floats in float, the others in
// themselves. Its DType is dtype_of<acc_t<T>>::value.
template <typename T> struct AccOf { using type = T; };
template <> struct AccOf<bf16_t> { using type = float; };
template <> struct AccOf<f16_t> { using type = float; };
template <typename T> using acc_t = typename AccOf<T>::type;

namespace cuda {

inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_stream()); }

// ---------------------------------------------------------------- storage ↔ accumulation type
// The 16-bit stores use the hardware round-to-nearest-even conversion, which rounds exactly as
// engine/core/dtype.h's software one (only NaN payloads may differ).
template <typename T> __device__ __forceinline__ acc_t<T> load(T v) { return v; }
template <> __device__ __forceinline__ float load<bf16_t>(bf16_t v) { return __uint_as_float(uint32_t(v.bits) << 16); }
template <> __device__ __forceinline__ float load<f16_t>(f16_t v) { return __half2float(__ushort_as_half(v.bits)); }

template <typename T> __device__ __forceinline__ T store(acc_t<T> v) { return v; }
template <> __device__ __forceinline__ bf16_t store<bf16_t>(float v) {
  return bf16_t{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
}
template <> __device__ __forceinline__ f16_t store<f16_t>(float v) {
  return f16_t{__half_as_ushort(__float2half_rn(v))};
}

// ---------------------------------------------------------------- 16-byte vectors
// N consecutive elements moved as one aligned access (the pointer must be sizeof(T)·N-aligned).
template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };
// Elements per 16-byte vector.
template <typename T> constexpr int vec_width() { return 16 / int(sizeof(T)) > 0 ? 16 / int(sizeof(T)) : 1; }

// out[j] = load(p[i + j]) / p[i + j] = store(in[j]), j < V, as one vector access.
template <typename T, int V, typename A> __device__ __forceinline__ void load_vec(const T* p, int64_t i, A (&out)[V]) {
  const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(p + i);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = load(v.v[j]);
}
template <typename T, int V, typename A> __device__ __forceinline__ void store_vec(T* p, int64_t i, const A (&in)[V]) {
  Vec<T, V> v;
#pragma unroll
  for (int j = 0; j < V; ++j) v.v[j] = store<T>(in[j]);
  *reinterpret_cast<Vec<T, V>*>(p + i) = v;
}

// ---------------------------------------------------------------- exp / log in the accumulation type
// float calls the single-precision functions, double the double ones (never a silent promotion).
template <typename A> __device__ __forceinline__ A neg_inf() { return A(-INFINITY); }
template <typename A> __device__ __forceinline__ A acc_exp(A x) {
  if constexpr (std::is_same_v<A, float>) return expf(x); else return exp(x);
}
template <typename A> __device__ __forceinline__ A acc_log(A x) {
  if constexpr (std::is_same_v<A, float>) return logf(x); else return log(x);
}
template <typename A> __device__ __forceinline__ A acc_exp2(A x) {
  if constexpr (std::is_same_v<A, float>) return exp2f(x); else return exp2(x);
}
template <typename A> __device__ __forceinline__ A acc_log2(A x) {
  if constexpr (std::is_same_v<A, float>) return log2f(x); else return log2(x);
}

// ---------------------------------------------------------------- warp and block reductions
// Every lane of a full warp gets the result (all 32 lanes must call).
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
// fmax: a NaN loses to a number (the kernels that need NaN to win test for it themselves).
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int m = 16; m > 0; m /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Sum over a block of `Threads` threads (the launch's blockDim.x; a multiple of 32): warp_sum, then the warp
// sums in warp order, so the result is the same on every run; every thread gets it. All threads must call
// (it synchronises the block twice, so it can be called again at once).
template <int Threads, typename A> __device__ __forceinline__ A block_sum(A v) {
  static_assert(Threads % 32 == 0, "block_sum: whole warps");
  __shared__ A part[Threads / 32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  A all = 0;
  for (int w = 0; w < Threads / 32; ++w) all += part[w];
  __syncthreads();
  return all;
}

// ---------------------------------------------------------------- online softmax: (max, Σ exp(x − max))
// A running pair over part of a row: m its max, s = Σ exp(x − m), so lse = m + log s and softmax =
// exp(x − m) / s. A pair with s = 0 holds no mass (m = −inf); once it holds any, s ≥ 1 (its max adds
// exp(0)). A NaN or +inf element makes s NaN, and every merge carries that NaN on, so the row's lse and
// softmax come out NaN, as the CPU reference's two-pass max-then-sum gives.
// No default member initialisers: block_online_merge keeps pairs in __shared__ memory. Start a pair as
// MaxSum<A>{neg_inf<A>(), A(0)}.
template <typename A> struct MaxSum {
  A m, s;
};
// Adds one element: one exp, two when x is a new maximum (the old sum is rescaled; exp(x − x) is 1, or NaN
// for x = +inf). −inf adds nothing (−inf − −inf would be NaN).
template <typename A> __device__ __forceinline__ void online_add(MaxSum<A>& p, A x) {
  if (x > p.m) {
    p.s = p.s * acc_exp(p.m - x) + acc_exp(x - x);
    p.m = x;
  } else if (x != neg_inf<A>()) {
    p.s += acc_exp(x - p.m);  // a NaN x lands here: s becomes NaN
  }
}
// Merges two pairs, each rescaled to the larger max. A side without mass adds exactly 0 (its m − max may
// be −inf − −inf); a NaN s survives.
template <typename A> __device__ __forceinline__ MaxSum<A> online_merge(MaxSum<A> a, MaxSum<A> b) {
  const A m = fmax(a.m, b.m);
  if (m == neg_inf<A>()) return {m, a.s + b.s};
  const A s = (a.s == A(0) ? A(0) : a.s * acc_exp(a.m - m)) + (b.s == A(0) ? A(0) : b.s * acc_exp(b.m - m));
  return {m, s};
}
// The merge across a full warp, in warp_sum's shuffle order; every lane gets the row's pair.
template <typename A> __device__ __forceinline__ MaxSum<A> warp_online_merge(MaxSum<A> p) {
#pragma unroll
  for (int k = 16; k > 0; k /= 2)
    p = online_merge(p, MaxSum<A>{__shfl_xor_sync(0xffffffffu, p.m, k), __shfl_xor_sync(0xffffffffu, p.s, k)});
  return p;
}
// The merge across a block of `Threads` threads, as block_sum: warps, then the warp pairs in warp order.
template <int Threads, typename A> __device__ __forceinline__ MaxSum<A> block_online_merge(MaxSum<A> p) {
  static_assert(Threads % 32 == 0, "block_online_merge: whole warps");
  __shared__ MaxSum<A> part[Threads / 32];
  p = warp_online_merge(p);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = p;
  __syncthreads();
  MaxSum<A> all{neg_inf<A>(), A(0)};
  for (int w = 0; w < Threads / 32; ++w) all = online_merge(all, part[w]);
  __syncthreads();
  return all;
}

// ---------------------------------------------------------------- launch helpers
// Calls f(T{}) for the four floating dtypes; fails naming `op` for any other.
template <typename F> decltype(auto) visit_floating(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16_t{});
    case DType::f16: return f(f16_t{});
    default: break;
  }
  fail(std::string(op) + " on cuda supports f32, f64, bf16 and f16, not " + dtype_name(dt));
}

// out[c] = Σ_r part[r, c] over `rows` rows of per-block partial sums (the second half of a deterministic
// two-kernel reduction): 32 columns × 8 row strands per block (launch: ceil(C/32) blocks of dim3(32, 8)),
// the strands added in order. Fixed order, no atomics: bit-identical on every run.
template <typename T>
__global__ void __launch_bounds__(256) sum_partial_columns(const acc_t<T>* part, int64_t rows, int64_t C, T* out) {
  using A = acc_t<T>;
  __shared__ A strand[8][32];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A s = 0;
  if (c < C)
    for (int64_t r = threadIdx.y; r < rows; r += 8) s += part[r * C + c];
  strand[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    A all = 0;
    for (int y = 0; y < 8; ++y) all += strand[y][threadIdx.x];
    out[c] = store<T>(all);
  }
}

// Launch shapes. Grid-stride loops let a capped grid cover any element count; the cap (enough blocks to
// fill every SM several times over) keeps launch cost flat for huge tensors.
constexpr int kThreads = 256;
inline unsigned grid_for(int64_t work_items, int threads = kThreads) {
  int64_t blocks = (work_items + threads - 1) / threads;
  return unsigned(std::clamp<int64_t>(blocks, 1, int64_t(sm_count()) * 32));
}

}  // namespace cuda
}  // namespace tessera
