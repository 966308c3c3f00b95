#include "data/augment.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/philox.h"

namespace tessera {

namespace {

constexpr uint64_t kSlots = 64;  // draws reserved per key (55 used; the table is in augment.h)
constexpr uint64_t kAngle = 0, kCrop = 1, kHflip = 41, kVflip = 42, kBright = 43, kContrast = 44, kOrder = 45;
constexpr uint64_t kGammaCoin = 46, kGamma = 47, kBlurCoin = 48, kBlurSigma = 49, kNoiseCoin = 50,
                   kNoiseStream = 51, kEraseCoin = 52, kEraseBoxStream = 53, kEraseFillStream = 54;

double draw(uint64_t seed, uint64_t key, uint64_t slot) { return philox::uniform(seed, key * kSlots + slot); }
// A slot's 64 raw bits, the seed of a per-pixel stream.
uint64_t stream_seed(uint64_t seed, uint64_t key, uint64_t slot) {
  const philox::U4 r = philox::philox4x32_10(seed, key * kSlots + slot);
  return (uint64_t(r.x) << 32) | r.y;
}
double uniform(double lo, double hi, double u) { return lo + (hi - lo) * u; }
// torch.randint(lo, hi) from one uniform: an integer in [lo, hi).
int randint(int lo, int hi, double u) { return std::min(hi - 1, lo + int(u * double(hi - lo))); }
// Python's round(): half to even (the default floating-point rounding mode).
int py_round(double x) { return int(std::nearbyint(x)); }

uint8_t clip_trunc(float v) { return v <= 0.f ? 0 : (v >= 255.f ? 255 : uint8_t(v)); }
uint8_t clip_round(double v) { return uint8_t(std::clamp(std::round(v), 0.0, 255.0)); }

// Reflect-101 index into [0, n): … 2 1 | 0 1 … n−1 | n−2 …, periodic for offsets beyond one reflection.
int reflect101(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * n - 2;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

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
  for (auto [p, name] : {std::pair{c.p_gamma, "p_gamma"}, {c.p_blur, "p_blur"}, {c.p_noise, "p_noise"},
                         {c.p_erase, "p_erase"}})
    if (!(p >= 0 && p <= 1)) bad(std::string(name) + " must be in [0, 1]");
  if (!(c.gamma_log_range >= 0 && std::isfinite(c.gamma_log_range))) bad("gamma_log_range must be >= 0");
  if (!(c.blur_sigma_min > 0 && c.blur_sigma_min <= c.blur_sigma_max && std::isfinite(c.blur_sigma_max)))
    bad("blur sigma must satisfy 0 < blur_sigma_min <= blur_sigma_max");
  if (!(c.noise_std >= 0 && std::isfinite(c.noise_std))) bad("noise_std must be >= 0");
  if (!(c.erase_scale_min > 0 && c.erase_scale_min <= c.erase_scale_max && c.erase_scale_max <= 1))
    bad("erase scale must satisfy 0 < erase_scale_min <= erase_scale_max <= 1");
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

CropBox random_erasing_box(int width, int height, const AugmentConfig& cfg, uint64_t stream) {
  const double area = double(width) * double(height);
  const double log_lo = std::log(0.3), log_hi = std::log(3.3);
  for (uint64_t attempt = 0; attempt < 10; ++attempt) {
    auto u = [&](uint64_t k) { return philox::uniform(stream, 4 * attempt + k); };
    const double target = area * uniform(cfg.erase_scale_min, cfg.erase_scale_max, u(0));
    const double aspect = std::exp(uniform(log_lo, log_hi, u(1)));  // h / w
    const int h = py_round(std::sqrt(target * aspect)), w = py_round(std::sqrt(target / aspect));
    if (h < height && w < width)
      return CropBox{randint(0, width - w + 1, u(3)), randint(0, height - h + 1, u(2)), w, h};
  }
  return CropBox{};
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
  if (draw(seed, key, kGammaCoin) < cfg.p_gamma)
    p.gamma = std::exp(uniform(-cfg.gamma_log_range, cfg.gamma_log_range, draw(seed, key, kGamma)));
  if (draw(seed, key, kBlurCoin) < cfg.p_blur)
    p.blur_sigma = uniform(cfg.blur_sigma_min, cfg.blur_sigma_max, draw(seed, key, kBlurSigma));
  if (draw(seed, key, kNoiseCoin) < cfg.p_noise) {
    p.noise_std = cfg.noise_std;
    p.noise_seed = stream_seed(seed, key, kNoiseStream);
  }
  if (draw(seed, key, kEraseCoin) < cfg.p_erase) {
    const bool resized = cfg.out_width > 0 && cfg.out_height > 0;
    p.erase = random_erasing_box(resized ? cfg.out_width : p.crop.width, resized ? cfg.out_height : p.crop.height,
                                 cfg, stream_seed(seed, key, kEraseBoxStream));
    p.erase_seed = stream_seed(seed, key, kEraseFillStream);
  }
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

Image adjust_gamma(const Image& image, double gamma) {
  uint8_t lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = clip_round(255.0 * std::pow(v / 255.0, gamma));
  Image out = image;
  for (auto& v : out.rgb) v = lut[v];
  return out;
}

Image gaussian_blur(const Image& image, double sigma) {
  if (!(sigma > 0)) throw std::invalid_argument("gaussian_blur: sigma must be > 0");
  const int r = int(std::ceil(3 * sigma)), w = image.width, h = image.height;
  std::vector<double> k(size_t(2 * r + 1));
  double sum = 0;
  for (int i = -r; i <= r; ++i) sum += k[size_t(i + r)] = std::exp(-double(i) * i / (2 * sigma * sigma));
  for (double& v : k) v /= sum;
  // Source index of tap i for output position p, reflected once per axis rather than once per tap.
  auto taps = [&](int n) {
    std::vector<int> t(size_t(n + 2 * r));
    for (int p = -r; p < n + r; ++p) t[size_t(p + r)] = reflect101(p, n);
    return t;
  };
  const std::vector<int> tx = taps(w), ty = taps(h);
  std::vector<double> rows(image.rgb.size());  // the horizontal pass, unrounded
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int i = 0; i <= 2 * r; ++i) acc += k[size_t(i)] * image.pixel(tx[size_t(x + i)], y)[c];
        rows[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c)] = acc;
      }
  Image out(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int i = 0; i <= 2 * r; ++i)
          acc += k[size_t(i)] * rows[(size_t(ty[size_t(y + i)]) * size_t(w) + size_t(x)) * 3 + size_t(c)];
        out.pixel(x, y)[c] = clip_round(acc);
      }
  return out;
}

Image add_gaussian_noise(const Image& image, double std, uint64_t stream) {
  Image out = image;
  const size_t n = size_t(image.width) * size_t(image.height);
  for (size_t i = 0; i < n; ++i) {
    const double d = std * 255.0 * philox::normal(stream, i);
    for (size_t c = 0; c < 3; ++c) out.rgb[3 * i + c] = clip_round(double(image.rgb[3 * i + c]) + d);
  }
  return out;
}

Image erase(const Image& image, const CropBox& b, uint64_t stream) {
  if (b.left < 0 || b.top < 0 || b.width < 0 || b.height < 0 || b.left + b.width > image.width ||
      b.top + b.height > image.height)
    throw std::invalid_argument("erase: box outside the image");
  Image out = image;
  uint64_t i = 0;
  for (int y = b.top; y < b.top + b.height; ++y)
    for (int x = b.left; x < b.left + b.width; ++x, ++i)
      std::fill_n(out.pixel(x, y), 3, uint8_t(std::min(255.0, std::floor(256.0 * philox::uniform(stream, i)))));
  return out;
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
  if (p.gamma != 1) out = adjust_gamma(out, p.gamma);
  if (p.blur_sigma > 0) out = gaussian_blur(out, p.blur_sigma);
  if (p.noise_std > 0) out = add_gaussian_noise(out, p.noise_std, p.noise_seed);
  if (p.erase.width > 0 && p.erase.height > 0) out = erase(out, p.erase, p.erase_seed);
  return out;
}

Image augment(const Image& image, const AugmentConfig& cfg, uint64_t seed, uint64_t key) {
  if (!cfg.enabled) return image;
  return apply_augment(image, sample_augment_params(image.width, image.height, cfg, seed, key), cfg);
}

}  // namespace tessera
