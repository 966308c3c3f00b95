// conv2d on the GPU at the CvT / ViT shapes, batch 64, f32 and bf16:
//   e1  7×7/4 pad 2, 3→64 at 224²      (CvT stage-1 embedding)
//   e2  3×3/2 pad 1, 64→192 at 56²     (stage-2 embedding)
//   e3  3×3/2 pad 1, 192→384 at 28²    (stage-3 embedding)
//   vit 16×16/16, 3→768 at 224²        (ViT-B/16 patchify)
//   d1  depthwise 3×3/1 pad 1, C=64 at 56²; d3 depthwise 3×3/1 pad 1, C=384 at 14² (q/k/v projections)
//
//   Forward / FwdBwd   tessera's conv2d (+ conv2d_backward with dx, dweight, dbias)
//   Cudnn / CudnnFwdBwd cuDNN's legacy API, algorithms picked once per shape by cudnnFind*Algorithm
//                      (workspace from tessera's caching allocator): the ceiling
//   Naive              one thread per output element, a direct loop over Cin·kh·kw: the floor
// "TFLOP/s" counts 2·N·Cout·Ho·Wo·(Cin/groups)·kh·kw per pass (backward = 2 passes: dx and dweight).
// f32 runs under MatmulPrecision::High (tf32), cuDNN f32 with CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION to
// match. CUDA-event timing on tessera's stream (bench/cuda_timing.h). Without a usable GPU every benchmark
// reports why and the program exits 0. Built without cuDNN (TESSERA_BENCH_CUDNN undefined) the cuDNN
// baselines are absent.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#ifdef TESSERA_BENCH_CUDNN
#include "bench/cudnn_util.h"
#endif
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"
#include "kernels/cuda/conv_math.h"
#include "kernels/cuda/device_math.cuh"

using namespace tessera;

namespace {

struct Case { const char* name; int64_t Cin, Cout, H, k, s, p, groups; };
const Case kCases[] = {
    {"e1", 3, 64, 224, 7, 4, 2, 1},    {"e2", 64, 192, 56, 3, 2, 1, 1}, {"e3", 192, 384, 28, 3, 2, 1, 1},
    {"vit", 3, 768, 224, 16, 16, 0, 1}, {"d1", 64, 64, 56, 3, 1, 1, 64}, {"d3", 384, 384, 14, 3, 1, 1, 384},
};
constexpr int64_t kBatch = 64;

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}

struct Problem {
  Case c;
  DType dt;
  int64_t Ho;
  Conv2dArgs a;
  Tensor x, w, b, y, dy, dx, dw, db;
  Problem(const Case& cc, DType d) : c(cc), dt(d), Ho(cuda::conv::out_size(cc.H, cc.k, cc.s, cc.p)) {
    a.stride_h = a.stride_w = c.s;
    a.pad_h = a.pad_w = c.p;
    a.groups = c.groups;
    Generator g(7);
    x = g.uniform({kBatch, c.Cin, c.H, c.H}, -1, 1, dt, Device::CUDA);
    w = g.uniform({c.Cout, c.Cin / c.groups, c.k, c.k}, -0.1, 0.1, dt, Device::CUDA);
    b = g.uniform({c.Cout}, -0.1, 0.1, dt, Device::CUDA);
    y = Tensor::empty({kBatch, c.Cout, Ho, Ho}, dt, Device::CUDA);
    dy = g.uniform({kBatch, c.Cout, Ho, Ho}, -1, 1, dt, Device::CUDA);
    dx = Tensor::empty(x.shape(), dt, Device::CUDA);
    dw = Tensor::empty(w.shape(), dt, Device::CUDA);
    db = Tensor::empty({c.Cout}, dt, Device::CUDA);
  }
  double flops_per_pass() const {
    return 2.0 * double(kBatch * c.Cout * Ho * Ho) * double((c.Cin / c.groups) * c.k * c.k);
  }
};

void finish(benchmark::State& state, double total_s, double flops_per_iter) {
  state.counters["TFLOP/s"] = total_s > 0 ? flops_per_iter * double(state.iterations()) / total_s / 1e12 : 0.0;
  cuda::synchronize();
  cuda::empty_cache();
}

struct PrecisionHigh {  // f32 convs may use tf32, as the training recipe does
  MatmulPrecision saved = matmul_precision();
  PrecisionHigh() { set_matmul_precision(MatmulPrecision::High); }
  ~PrecisionHigh() { set_matmul_precision(saved); }
};

template <DType DT> void BM_Forward(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  PrecisionHigh ph;
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] { cuda_backend().conv2d(P.x, P.w, P.b, P.a, P.y); });
  finish(state, t, P.flops_per_pass());
}

template <DType DT> void BM_FwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  PrecisionHigh ph;
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] {
    cuda_backend().conv2d(P.x, P.w, P.b, P.a, P.y);
    cuda_backend().conv2d_backward(P.dy, P.x, P.w, P.a, P.dx, P.dw, P.db);
  });
  finish(state, t, 3 * P.flops_per_pass());
}

// The floor: one thread per output element, fp32 accumulation, no reuse beyond what the caches give.
template <typename T>
__global__ void naive_conv(const T* x, const T* w, const T* b, T* y, int64_t N, int64_t Cin, int64_t H,
                           int64_t Cout, int64_t Ho, int64_t k, int64_t s, int64_t p, int64_t groups) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * Cout * Ho * Ho) return;
  const int64_t ow = idx % Ho, oh = idx / Ho % Ho, co = idx / (Ho * Ho) % Cout, n = idx / (Ho * Ho * Cout);
  const int64_t Cg = Cin / groups, c0 = co / (Cout / groups) * Cg;
  float acc = cuda::load(b[co]);
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t ih = oh * s - p + i, iw = ow * s - p + j;
        if (ih >= 0 && ih < H && iw >= 0 && iw < H)
          acc += cuda::load(w[((co * Cg + c) * k + i) * k + j]) * cuda::load(x[((n * Cin + c0 + c) * H + ih) * H + iw]);
      }
  y[idx] = cuda::store<T>(acc);
}

template <DType DT> void BM_Naive(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  using T = std::conditional_t<DT == DType::bf16, bf16_t, float>;
  Problem P(kCases[state.range(0)], DT);
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
  const Case& c = P.c;
  const double t = bench::time_iterations(state, [&] {
    naive_conv<T><<<unsigned((P.y.numel() + 255) / 256), 256, 0, stream>>>(
        static_cast<const T*>(P.x.raw_data()), static_cast<const T*>(P.w.raw_data()),
        static_cast<const T*>(P.b.raw_data()), static_cast<T*>(P.y.raw_data()), kBatch, c.Cin, c.H, c.Cout, P.Ho,
        c.k, c.s, c.p, c.groups);
    TS_CUDA_CHECK_LAUNCH();
  });
  finish(state, t, P.flops_per_pass());
}

#ifdef TESSERA_BENCH_CUDNN

bench::CudnnConv::Shape cudnn_shape(const Problem& P) {
  const Case& c = P.c;
  return {kBatch, c.Cin, c.H, c.H, c.Cout, c.k, c.s, c.p, c.groups, P.dt, /*nhwc_output=*/false};
}

template <DType DT> void BM_Cudnn(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Problem P(kCases[state.range(0)], DT);
  bench::CudnnConv conv(cudnn_shape(P));
  const double t = bench::time_iterations(state, [&] { conv.forward(P.x, P.w, P.b, P.y); });
  finish(state, t, P.flops_per_pass());
}
template <DType DT> void BM_CudnnFwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Problem P(kCases[state.range(0)], DT);
  bench::CudnnConv conv(cudnn_shape(P));
  const double t = bench::time_iterations(state, [&] {
    conv.forward(P.x, P.w, P.b, P.y);
    conv.backward(P.x, P.w, P.dy, P.dx, P.dw, P.db);
  });
  finish(state, t, 3 * P.flops_per_pass());
}
#endif

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgName("case");  // index into kCases: 0 e1, 1 e2, 2 e3, 3 vit, 4 d1, 5 d3
  for (int64_t i = 0; i < int64_t(std::size(kCases)); ++i) b->Arg(i);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_Naive, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Naive, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Forward, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Forward, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_FwdBwd, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_FwdBwd, DType::bf16)->Apply(shapes);
#ifdef TESSERA_BENCH_CUDNN
BENCHMARK_TEMPLATE(BM_Cudnn, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Cudnn, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_CudnnFwdBwd, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_CudnnFwdBwd, DType::bf16)->Apply(shapes);
#endif

}  // namespace

int main(int argc, char** argv) {
  std::fprintf(stderr, "bench_conv: %s\n", cuda::status().c_str());
#ifndef TESSERA_BENCH_CUDNN
  std::fprintf(stderr, "bench_conv: built without cuDNN, no cuDNN baseline\n");
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
