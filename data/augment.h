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
  bool enabled = true;                    // false: augment() returns the image unchanged
};

// Throws std::invalid_argument naming the bad field (negative degrees, scale outside (0, 1], ratio <= 0 or
// min > max, probabilities outside [0, 1], negative jitter).
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
};

// Draws the parameters for an image of width × height. Slots: 0 angle, 1..40 crop (4 per attempt: scale,
// log ratio, top, left), 41 hflip, 42 vflip, 43 brightness, 44 contrast, 45 jitter order.
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

// Applies given parameters with cfg's output size.
Image apply_augment(const Image& image, const AugmentParams& p, const AugmentConfig& cfg);
// sample_augment_params + apply_augment; a copy of the image when !cfg.enabled.
Image augment(const Image& image, const AugmentConfig& cfg, uint64_t seed, uint64_t key);

}  // namespace tessera
