// `tessera bench (train|infer)`: how fast a whole model trains or infers here, how close that is to the
// machine's ceiling, and (--profile) where a step's time goes.
//
// A training step is what the trainer does per batch: forward in training mode, cross-entropy, backward,
// gradient clipping at 1.0, one AdamW step, zero_grad. An inference step is a forward in eval mode without
// the tape. Inputs are synthetic (uniform in [-1, 1), labels i mod num_labels): speed does not depend on
// their values. Warm-up steps are run first and not timed (the CPU backend's pool, first-touch page faults,
// the CUDA allocator's cache); then each step is timed alone (CUDA: the host waits for the device at the
// end of every step), and the median and quartiles are reported.
//
// Work is counted, not estimated: one inference forward of one image runs under the profiler, which adds
// up each GEMM's 2·M·N·K, each convolution's 2·N·Cout·Ho·Wo·(Cin/groups)·kh·kw and each attention's
// 4·B·H·Tq·Tk·D (elementwise, norm and copy ops count nothing). A training step counts 3× the forward,
// the usual convention (backward ≈ twice the forward), so numbers compare with published ones.
//
// The ceiling is measured in the same run: on the CPU, an FMA probe on as many threads as the benchmark
// (kernels/cpu/peak.cpp) and tessera's own fp32 GEMM at 1024³; on a GPU, the datasheet's dense bf16 peak
// (MFU) beside tessera's GEMM at 8192³ in the benchmark's precision.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/core/parallel.h"
#include "engine/core/profile.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/devices.h"
#include "models/model.h"
#include "tools/cli.h"
#include "train/options.h"
#include "train/trainer.h"

namespace tessera::cli {

namespace {

struct BenchCli {
  std::string mode;  // train | infer
  std::string model = "cvt-13", config, device = "cpu", precision = "fp32", trace;
  int64_t batch = 8, image_size = 224, steps = 20, warmup = 3, profile_steps = 3;
  int threads = 0;  // 0: the engine's default (TESSERA_NUM_THREADS or every core)
  bool profile = false, json = false;
};

// The q-quantile of sorted values, interpolating linearly between ranks (numpy's default).
double quantile(const std::vector<double>& sorted, double q) {
  const double pos = q * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - double(lo));
}

// The resident set's high-water mark of this process (Linux VmHWM), in bytes; 0 where unknown.
int64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      int64_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 16, '\n');
  }
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Waits for the device's queued work, so a host clock covers it (a no-op on the CPU, which is synchronous).
void finish(Device device) {
  if (device == Device::CUDA) cuda::synchronize();
}

// One model, its synthetic batch and its optimizer, stepping as the trainer does.
class Workload {
 public:
  Workload(const models::ModelConfig& config, const BenchCli& o, Device device, DType compute)
      : train_(o.mode == "train"), device_(device), gen_(11) {
    model_ = models::make_model(config, /*seed=*/42);
    model_->to(device);
    if (compute != model_->dtype()) model_->set_compute_dtype(compute);
    Generator data(7);
    const int64_t channels = models::num_channels(config);
    images_ = data.uniform({o.batch, channels, o.image_size, o.image_size}, -1, 1).to(device);
    std::vector<int64_t> labels(size_t(o.batch));
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = int64_t(i) % model_->num_labels();
    labels_ = Tensor::from(labels, {o.batch}, DType::i64).to(device);
    if (train_) {
      optimizer_ = std::make_unique<AdamW>(model_->parameters(), AdamWOptions{});
      params_ = optimizer_->parameters();
    }
  }

  void step() {
    if (!train_) {
      NoGradGuard no_grad;
      model_->forward(images_, /*training=*/false, gen_);
      return;
    }
    Tensor loss = cross_entropy(model_->forward(images_, /*training=*/true, gen_), labels_);
    loss.backward();
    profile::PhaseScope optimizer_phase(profile::Phase::Optimizer);
    clip_grad_norm_on_device(params_, 1.0);
    optimizer_->step();
    optimizer_->zero_grad();
  }

  // Conventional FLOPs of one inference forward of one image, counted by running it.
  double forward_flops_per_image() {
    NoGradGuard no_grad;
    profile::Profiler counter;
    model_->forward(images_.slice(0, 0, 1), /*training=*/false, gen_);
    finish(device_);
    return counter.overall().flops;
  }

  int64_t num_parameters() const { return model_->num_parameters(); }

 private:
  bool train_;
  Device device_;
  Generator gen_;
  std::unique_ptr<models::Model> model_;
  Tensor images_, labels_;
  std::unique_ptr<AdamW> optimizer_;
  std::vector<Tensor> params_;
};

// FLOP/s of tessera's GEMM on an n³ problem in `dtype` on `device`: the best of a few runs after a warm-up.
double gemm_flops_per_second(Device device, DType dtype, int64_t n) {
  Generator gen(3);
  Tensor a = gen.uniform({n, n}, -1, 1).to(device, dtype), b = gen.uniform({n, n}, -1, 1).to(device, dtype);
  NoGradGuard no_grad;
  Tensor c = matmul(a, b);
  finish(device);
  double best = 1e300;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    c = matmul(a, b);
    finish(device);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * double(n) * double(n) * double(n) / best;
}

// The datasheet's dense bf16 tensor-core peak of the GPU in use, for MFU (bench/README.md): 0 when the
// device is not one the table knows.
double datasheet_bf16_peak(const std::string& device_status) {
  if (device_status.find("H100") != std::string::npos || device_status.find("H200") != std::string::npos)
    return 989e12;
  return 0;
}

// The model's config.json without its label names (a preset's 1000 ImageNet labels), with their count:
// what a peer needs to build the same model.
nlohmann::json config_json(const models::ModelConfig& config) {
  nlohmann::json j = models::config_to_json(config);
  j.erase("id2label");
  j.erase("label2id");
  j["num_labels"] = models::num_labels(config);
  return j;
}

// ---- the profile: per op family and per layer, per phase, averaged over the profiled steps
struct ProfileRow {
  std::string name;
  double seconds[3] = {0, 0, 0};  // forward, backward, optimizer
  double flops = 0;
  int64_t calls = 0;
  double total() const { return seconds[0] + seconds[1] + seconds[2]; }
};

std::vector<ProfileRow> profile_rows(const profile::Profiler& p, bool by_layer, int64_t steps) {
  std::map<std::string, ProfileRow> rows;
  for (const auto& [key, t] : p.totals()) {
    std::string name = by_layer ? (key.layer >= 0 ? p.layers()[size_t(key.layer)] : "(outside any layer)") : key.op;
    ProfileRow& r = rows[name];
    r.name = name;
    r.seconds[int(key.phase)] += t.seconds / double(steps);
    r.flops += t.flops / double(steps);
    r.calls += t.calls;
  }
  std::vector<ProfileRow> out;
  for (auto& [name, r] : rows) {
    r.calls /= steps;
    out.push_back(r);
  }
  if (!by_layer)  // op families: the most expensive first; layers: in the model's order (below)
    std::sort(out.begin(), out.end(), [](const ProfileRow& a, const ProfileRow& b) { return a.total() > b.total(); });
  else {
    std::map<std::string, size_t> order;
    for (size_t i = 0; i < p.layers().size(); ++i) order[p.layers()[i]] = i;
    auto rank = [&](const ProfileRow& r) { auto it = order.find(r.name); return it == order.end() ? size_t(-1) : it->second; };
    std::sort(out.begin(), out.end(), [&](const ProfileRow& a, const ProfileRow& b) { return rank(a) < rank(b); });
  }
  return out;
}

void print_profile_table(const char* title, const std::vector<ProfileRow>& rows, double step_seconds,
                         bool with_flops) {
  std::printf("\n%-44s %10s %10s %10s %10s %7s %7s%s\n", title, "forward ms", "backward", "optimizer", "total",
              "% step", "calls", with_flops ? "  GFLOP/s" : "");
  for (const ProfileRow& r : rows) {
    std::printf("%-44s %10.3f %10.3f %10.3f %10.3f %6.1f%% %7lld", r.name.c_str(), r.seconds[0] * 1e3,
                r.seconds[1] * 1e3, r.seconds[2] * 1e3, r.total() * 1e3, 100 * r.total() / step_seconds,
                static_cast<long long>(r.calls));
    if (with_flops && r.flops > 0) std::printf("  %8.1f", r.flops / r.total() / 1e9);
    std::printf("\n");
  }
}

nlohmann::json rows_json(const std::vector<ProfileRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const ProfileRow& r : rows)
    out.push_back({{"name", r.name}, {"forward_seconds", r.seconds[0]}, {"backward_seconds", r.seconds[1]},
                   {"optimizer_seconds", r.seconds[2]}, {"flops", r.flops}, {"calls", r.calls}});
  return out;
}

void run_bench(const BenchCli& o) {
  // ---- validate at the edge, naming the option
  if (o.mode != "train" && o.mode != "infer")
    throw std::runtime_error("bench: the mode must be train or infer, not '" + o.mode + "'");
  auto at_least = [](const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      throw std::runtime_error(std::string("bench: ") + name + " must be in [" + std::to_string(lo) + ", " +
                               std::to_string(hi) + "], not " + std::to_string(v));
  };
  at_least("--batch", o.batch, 1, 4096);
  at_least("--image-size", o.image_size, 16, 4096);
  at_least("--steps", o.steps, 1, 100000);
  at_least("--warmup", o.warmup, 0, 100000);
  at_least("--threads", o.threads, 0, 1024);
  at_least("--profile-steps", o.profile_steps, 1, 1000);
  if (o.precision != "fp32" && o.precision != "bf16")
    throw std::runtime_error("bench: --precision must be fp32 or bf16, not '" + o.precision + "'");
  // The thread count is fixed when the CPU backend's pool starts, at the first op: set it before any.
  if (o.threads > 0) setenv("TESSERA_NUM_THREADS", std::to_string(o.threads).c_str(), 1);
  const Device device = train::resolve_device(train::parse_device(o.device), std::cerr);
  const bool bf16 = o.precision == "bf16";
  const models::ModelConfig config = o.config.empty() ? models::preset_config(o.model) : models::load_config(o.config);
  const std::string model_name = o.config.empty() ? o.model : o.config;

  Workload work(config, o, device, bf16 ? DType::bf16 : DType::f32);
  const double forward_flops = work.forward_flops_per_image();
  const double step_flops = (o.mode == "train" ? 3.0 : 1.0) * forward_flops * double(o.batch);

  for (int64_t i = 0; i < o.warmup; ++i) work.step();
  finish(device);
  std::vector<double> times;
  for (int64_t i = 0; i < o.steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    work.step();
    finish(device);
    times.push_back(seconds_since(t0));
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double median = quantile(sorted, 0.5);
  const int64_t peak_memory =
      device == Device::CUDA ? int64_t(cuda::allocator_stats().peak_in_use) : peak_resident_bytes();

  // ---- the ceiling, measured after the steps so it does not warm anything they use
  nlohmann::json ceiling;
  std::string ceiling_line;
  const double achieved = step_flops / median;
  if (device == Device::CPU) {
    const CpuPeak fma = cpu_fma_peak(num_threads());
    // bf16: tessera's bf16 GEMM (AVX512-BF16 dot products multiply twice as much per instruction as an fp32
    // FMA, so a bf16 run can pass the fp32 FMA peak).
    const double gemm = gemm_flops_per_second(device, bf16 ? DType::bf16 : DType::f32, 1024);
    ceiling = {{"fma_peak_gflops_per_second", fma.flops_per_second / 1e9}, {"fma_isa", fma.isa},
               {"gemm_1024_gflops_per_second", gemm / 1e9}, {"fraction_of_fma_peak", achieved / fma.flops_per_second},
               {"fraction_of_gemm", achieved / gemm}};
    char buf[256];
    std::snprintf(buf, sizeof buf, "%.1f%% of the fp32 %s FMA peak (%.1f GFLOP/s on %d threads), %.1f%% of tessera's "
                  "%s GEMM at 1024^3 (%.1f GFLOP/s)", 100 * achieved / fma.flops_per_second, fma.isa,
                  fma.flops_per_second / 1e9, num_threads(), 100 * achieved / gemm, o.precision.c_str(), gemm / 1e9);
    ceiling_line = buf;
  } else {
    const double gemm = gemm_flops_per_second(device, bf16 ? DType::bf16 : DType::f32, 8192);
    const double sheet = datasheet_bf16_peak(cuda::status());
    ceiling = {{"gemm_8192_gflops_per_second", gemm / 1e9}, {"fraction_of_gemm", achieved / gemm}};
    char buf[256];
    std::snprintf(buf, sizeof buf, "%.1f%% of tessera's GEMM at 8192^3 in %s (%.1f TFLOP/s)", 100 * achieved / gemm,
                  o.precision.c_str(), gemm / 1e12);
    ceiling_line = buf;
    if (sheet > 0) {
      ceiling["mfu"] = achieved / sheet;
      ceiling["datasheet_bf16_peak_tflops_per_second"] = sheet / 1e12;
      ceiling_line += "; MFU " + std::to_string(100 * achieved / sheet).substr(0, 5) + "% of the datasheet's 989 TFLOP/s bf16";
    }
  }

  // ---- the profile: a few more steps under the profiler (not the timed ones: it synchronises on CUDA)
  std::unique_ptr<profile::Profiler> profiler;
  std::vector<ProfileRow> by_op, by_layer;
  double op_seconds = 0;  // per profiled step
  if (o.profile || !o.trace.empty()) {
    work.step();  // one step whose backend wrappers and layer names are made, then forgotten
    profiler = std::make_unique<profile::Profiler>(/*keep_events=*/!o.trace.empty());
    for (int64_t i = 0; i < o.profile_steps; ++i) work.step();
    finish(device);
    if (!o.trace.empty()) profiler->write_trace(o.trace);
    by_op = profile_rows(*profiler, false, o.profile_steps);
    by_layer = profile_rows(*profiler, true, o.profile_steps);
    op_seconds = profiler->overall().seconds / double(o.profile_steps);
  }

  nlohmann::json j = {
      {"model", model_name}, {"mode", o.mode}, {"device", device_name(device)}, {"precision", o.precision},
      {"batch", o.batch}, {"image_size", o.image_size}, {"threads", device == Device::CPU ? num_threads() : 0},
      {"steps", o.steps}, {"warmup", o.warmup}, {"parameters", work.num_parameters()},
      {"step_seconds_median", median}, {"step_seconds_min", sorted.front()}, {"step_seconds_max", sorted.back()},
      {"step_seconds_p25", quantile(sorted, 0.25)}, {"step_seconds_p75", quantile(sorted, 0.75)},
      {"step_seconds", times}, {"images_per_second", double(o.batch) / median},
      {"forward_flops_per_image", forward_flops}, {"flops_per_step", step_flops},
      {"gflops_per_second", achieved / 1e9}, {"peak_memory_bytes", peak_memory}, {"ceiling", ceiling},
      {"config", config_json(config)}};
  if (profiler)
    j["profile"] = {{"steps", o.profile_steps}, {"op_seconds_per_step", op_seconds},
                    {"by_op", rows_json(by_op)}, {"by_layer", rows_json(by_layer)}};
  if (o.json) {
    std::cout << j.dump() << "\n";
    return;
  }

  std::printf("tessera bench %s: %s, batch %lld, %lldx%lld, %s, %s", o.mode.c_str(), model_name.c_str(),
              static_cast<long long>(o.batch), static_cast<long long>(o.image_size),
              static_cast<long long>(o.image_size), o.precision.c_str(), device_name(device));
  if (device == Device::CPU) std::printf(", %d threads", num_threads());
  std::printf(" (%.2f M parameters)\n", double(work.num_parameters()) / 1e6);
  std::printf("step: median %.2f ms (quartiles %.2f–%.2f, min %.2f, max %.2f; %lld steps after %lld warm-up)\n",
              median * 1e3, quantile(sorted, 0.25) * 1e3, quantile(sorted, 0.75) * 1e3, sorted.front() * 1e3,
              sorted.back() * 1e3, static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
  std::printf("throughput: %.1f images/s\n", double(o.batch) / median);
  std::printf("work: %.3f GFLOP per image forward (counted: GEMM 2·M·N·K + conv 2·N·Cout·Ho·Wo·Cin/g·kh·kw + "
              "attention 4·B·H·Tq·Tk·D)%s = %.2f GFLOP per step\n",
              forward_flops / 1e9, o.mode == "train" ? " × 3 for forward + backward" : "", step_flops / 1e9);
  std::printf("achieved: %.1f GFLOP/s = %s\n", achieved / 1e9, ceiling_line.c_str());
  std::printf("peak memory: %.1f MiB (%s)\n", double(peak_memory) / (1 << 20),
              device == Device::CUDA ? "device memory in use, high-water mark" : "resident set, high-water mark");
  if (profiler) {
    std::printf("\nprofile: %lld steps under the profiler; backend calls take %.2f ms per step, %.1f%% of the "
                "median step (the rest: allocation, the autograd tape, host-side glue)\n",
                static_cast<long long>(o.profile_steps), op_seconds * 1e3, 100 * op_seconds / median);
    print_profile_table("op family", by_op, median, true);
    print_profile_table("layer", by_layer, median, false);
    if (!o.trace.empty()) std::printf("\ntrace: %s (open in https://ui.perfetto.dev or chrome://tracing)\n", o.trace.c_str());
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto o = std::make_shared<BenchCli>();
  CLI::App* sub = app.add_subcommand(
      "bench", "Time a model's training or inference step on synthetic input: median and spread, images/s, "
               "FLOP/s against the machine's measured ceiling, peak memory; --profile shows where the time goes");
  sub->add_option("mode", o->mode, "train (forward, loss, backward, clipping, AdamW) or infer (forward)")->required();
  sub->add_option("--model", o->model, "a preset: " + [] {
    std::string names;
    for (const auto& n : models::preset_names()) names += (names.empty() ? "" : ", ") + n;
    return names;
  }())->capture_default_str();
  sub->add_option("--config", o->config, "a Hugging Face config.json instead of a preset");
  sub->add_option("--batch", o->batch, "images per step")->capture_default_str();
  sub->add_option("--image-size", o->image_size, "input height and width in pixels")->capture_default_str();
  sub->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  sub->add_option("--precision", o->precision, "fp32, or bf16 (activations in bf16, fp32 weights)")
      ->capture_default_str();
  sub->add_option("--threads", o->threads, "CPU threads (default: TESSERA_NUM_THREADS, else every core)");
  sub->add_option("--steps", o->steps, "timed steps")->capture_default_str();
  sub->add_option("--warmup", o->warmup, "untimed steps first")->capture_default_str();
  sub->add_flag("--profile", o->profile, "time every backend call of a few more steps: by op family and by layer");
  sub->add_option("--profile-steps", o->profile_steps, "steps the profile averages")->capture_default_str();
  sub->add_option("--trace", o->trace, "write the profiled steps as a Chrome/Perfetto trace to this file");
  sub->add_flag("--json", o->json, "print one JSON object instead of the text");
  sub->callback([o] { run_bench(*o); });
}

}  // namespace tessera::cli
