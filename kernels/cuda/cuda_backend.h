// The CUDA backend: the Backend ops implemented on the GPU, one .cu file per op family
// (elementwise.cu: fill/copy/random/unary/binary; reduce.cu: reduce/softmax; gemm.cu; index.cu; optim.cu;
// layer_norm.cu; cross_entropy.cu; conv.cu; batch_norm.cu; conv_embedding.cu).
// Every kernel runs on tessera's one stream (engine/core/cuda.h current_stream()), so the caching allocator's
// reuse of freed blocks is ordered after every kernel that used them. Ops not declared here fall back to the
// Backend base class (kernels/backend.cpp), which throws "<op> is not implemented on the cuda backend".
//
// Below the class: helpers shared by the .cu files (device-only parts are compiled by nvcc alone).
#pragma once
#include <string>

#include "engine/core/cuda.h"
#include "engine/core/backend.h"
#include "kernels/devices.h"

namespace tessera {

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  void fill(Tensor& out, double value) override;
  void copy(const Tensor& src, Tensor& out) override;
  void random(RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset) override;
  void unary(UnaryOp op, const Tensor& x, Tensor& out, double alpha, double beta) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* indices) override;
  void gemm(GemmArgs& args) override;
  void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
              Tensor& y) override;  // conv.cu
  void conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a, Tensor& dx,
                       Tensor& dweight, Tensor& dbias) override;
  void conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                      const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens, Tensor& pre_norm,
                      Tensor& mean, Tensor& rstd) override;  // conv_embedding.cu
  void conv_embedding_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight, const Conv2dArgs& a,
                               const Tensor& pre_norm, const Tensor& ln_weight, const Tensor& mean,
                               const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias, Tensor& dln_weight,
                               Tensor& dln_bias) override;
  void batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean, Tensor& invstd,
                  double eps, bool training, Tensor& y) override;  // batch_norm.cu
  void batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& invstd, bool training, Tensor& dx, Tensor& dweight,
                           Tensor& dbias) override;
  void softmax(const Tensor& x, Tensor& y, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) override;
  void bias_gelu(const Tensor& x, const Tensor& bias, Tensor& y) override;  // elementwise.cu
  void drop_path(const Tensor& x, const Tensor& keep_mask, double scale, const Tensor& residual,
                 Tensor& out) override;  // elementwise.cu
  void bias_gelu_backward(const Tensor& dy, const Tensor& x, const Tensor& bias, Tensor& dx, Tensor& dbias) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean,
                  Tensor& rstd) override;
  void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, double label_smoothing,
                     int64_t ignore_index, Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                              double label_smoothing, int64_t ignore_index, const Tensor& dloss,
                              Tensor& dlogits) override;
  void index_select(const Tensor& src, const Tensor& index, Tensor& out) override;
  void index_add(const Tensor& src, const Tensor& index, Tensor& out) override;
  void adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) override;  // optim.cu
  void sum_of_squares(const std::vector<Tensor>& xs, Tensor& out) override;
  void scale(const std::vector<Tensor>& xs, const Tensor& factor) override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out,
                 Tensor& lse) override;  // attention.cu
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                          Tensor& dv) override;
};

namespace cuda {

// Throws unless t is defined and lives on the GPU; names the op and the argument.
inline void check_on_cuda(const Tensor& t, const char* op, const char* arg) {
  if (!t.defined()) fail(std::string(op) + " (cuda): " + arg + " is undefined");
  if (t.device() != Device::CUDA)
    fail(std::string(op) + " (cuda): " + arg + " is " + t.str() + ", expected a CUDA tensor");
}
inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  if (a.dtype() != b.dtype())
    fail(std::string(op) + " (cuda): dtype mismatch, " + a.str() + " vs " + b.str());
}
inline void check_contiguous(const Tensor& t, const char* op, const char* arg) {
  if (!t.is_contiguous()) fail(std::string(op) + " (cuda): " + arg + " " + t.str() + " must be contiguous");
}

}  // namespace cuda
}  // namespace tessera

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "engine/core/cuda_check.h"

namespace tessera::cuda {

inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_stream()); }

// The type a kernel computes in for a storage type: 16-bit floats compute in fp32.
template <typename T> struct ComputeOf { using type = T; };
template <> struct ComputeOf<bf16_t> { using type = float; };
template <> struct ComputeOf<f16_t> { using type = float; };
template <typename T> using compute_t = typename ComputeOf<T>::type;

// Loads and stores between a storage type and its compute type. The 16-bit stores use the hardware
// round-to-nearest-even conversion, which rounds exactly as engine/core/dtype.h's software one (only NaN
// payloads may differ).
template <typename T> __device__ __forceinline__ compute_t<T> load(T v) { return v; }
template <> __device__ __forceinline__ float load<bf16_t>(bf16_t v) { return __uint_as_float(uint32_t(v.bits) << 16); }
template <> __device__ __forceinline__ float load<f16_t>(f16_t v) { return __half2float(__ushort_as_half(v.bits)); }

template <typename T> __device__ __forceinline__ T store(compute_t<T> v) { return v; }
template <> __device__ __forceinline__ bf16_t store<bf16_t>(float v) {
  return bf16_t{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
}
template <> __device__ __forceinline__ f16_t store<f16_t>(float v) {
  return f16_t{__half_as_ushort(__float2half_rn(v))};
}

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

// Sum over a block of `Threads` threads in a fixed order (warp shuffles, then the warp sums in sequence),
// so the result is the same on every run; every thread gets it. Threads must be a multiple of 32.
template <int Threads, typename A> __device__ A block_sum(A v) {
  static_assert(Threads % 32 == 0, "block_sum: whole warps");
  __shared__ A part[Threads / 32];
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  A all = 0;
  for (int w = 0; w < Threads / 32; ++w) all += part[w];
  __syncthreads();
  return all;
}

// out[c] = Σ_r part[r, c] over `rows` rows of per-block partial sums (the second half of a deterministic
// two-kernel reduction): 32 columns × 8 row strands per block (launch: ceil(C/32) blocks of dim3(32, 8)),
// the strands added in order. Fixed order, no atomics: bit-identical on every run.
template <typename T>
__global__ void __launch_bounds__(256) sum_partial_columns(const compute_t<T>* part, int64_t rows, int64_t C, T* out) {
  using A = compute_t<T>;
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

}  // namespace tessera::cuda
#endif  // __CUDACC__
