// Whole-model step times on the CPU: one training step (forward, cross-entropy, backward, gradient clipping,
// AdamW) and one inference forward of the models the main job and the reference workload use, at their
// training resolutions, on synthetic input. The time is wall clock per step (the CPU path is synchronous);
// Google Benchmark reports the mean over its repetitions, and --benchmark_repetitions gives the spread.
// It is the before/after measure for engine changes: build it at two commits and compare the same rows.
#include <benchmark/benchmark.h>

#include <memory>
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

// The cpu recipe's model and batch (cvt-tiny, 64 px, batch 32); CvT-13 and ViT-B/16 at 224 px, small batches.
BENCHMARK_CAPTURE(train_step, cvt_tiny_64px_b32, "cvt-tiny", 32, 64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(train_step, cvt13_224px_b4, "cvt-13", 4, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(train_step, vit_b16_224px_b2, "vit-b16", 2, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, cvt_tiny_64px_b32, "cvt-tiny", 32, 64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, cvt13_224px_b8, "cvt-13", 8, 224)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(infer_step, vit_b16_224px_b8, "vit-b16", 8, 224)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
