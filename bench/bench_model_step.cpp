// Whole-model step times on the CPU: one training step (forward, cross-entropy, backward, gradient clipping,
// AdamW) and one inference forward of the models the main job and the reference workload use, at their
// training resolutions, on synthetic input. The time is wall clock per step (the CPU path is synchronous);
// Google Benchmark reports the mean over its repetitions, and --benchmark_repetitions gives the spread.
// It is the before/after measure for engine changes: build it at two commits and compare the same rows.
#include <benchmark/benchmark.h>

#include <memory>
#include <optional>
#include <string>

#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "models/model.h"

namespace {

using namespace tessera;

struct Setup {
  std::unique_ptr<models::Model> model;
  Tensor images, labels;
};

Setup make_setup(const std::string& preset, int64_t batch, int64_t image_size) {
  Setup s;
  s.model = models::make_model(models::preset_config(preset), /*seed=*/42);
  Generator gen(7);
  s.images = gen.uniform({batch, 3, image_size, image_size}, -1, 1, DType::f32);
  std::vector<int64_t> labels(static_cast<size_t>(batch));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = int64_t(i % 4) % s.model->num_labels();
  s.labels = Tensor::from(labels, {batch}, DType::i64);
  return s;
}

void train_step(benchmark::State& state, const std::string& preset, int64_t batch, int64_t image_size) {
  Setup s = make_setup(preset, batch, image_size);
  AdamW optimizer(s.model->parameters(), AdamWOptions{});
  std::vector<Tensor> params = optimizer.parameters();
  Generator gen(11);
  for (auto _ : state) {
    Tensor loss = cross_entropy(s.model->forward(s.images, /*training=*/true, gen), s.labels);
    loss.backward();
    clip_grad_norm(params, 1.0);
    optimizer.step();
    optimizer.zero_grad();
    benchmark::DoNotOptimize(loss);
  }
  state.counters["img/s"] = benchmark::Counter(double(batch) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void infer_step(benchmark::State& state, const std::string& preset, int64_t batch, int64_t image_size) {
  Setup s = make_setup(preset, batch, image_size);
  Generator gen(11);
  NoGradGuard no_grad;
  for (auto _ : state) {
    Tensor logits = s.model->forward(s.images, /*training=*/false, gen);
    benchmark::DoNotOptimize(logits);
  }
  state.counters["img/s"] = benchmark::Counter(double(batch) * double(state.iterations()), benchmark::Counter::kIsRate);
}

// Inference under attention hooks (models/module.h), against the plain forward in the same run: `none` is
// the fused path with no hooks set, `unwatched` sets hooks that watch no layer (what registering costs:
// nothing but a lookup per layer), `gates` multiplies every head by a gate of 1, `capture` reads every
// layer's probabilities (computed apart from the fused op), `backward` adds the gradient pass that grad
// rollout and relevance need (the composed attention, forward and backward).
void hooked_infer(benchmark::State& state, const std::string& preset, int64_t batch, int64_t image_size,
                  const std::string& hooks_kind) {
  Setup s = make_setup(preset, batch, image_size);
  Generator gen(11);
  models::AttentionHooks hooks;
  models::AttentionCapture captured;
  if (hooks_kind == "unwatched") {
    hooks.layers = {-1};
    hooks.forward = [](int64_t, models::AttentionPart, const Tensor&) {};
  } else if (hooks_kind == "capture") {
    hooks = models::capture_attention(captured, {}, std::nullopt);
  } else if (hooks_kind == "backward") {
    hooks.backward = [](int64_t, models::AttentionPart, const Tensor&) {};
  }
  if (hooks_kind == "gates") {  // one gate of 1 per head of every layer, the shapes the model has
    models::AttentionCapture probe;
    const models::AttentionHooks shapes = models::capture_attention(probe, {}, std::nullopt);
    s.model->set_attention_hooks(&shapes);
    {
      NoGradGuard no_grad;
      s.model->forward(s.images.slice(0, 0, 1), false, gen);
    }
    for (const auto& [l, p] : probe.probs) hooks.gates[l] = Tensor::ones({p.size(1)});
  }
  s.model->set_attention_hooks(hooks_kind == "none" ? nullptr : &hooks);
  Tensor images = s.images;
  if (hooks_kind == "backward") images.set_requires_grad(true);
  for (auto _ : state) {
    captured.probs.clear();
    std::optional<NoGradGuard> no_grad;
    if (hooks_kind != "backward") no_grad.emplace();
    Tensor logits = s.model->forward(images, /*training=*/false, gen);
    if (hooks_kind == "backward") sum(logits).backward();
    benchmark::DoNotOptimize(logits);
  }
  s.model->set_attention_hooks(nullptr);
  state.counters["img/s"] = benchmark::Counter(double(batch) * double(state.iterations()), benchmark::Counter::kIsRate);
}

// The cpu recipe's model and batch (cvt-tiny, 64 px, batch 32); CvT-13 and ViT-B/16 at 224 px, small batches.
BENCHMARK_CAPTURE(train_step, cvt_tiny_64px_b32, "cvt-tiny", 32, 64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(train_step, cvt13_224px_b4, "cvt-13", 4, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(train_step, vit_b16_224px_b2, "vit-b16", 2, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, cvt_tiny_64px_b32, "cvt-tiny", 32, 64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, cvt13_224px_b8, "cvt-13", 8, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, vit_b16_224px_b8, "vit-b16", 8, 224)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_CAPTURE(hooked_infer, cvt_tiny_64px_b32_none, "cvt-tiny", 32, 64, "none")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(hooked_infer, cvt_tiny_64px_b32_unwatched, "cvt-tiny", 32, 64, "unwatched")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(hooked_infer, cvt_tiny_64px_b32_gates, "cvt-tiny", 32, 64, "gates")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(hooked_infer, cvt_tiny_64px_b32_capture, "cvt-tiny", 32, 64, "capture")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(hooked_infer, cvt_tiny_64px_b32_backward, "cvt-tiny", 32, 64, "backward")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
