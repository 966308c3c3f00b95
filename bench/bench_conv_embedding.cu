// Convolutional token embedding (conv + bias + LayerNorm over C + the change to tokens) at CvT's three
// embeddings, batch 64, bf16 and f32:
//   e1  7×7/4 pad 2, 3→64 at 224²   e2  3×3/2 pad 1, 64→192 at 56²   e3  3×3/2 pad 1, 192→384 at 28²
//
//   Fused / FusedFwdBwd        CudaBackend::conv_embedding (+ _backward with every gradient)
//   Composed / ComposedFwdBwd  the base-class composition on the CUDA backend (conv2d → copy → layer_norm;
//                              layer_norm_backward → copy → conv2d_backward), called as
//                              cuda_backend().Backend::conv_embedding(...)
//   Cudnn / CudnnFwdBwd        the library baseline: cuDNN convolution (algorithms from cudnnFind*, bias
//                              by cudnnAddTensor) writing its output NHWC — which IS the token layout, so no
//                              transpose is charged to it — then tessera's layer_norm kernel; backward:
//                              tessera's layer_norm_backward, then cuDNN backward data/filter/bias on NHWC dy
// Counters: "TFLOP/s" = 2·N·C·Ho·Wo·Cin·k² per conv pass (fwd+bwd: 3 passes); "GB/s" = the compulsory
// bytes of the op (forward: x, weight, pre_norm, tokens, 8 B of statistics per token; backward adds
// dtokens, pre_norm, x, weight reads and dx, dweight writes) over the time: the same numerator for every
// variant, so it ranks them as the time does and says how far each is from the HBM ceiling. f32 runs
// under MatmulPrecision::High (tf32) and cuDNN with CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION; the fused f32
// kernel is plain fp32 FMA. CUDA-event timing on tessera's stream (bench/cuda_timing.h). Without a usable
// GPU every benchmark reports why and the program exits 0; built without cuDNN the baseline is absent.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#ifdef TESSERA_BENCH_CUDNN
#include "bench/cudnn_util.h"
#endif
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"

using namespace tessera;

namespace {

struct Case { const char* name; int64_t Cin, C, H, k, s, p; };
const Case kCases[] = {{"e1", 3, 64, 224, 7, 4, 2}, {"e2", 64, 192, 56, 3, 2, 1}, {"e3", 192, 384, 28, 3, 2, 1}};
constexpr int64_t kBatch = 64;
constexpr double kEps = 1e-5;

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}

double bytes_of(const Tensor& t) { return double(t.numel()) * double(dtype_size(t.dtype())); }

struct Problem {
  Case c;
  DType dt;
  int64_t Ho, P;
  Conv2dArgs a;
  Tensor x, w, b, lw, lb, tokens, pre, mean, rstd, dtok, dx, dw, db, dlw, dlb;
  Problem(const Case& cc, DType d) : c(cc), dt(d), Ho((cc.H + 2 * cc.p - cc.k) / cc.s + 1), P(Ho * Ho) {
    a.stride_h = a.stride_w = c.s;
    a.pad_h = a.pad_w = c.p;
    const DType sdt = DType::f32;
    Generator g(7);
    x = g.uniform({kBatch, c.Cin, c.H, c.H}, -1, 1, dt, Device::CUDA);
    w = g.uniform({c.C, c.Cin, c.k, c.k}, -0.1, 0.1, dt, Device::CUDA);
    b = g.uniform({c.C}, -0.1, 0.1, dt, Device::CUDA);
    lw = g.uniform({c.C}, 0.5, 1.5, dt, Device::CUDA);
    lb = g.uniform({c.C}, -0.1, 0.1, dt, Device::CUDA);
    tokens = Tensor::empty({kBatch, P, c.C}, dt, Device::CUDA);
    pre = Tensor::empty({kBatch, P, c.C}, dt, Device::CUDA);
    mean = Tensor::empty({kBatch * P}, sdt, Device::CUDA);
    rstd = Tensor::empty({kBatch * P}, sdt, Device::CUDA);
    dtok = g.uniform({kBatch, P, c.C}, -1, 1, dt, Device::CUDA);
    dx = Tensor::empty(x.shape(), dt, Device::CUDA);
    dw = Tensor::empty(w.shape(), dt, Device::CUDA);
    db = Tensor::empty({c.C}, dt, Device::CUDA);
    dlw = Tensor::empty({c.C}, dt, Device::CUDA);
    dlb = Tensor::empty({c.C}, dt, Device::CUDA);
  }
  double flops_per_pass() const { return 2.0 * double(kBatch * c.C * P) * double(c.Cin * c.k * c.k); }
  double forward_bytes() const {
    return bytes_of(x) + bytes_of(w) + bytes_of(pre) + bytes_of(tokens) + 8.0 * double(kBatch * P);
  }
  double backward_bytes() const {
    return bytes_of(dtok) + bytes_of(pre) + bytes_of(x) + bytes_of(w) + bytes_of(dx) + bytes_of(dw) +
           8.0 * double(kBatch * P);
  }
  void forward() { cuda_backend().conv_embedding(x, w, b, a, lw, lb, kEps, tokens, pre, mean, rstd); }
  void backward() {
    cuda_backend().conv_embedding_backward(dtok, x, w, a, pre, lw, mean, rstd, dx, dw, db, dlw, dlb);
  }
  void composed_forward() {
    cuda_backend().Backend::conv_embedding(x, w, b, a, lw, lb, kEps, tokens, pre, mean, rstd);
  }
  void composed_backward() {
    cuda_backend().Backend::conv_embedding_backward(dtok, x, w, a, pre, lw, mean, rstd, dx, dw, db, dlw, dlb);
  }
};

void finish(benchmark::State& state, double total_s, double flops, double bytes) {
  const double it = double(state.iterations());
  state.counters["TFLOP/s"] = total_s > 0 ? flops * it / total_s / 1e12 : 0.0;
  state.counters["GB/s"] = total_s > 0 ? bytes * it / total_s / 1e9 : 0.0;
  cuda::synchronize();
  cuda::empty_cache();
}

struct PrecisionHigh {  // f32 convs may use tf32, as the training recipe does
  MatmulPrecision saved = matmul_precision();
  PrecisionHigh() { set_matmul_precision(MatmulPrecision::High); }
  ~PrecisionHigh() { set_matmul_precision(saved); }
};

template <DType DT> void BM_Fused(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] { P.forward(); });
  finish(state, t, P.flops_per_pass(), P.forward_bytes());
}
template <DType DT> void BM_FusedFwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  PrecisionHigh ph;  // the backward's conv2d_backward is cuBLAS
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] { P.forward(); P.backward(); });
  finish(state, t, 3 * P.flops_per_pass(), P.forward_bytes() + P.backward_bytes());
}
template <DType DT> void BM_Composed(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  PrecisionHigh ph;
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] { P.composed_forward(); });
  finish(state, t, P.flops_per_pass(), P.forward_bytes());
}
template <DType DT> void BM_ComposedFwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  PrecisionHigh ph;
  Problem P(kCases[state.range(0)], DT);
  const double t = bench::time_iterations(state, [&] { P.composed_forward(); P.composed_backward(); });
  finish(state, t, 3 * P.flops_per_pass(), P.forward_bytes() + P.backward_bytes());
}

#ifdef TESSERA_BENCH_CUDNN

// The library baseline: cuDNN's convolution writing tokens (NHWC output: no transpose charged), then
// tessera's layer norm over channels; backward the other way round.
struct CudnnEmbedding {
  bench::CudnnConv conv;
  Tensor image, dimage;  // [N, P, C]: the convolution's output and its gradient
  explicit CudnnEmbedding(Problem& P)
      : conv({kBatch, P.c.Cin, P.c.H, P.c.H, P.c.C, P.c.k, P.c.s, P.c.p, 1, P.dt, /*nhwc_output=*/true}),
        image(Tensor::empty({kBatch, P.P, P.c.C}, P.dt, Device::CUDA)),
        dimage(Tensor::empty({kBatch, P.P, P.c.C}, P.dt, Device::CUDA)) {}
  void forward(Problem& P) {
    conv.forward(P.x, P.w, P.b, image);
    Tensor rows = P.tokens.reshape({kBatch * P.P, P.c.C});
    cuda_backend().layer_norm(image.reshape({kBatch * P.P, P.c.C}), P.lw, P.lb, kEps, rows, P.mean, P.rstd);
  }
  void backward(Problem& P) {
    Tensor drows = dimage.reshape({kBatch * P.P, P.c.C});
    cuda_backend().layer_norm_backward(P.dtok.reshape({kBatch * P.P, P.c.C}), image.reshape({kBatch * P.P, P.c.C}),
                                       P.lw, P.mean, P.rstd, drows, P.dlw, P.dlb);
    conv.backward(P.x, P.w, dimage, P.dx, P.dw, P.db);
  }
};

template <DType DT> void BM_Cudnn(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Problem P(kCases[state.range(0)], DT);
  CudnnEmbedding base(P);
  const double t = bench::time_iterations(state, [&] { base.forward(P); });
  finish(state, t, P.flops_per_pass(), P.forward_bytes());
}
template <DType DT> void BM_CudnnFwdBwd(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Problem P(kCases[state.range(0)], DT);
  CudnnEmbedding base(P);
  const double t = bench::time_iterations(state, [&] { base.forward(P); base.backward(P); });
  finish(state, t, 3 * P.flops_per_pass(), P.forward_bytes() + P.backward_bytes());
}
#endif

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgName("case");  // index into kCases: 0 e1, 1 e2, 2 e3
  for (int64_t i = 0; i < int64_t(std::size(kCases)); ++i) b->Arg(i);
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_Fused, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Fused, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Composed, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Composed, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_FusedFwdBwd, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_FusedFwdBwd, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ComposedFwdBwd, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_ComposedFwdBwd, DType::f32)->Apply(shapes);
#ifdef TESSERA_BENCH_CUDNN
BENCHMARK_TEMPLATE(BM_Cudnn, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_Cudnn, DType::f32)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_CudnnFwdBwd, DType::bf16)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_CudnnFwdBwd, DType::f32)->Apply(shapes);
#endif

}  // namespace

int main(int argc, char** argv) {
  std::fprintf(stderr, "bench_conv_embedding: %s\n", cuda::status().c_str());
#ifndef TESSERA_BENCH_CUDNN
  std::fprintf(stderr, "bench_conv_embedding: built without cuDNN, no cuDNN baseline\n");
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
