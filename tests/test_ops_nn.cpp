// Tests of the neural-network ops (engine/ops_nn.cpp over kernels/cpu/nn.cpp): forward values against
// independent direct formulas or hand-computed numbers, batch-norm running statistics, cross-entropy
// options, dropout statistics, and the error messages for bad shapes. Their float64 finite-difference
// gradients are the op registry's grad mode (tests/backend_ops.h, tests/test_backend_ops.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/devices.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/core/parallel.h"
#include "tests/gradcheck.h"

using namespace tessera;
using namespace tessera::testing;

namespace {

Tensor f64(const std::vector<double>& v, const Shape& s) { return Tensor::from(v, s, DType::f64); }
std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }
Tensor i64(const std::vector<int64_t>& v) { return Tensor::from(v, {int64_t(v.size())}, DType::i64); }

// ---------------------------------------------------------------- direct reference formulas
// Softmax along `dim` of a contiguous tensor of shape `s`, straight from the definition.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& s, int64_t dim, bool log) {
  int64_t n = s[size_t(dim)], inner = 1;
  for (size_t i = size_t(dim) + 1; i < s.size(); ++i) inner *= s[i];
  int64_t outer = int64_t(x.size()) / (n * inner);
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t in = 0; in < inner; ++in) {
      auto at = [&](int64_t j) { return size_t((o * n + j) * inner + in); };
      double m = -INFINITY, z = 0;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, x[at(j)]);
      for (int64_t j = 0; j < n; ++j) z += std::exp(x[at(j)] - m);
      for (int64_t j = 0; j < n; ++j) y[at(j)] = log ? x[at(j)] - m - std::log(z) : std::exp(x[at(j)] - m) / z;
    }
  return y;
}

// The direct 7-loop convolution (n, co, oh, ow, ci, i, j) with zero padding and groups.
struct ConvCase {
  int64_t N, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, groups;
  int64_t Ho() const { return (H + 2 * ph - kh) / sh + 1; }
  int64_t Wo() const { return (W + 2 * pw - kw) / sw + 1; }
  Conv2dArgs args() const {
    Conv2dArgs a;
    a.stride_h = sh; a.stride_w = sw; a.pad_h = ph; a.pad_w = pw; a.groups = groups;
    return a;
  }
};
std::vector<double> ref_conv(const ConvCase& c, const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>* b) {
  const int64_t Cg = c.Cin / c.groups, Coutg = c.Cout / c.groups, Ho = c.Ho(), Wo = c.Wo();
  std::vector<double> y(size_t(c.N * c.Cout * Ho * Wo));
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t co = 0; co < c.Cout; ++co)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = b ? (*b)[size_t(co)] : 0.0;
          const int64_t g = co / Coutg;
          for (int64_t cl = 0; cl < Cg; ++cl)
            for (int64_t i = 0; i < c.kh; ++i)
              for (int64_t j = 0; j < c.kw; ++j) {
                const int64_t ih = oh * c.sh - c.ph + i, iw = ow * c.sw - c.pw + j, ci = g * Cg + cl;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                acc += w[size_t(((co * Cg + cl) * c.kh + i) * c.kw + j)] *
                       x[size_t(((n * c.Cin + ci) * c.H + ih) * c.W + iw)];
              }
          y[size_t(((n * c.Cout + co) * Ho + oh) * Wo + ow)] = acc;
        }
  return y;
}

// Attention as the composite softmax(q·kᵀ·scale)·v of engine ops (matmul is the lead's, softmax is tested
// against the definition above).
Tensor ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  return matmul(softmax(mul(matmul(q, k.transpose(-2, -1)), scale), -1), v);
}

}  // namespace

// ================================================================ softmax
TEST_CASE("softmax: hand-computed values, and stability for large logits") {
  // softmax([1,2,3]) = e^(x−3) / Σ e^(x−3), computed in plain double (python float).
  const std::vector<double> p = {0.09003057317038046, 0.24472847105479764, 0.6652409557748218};
  const std::vector<double> lp = {-2.4076059644443806, -1.4076059644443804, -0.4076059644443804};
  CHECK_CLOSE(softmax(f64({1, 2, 3}, {3})), f64(p, {3}), 1e-15, 1e-14);
  CHECK_CLOSE(log_softmax(f64({1, 2, 3}, {3})), f64(lp, {3}), 1e-15, 1e-14);
  // Shifting by 1000 changes nothing mathematically; without the max subtraction exp(1000) overflows.
  // f32: |error| <= a few ulp of values <= 1, so 1e-6 is a generous bound.
  Tensor big = Tensor::from(std::vector<double>{1001, 1002, 1003}, {1, 3}, DType::f32);
  CHECK_CLOSE(softmax(big), f64(p, {1, 3}), 1e-6, 0);
  CHECK_CLOSE(log_softmax(big), f64(lp, {1, 3}), 1e-6, 0);
}

TEST_CASE("softmax / log_softmax over every dim match the definition") {
  Generator gen(1);
  Tensor x = gen.uniform({3, 7, 5}, -3, 3, DType::f64);
  for (int64_t d = 0; d < 3; ++d)
    for (bool log : {false, true}) {
      INFO("dim " << d << " log " << log);
      Tensor y = log ? log_softmax(x, d) : softmax(x, d);
      CHECK(y.shape() == x.shape());
      // f64 with C <= 7 terms: rounding ~1e-16 per op; 1e-14 leaves a 100× margin.
      CHECK_CLOSE(y, f64(ref_softmax(vals(x), x.shape(), d, log), x.shape()), 1e-14, 1e-13);
      // The same in f32: ~1e-7 relative rounding; 1e-6 absolute for values of size <= ~7.
      Tensor y32 = log ? log_softmax(x.to(DType::f32), d - 3) : softmax(x.to(DType::f32), d - 3);
      CHECK_CLOSE(y32, y, 2e-6, 1e-6);
    }
  // A non-contiguous input gives the same result as its contiguous copy.
  Tensor xt = x.transpose(0, 2);
  CHECK_CLOSE(softmax(xt, 1), softmax(xt.contiguous(), 1), 1e-15, 0);
}

// ================================================================ layer norm
TEST_CASE("layer_norm: forward matches the definition (biased variance), with and without affine") {
  Generator gen(3);
  const int64_t rows = 6, C = 7;
  Tensor x = gen.uniform({2, 3, C}, -2, 2, DType::f64);
  // One row far from zero: a one-pass E[x²]−E[x]² would cancel catastrophically here.
  {
    auto v = vals(x);
    for (int64_t c = 0; c < C; ++c) v[size_t(c)] += 1e4;
    x = f64(v, {2, 3, C});
  }
  Tensor w = gen.uniform({C}, 0.5, 1.5, DType::f64), b = gen.uniform({C}, -1, 1, DType::f64);
  const double eps = 1e-5;
  auto xv = vals(x), wv = vals(w), bv = vals(b);
  std::vector<double> ref(xv.size()), ref_plain(xv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mu += xv[size_t(r * C + c)] / C;
    for (int64_t c = 0; c < C; ++c) var += (xv[size_t(r * C + c)] - mu) * (xv[size_t(r * C + c)] - mu) / C;
    for (int64_t c = 0; c < C; ++c) {
      double h = (xv[size_t(r * C + c)] - mu) / std::sqrt(var + eps);
      ref_plain[size_t(r * C + c)] = h;
      ref[size_t(r * C + c)] = h * wv[size_t(c)] + bv[size_t(c)];
    }
  }
  // Normalised values are O(1); f64 rounding of the row with mean 1e4 costs ~1e4·1e-16 / std ≈ 1e-12.
  CHECK_CLOSE(layer_norm(x, w, b, eps), f64(ref, x.shape()), 1e-11, 0);
  CHECK_CLOSE(layer_norm(x, Tensor(), Tensor(), eps), f64(ref_plain, x.shape()), 1e-11, 0);
  // f32 on the rows near zero (the 1e4 row loses ~1e4·6e-8 = 6e-4 to input rounding alone in f32).
  Tensor xs = x.slice(0, 1, 2);
  CHECK_CLOSE(layer_norm(xs.to(DType::f32), w.to(DType::f32), b.to(DType::f32), eps),
              layer_norm(xs, w, b, eps), 1e-5, 0);
}

// ================================================================ conv2d
namespace {
const std::vector<ConvCase> kConvCases = {
    // N Cin H W  Cout kh kw sh sw ph pw groups
    {2, 3, 9, 7, 4, 3, 3, 2, 2, 1, 1, 1},  // plain, kernel 3 stride 2 padding 1 on 9×7
    {2, 4, 9, 7, 6, 3, 3, 2, 2, 1, 1, 2},  // two groups
    {2, 3, 9, 7, 3, 3, 3, 2, 2, 1, 1, 3},  // depthwise (CvT's q/k/v projections)
    {2, 2, 9, 7, 4, 3, 2, 1, 2, 0, 1, 2},  // depthwise with 2 outputs per channel, per-axis stride/padding
    {2, 4, 5, 3, 5, 1, 1, 1, 1, 0, 0, 1},  // 1×1 (pointwise fast path)
    {1, 3, 8, 6, 4, 2, 2, 2, 2, 0, 0, 1},  // non-overlapping patches (ViT's patch embedding, small)
    {1, 4, 6, 5, 4, 3, 3, 1, 1, 1, 1, 2},  // grouped, stride 1, "same" padding
    {1, 2, 4, 2, 2, 3, 3, 1, 3, 2, 2, 1},  // padding 2 > the 2-wide image, stride 3: some taps see only padding
    {1, 2, 4, 2, 2, 3, 3, 1, 3, 2, 2, 2},  // the same, depthwise
};
}  // namespace

TEST_CASE("conv2d: forward matches the direct 7-loop convolution (groups 1 / 2 / depthwise / 1x1)") {
  Generator gen(5);
  for (const ConvCase& c : kConvCases) {
    INFO("Cin " << c.Cin << " Cout " << c.Cout << " k " << c.kh << "x" << c.kw << " groups " << c.groups);
    Tensor x = gen.uniform({c.N, c.Cin, c.H, c.W}, -1, 1, DType::f64);
    Tensor w = gen.uniform({c.Cout, c.Cin / c.groups, c.kh, c.kw}, -1, 1, DType::f64);
    Tensor b = gen.uniform({c.Cout}, -1, 1, DType::f64);
    auto bv = vals(b);
    Tensor y = conv2d(x, w, b, c.args());
    REQUIRE(y.shape() == Shape{c.N, c.Cout, c.Ho(), c.Wo()});
    // <= 37 products of terms in [-1, 1]: f64 error <= 37·1.1e-16 ≈ 4e-15.
    CHECK_CLOSE(y, f64(ref_conv(c, vals(x), vals(w), &bv), y.shape()), 1e-13, 0);
    CHECK_CLOSE(conv2d(x, w, Tensor(), c.args()), f64(ref_conv(c, vals(x), vals(w), nullptr), y.shape()), 1e-13, 0);
    // f32 (the blocked GEMM path): error <= 37 terms · 6e-8 ≈ 2.2e-6, plus input rounding of the same order.
    Tensor y32 = conv2d(x.to(DType::f32), w.to(DType::f32), b.to(DType::f32), c.args());
    CHECK_CLOSE(y32, y, 1e-5, 0);
  }
  // The int overload is the square-args form.
  Generator g2(6);
  Tensor x = g2.uniform({1, 2, 5, 5}, -1, 1, DType::f64), w = g2.uniform({3, 2, 3, 3}, -1, 1, DType::f64);
  Conv2dArgs a;
  a.stride_h = a.stride_w = 2;
  a.pad_h = a.pad_w = 1;
  CHECK(vals(conv2d(x, w, Tensor(), 2, 1, 1)) == vals(conv2d(x, w, Tensor(), a)));
}

TEST_CASE("conv2d: bad shapes are reported with the shapes") {
  Tensor x = Tensor::zeros({2, 3, 9, 7}), w = Tensor::zeros({4, 3, 3, 3});
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 2, 3, 3})), doctest::Contains("weight expects 2 input channels, x has 3"),
                       TensorError);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 1, 3, 3}), Tensor(), 1, 0, 2),
                       doctest::Contains("divisible by groups"), TensorError);
  CHECK_THROWS_WITH_AS(conv2d(Tensor::zeros({3, 9, 7}), w), doctest::Contains("[N, Cin, H, W]"), TensorError);
  CHECK_THROWS_WITH_AS(conv2d(x, w, Tensor::zeros({3})), doctest::Contains("bias must have shape [4]"), TensorError);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 3, 11, 3})), doctest::Contains("larger than the padded"),
                       TensorError);
  CHECK_THROWS_WITH_AS(conv2d(x, w, Tensor(), 0, 0, 1), doctest::Contains("stride >= 1"), TensorError);
  CHECK_THROWS_WITH_AS(conv2d(x, w.to(DType::f64)), doctest::Contains("dtype and device"), TensorError);
}

// ================================================================ bias + GELU
TEST_CASE("bias_gelu equals gelu(x + bias), values, any leading dims") {
  Generator gen(13);
  Tensor x = leaf(gen, {2, 3, 5}, -3, 3), b = leaf(gen, {5});
  CHECK(bias_gelu(x, b).to_vector<double>() == gelu(add(x, b)).to_vector<double>());  // the same kernels
  CHECK_THROWS_WITH_AS(bias_gelu(x, Tensor::zeros({4}, DType::f64)), doctest::Contains("bias_gelu: bias"), TensorError);
}

// The CPU's bf16 backward runs each row in pieces of 256 columns through an fp32 buffer; it must round as
// the per-element rule does: h = bf16(x + bias), dx = bf16(GELU'(h)·dy), dbias = bf16(Σ_rows dx) in double.
// 300 columns make a whole piece and a part one; 37 rows are one block of the column sums, so they run in
// row order, as here. Leaving out either rounding, or the part piece, fails it.
TEST_CASE("bias_gelu_backward in bf16 rounds as the per-element rule, in whole and part pieces of a row") {
  Generator gen(29);
  const int64_t rows = 37, C = 300;
  const Tensor x = gen.uniform({rows, C}, -3, 3).to(DType::bf16), dy = gen.uniform({rows, C}, -2, 2).to(DType::bf16);
  const Tensor bias = gen.uniform({C}, -1, 1).to(DType::bf16);
  Tensor dx = Tensor::empty({rows, C}, DType::bf16), dbias = Tensor::empty({C}, DType::bf16);
  backend(Device::CPU).bias_gelu_backward(dy, x, bias, dx, dbias);
  const std::vector<double> xs = vals(x), bs = vals(bias), got = vals(dx), got_bias = vals(dbias);
  auto bf16 = [](double v) { return double(bf16_to_float(float_to_bf16(float(v)))); };
  // GELU'(h)·dy in fp32 by the CPU's fp32 kernel (the formula the bf16 loop computes in), h rounded here
  std::vector<double> h(size_t(rows * C));
  for (size_t i = 0; i < h.size(); ++i) h[i] = bf16(xs[i] + bs[i % size_t(C)]);
  Tensor g32 = Tensor::empty({rows, C}, DType::f32);
  backend(Device::CPU).binary(BinaryOp::GeluBackward, Tensor::from(h, {rows, C}, DType::f32), dy.to(DType::f32), g32);
  const std::vector<double> g = vals(g32);
  int64_t wrong = 0, wrong_bias = 0;
  std::vector<double> sums(size_t(C), 0.0);
  for (size_t i = 0; i < g.size(); ++i) {
    wrong += got[i] != bf16(g[i]);
    sums[i % size_t(C)] += bf16(g[i]);
  }
  for (int64_t c = 0; c < C; ++c) wrong_bias += got_bias[size_t(c)] != bf16(sums[size_t(c)]);
  CHECK(wrong == 0);
  CHECK(wrong_bias == 0);
}

// ================================================================ conv token embedding
TEST_CASE("conv_embedding equals conv2d, the token layout and layer_norm composed, values") {
  Generator gen(12);
  // CvT's first embedding in miniature (7×7 stride 4 pad 2), a 3×3/2 one, and a patchify (k = stride); the
  // last three from a channels-last x (a later stage's tokens: Backend::conv_embedding_nhwc), which the
  // composed side convolves as an NCHW copy.
  struct Case { int64_t N, Cin, H, W, C, k, stride, pad; bool nhwc; };
  for (const Case& c : {Case{2, 3, 17, 13, 5, 7, 4, 2, false}, Case{1, 4, 9, 9, 6, 3, 2, 1, false},
                        Case{2, 3, 8, 12, 7, 4, 4, 0, false}, Case{2, 5, 9, 7, 6, 3, 2, 1, true},
                        Case{3, 4, 11, 11, 9, 3, 2, 0, true}, Case{1, 3, 6, 10, 4, 7, 4, 2, true}}) {
    INFO("k " << c.k << " stride " << c.stride << " pad " << c.pad << (c.nhwc ? " channels-last" : ""));
    Tensor x = c.nhwc ? leaf(gen, {c.N, c.H, c.W, c.Cin}).permute({0, 3, 1, 2}) : leaf(gen, {c.N, c.Cin, c.H, c.W});
    Tensor w = leaf(gen, {c.C, c.Cin, c.k, c.k}), b = leaf(gen, {c.C});
    Tensor lw = leaf(gen, {c.C}, 0.5, 1.5), lb = leaf(gen, {c.C});
    auto composed = [&](const std::vector<Tensor>& in) {
      Tensor image = conv2d(in[0], in[1], in[2], c.stride, c.pad);
      return layer_norm(image.flatten(2).transpose(1, 2), in[3], in[4], 1e-5);
    };
    auto fused = [&](const std::vector<Tensor>& in) {
      return conv_embedding(in[0], in[1], in[2], c.stride, c.pad, in[3], in[4], 1e-5);
    };
    // The CPU's embedding is one GEMM in the token layout, the composite a GEMM per sample: the K-term conv
    // sums are added in other orders. In f64 a sum of K terms errs by at most (K + 2)·2^-53·Σ|terms| in any
    // order, so the pre-norm values differ by E ≤ 2·(K + 2)·2^-53·S (S the largest Σ|terms|: the conv of |x|,
    // |w|, |b|); the norm moves a token by at most 2·E·rstd·(1 + |x̂|)·|γ| (rstd and x̂ from the composite).
    const std::vector<double> got = fused({x, w, b, lw, lb}).to_vector<double>();
    const std::vector<double> ref = composed({x, w, b, lw, lb}).to_vector<double>();
    const std::vector<double> terms = conv2d(abs(x), abs(w), abs(b), c.stride, c.pad).to_vector<double>();
    const Tensor pre = conv2d(x, w, b, c.stride, c.pad).flatten(2).transpose(1, 2).contiguous();  // [N, P, C]
    const std::vector<double> pv = pre.to_vector<double>(), gamma = lw.to_vector<double>();
    const double E = 2 * double(c.Cin * c.k * c.k + 2) * std::ldexp(1.0, -53) *
                     *std::max_element(terms.begin(), terms.end());
    REQUIRE(got.size() == ref.size());
    for (size_t t = 0; t * size_t(c.C) < ref.size(); ++t) {
      double mu = 0, var = 0;
      for (int64_t ch = 0; ch < c.C; ++ch) mu += pv[t * size_t(c.C) + size_t(ch)] / double(c.C);
      for (int64_t ch = 0; ch < c.C; ++ch) var += std::pow(pv[t * size_t(c.C) + size_t(ch)] - mu, 2) / double(c.C);
      const double rstd = 1 / std::sqrt(var + 1e-5);
      for (int64_t ch = 0; ch < c.C; ++ch) {
        const size_t i = t * size_t(c.C) + size_t(ch);
        const double xhat = (pv[i] - mu) * rstd;
        CHECK(std::abs(got[i] - ref[i]) <= 2 * E * rstd * (1 + std::abs(xhat)) * std::abs(gamma[size_t(ch)]));
      }
    }
  }
  // Only the norm's parameters require grad (a frozen convolution), and a non-contiguous image.
  Tensor x = gen.uniform({2, 9, 9, 3}, -1, 1, DType::f64).permute({0, 3, 1, 2});
  Tensor w = gen.uniform({4, 3, 3, 3}, -1, 1, DType::f64);
  CHECK_THROWS_WITH_AS(conv_embedding(x, w, Tensor(), 2, 1, Tensor::ones({5}, DType::f64), Tensor(), 1e-5),
                       doctest::Contains("conv_embedding: ln_weight"), TensorError);
  CHECK_THROWS_WITH_AS(conv_embedding(x, Tensor::zeros({4, 2, 3, 3}, DType::f64), Tensor(), 2, 1, Tensor(), Tensor(), 1e-5),
                       doctest::Contains("conv_embedding: weight expects"), TensorError);
}

// ================================================================ channels-last depthwise conv and batch norm
// Backend::depthwise_conv2d_nhwc and batch_norm_nhwc: the CPU's own loops against the composite every other
// device falls back to (copies to NCHW, the primitive, copies back), both in f64; and the op layer keeps a
// channels-last input channels-last. Tolerance: each side's sums of L terms err by at most (L + 2)·2^-53 of
// Σ|terms| in any order; |terms| ≤ 1 here (inputs in [-1, 1], weights in [-0.5, 0.5]), so 2·(L + 2)·2^-53·L
// bounds the difference (L: 10 conv terms, or the 3·9·9 = 243 rows of a channel's statistics, whose
// normalised values and gradients stay O(1) at these spreads; factor 4 for the chained formulas).
TEST_CASE("channels-last depthwise conv2d and batch norm equal the NCHW composite, and stay channels-last") {
  Generator gen(21);
  Backend& be = cpu_backend();
  const double u = std::ldexp(1.0, -53);
  auto close = [](const Tensor& a, const Tensor& b, double tol) {
    const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
    INFO("max |difference| " << worst << " tolerance " << tol);
    CHECK(worst <= tol);
  };
  for (auto [stride, pad] : {std::array<int64_t, 2>{1, 1}, {2, 1}, {2, 0}, {3, 2}}) {
    INFO("stride " << stride << " pad " << pad);
    Conv2dArgs a;
    a.stride_h = a.stride_w = stride;
    a.pad_h = a.pad_w = pad;
    a.groups = 5;
    const int64_t Ho = (9 + 2 * pad - 3) / stride + 1, Wo = (8 + 2 * pad - 3) / stride + 1;
    Tensor x = gen.uniform({3, 9, 8, 5}, -1, 1, DType::f64), w = gen.uniform({5, 1, 3, 3}, -0.5, 0.5, DType::f64);
    Tensor b = gen.uniform({5}, -0.5, 0.5, DType::f64), dy = gen.uniform({3, Ho, Wo, 5}, -1, 1, DType::f64);
    Tensor y = Tensor::empty({3, Ho, Wo, 5}, DType::f64), y_ref = Tensor::empty({3, Ho, Wo, 5}, DType::f64);
    be.depthwise_conv2d_nhwc(x, w, b, a, y);
    be.Backend::depthwise_conv2d_nhwc(x, w, b, a, y_ref);
    const double conv_tol = 2 * 12 * u * 10;
    close(y, y_ref, conv_tol);
    std::array<Tensor, 3> got{Tensor::empty(x.shape(), DType::f64), Tensor::empty(w.shape(), DType::f64), Tensor::empty({5}, DType::f64)};
    std::array<Tensor, 3> ref{Tensor::empty(x.shape(), DType::f64), Tensor::empty(w.shape(), DType::f64), Tensor::empty({5}, DType::f64)};
    be.depthwise_conv2d_nhwc_backward(dy, x, w, a, got[0], got[1], got[2]);
    be.Backend::depthwise_conv2d_nhwc_backward(dy, x, w, a, ref[0], ref[1], ref[2]);
    close(got[0], ref[0], conv_tol);
    const double rows = double(3 * Ho * Wo);  // dweight and dbias sum over every output pixel
    close(got[1], ref[1], 2 * (rows + 2) * u * rows);
    close(got[2], ref[2], 2 * (rows + 2) * u * rows);
  }
  for (bool training : {true, false}) {
    INFO((training ? "train" : "eval"));
    Tensor x = gen.uniform({3, 9, 9, 4}, -1, 1, DType::f64), dy = gen.uniform({3, 9, 9, 4}, -1, 1, DType::f64);
    Tensor w = gen.uniform({4}, 0.5, 1.5, DType::f64), b = gen.uniform({4}, -0.5, 0.5, DType::f64);
    auto stats = [&] {
      return std::array<Tensor, 2>{training ? Tensor::empty({4}, DType::f64) : gen.uniform({4}, -0.1, 0.1, DType::f64),
                                   training ? Tensor::empty({4}, DType::f64) : gen.uniform({4}, 1.5, 2.0, DType::f64)};
    };
    std::array<Tensor, 2> s = stats(), s_ref = {s[0].clone(), s[1].clone()};
    Tensor y = Tensor::empty(x.shape(), DType::f64), y_ref = Tensor::empty(x.shape(), DType::f64);
    be.batch_norm_nhwc(x, w, b, s[0], s[1], 1e-5, training, y);
    be.Backend::batch_norm_nhwc(x, w, b, s_ref[0], s_ref[1], 1e-5, training, y_ref);
    const double tol = 4 * 2 * (243 + 2) * u * 243;
    close(s[0], s_ref[0], tol);
    close(s[1], s_ref[1], tol);
    close(y, y_ref, tol);
    std::array<Tensor, 3> got{Tensor::empty(x.shape(), DType::f64), Tensor::empty({4}, DType::f64), Tensor::empty({4}, DType::f64)};
    std::array<Tensor, 3> ref{Tensor::empty(x.shape(), DType::f64), Tensor::empty({4}, DType::f64), Tensor::empty({4}, DType::f64)};
    be.batch_norm_nhwc_backward(dy, x, w, s[0], s[1], training, got[0], got[1], got[2]);
    be.Backend::batch_norm_nhwc_backward(dy, x, w, s_ref[0], s_ref[1], training, ref[0], ref[1], ref[2]);
    for (size_t i = 0; i < 3; ++i) close(got[i], ref[i], tol);
  }
  // The op layer: a channels-last x gives a channels-last y (tokens again without a copy), an NCHW x an NCHW y.
  Tensor tokens = gen.uniform({2, 7 * 6, 5}, -1, 1, DType::f64);             // [N, H·W, C]
  Tensor grid = tokens.transpose(1, 2).reshape({2, 5, 7, 6});               // [N, C, H, W], channels-last
  CHECK(grid.storage() == tokens.storage());
  Tensor w = gen.uniform({5, 1, 3, 3}, -0.5, 0.5, DType::f64);
  Tensor y = conv2d(grid, w, Tensor(), 2, 1, 5);
  CHECK(y.flatten(2).transpose(1, 2).is_contiguous());
  CHECK(conv2d(grid.contiguous(), w, Tensor(), 2, 1, 5).is_contiguous());
  Tensor n = batch_norm2d(y, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true);
  CHECK(n.flatten(2).transpose(1, 2).is_contiguous());
  close(n, batch_norm2d(y.contiguous(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true), 4 * 2 * (24 + 2) * u * 24);  // 2·4·3 rows
}

// The CPU's float depthwise conv runs each row's interior (outputs, or for dx input pixels, whose taps all fall
// inside) along the row with its taps' weights in registers, when the channels come in 16s; other pixels, and
// channel counts that are not, take the per-pixel path. Both must give the same bits: 32 channels (row runs)
// against the same data with a 33rd channel (per pixel), compared on the first 32, over strides, paddings, a
// 2 × 3 kernel and images too small to have an interior.
TEST_CASE("channels-last depthwise conv in float: the row runs give the per-pixel path's bits") {
  Generator gen(23);
  Backend& be = cpu_backend();
  struct Geometry { int64_t H, W, kh, kw, sh, sw, ph, pw; };
  for (const Geometry& c : {Geometry{9, 8, 3, 3, 1, 1, 1, 1}, {9, 8, 3, 3, 2, 2, 1, 1}, {7, 10, 3, 3, 2, 2, 0, 0},
                            {11, 9, 3, 3, 3, 3, 2, 2}, {8, 7, 2, 3, 1, 2, 0, 1}, {2, 3, 3, 3, 1, 1, 1, 1}}) {
    INFO("H " << c.H << " W " << c.W << " kernel " << c.kh << "x" << c.kw << " stride " << c.sh << "," << c.sw
              << " pad " << c.ph << "," << c.pw);
    Conv2dArgs a;
    a.stride_h = c.sh, a.stride_w = c.sw, a.pad_h = c.ph, a.pad_w = c.pw;
    const int64_t Ho = (c.H + 2 * c.ph - c.kh) / c.sh + 1, Wo = (c.W + 2 * c.pw - c.kw) / c.sw + 1;
    const Tensor x = gen.uniform({2, c.H, c.W, 33}, -1, 1, DType::f32), dy = gen.uniform({2, Ho, Wo, 33}, -1, 1, DType::f32);
    const Tensor w = gen.uniform({33, 1, c.kh, c.kw}, -0.5, 0.5, DType::f32), b = gen.uniform({33}, -0.5, 0.5, DType::f32);
    auto first32 = [](const Tensor& t, int64_t dim) { return t.slice(dim, 0, 32).contiguous(); };
    std::array<std::vector<double>, 5> runs;  // y with and without the bias, dx, dweight, dbias of 32 channels
    for (int64_t C : {32, 33}) {
      a.groups = C;
      const Tensor xc = C == 32 ? first32(x, 3) : x, dyc = C == 32 ? first32(dy, 3) : dy;
      const Tensor wc = C == 32 ? first32(w, 0) : w, bc = C == 32 ? first32(b, 0) : b;
      Tensor y = Tensor::empty({2, Ho, Wo, C}, DType::f32), y0 = Tensor::empty({2, Ho, Wo, C}, DType::f32);
      Tensor dx = Tensor::empty(xc.shape(), DType::f32), dw = Tensor::empty(wc.shape(), DType::f32);
      Tensor db = Tensor::empty({C}, DType::f32);
      be.depthwise_conv2d_nhwc(xc, wc, bc, a, y);
      be.depthwise_conv2d_nhwc(xc, wc, Tensor(), a, y0);
      be.depthwise_conv2d_nhwc_backward(dyc, xc, wc, a, dx, dw, db);
      // Every float is exact as a double: equal vectors are equal bits.
      const std::array<std::vector<double>, 5> got{first32(y, 3).to_vector<double>(), first32(y0, 3).to_vector<double>(),
                                                   first32(dx, 3).to_vector<double>(), first32(dw, 0).to_vector<double>(),
                                                   first32(db, 0).to_vector<double>()};
      if (C == 32) runs = got;
      else
        for (size_t i = 0; i < got.size(); ++i) {
          INFO("output " << i << " (y, y without the bias, dx, dweight, dbias)");
          CHECK(got[i] == runs[i]);
        }
    }
  }
}

// Backend::conv_embedding_nhwc and conv_embedding on the CPU (one GEMM per chunk of samples, rows gathered in
// either layout) against the base class's composite (a convolution per sample, a transposing copy, the
// layer norm; its NCHW input made from the channels-last one), forward and backward, all in f64. The last
// case's rows exceed one chunk (P·K = 4096·576 > 2^21: a sample a chunk), so row2im at n0 > 0, dweight's
// accumulation over chunks and its permutation back are checked too. The sides sum each K-term
// convolution and each pixel-sum of dweight/dbias in other orders: with inputs in [-1, 1] and weights in
// [-0.5, 0.5] every summed term is O(1) before the norm, so 2·(L + 2)·2^-53·L bounds each pre-norm
// difference (L the longest sum: K, C or the N·P pixels), and the norm and its backward scale that by at
// most rstd (≤ 1/√eps); factor 4 for the chained formulas.
TEST_CASE("conv_embedding in both layouts equals the per-sample composite, forward and backward") {
  Generator gen(23);
  Backend& be = cpu_backend();
  const double u = std::ldexp(1.0, -53);
  struct Case { int64_t N, Cin, H, W, C, k, stride, pad; };
  for (const Case& c : {Case{2, 5, 9, 7, 6, 3, 2, 1}, Case{3, 4, 11, 11, 9, 3, 2, 0}, Case{1, 3, 6, 10, 4, 7, 4, 2},
                        Case{2, 6, 5, 5, 3, 1, 1, 0}, Case{2, 2, 4, 9, 5, 3, 3, 2}, Case{3, 64, 64, 64, 4, 3, 1, 1}}) {
    INFO("x [" << c.N << "," << c.H << "," << c.W << "," << c.Cin << "] k " << c.k << " stride " << c.stride << " pad " << c.pad);
    Conv2dArgs a;
    a.stride_h = a.stride_w = c.stride;
    a.pad_h = a.pad_w = c.pad;
    const int64_t Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1, Wo = (c.W + 2 * c.pad - c.k) / c.stride + 1, P = Ho * Wo;
    const Tensor x = gen.uniform({c.N, c.H, c.W, c.Cin}, -1, 1, DType::f64), x_nchw = x.permute({0, 3, 1, 2}).contiguous();
    const Tensor w = gen.uniform({c.C, c.Cin, c.k, c.k}, -0.5, 0.5, DType::f64), b = gen.uniform({c.C}, -0.5, 0.5, DType::f64);
    const Tensor lw = gen.uniform({c.C}, 0.5, 1.5, DType::f64), lb = gen.uniform({c.C}, -0.5, 0.5, DType::f64);
    const Tensor dtok = gen.uniform({c.N, P, c.C}, -1, 1, DType::f64);
    auto outputs = [&] {
      return std::array<Tensor, 4>{Tensor::empty({c.N, P, c.C}, DType::f64), Tensor::empty({c.N, P, c.C}, DType::f64),
                                   Tensor::empty({c.N * P}, DType::f64), Tensor::empty({c.N * P}, DType::f64)};
    };
    std::array<Tensor, 4> ref = outputs(), nhwc = outputs(), nchw = outputs();  // tokens, pre_norm, mean, rstd
    be.Backend::conv_embedding(x_nchw, w, b, a, lw, lb, 1e-5, ref[0], ref[1], ref[2], ref[3]);
    be.conv_embedding_nhwc(x, w, b, a, lw, lb, 1e-5, nhwc[0], nhwc[1], nhwc[2], nhwc[3]);
    be.conv_embedding(x_nchw, w, b, a, lw, lb, 1e-5, nchw[0], nchw[1], nchw[2], nchw[3]);
    const std::vector<double> rstd = ref[3].to_vector<double>();
    const double L = double(std::max({c.Cin * c.k * c.k, c.C, c.N * P}));
    const double tol = 4 * 2 * (L + 2) * u * L * std::max(1.0, *std::max_element(rstd.begin(), rstd.end()));
    auto close = [&](const Tensor& got, const Tensor& want) {
      const std::vector<double> g = got.to_vector<double>(), r = want.to_vector<double>();
      REQUIRE(g.size() == r.size());
      double worst = 0;
      for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(g[i] - r[i]));
      INFO("max |difference| " << worst << " tolerance " << tol);
      CHECK(worst <= tol);
    };
    for (size_t i = 0; i < 4; ++i) close(nhwc[i], ref[i]), close(nchw[i], ref[i]);
    auto grads = [&](const Shape& x_shape) {
      return std::array<Tensor, 5>{Tensor::empty(x_shape, DType::f64), Tensor::empty(w.shape(), DType::f64),
                                   Tensor::empty({c.C}, DType::f64), Tensor::empty({c.C}, DType::f64),
                                   Tensor::empty({c.C}, DType::f64)};
    };
    // dx, dweight, dbias, dln_weight, dln_bias; the reference's dx in NCHW, the channels-last one's in NHWC.
    std::array<Tensor, 5> dr = grads(x_nchw.shape()), dg = grads(x.shape()), dn = grads(x_nchw.shape());
    be.Backend::conv_embedding_backward(dtok, x_nchw, w, a, ref[1], lw, ref[2], ref[3], dr[0], dr[1], dr[2], dr[3], dr[4]);
    be.conv_embedding_nhwc_backward(dtok, x, w, a, ref[1], lw, ref[2], ref[3], dg[0], dg[1], dg[2], dg[3], dg[4]);
    be.conv_embedding_backward(dtok, x_nchw, w, a, ref[1], lw, ref[2], ref[3], dn[0], dn[1], dn[2], dn[3], dn[4]);
    close(dg[0].permute({0, 3, 1, 2}), dr[0]);
    close(dn[0], dr[0]);
    for (size_t i = 1; i < 5; ++i) close(dg[i], dr[i]), close(dn[i], dr[i]);
    // Only dweight wanted: the others stay undefined and dweight is the same.
    Tensor none, dw_only = Tensor::empty(w.shape(), DType::f64);
    be.conv_embedding_nhwc_backward(dtok, x, w, a, ref[1], lw, ref[2], ref[3], none, dw_only, none, none, none);
    close(dw_only, dr[1]);
  }
  // The op layer: tokens seen as a channels-last image take the channels-last route and get the same gradient
  // as through an NCHW copy of that image (the composite's route).
  const Tensor values = gen.uniform({2, 7 * 6, 5}, -1, 1, DType::f64);  // [N, H·W, C]
  const Tensor w = gen.uniform({4, 5, 3, 3}, -0.5, 0.5, DType::f64), r = gen.uniform({2, 4 * 3, 4}, -1, 1, DType::f64);
  auto token_grad = [&](bool copy_to_nchw) {
    Tensor tokens = values.clone().set_requires_grad(true);
    Tensor grid = tokens.transpose(1, 2).reshape({2, 5, 7, 6});  // [N, C, H, W], a channels-last view
    if (copy_to_nchw) grid = grid.contiguous();
    sum(conv_embedding(grid, w, Tensor(), 2, 1, Tensor(), Tensor(), 1e-5) * r).backward();
    return tokens.grad();
  };
  const std::vector<double> g = token_grad(false).to_vector<double>(), ref = token_grad(true).to_vector<double>();
  // Only dx is computed (w needs no gradient): sums of C = 4 products into each row, then at most 4 taps
  // overlapping in the scatter; L = 24 (the pixels) bounds both generously.
  const double L = 2 * 4 * 3, tol = 4 * 2 * (L + 2) * u * L;
  for (size_t i = 0; i < g.size(); ++i) CHECK(std::abs(g[i] - ref[i]) <= tol);
}

// ================================================================ batch norm
TEST_CASE("batch_norm2d: hand-computed train step, running statistics and num_batches_tracked") {
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(dtype_name(dt));
    // One channel, values 1,2,3,4 over (N=2, H=1, W=2): mean 2.5, biased var 1.25, unbiased var 5/3.
    Tensor x = Tensor::from(std::vector<double>{1, 2, 3, 4}, {2, 1, 1, 2}, dt);
    Tensor w = Tensor::full({1}, 2.0, dt), b = Tensor::full({1}, 0.5, dt);
    Tensor rm = Tensor::zeros({1}, dt), rv = Tensor::ones({1}, dt), nbt = Tensor::zeros({}, DType::i64);
    Tensor y = batch_norm2d(x, w, b, rm, rv, nbt, true);
    const double s = std::sqrt(1.25 + 1e-5);
    // f32 tolerance: a few ulp of values <= 3.
    const double tol = dt == DType::f64 ? 1e-14 : 1e-6;
    CHECK_CLOSE(y, f64({2 * -1.5 / s + 0.5, 2 * -0.5 / s + 0.5, 2 * 0.5 / s + 0.5, 2 * 1.5 / s + 0.5}, {2, 1, 1, 2}),
                tol, 0);
    // running_mean = 0.9·0 + 0.1·2.5; running_var = 0.9·1 + 0.1·(5/3) (the UNBIASED variance).
    CHECK(rm.item() == doctest::Approx(0.25).epsilon(tol));
    CHECK(rv.item() == doctest::Approx(0.9 + 0.1 * 5.0 / 3.0).epsilon(tol));
    CHECK(nbt.to_vector<int64_t>()[0] == 1);
    // A second step with momentum 0.5 on shifted data (mean 12.5, same variance).
    Tensor x2 = Tensor::from(std::vector<double>{11, 12, 13, 14}, {2, 1, 1, 2}, dt);
    batch_norm2d(x2, w, b, rm, rv, nbt, true, 0.5);
    CHECK(rm.item() == doctest::Approx(0.5 * 0.25 + 0.5 * 12.5).epsilon(tol));
    CHECK(rv.item() == doctest::Approx(0.5 * (0.9 + 0.1 * 5.0 / 3.0) + 0.5 * 5.0 / 3.0).epsilon(tol * 10));
    CHECK(nbt.to_vector<int64_t>()[0] == 2);
    // Eval mode normalises with the running statistics and leaves them alone.
    const double m = rm.item(), v = rv.item();
    Tensor ye = batch_norm2d(x, w, b, rm, rv, nbt, false);
    std::vector<double> expect;
    for (double xi : {1.0, 2.0, 3.0, 4.0}) expect.push_back(2 * (xi - m) / std::sqrt(v + 1e-5) + 0.5);
    CHECK_CLOSE(ye, f64(expect, {2, 1, 1, 2}), tol, 0);
    CHECK(rm.item() == m);
    CHECK(rv.item() == v);
    CHECK(nbt.to_vector<int64_t>()[0] == 2);
  }
  // Undefined running statistics and counter are simply not updated in training.
  Tensor x = Tensor::from(std::vector<double>{1, 2, 3, 4}, {2, 1, 1, 2}, DType::f64);
  CHECK(batch_norm2d(x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true).shape() == x.shape());
}

TEST_CASE("batch_norm2d: train and eval forward match the definition on random data") {
  Generator gen(8);
  const int64_t N = 3, C = 4, H = 5, W = 2, HW = H * W;
  Tensor x = gen.uniform({N, C, H, W}, -2, 3, DType::f64);
  Tensor w = gen.uniform({C}, 0.5, 1.5, DType::f64), b = gen.uniform({C}, -1, 1, DType::f64);
  Tensor rm0 = gen.uniform({C}, -1, 1, DType::f64), rv0 = gen.uniform({C}, 0.5, 2, DType::f64);
  Tensor rm = rm0.clone(), rv = rv0.clone();
  const double eps = 1e-3;
  Tensor y = batch_norm2d(x, w, b, rm, rv, Tensor(), true, 0.1, eps);
  auto xv = vals(x), wv = vals(w), bv = vals(b), rmv = vals(rm0), rvv = vals(rv0);
  std::vector<double> ref(xv.size()), ref_eval(xv.size()), rm_ref(C), rv_ref(C);
  for (int64_t c = 0; c < C; ++c) {
    double mu = 0, var = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < HW; ++p) mu += xv[size_t((n * C + c) * HW + p)] / double(N * HW);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < HW; ++p) {
        double d = xv[size_t((n * C + c) * HW + p)] - mu;
        var += d * d / double(N * HW);
      }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < HW; ++p) {
        size_t i = size_t((n * C + c) * HW + p);
        ref[i] = (xv[i] - mu) / std::sqrt(var + eps) * wv[size_t(c)] + bv[size_t(c)];
        ref_eval[i] = (xv[i] - rmv[size_t(c)]) / std::sqrt(rvv[size_t(c)] + eps) * wv[size_t(c)] + bv[size_t(c)];
      }
    rm_ref[size_t(c)] = 0.9 * rmv[size_t(c)] + 0.1 * mu;
    rv_ref[size_t(c)] = 0.9 * rvv[size_t(c)] + 0.1 * var * double(N * HW) / double(N * HW - 1);
  }
  // Values O(1) in f64; the recovered variance 1/invstd² − eps loses a few ulp of (var + eps).
  CHECK_CLOSE(y, f64(ref, x.shape()), 1e-13, 0);
  CHECK_CLOSE(rm, f64(rm_ref, {C}), 1e-14, 0);
  CHECK_CLOSE(rv, f64(rv_ref, {C}), 1e-13, 0);
  CHECK_CLOSE(batch_norm2d(x, w, b, rm0, rv0, Tensor(), false, 0.1, eps), f64(ref_eval, x.shape()), 1e-13, 0);
  // f32 against f64: a few ulp of O(1) values; the sums run in double.
  Tensor rm32 = rm0.to(DType::f32), rv32 = rv0.to(DType::f32);
  Tensor y32 = batch_norm2d(x.to(DType::f32), w.to(DType::f32), b.to(DType::f32), rm32, rv32, Tensor(), true, 0.1, eps);
  CHECK_CLOSE(y32, y, 2e-6, 0);
  CHECK_CLOSE(rv32, rv, 2e-6, 0);
}

TEST_CASE("batch_norm2d: bad shapes and modes are reported") {
  Tensor x = Tensor::zeros({2, 3, 4, 4});
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({2, 3, 4}), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true),
                       doctest::Contains("[N, C, H, W]"), TensorError);
  CHECK_THROWS_WITH_AS(batch_norm2d(x, Tensor::ones({4}), Tensor(), Tensor(), Tensor(), Tensor(), true),
                       doctest::Contains("weight must have shape [3]"), TensorError);
  CHECK_THROWS_WITH_AS(batch_norm2d(x, Tensor(), Tensor(), Tensor::zeros({2}), Tensor(), Tensor(), true),
                       doctest::Contains("running_mean must have shape [3]"), TensorError);
  CHECK_THROWS_WITH_AS(batch_norm2d(x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), false),
                       doctest::Contains("eval mode needs running_mean"), TensorError);
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({1, 3, 1, 1}), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), true),
                       doctest::Contains("more than 1 value per channel"), TensorError);
}

// ================================================================ attention
TEST_CASE("scaled_dot_product_attention: forward matches matmul + softmax, Tq != Tk, any leading dims") {
  Generator gen(10);
  const double scale = 0.37;
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 5, 4}, {2, 3, 7, 4}},     // [B, H, T, D]
      {{2, 5, 4}, {2, 7, 4}},           // one leading dim
      {{2, 2, 2, 5, 4}, {2, 2, 2, 7, 4}},  // three leading dims
      {{5, 4}, {7, 4}},                 // none
      {{1, 1, 6, 3}, {1, 1, 1, 3}},     // a single key: output = v
  };
  for (const auto& [qs, ks] : cases) {
    INFO("q " << shape_str(qs) << " k " << shape_str(ks));
    Tensor q = gen.uniform(qs, -1, 1, DType::f64), k = gen.uniform(ks, -1, 1, DType::f64),
           v = gen.uniform(ks, -1, 1, DType::f64);
    Tensor y = scaled_dot_product_attention(q, k, v, scale);
    CHECK(y.shape() == qs);
    // f64, sums of <= 7 terms of size <= 1: ~1e-15.
    CHECK_CLOSE(y, ref_attention(q, k, v, scale), 1e-13, 0);
    // f32: scores rounding ~1e-7 relative, outputs are convex combinations of v (|v| <= 1).
    Tensor y32 = scaled_dot_product_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), scale);
    CHECK_CLOSE(y32, y, 2e-6, 0);
  }
}

TEST_CASE("attention kernel: lse is the log-sum-exp of the scaled scores") {
  Generator gen(11);
  const int64_t B = 2, H = 2, Tq = 3, Tk = 5, D = 4;
  const double scale = 0.8;
  Tensor q = gen.uniform({B, H, Tq, D}, -1, 1, DType::f64), k = gen.uniform({B, H, Tk, D}, -1, 1, DType::f64),
         v = gen.uniform({B, H, Tk, D}, -1, 1, DType::f64);
  Tensor out = Tensor::empty({B, H, Tq, D}, DType::f64), lse = Tensor::empty({B, H, Tq}, DType::f64);
  cpu_backend().attention(q, k, v, scale, out, lse);
  auto qv = vals(q), kv = vals(k);
  std::vector<double> ref;
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      double z = 0;
      for (int64_t j = 0; j < Tk; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += qv[size_t((bh * Tq + i) * D + d)] * kv[size_t((bh * Tk + j) * D + d)];
        z += std::exp(scale * s);
      }
      ref.push_back(std::log(z));
    }
  CHECK_CLOSE(lse, f64(ref, {B, H, Tq}), 1e-14, 1e-14);
}

// The CPU's route past 32 keys (blocks of query rows on K and V packed once a head; the backward with fewer
// than two heads a thread on the GEMM route) against the composite's matmuls and softmax, forward and
// backward, one and two heads (the GEMM route's backward) and six (a head per thread task); D = 37 puts the
// backward's rowsum(dO ⊙ O) through two 16-float steps and a tail; 50 queries are one block, 500 are
// blocks of 216 (forward) or 256 (backward) and a part block. Every result is a sum of at most n = Tk + D = 337
// terms (|q|, |k|, |v|, |w| <= 1) whose sizes add up to at most 1 + 2·D·scale < 35 (the probabilities sum
// to 1; |dP − rowsum| <= 2D). Each side errs by at most about n·u·35: f64 ~1.3e-12, bound 1e-11; f32
// (2^-24) ~7e-4, bound 1e-3 — a dropped step of the row sum moves dQ by ~0.1.
TEST_CASE("scaled_dot_product_attention: the CPU's route past 32 keys equals the composite, forward and backward") {
  Generator gen(12);
  for (DType dt : {DType::f64, DType::f32})
    for (auto [B, H, Tq] : {std::array<int64_t, 3>{1, 1, 50}, {3, 2, 50}, {1, 2, 500}, {3, 2, 500}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(B * H);
      CAPTURE(Tq);
      const int64_t Tk = 300, D = 37;
      const Tensor q0 = gen.uniform({B, H, Tq, D}, -1, 1, DType::f64), k0 = gen.uniform({B, H, Tk, D}, -1, 1, DType::f64),
                   v0 = gen.uniform({B, H, Tk, D}, -1, 1, DType::f64), w = gen.uniform({B, H, Tq, D}, -1, 1, DType::f64);
      auto run = [&](bool composite) {
        const DType t = composite ? DType::f64 : dt;
        Tensor q = q0.clone().to(t).set_requires_grad(true), k = k0.clone().to(t).set_requires_grad(true),
               v = v0.clone().to(t).set_requires_grad(true);
        Tensor y = composite ? ref_attention(q, k, v, 0.45) : scaled_dot_product_attention(q, k, v, 0.45);
        sum(y * w.to(t)).backward();
        return std::vector<Tensor>{y.to(DType::f64), q.grad().to(DType::f64), k.grad().to(DType::f64),
                                   v.grad().to(DType::f64)};
      };
      const std::vector<Tensor> route = run(false), composite = run(true);
      for (size_t i = 0; i < route.size(); ++i) {
        CAPTURE(i);
        CHECK_CLOSE(route[i], composite[i], dt == DType::f64 ? 1e-11 : 1e-3, 0);
      }
    }
}

// Which route a head's backward takes depends on the thread count (blocks of query rows with two heads a
// thread or more, the GEMM route's batched products with fewer), so the two must give the same bits, or a
// training run's gradients would differ between machines: one head alone against the same head in a batch of
// two a thread. 600 queries over 300 keys take each route; 2100 queries over 40 keys of 8 channels are a
// product the GEMM splits by depth (gemm_splits_depth), which the blocks do not mirror, so such heads take the
// GEMM route in both (the blocks had taken them and differed). On one thread the batch is 2 heads.
TEST_CASE("scaled_dot_product_attention backward: a head alone and in a batch of heads give the same bits") {
  Generator gen(15);
  for (auto [Tq, Tk, D] : {std::array<int64_t, 3>{600, 300, 8}, {2100, 40, 8}, {50, 300, 37}}) {
    CAPTURE(Tq);
    CAPTURE(Tk);
    const Tensor q0 = gen.uniform({1, 1, Tq, D}, -1, 1), k0 = gen.uniform({1, 1, Tk, D}, -1, 1),
                 v0 = gen.uniform({1, 1, Tk, D}, -1, 1), w0 = gen.uniform({1, 1, Tq, D}, -1, 1);
    auto grads = [&](int64_t heads) {
      auto copies = [&](const Tensor& x) { return concat(std::vector<Tensor>(size_t(heads), x), 0); };
      Tensor q = copies(q0).set_requires_grad(true), k = copies(k0).set_requires_grad(true),
             v = copies(v0).set_requires_grad(true);
      sum(scaled_dot_product_attention(q, k, v, 0.35) * copies(w0)).backward();
      return std::vector<Tensor>{q.grad(), k.grad(), v.grad()};
    };
    const std::vector<Tensor> alone = grads(1), batched = grads(2 * num_threads());
    for (size_t i = 0; i < alone.size(); ++i) {
      CAPTURE(i);
      CHECK(batched[i].select(0, 0).to_vector<float>() == alone[i].select(0, 0).to_vector<float>());
      CHECK(batched[i].select(0, batched[i].size(0) - 1).to_vector<float>() == alone[i].select(0, 0).to_vector<float>());
    }
  }
}

// linear with a residual: the CPU adds it to each finished block of the product (f32) or after the GEMM
// (f64, bf16), rounding once more, so it must equal the same linear without one plus an add, exactly: the
// direct loops (small), blocks over several depth panels, and depth slices. The op layer's gradients equal
// the composite's (the residual's is the output's), and a wrong residual shape is named.
TEST_CASE("linear with a residual equals linear then the add, values and gradients") {
  Generator gen(32);
  Backend& be = cpu_backend();
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (auto [M, N, K] : {std::array<int64_t, 3>{3, 5, 4}, {200, 300, 300}, {9, 17, 2100}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(K);
      const Tensor x = gen.uniform({M, K}, -1, 1).to(dt), w = gen.uniform({N, K}, -1, 1).to(dt),
                   b = gen.uniform({N}, -1, 1).to(dt), r = gen.uniform({M, N}, -4, 4).to(dt);
      Tensor fused = Tensor::empty({M, N}, dt), plain_y = Tensor::empty({M, N}, dt), expected = Tensor::empty({M, N}, dt);
      backend(Device::CPU).linear(x, w, b, r, fused);  // bf16 through the CPU's registered backend
      backend(Device::CPU).linear(x, w, b, Tensor(), plain_y);
      be.binary(BinaryOp::Add, plain_y, r, expected);
      CHECK(fused.to_vector<double>() == expected.to_vector<double>());
    }
  const Tensor x0 = gen.uniform({2, 3, 5}, -1, 1, DType::f64), w = gen.uniform({4, 5}, -1, 1, DType::f64),
               b = gen.uniform({4}, -1, 1, DType::f64), r0 = gen.uniform({2, 3, 4}, -1, 1, DType::f64),
               up = gen.uniform({2, 3, 4}, -1, 1, DType::f64);
  auto grads = [&](bool fused) {
    Tensor x = x0.clone().set_requires_grad(true), r = r0.clone().set_requires_grad(true);
    Tensor y = fused ? linear(x, w, b, r) : add(linear(x, w, b), r);
    sum(y * up).backward();
    return std::vector<std::vector<double>>{vals(y), vals(x.grad()), vals(r.grad())};
  };
  CHECK(grads(true) == grads(false));
  CHECK_THROWS_WITH_AS(linear(x0, w, b, gen.uniform({2, 4, 3}, -1, 1, DType::f64)),
                       doctest::Contains("linear: residual"), TensorError);
}

TEST_CASE("scaled_dot_product_attention: bad shapes are reported") {
  Tensor q = Tensor::zeros({2, 3, 5, 4}), k = Tensor::zeros({2, 3, 7, 4});
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, Tensor::zeros({2, 3, 7, 5}), k, 1.0),
                       doctest::Contains("share the last (head) dim"), TensorError);
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, k, Tensor::zeros({2, 3, 6, 4}), 1.0),
                       doctest::Contains("same number of keys"), TensorError);
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, Tensor::zeros({2, 2, 7, 4}), Tensor::zeros({2, 2, 7, 4}), 1.0),
                       doctest::Contains("leading dims"), TensorError);
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, Tensor::zeros({3, 7, 4}), k, 1.0),
                       doctest::Contains("one rank"), TensorError);
}

// ================================================================ cross-entropy
namespace {
// Logits and targets shared by the cross-entropy cases; the expected losses were computed with a plain-python
// transcription of torch's formula (LossNLL.cpp: nll_loss + cross_entropy_loss_label_smoothing):
// logp = x − logsumexp(x); W = Σ w[y_i]; loss = (1−ε)·Σ −w[y_i]·logp[i,y_i] / W + (ε/C)·Σ_i Σ_c −w_c·logp[i,c] / W.
const std::vector<double> kLogits = {1.0, 2.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 3.0, -2.0, 1.0, 0.5, -0.5, 1.5, 2.5, 0.0};
const std::vector<double> kClassWeights = {1.0, 2.0, 0.5, 1.5};
}  // namespace

TEST_CASE("cross_entropy: values as torch computes them (plain, smoothing, weights, ignore_index, combined)") {
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(dtype_name(dt));
    // f32: the logits are exact; log/exp rounding on O(1) values gives ~1e-7 relative.
    const double tol = dt == DType::f64 ? 1e-14 : 1e-6;
    Tensor x = Tensor::from(kLogits, {4, 4}, dt);
    Tensor w = Tensor::from(kClassWeights, {4}, dt);
    Tensor t = i64({1, 3, 0, 2});
    CrossEntropyOptions o;
    CHECK(cross_entropy(x, t).item() == doctest::Approx(0.622257285011349).epsilon(tol));
    o.label_smoothing = 0.1;
    CHECK(cross_entropy(x, t, o).item() == doctest::Approx(0.7566322850113492).epsilon(tol));
    o = {};
    o.weight = w;
    CHECK(cross_entropy(x, t, o).item() == doctest::Approx(0.6949417004222097).epsilon(tol));
    o = {};
    CHECK(cross_entropy(x, i64({1, 3, -100, 2}), o).item() == doctest::Approx(0.762258564122015).epsilon(tol));
    // All combined, with an ignore_index inside [0, C): targets equal to 0 drop out of both sums and W.
    o.weight = w;
    o.label_smoothing = 0.1;
    o.ignore_index = 0;
    CHECK(cross_entropy(x, t, o).item() == doctest::Approx(0.9015141276335707).epsilon(tol));
    // ε = 1: only the smoothing term remains.
    o.ignore_index = -100;
    o.label_smoothing = 1.0;
    CHECK(cross_entropy(x, t, o).item() == doctest::Approx(2.109757285011349).epsilon(tol));
  }
  // Two classes by hand: logits (0, ln 3) → p = (1/4, 3/4); target 1 → −ln(3/4).
  Tensor x2 = f64({0.0, std::log(3.0)}, {1, 2});
  CHECK(cross_entropy(x2, i64({1})).item() == doctest::Approx(-std::log(0.75)).epsilon(1e-15));
}

TEST_CASE("cross_entropy: all targets ignored gives NaN (as torch) and a zero gradient") {
  Tensor x = f64(kLogits, {4, 4});
  x.set_requires_grad(true);
  Tensor loss = cross_entropy(x, i64({-100, -100, -100, -100}));
  CHECK(std::isnan(loss.item()));
  loss.backward();
  for (double g : vals(x.grad())) CHECK(g == 0.0);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  CHECK(std::isnan(cross_entropy(x, i64({-100, -100, -100, -100}), o).item()));
}

TEST_CASE("cross_entropy: bad targets and shapes are reported") {
  Tensor x = f64(kLogits, {4, 4});
  CHECK_THROWS_WITH_AS(cross_entropy(x, i64({1, 4, 0, 2})),
                       doctest::Contains("target 4 at index 1 is out of range for 4 classes"), TensorError);
  CHECK_THROWS_WITH_AS(cross_entropy(x, i64({1, 2, -1, 2})),
                       doctest::Contains("target -1 at index 2 is out of range for 4 classes"), TensorError);
  CHECK_THROWS_WITH_AS(cross_entropy(x, i64({1, 2, 3})), doctest::Contains("target must be i64 [4]"), TensorError);
  CHECK_THROWS_WITH_AS(cross_entropy(x, Tensor::zeros({4}, DType::f64)), doctest::Contains("target must be i64"),
                       TensorError);
  CHECK_THROWS_WITH_AS(cross_entropy(f64(kLogits, {16}), i64({1})), doctest::Contains("[N, C]"), TensorError);
  CrossEntropyOptions o;
  o.weight = f64({1, 2, 3}, {3});
  CHECK_THROWS_WITH_AS(cross_entropy(x, i64({1, 2, 3, 0}), o), doctest::Contains("weight must have shape [4]"),
                       TensorError);
  o = {};
  o.label_smoothing = 1.5;
  CHECK_THROWS_WITH_AS(cross_entropy(x, i64({1, 2, 3, 0}), o), doctest::Contains("label_smoothing"), TensorError);
}

// ================================================================ dropout and drop path
TEST_CASE("dropout: fraction dropped, scaling by 1/keep, reproducibility, backward through the mask") {
  const int64_t n = 200000;
  const double p = 0.3, keep = 1 - p;
  Generator xg(14);
  Tensor x = xg.uniform({n}, 0.5, 1.5);  // f32, never 0: a zero output means "dropped"
  x.set_requires_grad(true);
  Generator gen(15);
  Tensor y = dropout(x, p, true, gen);
  auto xv = vals(x), yv = vals(y);
  int64_t zeros = 0;
  bool scaled = true;
  for (int64_t i = 0; i < n; ++i) {
    if (yv[size_t(i)] == 0) { ++zeros; continue; }
    // y = x · float(1/keep): within 2 f32 roundings (~1.2e-7 relative) of x/keep.
    if (std::abs(yv[size_t(i)] - xv[size_t(i)] / keep) > 3e-7 * xv[size_t(i)] / keep) scaled = false;
  }
  CHECK(scaled);
  // The dropped count is Binomial(n, p): σ of the fraction = √(p(1−p)/n) ≈ 1.0e-3; 6σ fails by chance
  // with probability ~2e-9, while a wrong p (e.g. keep instead of p) is off by 0.4.
  const double frac = double(zeros) / double(n), sigma = std::sqrt(p * (1 - p) / double(n));
  CHECK(std::abs(frac - p) < 6 * sigma);
  // Same seed, same mask; another seed, another mask.
  Generator same(15), other(16);
  CHECK(vals(dropout(x.detach(), p, true, same)) == yv);
  CHECK(vals(dropout(x.detach(), p, true, other)) != yv);
  // d(sum y)/dx = mask / keep: 1/keep exactly where y was kept, 0 where it was dropped.
  sum(y).backward();
  auto gv = vals(x.grad());
  bool grad_ok = true;
  for (int64_t i = 0; i < n; ++i) {
    double expect = yv[size_t(i)] == 0 ? 0.0 : 1.0 / keep;
    if (std::abs(gv[size_t(i)] - expect) > 1e-6) grad_ok = false;
  }
  CHECK(grad_ok);
}

TEST_CASE("dropout / drop_path: eval, p = 0, p = 1, bad p") {
  Generator gen(17);
  Tensor x = gen.uniform({4, 3}, 0.5, 1.5, DType::f64);
  CHECK(dropout(x, 0.5, false, gen).impl() == x.impl());
  CHECK(dropout(x, 0.0, true, gen).impl() == x.impl());
  CHECK(drop_path(x, 0.5, false, gen).impl() == x.impl());
  CHECK(drop_path(x, 0.0, true, gen).impl() == x.impl());
  for (double v : vals(dropout(x, 1.0, true, gen))) CHECK(v == 0.0);
  for (double v : vals(drop_path(x, 1.0, true, gen))) CHECK(v == 0.0);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5, true, gen), doctest::Contains("dropout: p must be in [0, 1]"), TensorError);
  CHECK_THROWS_WITH_AS(drop_path(x, -0.1, true, gen), doctest::Contains("drop_path: p must be in [0, 1]"),
                       TensorError);
}

TEST_CASE("drop_path: whole samples dropped with probability p, the rest scaled by 1/keep") {
  const int64_t B = 20000;
  const double p = 0.25, keep = 1 - p;
  Generator gen(18);
  Tensor x = Tensor::ones({B, 2, 3}, DType::f64);
  auto yv = vals(drop_path(x, p, true, gen));
  int64_t dropped = 0;
  bool per_sample = true;
  for (int64_t b = 0; b < B; ++b) {
    const double first = yv[size_t(b * 6)];
    if (first != 0.0 && std::abs(first - 1.0 / keep) > 1e-15) per_sample = false;
    for (int64_t i = 1; i < 6; ++i)
      if (yv[size_t(b * 6 + i)] != first) per_sample = false;  // one decision per sample
    if (first == 0.0) ++dropped;
  }
  CHECK(per_sample);
  // Binomial(B, p) dropped samples: σ = √(p(1−p)/B) ≈ 3.1e-3; 6σ as for dropout.
  CHECK(std::abs(double(dropped) / double(B) - p) < 6 * std::sqrt(p * (1 - p) / double(B)));
}

TEST_CASE("drop_path with a residual: residual + drop_path(x), the same mask as without it") {
  Generator xg(23);
  Tensor x = xg.uniform({9, 4, 5}, 0.5, 1.5, DType::f64), r = xg.uniform({9, 4, 5}, -1, 1, DType::f64);
  Generator g1(24), g2(24);
  auto fused = vals(drop_path(x, 0.3, true, g1, r)), plain_sum = vals(add(drop_path(x, 0.3, true, g2), r));
  CHECK(fused == plain_sum);
  // Eval and p = 0 add the residual unchanged; p = 1 leaves just the residual.
  Generator gen(25);
  CHECK(vals(drop_path(x, 0.3, false, gen, r)) == vals(add(x, r)));
  CHECK(vals(drop_path(x, 0.0, true, gen, r)) == vals(add(x, r)));
  CHECK(vals(drop_path(x, 1.0, true, gen, r)) == vals(r));
  Tensor r_wrong = Tensor::zeros({9, 5, 4}, DType::f64);
  CHECK_THROWS_WITH_AS(drop_path(x, 0.3, true, gen, r_wrong), doctest::Contains("must have the shape of x"),
                       TensorError);
  CHECK_THROWS_WITH_AS(drop_path(x, 0.3, true, gen, r.to(DType::f32)), doctest::Contains("dtype and device"),
                       TensorError);
}

// Backend::linear and Backend::attention_tokens: the CPU's own kernels against the composites every other
// device falls back to (engine/core/fused.cpp), which the CPU itself never runs otherwise.
// linear, f64 and f32: the composite rounds x·Wᵀ before adding the bias, the CPU adds it to the sum first;
// each side errs by at most (K + 2)·u of Σ|terms| ≤ K + 1 (inputs in [-1, 1]), so 2·(K + 2)·u·(K + 1).
// attention_tokens, f32: with at most 32 keys both sides run the same row-by-row arithmetic on the same
// values (the composite on split copies, the CPU's kernel in place), so they must agree exactly; past 32
// keys the forward reads the heads in place in blocks of query rows and the composite runs the same blocks
// on its copies (exact again; 1000 queries over 300 keys are blocks of 216 and a part block); so does the
// backward with two heads a thread or more (600 queries: a block of kGemmDepthPanel = 384 and a part
// block), and with fewer it is the composite's on both sides.
// drop_path, f64 and f32: both round the product x·s and then the sum with the residual, so exactly equal.
// linear_gelu, f32: the same GEMM sums, then the same roundings and GELU (in the epilogue or in bias_gelu's
// pass), so y and h are exactly equal, with h kept or not; shapes of one block, many blocks over several
// depth panels, and a deep product of depth slices.
// No queries: nothing attends, so the keys' and values' gradients are zero. The backend writes them over
// whatever the output tensors held (7 here): the blocked backward, past 32 keys with six heads, has no block
// of queries that would; the op layer's result is checked too.
TEST_CASE("attention with no queries: empty output, zero gradients for k and v") {
  Generator gen(14);
  for (int64_t Tk : {20, 300}) {
    CAPTURE(Tk);
    const Tensor q = gen.uniform({3, 2, 0, 37}, -1, 1), k = gen.uniform({3, 2, Tk, 37}, -1, 1),
                 v = gen.uniform({3, 2, Tk, 37}, -1, 1), none = Tensor::empty({3, 2, 0, 37});
    Tensor dq = Tensor::empty(q.shape()), dk = Tensor::full(k.shape(), 7.0), dv = Tensor::full(v.shape(), 7.0);
    cpu_backend().attention_backward(none, q, k, v, none, Tensor::empty({3, 2, 0}), 0.3, dq, dk, dv);
    for (const Tensor& g : {dk, dv}) {
      const std::vector<double> d = g.to_vector<double>();
      CHECK(std::count(d.begin(), d.end(), 0.0) == int64_t(d.size()));
    }
    Tensor kl = k.clone().set_requires_grad(true), vl = v.clone().set_requires_grad(true);
    Tensor y = scaled_dot_product_attention(q, kl, vl, 0.3);
    CHECK(y.numel() == 0);
    sum(y).backward();
    for (const Tensor& g : {kl.grad(), vl.grad()}) {
      const std::vector<double> d = g.to_vector<double>();
      CHECK(std::count(d.begin(), d.end(), 0.0) == int64_t(d.size()));
    }
  }
}

TEST_CASE("linear, linear_gelu, attention_tokens, drop_path: the CPU's fused kernels equal the composites") {
  Generator gen(31);
  Backend& be = cpu_backend();
  for (DType dt : {DType::f64, DType::f32}) {
    for (auto [M, N, K] : {std::array<int64_t, 3>{1, 1, 1}, {37, 45, 70}, {9, 17, 2100}, {200, 40, 300}}) {
      CAPTURE(M);
      CAPTURE(K);
      const Tensor x = gen.uniform({M, K}, -1, 1, dt), w = gen.uniform({N, K}, -1, 1, dt), b = gen.uniform({N}, -1, 1, dt);
      Tensor fused = Tensor::empty({M, N}, dt), composite = Tensor::empty({M, N}, dt);
      be.linear(x, w, b, Tensor(), fused);
      be.Backend::linear(x, w, b, Tensor(), composite);
      const std::vector<double> f = fused.to_vector<double>(), c = composite.to_vector<double>();
      const double tol = 2 * double(K + 2) * std::ldexp(1.0, dt == DType::f64 ? -53 : -24) * double(K + 1);
      double worst = 0;
      for (size_t i = 0; i < f.size(); ++i) worst = std::max(worst, std::abs(f[i] - c[i]));
      CHECK(worst <= tol);
    }
  }
  for (auto [B, heads, Tq, Tk, D] : {std::array<int64_t, 5>{2, 3, 17, 5, 64}, {1, 1, 9, 32, 20}, {2, 4, 7, 16, 8},
                                      {2, 3, 40, 70, 24}, {1, 2, 1000, 300, 8}, {2, 2, 600, 300, 8}}) {
    CAPTURE(heads);
    CAPTURE(Tk);
    const int64_t C = heads * D;
    const Tensor q = gen.uniform({B, Tq, C}, -1, 1), k = gen.uniform({B, Tk, C}, -1, 1), v = gen.uniform({B, Tk, C}, -1, 1);
    const Tensor dout = gen.uniform({B, Tq, C}, -1, 1);
    auto run = [&](bool composite) {
      Tensor out = Tensor::empty({B, Tq, C}, DType::f32), lse = Tensor::empty({B, heads, Tq}, DType::f32);
      std::array<Tensor, 3> d{Tensor::empty(q.shape(), DType::f32), Tensor::empty(k.shape(), DType::f32),
                              Tensor::empty(v.shape(), DType::f32)};
      if (composite) {
        be.Backend::attention_tokens(q, k, v, heads, 0.3, out, lse);
        be.Backend::attention_tokens_backward(dout, q, k, v, out, lse, heads, 0.3, d[0], d[1], d[2]);
      } else {
        be.attention_tokens(q, k, v, heads, 0.3, out, lse);
        be.attention_tokens_backward(dout, q, k, v, out, lse, heads, 0.3, d[0], d[1], d[2]);
      }
      return std::vector<Tensor>{out, lse, d[0], d[1], d[2]};
    };
    const std::vector<Tensor> fused = run(false), composite = run(true);
    for (size_t i = 0; i < fused.size(); ++i) CHECK(fused[i].to_vector<float>() == composite[i].to_vector<float>());
  }
  for (DType dt : {DType::f64, DType::f32})
    for (const Shape& shape : {Shape{7, 3, 5}, Shape{3, 40000}, Shape{1, 1}}) {  // 40000: past one 16384 task
      CAPTURE(shape_str(shape));
      const Tensor x = gen.uniform(shape, -4, 4, dt), r = gen.uniform(shape, -2, 2, dt);
      std::vector<double> keep(static_cast<size_t>(shape[0]));
      for (size_t b = 0; b < keep.size(); ++b) keep[b] = b % 3 == 1 ? 0.0 : 1.0;
      const Tensor mask = Tensor::from(keep, {shape[0]}, dt);
      for (const Tensor& residual : {r, Tensor()}) {
        Tensor fused = Tensor::empty(shape, dt), composite = Tensor::empty(shape, dt);
        be.drop_path(x, mask, 1 / 0.7, residual, fused);
        be.Backend::drop_path(x, mask, 1 / 0.7, residual, composite);
        CHECK(fused.to_vector<double>() == composite.to_vector<double>());
      }
    }
  for (auto [M, N, K] : {std::array<int64_t, 3>{3, 5, 4}, {200, 300, 300}, {9, 17, 2100}}) {
    CAPTURE(M);
    CAPTURE(K);
    const Tensor x = gen.uniform({M, K}, -1, 1), w = gen.uniform({N, K}, -1, 1), b = gen.uniform({N}, -1, 1);
    for (bool keep_h : {true, false}) {
      Tensor h1 = keep_h ? Tensor::empty({M, N}) : Tensor(), h2 = keep_h ? Tensor::empty({M, N}) : Tensor();
      Tensor fused = Tensor::empty({M, N}), composite = Tensor::empty({M, N});
      be.linear_gelu(x, w, b, h1, fused);
      be.Backend::linear_gelu(x, w, b, h2, composite);
      CHECK(fused.to_vector<float>() == composite.to_vector<float>());
      if (keep_h) CHECK(h1.to_vector<float>() == h2.to_vector<float>());
    }
  }
}
