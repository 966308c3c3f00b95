// Every op registry entry (tests/backend_ops.h) at its model shapes (CvT-13, ViT-B/16), on every device
// and dtype it supports: the forward alone (no autograd recording) and forward + backward. CUDA iterations
// are timed with events on tessera's stream (bench/cuda_timing.h); the CPU with wall time. Without a usable
// GPU only the CPU benchmarks are registered.
//   build/bin/bench_ops --benchmark_filter='conv2d' --benchmark_min_time=0.1s
#define DOCTEST_CONFIG_DISABLE  // the registry's header shares the tests' helpers; no test runs here
#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "tests/backend_ops.h"
#ifdef TESSERA_HAS_CUDA
#include "bench/cuda_timing.h"
#endif

using namespace tessera;
using namespace tessera::opreg;

namespace {

void run(benchmark::State& state, const Case& c, Device device, DType dt, bool backward) {
  Generator g(1);
  const std::vector<Tensor> xs = materialise(c.make(g), dt, device, backward);
  Tensor w;
  if (backward) {
    NoGradGuard ng;
    w = Tensor::ones(c.call(xs).shape(), dt, device);
  }
  std::function<void()> body = [&] {
    if (!backward) {
      NoGradGuard ng;
      c.call(xs);
      return;
    }
    for (Tensor x : xs)
      if (x.defined() && x.requires_grad()) x.zero_grad();
    c.call(xs).backward(w);
  };
  try {
#ifdef TESSERA_HAS_CUDA
    if (device == Device::CUDA) {
      bench::time_iterations(state, body);
      return;
    }
#endif
    for (auto _ : state) body();
  } catch (const std::exception& ex) {
    state.SkipWithError(ex.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  std::vector<Device> devices = {Device::CPU};
  if (cuda::available()) devices.push_back(Device::CUDA);
  for (const Entry& e : registry())
    for (const Case& c : e.cases) {
      if (!(c.tags & kModel)) continue;
      for (Device device : devices)
        for (DType dt : device == Device::CPU ? kWide : e.cuda_dtypes)
          for (bool backward : {false, true}) {
            if (backward && !e.differentiable) continue;
            const std::string name = e.name + "/" + c.name + "/" + device_name(device) + "/" + dtype_name(dt) +
                                     (backward ? "/forward+backward" : "/forward");
            auto* b = benchmark::RegisterBenchmark(name.c_str(), [&c, device, dt, backward](benchmark::State& s) {
              run(s, c, device, dt, backward);
            });
            b->Unit(benchmark::kMillisecond);
            // The CPU works on the thread pool: wall time, not the main thread's CPU time, decides the count.
            if (device == Device::CUDA) b->UseManualTime();
            else b->UseRealTime();
          }
    }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
