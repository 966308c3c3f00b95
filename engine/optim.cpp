#include "engine/optim.h"

#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "engine/core/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "engine/core/backend.h"

namespace tessera {

namespace {

std::string num(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

const char* kFormat = "tessera.adamw";
const char* kVersion = "1";

}  // namespace

// ---------------------------------------------------------------- groups

bool trainer_applies_weight_decay(const NamedParameter& p) {
  return !p.in_layer_norm && p.name.find("bias") == std::string::npos;
}

std::vector<ParamGroup> trainer_param_groups(const std::vector<NamedParameter>& params, double weight_decay) {
  ParamGroup decay{{}, weight_decay}, no_decay{{}, 0.0};
  for (const auto& p : params) (trainer_applies_weight_decay(p) ? decay : no_decay).params.push_back(p);
  return {decay, no_decay};
}

// ---------------------------------------------------------------- AdamW

void AdamW::check_hyperparameters(const AdamWOptions& o, const char* where) const {
  TS_CHECK(std::isfinite(o.lr) && o.lr >= 0, std::string(where) + ": lr " + num(o.lr) + " must be finite and >= 0");
  TS_CHECK(o.beta1 >= 0 && o.beta1 < 1, std::string(where) + ": beta1 " + num(o.beta1) + " must be in [0, 1)");
  TS_CHECK(o.beta2 >= 0 && o.beta2 < 1, std::string(where) + ": beta2 " + num(o.beta2) + " must be in [0, 1)");
  TS_CHECK(std::isfinite(o.eps) && o.eps >= 0, std::string(where) + ": eps " + num(o.eps) + " must be finite and >= 0");
  TS_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0,
           std::string(where) + ": weight_decay " + num(o.weight_decay) + " must be finite and >= 0");
}

AdamW::AdamW(const std::vector<NamedParameter>& params, const AdamWOptions& options)
    : AdamW(std::vector<ParamGroup>{ParamGroup{params, std::nullopt}}, options) {}

AdamW::AdamW(const std::vector<ParamGroup>& groups, const AdamWOptions& options) : options_(options) {
  check_hyperparameters(options_, "AdamW");
  std::set<std::string> names;
  std::set<const TensorImpl*> tensors;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    double wd = groups[gi].weight_decay.value_or(options.weight_decay);
    TS_CHECK(std::isfinite(wd) && wd >= 0,
             "AdamW: group " + std::to_string(gi) + " weight_decay " + num(wd) + " must be finite and >= 0");
    for (const auto& p : groups[gi].params) {
      const std::string who = "AdamW: parameter '" + p.name + "'";
      TS_CHECK(!p.name.empty(), "AdamW: a parameter of group " + std::to_string(gi) + " has an empty name");
      TS_CHECK(names.insert(p.name).second, who + " is given more than once");
      TS_CHECK(p.tensor.defined(), who + " is an undefined tensor");
      TS_CHECK(tensors.insert(p.tensor.impl()).second, who + " is a tensor already given under another name");
      TS_CHECK(p.tensor.dtype() == DType::f32 || p.tensor.dtype() == DType::f64,
               who + " is " + p.tensor.str() + "; AdamW updates f32 or f64 parameters");
      TS_CHECK(p.tensor.is_contiguous(), who + " " + p.tensor.str() + " is not contiguous");
      ParamState s;
      s.param = p;
      s.weight_decay = wd;
      s.exp_avg = Tensor::zeros(p.tensor.shape(), p.tensor.dtype(), p.tensor.device());
      s.exp_avg_sq = Tensor::zeros(p.tensor.shape(), p.tensor.dtype(), p.tensor.device());
      states_.push_back(std::move(s));
    }
  }
}

void AdamW::set_lr(double lr) {
  AdamWOptions o = options_;
  o.lr = lr;
  check_hyperparameters(o, "AdamW.set_lr");
  options_.lr = lr;
}

std::vector<Tensor> AdamW::parameters() const {
  std::vector<Tensor> out;
  out.reserve(states_.size());
  for (const auto& s : states_) out.push_back(s.param.tensor);
  return out;
}

void AdamW::zero_grad() {
  for (auto& s : states_) s.param.tensor.zero_grad();
}

void AdamW::step() {
  NoGradGuard no_grad;
  // Validate every gradient before updating anything, so a bad one leaves the whole model untouched.
  std::vector<Tensor> grads(states_.size());
  for (size_t i = 0; i < states_.size(); ++i) {
    const Tensor& p = states_[i].param.tensor;
    const Tensor& g = p.grad();
    if (!g.defined()) continue;  // torch skips parameters without a gradient
    TS_CHECK(g.shape() == p.shape() && g.device() == p.device(),
             "AdamW.step: gradient " + g.str() + " does not match parameter '" + states_[i].param.name + "' " +
                 p.str());
    TS_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::f64 || g.dtype() == DType::bf16,
             "AdamW.step: gradient of '" + states_[i].param.name + "' is " + g.str() + "; expected f32, f64 or bf16");
    grads[i] = g.is_contiguous() ? g : g.contiguous();
  }
  // Parameters sharing a device and a step count share the step's scalars: one backend call each (one in a
  // normal step: every parameter has a gradient every step), which CUDA runs as a multi-tensor kernel.
  std::map<std::pair<Device, int64_t>, std::vector<size_t>> calls;
  for (size_t i = 0; i < states_.size(); ++i)
    if (grads[i].defined()) calls[{states_[i].param.tensor.device(), states_[i].step}].push_back(i);
  for (const auto& [key, members] : calls) {
    // Bias corrections as torch computes them: 1 - beta^t in double with t the parameters' own count.
    const double t = double(key.second + 1);
    const Backend::AdamWStep a{options_.lr, options_.beta1, options_.beta2, options_.eps,
                               1 - std::pow(options_.beta1, t), 1 - std::pow(options_.beta2, t)};
    std::vector<Backend::AdamWParam> list;
    for (size_t i : members) {
      const ParamState& s = states_[i];
      list.push_back({s.param.tensor, grads[i], s.exp_avg, s.exp_avg_sq, s.weight_decay});
    }
    backend(key.first).adamw(list, a);
    for (size_t i : members) states_[i].step += 1;
  }
}

// ---------------------------------------------------------------- state

std::map<std::string, Tensor> AdamW::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& s : states_) {
    const std::string& n = s.param.name;
    out["exp_avg." + n] = s.exp_avg;
    out["exp_avg_sq." + n] = s.exp_avg_sq;
    out["step." + n] = Tensor::scalar(double(s.step), DType::i64);
    out["weight_decay." + n] = Tensor::scalar(s.weight_decay, DType::f64);
  }
  out["adamw.lr"] = Tensor::scalar(options_.lr, DType::f64);
  out["adamw.beta1"] = Tensor::scalar(options_.beta1, DType::f64);
  out["adamw.beta2"] = Tensor::scalar(options_.beta2, DType::f64);
  out["adamw.eps"] = Tensor::scalar(options_.eps, DType::f64);
  return out;
}

namespace {

// "[a, b, c, ... and 7 more]": long lists are cut so the message stays readable.
std::string list_str(const std::vector<std::string>& items) {
  const size_t shown = 12;
  std::string s = "[";
  for (size_t i = 0; i < items.size() && i < shown; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > shown) s += ", ... and " + std::to_string(items.size() - shown) + " more";
  return s + "]";
}

}  // namespace

void AdamW::load_state_dict(const std::map<std::string, Tensor>& state) {
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> expected;

  // Reads a one-element tensor; records a mismatch and returns nullopt when it is not one.
  auto scalar = [&](const std::string& key) -> std::optional<double> {
    expected.insert(key);
    auto it = state.find(key);
    if (it == state.end()) { missing.push_back(key); return std::nullopt; }
    if (!it->second.defined() || it->second.numel() != 1) {
      mismatched.push_back(key + " (" + (it->second.defined() ? it->second.str() : "undefined") +
                           ", expected one element)");
      return std::nullopt;
    }
    return it->second.item();
  };
  auto moment = [&](const std::string& key, const Tensor& param) -> Tensor {
    expected.insert(key);
    auto it = state.find(key);
    if (it == state.end()) { missing.push_back(key); return Tensor(); }
    const Tensor& t = it->second;
    if (!t.defined() || t.shape() != param.shape() || t.dtype() != param.dtype()) {
      mismatched.push_back(key + " (" + (t.defined() ? t.str() : "undefined") + ", expected " +
                           dtype_name(param.dtype()) + shape_str(param.shape()) + ")");
      return Tensor();
    }
    return t;
  };

  struct Loaded { Tensor m, v; int64_t step = 0; double wd = 0; };
  std::vector<Loaded> loaded(states_.size());
  for (size_t i = 0; i < states_.size(); ++i) {
    const std::string& n = states_[i].param.name;
    const Tensor& p = states_[i].param.tensor;
    loaded[i].m = moment("exp_avg." + n, p);
    loaded[i].v = moment("exp_avg_sq." + n, p);
    if (auto st = scalar("step." + n)) {
      if (!(*st >= 0 && *st < 9007199254740992.0 && std::floor(*st) == *st))
        mismatched.push_back("step." + n + " (" + num(*st) + ", expected an integer >= 0)");
      else
        loaded[i].step = int64_t(*st);
    }
    if (auto wd = scalar("weight_decay." + n)) {
      if (!(std::isfinite(*wd) && *wd >= 0))
        mismatched.push_back("weight_decay." + n + " (" + num(*wd) + ", expected finite and >= 0)");
      else
        loaded[i].wd = *wd;
    }
  }
  AdamWOptions o = options_;
  auto lr = scalar("adamw.lr"), b1 = scalar("adamw.beta1"), b2 = scalar("adamw.beta2"), eps = scalar("adamw.eps");
  if (lr) o.lr = *lr;
  if (b1) o.beta1 = *b1;
  if (b2) o.beta2 = *b2;
  if (eps) o.eps = *eps;
  for (const auto& [key, t] : state)
    if (!expected.count(key)) unexpected.push_back(key);

  std::string problems;
  if (!missing.empty()) problems += "; missing " + std::to_string(missing.size()) + " " + list_str(missing);
  if (!unexpected.empty())
    problems += "; unexpected " + std::to_string(unexpected.size()) + " " + list_str(unexpected);
  if (!mismatched.empty())
    problems += "; mismatched " + std::to_string(mismatched.size()) + " " + list_str(mismatched);
  if (!problems.empty())
    fail("AdamW.load_state_dict: the state does not match this optimizer's parameters" + problems);
  check_hyperparameters(o, "AdamW.load_state_dict");

  // Everything validated: apply.
  for (size_t i = 0; i < states_.size(); ++i) {
    ParamState& s = states_[i];
    if (loaded[i].m.impl() != s.exp_avg.impl()) s.exp_avg.copy_(loaded[i].m);
    if (loaded[i].v.impl() != s.exp_avg_sq.impl()) s.exp_avg_sq.copy_(loaded[i].v);
    s.step = loaded[i].step;
    s.weight_decay = loaded[i].wd;
  }
  options_ = o;
}

void save_optimizer(const AdamW& opt, const std::string& path) {
  save_safetensors(path, opt.state_dict(), {{"format", kFormat}, {"version", kVersion}});
}

void load_optimizer(AdamW& opt, const std::string& path) {
  SafetensorsFile file(path);
  auto meta = [&](const char* key) {
    auto it = file.metadata().find(key);
    return it == file.metadata().end() ? std::string("(none)") : it->second;
  };
  TS_CHECK(meta("format") == kFormat,
           path + ": not an optimizer state (metadata format=" + meta("format") + ", expected " + kFormat + ")");
  TS_CHECK(meta("version") == kVersion,
           path + ": optimizer state version " + meta("version") + " is not supported (expected " + kVersion + ")");
  std::map<std::string, Tensor> state;
  for (const auto& info : file.tensors()) state[info.name] = file.get(info.name);
  try {
    opt.load_state_dict(state);
  } catch (const TensorError& e) {
    fail(path + ": " + e.what());
  }
}

// ---------------------------------------------------------------- clipping

namespace {

// The defined gradients of `params`, grouped by device (each made contiguous: a strided gradient is a
// copy that clipping writes back, see scale_gradients).
struct DeviceGradients {
  std::vector<Tensor> grads, flat;  // the gradients; contiguous tensors to compute on (aliases when possible)
};
std::map<Device, DeviceGradients> gradients_by_device(const std::vector<Tensor>& params, const char* who) {
  std::map<Device, DeviceGradients> out;
  for (size_t i = 0; i < params.size(); ++i) {
    TS_CHECK(params[i].defined(), std::string(who) + ": parameter " + std::to_string(i) + " is undefined");
    const Tensor& g = params[i].grad();
    if (!g.defined()) continue;
    TS_CHECK(is_floating(g.dtype()), std::string(who) + ": gradient " + std::to_string(i) + " is " + g.str());
    DeviceGradients& d = out[g.device()];
    d.grads.push_back(g);
    d.flat.push_back(g.is_contiguous() ? g : g.contiguous());
  }
  return out;
}

// Σ g² over a device's gradients: an f64 scalar on that device (Backend::sum_of_squares, f64 throughout).
Tensor sum_of_squares_on_device(Device d, const DeviceGradients& g) {
  Tensor sq = Tensor::empty({}, DType::f64, d);
  backend(d).sum_of_squares(g.flat, sq);
  return sq;
}

// Multiplies a device's gradients by `factor` (an f64 scalar on that device).
void scale_gradients(Device d, DeviceGradients& g, const Tensor& factor) {
  backend(d).scale(g.flat, factor);
  for (size_t i = 0; i < g.grads.size(); ++i)
    if (g.flat[i].impl() != g.grads[i].impl()) g.grads[i].copy_(g.flat[i]);
}

}  // namespace

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite) {
  TS_CHECK(std::isfinite(max_norm) && max_norm > 0,
           "clip_grad_norm: max_norm " + num(max_norm) + " must be finite and > 0");
  auto devices = gradients_by_device(params, "clip_grad_norm");
  NoGradGuard no_grad;
  // √(Σ g²) over all elements in f64: torch's norm of the per-tensor norms up to a few roundings of the
  // intermediate square roots. One device-to-host read per device.
  double total_sq = 0;
  for (auto& [d, g] : devices) total_sq += sum_of_squares_on_device(d, g).item();
  const double total = std::sqrt(total_sq);
  if (error_if_nonfinite && !std::isfinite(total))
    fail("clip_grad_norm: the total gradient norm is " + num(total) + " (non-finite gradients)");
  // torch: clip_coef = max_norm / (total + 1e-6), clamped to at most 1 (a NaN stays NaN); multiplying by
  // exactly 1 changes nothing, so only smaller (or NaN) coefficients touch the gradients.
  const double coef = max_norm / (total + 1e-6);
  if (!(coef >= 1.0))
    for (auto& [d, g] : devices) scale_gradients(d, g, Tensor::scalar(coef, DType::f64, d));
  return total;
}

Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm) {
  TS_CHECK(std::isfinite(max_norm) && max_norm > 0,
           "clip_grad_norm_on_device: max_norm " + num(max_norm) + " must be finite and > 0");
  auto devices = gradients_by_device(params, "clip_grad_norm_on_device");
  if (devices.empty()) return Tensor::zeros({}, DType::f64);
  TS_CHECK(devices.size() == 1, "clip_grad_norm_on_device: gradients must be on one device");
  auto& [d, g] = *devices.begin();
  NoGradGuard no_grad;
  // The same arithmetic as clip_grad_norm, but the total and the coefficient stay on the device (a handful
  // of launches in all on CUDA): nothing waits for the GPU.
  Tensor total = sqrt(sum_of_squares_on_device(d, g));                      // f64 []
  // torch's clip_coef_clamped: max_norm / (total + 1e-6), at most 1 (it is positive anyway).
  Tensor coef = clamp(div(Tensor::scalar(max_norm, DType::f64, d), add(total, 1e-6)), 0.0, 1.0);
  scale_gradients(d, g, coef);                                              // × 1 leaves a gradient exact
  return total;
}

}  // namespace tessera
