// Fused attention (kernels/cuda/attention.cu) against baselines in the same binary, on the attention
// layers of CvT-13 and ViT-B/16 at batch 64 (head dim 64):
//   shape 0: CvT stage 1   H=1,  Tq=3136, Tk=784
//   shape 1: CvT stage 2   H=3,  Tq=784,  Tk=196
//   shape 2: CvT stage 3   H=6,  Tq=197,  Tk=50  (cls token + 14² queries, 7² + 1 keys)
//   shape 3: ViT-B/16      H=12, Tq=197,  Tk=197
//
//   Fused        tessera's flash-style forward (bf16 tensor cores, and the fp32 FMA path)
//   FusedFwdBwd  forward + backward (delta, dK/dV pass, dQ pass), bf16
//   Composite    cuBLAS (cublasGemmStridedBatchedEx through the backend's gemm) S = scale·Q·Kᵀ into a
//                materialised [B·H, Tq, Tk] buffer, the backend's softmax kernel, then P·V: what an engine
//                without fusion does; its S round trip through HBM is the cost fusion removes
//   Naive        one thread per query row, two passes over the keys, fp32 math: the floor
//   cuDNN_SDPA_Fwd, cuDNN_SDPA_FwdBwd
//                cuDNN's fused attention (bench/cudnn_attention.h), bf16 in/out, fp32 softmax stats, the
//                training-mode forward (it writes the stats, as Fused does), then the backward. Built on
//                cuDNN's C backend graph API, as cudnn-frontend would build it: the forward as the single
//                SDPA_FWD operation of cuDNN >= 9.13.1, or if that is refused the composite matmul / scale /
//                softmax-with-stats / matmul graph; the backward as the composite graph. Engines from
//                heuristics mode A, the first that finalizes; the label names the graph and engine used.
//                cuDNN's default backward accumulates dQ with atomics (not deterministic, unlike ours).
//                Whatever cuDNN refuses skips the benchmark with "cuDNN SDPA unsupported: <why>". Only
//                built with cuDNN (TESSERA_BENCH_CUDNN); compiled here, not yet run on a GPU.
//
// TFLOP/s counts the matmul FLOPs: forward 4·B·H·Tq·Tk·D (Q·Kᵀ and P·V, 2 FLOPs per MAC), backward 2.5×
// that (FlashAttention's convention, 5 products); our deterministic dQ pass does 7 products, but the
// counter keeps the conventional count so numbers compare with published FA2 figures.
// Method: cudaEvents on tessera's stream around each iteration (manual time), one untimed warm-up, random
// inputs. The largest inputs (shape 0: Q 25 MB bf16) are about L2-sized, so no buffer rotation: K/V
// re-reads from L2 are part of what the kernel is expected to exploit.
// Without a usable GPU every benchmark reports "no CUDA device: <why>" and the program exits 0.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

#include "kernels/devices.h"
#include "bench/cuda_timing.h"
#if TESSERA_BENCH_CUDNN
#include "bench/cudnn_attention.h"
#endif
#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/cuda_check.h"

using namespace tessera;

namespace {

struct Shape4 { int64_t B, H, Tq, Tk, D; };
constexpr Shape4 kShapes[] = {{64, 1, 3136, 784, 64}, {64, 3, 784, 196, 64}, {64, 6, 197, 50, 64}, {64, 12, 197, 197, 64}};

bool skip_without_gpu(benchmark::State& state) {
  if (cuda::available()) return false;
  const std::string why = cuda::status();
  state.SkipWithError((why.rfind("no ", 0) == 0 ? why : "no CUDA device: " + why).c_str());
  return true;
}

// Times op() per iteration with CUDA events; reports TFLOP/s for `flops` per call.
void run(benchmark::State& state, double flops, const std::function<void()>& op) {
  bench::time_iterations(state, op);
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * double(state.iterations()) / 1e12, benchmark::Counter::kIsRate);
}

double fwd_flops(const Shape4& s) { return 4.0 * double(s.B * s.H) * double(s.Tq) * double(s.Tk) * double(s.D); }

struct Inputs {
  Tensor q, k, v, out, lse, dout, dq, dk, dv;
  Inputs(const Shape4& s, DType dt) {
    Generator g(42);
    q = g.uniform({s.B, s.H, s.Tq, s.D}, -1, 1, dt, Device::CUDA);
    k = g.uniform({s.B, s.H, s.Tk, s.D}, -1, 1, dt, Device::CUDA);
    v = g.uniform({s.B, s.H, s.Tk, s.D}, -1, 1, dt, Device::CUDA);
    dout = g.uniform({s.B, s.H, s.Tq, s.D}, -1, 1, dt, Device::CUDA);
    out = Tensor::empty(q.shape(), dt, Device::CUDA);
    lse = Tensor::empty({s.B, s.H, s.Tq}, DType::f32, Device::CUDA);
    dq = Tensor::empty(q.shape(), dt, Device::CUDA);
    dk = Tensor::empty(k.shape(), dt, Device::CUDA);
    dv = Tensor::empty(v.shape(), dt, Device::CUDA);
  }
  ~Inputs() {
    q = k = v = out = lse = dout = dq = dk = dv = Tensor();
    cuda::synchronize();
    cuda::empty_cache();
  }
};

void BM_Fused(benchmark::State& state, DType dt) {
  if (skip_without_gpu(state)) return;
  const Shape4 s = kShapes[state.range(0)];
  Inputs in(s, dt);
  const double scale = 1.0 / std::sqrt(double(s.D));
  run(state, fwd_flops(s), [&] { cuda_backend().attention(in.q, in.k, in.v, scale, in.out, in.lse); });
}
void BM_FusedFwdBwd(benchmark::State& state, DType dt) {
  if (skip_without_gpu(state)) return;
  const Shape4 s = kShapes[state.range(0)];
  Inputs in(s, dt);
  const double scale = 1.0 / std::sqrt(double(s.D));
  run(state, 3.5 * fwd_flops(s), [&] {
    cuda_backend().attention(in.q, in.k, in.v, scale, in.out, in.lse);
    cuda_backend().attention_backward(in.dout, in.q, in.k, in.v, in.out, in.lse, scale, in.dq, in.dk, in.dv);
  });
}

// S = scale·Q·Kᵀ (cuBLAS), softmax over rows, out = P·V (cuBLAS).
void BM_Composite(benchmark::State& state, DType dt) {
  if (skip_without_gpu(state)) return;
  const Shape4 s = kShapes[state.range(0)];
  Inputs in(s, dt);
  const int64_t BH = s.B * s.H;
  Tensor S = Tensor::empty({BH * s.Tq, s.Tk}, dt, Device::CUDA), P = Tensor::empty({BH * s.Tq, s.Tk}, dt, Device::CUDA);
  const double scale = 1.0 / std::sqrt(double(s.D));
  run(state, fwd_flops(s), [&] {
    GemmArgs a;
    a.trans_b = true;
    a.batch = BH; a.M = s.Tq; a.N = s.Tk; a.K = s.D; a.alpha = scale;
    a.A = in.q; a.B = in.k; a.C = S;
    a.stride_a = s.Tq * s.D; a.stride_b = s.Tk * s.D; a.stride_c = s.Tq * s.Tk;
    cuda_backend().gemm(a);
    cuda_backend().softmax(S, P, false);
    GemmArgs b;
    b.batch = BH; b.M = s.Tq; b.N = s.D; b.K = s.Tk;
    b.A = P; b.B = in.v; b.C = in.out;
    b.stride_a = s.Tq * s.Tk; b.stride_b = s.Tk * s.D; b.stride_c = s.Tq * s.D;
    cuda_backend().gemm(b);
  });
  S = P = Tensor();
}

// The floor: thread per query row, fp32, online softmax over all keys read from global memory.
template <int D>
__global__ void naive_attention_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                       __nv_bfloat16* out, int64_t BH, int Tq, int Tk, float scale) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= BH * Tq) return;
  const int64_t bh = r / Tq;
  float qr[D], o[D];
  for (int d = 0; d < D; ++d) { qr[d] = __bfloat162float(q[r * D + d]); o[d] = 0; }
  float m = -INFINITY, l = 0;
  for (int j = 0; j < Tk; ++j) {
    const __nv_bfloat16* kr = k + (bh * Tk + j) * D;
    float sc = 0;
    for (int d = 0; d < D; ++d) sc += qr[d] * __bfloat162float(kr[d]);
    sc *= scale;
    const float mn = fmaxf(m, sc), alpha = expf(m - mn), p = expf(sc - mn);
    l = l * alpha + p;
    const __nv_bfloat16* vr = v + (bh * Tk + j) * D;
    for (int d = 0; d < D; ++d) o[d] = o[d] * alpha + p * __bfloat162float(vr[d]);
    m = mn;
  }
  for (int d = 0; d < D; ++d) out[r * D + d] = __float2bfloat16(o[d] / l);
}
void BM_Naive(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const Shape4 s = kShapes[state.range(0)];
  Inputs in(s, DType::bf16);
  const int64_t rows = s.B * s.H * s.Tq;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::current_stream());
  run(state, fwd_flops(s), [&] {
    naive_attention_kernel<64><<<unsigned((rows + 127) / 128), 128, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(in.q.raw_data()), static_cast<const __nv_bfloat16*>(in.k.raw_data()),
        static_cast<const __nv_bfloat16*>(in.v.raw_data()), static_cast<__nv_bfloat16*>(in.out.raw_data()),
        s.B * s.H, int(s.Tq), int(s.Tk), float(1.0 / std::sqrt(double(s.D))));
    TS_CUDA_CHECK_LAUNCH();
  });
}

#if TESSERA_BENCH_CUDNN
// The same work as Fused / FusedFwdBwd (bf16, training-mode forward writing lse), counted the same way.
// Graph building and engine selection happen once, outside the timing.
void BM_CudnnSdpa(benchmark::State& state, bool backward) {
  if (skip_without_gpu(state)) return;
  const Shape4 s = kShapes[state.range(0)];
  Inputs in(s, DType::bf16);
  const float scale = float(1.0 / std::sqrt(double(s.D)));
  try {
    bench::CudnnSdpaForward fwd({s.B, s.H, s.Tq, s.Tk, s.D}, scale);
    std::optional<bench::CudnnSdpaBackward> bwd;
    if (backward) bwd.emplace(bench::SdpaShape{s.B, s.H, s.Tq, s.Tk, s.D}, scale);
    state.SetLabel("fwd: " + fwd.description() + (bwd ? "; bwd: " + bwd->description() : ""));
    run(state, (backward ? 3.5 : 1.0) * fwd_flops(s), [&] {
      fwd.execute(in.q.raw_data(), in.k.raw_data(), in.v.raw_data(), in.out.raw_data(), in.lse.raw_data());
      if (bwd)
        bwd->execute(in.q.raw_data(), in.k.raw_data(), in.v.raw_data(), in.out.raw_data(), in.lse.raw_data(),
                     in.dout.raw_data(), in.dq.raw_data(), in.dk.raw_data(), in.dv.raw_data());
    });
  } catch (const std::runtime_error& e) {
    state.SkipWithError(("cuDNN SDPA unsupported: " + std::string(e.what())).c_str());
  }
}
#endif

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgName("shape")->DenseRange(0, 3)->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK_CAPTURE(BM_Fused, bf16, DType::bf16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_Fused, f32, DType::f32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_FusedFwdBwd, bf16, DType::bf16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_Composite, bf16, DType::bf16)->Apply(shapes);
BENCHMARK(BM_Naive)->Apply(shapes);
#if TESSERA_BENCH_CUDNN
BENCHMARK_CAPTURE(BM_CudnnSdpa, fwd, false)->Name("cuDNN_SDPA_Fwd")->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudnnSdpa, fwd_bwd, true)->Name("cuDNN_SDPA_FwdBwd")->Apply(shapes);
#endif

int main(int argc, char** argv) {
  std::fprintf(stderr, "bench_attention: %s\n", cuda::status().c_str());
#if !TESSERA_BENCH_CUDNN
  std::fprintf(stderr, "bench_attention: built without cuDNN, no cuDNN SDPA baseline\n");
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
