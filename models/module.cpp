#include "models/module.h"

#include <algorithm>
#include <cctype>
#include <numeric>
#include <sstream>

#include "engine/core/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"

namespace tessera::models {

// ---------------------------------------------------------------- layers
Tensor cast_to(const Tensor& p, DType dt) {
  if (!p.defined() || p.dtype() == dt) return p;
  // A dense tensor in another memory order keeps it (CvT's channels-last token grid through the fp32 batch
  // norm and back): the cast runs on the view that is contiguous, and the result is permuted back.
  if (!p.is_contiguous() && p.dim() > 1) {
    std::vector<int64_t> order(size_t(p.dim()));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p.strides()[size_t(a)] > p.strides()[size_t(b)]; });
    const Tensor dense = p.permute(order);
    if (dense.is_contiguous()) {
      std::vector<int64_t> inverse(order.size());
      for (size_t i = 0; i < order.size(); ++i) inverse[size_t(order[i])] = int64_t(i);
      return dense.to(dt).permute(inverse);
    }
  }
  return p.to(dt);  // differentiable: the gradient reaches the master tensor in its own dtype
}

Tensor Linear::operator()(const Tensor& x, const Tensor& residual) const {
  return tessera::linear(x, cast_to(weight, x.dtype()), cast_to(bias, x.dtype()), residual);
}

Tensor Linear::gelu(const Tensor& x) const {
  if (!bias.defined()) return tessera::gelu((*this)(x));
  return tessera::linear_gelu(x, cast_to(weight, x.dtype()), cast_to(bias, x.dtype()));
}

Tensor LayerNorm::operator()(const Tensor& x) const {
  return tessera::layer_norm(x, cast_to(weight, x.dtype()), cast_to(bias, x.dtype()), eps);
}

Tensor Conv2d::operator()(const Tensor& x) const {
  return tessera::conv2d(x, cast_to(weight, x.dtype()), cast_to(bias, x.dtype()), stride, padding, groups);
}

Tensor BatchNorm2d::operator()(const Tensor& x, bool training) const {
  // In the parameters' dtype (fp32 under mixed precision), as autocast keeps batch norm: its statistics
  // and running-stat updates need the range and precision.
  Tensor y = tessera::batch_norm2d(cast_to(x, weight.dtype()), weight, bias, running_mean, running_var,
                                   num_batches_tracked, training, momentum, eps);
  return cast_to(y, x.dtype());
}

AttentionHooks capture_attention(AttentionCapture& out, std::vector<int64_t> query_key_layers,
                                 std::optional<std::vector<int64_t>> probability_layers) {
  AttentionHooks hooks;
  if (probability_layers) {
    hooks.layers = *probability_layers;
    hooks.layers.insert(hooks.layers.end(), query_key_layers.begin(), query_key_layers.end());
    if (hooks.layers.empty()) return hooks;  // nothing to keep: no callback, every layer fused
    hooks.probability_layers = std::move(probability_layers);
  }
  hooks.forward = [&out, qk = std::move(query_key_layers)](int64_t layer, AttentionPart part, const Tensor& x) {
    const bool split = std::find(qk.begin(), qk.end(), layer) != qk.end();
    if (part == AttentionPart::Probs) out.probs[layer] = x.detach().to(x.dtype() == DType::f64 ? DType::f64 : DType::f32);
    else if (split && part == AttentionPart::Query) out.queries[layer] = x.detach();
    else if (split && part == AttentionPart::Key) out.keys[layer] = x.detach();
  };
  return hooks;
}

Tensor multi_head_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale,
                            const AttentionHooks* hooks, int64_t layer) {
  const int64_t B = q.size(0), Tq = q.size(1), C = q.size(2), Tk = k.size(1);
  TS_CHECK(C % heads == 0, "multi_head_attention: " + std::to_string(C) + " channels do not split into " +
                               std::to_string(heads) + " heads");
  const int64_t D = C / heads;
  auto split_heads = [&](const Tensor& x, int64_t T) {  // (B, T, C) -> (B, heads, T, D)
    return x.reshape({B, T, heads, D}).permute({0, 2, 1, 3});
  };
  const bool watched = hooks && hooks->wants(layer);
  const Tensor* gate = nullptr;
  if (hooks)
    if (auto it = hooks->gates.find(layer); it != hooks->gates.end()) gate = &it->second;
  // Unwatched and ungated: the heads stay in their channels (no split and merge copies where the backend
  // reads them in place). Hooks and gates need the split heads below.
  if (!watched && !gate) return attention_tokens(q, k, v, heads, scale);
  // Shows a part to the forward hook and, through a gradient hook, its gradient to the backward one.
  auto show = [&](AttentionPart part, Tensor x) {
    if (!watched) return x;
    if (hooks->forward) hooks->forward(layer, part, x);
    if (hooks->backward)
      x = with_gradient_hook(x, [backward = hooks->backward, layer, part](const Tensor& g) { backward(layer, part, g); });
    return x;
  };
  const Tensor qh = show(AttentionPart::Query, split_heads(q, Tq));
  const Tensor kh = show(AttentionPart::Key, split_heads(k, Tk));
  const Tensor vh = show(AttentionPart::Value, split_heads(v, Tk));
  Tensor ctx;  // (B, heads, Tq, D)
  const bool probabilities = hooks && hooks->shows_probabilities(layer);
  if (probabilities && hooks->backward) {
    // The composition the fused op equals, so that the probabilities are in the graph.
    const Tensor probs = show(AttentionPart::Probs, softmax(mul(matmul(qh, kh.transpose(-1, -2)), scale), -1));
    ctx = matmul(probs, vh);
  } else {
    ctx = scaled_dot_product_attention(qh, kh, vh, scale);
    if (probabilities && hooks->forward) hooks->forward(layer, AttentionPart::Probs, attention_probabilities(qh, kh, scale));
  }
  if (gate) {
    const bool per_image = gate->dim() == 2;
    TS_CHECK((gate->dim() == 1 || (per_image && gate->size(0) == B)) && gate->size(-1) == heads,
             "attention gate of layer " + std::to_string(layer) + ": expected (" + std::to_string(heads) +
                 ") or (" + std::to_string(B) + ", " + std::to_string(heads) + "), got " + gate->str());
    TS_CHECK(gate->device() == ctx.device(), "attention gate of layer " + std::to_string(layer) + " is on " +
                                                 device_name(gate->device()) + ", the model on " +
                                                 device_name(ctx.device()));
    ctx = mul(ctx, cast_to(*gate, ctx.dtype()).reshape({per_image ? B : 1, heads, 1, 1}));
  }
  ctx = show(AttentionPart::Context, ctx);
  return ctx.permute({0, 2, 1, 3}).reshape({B, Tq, C});  // (B, Tq, C), head i owns channels [iD, iD + D)
}

Tensor nchw_to_tokens(const Tensor& x) { return x.flatten(2).transpose(1, 2); }  // (B, H·W, C)

Tensor tokens_to_nchw(const Tensor& x, int64_t H, int64_t W) {  // (B, H·W, C) -> (B, C, H, W)
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), H, W});
}

Tensor mix_style(const Tensor& x, const StyleMix& mix) {  // x (B, T, C)
  TS_CHECK(x.defined() && x.dim() == 3, "mix_style: x must be (B, T, C), got " +
                                            (x.defined() ? x.str() : std::string("undefined")));
  const int64_t B = x.size(0), T = x.size(1);
  TS_CHECK(int64_t(mix.partner.size()) == B && int64_t(mix.lambda.size()) == B,
           "mix_style: the draw has " + std::to_string(mix.partner.size()) + " partners and " +
               std::to_string(mix.lambda.size()) + " weights for a batch of " + std::to_string(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = mix.partner[size_t(b)];
    const double l = mix.lambda[size_t(b)];
    TS_CHECK(p >= 0 && p < B, "mix_style: partner[" + std::to_string(b) + "] = " + std::to_string(p) + " is outside the batch");
    TS_CHECK(l >= 0 && l <= 1, "mix_style: lambda[" + std::to_string(b) + "] = " + std::to_string(l) + " is outside [0, 1]");
  }
  if (T < 2) return x;
  // The statistics in f32 at least (a bf16 variance would lose the digits σ is made of), off the tape.
  const DType stat_dtype = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor scale, shift;  // (B, 1, C): y = x·scale + shift
  {
    NoGradGuard no_grad;
    const Tensor xs = x.detach().to(stat_dtype);
    const Tensor mu = mean(xs, {1}, true);
    const Tensor sigma = sqrt(sum(pow(xs - mu, 2.0), {1}, true) * (1.0 / double(T - 1)) + StyleMix::kEps);
    const Tensor partner = Tensor::from(mix.partner, {B}, DType::i64).to(x.device());
    const Tensor lambda = Tensor::from(mix.lambda, {B, 1, 1}, stat_dtype).to(x.device());
    const Tensor keep = affine(lambda, -1.0, 1.0);  // 1 − λ, the partner's share
    const Tensor mu_mix = lambda * mu + keep * index_select(mu, 0, partner);
    const Tensor sigma_mix = lambda * sigma + keep * index_select(sigma, 0, partner);
    scale = sigma_mix / sigma;
    shift = mu_mix - mu * scale;
    scale = scale.to(x.dtype()), shift = shift.to(x.dtype());
  }
  return x * scale + shift;
}

// ---------------------------------------------------------------- registry
Tensor Module::add_param(const std::string& name, const Shape& shape, Init init, bool in_layer_norm) {
  if (index_.count(name)) throw std::logic_error("Module: tensor registered twice: " + name);
  Tensor t = Tensor::empty(shape, dtype_);
  t.set_requires_grad(true);
  index_[name] = entries_.size();
  entries_.push_back({name, t, false, in_layer_norm});
  inits_.push_back(init);
  return t;
}

Tensor Module::add_buffer(const std::string& name, const Shape& shape, Init init, bool integer) {
  if (index_.count(name)) throw std::logic_error("Module: tensor registered twice: " + name);
  Tensor t = Tensor::empty(shape, integer ? DType::i64 : dtype_);
  index_[name] = entries_.size();
  entries_.push_back({name, t, true, false});
  inits_.push_back(init);
  return t;
}

Linear Module::linear(const std::string& name, int64_t in, int64_t out, bool bias) {
  Linear l;
  l.weight = add_param(name + ".weight", {out, in}, Init::TruncNormal);
  if (bias) l.bias = add_param(name + ".bias", {out}, Init::Zeros);
  return l;
}

LayerNorm Module::layer_norm(const std::string& name, int64_t C, double eps) {
  LayerNorm l;
  l.weight = add_param(name + ".weight", {C}, Init::Ones, /*in_layer_norm=*/true);
  l.bias = add_param(name + ".bias", {C}, Init::Zeros, /*in_layer_norm=*/true);
  l.eps = eps;
  return l;
}

Conv2d Module::conv2d(const std::string& name, int64_t cin, int64_t cout, int64_t k, int64_t stride,
                      int64_t padding, int64_t groups, bool bias) {
  Conv2d c;
  c.weight = add_param(name + ".weight", {cout, cin / groups, k, k}, Init::TruncNormal);
  if (bias) c.bias = add_param(name + ".bias", {cout}, Init::Zeros);
  c.stride = stride;
  c.padding = padding;
  c.groups = groups;
  return c;
}

BatchNorm2d Module::batch_norm2d(const std::string& name, int64_t C) {
  // torch's nn.BatchNorm2d defaults; the models' _init_weights do not touch BatchNorm.
  BatchNorm2d b;
  b.weight = add_param(name + ".weight", {C}, Init::Ones);
  b.bias = add_param(name + ".bias", {C}, Init::Zeros);
  b.running_mean = add_buffer(name + ".running_mean", {C}, Init::Zeros);
  b.running_var = add_buffer(name + ".running_var", {C}, Init::Ones);
  b.num_batches_tracked = add_buffer(name + ".num_batches_tracked", {}, Init::Zeros, /*integer=*/true);
  return b;
}

std::vector<NamedParameter> Module::parameters() const {
  std::vector<NamedParameter> out;
  for (const auto& e : entries_)
    if (!e.is_buffer) out.push_back({e.name, e.tensor, e.in_layer_norm});
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& e : entries_)
    if (!e.is_buffer) n += e.tensor.numel();
  return n;
}

void Module::to(Device device) {
  for (auto& e : entries_) {
    if (e.tensor.device() == device) continue;
    // Swap the storage under the registered TensorImpl, so every layer's handle (and anything else
    // sharing it) sees the moved tensor.
    Tensor moved = e.tensor.detach().to(device).contiguous();
    TensorImpl* impl = e.tensor.impl();
    impl->storage = moved.storage();
    impl->strides = moved.strides();
    impl->offset = moved.offset();
    impl->grad = Tensor();
  }
}

Device Module::device() const { return entries_.empty() ? Device::CPU : entries_.front().tensor.device(); }

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& e : entries_) out[e.name] = e.tensor;
  return out;
}

const Tensor& Module::tensor(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw ModelError(std::string(arch_name()) + ": no tensor named '" + name + "'");
  return entries_[it->second].tensor;
}

void Module::init_weights(Generator& gen, double std) { init_weights(gen, std, ""); }

void Module::init_weights(Generator& gen, double std, const std::string& prefix) {
  NoGradGuard ng;
  for (size_t i = 0; i < entries_.size(); ++i) {
    Tensor& t = entries_[i].tensor;
    if (entries_[i].name.rfind(prefix, 0) != 0) continue;
    switch (inits_[i]) {
      // torch.nn.init.trunc_normal_(w, mean=0, std, a=-2, b=2): the bounds are absolute, so with std 0.02
      // they sit at 100σ and the draw is a plain normal in practice; we keep the truncation for exactness.
      case Init::TruncNormal: t.copy_(gen.truncated_normal(t.shape(), 0.0, std, -2.0, 2.0, t.dtype())); break;
      case Init::Zeros: t.fill_(0); break;
      case Init::Ones: t.fill_(1); break;
    }
  }
}

namespace {

std::string list_names(const std::vector<std::string>& names) {
  // Long lists (a whole foreign checkpoint) are cut so the one-line error stays readable; the count is exact.
  constexpr size_t kShow = 12;
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < names.size() && i < kShow; ++i) os << (i ? ", " : "") << names[i];
  if (names.size() > kShow) os << ", ... " << names.size() - kShow << " more";
  os << "]";
  return os.str();
}

bool starts_with_any(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (name.rfind(p, 0) == 0) return true;
  return false;
}

}  // namespace

void Module::load_state_dict(const std::map<std::string, Tensor>& tensors, const std::string& source,
                             const std::vector<std::string>& skip_prefixes) {
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& e : entries_) {
    if (starts_with_any(e.name, skip_prefixes)) continue;
    auto it = tensors.find(e.name);
    if (it == tensors.end()) {
      missing.push_back(e.name);
      continue;
    }
    const Tensor& src = it->second;
    if (src.shape() != e.tensor.shape()) {
      mismatched.push_back(e.name + " is " + shape_str(src.shape()) + " in the file, " +
                           shape_str(e.tensor.shape()) + " in the model");
    } else if (is_floating(e.tensor.dtype()) != is_floating(src.dtype()) || src.dtype() == DType::boolean) {
      mismatched.push_back(e.name + " has dtype " + dtype_name(src.dtype()) + ", expected " +
                           dtype_name(e.tensor.dtype()));
    }
  }
  for (const auto& [name, t] : tensors)
    if (!index_.count(name) && !starts_with_any(name, skip_prefixes)) unexpected.push_back(name);

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream os;
    os << source << ": not a checkpoint of this " << arch_name() << " model";
    // A checkpoint of the other architecture: say so before the lists.
    std::string own = arch_name();
    std::transform(own.begin(), own.end(), own.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (const auto& [prefix, arch] : std::vector<std::pair<std::string, std::string>>{{"cvt.", "CvT"},
                                                                                       {"vit.", "ViT"}}) {
      if (prefix == own + ".") continue;
      size_t n = size_t(std::count_if(unexpected.begin(), unexpected.end(),
                                      [&, &prefix = prefix](const std::string& s) { return s.rfind(prefix, 0) == 0; }));
      if (n > 0 && n * 2 >= unexpected.size())
        os << " (it looks like a " << arch << " checkpoint, expected " << arch_name() << ")";
    }
    if (!missing.empty()) os << "; " << missing.size() << " missing: " << list_names(missing);
    if (!unexpected.empty()) os << "; " << unexpected.size() << " unexpected: " << list_names(unexpected);
    if (!mismatched.empty()) os << "; " << mismatched.size() << " mismatched: " << list_names(mismatched);
    throw ModelError(os.str());
  }

  NoGradGuard ng;
  for (auto& e : entries_) {
    if (starts_with_any(e.name, skip_prefixes)) continue;
    e.tensor.copy_(tensors.at(e.name));  // converts f16/bf16/f64 -> f32 and i32 -> i64
  }
}

void Module::load_safetensors(const std::string& path, const std::vector<std::string>& skip_prefixes) {
  SafetensorsFile file(path);  // validates the file; errors name it
  std::map<std::string, Tensor> tensors;
  for (const auto& info : file.tensors()) tensors[info.name] = file.get(info.name);  // views of the mapping
  load_state_dict(tensors, path, skip_prefixes);
}

void Module::save_safetensors(const std::string& path) const {
  tessera::save_safetensors(path, state_dict(), {{"format", "pt"}});
}

}  // namespace tessera::models
