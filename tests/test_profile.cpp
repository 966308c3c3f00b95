// The profiler (engine/core/profile.h): it times every backend call without changing results, attributes
// backward time to the layer that recorded the node, counts FLOPs by the conventional formulas (checked
// against closed forms written here and published model counts), writes a trace Chrome can open, and is
// absent from the normal path.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "engine/core/fileio.h"
#include "engine/core/profile.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/devices.h"
#include "models/model.h"
#include "tests/errors.h"
#include "tests/temp_dir.h"

using namespace tessera;
using profile::Phase;
using tessera::testing::contains;
using tessera::testing::error_of;

namespace {

// The recorded totals of one (op, layer name, phase); zero when none.
profile::Total total_of(const profile::Profiler& p, const std::string& op, const std::string& layer, Phase phase) {
  int32_t id = -1;
  for (size_t i = 0; i < p.layers().size(); ++i)
    if (p.layers()[i] == layer) id = int32_t(i);
  auto it = p.totals().find(profile::Profiler::Key{op, id, phase});
  return it == p.totals().end() ? profile::Total{} : it->second;
}

double forward_flops(models::Model& model, int64_t image_size) {
  Generator gen(1);
  Tensor x = gen.uniform({1, models::num_channels(model.config()), image_size, image_size}, -1, 1);
  NoGradGuard no_grad;
  profile::Profiler counter;
  model.forward(x, /*training=*/false, gen);
  return counter.overall().flops;
}

}  // namespace

TEST_CASE("without a profiler, backend() is the device's backend itself") {
  CHECK(&backend(Device::CPU) == &cpu_backend());
  profile::Profiler p;
  CHECK(&backend(Device::CPU) != &cpu_backend());  // the timing wrapper
}

TEST_CASE("only one profiler at a time") {
  profile::Profiler p;
  CHECK(contains(error_of([] { profile::Profiler q; }), "already running"));
}

TEST_CASE("a linear layer's forward and backward: GEMM FLOPs, phases and the recording layer") {
  const int64_t M = 7, K = 5, N = 3;  // x [M, K], weight [N, K]
  Generator gen(2);
  Tensor x = gen.uniform({M, K}, -1, 1), w = gen.uniform({N, K}, -1, 1), b = gen.uniform({N}, -1, 1);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  x.set_requires_grad(true);
  // Reference gradients without the profiler: profiling must not change a bit.
  Tensor y_ref = linear(x, w, b);
  sum(y_ref).backward();
  const std::vector<float> dw_ref = w.grad().to_vector<float>(), dx_ref = x.grad().to_vector<float>();
  w.zero_grad();
  x.zero_grad();
  b.zero_grad();

  profile::Profiler p;
  Tensor y;
  {
    profile::LayerScope scope("block.0");
    y = linear(x, w, b);
  }
  Tensor loss = sum(y);  // outside any layer
  loss.backward();       // no scope open now: the linear's backward must still land on block.0

  CHECK(w.grad().to_vector<float>() == dw_ref);
  CHECK(x.grad().to_vector<float>() == dx_ref);
  const profile::Total fwd = total_of(p, "linear", "block.0", Phase::Forward);  // the GEMM with its bias
  const profile::Total bwd = total_of(p, "gemm", "block.0", Phase::Backward);
  CHECK(fwd.calls == 1);
  CHECK(fwd.flops == doctest::Approx(2.0 * M * N * K));
  CHECK(bwd.calls == 2);  // dx = dy·W and dW = dyᵀ·x
  CHECK(bwd.flops == doctest::Approx(4.0 * M * N * K));
  CHECK(fwd.seconds >= 0);
  // Nothing of the linear's was recorded outside its layer.
  for (const auto& [key, t] : p.totals())
    if (key.op == "gemm" || key.op == "linear") CHECK(key.layer >= 0);
}

TEST_CASE("phase scopes nest and restore") {
  profile::Profiler p;
  CHECK(p.phase() == Phase::Forward);
  {
    profile::PhaseScope a(Phase::Optimizer);
    CHECK(p.phase() == Phase::Optimizer);
    {
      profile::PhaseScope b(Phase::Backward);
      CHECK(p.phase() == Phase::Backward);
    }
    CHECK(p.phase() == Phase::Optimizer);
  }
  CHECK(p.phase() == Phase::Forward);
}

TEST_CASE("ViT-B/16's counted forward FLOPs equal the closed form, and the published 17.56 GMAC") {
  auto vit = models::make_model(models::preset_config("vit-b16"));
  // 224 px, patch 16: 196 patches + cls = 197 tokens, width 768, MLP 3072, 12 heads of 64, 12 layers.
  const double T = 197, C = 768, I = 3072, H = 12, D = 64, L = 12, labels = double(vit->num_labels());
  const double patch = 2 * 196 * C * (3 * 16 * 16);
  const double layer = 4 * (2 * T * C * C) + 2 * (2 * T * C * I) + 4 * H * T * T * D;
  const double head = 2 * C * labels;  // the classifier on the cls token only
  const double counted = forward_flops(*vit, 224);
  CHECK(counted == doctest::Approx(patch + L * layer + head).epsilon(1e-9));
  CHECK(counted / 2 / 1e9 == doctest::Approx(17.56).epsilon(0.005));
}

TEST_CASE("CvT-13's counted forward FLOPs equal the published 4.57 GMAC") {
  // The CvT paper's Table 2 gives 4.5 G "FLOPs" (multiply-adds); counted with the same conventions as
  // here (convolutions including the depthwise projections, GEMMs, attention) it is 4.57 G.
  auto cvt = models::make_model(models::preset_config("cvt-13"));
  CHECK(forward_flops(*cvt, 224) / 2 / 1e9 == doctest::Approx(4.57).epsilon(0.005));
}

TEST_CASE("a model's training step: every layer has forward and backward time, the trace opens") {
  auto model = models::make_model(models::preset_config("cvt-tiny"), /*seed=*/3);
  Generator gen(4);
  Tensor x = gen.uniform({2, 3, 32, 32}, -1, 1);
  Tensor labels = Tensor::from(std::vector<int64_t>{0, 1}, {2}, DType::i64);
  tessera::testing::TempDir dir("profile");
  profile::Profiler p(/*keep_events=*/true);
  cross_entropy(model->forward(x, /*training=*/true, gen), labels).backward();
  REQUIRE(!p.layers().empty());
  for (size_t i = 0; i < p.layers().size(); ++i) {
    double fwd = 0, bwd = 0;
    for (const auto& [key, t] : p.totals())
      if (key.layer == int32_t(i)) (key.phase == Phase::Forward ? fwd : bwd) += t.seconds + double(t.calls);
    CAPTURE(p.layers()[i]);
    CHECK(fwd > 0);
    CHECK(bwd > 0);
  }
  CHECK(p.layers().front() == "cvt.encoder.stages.0.embedding");
  p.write_trace(dir / "trace.json");
  const nlohmann::json trace = read_json(dir / "trace.json");
  REQUIRE(trace["traceEvents"].size() == p.events().size());
  int64_t calls = 0;
  for (const auto& [key, t] : p.totals()) calls += t.calls;
  CHECK(int64_t(p.events().size()) == calls);
  const nlohmann::json& e = trace["traceEvents"][0];
  CHECK(e["ph"] == "X");
  CHECK(e["dur"].get<double>() >= 0);
  CHECK(e["args"]["phase"] == "forward");
  // Counted work per call: the GEMMs' 2·M·N·K summed over the trace equals the totals' count.
  double traced = 0, counted = 0;
  for (const nlohmann::json& ev : trace["traceEvents"])
    if (ev["name"] == "gemm") traced += ev["args"]["gflop"].get<double>() * 1e9;
  for (const auto& [key, t] : p.totals())
    if (key.op == "gemm") counted += t.flops;
  CHECK(counted > 0);
  CHECK(std::abs(traced - counted) <= 1e-9 * counted);
}
