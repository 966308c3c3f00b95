// Memory-bound CUDA kernels against the copy ceiling, on the shapes CvT-13 streams through its norms and
// residuals: [64·3136 rows, C] with C = 64, 192, 384, 768 (stage-1 tokens of a batch of 64).
//
//   Memcpy        cudaMemcpyAsync device-to-device: the ceiling (bytes read + bytes written)
//   Copy          tessera's copy, contiguous f32 → f32 (it forwards to cudaMemcpyAsync)
//   CopyToBf16    tessera's copy kernel proper: contiguous f32 → bf16 conversion
//   Transpose     tessera's copy of a transposed view: [rows, C]ᵀ → contiguous [C, rows]
//   Add           binary add, same shapes, f32 and bf16
//   AddBias       binary add of a [C] row broadcast over [rows, C]
//   SumRows       sum over the C channels of each row, f32 and bf16
//
// Method: every timed iteration runs the op once on each of several buffer sets, chosen so that together
// they span at least 4× the H100's 50 MB L2 (no set is still cached when its turn comes again); CUDA
// events on tessera's stream bracket the iteration (manual time), inputs are random (never zeros), and
// one untimed pass warms up. Throughput counts the bytes the op must move at minimum: each input read once,
// each output written once. Compare GB/s with Memcpy at the same C in the same run.
//
// Without a usable GPU every benchmark reports "no CUDA device: <why>" and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"

using namespace tessera;

namespace {

constexpr int64_t kRows = 64 * 3136;
constexpr double kL2Bytes = 50e6;
constexpr double kRotationBytes = 4 * kL2Bytes;

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();  // already "no (usable) CUDA device: ..." when there is none
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}

// Number of buffer sets of `bytes_per_set` bytes that together exceed the rotation size (at least 2).
int sets_for(double bytes_per_set) { return std::max(2, int(kRotationBytes / bytes_per_set) + 1); }

// Runs op(set) over all sets once per iteration, timed with CUDA events; reports bytes moved per second.
void run(benchmark::State& state, int sets, double bytes_per_op, const std::function<void(int)>& op) {
  bench::time_iterations(state, [&] {
    for (int s = 0; s < sets; ++s) op(s);
  });
  const double bytes = bytes_per_op * sets * double(state.iterations());
  state.SetBytesProcessed(int64_t(bytes));
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsRate);
  state.counters["sets"] = sets;
}

// `count` random tensors of `shape` on the GPU.
std::vector<Tensor> random_tensors(int count, const Shape& shape, DType dt, uint64_t seed) {
  Generator g(seed);
  std::vector<Tensor> out;
  for (int i = 0; i < count; ++i) out.push_back(g.uniform(shape, -1, 1, dt, Device::CUDA));
  return out;
}
std::vector<Tensor> empty_tensors(int count, const Shape& shape, DType dt) {
  std::vector<Tensor> out;
  for (int i = 0; i < count; ++i) out.push_back(Tensor::empty(shape, dt, Device::CUDA));
  return out;
}

// Frees what a benchmark held so the next one starts from the same memory state.
void release(std::initializer_list<std::vector<Tensor>*> lists) {
  for (auto* l : lists) l->clear();
  cuda::synchronize();
  cuda::empty_cache();
}

void BM_Memcpy(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = 2.0 * double(n) * 4;
  const int sets = sets_for(bytes);
  auto src = random_tensors(sets, {kRows, C}, DType::f32, 1), dst = empty_tensors(sets, {kRows, C}, DType::f32);
  run(state, sets, bytes, [&](int s) {
    cuda::copy_device_to_device(dst[size_t(s)].raw_data(), src[size_t(s)].raw_data(), size_t(n) * 4);
  });
  release({&src, &dst});
}

void BM_Copy(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = 2.0 * double(n) * 4;
  const int sets = sets_for(bytes);
  auto src = random_tensors(sets, {kRows, C}, DType::f32, 2), dst = empty_tensors(sets, {kRows, C}, DType::f32);
  run(state, sets, bytes, [&](int s) { cuda_backend().copy(src[size_t(s)], dst[size_t(s)]); });
  release({&src, &dst});
}

void BM_CopyToBf16(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = double(n) * (4 + 2);
  const int sets = sets_for(bytes);
  auto src = random_tensors(sets, {kRows, C}, DType::f32, 3), dst = empty_tensors(sets, {kRows, C}, DType::bf16);
  run(state, sets, bytes, [&](int s) { cuda_backend().copy(src[size_t(s)], dst[size_t(s)]); });
  release({&src, &dst});
}

void BM_Transpose(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = 2.0 * double(n) * 4;
  const int sets = sets_for(bytes);
  auto src = random_tensors(sets, {kRows, C}, DType::f32, 4), dst = empty_tensors(sets, {C, kRows}, DType::f32);
  std::vector<Tensor> views;
  for (auto& t : src) views.push_back(t.transpose(0, 1));
  run(state, sets, bytes, [&](int s) { cuda_backend().copy(views[size_t(s)], dst[size_t(s)]); });
  release({&src, &dst, &views});
}

template <DType DT>
void BM_Add(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = 3.0 * double(n) * double(dtype_size(DT));
  const int sets = sets_for(bytes);
  auto a = random_tensors(sets, {kRows, C}, DT, 5), b = random_tensors(sets, {kRows, C}, DT, 6);
  auto out = empty_tensors(sets, {kRows, C}, DT);
  run(state, sets, bytes, [&](int s) { cuda_backend().binary(BinaryOp::Add, a[size_t(s)], b[size_t(s)], out[size_t(s)]); });
  release({&a, &b, &out});
}

void BM_AddBias(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = 2.0 * double(n) * 4 + double(C) * 4;
  const int sets = sets_for(bytes);
  auto a = random_tensors(sets, {kRows, C}, DType::f32, 7), bias = random_tensors(sets, {C}, DType::f32, 8);
  auto out = empty_tensors(sets, {kRows, C}, DType::f32);
  std::vector<Tensor> expanded;
  for (auto& t : bias) expanded.push_back(t.expand({kRows, C}));
  run(state, sets, bytes, [&](int s) {
    cuda_backend().binary(BinaryOp::Add, a[size_t(s)], expanded[size_t(s)], out[size_t(s)]);
  });
  release({&a, &bias, &out, &expanded});
}

template <DType DT>
void BM_SumRows(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const int64_t C = state.range(0), n = kRows * C;
  const double bytes = (double(n) + double(kRows)) * double(dtype_size(DT));
  const int sets = sets_for(bytes);
  auto x = random_tensors(sets, {kRows, C}, DT, 9);
  auto out = empty_tensors(sets, {kRows}, DT);
  run(state, sets, bytes, [&](int s) { cuda_backend().reduce(ReduceOp::Sum, x[size_t(s)], out[size_t(s)], nullptr); });
  release({&x, &out});
}

void channels(benchmark::internal::Benchmark* b) {
  b->ArgName("C");
  for (int64_t c : {64, 192, 384, 768}) b->Arg(c);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_Memcpy)->Apply(channels);
BENCHMARK(BM_Copy)->Apply(channels);
BENCHMARK(BM_CopyToBf16)->Apply(channels);
BENCHMARK(BM_Transpose)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Add, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_Add, DType::bf16)->Apply(channels);
BENCHMARK(BM_AddBias)->Apply(channels);
BENCHMARK_TEMPLATE(BM_SumRows, DType::f32)->Apply(channels);
BENCHMARK_TEMPLATE(BM_SumRows, DType::bf16)->Apply(channels);

}  // namespace

int main(int argc, char** argv) {
  std::fprintf(stderr, "bench_copy: %s\n", cuda::status().c_str());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
