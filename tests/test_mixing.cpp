// Mixup and CutMix: the Beta sampler's moments, determinism per (seed, step), the mixed pixels, the CutMix
// box and its λ, the mixed loss against a float64 computation by hand and its gradient, and validation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "tests/errors.h"
#include "tests/cuda_test_util.h"
#include "tests/gradcheck.h"
#include "models/model.h"
#include "train/mixing.h"

using namespace tessera;
using tessera::testing::contains;
using tessera::testing::error_of;

namespace {

MixConfig mixup(double alpha) { return MixConfig{alpha, 0, 1.0, 0.5}; }
MixConfig cutmix(double alpha) { return MixConfig{0, alpha, 1.0, 0.5}; }

// A host batch [n, C, H, W] of distinct values.
Tensor batch(int64_t n, int64_t C, int64_t H, int64_t W, uint64_t seed) {
  return Generator(seed).uniform({n, C, H, W}, -2, 2, DType::f32);
}

// The mixed loss by hand in double: log-softmax per row (max subtracted), then cross-entropy with label
// smoothing eps, optional class weights w (cross_entropy's weighted mean: Σ w_y·loss / Σ w_y, used here with
// eps = 0 only), then λ·CE(y) + (1 − λ)·CE(y[n−1−i]).
double mixed_loss_by_hand(const std::vector<double>& logits, const std::vector<int64_t>& y, int64_t C, double lam,
                          double eps, const std::vector<double>& w = {}) {
  const int64_t n = int64_t(y.size());
  std::vector<double> logp(logits.size());
  for (int64_t i = 0; i < n; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, logits[size_t(i * C + c)]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(logits[size_t(i * C + c)] - m);
    for (int64_t c = 0; c < C; ++c) logp[size_t(i * C + c)] = logits[size_t(i * C + c)] - m - std::log(s);
  }
  auto ce = [&](const std::vector<int64_t>& t) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
      double all = 0;
      for (int64_t c = 0; c < C; ++c) all += logp[size_t(i * C + c)];
      const double wi = w.empty() ? 1.0 : w[size_t(t[size_t(i)])];
      num += wi * (-(1 - eps) * logp[size_t(i * C + t[size_t(i)])] - eps / double(C) * all);
      den += wi;
    }
    return num / den;
  };
  std::vector<int64_t> flipped(y.rbegin(), y.rend());
  return lam * ce(y) + (1 - lam) * ce(flipped);
}

}  // namespace

TEST_CASE("the Beta(α, α) draws have the right mean and variance (α = 0.2, 0.8, 1.0)") {
  // N = 20,000 draws, one per step. Beta(α, α) has mean 1/2, variance σ² = 1/(4(2α + 1)) and excess
  // kurtosis −6/(2α + 3), so its fourth central moment is μ₄ = σ⁴(3 − 6/(2α + 3)).
  // Standard errors: of the sample mean σ/√N; of the sample variance √((μ₄ − σ⁴)/N) = σ²√((2 − 6/(2α+3))/N).
  // Both statistics are close to normal at this N; 5 standard errors is exceeded with probability ~6e-7
  // by a correct sampler, while a sampler with the wrong shape moves the variance by far more (α = 0.2:
  // variance 0.18; Gamma(α + 1) without the U^(1/α) factor gives 0.07, and 5 SE is 0.003).
  const int N = 20000;
  for (double alpha : {0.2, 0.8, 1.0}) {
    INFO("alpha " << alpha);
    std::vector<double> x(N);
    for (int s = 0; s < N; ++s) {
      const MixDraw d = draw_mix(mixup(alpha), 2, 8, 8, 42, uint64_t(s));
      REQUIRE(d.applied);
      CHECK_FALSE(d.cutmix);
      REQUIRE(d.lambda >= 0);
      REQUIRE(d.lambda <= 1);
      x[size_t(s)] = d.lambda;
    }
    double mean = 0, var = 0;
    for (double v : x) mean += v;
    mean /= N;
    for (double v : x) var += (v - mean) * (v - mean);
    var /= N - 1;
    const double s2 = 1 / (4 * (2 * alpha + 1));
    const double se_mean = std::sqrt(s2 / N);
    const double se_var = s2 * std::sqrt((2 - 6 / (2 * alpha + 3)) / N);
    INFO("mean " << mean << " (se " << se_mean << "), variance " << var << " vs " << s2 << " (se " << se_var << ")");
    CHECK(std::fabs(mean - 0.5) <= 5 * se_mean);
    CHECK(std::fabs(var - s2) <= 5 * se_var);
  }
}

TEST_CASE("draws depend only on (seed, step), and prob and switch_prob choose at their rates") {
  const MixConfig both{0.8, 1.0, 0.7, 0.4};
  const MixDraw a = draw_mix(both, 16, 32, 32, 5, 123), b = draw_mix(both, 16, 32, 32, 5, 123);
  CHECK(a.applied == b.applied);
  CHECK(a.cutmix == b.cutmix);
  CHECK(a.lambda == b.lambda);
  CHECK(a.top == b.top);
  CHECK(a.left == b.left);
  CHECK(a.height == b.height);
  CHECK(a.width == b.width);
  // Another step or seed gives another λ (mixup only, so every draw is mixed and λ continuous).
  const double l0 = draw_mix(mixup(1), 4, 8, 8, 5, 7).lambda;
  CHECK(draw_mix(mixup(1), 4, 8, 8, 5, 7).lambda == l0);
  CHECK(draw_mix(mixup(1), 4, 8, 8, 5, 8).lambda != l0);
  CHECK(draw_mix(mixup(1), 4, 8, 8, 6, 7).lambda != l0);
  // Frequencies over N = 20,000 steps: a Bernoulli(p) share has standard error √(p(1−p)/N); 5 of them.
  const int N = 20000;
  int applied = 0, cut = 0;
  for (int s = 0; s < N; ++s) {
    const MixDraw d = draw_mix(both, 16, 32, 32, 9, uint64_t(s));
    applied += d.applied;
    cut += d.applied && d.cutmix;
    for (int64_t i = 0; i < 16; ++i) REQUIRE(d.partner[size_t(i)] == 15 - i);
  }
  const double pa = double(applied) / N, pc = double(cut) / applied;
  CHECK(std::fabs(pa - 0.7) <= 5 * std::sqrt(0.7 * 0.3 / N));
  CHECK(std::fabs(pc - 0.4) <= 5 * std::sqrt(0.4 * 0.6 / applied));
}

TEST_CASE("mixup mixes each image with its flipped partner, pixel by pixel") {
  const int64_t n = 5, C = 3, H = 6, W = 7;  // odd n: the middle image is its own partner
  const Tensor orig = batch(n, C, H, W, 1);
  Tensor images = orig.clone();
  const MixDraw d = draw_mix(mixup(0.4), n, int(H), int(W), 3, 11);
  REQUIRE(d.applied);
  REQUIRE(d.lambda > 0.01);
  REQUIRE(d.lambda < 0.99);
  apply_mix(images, d);
  const auto o = orig.to_vector<float>(), m = images.to_vector<float>();
  const int64_t plane = C * H * W;
  size_t differ = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < plane; ++k) {
      // The same expression in double, rounded once to f32: equal bit for bit.
      const double want = d.lambda * double(o[size_t(i * plane + k)]) + (1 - d.lambda) * double(o[size_t((n - 1 - i) * plane + k)]);
      const float got = m[size_t(i * plane + k)];
      if (got != float(want)) ++differ;
    }
  CHECK(differ == 0);
}

TEST_CASE("CutMix pastes the partner box inside the image, and λ is the share outside the box") {
  for (auto [H, W] : {std::pair{7, 9}, std::pair{32, 32}, std::pair{1, 5}}) {
    INFO(H << "x" << W);
    int nonempty = 0;
    for (uint64_t s = 0; s < 2000; ++s) {
      const MixDraw d = draw_mix(cutmix(1.0), 4, H, W, 17, s);
      REQUIRE(d.applied);
      REQUIRE(d.cutmix);
      REQUIRE(d.top >= 0);
      REQUIRE(d.left >= 0);
      REQUIRE(d.height >= 0);
      REQUIRE(d.width >= 0);
      REQUIRE(d.top + d.height <= H);
      REQUIRE(d.left + d.width <= W);
      REQUIRE(d.lambda == 1 - double(d.height * d.width) / double(H * W));
      nonempty += d.height * d.width > 0;
    }
    if (H > 1) CHECK(nonempty > 1000);  // the test sees real boxes, not only empty ones
  }

  const int64_t n = 4, C = 2, H = 9, W = 11;
  const Tensor orig = batch(n, C, H, W, 2);
  MixDraw d;
  for (uint64_t s = 0; !(d.height > 0 && d.width > 0 && d.height < H); ++s) d = draw_mix(cutmix(1.0), n, H, W, 4, s);
  Tensor images = orig.clone();
  apply_mix(images, d);
  const auto o = orig.to_vector<float>(), m = images.to_vector<float>();
  size_t differ = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const bool inside = y >= d.top && y < d.top + d.height && x >= d.left && x < d.left + d.width;
          const int64_t src = inside ? n - 1 - i : i;
          if (m[size_t(((i * C + c) * H + y) * W + x)] != o[size_t(((src * C + c) * H + y) * W + x)]) ++differ;
        }
  CHECK(differ == 0);
}

TEST_CASE("prob 0 leaves the images and the loss untouched") {
  const MixConfig off{1.0, 1.0, 0.0, 0.5};
  const Tensor orig = batch(6, 3, 8, 8, 3);
  const Tensor logits = Generator(4).uniform({6, 5}, -3, 3, DType::f64);
  const Tensor labels = Tensor::from(std::vector<int64_t>{0, 1, 2, 3, 4, 0}, {6}, DType::i64);
  const double plain = cross_entropy(logits, labels).item();
  for (uint64_t s = 0; s < 200; ++s) {
    const MixDraw d = draw_mix(off, 6, 8, 8, 5, s);
    REQUIRE_FALSE(d.applied);
    CHECK(d.lambda == 1);
    Tensor images = orig.clone();
    apply_mix(images, d);
    REQUIRE(std::memcmp(images.raw_data(), orig.raw_data(), orig.nbytes()) == 0);
    REQUIRE(mixed_cross_entropy(logits, labels, d).item() == plain);
  }
  // Both alphas 0: mixing is off whatever prob says.
  CHECK_FALSE(draw_mix(MixConfig{}, 6, 8, 8, 5, 0).applied);
  CHECK_FALSE(mix_enabled(MixConfig{}));
}

TEST_CASE("mixed_cross_entropy is λ·CE(y) + (1−λ)·CE(y flipped), by hand in double") {
  const int64_t n = 7, C = 5;
  const Tensor logits = Generator(8).uniform({n, C}, -4, 4, DType::f64);
  const std::vector<int64_t> y = {0, 3, 1, 4, 4, 2, 0};
  const Tensor labels = Tensor::from(y, {n}, DType::i64);
  const MixDraw d = draw_mix(mixup(0.5), n, 4, 4, 21, 3);
  REQUIRE(d.applied);
  const auto lv = logits.to_vector<double>();
  // f64 throughout: the two computations differ by rounding only, a few ulps of terms of size ~|logits|
  // summed over n·C elements: far below 1e-12.
  for (double eps : {0.0, 0.1}) {
    INFO("label smoothing " << eps);
    CrossEntropyOptions opt;
    opt.label_smoothing = eps;
    const double got = mixed_cross_entropy(logits, labels, d, opt).item();
    const double want = mixed_loss_by_hand(lv, y, C, d.lambda, eps);
    CHECK(std::fabs(got - want) <= 1e-12 * std::max(1.0, std::fabs(want)));
  }
  // Class weights: both terms normalise by the same Σ w_y (the flipped labels are the same labels).
  const std::vector<double> w = {0.5, 2.0, 1.0, 3.0, 0.25};
  CrossEntropyOptions weighted;
  weighted.weight = Tensor::from(w, {C}, DType::f64);
  const double got = mixed_cross_entropy(logits, labels, d, weighted).item();
  const double want = mixed_loss_by_hand(lv, y, C, d.lambda, 0.0, w);
  CHECK(std::fabs(got - want) <= 1e-12 * std::max(1.0, std::fabs(want)));
  // The terms really differ: the loss is not CE(y) alone.
  CHECK(std::fabs(mixed_loss_by_hand(lv, y, C, 1.0, 0.0) - mixed_loss_by_hand(lv, y, C, d.lambda, 0.0)) > 1e-3);
}

TEST_CASE("mixed_cross_entropy's gradient matches central differences (float64)") {
  const int64_t n = 6, C = 4;
  Generator g(31);
  const Tensor labels = Tensor::from(std::vector<int64_t>{3, 0, 1, 1, 2, 0}, {n}, DType::i64);
  MixDraw d = draw_mix(mixup(1.0), n, 4, 4, 2, 5);
  REQUIRE(d.applied);
  for (double eps : {0.0, 0.1}) {
    INFO("label smoothing " << eps);
    CrossEntropyOptions opt;
    opt.label_smoothing = eps;
    testing::gradcheck([&](const std::vector<Tensor>& in) { return mixed_cross_entropy(in[0], labels, d, opt); },
                       {testing::leaf(g, {n, C}, -3, 3)});
  }
}

TEST_CASE("mixing refuses bad configurations and batches, naming the field") {
  auto refused = [](const MixConfig& c, const std::string& field) {
    INFO(field);
    CHECK_THROWS_AS(validate(c), std::invalid_argument);
    CHECK(contains(error_of([&] { draw_mix(c, 2, 4, 4, 0, 0); }), field));
  };
  refused(MixConfig{-0.1, 0, 1, 0.5}, "mixup_alpha");
  refused(MixConfig{std::nan(""), 0, 1, 0.5}, "mixup_alpha");
  refused(MixConfig{0, -1, 1, 0.5}, "cutmix_alpha");
  refused(MixConfig{0, INFINITY, 1, 0.5}, "cutmix_alpha");
  refused(MixConfig{1, 0, 1.5, 0.5}, "prob");
  refused(MixConfig{1, 0, -0.5, 0.5}, "prob");
  refused(MixConfig{1, 1, 1, -0.1}, "switch_prob");
  refused(MixConfig{1, 1, 1, 2}, "switch_prob");
  CHECK_NOTHROW(validate(MixConfig{0, 0, 0, 0}));
  CHECK_NOTHROW(validate(MixConfig{0.2, 1, 1, 1}));
  CHECK(contains(error_of([] { draw_mix(mixup(1), 0, 4, 4, 0, 0); }), "batch size"));
  CHECK(contains(error_of([] { draw_mix(mixup(1), 2, 0, 4, 0, 0); }), "image size"));
  CHECK(contains(error_of([] { draw_mix(mixup(1), 2, 4, 4, 0, uint64_t(1) << 32); }), "step"));

  const MixDraw d = draw_mix(mixup(1), 4, 4, 4, 0, 0);
  Tensor wrong_n = batch(3, 1, 4, 4, 0);
  CHECK(contains(error_of([&] { apply_mix(wrong_n, d); }), "pairs 4 samples"));
  Tensor f64 = batch(4, 1, 4, 4, 0).to(DType::f64);
  CHECK(contains(error_of([&] { apply_mix(f64, d); }), "f32"));
  MixDraw not_paired = d;
  not_paired.partner = {1, 2, 3, 0};
  Tensor images = batch(4, 1, 4, 4, 0);
  CHECK(contains(error_of([&] { apply_mix(images, not_paired); }), "partner"));
  MixDraw outside = draw_mix(cutmix(1), 4, 4, 4, 0, 0);
  outside.top = 3, outside.height = 2;
  CHECK(contains(error_of([&] { apply_mix(images, outside); }), "box"));
}

TEST_CASE("mixed_cross_entropy on CUDA matches the CPU, loss and gradient") {
  SKIP_WITHOUT_GPU();
  const int64_t n = 8, C = 6;
  const Tensor base = Generator(3).uniform({n, C}, -3, 3, DType::f32);
  const Tensor labels = Tensor::from(std::vector<int64_t>{5, 0, 1, 2, 3, 4, 5, 0}, {n}, DType::i64);
  const MixDraw d = draw_mix(MixConfig{0.8, 1.0, 1.0, 0.5}, n, 8, 8, 1, 2);
  REQUIRE(d.applied);
  CrossEntropyOptions opt;
  opt.label_smoothing = 0.1;
  Tensor x_cpu = base.clone().detach().set_requires_grad(true);
  Tensor x_gpu = base.to(Device::CUDA).detach().set_requires_grad(true);
  Tensor l_cpu = mixed_cross_entropy(x_cpu, labels, d, opt);
  // Twice on the device: the second call reuses the uploaded partner index.
  (void)mixed_cross_entropy(x_gpu.detach(), labels.to(Device::CUDA), d, opt);
  Tensor l_gpu = mixed_cross_entropy(x_gpu, labels.to(Device::CUDA), d, opt);
  l_cpu.backward();
  l_gpu.backward();
  // f32: a loss and gradients of size ~1 from n·C-term sums; CPU and CUDA sum in different orders, each
  // off by at most ~n·C·u ≈ 48·6e-8 ≈ 3e-6 relative; 1e-5 is a safe margin.
  CHECK(std::fabs(l_cpu.item() - l_gpu.item()) <= 1e-5 * std::max(1.0, std::fabs(l_cpu.item())));
  CHECK_CLOSE(x_gpu.grad().to(Device::CPU), x_cpu.grad(), 1e-6, 1e-5);
}

// ---------------------------------------------------------------- MixStyle

namespace {

// mix_style by hand in double: per sample b and channel c, μ and σ = √(var + ε) over the T tokens (var with
// the T − 1 divisor), then y = (x − μ)/σ·(λσ + (1 − λ)σ_p) + λμ + (1 − λ)μ_p. Also returns dy/dx per
// element (μ and σ held constant): the ratio of the mixed σ to the own σ.
struct MixStyleByHand {
  std::vector<double> y, dydx;
};
MixStyleByHand mix_style_by_hand(const std::vector<double>& x, int64_t B, int64_t T, int64_t C,
                                 const models::StyleMix& m) {
  std::vector<double> mu(size_t(B * C)), sigma(size_t(B * C));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, ss = 0;
      for (int64_t t = 0; t < T; ++t) s += x[size_t((b * T + t) * C + c)];
      const double mean = s / double(T);
      for (int64_t t = 0; t < T; ++t) ss += std::pow(x[size_t((b * T + t) * C + c)] - mean, 2);
      mu[size_t(b * C + c)] = mean;
      sigma[size_t(b * C + c)] = std::sqrt(ss / double(T - 1) + models::StyleMix::kEps);
    }
  MixStyleByHand r{std::vector<double>(x.size()), std::vector<double>(x.size())};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const size_t own = size_t(b * C + c), other = size_t(m.partner[size_t(b)] * C + c);
      const double l = m.lambda[size_t(b)];
      const double mu_mix = l * mu[own] + (1 - l) * mu[other], sigma_mix = l * sigma[own] + (1 - l) * sigma[other];
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = size_t((b * T + t) * C + c);
        r.y[i] = (x[i] - mu[own]) / sigma[own] * sigma_mix + mu_mix;
        r.dydx[i] = sigma_mix / sigma[own];
      }
    }
  return r;
}

}  // namespace

TEST_CASE("mix_style matches a float64 computation by hand, values and gradient") {
  // B = 5 (odd: the partner permutation has a fixed point or a 3-cycle), T = 7 tokens, C = 3 channels, each
  // sample's channels at its own scale and offset so that the mixed statistics really move. float64
  // throughout: the op and the hand computation differ only in summation order, ~T·u relative ≈ 1e-15;
  // 1e-12 is a wide margin that a formula slip (the divisor T for T − 1, λ and 1 − λ swapped) far exceeds.
  const int64_t B = 5, T = 7, C = 3;
  Tensor x = Generator(11).uniform({B, T, C}, -1, 1, DType::f64);
  std::vector<double> xv = x.to_vector<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) xv[size_t((b * T + t) * C + c)] = xv[size_t((b * T + t) * C + c)] * double(1 + b + c) + double(b - c);
  x = Tensor::from(xv, {B, T, C}, DType::f64).set_requires_grad(true);
  const models::StyleMix m{{3, 0, 4, 1, 2}, {0.9, 0.1, 0.5, 0.0, 1.0}};
  const Tensor w = Generator(12).uniform({B, T, C}, -1, 1, DType::f64);
  Tensor y = models::mix_style(x, m);
  sum(y * w).backward();
  const MixStyleByHand want = mix_style_by_hand(xv, B, T, C, m);
  const std::vector<double> got = y.to_vector<double>(), grad = x.grad().to_vector<double>(), wv = w.to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i] == doctest::Approx(want.y[i]).epsilon(1e-12));
    CHECK(grad[i] == doctest::Approx(wv[i] * want.dydx[i]).epsilon(1e-12));
  }
  // λ = 1 everywhere is the identity: scale σ/σ = 1 and shift μ − μ·1 = 0 exactly.
  const models::StyleMix self{{1, 0, 3, 2, 4}, {1, 1, 1, 1, 1}};
  CHECK_CLOSE(models::mix_style(x.detach(), self), x.detach(), 1e-13, 1e-13);
  // One token has no spread: x comes back as it is.
  const Tensor one = Generator(13).uniform({B, 1, C}, -1, 1, DType::f64);
  CHECK(models::mix_style(one, m).to_vector<double>() == one.to_vector<double>());
}

TEST_CASE("mix_style in f32 and bf16 against float64") {
  // f32: the statistics in f32 over T = 50 tokens, ~T·u ≈ 3e-6 relative at worst; the output is x·scale +
  // shift of size ~3: 1e-4 absolute is a safe bound. bf16: y = x·scale + shift with x, scale, the product,
  // shift and the sum each rounded to bf16 (2^-9 relative); with |x·scale|, |shift| and |y| at most ~5 here
  // that is ≤ 5·5·2^-9 ≈ 0.049 (measured: 0.028).
  const int64_t B = 4, T = 50, C = 8;
  const Tensor x = Generator(21).uniform({B, T, C}, -3, 3, DType::f64);
  const models::StyleMix m{{2, 3, 0, 1}, {0.3, 0.7, 0.0, 0.95}};
  const Tensor want = models::mix_style(x, m);
  CHECK_CLOSE(models::mix_style(x.to(DType::f32), m).to(DType::f64), want, 1e-4, 0);
  CHECK_CLOSE(models::mix_style(x.to(DType::bf16), m).to(DType::f64), want, 0.05, 0);
}

TEST_CASE("mix_style refuses a draw that does not fit the batch") {
  const Tensor x = Tensor::zeros({3, 4, 2}, DType::f32);
  CHECK(contains(error_of([&] { models::mix_style(x, models::StyleMix{{0, 1}, {1, 1}}); }), "batch of 3"));
  CHECK(contains(error_of([&] { models::mix_style(x, models::StyleMix{{0, 1, 3}, {1, 1, 1}}); }), "partner[2] = 3"));
  CHECK(contains(error_of([&] { models::mix_style(x, models::StyleMix{{0, 1, 2}, {1, 1.5, 1}}); }), "lambda[1]"));
  CHECK(contains(error_of([&] { models::mix_style(Tensor::zeros({3, 4}), models::StyleMix{}); }), "(B, T, C)"));
}

TEST_CASE("draw_style_mix: a permutation and Beta weights, from (seed, step) alone, at its rate") {
  // Determinism and dependence on (seed, step).
  const auto a = draw_style_mix(1.0, 0.1, 16, 5, 123), b = draw_style_mix(1.0, 0.1, 16, 5, 123);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->partner == b->partner);
  CHECK(a->lambda == b->lambda);
  CHECK(draw_style_mix(1.0, 0.1, 16, 5, 124)->partner != a->partner);
  CHECK(draw_style_mix(1.0, 0.1, 16, 6, 123)->lambda != a->lambda);
  // prob 0 never mixes; prob 0.5 mixes about half the steps: 4,000 steps, standard error √(0.25/4000) ≈
  // 0.0079, so ±0.04 is 5 standard errors.
  int mixed = 0;
  for (uint64_t step = 0; step < 4000; ++step) {
    CHECK_FALSE(draw_style_mix(0.0, 0.1, 4, 9, step));
    mixed += bool(draw_style_mix(0.5, 0.1, 4, 9, step));
  }
  CHECK(std::fabs(mixed / 4000.0 - 0.5) < 0.04);
  // Every draw's partners are a permutation; position 0's partner is uniform over the batch (8 values, 5,000
  // draws: each count 625 ± √(5000·(1/8)·(7/8)) ≈ ±23.4, a 5-SE band of ±117); the 40,000 weights have
  // Beta(α, α)'s mean 1/2 and variance 1/(4(2α + 1)) = 1/4.8 at α = 0.1 (SE of the mean √(0.2083/40000) ≈
  // 0.0023, of the variance 0.2083·√((2 − 6/3.2)/40000) ≈ 0.0004; 5-SE bands ±0.012 and ±0.002).
  std::vector<int> first(8, 0);
  double s = 0, ss = 0;
  int64_t count = 0;
  for (uint64_t step = 0; step < 5000; ++step) {
    const auto d = draw_style_mix(1.0, 0.1, 8, 3, step);
    REQUIRE(d);
    std::vector<int64_t> sorted = d->partner;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
    ++first[size_t(d->partner[0])];
    for (double l : d->lambda) {
      CHECK((l >= 0 && l <= 1));
      s += l, ss += l * l, ++count;
    }
  }
  for (int c : first) CHECK(std::abs(c - 625) < 117);
  REQUIRE(count == 40000);
  const double mean = s / double(count), var = ss / double(count) - mean * mean;
  CHECK(std::fabs(mean - 0.5) < 0.012);
  CHECK(std::fabs(var - 1.0 / 4.8) < 0.002);
  // Refusals name the field.
  CHECK(contains(error_of([] { draw_style_mix(1.5, 0.1, 4, 1, 0); }), "prob"));
  CHECK(contains(error_of([] { draw_style_mix(0.5, 0.0, 4, 1, 0); }), "alpha"));
  CHECK(contains(error_of([] { draw_style_mix(0.5, 0.1, 0, 1, 0); }), "batch size"));
  CHECK(contains(error_of([] { draw_style_mix(0.5, 0.1, 4, 1, uint64_t(1) << 32); }), "step"));
}

TEST_CASE("a CvT in training mixes its statistics only when given a mix, and λ = 1 changes nothing") {
  // cvt-tiny at 32 px, batch 4. Without a mix, with λ = 1 (scale 1, shift 0: the identity) and with a real
  // mix, from one weight set and one dropout/drop-path stream each (the tolerance would also pass a last-bit
  // difference; the draw must not consume the generator). Evaluation ignores the mix.
  auto model = models::make_model(models::preset_config("cvt-tiny"), 3);
  REQUIRE(model->supports_style_mix());
  const Tensor images = Generator(4).uniform({4, 3, 32, 32}, -1, 1, DType::f32);
  auto logits = [&](const models::StyleMix* mix, bool training) {
    Generator gen(5);
    model->set_style_mix(mix);
    Tensor out = model->forward(images, training, gen);
    model->set_style_mix(nullptr);
    return out;
  };
  const Tensor plain = logits(nullptr, true);
  const models::StyleMix identity{{1, 0, 3, 2}, {1, 1, 1, 1}}, mixed{{1, 0, 3, 2}, {0.2, 0.6, 0.0, 0.9}};
  CHECK_CLOSE(logits(&identity, true), plain, 1e-4, 1e-4);
  CHECK(max(abs(logits(&mixed, true) - plain)).item() > 1e-3);
  CHECK(logits(&mixed, false).to_vector<float>() == logits(nullptr, false).to_vector<float>());
  // ViT has no stages for it.
  CHECK_FALSE(models::make_model(models::preset_config("vit-ti16"))->supports_style_mix());
}

TEST_CASE("mix_style on CUDA matches the CPU, values and gradient") {
  SKIP_WITHOUT_GPU();
  // The op composes existing ops (mean, sum, sqrt, index_select, elementwise); f32 on both sides with
  // statistics over T = 50 tokens in different summation orders: ~T·u ≈ 3e-6 relative, output size ~3.
  const int64_t B = 4, T = 50, C = 8;
  const Tensor base = Generator(31).uniform({B, T, C}, -3, 3, DType::f32);
  const models::StyleMix m{{2, 3, 0, 1}, {0.3, 0.7, 0.0, 0.95}};
  Tensor x_cpu = base.clone().detach().set_requires_grad(true);
  Tensor x_gpu = base.to(Device::CUDA).detach().set_requires_grad(true);
  const Tensor w = Generator(32).uniform({B, T, C}, -1, 1, DType::f32);
  Tensor y_cpu = models::mix_style(x_cpu, m), y_gpu = models::mix_style(x_gpu, m);
  sum(y_cpu * w).backward();
  sum(y_gpu * w.to(Device::CUDA)).backward();
  CHECK_CLOSE(y_gpu.to(Device::CPU), y_cpu, 1e-4, 1e-5);
  CHECK_CLOSE(x_gpu.grad().to(Device::CPU), x_cpu.grad(), 1e-5, 1e-5);
}
