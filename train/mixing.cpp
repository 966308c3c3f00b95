#include "train/mixing.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine/core/parallel.h"
#include "engine/core/philox.h"

namespace tessera {

namespace {

// MixStyle's key, another stream again.
uint64_t style_mix_key(uint64_t seed) {
  philox::U4 r = philox::philox4x32_10(seed, 0x4D49585354594Cull /* "MIXSTYL" */);
  return (uint64_t(r.x) << 32) | r.y;
}

// The mixing stream's Philox key: derived from the seed so that it is not the augmentation's stream (the
// seed itself) nor the shuffle's.
uint64_t mix_key(uint64_t seed) {
  philox::U4 r = philox::philox4x32_10(seed, 0x4D49585550ull /* "MIXUP" */);
  return (uint64_t(r.x) << 32) | r.y;
}

constexpr uint64_t kStepLimit = uint64_t(1) << 32;  // counter = step·2³² + slot must not wrap
enum Slot : uint64_t { kApply = 0, kMethod = 1, kRow = 2, kColumn = 3, kBeta = 4 };

// One step's counters; the Beta draw consumes slots from kBeta on. A rejection loop takes one more try
// with probability below 5%, so it never comes near the next step's counters.
struct StepStream {
  uint64_t key, base, next = kBeta;
  double at(uint64_t slot) const { return philox::uniform(key, base + slot); }
  double uniform() { return philox::uniform(key, base + next++); }
  double normal() { return philox::normal(key, base + next++); }
};

// log of a Gamma(a, 1) draw (see mixing.h for the methods).
double log_gamma(double a, StepStream& s) {
  if (a < 1) {
    const double u = 1.0 - s.uniform();  // in (0, 1]
    return log_gamma(a + 1, s) + std::log(u) / a;
  }
  const double d = a - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    const double x = s.normal();
    double v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const double u = s.uniform(), x2 = x * x;
    if (u < 1 - 0.0331 * x2 * x2 || std::log(u) < 0.5 * x2 + d * (1 - v + std::log(v))) return std::log(d * v);
  }
}

// Beta(alpha, alpha) = G₁ / (G₁ + G₂) = 1 / (1 + exp(log G₂ − log G₁)), written so exp never overflows.
double beta_symmetric(double alpha, StepStream& s) {
  const double g1 = log_gamma(alpha, s);
  const double t = log_gamma(alpha, s) - g1;
  if (t > 0) {
    const double e = std::exp(-t);
    return e / (1 + e);
  }
  return 1 / (1 + std::exp(t));
}

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(what); }

// The partner index on `device`. For a GPU the flip of n is uploaded once and kept: a copy from pageable
// host memory waits for the stream, and mixed_cross_entropy must not make every step wait for the device.
// The cache is never destroyed: freeing device memory during static destruction could outlive the runtime.
Tensor partner_index(const std::vector<int64_t>& partner, Device device) {
  const int64_t n = int64_t(partner.size());
  Tensor host = Tensor::from(partner, {n}, DType::i64);
  if (device == Device::CPU) return host;
  for (int64_t i = 0; i < n; ++i)
    if (partner[size_t(i)] != n - 1 - i) return host.to(device);
  static std::mutex mu;
  static auto* cache = new std::map<std::pair<Device, int64_t>, Tensor>;
  std::lock_guard<std::mutex> lock(mu);
  Tensor& t = (*cache)[{device, n}];
  if (!t.defined()) t = host.to(device);
  return t;
}

}  // namespace

void validate(const MixConfig& c) {
  auto num = [](double v) { return std::to_string(v); };
  if (!(std::isfinite(c.mixup_alpha) && c.mixup_alpha >= 0))
    bad("mix config: mixup_alpha " + num(c.mixup_alpha) + " must be finite and >= 0");
  if (!(std::isfinite(c.cutmix_alpha) && c.cutmix_alpha >= 0))
    bad("mix config: cutmix_alpha " + num(c.cutmix_alpha) + " must be finite and >= 0");
  if (!(c.prob >= 0 && c.prob <= 1)) bad("mix config: prob " + num(c.prob) + " must be in [0, 1]");
  if (!(c.switch_prob >= 0 && c.switch_prob <= 1))
    bad("mix config: switch_prob " + num(c.switch_prob) + " must be in [0, 1]");
}

bool mix_enabled(const MixConfig& c) { return c.mixup_alpha > 0 || c.cutmix_alpha > 0; }

MixDraw draw_mix(const MixConfig& cfg, int64_t n, int H, int W, uint64_t seed, uint64_t step) {
  validate(cfg);
  if (n < 1) bad("draw_mix: batch size n " + std::to_string(n) + " must be >= 1");
  if (H < 1 || W < 1) bad("draw_mix: image size H×W " + std::to_string(H) + "×" + std::to_string(W) + " must be >= 1×1");
  if (step >= kStepLimit) bad("draw_mix: step " + std::to_string(step) + " must be < 2^32");
  MixDraw d;
  d.partner.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) d.partner[size_t(i)] = n - 1 - i;
  if (!mix_enabled(cfg)) return d;
  StepStream s{mix_key(seed), step * kStepLimit};
  if (!(s.at(kApply) < cfg.prob)) return d;
  d.applied = true;
  d.cutmix = cfg.mixup_alpha > 0 && cfg.cutmix_alpha > 0 ? s.at(kMethod) < cfg.switch_prob : cfg.cutmix_alpha > 0;
  d.lambda = beta_symmetric(d.cutmix ? cfg.cutmix_alpha : cfg.mixup_alpha, s);
  if (!d.cutmix) return d;
  const double ratio = std::sqrt(1 - d.lambda);
  const int cut_h = int(double(H) * ratio), cut_w = int(double(W) * ratio);
  const int cy = std::min(int(s.at(kRow) * H), H - 1), cx = std::min(int(s.at(kColumn) * W), W - 1);
  const int y0 = std::clamp(cy - cut_h / 2, 0, H), y1 = std::clamp(cy + cut_h / 2, 0, H);
  const int x0 = std::clamp(cx - cut_w / 2, 0, W), x1 = std::clamp(cx + cut_w / 2, 0, W);
  d.top = y0, d.height = y1 - y0, d.left = x0, d.width = x1 - x0;
  d.lambda = 1 - double(d.height) * double(d.width) / (double(H) * double(W));
  return d;
}

void apply_mix(Tensor& images, const MixDraw& d) {
  if (!d.applied) return;
  if (!images.defined() || images.device() != Device::CPU || images.dtype() != DType::f32 || images.dim() != 4 ||
      !images.is_contiguous())
    bad("apply_mix: images " + (images.defined() ? images.str() : std::string("undefined")) +
        " must be a contiguous f32 [n, C, H, W] tensor on the CPU");
  const int64_t n = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  if (int64_t(d.partner.size()) != n)
    bad("apply_mix: the draw pairs " + std::to_string(d.partner.size()) + " samples, images has " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = d.partner[size_t(i)];
    if (j < 0 || j >= n || d.partner[size_t(j)] != i)
      bad("apply_mix: partner must pair the samples (partner[partner[i]] == i), fails at i = " + std::to_string(i));
  }
  if (!(d.lambda >= 0 && d.lambda <= 1)) bad("apply_mix: lambda " + std::to_string(d.lambda) + " must be in [0, 1]");
  if (d.cutmix && (d.top < 0 || d.left < 0 || d.height < 0 || d.width < 0 || d.top + d.height > H ||
                   d.left + d.width > W))
    bad("apply_mix: CutMix box (top " + std::to_string(d.top) + ", left " + std::to_string(d.left) + ", " +
        std::to_string(d.height) + "×" + std::to_string(d.width) + ") is not inside the " + std::to_string(H) + "×" +
        std::to_string(W) + " images");
  float* p = images.data<float>();
  const int64_t plane = C * H * W;
  const double lam = d.lambda;
  parallel_for(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = d.partner[size_t(i)];
      if (j < i) continue;  // each pair is mixed once, at its smaller index, from both originals
      float* a = p + i * plane;
      float* b = p + j * plane;
      if (!d.cutmix) {
        for (int64_t k = 0; k < plane; ++k) {
          const double x = a[k], y = b[k];
          a[k] = float(lam * x + (1 - lam) * y);
          b[k] = float(lam * y + (1 - lam) * x);
        }
        continue;
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = d.top; y < d.top + d.height; ++y) {
          const int64_t row = (c * H + y) * W + d.left;
          std::swap_ranges(a + row, a + row + d.width, b + row);
        }
    }
  });
}

std::optional<models::StyleMix> draw_style_mix(double prob, double alpha, int64_t n, uint64_t seed, uint64_t step) {
  if (!(prob >= 0 && prob <= 1)) bad("draw_style_mix: prob " + std::to_string(prob) + " must be in [0, 1]");
  if (!(std::isfinite(alpha) && alpha > 0)) bad("draw_style_mix: alpha " + std::to_string(alpha) + " must be finite and > 0");
  if (n < 1) bad("draw_style_mix: batch size n " + std::to_string(n) + " must be >= 1");
  if (step >= kStepLimit) bad("draw_style_mix: step " + std::to_string(step) + " must be < 2^32");
  StepStream s{style_mix_key(seed), step * kStepLimit, uint64_t(n)};
  if (!(s.at(0) < prob)) return std::nullopt;
  models::StyleMix m;
  m.partner.resize(size_t(n));
  std::iota(m.partner.begin(), m.partner.end(), int64_t(0));
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher–Yates: slot i picks j in [0, i]
    const int64_t j = std::min(int64_t(s.at(uint64_t(i)) * double(i + 1)), i);
    std::swap(m.partner[size_t(i)], m.partner[size_t(j)]);
  }
  m.lambda.resize(size_t(n));
  for (double& l : m.lambda) l = beta_symmetric(alpha, s);
  return m;
}

Tensor mixed_cross_entropy(const Tensor& logits, const Tensor& labels, const MixDraw& draw,
                           const CrossEntropyOptions& opt) {
  if (!draw.applied || draw.lambda == 1) return cross_entropy(logits, labels, opt);
  TS_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == int64_t(draw.partner.size()),
           "mixed_cross_entropy: labels " + (labels.defined() ? labels.str() : std::string("undefined")) +
               " do not match the draw's " + std::to_string(draw.partner.size()) + " samples");
  const Tensor partner_labels = index_select(labels, 0, partner_index(draw.partner, labels.device()));
  return add(mul(cross_entropy(logits, labels, opt), draw.lambda),
             mul(cross_entropy(logits, partner_labels, opt), 1 - draw.lambda));
}

}  // namespace tessera
