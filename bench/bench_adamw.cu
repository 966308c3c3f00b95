// The optimizer's multi-tensor kernels (kernels/cuda/optim.cu): the AdamW step and gradient clipping, on the
// real parameter lists of CvT-13 (~20 M parameters in ~300
// tensors) and ViT-B/16 (~86 M in ~200), fp32 parameters and moments, fp32 or bf16 gradients:
//
//   Memcpy       cudaMemcpyAsync device-to-device moving the step's bytes (half read, half written): the
//                ceiling
//   MultiTensor  tessera's multi-tensor kernel: the whole list in ~10 launches, table in kernel arguments
//   PerTensor    the same update, one launch per tensor (what an engine without multi-tensor apply does):
//                the floor this design removes, dominated by launch gaps on the many small tensors
//   ClipGradNorm/multi_tensor  Σg² (sum_of_squares) then g ← g·0.5 (scale: a factor ≠ 1, so the pass runs):
//                tessera's multi-tensor kernels; 12 bytes per fp32 element (read; read + write)
//   ClipGradNorm/per_tensor    the same two passes as Backend's base-class composition (copy to f64, square,
//                reduce, add per tensor; a broadcast multiply and a copy back per tensor): ~5 launches per
//                tensor, what clipping cost before the multi-tensor kernels
//
// PyTorch's torch.optim.AdamW (fused=True and foreach=True) on the same parameter shapes is measured by
// bench/pytorch_baselines.py (section adamw) in the same GPU session.
// Bytes per element: param, grad, exp_avg, exp_avg_sq read; param, exp_avg, exp_avg_sq written: 28 (fp32
// grads) or 26 (bf16 grads). "of_copy" is GB/s over Memcpy's for the same model, measured earlier in this
// run. The step's working set (≥ 560 MB) is far beyond the 50 MB L2, so no buffer rotation is needed.
// Method: CUDA events on tessera's stream around each iteration (manual time), one untimed warm-up.
// Without a usable GPU every benchmark reports "no CUDA device: <why>" and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"
#include "models/config.h"
#include "models/model.h"

using namespace tessera;

namespace {

const char* kModels[] = {"cvt-13", "vit-b16"};
std::map<std::string, double> g_copy_gbps;  // model -> Memcpy GB/s

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}

// The model's parameter shapes, in its parameters() order (built once per model: ViT-B's initialisation
// takes seconds on the CPU).
const std::vector<Shape>& parameter_shapes(const std::string& model) {
  static std::map<std::string, std::vector<Shape>> cache;
  auto [it, inserted] = cache.try_emplace(model);
  if (inserted)
    for (const NamedParameter& p : models::make_model(models::preset_config(model), uint64_t(0))->parameters())
      it->second.push_back(p.tensor.shape());
  return it->second;
}

// The step's operands on the GPU: random parameters and gradients, zero moments.
std::vector<Backend::AdamWParam> make_step(const std::vector<Shape>& shapes, DType grad_dtype) {
  Generator g(3);
  std::vector<Backend::AdamWParam> list;
  for (size_t i = 0; i < shapes.size(); ++i)
    list.push_back({g.normal(shapes[i], 0, 0.02, DType::f32, Device::CUDA),
                    g.normal(shapes[i], 0, 1e-3, grad_dtype, Device::CUDA),
                    Tensor::zeros(shapes[i], DType::f32, Device::CUDA), Tensor::zeros(shapes[i], DType::f32, Device::CUDA),
                    i % 2 ? 0.0 : 0.05});
  return list;
}

int64_t total_elements(const std::vector<Shape>& shapes) {
  int64_t n = 0;
  for (const Shape& s : shapes) n += shape_numel(s);
  return n;
}

double report(benchmark::State& state, double seconds, double bytes_per_iteration, const std::string& model) {
  const double gbps = bytes_per_iteration * double(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["tensors"] = double(parameter_shapes(model).size());
  auto it = g_copy_gbps.find(model);
  state.counters["of_copy"] = it == g_copy_gbps.end() ? 0.0 : gbps / it->second;
  return gbps;
}

void release() {
  cuda::synchronize();
  cuda::empty_cache();
}

// A step's scalars as the optimizer would pass them at step 10.
Backend::AdamWStep step_scalars() {
  const double b1 = 0.9, b2 = 0.999, t = 10;
  return {5e-4, b1, b2, 1e-8, 1 - std::pow(b1, t), 1 - std::pow(b2, t)};
}

// ---------------------------------------------------------------- the per-tensor baseline
__global__ void adamw_one_tensor(float* p, const float* g, float* m, float* v, int64_t n, float decay, float beta1,
                                 float beta2, float step_size, float sqrt_bc2, float eps) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float mi = beta1 * m[i] + (1 - beta1) * g[i];
    const float vi = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
  }
}

// ---------------------------------------------------------------- benchmarks
void BM_Memcpy(benchmark::State& state, std::string model) {
  if (skip_without_gpu(state)) return;
  const int64_t bytes = 14 * total_elements(parameter_shapes(model));  // read 14n + write 14n = 28n moved
  Tensor src = Tensor::zeros({bytes}, DType::u8, Device::CUDA), dst = Tensor::empty({bytes}, DType::u8, Device::CUDA);
  cudaStream_t s = static_cast<cudaStream_t>(cuda::current_stream());
  const double sec = bench::time_iterations(state, [&] {
    TS_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(bytes), cudaMemcpyDeviceToDevice, s));
  });
  g_copy_gbps[model] = report(state, sec, 2.0 * double(bytes), model);
  release();
}

void BM_MultiTensor(benchmark::State& state, std::string model, DType grad_dtype) {
  if (skip_without_gpu(state)) return;
  const auto& shapes = parameter_shapes(model);
  std::vector<Backend::AdamWParam> list = make_step(shapes, grad_dtype);
  const Backend::AdamWStep s = step_scalars();
  const double sec = bench::time_iterations(state, [&] { cuda_backend().adamw(list, s); });
  const double bytes_per_element = grad_dtype == DType::bf16 ? 26 : 28;
  report(state, sec, bytes_per_element * double(total_elements(shapes)), model);
  list.clear();
  release();
}

void BM_PerTensor(benchmark::State& state, std::string model) {
  if (skip_without_gpu(state)) return;
  const auto& shapes = parameter_shapes(model);
  std::vector<Backend::AdamWParam> list = make_step(shapes, DType::f32);
  const Backend::AdamWStep s = step_scalars();
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
  const double sec = bench::time_iterations(state, [&] {
    for (const Backend::AdamWParam& e : list) {
      const int64_t n = e.param.numel();
      const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 132 * 32));
      adamw_one_tensor<<<blocks, 256, 0, stream>>>(
          e.param.data<float>(), e.grad.data<float>(), e.exp_avg.data<float>(), e.exp_avg_sq.data<float>(), n,
          float(1 - s.lr * e.weight_decay), float(s.beta1), float(s.beta2), float(s.lr / s.bias_correction1),
          float(std::sqrt(s.bias_correction2)), float(s.eps));
    }
    TS_CUDA_CHECK(cudaGetLastError());
  });
  report(state, sec, 28 * double(total_elements(shapes)), model);
  list.clear();
  release();
}

void BM_ClipGradNorm(benchmark::State& state, std::string model, bool multi_tensor) {
  if (skip_without_gpu(state)) return;
  const auto& shapes = parameter_shapes(model);
  std::vector<Tensor> grads;
  for (const Backend::AdamWParam& e : make_step(shapes, DType::f32)) grads.push_back(e.grad);
  Backend& be = cuda_backend();
  Tensor total = Tensor::empty({}, DType::f64, Device::CUDA), half = Tensor::scalar(0.5, DType::f64, Device::CUDA);
  const double sec = bench::time_iterations(state, [&] {
    if (multi_tensor) {
      be.sum_of_squares(grads, total);
      be.scale(grads, half);
    } else {
      be.Backend::sum_of_squares(grads, total);  // the base class's per-tensor composition
      be.Backend::scale(grads, half);
    }
  });
  report(state, sec, 12 * double(total_elements(shapes)), model);
  grads.clear();
  release();
}

void register_all() {
  for (const char* m : kModels) {
    const std::string model = m;
    auto reg = [](const std::string& name, auto fn) {
      benchmark::RegisterBenchmark(name.c_str(), fn)->UseManualTime()->Unit(benchmark::kMicrosecond);
    };
    reg("Memcpy/" + model, [model](benchmark::State& st) { BM_Memcpy(st, model); });
    reg("MultiTensor/" + model + "/grad_f32", [model](benchmark::State& st) { BM_MultiTensor(st, model, DType::f32); });
    reg("MultiTensor/" + model + "/grad_bf16", [model](benchmark::State& st) { BM_MultiTensor(st, model, DType::bf16); });
    reg("PerTensor/" + model + "/grad_f32", [model](benchmark::State& st) { BM_PerTensor(st, model); });
    reg("ClipGradNorm/" + model + "/multi_tensor", [model](benchmark::State& st) { BM_ClipGradNorm(st, model, true); });
    reg("ClipGradNorm/" + model + "/per_tensor", [model](benchmark::State& st) { BM_ClipGradNorm(st, model, false); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
