// The profiler's state, its scopes, the trace writer, and the timing wrapper that backend(Device) hands out
// while a Profiler lives.
#include "engine/core/profile.h"

#include <array>
#include <memory>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "engine/core/backend.h"
#include "engine/core/cuda.h"
#include "engine/core/fileio.h"

namespace tessera::profile {
namespace {
Profiler* g_profiler = nullptr;
}  // namespace

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::Forward: return "forward";
    case Phase::Backward: return "backward";
    case Phase::Optimizer: return "optimizer";
  }
  return "?";
}

Profiler::Profiler(bool keep_events)
    : thread_(std::this_thread::get_id()), keep_events_(keep_events), origin_(std::chrono::steady_clock::now()) {
  TS_CHECK(!g_profiler, "profile: a profiler is already running");
  g_profiler = this;
}

Profiler::~Profiler() { g_profiler = nullptr; }

Profiler* Profiler::active() {
  Profiler* p = g_profiler;
  return p && p->thread_ == std::this_thread::get_id() ? p : nullptr;
}

int32_t Profiler::layer_id(const std::string& name) {
  auto [it, inserted] = layer_index_.emplace(name, int32_t(layers_.size()));
  if (inserted) layers_.push_back(name);
  return it->second;
}

double Profiler::now_us() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - origin_).count();
}

void Profiler::add(const char* op, double start_us, double seconds, double flops) {
  Total& t = totals_[Key{op, current_layer(), phase_}];
  t.seconds += seconds;
  t.flops += flops;
  t.calls += 1;
  if (keep_events_) events_.push_back(Event{op, current_layer(), phase_, start_us, seconds * 1e6, flops});
}

Total Profiler::overall() const {
  Total all;
  for (const auto& [key, t] : totals_) {
    all.seconds += t.seconds;
    all.flops += t.flops;
    all.calls += t.calls;
  }
  return all;
}

void Profiler::write_trace(const std::string& path) const {
  nlohmann::json events = nlohmann::json::array();
  for (const Event& e : events_) {
    nlohmann::json args = {{"phase", phase_name(e.phase)}};
    if (e.layer >= 0) args["layer"] = layers_[size_t(e.layer)];
    if (e.flops > 0) {
      args["gflop"] = e.flops * 1e-9;
      if (e.duration_us > 0) args["gflop_per_s"] = e.flops * 1e-3 / e.duration_us;
    }
    events.push_back({{"name", e.op}, {"cat", phase_name(e.phase)}, {"ph", "X"}, {"ts", e.start_us},
                      {"dur", e.duration_us}, {"pid", 1}, {"tid", 1}, {"args", args}});
  }
  write_file_atomic(path, nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump());
}

LayerScope::LayerScope(const std::string& name) : profiler_(Profiler::active()) {
  if (profiler_) profiler_->push_layer(profiler_->layer_id(name));
}
LayerScope::LayerScope(int32_t id) : profiler_(id >= 0 ? Profiler::active() : nullptr) {
  if (profiler_) profiler_->push_layer(id);
}
LayerScope::~LayerScope() {
  if (profiler_) profiler_->pop_layer();
}

PhaseScope::PhaseScope(Phase phase) : profiler_(Profiler::active()) {
  if (!profiler_) return;
  previous_ = profiler_->phase();
  profiler_->set_phase(phase);
}
PhaseScope::~PhaseScope() {
  if (profiler_) profiler_->set_phase(previous_);
}

namespace {

// ---- the conventional FLOP counts (bench/README.md's "Counting work")
double gemm_flops(const GemmArgs& a) { return 2.0 * double(a.batch) * double(a.M) * double(a.N) * double(a.K); }
// One pass of a convolution: y [N, Cout, Ho, Wo] from weight [Cout, Cin/groups, kh, kw].
double conv_pass_flops(const Tensor& weight, const Shape& y) {
  return 2.0 * double(y[0]) * double(y[1]) * double(y[2]) * double(y[3]) * double(weight.size(1)) *
         double(weight.size(2)) * double(weight.size(3));
}
// 4·B·H·Tq·Tk·D: q [B, H, Tq, D] and k [B, H, Tk, D], or tokens q [B, Tq, H·D] and k [B, Tk, H·D].
double attention_flops(const Tensor& q, const Tensor& k) { return 4.0 * double(q.numel()) * double(k.size(-2)); }
// The convolution output shape of an input and args (for backward calls, which are given dy).
double conv_backward_flops(const Tensor& dy, const Tensor& weight, const Tensor& dx, const Tensor& dweight) {
  return double(int(dx.defined()) + int(dweight.defined())) * conv_pass_flops(weight, dy.shape());
}

// Times one call; on CUDA waits for its kernels first.
// Without a Profiler (a wrapper reference held past its end) it does nothing.
class Timed {
 public:
  Timed(Device device, const char* op, double flops)
      : p_(Profiler::active()), device_(device), op_(op), flops_(flops), start_(p_ ? p_->now_us() : 0) {}
  ~Timed() {
    if (!p_) return;
    if (device_ == Device::CUDA) cuda::synchronize();
    p_->add(op_, start_, (p_->now_us() - start_) * 1e-6, flops_);
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;
 private:
  Profiler* p_;
  Device device_;
  const char* op_;
  double flops_;
  double start_;
};

// Every entry point of the contract forwards to the device's backend inside a Timed. Written out rather
// than generated: the parameter lists hold types and names together, and each forward names its arguments.
class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : inner_(inner) {}
  Device device() const override { return inner_.device(); }
  Backend& inner() { return inner_; }

#define TS_TIMED(op, flops) Timed timed_(inner_.device(), #op, flops)
  void fill TS_PARAMS_fill override { TS_TIMED(fill, 0); inner_.fill(out, value); }
  void copy TS_PARAMS_copy override { TS_TIMED(copy, 0); inner_.copy(src, out); }
  void random TS_PARAMS_random override { TS_TIMED(random, 0); inner_.random(kind, out, a, b, seed, offset); }
  void unary TS_PARAMS_unary override { TS_TIMED(unary, 0); inner_.unary(op, x, out, alpha, beta); }
  void binary TS_PARAMS_binary override { TS_TIMED(binary, 0); inner_.binary(op, a, b, out); }
  void reduce TS_PARAMS_reduce override { TS_TIMED(reduce, 0); inner_.reduce(op, x, out, indices); }
  void gemm TS_PARAMS_gemm override { TS_TIMED(gemm, gemm_flops(args)); inner_.gemm(args); }
  void softmax TS_PARAMS_softmax override { TS_TIMED(softmax, 0); inner_.softmax(x, y, log); }
  void softmax_backward TS_PARAMS_softmax_backward override {
    TS_TIMED(softmax_backward, 0);
    inner_.softmax_backward(y, dy, dx, log);
  }
  void layer_norm TS_PARAMS_layer_norm override {
    TS_TIMED(layer_norm, 0);
    inner_.layer_norm(x, weight, bias, eps, y, mean, rstd);
  }
  void layer_norm_backward TS_PARAMS_layer_norm_backward override {
    TS_TIMED(layer_norm_backward, 0);
    inner_.layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias);
  }
  void conv2d TS_PARAMS_conv2d override {
    TS_TIMED(conv2d, conv_pass_flops(weight, y.shape()));
    inner_.conv2d(x, weight, bias, a, y);
  }
  void conv2d_backward TS_PARAMS_conv2d_backward override {
    TS_TIMED(conv2d_backward, conv_backward_flops(dy, weight, dx, dweight));
    inner_.conv2d_backward(dy, x, weight, a, dx, dweight, dbias);
  }
  void batch_norm TS_PARAMS_batch_norm override {
    TS_TIMED(batch_norm, 0);
    inner_.batch_norm(x, weight, bias, mean, invstd, eps, training, y);
  }
  void batch_norm_backward TS_PARAMS_batch_norm_backward override {
    TS_TIMED(batch_norm_backward, 0);
    inner_.batch_norm_backward(dy, x, weight, mean, invstd, training, dx, dweight, dbias);
  }
  void attention_tokens TS_PARAMS_attention_tokens override {
    TS_TIMED(attention_tokens, attention_flops(q, k));
    inner_.attention_tokens(q, k, v, heads, scale, out, lse);
  }
  void attention_tokens_backward TS_PARAMS_attention_tokens_backward override {
    TS_TIMED(attention_tokens_backward, 2.5 * attention_flops(q, k));
    inner_.attention_tokens_backward(dout, q, k, v, out, lse, heads, scale, dq, dk, dv);
  }
  void attention TS_PARAMS_attention override {
    TS_TIMED(attention, attention_flops(q, k));
    inner_.attention(q, k, v, scale, out, lse);
  }
  void attention_backward TS_PARAMS_attention_backward override {
    TS_TIMED(attention_backward, 2.5 * attention_flops(q, k));  // five products to the forward's two
    inner_.attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv);
  }
  void cross_entropy TS_PARAMS_cross_entropy override {
    TS_TIMED(cross_entropy, 0);
    inner_.cross_entropy(logits, target, weight, label_smoothing, ignore_index, loss);
  }
  void cross_entropy_backward TS_PARAMS_cross_entropy_backward override {
    TS_TIMED(cross_entropy_backward, 0);
    inner_.cross_entropy_backward(logits, target, weight, label_smoothing, ignore_index, dloss, dlogits);
  }
  void index_select TS_PARAMS_index_select override { TS_TIMED(index_select, 0); inner_.index_select(src, index, out); }
  void index_add TS_PARAMS_index_add override { TS_TIMED(index_add, 0); inner_.index_add(src, index, out); }
  void adamw TS_PARAMS_adamw override { TS_TIMED(adamw, 0); inner_.adamw(params, s); }

  void linear TS_PARAMS_linear override {
    TS_TIMED(linear, 2.0 * double(x.size(0)) * double(weight.size(0)) * double(x.size(1)));
    inner_.linear(x, weight, bias, residual, y);
  }
  void linear_gelu TS_PARAMS_linear_gelu override {
    TS_TIMED(linear_gelu, 2.0 * double(x.size(0)) * double(weight.size(0)) * double(x.size(1)));
    inner_.linear_gelu(x, weight, bias, h, y);
  }
  void bias_gelu TS_PARAMS_bias_gelu override { TS_TIMED(bias_gelu, 0); inner_.bias_gelu(x, bias, y); }
  void bias_gelu_backward TS_PARAMS_bias_gelu_backward override {
    TS_TIMED(bias_gelu_backward, 0);
    inner_.bias_gelu_backward(dy, x, bias, dx, dbias);
  }
  void drop_path TS_PARAMS_drop_path override {
    TS_TIMED(drop_path, 0);
    inner_.drop_path(x, keep_mask, scale, residual, out);
  }
  void conv_embedding TS_PARAMS_conv_embedding override {
    // tokens [N, Ho·Wo, Cout]: one convolution pass over the Ho·Wo output positions
    TS_TIMED(conv_embedding, conv_pass_flops(weight, {tokens.size(0), weight.size(0), tokens.size(1), 1}));
    inner_.conv_embedding(x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
  }
  void conv_embedding_backward TS_PARAMS_conv_embedding_backward override {
    const double pass = conv_pass_flops(weight, {pre_norm.size(0), weight.size(0), pre_norm.size(1), 1});
    TS_TIMED(conv_embedding_backward, double(int(dx.defined()) + int(dweight.defined())) * pass);
    inner_.conv_embedding_backward(dtokens, x, weight, a, pre_norm, ln_weight, mean, rstd, dx, dweight, dbias,
                                   dln_weight, dln_bias);
  }
  void conv_embedding_nhwc TS_PARAMS_conv_embedding_nhwc override {
    TS_TIMED(conv_embedding_nhwc, conv_pass_flops(weight, {tokens.size(0), weight.size(0), tokens.size(1), 1}));
    inner_.conv_embedding_nhwc(x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
  }
  void conv_embedding_nhwc_backward TS_PARAMS_conv_embedding_nhwc_backward override {
    const double pass = conv_pass_flops(weight, {pre_norm.size(0), weight.size(0), pre_norm.size(1), 1});
    TS_TIMED(conv_embedding_nhwc_backward, double(int(dx.defined()) + int(dweight.defined())) * pass);
    inner_.conv_embedding_nhwc_backward(dtokens, x, weight, a, pre_norm, ln_weight, mean, rstd, dx, dweight, dbias,
                                        dln_weight, dln_bias);
  }
  void depthwise_conv2d_nhwc TS_PARAMS_depthwise_conv2d_nhwc override {
    TS_TIMED(depthwise_conv2d_nhwc, conv_pass_flops(weight, y.shape()));  // the count is layout-free
    inner_.depthwise_conv2d_nhwc(x, weight, bias, a, y);
  }
  void depthwise_conv2d_nhwc_backward TS_PARAMS_depthwise_conv2d_nhwc_backward override {
    TS_TIMED(depthwise_conv2d_nhwc_backward, conv_backward_flops(dy, weight, dx, dweight));
    inner_.depthwise_conv2d_nhwc_backward(dy, x, weight, a, dx, dweight, dbias);
  }
  void batch_norm_nhwc TS_PARAMS_batch_norm_nhwc override {
    TS_TIMED(batch_norm_nhwc, 0);
    inner_.batch_norm_nhwc(x, weight, bias, mean, invstd, eps, training, y);
  }
  void batch_norm_nhwc_backward TS_PARAMS_batch_norm_nhwc_backward override {
    TS_TIMED(batch_norm_nhwc_backward, 0);
    inner_.batch_norm_nhwc_backward(dy, x, weight, mean, invstd, training, dx, dweight, dbias);
  }
  void sum_of_squares TS_PARAMS_sum_of_squares override { TS_TIMED(sum_of_squares, 0); inner_.sum_of_squares(xs, out); }
  void scale TS_PARAMS_scale override { TS_TIMED(scale, 0); inner_.scale(xs, factor); }
  void column_sums TS_PARAMS_column_sums override { TS_TIMED(column_sums, 0); inner_.column_sums(x, out); }
#undef TS_TIMED

 private:
  Backend& inner_;
};

// A fused op left out above would silently run the base class's composite under the profiler, timing
// another computation than the one profiled (a missing primitive cannot compile: they are pure virtual).
#define TS_TIMED_HERE(op)                                                                          \
  static_assert(std::is_same_v<decltype(&TimingBackend::op), void(TimingBackend::*) TS_PARAMS_##op>, \
                "profile: TimingBackend must forward " #op);
TESSERA_FUSED_OPS(TS_TIMED_HERE)
#undef TS_TIMED_HERE

}  // namespace

// backend(Device) (engine/core/backend.cpp) calls this with the device's backend: the timing wrapper while
// a Profiler times this thread, else the backend itself. The wrappers outlive every Profiler (a backend
// reference may be held across calls); one per device, made at first use.
Backend& timed(Backend& inner) {
  if (!Profiler::active()) return inner;
  static std::array<std::unique_ptr<TimingBackend>, 2> wrappers;
  auto& w = wrappers[size_t(inner.device())];
  if (!w || &w->inner() != &inner) w = std::make_unique<TimingBackend>(inner);
  return *w;
}

}  // namespace tessera::profile
