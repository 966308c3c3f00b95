// The scanner-like augmentations (gamma, Gaussian blur, Gaussian noise, random erasing): each op against
// an independent double-precision computation written here, their draws, their reproducibility, and that
// with every new probability 0 the pipeline is the one before them, draw for draw.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "data/augment.h"
#include "engine/core/parallel.h"
#include "engine/core/philox.h"

using namespace tessera;

namespace {

// A gray (R = G = B) test picture with every level from 0 to 255 somewhere and no symmetry.
Image gray_pattern(int w, int h, int salt = 0) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) std::fill_n(im.pixel(x, y), 3, uint8_t((x * 37 + y * 11 + x * y + salt) & 255));
  return im;
}

// A colour picture (channels differ) for the ops that treat channels separately.
Image colour_pattern(int w, int h) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.pixel(x, y);
      p[0] = uint8_t((x * 7 + y * 3) & 255);
      p[1] = uint8_t((x * x + 5 * y) & 255);
      p[2] = uint8_t((x * y + 11) & 255);
    }
  return im;
}

// Rotation 0, the full image as the crop, no flips or jitter, no resize: only the new steps change pixels.
AugmentConfig no_op_config(int w, int h) {
  AugmentConfig c;
  c.rotation_degrees = 0;
  c.crop_scale_min = c.crop_scale_max = 1;
  c.ratio_min = c.ratio_max = double(w) / h;  // w = round(sqrt(w·h · w/h)) = w: the first attempt fits
  c.p_hflip = c.p_vflip = 0;
  c.brightness = c.contrast = 0;
  c.out_width = w;
  c.out_height = h;
  return c;
}

bool gray(const Image& im) {
  for (size_t i = 0; i < im.rgb.size(); i += 3)
    if (im.rgb[i] != im.rgb[i + 1] || im.rgb[i] != im.rgb[i + 2]) return false;
  return true;
}

// Reflect-101 by repeated mirroring (the op computes it with a period instead).
int mirror(int i, int n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

}  // namespace

TEST_CASE("augment: with every new probability 0 the pipeline and its draws are the old ones") {
  const Image im = colour_pattern(60, 44);
  AugmentConfig old_cfg;  // the defaults: the new steps are off
  old_cfg.out_width = old_cfg.out_height = 32;
  AugmentConfig ranges = old_cfg;  // other ranges, still off
  ranges.gamma_log_range = 1;
  ranges.blur_sigma_min = 1, ranges.blur_sigma_max = 3;
  ranges.noise_std = 0.3;
  ranges.erase_scale_min = 0.1, ranges.erase_scale_max = 0.5;
  AugmentConfig on = old_cfg;  // all on: the old draws must not move
  on.p_gamma = on.p_blur = on.p_noise = on.p_erase = 1;
  for (uint64_t key = 0; key < 40; ++key) {
    CAPTURE(key);
    CHECK(augment(im, ranges, 3, key).rgb == augment(im, old_cfg, 3, key).rgb);
    const AugmentParams p = sample_augment_params(60, 44, old_cfg, 3, key);
    CHECK(p.gamma == 1);
    CHECK(p.blur_sigma == 0);
    CHECK(p.noise_std == 0);
    CHECK(p.erase.width == 0);
    const AugmentParams q = sample_augment_params(60, 44, on, 3, key);
    CHECK(q.angle == p.angle);
    CHECK(q.crop.left == p.crop.left);
    CHECK(q.crop.top == p.crop.top);
    CHECK(q.crop.width == p.crop.width);
    CHECK(q.crop.height == p.crop.height);
    CHECK(q.hflip == p.hflip);
    CHECK(q.vflip == p.vflip);
    CHECK(q.brightness == p.brightness);
    CHECK(q.contrast == p.contrast);
    CHECK(q.brightness_first == p.brightness_first);
  }
}

TEST_CASE("augment: gamma is round(255 (v/255)^g) per level, drawn log-uniformly") {
  const Image im = gray_pattern(16, 16);  // every level 0..255 once
  for (double g : {0.5, 0.8, 1.0, 1.3, 2.0}) {
    CAPTURE(g);
    const Image out = adjust_gamma(im, g);
    int worst = 0;
    for (size_t i = 0; i < im.rgb.size(); ++i) {
      const double want = std::round(255.0 * std::pow(double(im.rgb[i]) / 255.0, g));
      worst = std::max(worst, std::abs(int(out.rgb[i]) - int(want)));
    }
    CHECK(worst == 0);
  }
  // By hand: 255 (128/255)^2 = 64.25 → 64; 255 (64/255)^0.5 = 127.75 → 128; 0 and 255 are fixed points.
  Image three(3, 1);
  three.rgb = {128, 128, 128, 0, 0, 0, 255, 255, 255};
  CHECK(adjust_gamma(three, 2.0).rgb == std::vector<uint8_t>{64, 64, 64, 0, 0, 0, 255, 255, 255});
  three.rgb[0] = three.rgb[1] = three.rgb[2] = 64;
  CHECK(adjust_gamma(three, 0.5).rgb[0] == 128);

  // Through the pipeline: log g uniform in [−r, r], and the step is exactly adjust_gamma.
  AugmentConfig cfg = no_op_config(16, 16);
  cfg.p_gamma = 1;
  cfg.gamma_log_range = 0.4;
  double lo = 1, hi = -1, sum = 0;
  const int n = 2000;
  for (int k = 0; k < n; ++k) {
    const AugmentParams p = sample_augment_params(16, 16, cfg, 8, uint64_t(k));
    const double l = std::log(p.gamma);
    lo = std::min(lo, l), hi = std::max(hi, l), sum += l;
  }
  CHECK(lo >= -0.4);
  CHECK(hi <= 0.4);
  CHECK(lo < -0.39);  // 2000 uniform draws leave less than 0.01 / 0.8 of the range at an end w.p. ~e^−25
  CHECK(hi > 0.39);
  // Mean of U(−0.4, 0.4): 0, standard error 0.8/√12/√2000 = 0.0052; 0.03 is over 5 of them.
  CHECK(std::abs(sum / n) < 0.03);
  const AugmentParams p = sample_augment_params(16, 16, cfg, 8, 5);
  CHECK(augment(im, cfg, 8, 5).rgb == adjust_gamma(im, p.gamma).rgb);
  // p_gamma = 0.5: about half the keys (binomial sd √(2000/4) = 22; 150 is over 6 sd).
  cfg.p_gamma = 0.5;
  int applied = 0;
  for (int k = 0; k < n; ++k) applied += sample_augment_params(16, 16, cfg, 8, uint64_t(k)).gamma != 1;
  CHECK(std::abs(applied - n / 2) < 150);
}

TEST_CASE("augment: Gaussian blur equals a direct 2-D convolution with reflect-101 borders") {
  // The op runs two 1-D passes in double and rounds once; the reference sums the (2r+1)² products of the
  // 2-D kernel directly. Both are the same real number up to double rounding (< 1e-10 for sums of at most
  // 625 terms below 255), so the op's byte is the reference rounded to nearest, except within 1e-9 of a
  // tie where either neighbour is correct.
  struct Case { int w, h; double sigma; };
  for (const Case& c : {Case{23, 17, 0.7}, Case{40, 9, 1.5}, Case{3, 2, 2.0}, Case{1, 5, 1.1}, Case{12, 12, 0.1}}) {
    CAPTURE(c.w);
    CAPTURE(c.h);
    CAPTURE(c.sigma);
    const Image im = colour_pattern(c.w, c.h);
    const Image out = gaussian_blur(im, c.sigma);
    REQUIRE(out.width == c.w);
    REQUIRE(out.height == c.h);
    const int r = int(std::ceil(3 * c.sigma));
    std::vector<double> k;
    double ksum = 0;
    for (int i = -r; i <= r; ++i) k.push_back(std::exp(-double(i * i) / (2 * c.sigma * c.sigma))), ksum += k.back();
    for (double& v : k) v /= ksum;
    int bad = 0;
    for (int y = 0; y < c.h; ++y)
      for (int x = 0; x < c.w; ++x)
        for (int ch = 0; ch < 3; ++ch) {
          double want = 0;
          for (int j = -r; j <= r; ++j)
            for (int i = -r; i <= r; ++i)
              want += k[size_t(i + r)] * k[size_t(j + r)] * im.pixel(mirror(x + i, c.w), mirror(y + j, c.h))[ch];
          const int got = out.pixel(x, y)[ch];
          const bool tie = std::abs(want - std::floor(want) - 0.5) < 1e-9;
          bad += tie ? std::abs(got - want) > 0.5 + 1e-9 : got != int(std::round(want));
        }
    CHECK(bad == 0);
  }
  // A flat image stays flat (weights sum to 1), a gray one gray, and sigma must be positive.
  Image flat(9, 7);
  std::fill(flat.rgb.begin(), flat.rgb.end(), uint8_t(77));
  CHECK(gaussian_blur(flat, 1.7).rgb == flat.rgb);
  CHECK(gray(gaussian_blur(gray_pattern(20, 20), 1.3)));
  CHECK_THROWS_AS(gaussian_blur(flat, 0), std::invalid_argument);

  // Through the pipeline: sigma uniform in [min, max] and the step is exactly gaussian_blur.
  AugmentConfig cfg = no_op_config(20, 20);
  cfg.p_blur = 1;
  cfg.blur_sigma_min = 0.5, cfg.blur_sigma_max = 1.5;
  for (uint64_t key = 0; key < 50; ++key) {
    const AugmentParams p = sample_augment_params(20, 20, cfg, 2, key);
    REQUIRE(p.blur_sigma >= 0.5);
    REQUIRE(p.blur_sigma <= 1.5);
  }
  const Image g = gray_pattern(20, 20);
  CHECK(augment(g, cfg, 2, 9).rgb == gaussian_blur(g, sample_augment_params(20, 20, cfg, 2, 9).blur_sigma).rgb);
}

TEST_CASE("augment: Gaussian noise - reproducible, gray stays gray, sample mean and std") {
  const int w = 256, h = 256;
  Image mid(w, h);
  std::fill(mid.rgb.begin(), mid.rgb.end(), uint8_t(128));
  AugmentConfig cfg = no_op_config(w, h);
  cfg.p_noise = 1;
  cfg.noise_std = 0.02;  // sigma = 5.1 levels: 128 ± 5.5 sigma stays inside [0, 255], nothing clips
  const Image a = augment(mid, cfg, 17, 4);
  CHECK(augment(mid, cfg, 17, 4).rgb == a.rgb);
  CHECK(augment(mid, cfg, 17, 5).rgb != a.rgb);
  CHECK(augment(mid, cfg, 18, 4).rgb != a.rgb);
  CHECK(gray(a));
  const AugmentParams p = sample_augment_params(w, h, cfg, 17, 4);
  CHECK(p.noise_std == 0.02);
  CHECK(a.rgb == add_gaussian_noise(mid, 0.02, p.noise_seed).rgb);

  // The added noise d = round(n), n ~ N(0, s²), s = 0.02 · 255. Rounding adds an error nearly uniform on
  // [−1/2, 1/2] and nearly independent of n (s >> 1), so Var d = s² + 1/12 (Sheppard's correction). Over
  // N = 65536 pixels the sample mean has standard error sqrt(s² + 1/12)/√N = 0.020 and the sample standard
  // deviation sqrt(s² + 1/12)/√(2N) = 0.014 (normal data); the bounds are 5 standard errors.
  const double s = 0.02 * 255, n = double(w) * h, sd_d = std::sqrt(s * s + 1.0 / 12);
  double sum = 0, sum2 = 0;
  int lo = 255, hi = 0;
  for (size_t i = 0; i < a.rgb.size(); i += 3) {
    const double d = double(a.rgb[i]) - 128;
    sum += d, sum2 += d * d;
    lo = std::min(lo, int(a.rgb[i])), hi = std::max(hi, int(a.rgb[i]));
  }
  const double mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
  MESSAGE("noise: mean " << mean << ", sd " << sd << " (expected " << sd_d << "), range " << lo << ".." << hi);
  CHECK(lo > 0);  // no clipping, or the moments above would be biased
  CHECK(hi < 255);
  CHECK(std::abs(mean) <= 5 * sd_d / std::sqrt(n));
  CHECK(std::abs(sd - sd_d) <= 5 * sd_d / std::sqrt(2 * n));

  // Per pixel on a varied picture with clipping at both ends: clamp(round(v + 255 std · normal_i)).
  const Image col = colour_pattern(31, 29);
  const uint64_t stream = 0x1234567890abcdefull;
  const Image out = add_gaussian_noise(col, 0.3, stream);  // sigma 76 levels: many values clip
  int bad = 0, clipped = 0;
  for (size_t i = 0; i < size_t(31 * 29); ++i)
    for (size_t c = 0; c < 3; ++c) {
      const double v = double(col.rgb[3 * i + c]) + 0.3 * 255 * philox::normal(stream, i);
      const double want = std::min(255.0, std::max(0.0, std::round(v)));
      bad += out.rgb[3 * i + c] != int(want);
      clipped += v < 0 || v > 255;
    }
  CHECK(bad == 0);
  CHECK(clipped > 100);
}

TEST_CASE("augment: random erasing - box area and aspect in range, filled gray, outside untouched") {
  const int w = 256, h = 256;
  const Image im = gray_pattern(w, h, 5);
  AugmentConfig cfg = no_op_config(w, h);
  cfg.p_erase = 1;
  int erased = 0;
  for (uint64_t key = 0; key < 60; ++key) {
    CAPTURE(key);
    const AugmentParams p = sample_augment_params(w, h, cfg, 23, key);
    const CropBox b = p.erase;
    REQUIRE(b.width > 0);  // on 256×256 the first attempt with h, w < 256 fits
    REQUIRE(b.height > 0);
    REQUIRE(b.left >= 0);
    REQUIRE(b.top >= 0);
    REQUIRE(b.left + b.width <= w);
    REQUIRE(b.top + b.height <= h);
    // h and w are the exact sqrt(area · aspect), sqrt(area / aspect) rounded, so each is within 1/2 of it:
    // the exact area share and aspect h/w lie in [min, max], hence these bounds on the rounded box.
    CHECK((b.width + 0.5) * (b.height + 0.5) >= 0.02 * w * h);
    CHECK((b.width - 0.5) * (b.height - 0.5) <= 0.33 * w * h);
    CHECK((b.height + 0.5) / (b.width - 0.5) >= 0.3);
    CHECK((b.height - 0.5) / (b.width + 0.5) <= 3.3);
    const Image out = augment(im, cfg, 23, key);
    CHECK(out.rgb == erase(im, b, p.erase_seed).rgb);
    int outside = 0, fill_bad = 0;
    std::set<int> levels;
    uint64_t i = 0;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const bool in = x >= b.left && x < b.left + b.width && y >= b.top && y < b.top + b.height;
        if (!in) {
          outside += !std::equal(out.pixel(x, y), out.pixel(x, y) + 3, im.pixel(x, y));
          continue;
        }
        // Box pixels in row-major order are stream elements 0, 1, 2, ...: floor(256 u), R = G = B.
        const int want = int(std::floor(256.0 * philox::uniform(p.erase_seed, i++)));
        const uint8_t* q = out.pixel(x, y);
        fill_bad += q[0] != want || q[1] != want || q[2] != want;
        levels.insert(q[0]);
      }
    CHECK(outside == 0);
    CHECK(fill_bad == 0);
    // About 0.02 · 65536 = 1310 or more uniform levels: fewer than 200 distinct of 256 means some 57 levels
    // all missed, probability below C(256, 57) (199/256)^1310 < e^−150 (a union bound).
    CHECK(levels.size() >= 200);
    ++erased;
  }
  CHECK(erased == 60);

  // Every attempt fails when the box would be the whole image (h or w reaches the side): no erasing.
  AugmentConfig whole = cfg;
  whole.erase_scale_min = whole.erase_scale_max = 1;
  const AugmentParams p = sample_augment_params(w, h, whole, 23, 0);
  CHECK(p.erase.width == 0);
  CHECK(augment(im, whole, 23, 0).rgb == im.rgb);
  // A box as tall as the image is refused too (h < height, strictly): on 400×4 with area share 0.03 (48 px)
  // every attempt has h = round(sqrt(48 · aspect)) >= round(sqrt(48 · 0.3)) = round(3.79) = 4.
  AugmentConfig strip = no_op_config(400, 4);
  strip.p_erase = 1;
  strip.erase_scale_min = strip.erase_scale_max = 0.03;
  for (uint64_t key = 0; key < 20; ++key) CHECK(sample_augment_params(400, 4, strip, 23, key).erase.width == 0);
  // The box is drawn for the pipeline's output size (after the crop and resize).
  AugmentConfig small = cfg;
  small.out_width = 40, small.out_height = 30;
  for (uint64_t key = 0; key < 30; ++key) {
    const CropBox b = sample_augment_params(w, h, small, 23, key).erase;
    CHECK(b.left + b.width <= 40);
    CHECK(b.top + b.height <= 30);
  }
  CHECK_THROWS_AS(erase(im, CropBox{250, 0, 10, 10}, 1), std::invalid_argument);
}

TEST_CASE("augment: all steps together - order, reproducibility per (seed, key), any call order") {
  const Image im = gray_pattern(48, 40);
  AugmentConfig cfg;
  cfg.out_width = cfg.out_height = 32;
  cfg.p_gamma = cfg.p_blur = cfg.p_noise = cfg.p_erase = 1;
  // The new steps run after the old pipeline, in the order gamma, blur, noise, erase.
  AugmentConfig old_cfg = cfg;
  old_cfg.p_gamma = old_cfg.p_blur = old_cfg.p_noise = old_cfg.p_erase = 0;
  const AugmentParams p = sample_augment_params(48, 40, cfg, 6, 11);
  Image want = augment(im, old_cfg, 6, 11);
  want = erase(add_gaussian_noise(gaussian_blur(adjust_gamma(want, p.gamma), p.blur_sigma), p.noise_std,
                                  p.noise_seed),
               p.erase, p.erase_seed);
  CHECK(augment(im, cfg, 6, 11).rgb == want.rgb);
  CHECK(gray(want));

  const int n = 24;
  std::vector<Image> serial(n), parallel(n);
  for (int i = n - 1; i >= 0; --i) serial[size_t(i)] = augment(im, cfg, 5, uint64_t(i));
  parallel_for(n, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) parallel[size_t(i)] = augment(im, cfg, 5, uint64_t(i));
  });
  for (int i = 0; i < n; ++i) CHECK(serial[size_t(i)].rgb == parallel[size_t(i)].rgb);
  CHECK(serial[0].rgb != serial[1].rgb);
  // The per-pixel streams differ between keys and between the two uses.
  const AugmentParams q = sample_augment_params(48, 40, cfg, 5, 0), r = sample_augment_params(48, 40, cfg, 5, 1);
  CHECK(q.noise_seed != r.noise_seed);
  CHECK(q.erase_seed != r.erase_seed);
  CHECK(q.noise_seed != q.erase_seed);
}

TEST_CASE("augment: invalid settings of the new steps are refused, naming the field") {
  auto bad = [](auto edit, const std::string& field) {
    AugmentConfig c;
    edit(c);
    CAPTURE(field);
    try {
      validate(c);
      FAIL("expected std::invalid_argument");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(field) != std::string::npos);
    }
  };
  bad([](AugmentConfig& c) { c.p_gamma = -0.1; }, "p_gamma");
  bad([](AugmentConfig& c) { c.p_blur = 1.5; }, "p_blur");
  bad([](AugmentConfig& c) { c.p_noise = std::nan(""); }, "p_noise");
  bad([](AugmentConfig& c) { c.p_erase = 2; }, "p_erase");
  bad([](AugmentConfig& c) { c.gamma_log_range = -0.2; }, "gamma_log_range");
  bad([](AugmentConfig& c) { c.blur_sigma_min = 0; }, "blur_sigma_min");
  bad([](AugmentConfig& c) { c.blur_sigma_min = 2, c.blur_sigma_max = 1; }, "blur_sigma_max");
  bad([](AugmentConfig& c) { c.noise_std = -0.01; }, "noise_std");
  bad([](AugmentConfig& c) { c.erase_scale_min = 0; }, "erase_scale_min");
  bad([](AugmentConfig& c) { c.erase_scale_min = 0.5, c.erase_scale_max = 0.4; }, "erase_scale_max");
  bad([](AugmentConfig& c) { c.erase_scale_max = 1.5; }, "erase_scale_max");
  AugmentConfig on;
  on.p_gamma = on.p_blur = on.p_noise = on.p_erase = 1;
  CHECK_NOTHROW(validate(on));
}
