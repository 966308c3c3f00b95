// Tensors: dtypes and conversions, views without copies, contiguous(), random streams, autograd mechanics.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "engine/core/autograd.h"
#include "engine/core/profile.h"
#include "engine/ops.h"
#include "engine/core/philox.h"
#include "engine/random.h"
#include "tests/gradcheck.h"

using namespace tessera;

TEST_CASE("bf16 and f16 conversions round to nearest even and keep specials") {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties to even gives 1.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 0x1.0p-8f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 0x1.8p-8f)) == 1.0f + 0x1.0p-7f);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  // f16: every one of the 63,488 finite half values survives half → float → half unchanged.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    f16_t h{uint16_t(b)};
    if (((b >> 10) & 0x1f) == 0x1f) continue;  // inf/NaN checked below
    CHECK_MESSAGE(float_to_f16(f16_to_float(h)).bits == h.bits, "half bits " << b);
  }
  CHECK(f16_to_float(f16_t{0x3c00}) == 1.0f);
  CHECK(f16_to_float(f16_t{0x0001}) == 0x1.0p-24f);         // smallest subnormal
  CHECK(float_to_f16(65504.0f).bits == 0x7bff);              // largest finite
  CHECK(float_to_f16(65520.0f).bits == 0x7c00);              // halfway to 2^16 rounds to inf (even)
  CHECK(float_to_f16(1.0f + 0x1.0p-11f).bits == 0x3c00);     // tie → even
  CHECK(float_to_f16(1.0f + 0x1.8p-11f).bits == 0x3c01);
  CHECK(float_to_f16(0x1.0p-25f).bits == 0x0000);            // tie between 0 and 2^-24 → 0 (even)
  CHECK(float_to_f16(0x1.8p-25f).bits == 0x0001);
  CHECK(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
}

TEST_CASE("dtype round trips through copies") {
  std::vector<double> v{-3, -1.5, 0, 0.25, 2, 7};
  Tensor t = Tensor::from(v, {2, 3}, DType::f64);
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) CHECK(t.to(dt).to(DType::f64).to_vector<double>() == v);
  CHECK(t.to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{-3, -1, 0, 0, 2, 7});
  CHECK(t.to(DType::boolean).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 0, 1, 1, 1});
  CHECK(Tensor::from(std::vector<int64_t>{250, 3}, {2}).to(DType::u8).to_vector<int64_t>() ==
        std::vector<int64_t>{250, 3});
  CHECK(Tensor::scalar(2.5).item() == 2.5);
  CHECK_THROWS_WITH_AS(Tensor::zeros({2}).item(), doctest::Contains("exactly one element"), TensorError);
}

TEST_CASE("views share storage and never copy") {
  Tensor t = Tensor::arange(24).reshape({2, 3, 4});
  CHECK(t.is_contiguous());
  Tensor p = t.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.storage() == t.storage());
  CHECK_FALSE(p.is_contiguous());
  CHECK(p.strides() == Shape{1, 12, 4});
  // element (k, i, j) of p is t[i, j, k] = 12 i + 4 j + k
  auto pv = p.contiguous().to_vector<int64_t>();
  CHECK(pv[size_t(3 * 6 + 1 * 3 + 2)] == 12 * 1 + 4 * 2 + 3);

  Tensor s = t.slice(2, 1, 4, 2);  // columns 1 and 3
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.storage() == t.storage());
  CHECK(s.contiguous().to_vector<int64_t>() == std::vector<int64_t>{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23});
  CHECK(t.slice(0, -1, 2).to_vector<int64_t>()[0] == 12);  // negative start

  Tensor e = Tensor::arange(3).reshape({3, 1}).expand({3, 4});
  CHECK(e.strides()[1] == 0);
  CHECK(e.contiguous().to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2});
  CHECK(Tensor::arange(3).expand({2, 3}).shape() == Shape{2, 3});

  CHECK(t.unsqueeze(1).shape() == Shape{2, 1, 3, 4});
  CHECK(t.unsqueeze(-1).shape() == Shape{2, 3, 4, 1});
  CHECK(t.unsqueeze(1).squeeze(1).shape() == t.shape());
  CHECK(t.transpose(0, 2).shape() == Shape{4, 3, 2});
  CHECK(t.select(1, -1).to_vector<int64_t>() == std::vector<int64_t>{8, 9, 10, 11, 20, 21, 22, 23});
  CHECK(t.flatten(1).shape() == Shape{2, 12});

  // reshape views when it can, copies when it must.
  CHECK(t.reshape({6, 4}).storage() == t.storage());
  CHECK(t.reshape({4, -1}).shape() == Shape{4, 6});
  Tensor tp = t.transpose(1, 2);
  CHECK(tp.reshape({2, 12}).storage() != t.storage());
  CHECK_THROWS_AS(tp.view({2, 12}), TensorError);
  CHECK(t.slice(1, 0, 2).view({2, 2, 4}).storage() == t.storage());  // split of an outer dim still views

  // Writing through a view writes the base.
  Tensor base = Tensor::zeros({3, 3});
  base.slice(1, 1, 2).fill_(5);
  CHECK(base.to_vector<double>() == std::vector<double>{0, 5, 0, 0, 5, 0, 0, 5, 0});
  base.transpose(0, 1).select(0, 0).copy_(Tensor::from(std::vector<double>{1, 2, 3}, {3}));
  CHECK(base.to_vector<double>() == std::vector<double>{1, 5, 0, 2, 5, 0, 3, 5, 0});
}

// Every element of a strided copy against its address computed by hand: the CPU copy merges dims, and
// copies whose source is contiguous along another dim than the output go in tiles (odd sizes leave partial
// tiles on both sides). Values are the source's storage indices, so a misplaced element names itself.
TEST_CASE("contiguous() of permuted, sliced and broadcast views, element by element") {
  struct View { Shape base; std::vector<int64_t> perm; int64_t sliced_dim, start; };
  const std::vector<View> views = {
      {{32, 17, 33}, {0, 2, 1}, -1, 0},     // tokens -> image: [N, T, C] as [N, C, T]
      {{3, 70, 40}, {0, 2, 1}, 1, 1},       // the same past a cls token (a slice of T)
      {{2, 5, 7, 9}, {0, 3, 1, 2}, -1, 0},  // NHWC as NCHW
      {{4, 6, 3, 8}, {0, 2, 1, 3}, 2, 1},   // head split [B, T, H, D] -> [B, H, T, D], sliced
      {{65, 33}, {1, 0}, -1, 0},            // a plain transpose with partial tiles
      {{2, 1, 33, 1, 31}, {4, 1, 2, 3, 0}, 2, 2},
  };
  for (const View& v : views) {
    INFO("base " << Tensor::empty(v.base).str() << " perm " << v.perm[0] << v.perm[1] << v.perm.back());
    for (DType dt : {DType::f32, DType::i64}) {
      Tensor base = Tensor::arange(shape_numel(v.base)).to(dt).reshape(v.base);
      Tensor x = v.sliced_dim < 0 ? base : base.slice(v.sliced_dim, v.start, base.size(v.sliced_dim));
      x = x.permute(v.perm);
      const std::vector<double> got = x.contiguous().to_vector<double>();
      REQUIRE(got.size() == size_t(x.numel()));
      std::vector<int64_t> index(size_t(x.dim()), 0);
      bool all = true;
      for (size_t e = 0; e < got.size(); ++e) {
        int64_t addr = x.offset();
        for (size_t d = 0; d < index.size(); ++d) addr += index[d] * x.strides()[d];
        all = all && got[e] == double(addr);
        for (int64_t d = x.dim() - 1; d >= 0 && ++index[size_t(d)] == x.size(d); --d) index[size_t(d)] = 0;
      }
      CHECK(all);
    }
  }
  // A broadcast source (stride 0) into a transposed destination, and a copy between two strided views.
  Tensor col = Tensor::arange(40).reshape({40, 1}).expand({40, 33});
  Tensor dst = Tensor::zeros({33, 40});
  dst.transpose(0, 1).copy_(col);
  const std::vector<double> dv = dst.to_vector<double>();
  bool broadcast_ok = true;
  for (int64_t i = 0; i < 33; ++i)
    for (int64_t j = 0; j < 40; ++j) broadcast_ok = broadcast_ok && dv[size_t(i * 40 + j)] == double(j);
  CHECK(broadcast_ok);
}

TEST_CASE("bad shapes give clear errors") {
  Tensor t = Tensor::zeros({2, 3});
  CHECK_THROWS_WITH_AS(t.reshape({4, 2}), doctest::Contains("does not hold 6 elements"), TensorError);
  CHECK_THROWS_WITH_AS(t.reshape({-1, -1}), doctest::Contains("more than one -1"), TensorError);
  CHECK_THROWS_WITH_AS(t.permute({0, 0}), doctest::Contains("repeated dim"), TensorError);
  CHECK_THROWS_WITH_AS(t.expand({4, 3, 2}), doctest::Contains("cannot expand"), TensorError);
  CHECK_THROWS_WITH_AS(t.transpose(0, 2), doctest::Contains("out of range"), TensorError);
  CHECK_THROWS_WITH_AS(t.data<double>(), doctest::Contains("tensor is f32"), std::runtime_error);
  CHECK_THROWS_AS(Tensor::empty({-1}), TensorError);
}

TEST_CASE("random streams are reproducible for a seed and well distributed") {
  Generator a(7), b(7), c(8);
  Tensor x = a.normal({1000}, 0, 1, DType::f64);
  CHECK(x.to_vector<double>() == b.normal({1000}, 0, 1, DType::f64).to_vector<double>());
  CHECK(x.to_vector<double>() != c.normal({1000}, 0, 1, DType::f64).to_vector<double>());
  // The stream continues: two draws of 500 equal one draw of 1000.
  Generator d(7);
  auto first = d.normal({500}, 0, 1, DType::f64).to_vector<double>();
  auto second = d.normal({500}, 0, 1, DType::f64).to_vector<double>();
  first.insert(first.end(), second.begin(), second.end());
  CHECK(first == x.to_vector<double>());

  // Moments of 10^5 draws: the standard error of a mean is σ/√n ≈ 0.0032 for N(0,1); 5 SE bounds.
  Generator g(123);
  const int n = 100000;
  auto stats = [&](const Tensor& t) {
    auto v = t.to_vector<double>();
    double m = 0, s = 0, lo = 1e9, hi = -1e9;
    for (double e : v) { m += e; lo = std::min(lo, e); hi = std::max(hi, e); }
    m /= double(v.size());
    for (double e : v) s += (e - m) * (e - m);
    return std::array<double, 4>{m, std::sqrt(s / double(v.size())), lo, hi};
  };
  auto u = stats(g.uniform({n}, -1, 3, DType::f64));
  CHECK(std::abs(u[0] - 1) < 5 * 4 / std::sqrt(12.0 * n));
  CHECK(u[2] >= -1);
  CHECK(u[3] < 3);
  auto z = stats(g.normal({n}, 2, 0.5, DType::f64));
  CHECK(std::abs(z[0] - 2) < 5 * 0.5 / std::sqrt(double(n)));
  CHECK(std::abs(z[1] - 0.5) < 0.01);
  // N(0,1) truncated to [-1, 2]: mean = (φ(-1) − φ(2)) / (Φ(2) − Φ(-1)) = (0.241971 − 0.053991) / 0.818595 = 0.229637.
  auto tn = stats(g.truncated_normal({n}, 0, 1, -1, 2, DType::f64));
  CHECK(tn[2] >= -1);
  CHECK(tn[3] <= 2);
  CHECK(std::abs(tn[0] - 0.229637) < 0.01);
  // Bernoulli(0.3): SE of the fraction = √(0.21/n) ≈ 0.00145.
  auto bern = stats(g.bernoulli({n}, 0.3, DType::f64));
  CHECK(std::abs(bern[0] - 0.3) < 5 * std::sqrt(0.21 / n));
  // The quantile function inverts the CDF.
  for (double p : {1e-10, 0.001, 0.3, 0.5, 0.9, 0.999999}) {
    double x = philox::normal_quantile(p);
    CHECK(std::abs(0.5 * std::erfc(-x / std::sqrt(2.0)) - p) < 1e-12 + 1e-9 * p);
  }
}

TEST_CASE("autograd: accumulation, no-grad, detach, freed graph") {
  Tensor x = Tensor::from(std::vector<double>{1, 2, 3}, {3}).set_requires_grad();
  Tensor y = sum(mul(x, x));
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2, 4, 6});
  // Leaves accumulate across backward calls until zero_grad.
  sum(mul(x, 3.0)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{5, 7, 9});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  // A second backward through a freed graph is an error.
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("already freed"), TensorError);
  {
    NoGradGuard ng;
    CHECK_FALSE(mul(x, x).requires_grad());
  }
  CHECK_FALSE(x.detach().requires_grad());
  CHECK(x.detach().storage() == x.storage());
  // A tensor used twice gets both contributions; backward with an explicit gradient.
  Tensor z = add(mul(x, 2.0), mul(x, x));  // dz/dx = 2 + 2x
  z.backward(Tensor::from(std::vector<double>{1, 0, 2}, {3}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, 0, 16});
  CHECK_THROWS_WITH_AS(z.backward(Tensor::ones({3}, DType::f64)), doctest::Contains("already freed"), TensorError);
  Tensor w = mul(x, x);
  CHECK_THROWS_WITH_AS(w.backward(), doctest::Contains("not a scalar"), TensorError);
  CHECK_THROWS_AS(Tensor::zeros({2}, DType::i64).set_requires_grad(), TensorError);
}

TEST_CASE("autograd: a leaf adopts a gradient nothing else holds, and copies one that is shared") {
  // mul(x, 3) hands back a fresh tensor: adopted, no copy. add(a, b) hands both leaves the same incoming
  // gradient: each must get its own memory, or scaling one (clipping) would scale the other.
  // The profiler counts the backend's copies: none for the adopted gradient, one per leaf where it is shared.
  auto copies_in_backward = [](const Tensor& loss) {
    profile::Profiler counter;
    loss.backward();
    int64_t n = 0;
    for (const auto& [key, total] : counter.totals())
      if (key.op == "copy" && key.phase == profile::Phase::Backward) n += total.calls;
    return n;
  };
  Tensor x = Tensor::from(std::vector<double>{1, 2, 3}, {3}).set_requires_grad();
  CHECK(copies_in_backward(sum(mul(x, 3.0))) == 0);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3, 3, 3});
  CHECK(x.grad().storage() != x.storage());
  const void* adopted = x.grad().raw_data();  // a second backward adds into it in place
  sum(mul(x, 2.0)).backward();
  CHECK(x.grad().raw_data() == adopted);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{5, 5, 5});
  Tensor p = Tensor::from(std::vector<double>{1, 2}, {2}).set_requires_grad();
  Tensor q = Tensor::from(std::vector<double>{3, 4}, {2}).set_requires_grad();
  CHECK(copies_in_backward(sum(add(p, q))) == 2);
  Tensor a = Tensor::from(std::vector<double>{1, 2}, {2}).set_requires_grad();
  Tensor b = Tensor::from(std::vector<double>{3, 4}, {2}).set_requires_grad();
  Tensor g = Tensor::from(std::vector<double>{5, 6}, {2});
  add(a, b).backward(g);
  CHECK(a.grad().storage() != b.grad().storage());
  CHECK(a.grad().storage() != g.storage());
  Tensor a_grad = a.grad();
  a_grad.fill_(0);
  CHECK(b.grad().to_vector<double>() == std::vector<double>{5, 6});
  CHECK(g.to_vector<double>() == std::vector<double>{5, 6});
  // A linear layer's weight without a bias (matmul of x and the view Wᵀ): matmul computes Wᵀ's gradient in
  // W's layout, (gᵀ·x)ᵀ, and the transpose hands W a contiguous view of it that nothing else holds: adopted
  // (it had been computed in Wᵀ's layout and copied across). With a bias, the fused linear's own backward
  // computes gᵀ·x directly: adopted too, as the bias's column sums are. dW[o, i] = Σ_rows x[r, i], db[o] = 4.
  Tensor xin = Tensor::from(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {4, 3});
  auto backward_copies = [&](const Tensor& y) {
    profile::Profiler counter;
    y.backward(Tensor::ones({4, 2}, DType::f64));
    int64_t copies = 0;
    for (const auto& [key, total] : counter.totals()) copies += key.op == "copy" ? total.calls : 0;
    return copies;
  };
  for (bool with_bias : {false, true}) {
    CAPTURE(with_bias);
    Tensor W = Tensor::from(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}).set_requires_grad();
    Tensor bias = Tensor::from(std::vector<double>{1, -1}, {2}).set_requires_grad();
    CHECK(backward_copies(linear(xin, W, with_bias ? bias : Tensor())) == 0);
    CHECK(W.grad().is_contiguous());
    CHECK(W.grad().to_vector<double>() == std::vector<double>{22, 26, 30, 22, 26, 30});
    if (with_bias) CHECK(bias.grad().to_vector<double>() == std::vector<double>{4, 4});
  }
  // A view's gradient (reshape hands back a view of the incoming one) is copied too, and accumulation after
  // an adopted gradient adds in place.
  Tensor v = Tensor::from(std::vector<double>{1, 2, 3, 4}, {2, 2}).set_requires_grad();
  Tensor seed = Tensor::from(std::vector<double>{1, 2, 3, 4}, {4});
  v.reshape({4}).backward(seed);
  CHECK(v.grad().storage() != seed.storage());
  sum(mul(v, 2.0)).backward();
  CHECK(v.grad().to_vector<double>() == std::vector<double>{3, 4, 5, 6});
}

TEST_CASE("gradients flow through every view") {
  using namespace tessera::testing;
  Generator gen(3);
  gradcheck([](const std::vector<Tensor>& in) {
    Tensor x = in[0];  // [4, 6]
    Tensor a = x.transpose(0, 1).slice(0, 1, 6, 2);          // [3, 4] strided
    Tensor b = x.reshape({2, 12}).select(0, 1).reshape({3, 4});
    Tensor c = x.slice(1, 0, 1).expand({4, 4}).transpose(0, 1).slice(0, 0, 3);  // stride-0
    Tensor d = x.unsqueeze(0).permute({2, 0, 1}).squeeze(1).slice(0, 2, 5).slice(1, 0, 4);
    return mul(add(mul(a, b), c), d);
  }, {leaf(gen, {4, 6})});
  gradcheck([](const std::vector<Tensor>& in) { return in[0].contiguous().flatten().clone(); }, {leaf(gen, {3, 2})});
  gradcheck([](const std::vector<Tensor>& in) { return in[0].to(DType::f32).to(DType::f64); }, {leaf(gen, {3})}, 1e-4,
            0, 1e-2);  // through f32: rounding of x±h (≤ 2^-24·|x| each) over 2h = 0.02 is ≤ 6e-6 < 1e-4
}
