// Images: decoding (stb_image) into 8-bit RGB, and Pillow-exact resampling.
//
// The checkpoints' image processors (transformers' ViTImageProcessor / ConvNextImageProcessor, the slow PIL
// path) resize with Pillow. resize() reproduces Pillow's ImagingResample (libImaging/Resample.c) for 8-bit
// images bit for bit, so the pixels a model sees here are the pixels it saw in Python.
//
// Decoding differs from Pillow in two known places (documented, tested with tolerances):
//   - JPEG: stb_image's IDCT and chroma upsampling are not libjpeg-turbo's, so decoded pixels can differ
//     from PIL's by a few levels. PNG/BMP/... are lossless and decode identically.
//   - 16-bit PNG: every sample is reduced to 8 bits by >> 8 (keep the high byte). For 16-bit RGB(A) this is
//     what PIL does too; for 16-bit grayscale PIL opens mode "I;16" and convert("RGB") clips to 255
//     instead, which makes almost any real 16-bit image white — scaling is the useful choice.
// Channel handling: grayscale is replicated to R=G=B, alpha is dropped (PIL's convert("RGB") drops it too,
// without compositing), palettes are expanded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tessera {

// Thrown for unreadable/corrupt images; the message starts with the file name (or "<memory>").
struct ImageError : std::runtime_error { using std::runtime_error::runtime_error; };

// 8-bit RGB, rows top to bottom, HWC: pixel (x, y) channel c at rgb[(y * width + x) * 3 + c].
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  Image(int w, int h);  // zero-filled; throws ImageError on non-positive sizes
  uint8_t* pixel(int x, int y) { return rgb.data() + (size_t(y) * size_t(width) + size_t(x)) * 3; }
  const uint8_t* pixel(int x, int y) const { return rgb.data() + (size_t(y) * size_t(width) + size_t(x)) * 3; }
};

// Decodes any format stb_image reads (JPEG baseline/progressive, PNG 1..16-bit, BMP, GIF first frame, TGA,
// PSD composite, PNM) into RGB. Errors name the file: missing, unreadable, empty, corrupt, zero size.
Image decode_image(const std::string& path);
// Same from bytes in memory; `name` is used in error messages.
Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name = "<memory>");

// Pillow's resampling filters (Image.Resampling.BILINEAR = 2, BICUBIC = 3).
enum class Filter { Bilinear, Bicubic };
const char* filter_name(Filter f);

// Pillow changed the order of the two passes in 13.0 (PR "run the vertical pass first" when the height
// shrinks more than twice as much as the width); the rounded 8-bit intermediate makes the results differ by
// a level here and there. Pillow13 (the default) matches Pillow >= 13, Pillow12 matches Pillow <= 12.
enum class PassOrder { Pillow13, Pillow12 };

// Pillow-exact Image.resize((out_w, out_h), filter) of an RGB image (no box, no reducing_gap): separable
// convolution, support scaled by the downscale factor (antialiasing), 22-bit fixed-point weights; one pass
// into a rounded, clipped 8-bit image, then the other. Horizontal first (over only the source rows the
// vertical pass reads) unless, from Pillow 13, height shrinks by more than 2x the pixels width does
// (in_h - out_h > 0 and > 2 (in_w - out_w)). A pass whose size does not change is skipped; same size
// returns a copy.
Image resize(const Image& image, int out_w, int out_h, Filter filter, PassOrder order = PassOrder::Pillow13);

// The sub-image [left, left + w) × [top, top + h); must lie inside the image.
Image crop(const Image& image, int left, int top, int w, int h);

}  // namespace tessera
