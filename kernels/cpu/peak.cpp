// The CPU's fp32 FMA ceiling, measured (kernels/devices.h).
//
// Each thread runs kChains independent multiply-add chains on the widest vectors the processor has, so
// the FMA units never wait on a result: a chain's latency (4 cycles on current x86 cores) times the units
// (2) needs at least 8 chains in flight; 12 leave slack. Nothing is loaded or stored inside the loop.
// Clocks under all-core vector load are what GEMMs see too, which is why the ceiling is measured rather
// than taken from a datasheet.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "kernels/cpu/intrinsics.h"
#include "kernels/devices.h"

namespace tessera {
namespace {

constexpr int kChains = 12;

// Returns something that depends on every chain, so the loop is not optimised away; flops_per_iter says
// how much work one iteration is.
__attribute__((target("avx512f"))) float chains_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(1e-3f * float(j + 1));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
  float sum = 0;
  for (int j = 0; j < kChains; ++j) sum += _mm512_reduce_add_ps(acc[j]);
  return sum;
}

__attribute__((target("avx2,fma"))) float chains_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(1e-3f * float(j + 1));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
  alignas(32) float lanes[8];
  float sum = 0;
  for (int j = 0; j < kChains; ++j) {
    _mm256_store_ps(lanes, acc[j]);
    for (float v : lanes) sum += v;
  }
  return sum;
}

float chains_scalar(int64_t iters) {
  float acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = 1e-3f * float(j + 1);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = __builtin_fmaf(acc[j], 0.999999f, 1e-7f);
  float sum = 0;
  for (float v : acc) sum += v;
  return sum;
}

struct Probe {
  float (*run)(int64_t);
  int lanes;
  const char* name;
};

Probe best_probe() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {chains_avx512, 16, "AVX-512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {chains_avx2, 8, "AVX2"};
  return {chains_scalar, 1, "scalar"};
}

// Seconds for `threads` threads to each run `iters` iterations.
double timed_run(const Probe& probe, int threads, int64_t iters) {
  std::vector<float> sinks(size_t(threads), 0.0f);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) workers.emplace_back([&, t] { sinks[size_t(t)] = probe.run(iters); });
  sinks[0] = probe.run(iters);
  for (auto& w : workers) w.join();
  volatile float keep = sinks[0];  // the results are used: the loops stay
  (void)keep;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

CpuPeak cpu_fma_peak(int threads, double seconds) {
  threads = std::max(threads, 1);
  const Probe probe = best_probe();
  // Calibrate on one short run, then size the measured runs to `seconds` and keep the fastest of three
  // (the one least disturbed by other processes).
  int64_t iters = 1 << 16;
  double t = timed_run(probe, threads, iters);
  while (t < 0.01) t = timed_run(probe, threads, iters *= 4);
  iters = std::max<int64_t>(1, int64_t(double(iters) * seconds / 3 / t));
  double best = 1e300;
  for (int r = 0; r < 3; ++r) best = std::min(best, timed_run(probe, threads, iters));
  const double flops = 2.0 * double(probe.lanes) * kChains * double(iters) * threads;
  return CpuPeak{flops / best, probe.name};
}

}  // namespace tessera
