// AdamW, parameter groups, gradient clipping, learning-rate schedules and optimizer state save/load.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kernels/devices.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "train/schedule.h"
#include "engine/core/backend.h"
#include "kernels/cuda/multi_tensor.h"

#include "tests/errors.h"

using namespace tessera;
using tessera::testing::contains;
using tessera::testing::error_of;

namespace {

Tensor param(const std::vector<double>& values, DType dt = DType::f64) {
  Tensor t = Tensor::from(values, {int64_t(values.size())}, dt);
  t.set_requires_grad(true);
  return t;
}

void set_grad(Tensor& p, const std::vector<double>& g) {
  p.set_grad(Tensor::from(g, {int64_t(g.size())}, p.dtype()));
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::abs(a[i] - b[i]);
    if (!(d <= worst)) worst = d;  // NaN-propagating
  }
  return worst;
}

std::string temp_path(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("tessera_test_optim_" + tag + "_" + std::to_string(getpid()) + ".safetensors"))
      .string();
}

// The inputs of tools/optim_reference.py.
constexpr double kLr = 0.1, kWd = 0.1, kB1 = 0.9, kB2 = 0.999, kEps = 1e-8;
const std::vector<double> kTheta0 = {1.0, -0.5, 0.25, 2.0, 0.75};
const std::vector<std::vector<double>> kGrads = {
    {0.1, -0.2, 0.0, 1.5, 1e-8},
    {0.3, 0.1, -0.05, -1.0, 1e-8},
    {-0.2, 0.4, 0.0, 0.5, 1e-8},
};

// The torch.optim.AdamW documentation's pseudo-code (Loshchilov & Hutter), written independently of the
// kernel's fused form: decay, moments, bias-corrected m̂ and v̂, then θ − lr·m̂/(√v̂ + ε).
struct TextbookAdamW {
  std::vector<double> theta, m, v;
  int t = 0;
  explicit TextbookAdamW(std::vector<double> theta0)
      : theta(theta0), m(theta0.size(), 0.0), v(theta0.size(), 0.0) {}
  void step(const std::vector<double>& g, double lr, double wd) {
    ++t;
    for (size_t i = 0; i < theta.size(); ++i) {
      theta[i] -= lr * wd * theta[i];
      m[i] = kB1 * m[i] + (1 - kB1) * g[i];
      v[i] = kB2 * v[i] + (1 - kB2) * g[i] * g[i];
      double m_hat = m[i] / (1 - std::pow(kB1, t)), v_hat = v[i] / (1 - std::pow(kB2, t));
      theta[i] -= lr * m_hat / (std::sqrt(v_hat) + kEps);
    }
  }
};

AdamWOptions reference_options() {
  AdamWOptions o;
  o.lr = kLr;
  o.weight_decay = kWd;
  return o;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ (a)

TEST_CASE("AdamW f64 matches the textbook algorithm and tools/optim_reference.py over 3 steps") {
  Tensor p = param(kTheta0);
  AdamW opt({NamedParameter{"w", p}}, reference_options());
  TextbookAdamW ref(kTheta0);
  // Error bound, f64: the kernel computes (lr/bc1)·m/(√v/√bc2 + ε) while the reference computes
  // lr·(m/bc1)/(√(v/bc2) + ε); each form rounds ~10 times, so per step they differ by at most
  // ~10·2⁻⁵³·(|θ| + |update|) ≤ 10·1.1e-16·(2 + 0.3) ≈ 2.6e-15, and errors in θ are carried, never amplified
  // (θ is only scaled by 1 − lr·wd < 1). 3 steps: < 8e-15, so 2e-14 absolute. A real mistake (decay
  // after the update, a missing bias correction, ε inside the sqrt) moves θ by >= 1e-3.
  const double tol = 2e-14;
  for (const auto& g : kGrads) {
    set_grad(p, g);
    opt.step();
    ref.step(g, kLr, kWd);
    CHECK(max_abs_diff(p.to_vector<double>(), ref.theta) <= tol);
  }
  // Output of `python3 tools/optim_reference.py` (plain-Python doubles, the same textbook algorithm):
  //   step 3: theta = [0.755638303768737, -0.4065053169146632, 0.37376624691103455, 1.8004295771980265,
  //                    0.5792192500000002]
  //   exp_avg    = [0.015099999999999995, 0.032799999999999996, -0.0045, 0.08149999999999999,
  //                 2.7099999999999995e-09]
  //   exp_avg_sq = [0.0001398900100000001, 0.00020991004000000022, 2.4975000000000028e-06,
  //                 0.003494502250000003, 2.9970010000000025e-19]
  const std::vector<double> theta3 = {0.755638303768737, -0.4065053169146632, 0.37376624691103455,
                                      1.8004295771980265, 0.5792192500000002};
  const std::vector<double> m3 = {0.015099999999999995, 0.032799999999999996, -0.0045, 0.08149999999999999,
                                  2.7099999999999995e-09};
  const std::vector<double> v3 = {0.0001398900100000001, 0.00020991004000000022, 2.4975000000000028e-06,
                                  0.003494502250000003, 2.9970010000000025e-19};
  CHECK(max_abs_diff(p.to_vector<double>(), theta3) <= tol);
  // The moments are the same recurrences in both; they differ only by rounding (and FMA contraction):
  // ≤ 3 steps × ~6 roundings of 2⁻⁵³ ≈ 2e-15 relative, times at most ~3 from cancellation between steps
  // (element 0: 0.0351 − 0.02 = 0.0151), so 1e-14 relative.
  const auto& st = opt.states()[0];
  CHECK(st.step == 3);
  auto rel_diff = [](const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      double d = std::abs(a[i] - b[i]) / std::abs(b[i]);
      if (!(d <= worst)) worst = d;  // NaN-propagating
    }
    return worst;
  };
  CHECK(rel_diff(st.exp_avg.to_vector<double>(), m3) <= 1e-14);
  CHECK(rel_diff(st.exp_avg_sq.to_vector<double>(), v3) <= 1e-14);
}

TEST_CASE("AdamW f32 matches the double-precision textbook algorithm to f32 rounding") {
  Tensor p = param(kTheta0, DType::f32);  // the initial values are exact in f32
  AdamW opt({NamedParameter{"w", p}}, reference_options());
  TextbookAdamW ref(kTheta0);
  // Error bound, f32: the kernel computes each step in f32 (as torch does for fp32 parameters). θ·decay and
  // the subtraction round twice, ≤ 2·2⁻²⁴·|θ| ≤ 2.4e-7 (|θ| ≤ 2); the update lr·m̂/(√v̂ + ε) (≤ 0.1·3) is a
  // ratio whose parts carry ~11 roundings of 2⁻²⁴ relative (the moments' products and sums with their
  // rounded constants, the root, the two divisions, the step size) → ≤ 11·6e-8·0.3 ≈ 2e-7. Per step ≤ 4.4e-7,
  // over 3 steps ≤ 1.3e-6 (the moments' own errors are damped by β < 1), so 2e-6. Bugs move θ by ≥ 1e-3
  // (see the f64 case); steps computed with 1 − float(β) instead of float(1 − β) erred by 1.4e-6 here.
  const double tol = 2e-6;
  for (const auto& g : kGrads) {
    set_grad(p, g);
    opt.step();
    // The reference uses the gradient as the kernel saw it: rounded to f32.
    ref.step(p.grad().to_vector<double>(), kLr, kWd);
    CHECK(max_abs_diff(p.to_vector<double>(), ref.theta) <= tol);
  }
  CHECK(p.dtype() == DType::f32);
  CHECK(opt.states()[0].exp_avg.dtype() == DType::f32);
}

TEST_CASE("AdamW f32's first moments are (1 - beta)·g to a few roundings, as torch's") {
  // From zero moments one step gives m = (1 − β₁)·g and v = (1 − β₂)·g², each in f32 with ≤ 3 roundings of
  // 2⁻²⁴ (the factor rounded to f32, the products). A kernel that formed 1 − float(β₂) in f32 would be off
  // by 1.3e-5 relative (float(0.999) is 1e-8 away from 0.999), which the update tests above cannot see.
  const std::vector<double> g = {0.1, -0.2, 1.5, -3.0, 7.0};
  Tensor p = param({1.0, 1.0, 1.0, 1.0, 1.0}, DType::f32);
  AdamW opt({NamedParameter{"w", p}}, reference_options());
  set_grad(p, g);
  opt.step();
  const std::vector<double> m = opt.states()[0].exp_avg.to_vector<double>(),
                            v = opt.states()[0].exp_avg_sq.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    const double gi = double(float(g[i])), want_m = (1 - kB1) * gi, want_v = (1 - kB2) * gi * gi;
    CHECK(std::fabs(m[i] - want_m) <= 3 * 0x1p-24 * std::fabs(want_m));
    CHECK(std::fabs(v[i] - want_v) <= 3 * 0x1p-24 * want_v);
  }
}

TEST_CASE("CPU adamw kernel: bf16 gradients and clear errors") {
  Tensor p = Tensor::from(std::vector<double>{1.0, -2.0}, {2}, DType::f32);
  Tensor m = Tensor::zeros({2}, DType::f32), v = Tensor::zeros({2}, DType::f32);
  Backend::AdamWStep s{0.1, 0.9, 0.999, 1e-8, 1 - 0.9, 1 - 0.999};
  // Step 1 with no decay moves each element by lr·sign(g) (m̂/√v̂ = g/|g|), up to ε and f32 rounding.
  Tensor g_bf16 = Tensor::from(std::vector<double>{0.5, -4.0}, {2}, DType::bf16);  // exact in bf16
  cpu_backend().adamw({{p, g_bf16, m, v, 0.0}}, s);
  auto pv = p.to_vector<double>();
  CHECK(std::abs(pv[0] - 0.9) <= 1e-6);
  CHECK(std::abs(pv[1] - (-1.9)) <= 1e-6);

  // A bad entry anywhere in the list is named by position, and nothing is updated.
  Tensor q = Tensor::from(std::vector<double>{3.0}, {1}, DType::f32);
  Tensor qm = Tensor::zeros({1}, DType::f32), qv = Tensor::zeros({1}, DType::f32);
  Tensor m64 = Tensor::zeros({2}, DType::f64);
  const std::string err = error_of([&] {
    cpu_backend().adamw({{q, Tensor::ones({1}, DType::f32), qm, qv, 0.0}, {p, g_bf16, m64, v, 0.0}}, s);
  });
  CHECK(contains(err, "parameter 1"));
  CHECK(contains(err, "must have the dtype of param"));
  CHECK(q.item() == 3.0);
  Tensor g3 = Tensor::zeros({3}, DType::f32);
  CHECK(contains(error_of([&] { cpu_backend().adamw({{p, g3, m, v, 0.0}}, s); }), "shapes differ"));
  Tensor p_i64 = Tensor::zeros({2}, DType::i64), m_i64 = Tensor::zeros({2}, DType::i64),
         v_i64 = Tensor::zeros({2}, DType::i64);
  CHECK(contains(error_of([&] { cpu_backend().adamw({{p_i64, g_bf16, m_i64, v_i64, 0.0}}, s); }), "f32 or f64"));
  Tensor g16 = Tensor::zeros({2}, DType::f16);
  CHECK(contains(error_of([&] { cpu_backend().adamw({{p, g16, m, v, 0.0}}, s); }), "must be f32, f64 or bf16"));
  Backend::AdamWStep bad = s;
  bad.bias_correction1 = 0;  // step 0: would divide by zero
  CHECK(contains(error_of([&] { cpu_backend().adamw({{p, g_bf16, m, v, 0.0}}, bad); }), "bias corrections"));
}

TEST_CASE("AdamW.step: one backend call per step count, each parameter with its own weight decay") {
  // Three parameters; the second has no gradient at step 1, so at step 2 it is at its own step 1 while the
  // others are at step 2: two groups, each must use its own bias corrections. Compared with per-parameter
  // updates computed directly from the formula in double.
  Generator gen(5);
  std::vector<Tensor> ps = {gen.normal({7}, 0, 1, DType::f64), gen.normal({3, 2}, 0, 1, DType::f64),
                            gen.normal({1}, 0, 1, DType::f64)};
  std::vector<NamedParameter> named;
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].set_requires_grad(true);
    named.push_back({"p" + std::to_string(i), ps[i]});
  }
  AdamWOptions o;
  o.lr = 0.01;
  AdamW opt({ParamGroup{{named[0], named[1]}, 0.1}, ParamGroup{{named[2]}, 0.0}}, o);
  struct Ref { std::vector<double> p, m, v; int64_t t = 0; double wd; };
  std::vector<Ref> ref;
  for (size_t i = 0; i < ps.size(); ++i) {
    auto pv = ps[i].to_vector<double>();
    ref.push_back({pv, std::vector<double>(pv.size()), std::vector<double>(pv.size()), 0, i < 2 ? 0.1 : 0.0});
  }
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < ps.size(); ++i) {
      if (step == 1 && i == 1) { ps[i].zero_grad(); continue; }
      Tensor g = gen.normal(ps[i].shape(), 0, 1, DType::f64);
      ps[i].set_grad(g);
      auto gv = g.to_vector<double>();
      Ref& r = ref[i];
      r.t += 1;
      const double bc1 = 1 - std::pow(0.9, double(r.t)), bc2 = 1 - std::pow(0.999, double(r.t));
      for (size_t k = 0; k < gv.size(); ++k) {
        r.p[k] *= 1 - o.lr * r.wd;
        r.m[k] = 0.9 * r.m[k] + 0.1 * gv[k];
        r.v[k] = 0.999 * r.v[k] + 0.001 * gv[k] * gv[k];
        r.p[k] -= o.lr / bc1 * r.m[k] / (std::sqrt(r.v[k]) / std::sqrt(bc2) + o.eps);
      }
    }
    opt.step();
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    CHECK(opt.states()[i].step == ref[i].t);
    auto pv = ps[i].to_vector<double>();
    for (size_t k = 0; k < pv.size(); ++k) CHECK(std::abs(pv[k] - ref[i].p[k]) <= 1e-14);
  }
}

TEST_CASE("multi-tensor launch plan: every chunk of every tensor exactly once, within the launch limits") {
  namespace aw = tessera::cuda::multi_tensor;
  // Small limits so the edge cases (a tensor split across launches, full slot tables, empty tensors) occur.
  const int64_t chunk = 4;
  const int max_tensors = 3, max_blocks = 5;
  const std::vector<int64_t> sizes = {0, 1, 4, 5, 17, 0, 3, 8, 9, 2, 1, 1, 1, 40};
  std::vector<std::vector<int>> seen(sizes.size());
  for (size_t t = 0; t < sizes.size(); ++t) seen[t].assign(size_t((sizes[t] + chunk - 1) / chunk), 0);
  const auto launches = aw::plan_launches(sizes, chunk, max_tensors, max_blocks);
  for (const aw::Launch& l : launches) {
    REQUIRE(!l.block_slot.empty());
    CHECK(int(l.tensors.size()) <= max_tensors);
    CHECK(int(l.block_slot.size()) <= max_blocks);
    REQUIRE(l.block_slot.size() == l.block_chunk.size());
    for (size_t b = 0; b < l.block_slot.size(); ++b) {
      REQUIRE(l.block_slot[b] < l.tensors.size());
      const int t = l.tensors[l.block_slot[b]];
      REQUIRE(l.block_chunk[b] < int32_t(seen[size_t(t)].size()));
      seen[size_t(t)][size_t(l.block_chunk[b])] += 1;
    }
  }
  for (size_t t = 0; t < sizes.size(); ++t)
    for (int count : seen[t]) CHECK_MESSAGE(count == 1, "tensor " << t);
  // The real limits: CvT-13's ~20 M parameters in ~300 tensors take about a dozen launches, not 300.
  std::vector<int64_t> cvt_like(300, 20'000'000 / 300);
  const auto real = aw::plan_launches(cvt_like);
  CHECK(real.size() <= 12);
  CHECK(real.size() >= 300 / size_t(aw::kMaxTensors));
}

// ------------------------------------------------------------------------------------------------ (b)

TEST_CASE("AdamW skips parameters without a gradient: no decay, no state change, own step counter") {
  Tensor a = param({1.0, 2.0}), b = param({3.0, -4.0}), c = param({0.5, 0.25});
  AdamW opt({NamedParameter{"a", a}, NamedParameter{"b", b}, NamedParameter{"c", c}}, reference_options());
  // A separate optimizer that sees only c's two steps: c must end bit-identical to it, which shows that
  // c's bias corrections use c's own count (2), not the optimizer's (3).
  Tensor c_alone = param({0.5, 0.25});
  AdamW opt_alone({NamedParameter{"c", c_alone}}, reference_options());

  const std::vector<std::vector<double>> gc = {{0.3, -0.1}, {0.2, 0.7}};
  set_grad(a, {0.1, 0.2});
  set_grad(c, gc[0]);
  opt.step();
  set_grad(c_alone, gc[0]);
  opt_alone.step();
  opt.zero_grad();
  CHECK(!a.grad().defined());
  CHECK(!c.grad().defined());
  set_grad(a, {0.1, 0.2});  // c has no gradient this step
  opt.step();
  set_grad(a, {0.1, 0.2});
  set_grad(c, gc[1]);
  opt.step();
  set_grad(c_alone, gc[1]);
  opt_alone.step();

  CHECK(b.to_vector<double>() == std::vector<double>{3.0, -4.0});  // never had a gradient: untouched
  CHECK(opt.states()[1].step == 0);
  CHECK(opt.states()[1].exp_avg.to_vector<double>() == std::vector<double>{0.0, 0.0});
  CHECK(opt.states()[1].exp_avg_sq.to_vector<double>() == std::vector<double>{0.0, 0.0});
  CHECK(opt.states()[0].step == 3);
  CHECK(opt.states()[2].step == 2);
  CHECK(c.to_vector<double>() == c_alone.to_vector<double>());
}

TEST_CASE("AdamW rejects bad parameters, hyperparameters and gradients") {
  Tensor a = param({1.0, 2.0});
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"a", a}, NamedParameter{"a", param({1.0})}}); }),
                 "given more than once"));
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"a", a}, NamedParameter{"b", a}}); }),
                 "already given under another name"));
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"", a}}); }), "empty name"));
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"i", Tensor::zeros({2}, DType::i64)}}); }),
                 "f32 or f64"));
  Tensor wide = Tensor::zeros({2, 3}, DType::f32).transpose(0, 1);
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"t", wide}}); }), "not contiguous"));
  AdamWOptions o;
  o.lr = -1;
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"a", a}}, o); }), "lr"));
  o = AdamWOptions{};
  o.beta2 = 1.0;
  CHECK(contains(error_of([&] { AdamW({NamedParameter{"a", a}}, o); }), "beta2"));
  CHECK(contains(error_of([&] { AdamW(std::vector<ParamGroup>{ParamGroup{{NamedParameter{"a", a}}, -0.1}}); }),
                 "weight_decay"));

  AdamW opt({NamedParameter{"a", a}});
  CHECK(contains(error_of([&] { opt.set_lr(std::nan("")); }), "lr"));
  opt.set_lr(2e-5);
  CHECK(opt.lr() == 2e-5);
}

TEST_CASE("weight decay follows the parameter's group") {
  // With a zero gradient the moments stay 0 and the update is 0/(0 + ε) = 0, so one step is pure decay:
  // θ·(1 − lr·wd) for the decaying group (the same double product the kernel forms), θ for the other.
  Tensor w = param({1.5, -2.0}), bias = param({0.5, 3.0});
  auto groups = trainer_param_groups({{"encoder.dense.weight", w, false}, {"encoder.dense.bias", bias, false}}, 0.1);
  AdamW opt(groups, reference_options());
  set_grad(w, {0.0, 0.0});
  set_grad(bias, {0.0, 0.0});
  opt.step();
  const double f = 1.0 - kLr * 0.1;
  CHECK(w.to_vector<double>() == std::vector<double>{1.5 * f, -2.0 * f});
  CHECK(bias.to_vector<double>() == std::vector<double>{0.5, 3.0});
}

// ------------------------------------------------------------------------------------------------ (c)

TEST_CASE("Trainer decay groups on CvT and ViT names") {
  struct Case { const char* name; bool in_layer_norm; bool decays; };
  const Case cases[] = {
      // CvT's convolutional embedding norm is a LayerNorm: no decay for weight or bias.
      {"cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.weight", true, false},
      {"cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.bias", true, false},
      // The attention projection's norm is a BatchNorm: its weight decays, its bias does not (name).
      {"cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection."
       "normalization.weight", false, true},
      {"cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection."
       "normalization.bias", false, false},
      {"cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight", false, true},
      {"cvt.encoder.stages.0.layers.0.layernorm_before.weight", true, false},
      {"cvt.encoder.stages.2.cls_token", false, true},
      {"classifier.weight", false, true},
      {"classifier.bias", false, false},
      {"vit.embeddings.position_embeddings", false, true},
      {"vit.embeddings.cls_token", false, true},
      {"vit.layernorm.weight", true, false},
      {"vit.encoder.layer.0.attention.attention.query.bias", false, false},
  };
  std::vector<NamedParameter> params;
  for (const auto& c : cases) {
    NamedParameter p{c.name, param({1.0}), c.in_layer_norm};
    INFO(c.name);
    CHECK(trainer_applies_weight_decay(p) == c.decays);
    params.push_back(p);
  }
  auto groups = trainer_param_groups(params, 0.01);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].weight_decay == 0.01);
  CHECK(groups[1].weight_decay == 0.0);
  size_t expected_decay = 0;
  for (const auto& c : cases) expected_decay += c.decays;
  CHECK(groups[0].params.size() == expected_decay);
  CHECK(groups[1].params.size() == params.size() - expected_decay);
  for (const auto& p : groups[0].params) CHECK(trainer_applies_weight_decay(p));
  for (const auto& p : groups[1].params) CHECK(!trainer_applies_weight_decay(p));

  AdamW opt(groups);
  REQUIRE(opt.states().size() == params.size());
  for (const auto& s : opt.states()) {
    INFO(s.param.name);
    CHECK(s.weight_decay == (trainer_applies_weight_decay(s.param) ? 0.01 : 0.0));
  }
}

// ------------------------------------------------------------------------------------------------ (d)

TEST_CASE("clip_grad_norm: global norm, scaling above max_norm, nothing below") {
  Tensor a = param({3.0, 4.0}), b = param({12.0}), no_grad = param({100.0});
  auto reset = [&] {
    set_grad(a, {3.0, 4.0});
    set_grad(b, {12.0});
  };
  const std::vector<Tensor> params = {a, b, no_grad};

  SUBCASE("above: scaled by max_norm / (total + 1e-6)") {
    reset();
    double total = clip_grad_norm(params, 6.5);
    CHECK(total == 13.0);  // √(9 + 16 + 144): exact in double
    const double coef = 6.5 / (13.0 + 1e-6);
    // One rounding of g·coef: relative 2⁻⁵³ ≈ 1.1e-16; allow 4e-16.
    auto near = [](double x, double y) { return std::abs(x - y) <= 4e-16 * std::abs(y); };
    auto ga = a.grad().to_vector<double>(), gb = b.grad().to_vector<double>();
    CHECK(near(ga[0], 3.0 * coef));
    CHECK(near(ga[1], 4.0 * coef));
    CHECK(near(gb[0], 12.0 * coef));
    CHECK(!no_grad.grad().defined());
    // The clipped gradients now have norm just under max_norm.
    double after = clip_grad_norm(params, 1e9);
    CHECK(after < 6.5);
    CHECK(after > 6.5 * (1 - 1e-6));
  }
  SUBCASE("below: unchanged, bit for bit") {
    reset();
    CHECK(clip_grad_norm(params, 13.1) == 13.0);
    CHECK(a.grad().to_vector<double>() == std::vector<double>{3.0, 4.0});
    CHECK(b.grad().to_vector<double>() == std::vector<double>{12.0});
  }
  SUBCASE("at max_norm: torch's +1e-6 still scales slightly") {
    reset();
    clip_grad_norm(params, 13.0);
    CHECK(a.grad().to_vector<double>()[0] < 3.0);
  }
  SUBCASE("f32 gradients are accumulated in double") {
    Tensor f = param({0, 0, 0}, DType::f32);
    set_grad(f, {1e-3, 2e-3, 2e-3});
    auto g = f.grad().to_vector<double>();  // the f32-rounded values
    double expected = std::sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]);
    CHECK(std::abs(clip_grad_norm({f}, 1.0) - expected) <= 1e-15 * expected);
  }
  SUBCASE("no gradients, bad max_norm, non-finite norms") {
    CHECK(clip_grad_norm({no_grad}, 1.0) == 0.0);
    CHECK(contains(error_of([&] { clip_grad_norm(params, 0.0); }), "max_norm"));
    CHECK(contains(error_of([&] { clip_grad_norm({Tensor()}, 1.0); }), "undefined"));
    set_grad(a, {INFINITY, 1.0});
    CHECK(contains(error_of([&] { clip_grad_norm({a}, 1.0, true); }), "non-finite"));
    CHECK(std::isinf(clip_grad_norm({a}, 1.0)));  // torch's default: no error
  }
}

TEST_CASE("the CPU's clipping passes over many chunks: sum of squares in f64, scaling rounded once") {
  // Sizes that span several of the CPU's fixed chunks (2^15 elements) with ragged ends, f32 and f64.
  Generator gen(9);
  std::vector<Tensor> xs = {gen.normal({70001}, 0, 1, DType::f32), gen.normal({3}, 0, 1, DType::f64),
                            gen.normal({257, 129}, 0, 1, DType::f32), Tensor::empty({0}, DType::f32)};
  long double exact = 0, mass = 0;
  for (const Tensor& x : xs)
    for (double v : x.to(DType::f64).to_vector<double>()) exact += (long double)v * v, mass += (long double)v * v;
  Tensor sq = Tensor::zeros({}, DType::f64);
  cpu_backend().sum_of_squares(xs, sq);
  // n terms summed in f64 (chunk sums, then chunks in order): |err| <= n·2^-53·Σx², n ≈ 1.04e5.
  CHECK(std::abs((long double)sq.item() - exact) <= 1.04e5 * 0x1p-53 * mass);
  Tensor again = Tensor::zeros({}, DType::f64);
  cpu_backend().sum_of_squares(xs, again);
  CHECK(again.item() == sq.item());  // the same order every time

  const double f = 0.3;
  std::vector<std::vector<float>> before32 = {xs[0].to_vector<float>(), xs[2].to_vector<float>()};
  std::vector<double> before64 = xs[1].to_vector<double>();
  cpu_backend().scale(xs, Tensor::scalar(f, DType::f64));
  // Each element times the factor rounded to its dtype: exactly what x·float(f) is in that dtype.
  for (size_t t = 0; t < 2; ++t) {
    std::vector<float> got = xs[t == 0 ? 0 : 2].to_vector<float>();
    for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == before32[t][i] * float(f));
  }
  std::vector<double> got64 = xs[1].to_vector<double>();
  for (size_t i = 0; i < got64.size(); ++i) CHECK(got64[i] == before64[i] * f);
  const std::vector<float> unit = xs[0].to_vector<float>();
  cpu_backend().scale(xs, Tensor::scalar(1.0, DType::f64));
  CHECK(xs[0].to_vector<float>() == unit);  // a factor of exactly 1 leaves them untouched
}

// ------------------------------------------------------------------------------------------------ (e)

TEST_CASE("learning-rate schedules as Hugging Face defines them") {
  const double b = 2e-5;
  auto rel_close = [](double x, double y) { return std::abs(x - y) <= 1e-15 * std::abs(y); };

  SUBCASE("the study's case: linear, no warmup, lr·(N−k)/N") {
    const int64_t N = 2870;  // 287 steps per epoch × 10 epochs
    LrSchedule s{LrSchedule::Kind::Linear, b, 0, N};
    CHECK(s.lr_at(0) == b);
    for (int64_t k : {1, 7, 287, 1435, 2000, 2869}) {
      INFO("k = " << k);
      // HF rounds b·((N−k)/N); lr·(N−k)/N rounds differently by at most 2 ulps.
      CHECK(rel_close(s.lr_at(k), b * double(N - k) / double(N)));
    }
    CHECK(s.lr_at(N) == 0.0);
    CHECK(s.lr_at(N + 5) == 0.0);
  }
  SUBCASE("linear with warmup") {
    LrSchedule s{LrSchedule::Kind::Linear, b, 10, 110};
    CHECK(s.lr_at(0) == 0.0);
    CHECK(s.lr_at(5) == b * 0.5);
    CHECK(s.lr_at(9) == b * 0.9);
    CHECK(s.lr_at(10) == b);  // (110 − 10)/100 = 1: the peak is the first step after warmup
    CHECK(s.lr_at(60) == b * 0.5);
    CHECK(s.lr_at(109) == b * 0.01);
    CHECK(s.lr_at(110) == 0.0);
  }
  SUBCASE("cosine with warmup, half a cycle") {
    LrSchedule s{LrSchedule::Kind::Cosine, b, 10, 110};
    CHECK(s.lr_at(0) == 0.0);
    CHECK(s.lr_at(5) == b * 0.5);
    CHECK(s.lr_at(10) == b);
    CHECK(rel_close(s.lr_at(35), b * 0.8535533905932737));  // ½(1 + cos(π/4))
    CHECK(s.lr_at(60) == b * 0.5);                          // ½(1 + cos(π/2)), cos rounds to 6e-17
    CHECK(rel_close(s.lr_at(85), b * 0.14644660940672627)); // ½(1 + cos(3π/4))
    CHECK(s.lr_at(110) == 0.0);
  }
  SUBCASE("constant with and without warmup") {
    LrSchedule s{LrSchedule::Kind::Constant, b, 4, 100};
    CHECK(s.lr_at(0) == 0.0);
    CHECK(s.lr_at(1) == b * 0.25);
    CHECK(s.lr_at(3) == b * 0.75);
    CHECK(s.lr_at(4) == b);
    CHECK(s.lr_at(1000) == b);
    LrSchedule s0{LrSchedule::Kind::Constant, b, 0, 100};
    CHECK(s0.lr_at(0) == b);
  }
  SUBCASE("warmup == total") {
    LrSchedule s{LrSchedule::Kind::Linear, b, 10, 10};
    CHECK(s.lr_at(5) == b * 0.5);
    CHECK(s.lr_at(10) == 0.0);
  }
  SUBCASE("names and validation") {
    CHECK(parse_schedule_kind("constant") == LrSchedule::Kind::Constant);
    CHECK(parse_schedule_kind("linear") == LrSchedule::Kind::Linear);
    CHECK(parse_schedule_kind("cosine") == LrSchedule::Kind::Cosine);
    CHECK(std::string(schedule_kind_name(LrSchedule::Kind::Cosine)) == "cosine");
    CHECK(contains(error_of([] { parse_schedule_kind("cosine_with_restarts"); }),
                   "expected constant, linear or cosine"));
    CHECK(contains(error_of([&] { LrSchedule{LrSchedule::Kind::Linear, b, 0, 0}.lr_at(0); }), "total_steps"));
    CHECK(contains(error_of([&] { LrSchedule{LrSchedule::Kind::Linear, b, 11, 10}.lr_at(0); }), "warmup_steps"));
    CHECK(contains(error_of([&] { LrSchedule{LrSchedule::Kind::Linear, -1.0, 0, 10}.lr_at(0); }), "base_lr"));
    CHECK(contains(error_of([&] { LrSchedule{LrSchedule::Kind::Linear, b, 0, 10}.lr_at(-1); }), "step"));
  }
}

// ------------------------------------------------------------------------------------------------ (f)

namespace {

// A small model: an f32 matrix that decays, an f64 vector in the no-decay group, and a parameter that
// only gets gradients on even steps (so step counters differ between parameters).
struct Model {
  Tensor w, bias, sometimes;
  Model() {
    w = Tensor::from(std::vector<double>{0.5, -1.0, 2.0, 0.25, -0.75, 1.5}, {2, 3}, DType::f32);
    bias = param({0.1, -0.2, 0.3});
    sometimes = param({1.0, 1.0}, DType::f32);
    w.set_requires_grad(true);
  }
  std::vector<NamedParameter> named() const {
    return {{"layer.weight", w, false}, {"layer.norm.bias", bias, true}, {"sometimes", sometimes, false}};
  }
  // Deterministic, step-dependent gradients.
  void make_grads(int k) {
    std::vector<double> gw(6);
    for (int i = 0; i < 6; ++i) gw[size_t(i)] = std::sin(1.0 + k * 0.7 + i * 1.3);
    w.set_grad(Tensor::from(gw, {2, 3}, DType::f32));
    set_grad(bias, {std::cos(k * 0.3), -0.5 * k, 0.25});
    if (k % 2 == 0) set_grad(sometimes, {0.1 * (k + 1), -0.2});
  }
  Model copy() const {
    Model m;
    m.w.copy_(w);
    m.bias.copy_(bias);
    m.sometimes.copy_(sometimes);
    return m;
  }
};

void train(Model& m, AdamW& opt, const LrSchedule& sched, int from, int to) {
  for (int k = from; k < to; ++k) {
    m.make_grads(k);
    clip_grad_norm(opt.parameters(), 1.0);
    opt.set_lr(sched.lr_at(k));
    opt.step();
    opt.zero_grad();
  }
}

void check_resume(bool through_file) {
  const LrSchedule sched{LrSchedule::Kind::Linear, 0.05, 2, 8};
  Model straight;
  AdamW opt_straight(trainer_param_groups(straight.named(), 0.1));
  train(straight, opt_straight, sched, 0, 8);

  Model first;
  AdamW opt_first(trainer_param_groups(first.named(), 0.1));
  train(first, opt_first, sched, 0, 5);

  // A fresh process's view: new parameter tensors holding the checkpointed values, and an optimizer built
  // with different hyperparameters, which loading must replace.
  Model resumed = first.copy();
  AdamWOptions other;
  other.beta1 = 0.5;
  other.eps = 1e-3;
  AdamW opt_resumed(trainer_param_groups(resumed.named(), 0.7), other);
  if (through_file) {
    const std::string path = temp_path("resume");
    save_optimizer(opt_first, path);
    load_optimizer(opt_resumed, path);
    std::filesystem::remove(path);
  } else {
    opt_resumed.load_state_dict(opt_first.state_dict());
  }
  CHECK(opt_resumed.options().beta1 == 0.9);
  CHECK(opt_resumed.options().eps == 1e-8);
  CHECK(opt_resumed.lr() == opt_first.lr());
  CHECK(opt_resumed.states()[0].weight_decay == 0.1);
  CHECK(opt_resumed.states()[2].step == opt_first.states()[2].step);
  train(resumed, opt_resumed, sched, 5, 8);

  // Bit-identical: the same arithmetic on the same values.
  CHECK(resumed.w.to_vector<double>() == straight.w.to_vector<double>());
  CHECK(resumed.bias.to_vector<double>() == straight.bias.to_vector<double>());
  CHECK(resumed.sometimes.to_vector<double>() == straight.sometimes.to_vector<double>());
  // And the run did move the parameters (the comparison is not vacuous).
  CHECK(straight.w.to_vector<double>() != Model().w.to_vector<double>());
}

}  // namespace

TEST_CASE("optimizer state: state_dict → load_state_dict → identical continuation") { check_resume(false); }

TEST_CASE("optimizer state: save_optimizer → load_optimizer → identical continuation") { check_resume(true); }

TEST_CASE("optimizer state: the keys and their contents") {
  Model m;
  AdamW opt(trainer_param_groups(m.named(), 0.1));
  auto sd = opt.state_dict();
  CHECK(sd.size() == 3 * 4 + 4);
  CHECK(sd.at("exp_avg.layer.weight").shape() == Shape{2, 3});
  CHECK(sd.at("exp_avg_sq.layer.norm.bias").dtype() == DType::f64);
  CHECK(sd.at("step.sometimes").dtype() == DType::i64);
  CHECK(sd.at("weight_decay.layer.weight").item() == 0.1);
  CHECK(sd.at("weight_decay.layer.norm.bias").item() == 0.0);
  CHECK(sd.at("adamw.beta2").item() == 0.999);
  CHECK(sd.count("adamw.lr") == 1);
  CHECK(sd.count("adamw.eps") == 1);
}

TEST_CASE("optimizer state: mismatches are reported together and change nothing") {
  Model m;
  AdamW opt(trainer_param_groups(m.named(), 0.1));
  train(m, opt, LrSchedule{LrSchedule::Kind::Constant, 0.01, 0, 10}, 0, 2);
  auto sd = opt.state_dict();

  SUBCASE("renamed parameter: missing and unexpected") {
    Model other;
    auto named = other.named();
    named[0].name = "layer.kernel";
    AdamW opt2(named);
    std::string e = error_of([&] { opt2.load_state_dict(sd); });
    CHECK(contains(e, "missing"));
    CHECK(contains(e, "exp_avg.layer.kernel"));
    CHECK(contains(e, "unexpected"));
    CHECK(contains(e, "exp_avg.layer.weight"));
    CHECK(opt2.states()[1].step == 0);  // nothing was applied, not even the matching entries
    CHECK(opt2.options().lr == AdamWOptions{}.lr);
  }
  SUBCASE("wrong shape and dtype") {
    auto bad = sd;
    bad["exp_avg.layer.weight"] = Tensor::zeros({3, 2}, DType::f32);
    bad["exp_avg_sq.layer.norm.bias"] = Tensor::zeros({3}, DType::f32);
    bad["step.sometimes"] = Tensor::scalar(-1, DType::i64);
    Model other;
    AdamW opt2(other.named());
    std::string e = error_of([&] { opt2.load_state_dict(bad); });
    CHECK(contains(e, "mismatched 3"));
    CHECK(contains(e, "exp_avg.layer.weight"));
    CHECK(contains(e, "[2, 3]"));
    CHECK(contains(e, "exp_avg_sq.layer.norm.bias"));
    CHECK(contains(e, "step.sometimes"));
  }
  SUBCASE("a file that is not an optimizer state") {
    const std::string path = temp_path("notopt");
    save_safetensors(path, {{"exp_avg.layer.weight", Tensor::zeros({2, 3})}});
    Model other;
    AdamW opt2(other.named());
    std::string e = error_of([&] { load_optimizer(opt2, path); });
    std::filesystem::remove(path);
    CHECK(contains(e, "not an optimizer state"));
    CHECK(contains(e, path));
  }
}

// ------------------------------------------------------------------------------------------------ (g)

TEST_CASE("clip_grad_norm_on_device: the same clipping with the norm left on the device") {
  Tensor a = param({3.0, 4.0}), b = param({12.0}), no_grad = param({100.0});
  Tensor a2 = param({3.0, 4.0}), b2 = param({12.0});
  for (Tensor* t : {&a, &a2}) set_grad(*t, {3.0, 4.0});
  for (Tensor* t : {&b, &b2}) set_grad(*t, {12.0});
  Tensor total = clip_grad_norm_on_device({a, b, no_grad}, 6.5);
  CHECK(total.dtype() == DType::f64);
  CHECK(total.item() == 13.0);
  clip_grad_norm({a2, b2}, 6.5);
  // Same per-tensor sums in f64 and the same coefficient formula: the clipped gradients agree exactly.
  CHECK(a.grad().to_vector<double>() == a2.grad().to_vector<double>());
  CHECK(b.grad().to_vector<double>() == b2.grad().to_vector<double>());
  // Below max_norm: multiplied by exactly 1, unchanged bit for bit.
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});
  CHECK(clip_grad_norm_on_device({a, b}, 13.1).item() == 13.0);
  CHECK(a.grad().to_vector<double>() == std::vector<double>{3.0, 4.0});
  CHECK(clip_grad_norm_on_device({no_grad}, 1.0).item() == 0.0);
  CHECK(contains(error_of([&] { clip_grad_norm_on_device({a}, -1.0); }), "max_norm"));
}

TEST_CASE("AdamW with clipping and a linear schedule minimises a quadratic") {
  Tensor x = param({1.0, -2.0, 3.0, 0.5}, DType::f32);
  const Tensor target = Tensor::from(std::vector<double>{0.5, 0.25, -1.0, 2.0}, {4}, DType::f32);
  AdamWOptions o;
  o.weight_decay = 0.0;  // with decay the minimiser would shift towards 0
  AdamW opt({NamedParameter{"x", x}}, o);
  const LrSchedule sched{LrSchedule::Kind::Linear, 0.1, 0, 300};
  double first = 0;
  for (int k = 0; k < 300; ++k) {
    // loss = Σ (x − t)²; backpropagated from the per-element terms with a ones seed, which gives the same
    // gradient 2(x − t) while keeping this test about the optimizer rather than the reduction ops.
    Tensor d = sub(x, target);
    Tensor terms = mul(d, d);
    if (k == 0)
      for (double t : terms.to_vector<double>()) first += t;
    terms.backward(Tensor::ones({4}, DType::f32));
    clip_grad_norm(opt.parameters(), 1.0);
    opt.set_lr(sched.lr_at(k));
    opt.step();
    opt.zero_grad();
  }
  // A double-precision simulation of these 300 steps ends within 1.1e-7 of the minimum (f32 resolution
  // near 2 is 1.2e-7); 1e-3 leaves room for f32 rounding while any wrong sign, scale or bias correction
  // would stall or diverge far above it (initial distance 4).
  auto xv = x.to_vector<double>(), tv = target.to_vector<double>();
  CHECK(max_abs_diff(xv, tv) < 1e-3);
  CHECK(first == doctest::Approx(0.25 + 5.0625 + 16 + 2.25));
}
