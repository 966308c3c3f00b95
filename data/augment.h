// Online training augmentation, seeded so that it is reproducible and fresh every epoch.
//
// Every random number of one augmentation is philox::uniform(seed, key · 64 + slot) with a fixed slot per
// draw (see AugmentParams), so the result depends only on (seed, key) — never on which worker thread runs it
// or in which order. Use key = epoch · N + sample_index for a new augmentation of each sample each epoch.
// Keys must stay below 2^58 (key · 64 must not wrap).
//
// The pipeline follows torchvision's transforms on PIL images (what the study's notebook used), in the
// study's order:
//   1. RandomRotation(±rotation_degrees): angle uniform in [−d, d], counter-clockwise for positive angles,
//      about the image center, same canvas, nearest neighbour, fill 0 — PIL's Image.rotate arithmetic,
//      bit-exact (libImaging's 16.16 fixed-point affine stepping).
//   2. RandomResizedCrop(out_height × out_width, scale, ratio): torchvision's get_params (10 attempts of
//      area·U(scale) and exp(U(log ratio)), w/h rounded half to even like Python's round, a uniform
//      position; else the center crop with the ratio clamped), then Pillow-exact bilinear resize
//      (data/image.h). out_width/out_height <= 0 keeps the crop's own size.
//   3. RandomHorizontalFlip(p_hflip), RandomVerticalFlip(p_vflip).
//   4. ColorJitter(brightness, contrast) in a random order as torchvision's ColorJitter does. PIL's
//      ImageEnhance arithmetic: brightness out = trunc(f·v) clipped to [0, 255]; contrast blends with the
//      rounded mean m of the grayscale image (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, Pillow's
//      conversion): out = trunc(m + f·(v − m)) clipped. Factors uniform in [max(0, 1 − b), 1 + b].
// Then, to imitate another scanner (each off by default, i.e. probability 0; when off its draws are unused
// and the result is the pipeline above exactly), on the 8-bit output image in this order:
//   5. Gamma (p_gamma): out = round(255 · (v/255)^g), log g uniform in [−gamma_log_range, gamma_log_range].
//   6. Gaussian blur (p_blur): sigma uniform in [blur_sigma_min, blur_sigma_max] pixels; separable kernel
//      exp(−x²/2σ²)/sum over |x| <= ceil(3σ); reflect-101 borders (…2 1 | 0 1 2 … n−1 | n−2 …, OpenCV's
//      default); both passes in double, rounded to nearest once.
//   7. Gaussian noise (p_noise): n ~ N(0, (noise_std · 255)²) per pixel, the same n added to R, G and B (a
//      gray image stays gray), round(v + n) clipped to [0, 255].
//   8. Random erasing (p_erase; RandomErasing of Zhong et al. 2017 as torchvision draws its box): up to 10
//      attempts of area share U(erase_scale_min, erase_scale_max) and aspect h/w = exp(U(log 0.3,
//      log 3.3)), h = round(sqrt(area · aspect)), w = round(sqrt(area / aspect)) (half to even), accepted
//      when h < height and w < width, then a uniform position; no erasing when every attempt fails. The box
//      is filled with per-pixel uniform gray levels (R = G = B, each level 0..255 equally likely).
// Per-pixel random numbers come from their own Philox streams: one draw of the slot table (below) gives 64
// bits, used as the seed of a Philox stream whose element i serves pixel i, so they too depend only on
// (seed, key) and never collide with the slot counters.
// The model's preprocessing (data/preprocess.h) runs afterwards, by the caller; validation and test images
// are not augmented. To reproduce the study exactly, resize to 224×224 first (the notebook did).
#pragma once
#include <cstdint>

#include "data/image.h"

namespace tessera {

struct AugmentConfig {
  double rotation_degrees = 15;
  double crop_scale_min = 0.8, crop_scale_max = 1.0, ratio_min = 3 / 4., ratio_max = 4 / 3.;
  double p_hflip = 0.5, p_vflip = 0.5;
  double brightness = 0.2, contrast = 0.2;
  int out_width = 224, out_height = 224;  // RandomResizedCrop's output size; <= 0: no resize
  // Scanner-like intensity and occlusion augmentations (steps 5–8), each applied with its probability.
  double p_gamma = 0, gamma_log_range = 0.4;           // g in [e^−0.4, e^0.4] = [0.67, 1.49]
  double p_blur = 0, blur_sigma_min = 0.1, blur_sigma_max = 2.0;  // pixels
  double p_noise = 0, noise_std = 0.02;                // fraction of 255
  double p_erase = 0, erase_scale_min = 0.02, erase_scale_max = 0.33;  // share of the image area
  bool enabled = true;                    // false: augment() returns the image unchanged
};

// Throws std::invalid_argument naming the bad field (negative degrees, scale outside (0, 1], ratio <= 0 or
// min > max, probabilities outside [0, 1], negative jitter, gamma_log_range < 0, blur sigmas not
// 0 < min <= max, noise_std < 0, erase scale not 0 < min <= max <= 1; non-finite values too).
void validate(const AugmentConfig& cfg);

struct CropBox {
  int left = 0, top = 0, width = 0, height = 0;
};

// The random draws of one augmentation, decided before any pixel is touched (for tests and logging).
struct AugmentParams {
  double angle = 0;  // degrees, counter-clockwise
  CropBox crop;
  bool hflip = false, vflip = false;
  double brightness = 1, contrast = 1;  // factors
  bool brightness_first = true;
  double gamma = 1;       // 1: no gamma step
  double blur_sigma = 0;  // 0: no blur
  double noise_std = 0;   // fraction of 255; 0: no noise
  uint64_t noise_seed = 0;
  CropBox erase;          // in the output image; width or height 0: no erasing
  uint64_t erase_seed = 0;
};

// Draws the parameters for an image of width × height (the erase box for the image apply_augment produces
// before step 5: out_width × out_height, or the crop's size without a resize). Slots of
// philox::uniform(seed, key · 64 + slot):
//    0 angle             1..40 crop (4 per attempt: scale, log ratio, top, left)
//   41 hflip            42 vflip            43 brightness        44 contrast        45 jitter order
//   46 gamma coin       47 log gamma        48 blur coin         49 blur sigma
//   50 noise coin       51 noise stream     52 erase coin        53 erase box stream
//   54 erase fill stream                    55..63 free
// A coin applies its step when below the step's probability. A stream slot's Philox output (x << 32 | y)
// seeds a stream read with philox::uniform / philox::normal(stream, i): the noise stream's element i is the
// standard normal of pixel i (row-major); the erase box stream's elements 4a..4a+3 are attempt a's area
// share, log aspect, top, left; the erase fill stream's element i is the gray of box pixel i (row-major).
AugmentParams sample_augment_params(int width, int height, const AugmentConfig& cfg, uint64_t seed,
                                    uint64_t key);
// torchvision's RandomResizedCrop.get_params alone, from the same slots.
CropBox random_resized_crop_box(int width, int height, const AugmentConfig& cfg, uint64_t seed, uint64_t key);

// The individual operations (deterministic given their parameters).
Image rotate(const Image& image, double degrees);  // PIL Image.rotate(deg, NEAREST, fillcolor=0)
Image flip_horizontal(const Image& image);
Image flip_vertical(const Image& image);
Image adjust_brightness(const Image& image, double factor);
Image adjust_contrast(const Image& image, double factor);
Image adjust_gamma(const Image& image, double gamma);    // step 5 (via a 256-entry table)
Image gaussian_blur(const Image& image, double sigma);   // step 6; sigma > 0
// Step 7: std is a fraction of 255; stream seeds the per-pixel normals (element i: pixel i, row-major).
Image add_gaussian_noise(const Image& image, double std, uint64_t stream);
// Step 8: the box (inside the image) filled with gray floor(256 · philox::uniform(stream, i)) for its
// pixel i, row-major.
Image erase(const Image& image, const CropBox& box, uint64_t stream);
// torchvision's RandomErasing.get_params for a width × height image from the erase box stream (the scale
// from cfg, aspect in [0.3, 3.3]); a zero-size box when all 10 attempts fail.
CropBox random_erasing_box(int width, int height, const AugmentConfig& cfg, uint64_t stream);

// Applies given parameters with cfg's output size.
Image apply_augment(const Image& image, const AugmentParams& p, const AugmentConfig& cfg);
// sample_augment_params + apply_augment; a copy of the image when !cfg.enabled.
Image augment(const Image& image, const AugmentConfig& cfg, uint64_t seed, uint64_t key);

}  // namespace tessera
