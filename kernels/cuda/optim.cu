// The optimizer's kernels, multi-tensor (multi_tensor.h): AdamW updates a whole parameter list in a few
// launches (CvT-13: ~300 tensors, 20 M elements → ~10 launches instead of one per tensor), and gradient
// clipping's sum of squares and scaling likewise (instead of ~5 launches per tensor).
//
// The update is Backend::adamw's (torch.optim.AdamW's), element by element the function the CPU reference
// runs (optim_math.h adamw::update: arithmetic in the parameter's type), so the two agree to about a
// rounding per operation (they can differ only where a compiler contracts a·b + c into an FMA).
// Packing (multi_tensor.h plan_launches): each launch carries up to 36 tensors' pointers and a table
// mapping each of its ≤ 320 blocks to one 64 Ki-element chunk of one tensor, all as kernel arguments: no
// host-to-device copy, nothing to synchronise, and the launches can be captured in a CUDA graph as they are.
// The update moves 28 bytes per fp32 element (bf16 grads: 26) for ~15 flops, so it is memory-bound; not yet
// measured.
#include <map>
#include <utility>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/multi_tensor.h"
#include "kernels/cuda/optim_math.h"

namespace tessera {
namespace cuda {
namespace {

using multi_tensor::kChunk;
using multi_tensor::kMaxBlocks;
using multi_tensor::kMaxTensors;

template <typename P, typename G>
struct TensorList {
  P* param[kMaxTensors];
  const G* grad[kMaxTensors];
  P* exp_avg[kMaxTensors];
  P* exp_avg_sq[kMaxTensors];
  int64_t numel[kMaxTensors];
  double decay[kMaxTensors];  // 1 − lr·weight_decay: the weight decay is per tensor
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_slot[kMaxBlocks];
};

// The scalars every tensor of a launch shares.
struct SharedScalars {
  double beta1, beta2, step_size, sqrt_bc2, eps;
};
static_assert(sizeof(TensorList<double, double>) + sizeof(SharedScalars) <= 4096,
              "kernel arguments must fit CUDA's 4 KiB parameter space");

template <typename P, typename G>
__global__ void __launch_bounds__(kThreads) adamw_kernel(TensorList<P, G> list, SharedScalars s) {
  const int slot = list.block_slot[blockIdx.x];
  const int64_t begin = int64_t(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(list.numel[slot], begin + kChunk);
  const adamw::Scalars sc{list.decay[slot], s.beta1, s.beta2, s.step_size, s.sqrt_bc2, s.eps};
  P* __restrict__ p = list.param[slot];
  const G* __restrict__ g = list.grad[slot];
  P* __restrict__ m = list.exp_avg[slot];
  P* __restrict__ v = list.exp_avg_sq[slot];
  // Consecutive threads touch consecutive elements: every access is coalesced.
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const adamw::Updated<P> u = adamw::update<P>(p[i], P(load(g[i])), m[i], v[i], sc);
    p[i] = u.param;
    m[i] = u.exp_avg;
    v[i] = u.exp_avg_sq;
  }
}

template <typename P, typename G>
void launch_all(const std::vector<Backend::AdamWParam>& params, const std::vector<int>& members,
                const Backend::AdamWStep& s) {
  std::vector<int64_t> sizes;
  for (int i : members) sizes.push_back(params[size_t(i)].param.numel());
  const SharedScalars shared{s.beta1, s.beta2, s.lr / s.bias_correction1, std::sqrt(s.bias_correction2), s.eps};
  for (const multi_tensor::Launch& launch : multi_tensor::plan_launches(sizes)) {
    TensorList<P, G> list{};
    for (size_t slot = 0; slot < launch.tensors.size(); ++slot) {
      const Backend::AdamWParam& e = params[size_t(members[size_t(launch.tensors[slot])])];
      list.param[slot] = static_cast<P*>(e.param.raw_data());
      list.grad[slot] = static_cast<const G*>(e.grad.raw_data());
      list.exp_avg[slot] = static_cast<P*>(e.exp_avg.raw_data());
      list.exp_avg_sq[slot] = static_cast<P*>(e.exp_avg_sq.raw_data());
      list.numel[slot] = e.param.numel();
      list.decay[slot] = adamw::scalars(s, e.weight_decay).decay;
    }
    std::copy(launch.block_chunk.begin(), launch.block_chunk.end(), list.block_chunk);
    std::copy(launch.block_slot.begin(), launch.block_slot.end(), list.block_slot);
    adamw_kernel<P, G><<<unsigned(launch.block_slot.size()), kThreads, 0, stream()>>>(list, shared);
    TS_CUDA_CHECK_LAUNCH();
  }
}

// ---------------------------------------------------------------- gradient clipping
// One tensor list of a single dtype: pointers, sizes and the block table, as for AdamW.
template <typename T>
struct PlainList {
  T* data[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_slot[kMaxBlocks];
};

// partial[first_block + b] = Σ x² over block b's chunk, in double (squares of fp32 values are exact in
// double, and the sums carry 2^-53 relative error: the norm is as good as the gradients).
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_of_squares_kernel(PlainList<T> list, double* partial,
                                                                  int64_t first_block) {
  const int slot = list.block_slot[blockIdx.x];
  const int64_t begin = int64_t(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(list.numel[slot], begin + kChunk);
  const T* x = list.data[slot];
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double v = double(load(x[i]));
    acc += v * v;
  }
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[first_block + blockIdx.x] = acc;
}

// out = Σ partial[0..n), one block, a fixed order: every run gives the same bits.
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partial, int64_t n, double* out) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += partial[i];
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) *out = acc;
}

// x ← x·factor in the compute type (the factor rounded to it first, as the CPU's composition does), factor
// read on the device. Exactly 1 (the usual case once training has settled) returns at once: x·1 = x bit
// for bit, so skipping the pass changes nothing but the time.
template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(PlainList<T> list, const double* factor) {
  const double f64 = *factor;
  if (f64 == 1.0) return;
  const acc_t<T> f = acc_t<T>(f64);
  const int slot = list.block_slot[blockIdx.x];
  const int64_t begin = int64_t(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(list.numel[slot], begin + kChunk);
  T* x = list.data[slot];
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) x[i] = store<T>(load(x[i]) * f);
}

// Calls launch(list, blocks, first_block) for each launch of the plan over xs (all of dtype T); returns the
// total number of blocks.
template <typename T, typename F>
int64_t for_each_launch(const std::vector<const Tensor*>& xs, F&& launch) {
  std::vector<int64_t> sizes;
  for (const Tensor* x : xs) sizes.push_back(x->numel());
  int64_t first_block = 0;
  for (const multi_tensor::Launch& l : multi_tensor::plan_launches(sizes)) {
    PlainList<T> list{};
    for (size_t slot = 0; slot < l.tensors.size(); ++slot) {
      list.data[slot] = static_cast<T*>(xs[size_t(l.tensors[slot])]->raw_data());
      list.numel[slot] = xs[size_t(l.tensors[slot])]->numel();
    }
    std::copy(l.block_chunk.begin(), l.block_chunk.end(), list.block_chunk);
    std::copy(l.block_slot.begin(), l.block_slot.end(), list.block_slot);
    launch(list, unsigned(l.block_slot.size()), first_block);
    TS_CUDA_CHECK_LAUNCH();
    first_block += int64_t(l.block_slot.size());
  }
  return first_block;
}

// The tensors of xs grouped by dtype, in order (one kernel instantiation each).
std::map<DType, std::vector<const Tensor*>> by_dtype(const std::vector<Tensor>& xs, const char* op) {
  std::map<DType, std::vector<const Tensor*>> groups;
  for (const Tensor& x : xs) {
    check_on_cuda(x, op, "tensor");
    check_contiguous(x, op, "tensor");
    if (!is_floating(x.dtype())) fail(std::string(op) + " (cuda): " + x.str() + " is not floating");
    groups[x.dtype()].push_back(&x);
  }
  return groups;
}

void check_scalar_f64(const Tensor& t, const char* op, const char* arg) {
  check_on_cuda(t, op, arg);
  if (t.dtype() != DType::f64 || t.numel() != 1)
    fail(std::string(op) + " (cuda): " + arg + " must be one f64 element, got " + t.str());
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) {
  check_adamw(params, s);
  // One kernel instantiation per (parameter dtype, gradient dtype): normally a single group.
  std::map<std::pair<DType, DType>, std::vector<int>> groups;
  for (size_t i = 0; i < params.size(); ++i)
    groups[{params[i].param.dtype(), params[i].grad.dtype()}].push_back(int(i));
  for (const auto& [types, members] : groups) {
    auto with_grad = [&](auto ptag) {
      using P = decltype(ptag);
      switch (types.second) {
        case DType::f32: return launch_all<P, float>(params, members, s);
        case DType::f64: return launch_all<P, double>(params, members, s);
        default: return launch_all<P, bf16_t>(params, members, s);  // check_adamw admits f32, f64, bf16
      }
    };
    if (types.first == DType::f32) with_grad(float{});
    else with_grad(double{});  // check_adamw admits f32 and f64 parameters
  }
}

void CudaBackend::sum_of_squares(const std::vector<Tensor>& xs, Tensor& out) {
  check_scalar_f64(out, "sum_of_squares", "out");
  const auto groups = by_dtype(xs, "sum_of_squares");
  int64_t blocks = 0;
  for (const auto& [dt, members] : groups)
    for (const Tensor* x : members) blocks += (x->numel() + kChunk - 1) / kChunk;
  // One partial per block of every launch, then one fixed-order sum: no atomics, the same bits every run.
  Tensor partial = Tensor::empty({std::max<int64_t>(blocks, 1)}, DType::f64, Device::CUDA);
  double* part = static_cast<double*>(partial.raw_data());
  int64_t first = 0;
  for (const auto& [dt, members] : groups)
    visit_floating(dt, "sum_of_squares", [&](auto tag) {
      using T = decltype(tag);
      first += for_each_launch<T>(members, [&](const PlainList<T>& list, unsigned grid, int64_t first_block) {
        sum_of_squares_kernel<T><<<grid, kThreads, 0, stream()>>>(list, part, first + first_block);
      });
    });
  sum_partials_kernel<<<1, kThreads, 0, stream()>>>(part, first, static_cast<double*>(out.raw_data()));
  TS_CUDA_CHECK_LAUNCH();
}

void CudaBackend::scale(const std::vector<Tensor>& xs, const Tensor& factor) {
  check_scalar_f64(factor, "scale", "factor");
  const double* f = static_cast<const double*>(factor.raw_data());
  for (const auto& [dt, members] : by_dtype(xs, "scale"))
    visit_floating(dt, "scale", [&](auto tag) {
      using T = decltype(tag);
      for_each_launch<T>(members, [&](const PlainList<T>& list, unsigned grid, int64_t) {
        scale_kernel<T><<<grid, kThreads, 0, stream()>>>(list, f);
      });
    });
}

}  // namespace tessera
