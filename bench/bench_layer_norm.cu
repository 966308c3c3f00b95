// Layer norm on the GPU at the CvT/ViT shapes (batch 64): [64·3136, 64], [64·784, 192] (CvT stages 1–2),
// [64·197, 768] (ViT-B), f32 and bf16.
//
//   Memcpy      cudaMemcpyAsync device-to-device of the forward's bytes: the ceiling
//   Naive       one thread per row, three passes over the row: the floor
//   Forward     tessera's layer_norm (x read once, y written once)
//   FwdBwd      layer_norm + layer_norm_backward with dx, dweight, dbias
//
// Bytes counted (the minimum an op must move): forward 2·rows·C·sizeof(T) (+ 8 bytes/row of statistics);
// backward 3·rows·C·sizeof(T) (x, dy read, dx written). "GB/s" counts those; "of_copy" divides by the
// Memcpy result of the same shape and dtype measured earlier in this run (0 if Memcpy was filtered out).
// Method as bench/bench_copy.cu: buffer sets rotated so that together they exceed 4× the 50 MB L2 (no
// set is cached when its turn comes), CUDA-event timing on tessera's stream (manual time), a warm-up pass.
//
// cuDNN is not a baseline here: its layer norm exists only as a graph (backend API, cudnn_frontend)
// operation, several hundred lines to set up; PyTorch's F.layer_norm is measured by a Python script on the
// GPU machine instead. Without a usable GPU every benchmark reports why and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <functional>
#include <map>
#include <type_traits>
#include <string>
#include <vector>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"
#include "kernels/cuda/device_math.cuh"

using namespace tessera;

namespace {

constexpr double kRotationBytes = 4 * 50e6;
std::map<std::string, double> g_copy_gbps;  // "C/dtype" -> Memcpy GB/s

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}
int sets_for(double bytes_per_set) { return std::max(2, int(kRotationBytes / bytes_per_set) + 1); }
int64_t rows_for(int64_t C) { return C == 64 ? 64 * 3136 : C == 192 ? 64 * 784 : 64 * 197; }
std::string key(int64_t C, DType dt) { return std::to_string(C) + "/" + dtype_name(dt); }

double run(benchmark::State& state, int sets, double bytes_per_op, const std::function<void(int)>& op) {
  const double total_s = bench::time_iterations(state, [&] {
    for (int s = 0; s < sets; ++s) op(s);
  });
  const double bytes = bytes_per_op * sets * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsRate);
  state.counters["sets"] = sets;
  return total_s > 0 ? bytes / 1e9 / total_s : 0;
}
void report_fraction(benchmark::State& state, int64_t C, DType dt, double gbps) {
  auto it = g_copy_gbps.find(key(C, dt));
  state.counters["of_copy"] = it == g_copy_gbps.end() ? 0.0 : gbps / it->second;
}

struct Buffers {
  std::vector<Tensor> x, dy, y, dx, mean, rstd;
  Tensor w, b, dw, db;
};
Buffers make(int sets, int64_t rows, int64_t C, DType dt, bool backward) {
  Generator g(42);
  Buffers B;
  for (int s = 0; s < sets; ++s) {
    B.x.push_back(g.uniform({rows, C}, -2, 2, dt, Device::CUDA));
    B.y.push_back(Tensor::empty({rows, C}, dt, Device::CUDA));
    B.mean.push_back(Tensor::empty({rows}, DType::f32, Device::CUDA));
    B.rstd.push_back(Tensor::empty({rows}, DType::f32, Device::CUDA));
    if (backward) {
      B.dy.push_back(g.uniform({rows, C}, -1, 1, dt, Device::CUDA));
      B.dx.push_back(Tensor::empty({rows, C}, dt, Device::CUDA));
    }
  }
  B.w = g.uniform({C}, 0.5, 1.5, dt, Device::CUDA);
  B.b = g.uniform({C}, -0.5, 0.5, dt, Device::CUDA);
  B.dw = Tensor::empty({C}, dt, Device::CUDA);
  B.db = Tensor::empty({C}, dt, Device::CUDA);
  return B;
}
void release(Buffers& B) {
  B = Buffers{};
  cuda::synchronize();
  cuda::empty_cache();
}

// The floor: one thread per row, mean, variance and output in three sequential passes (uncoalesced:
// neighbouring threads read addresses C elements apart).
template <typename T>
__global__ void naive_layer_norm(const T* x, const T* w, const T* b, T* y, float* mean, float* rstd, int64_t rows, int64_t C) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * C;
  float mu = 0, var = 0;
  for (int64_t c = 0; c < C; ++c) mu += cuda::load(xr[c]);
  mu /= float(C);
  for (int64_t c = 0; c < C; ++c) var += (cuda::load(xr[c]) - mu) * (cuda::load(xr[c]) - mu);
  const float rs = rsqrtf(var / float(C) + 1e-5f);
  for (int64_t c = 0; c < C; ++c)
    y[r * C + c] = cuda::store<T>((cuda::load(xr[c]) - mu) * rs * cuda::load(w[c]) + cuda::load(b[c]));
  mean[r] = mu;
  rstd[r] = rs;
}

template <DType DT> using storage_t = std::conditional_t<DT == DType::bf16, bf16_t, float>;

template <DType DT>
void BM_Memcpy(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), rows = rows_for(C);
  const size_t n = size_t(rows * C) * dtype_size(DT);
  const double bytes = 2.0 * double(n);
  const int sets = sets_for(bytes);
  Buffers B = make(sets, rows, C, DT, false);
  g_copy_gbps[key(C, DT)] = run(state, sets, bytes, [&](int s) {
    cuda::copy_device_to_device(B.y[size_t(s)].raw_data(), B.x[size_t(s)].raw_data(), n);
  });
  release(B);
}

template <DType DT>
void BM_Naive(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  using T = storage_t<DT>;
  const int64_t C = state.range(0), rows = rows_for(C);
  const double bytes = 2.0 * double(rows * C) * double(dtype_size(DT)) + 8.0 * double(rows);
  const int sets = sets_for(bytes);
  Buffers B = make(sets, rows, C, DT, false);
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
  const double gbps = run(state, sets, bytes, [&](int s) {
    const size_t i = size_t(s);
    naive_layer_norm<T><<<unsigned((rows + 255) / 256), 256, 0, stream>>>(
        static_cast<const T*>(B.x[i].raw_data()), static_cast<const T*>(B.w.raw_data()),
        static_cast<const T*>(B.b.raw_data()), static_cast<T*>(B.y[i].raw_data()), B.mean[i].data<float>(),
        B.rstd[i].data<float>(), rows, C);
    TS_CUDA_CHECK_LAUNCH();
  });
  report_fraction(state, C, DT, gbps);
  release(B);
}

template <DType DT>
void BM_Forward(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), rows = rows_for(C);
  const double bytes = 2.0 * double(rows * C) * double(dtype_size(DT)) + 8.0 * double(rows);
  const int sets = sets_for(bytes);
  Buffers B = make(sets, rows, C, DT, false);
  const double gbps = run(state, sets, bytes, [&](int s) {
    const size_t i = size_t(s);
    cuda_backend().layer_norm(B.x[i], B.w, B.b, 1e-5, B.y[i], B.mean[i], B.rstd[i]);
  });
  report_fraction(state, C, DT, gbps);
  release(B);
}

template <DType DT>
void BM_FwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), rows = rows_for(C);
  const double elem = double(rows * C) * double(dtype_size(DT));
  const double bytes = 5.0 * elem + 16.0 * double(rows);  // forward 2, backward 3 tensor passes
  const int sets = sets_for(bytes);
  Buffers B = make(sets, rows, C, DT, true);
  const double gbps = run(state, sets, bytes, [&](int s) {
    const size_t i = size_t(s);
    cuda_backend().layer_norm(B.x[i], B.w, B.b, 1e-5, B.y[i], B.mean[i], B.rstd[i]);
    cuda_backend().layer_norm_backward(B.dy[i], B.x[i], B.w, B.mean[i], B.rstd[i], B.dx[i], B.dw, B.db);
  });
  report_fraction(state, C, DT, gbps);
  release(B);
}

void channels(benchmark::internal::Benchmark* b) {
  b->ArgName("C");
  for (int64_t c : {64, 192, 768}) b->Arg(c);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_Memcpy, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Memcpy, DType::bf16)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Naive, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Naive, DType::bf16)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Forward, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Forward, DType::bf16)->Apply(channels);
BENCHMARK_TEMPLATE(BM_FwdBwd, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_FwdBwd, DType::bf16)->Apply(channels);

}  // namespace

int main(int argc, char** argv) {
  std::fprintf(stderr, "bench_layer_norm: %s\n", cuda::status().c_str());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
