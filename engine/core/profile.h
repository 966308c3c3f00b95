// Where a step's time goes: every backend call timed, by op family, by model layer and by phase.
//
// While a Profiler lives (one at a time), backend(Device) hands out a timing wrapper around each device's
// backend (engine/core/profile.cpp), so every primitive and fused op a step runs is timed where it is
// dispatched, whoever called it: the ops, the tensor core's copies, the optimizer. Nothing else changes,
// and with no Profiler backend() returns the device's backend itself: the normal path pays one branch.
//
// Attribution. The op family is the backend entry point ("gemm", "conv2d_backward", "attention"). The layer
// is the innermost LayerScope open when the op ran; a backward rule runs under the layer that recorded its
// node during forward (autograd stores it), so backward time lands on the layer whose forward made it. The
// phase is forward unless a PhaseScope says otherwise (backward is set by autograd; the caller marks the
// optimizer). Only the thread that created the Profiler is timed: the CPU backend's workers run inside the
// calls it times, and other threads (a data loader) pass through untimed.
//
// On CUDA each timed call ends with a device synchronisation, so a call's time is its kernels' time plus
// the launch; the sum is slower than a free-running step by the lost overlap of launches with execution,
// which is why the step time reported beside a profile comes from unprofiled steps.
//
// Work is counted too: FLOPs of the calls whose count is conventional (GEMM 2·M·N·K, convolution
// 2·N·Cout·Ho·Wo·(Cin/groups)·kh·kw, attention 4·B·H·Tq·Tk·D forward; elementwise, norm and copy ops count
// none), which is how `tessera bench` measures a model's FLOPs: by running it.
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engine/core/tensor.h"

namespace tessera {
class Backend;
}

namespace tessera::profile {

enum class Phase : uint8_t { Forward, Backward, Optimizer };
const char* phase_name(Phase p);

// One timed backend call, as the trace writes it.
struct Event {
  const char* op;
  int32_t layer;  // index into Profiler::layers(), or -1 for none
  Phase phase;
  double start_us, duration_us;
  double flops;  // the call's counted work (0: none counted), so the trace tells a slow product from a big one
};

// Totals of one (op, layer, phase).
struct Total {
  double seconds = 0, flops = 0;
  int64_t calls = 0;
};

class Profiler {
 public:
  // Starts timing (throws if another Profiler lives). `keep_events`: also keep every call for the trace.
  explicit Profiler(bool keep_events = false);
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;


  struct Key {
    std::string op;
    int32_t layer;
    Phase phase;
    bool operator<(const Key& o) const {
      return std::tie(op, layer, phase) < std::tie(o.op, o.layer, o.phase);
    }
  };
  const std::map<Key, Total>& totals() const { return totals_; }
  const std::vector<std::string>& layers() const { return layers_; }
  const std::vector<Event>& events() const { return events_; }
  // Sum over every call recorded.
  Total overall() const;
  // The trace in Chrome's JSON trace format (Perfetto and chrome://tracing open it): one complete event
  // per call, named by op, with its layer and phase as arguments; written atomically to `path`.
  void write_trace(const std::string& path) const;

  // ---- used by the timing backend and the scopes
  static Profiler* active();  // the live Profiler when the calling thread is the one it times, else nullptr
  int32_t layer_id(const std::string& name);
  int32_t current_layer() const { return layer_stack_.empty() ? -1 : layer_stack_.back(); }
  Phase phase() const { return phase_; }
  void push_layer(int32_t id) { layer_stack_.push_back(id); }
  void pop_layer() { layer_stack_.pop_back(); }
  void set_phase(Phase p) { phase_ = p; }
  void add(const char* op, double start_us, double seconds, double flops);
  double now_us() const;

 private:
  std::thread::id thread_;
  bool keep_events_;
  std::chrono::steady_clock::time_point origin_;
  std::map<Key, Total> totals_;
  std::vector<std::string> layers_;
  std::map<std::string, int32_t> layer_index_;
  std::vector<int32_t> layer_stack_;
  Phase phase_ = Phase::Forward;
  std::vector<Event> events_;
};

// What backend(Device) returns for a device's backend: a timing wrapper around it while a Profiler times
// the calling thread, else the backend itself.
Backend& timed(Backend& inner);

// RAII: the ops run in this scope belong to layer `name` (a checkpoint name prefix, "cvt.encoder.stages.0.
// layers.1"); nests. Does nothing without a Profiler.
class LayerScope {
 public:
  explicit LayerScope(const std::string& name);
  explicit LayerScope(int32_t id);  // an id from layer_id() (autograd's replay of a forward layer)
  ~LayerScope();
  LayerScope(const LayerScope&) = delete;
  LayerScope& operator=(const LayerScope&) = delete;
 private:
  Profiler* profiler_;
};

// RAII: the ops run in this scope belong to `phase`. Does nothing without a Profiler.
class PhaseScope {
 public:
  explicit PhaseScope(Phase phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;
 private:
  Profiler* profiler_;
  Phase previous_ = Phase::Forward;
};

}  // namespace tessera::profile
