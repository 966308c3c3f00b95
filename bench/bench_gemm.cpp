// CPU GEMM playground: tessera's packed, multithreaded GEMM in fp32 and in bf16 (the processor's AVX512-BF16
// dot products, and the same operands widened to fp32: the fallback) against a naive triple loop (the
// floor), on shapes the models use. Reports GFLOP/s (2·M·N·K per product). The CUDA GEMMs are cuBLAS itself and
// are measured with the CUDA kernels.
//   build/bin/bench_gemm [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/parallel.h"
#include "kernels/devices.h"

using namespace tessera;

namespace {

void set_flops(benchmark::State& state, int64_t M, int64_t N, int64_t K) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(double(2 * M * N * K) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["threads"] = num_threads();
}

enum class Kind { fp32, bf16_dot, bf16_widened };

// Sets the bf16 kernel for the benchmark; false (and a skip) where the processor lacks the dot products.
bool use(benchmark::State& state, Kind kind) {
  set_cpu_bf16_dot_products(kind != Kind::bf16_widened);
  if (kind == Kind::bf16_dot && !cpu_bf16_dot_products()) {
    state.SkipWithError("this processor lacks AVX512-BF16");
    return false;
  }
  return true;
}

// A linear layer's products: the forward y [M, N] = x [M, K]·Wᵀ, the weight stored [N, K] = [out, in] and used
// transposed (no copy); with `data_grad`, a backward's dX [M, N] = dY [M, K]·W for a weight stored [K, N] =
// [out, in], read as stored (B's rows contiguous: another packing path).
template <Kind kind, bool data_grad = false> void BM_tessera_gemm(benchmark::State& state) {
  if (!use(state, kind)) return;
  int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const DType dt = kind == Kind::fp32 ? DType::f32 : DType::bf16;
  Generator gen(1);
  Tensor a = gen.uniform({M, K}).to(dt);
  Tensor b = data_grad ? gen.uniform({K, N}).to(dt) : gen.uniform({N, K}).to(dt).transpose(0, 1);
  for (auto _ : state) benchmark::DoNotOptimize(matmul(a, b).raw_data());
  set_flops(state, M, N, K);
}

// A weight gradient: dW [out, in] = dYᵀ·X over every token of a batch ({M, K, N} = {out, tokens, in}; both
// operands stored [tokens, ·], the first used transposed). Few output tiles, a deep sum.
template <Kind kind> void BM_tessera_gemm_weight_grad(benchmark::State& state) {
  if (!use(state, kind)) return;
  int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const DType dt = kind == Kind::fp32 ? DType::f32 : DType::bf16;
  Generator gen(1);
  Tensor dy = gen.uniform({K, M}).to(dt), x = gen.uniform({K, N}).to(dt);
  Tensor dyt = dy.transpose(0, 1);
  for (auto _ : state) benchmark::DoNotOptimize(matmul(dyt, x).raw_data());
  set_flops(state, M, N, K);
}

// The floor: i-k-j loop order (unit-stride inner loop, which the compiler vectorises), one thread.
void BM_naive_gemm(benchmark::State& state) {
  int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  std::vector<float> a(size_t(M * K), 0.5f), b(size_t(K * N), 0.25f), c(size_t(M * N));
  for (auto _ : state) {
    std::fill(c.begin(), c.end(), 0.f);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) {
        float aik = a[size_t(i * K + k)];
        for (int64_t j = 0; j < N; ++j) c[size_t(i * N + j)] += aik * b[size_t(k * N + j)];
      }
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(state, M, N, K);
}

// {M, K, N}: one ViT-B/16 image's qkv-sized projection (197 tokens, 768→768), its MLP (768→3072),
// CvT-13 stage 1 over one image (3136 tokens, 64→256), cvt-tiny's first stage at 64 px, batch 32 (8192
// tokens: a 32→32 projection and the MLP's 32→128 and 128→32, shallow products), and the squares 512³ and
// 1024³ (the ceiling `tessera bench` reports); a batch of 8 through ViT-B/16's MLP (1,576 tokens, 768→3072
// and 3072→768) and through CvT-13's last stage's (384→1536).
void shapes(benchmark::internal::Benchmark* b) {
  b->Args({197, 768, 768})->Args({197, 768, 3072})->Args({3136, 64, 256})->Args({8192, 32, 32});
  b->Args({8192, 32, 128})->Args({8192, 128, 32})->Args({512, 512, 512})->Args({1024, 1024, 1024});
  b->Args({1576, 768, 3072})->Args({1576, 3072, 768})->Args({1576, 384, 1536});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// {out, tokens, in}: cvt-tiny's first stage at 64 px, batch 32 (8192 tokens of 32 channels, its MLP's 32→128),
// and CvT-13's last stage over a batch of 8 (1,576 tokens: 384→384, and its MLP's 384→1536 and 1536→384).
void weight_grad_shapes(benchmark::internal::Benchmark* b) {
  b->Args({32, 8192, 32})->Args({128, 8192, 32})->Args({384, 1576, 384})->Args({1536, 1576, 384});
  b->Args({384, 1576, 1536});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_tessera_gemm<Kind::fp32>)->Apply(shapes);
BENCHMARK(BM_tessera_gemm<Kind::bf16_dot>)->Apply(shapes);
BENCHMARK(BM_tessera_gemm<Kind::bf16_widened>)->Apply(shapes);
BENCHMARK(BM_tessera_gemm_weight_grad<Kind::fp32>)->Apply(weight_grad_shapes);
BENCHMARK(BM_tessera_gemm_weight_grad<Kind::bf16_dot>)->Apply(weight_grad_shapes);
BENCHMARK(BM_tessera_gemm_weight_grad<Kind::bf16_widened>)->Apply(weight_grad_shapes);
BENCHMARK(BM_tessera_gemm<Kind::fp32, true>)->Apply(shapes);
BENCHMARK(BM_naive_gemm)->Apply(shapes);
BENCHMARK_MAIN();
