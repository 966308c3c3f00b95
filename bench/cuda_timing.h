// Timing GPU work for Google Benchmark: CUDA events recorded on tessera's stream around each iteration
// (host wall-clock would time the launches, not the kernels). Benchmarks using it call UseManualTime().
#pragma once
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <functional>

#include "engine/core/cuda.h"
#include "engine/core/cuda_check.h"

namespace tessera::bench {

// Runs `body` once to warm up (kernel loading, shared-memory attributes, library handles, the allocator),
// then once per benchmark iteration between two events, reporting each iteration's GPU time. Returns the
// total measured seconds.
inline double time_iterations(benchmark::State& state, const std::function<void()>& body) {
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
  body();
  TS_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  TS_CUDA_CHECK(cudaEventCreate(&start));
  TS_CUDA_CHECK(cudaEventCreate(&stop));
  double total_s = 0;
  for (auto _ : state) {
    TS_CUDA_CHECK(cudaEventRecord(start, stream));
    body();
    TS_CUDA_CHECK(cudaEventRecord(stop, stream));
    TS_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    TS_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(double(ms) / 1e3);
    total_s += double(ms) / 1e3;
  }
  TS_CUDA_CHECK(cudaEventDestroy(start));
  TS_CUDA_CHECK(cudaEventDestroy(stop));
  return total_s;
}

}  // namespace tessera::bench
