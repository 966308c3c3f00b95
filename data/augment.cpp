#include "data/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/core/philox.h"

namespace tessera {

namespace {

constexpr uint64_t kSlots = 64;  // draws reserved per key (45 used)
constexpr uint64_t kAngle = 0, kCrop = 1, kHflip = 41, kVflip = 42, kBright = 43, kContrast = 44, kOrder = 45;

double draw(uint64_t seed, uint64_t key, uint64_t slot) { return philox::uniform(seed, key * kSlots + slot); }
double uniform(double lo, double hi, double u) { return lo + (hi - lo) * u; }
// torch.randint(lo, hi) from one uniform: an integer in [lo, hi).
int randint(int lo, int hi, double u) { return std::min(hi - 1, lo + int(u * double(hi - lo))); }
// Python's round(): half to even (the default floating-point rounding mode).
int py_round(double x) { return int(std::nearbyint(x)); }

uint8_t clip_trunc(float v) { return v <= 0.f ? 0 : (v >= 255.f ? 255 : uint8_t(v)); }

// PIL's ImagingBlend(degenerate, image, factor) with a constant degenerate value d: float arithmetic,
// truncated and clipped, as libImaging/Blend.c.
Image blend_constant(const Image& image, uint8_t d, double factor) {
  Image out = image;
  const float alpha = float(factor);
  for (auto& v : out.rgb) v = clip_trunc(float(int(d)) + alpha * float(int(v) - int(d)));
  return out;
}

}  // namespace

void validate(const AugmentConfig& c) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("augment config: " + what); };
  if (!(c.rotation_degrees >= 0)) bad("rotation_degrees must be >= 0");
  if (!(c.crop_scale_min > 0 && c.crop_scale_min <= c.crop_scale_max && c.crop_scale_max <= 1))
    bad("crop scale must satisfy 0 < min <= max <= 1");
  if (!(c.ratio_min > 0 && c.ratio_min <= c.ratio_max)) bad("crop ratio must satisfy 0 < min <= max");
  if (!(c.p_hflip >= 0 && c.p_hflip <= 1 && c.p_vflip >= 0 && c.p_vflip <= 1))
    bad("flip probabilities must be in [0, 1]");
  if (!(c.brightness >= 0 && c.contrast >= 0)) bad("brightness and contrast must be >= 0");
}

CropBox random_resized_crop_box(int width, int height, const AugmentConfig& cfg, uint64_t seed, uint64_t key) {
  const double area = double(width) * double(height);
  const double log_lo = std::log(cfg.ratio_min), log_hi = std::log(cfg.ratio_max);
  for (uint64_t attempt = 0; attempt < 10; ++attempt) {
    const uint64_t s = kCrop + 4 * attempt;
    double target = area * uniform(cfg.crop_scale_min, cfg.crop_scale_max, draw(seed, key, s));
    double ratio = std::exp(uniform(log_lo, log_hi, draw(seed, key, s + 1)));
    int w = py_round(std::sqrt(target * ratio)), h = py_round(std::sqrt(target / ratio));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      int top = randint(0, height - h + 1, draw(seed, key, s + 2));
      int left = randint(0, width - w + 1, draw(seed, key, s + 3));
      return CropBox{left, top, w, h};
    }
  }
  // Fallback: the whole image, or its center cut to the nearest allowed ratio.
  const double in_ratio = double(width) / double(height);
  int w = width, h = height;
  if (in_ratio < cfg.ratio_min) {
    h = py_round(double(w) / cfg.ratio_min);
  } else if (in_ratio > cfg.ratio_max) {
    w = py_round(double(h) * cfg.ratio_max);
  }
  return CropBox{(width - w) / 2, (height - h) / 2, w, h};
}

AugmentParams sample_augment_params(int width, int height, const AugmentConfig& cfg, uint64_t seed,
                                    uint64_t key) {
  validate(cfg);
  AugmentParams p;
  p.angle = uniform(-cfg.rotation_degrees, cfg.rotation_degrees, draw(seed, key, kAngle));
  p.crop = random_resized_crop_box(width, height, cfg, seed, key);
  p.hflip = draw(seed, key, kHflip) < cfg.p_hflip;
  p.vflip = draw(seed, key, kVflip) < cfg.p_vflip;
  p.brightness = uniform(std::max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, draw(seed, key, kBright));
  p.contrast = uniform(std::max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, draw(seed, key, kContrast));
  p.brightness_first = draw(seed, key, kOrder) < 0.5;
  return p;
}

Image rotate(const Image& image, double degrees) {
  // PIL Image.rotate: the inverse affine matrix (coefficients rounded to 15 decimals, as PIL does) maps an
  // output pixel centre to input coordinates x_in = a0 x + a1 y + a2, y_in = a3 x + a4 y + a5; nearest
  // neighbour; outside is filled with 0. libImaging/Geometry.c (ImagingTransformAffine) steps through the
  // image in 16.16 fixed point whenever the corners fit (every image below 32768 px); its rounding differs
  // from floating point by a pixel here and there, so both paths are reproduced.
  const double rad = -degrees * 3.14159265358979323846 / 180.0;
  auto r15 = [](double v) { return std::round(v * 1e15) / 1e15; };
  double a[6] = {r15(std::cos(rad)), r15(std::sin(rad)), 0, r15(-std::sin(rad)), r15(std::cos(rad)), 0};
  const double cx = image.width / 2.0, cy = image.height / 2.0;
  a[2] = a[0] * -cx + a[1] * -cy + cx;
  a[5] = a[3] * -cx + a[4] * -cy + cy;
  const int w = image.width, h = image.height;
  Image out(w, h);
  auto put = [&](int x, int y, int64_t xi, int64_t yi) {
    if (xi >= 0 && xi < w && yi >= 0 && yi < h) std::copy_n(image.pixel(int(xi), int(yi)), 3, out.pixel(x, y));
  };
  auto fits = [&](int x, int y) {
    return std::fabs(x * a[0] + y * a[1] + a[2]) < 32768.0 && std::fabs(x * a[3] + y * a[4] + a[5]) < 32768.0;
  };
  if (fits(0, 0) && fits(w, h) && fits(0, h) && fits(w, 0)) {
    auto fix = [](double v) { return int64_t(std::floor(v * 65536.0 + 0.5)); };  // PIL's FIX (FLOOR)
    const int64_t a0 = fix(a[0]), a1 = fix(a[1]), a3 = fix(a[3]), a4 = fix(a[4]);
    int64_t a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5), a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
    for (int y = 0; y < h; ++y, a2 += a1, a5 += a4) {
      int64_t xx = a2, yy = a5;
      for (int x = 0; x < w; ++x, xx += a0, yy += a3) put(x, y, xx >> 16, yy >> 16);  // >> floors
    }
  } else {
    double xo = a[2] + a[1] * 0.5 + a[0] * 0.5, yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    auto coord = [](double v) { return v < 0.0 ? int64_t(-1) : int64_t(v); };  // libImaging's COORD
    for (int y = 0; y < h; ++y, xo += a[1], yo += a[4]) {
      double xx = xo, yy = yo;
      for (int x = 0; x < w; ++x, xx += a[0], yy += a[3]) put(x, y, coord(xx), coord(yy));
    }
  }
  return out;
}

Image flip_horizontal(const Image& image) {
  Image out(image.width, image.height);
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x) std::copy_n(image.pixel(image.width - 1 - x, y), 3, out.pixel(x, y));
  return out;
}

Image flip_vertical(const Image& image) {
  Image out(image.width, image.height);
  const size_t row = size_t(image.width) * 3;
  for (int y = 0; y < image.height; ++y) std::copy_n(image.pixel(0, image.height - 1 - y), row, out.pixel(0, y));
  return out;
}

Image adjust_brightness(const Image& image, double factor) { return blend_constant(image, 0, factor); }

Image adjust_contrast(const Image& image, double factor) {
  // ImageEnhance.Contrast: mean of the "L" conversion, int(mean + 0.5).
  double sum = 0;
  const size_t n = size_t(image.width) * size_t(image.height);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = image.rgb.data() + 3 * i;
    sum += double((uint32_t(p[0]) * 19595 + uint32_t(p[1]) * 38470 + uint32_t(p[2]) * 7471 + 0x8000) >> 16);
  }
  const int mean = n ? int(sum / double(n) + 0.5) : 0;
  return blend_constant(image, uint8_t(std::clamp(mean, 0, 255)), factor);
}

Image apply_augment(const Image& image, const AugmentParams& p, const AugmentConfig& cfg) {
  Image out = p.angle == 0 ? image : rotate(image, p.angle);  // PIL returns a copy for angle 0 too
  const CropBox& b = p.crop;
  if (b.left != 0 || b.top != 0 || b.width != out.width || b.height != out.height)
    out = crop(out, b.left, b.top, b.width, b.height);
  if (cfg.out_width > 0 && cfg.out_height > 0 && (out.width != cfg.out_width || out.height != cfg.out_height))
    out = resize(out, cfg.out_width, cfg.out_height, Filter::Bilinear);
  if (p.hflip) out = flip_horizontal(out);
  if (p.vflip) out = flip_vertical(out);
  // A factor of exactly 1 is the identity in PIL's blend too (trunc(v) = v); skipping saves a pass.
  auto bright = [&] { if (p.brightness != 1) out = adjust_brightness(out, p.brightness); };
  auto contr = [&] { if (p.contrast != 1) out = adjust_contrast(out, p.contrast); };
  if (p.brightness_first) bright(), contr();
  else contr(), bright();
  return out;
}

Image augment(const Image& image, const AugmentConfig& cfg, uint64_t seed, uint64_t key) {
  if (!cfg.enabled) return image;
  return apply_augment(image, sample_augment_params(image.width, image.height, cfg, seed, key), cfg);
}

}  // namespace tessera
