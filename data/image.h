// Images: decoding (libjpeg-turbo for JPEG, stb_image for the rest) into 8-bit RGB, and Pillow-exact
// resampling.
//
// The checkpoints' image processors (transformers' ViTImageProcessor / ConvNextImageProcessor, the slow PIL
// path) resize with Pillow. resize() reproduces Pillow's ImagingResample (libImaging/Resample.c) for 8-bit
// images bit for bit, so the pixels a model sees here are the pixels it saw in Python.
//
// JPEG is decoded by libjpeg-turbo with the settings Pillow uses (integer "islow" IDCT, fancy upsampling),
// so decoded pixels equal Pillow's. One known difference from Pillow, documented and tested:
//   - 16-bit PNG: every sample is reduced to 8 bits by >> 8 (keep the high byte). For 16-bit RGB(A) this is
//     what PIL does too; for 16-bit grayscale PIL opens mode "I;16" and convert("RGB") clips to 255
//     instead, which makes almost any real 16-bit image white — scaling is the useful choice.
// Channel handling: grayscale is replicated to R=G=B, alpha is dropped (PIL's convert("RGB") drops it too,
// without compositing), palettes are expanded, CMYK JPEGs are converted with Pillow's formula.
//
// Untrusted files: decode_image refuses, before the expensive step, anything that is not a regular file,
// a file over ImageLimits::max_file_bytes (before reading it) and a header declaring zero or more than
// ImageLimits::max_pixels pixels (before decoding). data/README.md lists the limits.
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

// What decoding accepts. The defaults refuse decompression bombs, not photographs: max_pixels is Pillow's
// decompression-bomb guard (89,478,485 = 1 GiB / 4 / 3 pixels: at most 256 MiB of 8-bit RGB), and 64 MiB
// of file is several times the JPEG of a full-resolution camera picture (the data sets' are kilobytes).
struct ImageLimits {
  static constexpr int64_t kDefaultMaxPixels = 89'478'485;
  static constexpr uint64_t kDefaultMaxFileBytes = uint64_t(64) << 20;
  int64_t max_pixels = kDefaultMaxPixels;            // width * height as the header declares it
  uint64_t max_file_bytes = kDefaultMaxFileBytes;  // decode_image only: the file's size before reading it
};

// Decodes a JPEG (baseline, progressive, gray, YCbCr, CMYK; libjpeg-turbo) or any other format stb_image
// reads (PNG 1..16-bit, BMP, GIF first frame, TGA, PSD composite, PNM) into RGB. Errors name the file:
// missing, not a regular file (directory, device, FIFO), over the size limit, unreadable, empty, corrupt,
// truncated, zero size, over the pixel limit.
Image decode_image(const std::string& path, const ImageLimits& limits = {});
// The file's bytes, after the file checks of decode_image (a regular file, at most max_file_bytes), for
// callers that need the bytes too (the data audit hashes them). Throws ImageError naming the file.
std::string read_image_file(const std::string& path, const ImageLimits& limits = {});
// Same from bytes in memory (the entry point for untrusted bytes: no file system involved); `name` is
// used in error messages. The pixel limit applies; the file size limit is the caller's.
Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name = "<memory>",
                          const ImageLimits& limits = {});

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
