// Elementwise ops, reductions, matmul/linear, joining and indexing: forward values on small cases computed
// independently, and the error messages. Their float64 finite-difference gradients are the op registry's
// grad mode (tests/backend_ops.h, tests/test_backend_ops.cpp).
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>

#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/autograd.h"
#include "engine/core/backend.h"
#include "engine/core/parallel.h"
#include "kernels/devices.h"
#include "tests/gradcheck.h"

using namespace tessera;
using namespace tessera::testing;

static Tensor vec(std::vector<double> v, Shape s) { return Tensor::from(v, s, DType::f64); }

TEST_CASE("elementwise forward values and broadcasting") {
  Tensor a = vec({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = vec({10, 20, 30}, {3});
  CHECK(add(a, b).to_vector<double>() == std::vector<double>{11, 22, 33, 14, 25, 36});
  CHECK(sub(a, vec({1, 2}, {2, 1})).to_vector<double>() == std::vector<double>{0, 1, 2, 2, 3, 4});
  CHECK(mul(a, a).to_vector<double>() == std::vector<double>{1, 4, 9, 16, 25, 36});
  CHECK(div(b, vec({10}, {1})).to_vector<double>() == std::vector<double>{1, 2, 3});
  CHECK(maximum(a, vec({3}, {})).to_vector<double>() == std::vector<double>{3, 3, 3, 4, 5, 6});
  CHECK(pow(vec({2, 3}, {2}), vec({3, 2}, {2})).to_vector<double>() == std::vector<double>{8, 9});
  CHECK(affine(a, 2, 1).to_vector<double>()[5] == 13);
  CHECK(clamp(a, 2, 4).to_vector<double>() == std::vector<double>{2, 2, 3, 4, 4, 4});
  CHECK(abs(vec({-2, 0, 3}, {3})).to_vector<double>() == std::vector<double>{2, 0, 3});
  CHECK(add(vec({1, 2}, {2, 1}), vec({10, 20, 30}, {1, 3})).shape() == Shape{2, 3});
  // Transcendentals against the C library, including GELU's exact erf form: GELU(1) = Φ(1) = 0.8413447460685429.
  CHECK(gelu(vec({1}, {1})).item() == doctest::Approx(0.8413447460685429).epsilon(1e-15));
  CHECK(gelu(vec({-3}, {1})).item() == doctest::Approx(-3 * 0.5 * std::erfc(3 / std::sqrt(2.0))).epsilon(1e-14));
  CHECK(exp(vec({1}, {1})).item() == doctest::Approx(M_E).epsilon(1e-15));
  CHECK(tanh(vec({0.5}, {1})).item() == doctest::Approx(std::tanh(0.5)).epsilon(1e-15));
  CHECK(erf(vec({0.5}, {1})).item() == doctest::Approx(std::erf(0.5)).epsilon(1e-15));
  CHECK(std::isnan(log(vec({-1}, {1})).item()));
  // f32 path agrees with f64 to float rounding.
  Generator g(1);
  Tensor x = g.uniform({257}, -3, 3, DType::f64);
  CHECK_CLOSE(gelu(x.to(DType::f32)).to(DType::f64), gelu(x), 1e-6, 1e-6);
  CHECK_CLOSE(tanh(x.to(DType::f32)).to(DType::f64), tanh(x), 1e-6, 1e-6);
}

TEST_CASE("elementwise errors") {
  CHECK_THROWS_WITH_AS(add(Tensor::zeros({2, 3}), Tensor::zeros({4})), doctest::Contains("do not broadcast"),
                       TensorError);
  CHECK_THROWS_WITH_AS(add(Tensor::zeros({2}), Tensor::zeros({2}, DType::f64)), doctest::Contains("dtypes differ"),
                       TensorError);
  CHECK_THROWS_WITH_AS(exp(Tensor::zeros({2}, DType::i64)), doctest::Contains("supports f32 and f64"),
                       TensorError);
}

TEST_CASE("reductions: values") {
  Tensor t = vec({1, 5, 3, 4, 2, 6}, {2, 3});
  CHECK(sum(t).item() == 21);
  CHECK(sum(t, {0}).to_vector<double>() == std::vector<double>{5, 7, 9});
  CHECK(sum(t, {-1}, true).shape() == Shape{2, 1});
  CHECK(mean(t, {1}).to_vector<double>() == std::vector<double>{3, 4});
  CHECK(max(t, {1}).to_vector<double>() == std::vector<double>{5, 6});
  CHECK(max(t).item() == 6);
  CHECK(argmax(t, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 2});
  CHECK(argmax(t, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
  CHECK(argmax(t).item() == 5);
  CHECK(argmax(vec({2, 7, 7, 1}, {4})).item() == 1);  // first maximum
  CHECK(sum(Tensor::zeros({0, 3}, DType::f64), {0}).to_vector<double>() == std::vector<double>{0, 0, 0});
  CHECK_THROWS_WITH_AS(max(Tensor::zeros({0, 3}, DType::f64), {0}), doctest::Contains("empty"), TensorError);
  CHECK_THROWS_WITH_AS(sum(t, {0, 0}), doctest::Contains("repeated"), TensorError);
}

// Naive triple loop in double: the independent reference for GEMM.
static std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t M,
                                        int64_t K, int64_t N) {
  std::vector<double> c(size_t(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) c[size_t(i * N + j)] += a[size_t(i * K + k)] * b[size_t(k * N + j)];
  return c;
}

TEST_CASE("matmul f32 matches a naive loop at edge and blocked sizes, any transposition") {
  Generator gen(9);
  // Sizes straddle the kernel's register tile (12×32 with AVX-512, 6×16 without), its depth block (384),
  // the packing's transposes (16 depths at a time with AVX-512, 8 with AVX2), and its task tiles (96×256);
  // products of up to 32768 multiply-adds run in place instead (gemm_direct), so whole and edge tiles are
  // also sized past that.
  for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{{1, 1, 1},      {1, 7, 1},      {5, 3, 17},
                                                            {6, 16, 16},    {7, 257, 33},   {97, 300, 257},
                                                            {200, 64, 3},   {3, 513, 2},    {16, 200, 64},
                                                            {12, 300, 48},  {9, 130, 95},   {13, 385, 33},
                                                            {25, 769, 70},  {193, 400, 300}, {24, 47, 64}}) {
    Tensor a = gen.uniform({M, K}, -1, 1, DType::f32), b = gen.uniform({K, N}, -1, 1, DType::f32);
    auto ref = naive_matmul(a.to_vector<double>(), b.to_vector<double>(), M, K, N);
    Tensor expect = Tensor::from(ref, {M, N}, DType::f64);
    // fp32 accumulation of K products of magnitude ≤ 1: error ≤ K·2^-24·Σ|a||b| ≲ K²·6e-8 worst case; the
    // typical error grows like √K·2^-24·√K... we bound by 2K·2^-24 absolute (products average 1/9 in size).
    double atol = 2.0 * double(K) * 0x1.0p-24 + 1e-6;
    INFO("M=" << M << " K=" << K << " N=" << N);
    CHECK_CLOSE(matmul(a, b).to(DType::f64), expect, atol, 0);
    // Same product through transposed views (no copy: GEMM's transpose flags).
    Tensor at = a.transpose(0, 1).contiguous().transpose(0, 1), bt = b.transpose(0, 1).contiguous().transpose(0, 1);
    if (M > 1 && K > 1) CHECK_FALSE(at.is_contiguous());
    CHECK_CLOSE(matmul(at, bt).to(DType::f64), expect, atol, 0);
    CHECK_CLOSE(matmul(a, bt).to(DType::f64), expect, atol, 0);
  }
}

// A product's bits must not depend on the thread count: a batch of at least one small matrix a thread runs each
// matrix on one thread, while a matrix alone is spread over the threads, a deep one with few output tiles by
// depth slices (1024 deep) summed in order. Whether the depth is split must follow from the shape alone, or
// the same weight gradient would differ between machines (it did: split on two threads, not on one). Shapes
// deep enough to split (K ≥ 2048) and small enough to run batched (M·N·K < 2^21), A as stored and transposed
// (a weight gradient's dYᵀ), fp32 and bf16 (both kernels). On a single thread both sides run serially.
TEST_CASE("matmul: a matrix alone and in a batch of one a thread give the same bits") {
  Generator gen(19);
  const CpuBf16DotProductsRestorer restore;
  for (const bool dot : {true, false}) {
    set_cpu_bf16_dot_products(dot);
    for (DType dt : {DType::f32, DType::bf16})
      for (auto [M, K, N] : {std::array<int64_t, 3>{5, 2100, 7}, {24, 4100, 16}, {1, 2500, 40}}) {
        if (dt == DType::f32 && !dot) continue;  // the switch only concerns bf16
        const std::string kernel = std::string(dtype_name(dt)) + (dot ? "" : " widened");
        INFO(kernel << " M=" << M << " K=" << K << " N=" << N);
        const Tensor a = gen.uniform({M, K}, -1, 1).to(dt), at = gen.uniform({K, M}, -1, 1).to(dt),
                     b = gen.uniform({K, N}, -1, 1).to(dt);
        const int64_t batch = std::max(2, num_threads());
        auto batched = [&](const Tensor& x) { return concat(std::vector<Tensor>(size_t(batch), x.unsqueeze(0)), 0); };
        for (const bool transposed : {false, true}) {
          const Tensor lhs = transposed ? at.transpose(0, 1) : a;
          const Tensor lhs3 = transposed ? batched(at).transpose(1, 2) : batched(a);
          const Tensor alone = matmul(lhs, b), in_batch = matmul(lhs3, batched(b));
          INFO("transposed A: " << transposed);
          for (int64_t i : {int64_t(0), batch - 1})
            CHECK(in_batch.select(0, i).to_vector<double>() == alone.to_vector<double>());
        }
      }
  }
}

// The CPU's bf16 GEMM through the backend, where the op layer never goes (alpha, beta ≠ 0, a broadcast
// matrix): integers in [-3, 3] make every product and sum exact in fp32 and alpha 0.5, beta −1.5 keep the
// epilogue exact, so the result must equal the exact one rounded once to bf16. Layouts cover both
// transpositions, edge tiles, depth over one panel (512) and K = 0; each runs with the processor's dot
// products (where it has them) and widened.
TEST_CASE("gemm in bf16 on the CPU: exact on integer data, alpha and beta, every layout, both kernels") {
  struct Case { int64_t batch, M, N, K; bool ta, tb, broadcast_b; double alpha, beta; };
  const Case cases[] = {{1, 7, 33, 65, false, false, false, 1, 0},     {1, 33, 70, 65, true, false, false, 0.5, -1.5},
                        {1, 64, 64, 64, false, true, false, 1, 1},      {1, 33, 1023, 7, true, true, false, 1, 0},
                        {3, 17, 40, 123, false, true, true, 0.5, -1.5}, {2, 100, 96, 1000, true, false, false, 1, 1},
                        {2, 5, 6, 0, false, false, false, 1, 0.5}};
  Generator g(62);
  auto ints = [&](const Shape& s) {
    std::vector<double> v = g.uniform(s, 0, 1, DType::f64).to_vector<double>();
    for (double& x : v) x = std::floor(-3 + 7 * x);
    return Tensor::from(v, s, DType::f64);
  };
  const CpuBf16DotProductsRestorer restore;
  for (const bool dot : {true, false}) {
    set_cpu_bf16_dot_products(dot);
    for (const Case& c : cases) {
      INFO((cpu_bf16_dot_products() ? "dot products" : "widened") << ": batch " << c.batch << " M " << c.M << " N "
                                                                    << c.N << " K " << c.K << " ta " << c.ta << " tb "
                                                                    << c.tb << " beta " << c.beta);
      Tensor A = ints({c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K});
      Tensor B = ints({c.broadcast_b ? 1 : c.batch, c.tb ? c.N : c.K, c.tb ? c.K : c.N});
      Tensor C0 = ints({c.batch, c.M, c.N});
      auto run = [&](DType dt) {
        GemmArgs a;
        a.trans_a = c.ta, a.trans_b = c.tb, a.batch = c.batch, a.M = c.M, a.N = c.N, a.K = c.K;
        a.alpha = c.alpha, a.beta = c.beta;
        a.A = A.to(dt), a.B = B.to(dt), a.C = C0.to(dt).clone();  // the f64 run must not write into C0
        a.stride_a = c.M * c.K, a.stride_b = c.broadcast_b ? 0 : c.K * c.N, a.stride_c = c.M * c.N;
        backend(Device::CPU).gemm(a);
        return a.C;
      };
      CHECK(run(DType::bf16).to_vector<double>() == run(DType::f64).to(DType::bf16).to_vector<double>());
    }
  }
}

TEST_CASE("matmul: batches, broadcasting, vectors") {
  Generator gen(2);
  Tensor a = gen.uniform({2, 3, 4, 5}, -1, 1, DType::f64), b = gen.uniform({3, 5, 6}, -1, 1, DType::f64);
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 3, 4, 6});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      auto ref = naive_matmul(a.select(0, i).select(0, j).contiguous().to_vector<double>(),
                              b.select(0, j).contiguous().to_vector<double>(), 4, 5, 6);
      CHECK_CLOSE(c.select(0, i).select(0, j), Tensor::from(ref, {4, 6}, DType::f64), 1e-13, 1e-13);
    }
  CHECK(matmul(vec({1, 2}, {2}), vec({1, 2, 3, 4}, {2, 2})).to_vector<double>() == std::vector<double>{7, 10});
  CHECK(matmul(vec({1, 2, 3, 4}, {2, 2}), vec({1, 2}, {2})).to_vector<double>() == std::vector<double>{5, 11});
  CHECK(matmul(vec({1, 2}, {2}), vec({3, 4}, {2})).item() == 11);
  CHECK_THROWS_WITH_AS(matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 3})), doctest::Contains("inner dims"),
                       TensorError);
  // Batched f32 (the many-small-matrices path) agrees with f64.
  Tensor q = gen.uniform({16, 9, 8}, -1, 1, DType::f32), k = gen.uniform({16, 8, 9}, -1, 1, DType::f32);
  CHECK_CLOSE(matmul(q, k).to(DType::f64), matmul(q.to(DType::f64), k.to(DType::f64)), 1e-5, 0);
}

TEST_CASE("linear: a weight of the wrong width or a bias of the wrong shape is reported") {
  CHECK_THROWS_WITH_AS(linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})), doctest::Contains("in_features"),
                       TensorError);
  // Also with no rows, which skips the fused kernel: a [1] bias must not broadcast its way through.
  for (int64_t rows : {2, 0})
    CHECK_THROWS_WITH_AS(linear(Tensor::zeros({rows, 3}), Tensor::zeros({4, 3}), Tensor::zeros({1})),
                         doctest::Contains("linear: bias"), TensorError);
}

TEST_CASE("concat, split, slice, index_select") {
  Tensor a = vec({1, 2, 3, 4}, {2, 2}), b = vec({5, 6}, {2, 1});
  CHECK(concat({a, b}, 1).to_vector<double>() == std::vector<double>{1, 2, 5, 3, 4, 6});
  CHECK(concat({a, a}, 0).shape() == Shape{4, 2});
  CHECK_THROWS_WITH_AS(concat({a, b}, 0), doctest::Contains("differ outside dim"), TensorError);
  auto parts = split(Tensor::arange(7, DType::f64), 3, 0);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].to_vector<double>() == std::vector<double>{6});
  CHECK_THROWS_WITH_AS(split(a, std::vector<int64_t>{1, 2}, 0), doctest::Contains("add up to 3"), TensorError);
  Tensor idx = Tensor::from(std::vector<int64_t>{2, 0, 2}, {3});
  CHECK(index_select(vec({10, 11, 12, 13, 14, 15}, {3, 2}), 0, idx).to_vector<double>() ==
        std::vector<double>{14, 15, 10, 11, 14, 15});
  CHECK(index_select(vec({10, 11, 12, 13, 14, 15}, {2, 3}), 1, idx).to_vector<double>() ==
        std::vector<double>{12, 10, 12, 15, 13, 15});
  CHECK_THROWS_WITH_AS(index_select(a, 0, Tensor::from(std::vector<int64_t>{2}, {1})),
                       doctest::Contains("index 2 out of range"), TensorError);
}

TEST_CASE("parallel_for covers every index exactly once and propagates exceptions") {
  std::vector<int> hits(10007, 0);
  parallel_for(10007, 3, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) ++hits[size_t(i)]; });
  for (int h : hits) CHECK(h == 1);
  CHECK_THROWS_AS(parallel_for(100, 1, [](int64_t b, int64_t) { if (b > 50) throw std::runtime_error("x"); }),
                  std::runtime_error);
  // Nested regions run serially inside the outer one and still cover their range.
  std::atomic<int> inner{0};
  parallel_for(4, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) parallel_for(3, 1, [&](int64_t b2, int64_t e2) { inner += int(e2 - b2); });
  });
  CHECK(inner == 12);
}

TEST_CASE("with_gradient_hook: the identity, whose hook sees the gradient flowing through it") {
  Tensor x = Tensor::from(std::vector<float>{1, -2, 3}, {3});
  x.set_requires_grad(true);
  std::vector<double> seen;
  int calls = 0;
  const Tensor y = with_gradient_hook(x, [&](const Tensor& g) { seen = g.to_vector<double>(), ++calls; });
  CHECK(y.to_vector<float>() == x.to_vector<float>());
  sum(mul(mul(y, y), 3.0)).backward();  // d/dy = 6y
  CHECK(calls == 1);
  CHECK(seen == std::vector<double>{6, -12, 18});
  CHECK(x.grad().to_vector<double>() == seen);  // passed on unchanged
  {
    NoGradGuard ng;  // nothing recorded: no gradient to see
    const Tensor z = with_gradient_hook(x, [&](const Tensor&) { ++calls; });
    CHECK(z.impl() == x.impl());
  }
  const Tensor c = Tensor::from(std::vector<float>{1}, {1});  // requires no grad: returned as is
  CHECK_FALSE(with_gradient_hook(c, [&](const Tensor&) { ++calls; }).requires_grad());
  CHECK(calls == 1);
  CHECK_THROWS_AS(with_gradient_hook(x, nullptr), TensorError);
}

// A bias's gradient (autograd's sum_to over leading dims) goes to the backend's column_sums: the CPU sums
// down the columns in place, by fixed row blocks; the composite copies to [C, R] and reduces rows. Both
// sum in f64, in different orders: |difference| ≤ 2·R·2^-53·Σ|x| before the one rounding into the dtype,
// so after it they differ by at most that plus one unit in the last place of the result.
TEST_CASE("column_sums: the CPU's in-place sums equal the composite, and sum_to uses them for leading dims") {
  Generator gen(17);
  const std::vector<std::array<int64_t, 2>> shapes = {{0, 3}, {1, 1}, {1, 5}, {7, 1}, {257, 33}, {1000, 64}, {600, 3}};
  for (const DType dt : {DType::f32, DType::f64, DType::bf16})
    for (const auto& [R, C] : shapes) {
      INFO(dtype_name(dt) << " R " << R << " C " << C);
      const Tensor x = gen.uniform({R, C}, -1, 1, DType::f64).to(dt);
      Tensor got = Tensor::empty({C}, dt), want = Tensor::empty({C}, dt);
      backend(Device::CPU).column_sums(x, got);
      backend(Device::CPU).Backend::column_sums(x, want);  // the composite
      const double ulp = dt == DType::bf16 ? 0x1p-8 : dt == DType::f32 ? 0x1p-24 : 0x1p-53;
      const std::vector<double> g = got.to(DType::f64).to_vector<double>(), w = want.to(DType::f64).to_vector<double>();
      const double mass = double(R);  // Σ|x| down a column: |x| ≤ 1
      for (size_t c = 0; c < size_t(C); ++c) CHECK(std::abs(g[c] - w[c]) <= 2.0 * double(R) * 0x1p-53 * mass + 2 * ulp * std::abs(w[c]));
      if (R == 0)
        for (double v : g) CHECK(v == 0.0);
    }
  // sum_to over leading dims and over inner ones, against sum().
  const Tensor g = gen.uniform({4, 5, 6}, -1, 1, DType::f64);
  CHECK_CLOSE(sum_to(g, {6}), sum(g, {0, 1}), 1e-14, 0);
  CHECK_CLOSE(sum_to(g, {1, 1, 6}), sum(g, {0, 1}, true), 1e-14, 0);
  CHECK_CLOSE(sum_to(g, {5, 6}), sum(g, {0}), 1e-14, 0);
  CHECK_CLOSE(sum_to(g, {4, 1, 6}), sum(g, {1}, true), 1e-14, 0);  // an inner dim: the row reduction
  CHECK_CLOSE(sum_to(g.transpose(0, 1), {4, 6}), sum(g.transpose(0, 1), {0}), 1e-14, 0);  // not contiguous
}
