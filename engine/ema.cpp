#include "engine/ema.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <stdexcept>

#include "engine/core/autograd.h"
#include "engine/core/backend.h"
#include "engine/safetensors.h"

namespace tessera {

namespace {

void check_decay(double decay, const std::string& where) {
  if (!(decay >= 0 && decay < 1)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", decay);
    throw std::invalid_argument(where + ": decay " + buf + " must be in [0, 1)");
  }
}

// The metadata entry `key` parsed whole as a T, or an error naming the file and the entry.
template <typename T> T parse_metadata(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw std::runtime_error(f.path() + ": no \"" + key + "\" metadata: not a weight average written by WeightEma");
  const std::string& s = it->second;
  T value{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size())
    throw std::runtime_error(f.path() + ": metadata \"" + key + "\" = \"" + s + "\" is not a number");
  return value;
}

}  // namespace

WeightEma::WeightEma(const std::map<std::string, Tensor>& state, double decay) : decay_(decay) {
  check_decay(decay, "WeightEma");
  TS_CHECK(!state.empty(), "WeightEma: the state to average holds no tensor");
  NoGradGuard no_grad;
  for (const auto& [name, t] : state) {
    TS_CHECK(t.defined(), "WeightEma: tensor '" + name + "' is undefined");
    TS_CHECK(!is_floating(t.dtype()) || t.dtype() == DType::f32 || t.dtype() == DType::f64,
             "WeightEma: tensor '" + name + "' is " + t.str() +
                 "; floating tensors are averaged in f32 or f64 (16-bit would round the updates away)");
    average_[name] = t.detach().clone();
  }
}

double WeightEma::next_decay() const {
  const double n = double(updates_);
  return std::min(decay_, (1 + n) / (10 + n));
}

void WeightEma::update(const std::map<std::string, Tensor>& live) {
  // Validate everything first, so a bad map leaves the average untouched.
  for (const auto& [name, t] : live)
    TS_CHECK(average_.count(name), "WeightEma.update: tensor '" + name + "' is not in the average");
  for (const auto& [name, avg] : average_) {
    auto it = live.find(name);
    TS_CHECK(it != live.end(), "WeightEma.update: tensor '" + name + "' of the average is missing");
    const Tensor& t = it->second;
    TS_CHECK(t.defined() && t.shape() == avg.shape() && t.dtype() == avg.dtype() && t.device() == avg.device(),
             "WeightEma.update: tensor '" + name + "' is " + (t.defined() ? t.str() : "undefined") +
                 ", the average has " + avg.str());
  }
  NoGradGuard no_grad;
  const double d = next_decay();
  for (auto& [name, avg] : average_) {
    const Tensor src = live.at(name).detach();
    if (!is_floating(avg.dtype())) {
      avg.copy_(src);
      continue;
    }
    // The average is contiguous (a clone), as the backend wants outputs; the live tensor may have any strides.
    Backend& b = backend(avg.device());
    Tensor scaled = Tensor::empty(avg.shape(), avg.dtype(), avg.device());
    b.unary(UnaryOp::Affine, src, scaled, 1 - d, 0);
    b.unary(UnaryOp::Affine, avg, avg, d, 0);
    b.binary(BinaryOp::Add, avg, scaled, avg);
  }
  ++updates_;
}

void WeightEma::save(const std::string& path) const {
  char decay[64];
  std::snprintf(decay, sizeof decay, "%.17g", decay_);
  save_safetensors(path, average_,
                   {{"ema_decay", decay}, {"ema_updates", std::to_string(updates_)}, {"format", "pt"}});
}

void WeightEma::load(const std::string& path) {
  SafetensorsFile f(path);
  const auto decay = parse_metadata<double>(f, "ema_decay");
  const auto updates = parse_metadata<int64_t>(f, "ema_updates");
  check_decay(decay, path);
  if (updates < 0) throw std::runtime_error(path + ": ema_updates " + std::to_string(updates) + " is negative");
  for (const auto& info : f.tensors())
    if (!average_.count(info.name))
      throw std::runtime_error(path + ": tensor '" + info.name + "' is not in the weight average");
  std::map<std::string, Tensor> loaded;
  for (const auto& [name, avg] : average_) {
    if (!f.contains(name)) throw std::runtime_error(path + ": tensor '" + name + "' of the weight average is missing");
    const TensorInfo& info = f.info(name);
    if (info.shape != avg.shape() || info.dtype != avg.dtype())
      throw std::runtime_error(path + ": tensor '" + name + "' is " + dtype_name(info.dtype) +
                               shape_str(info.shape) + ", the weight average has " + dtype_name(avg.dtype()) + shape_str(avg.shape()));
    loaded[name] = f.get(name);
  }
  NoGradGuard no_grad;
  for (auto& [name, avg] : average_) avg.copy_(loaded.at(name));
  decay_ = decay;
  updates_ = updates;
}

}  // namespace tessera
