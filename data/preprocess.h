// The checkpoints' image processors, reproduced exactly (transformers' slow, PIL-based path):
//
//   ViT (google/vit-base-patch16-224, ViTImageProcessor): resize straight to 224×224 with PIL BILINEAR
//     (aspect ratio ignored, no crop); ×1/255; (x − 0.5) / 0.5.
//   CvT (microsoft/cvt-13, ConvNextImageProcessor, crop_pct 0.875): shortest side → int(224 / 0.875) = 256,
//     long side int(256 · long / short) (truncated); PIL BICUBIC; center crop 224 (top = (h − 224) // 2,
//     left = (w − 224) // 2); ×1/255; ImageNet mean/std.
//
// Arithmetic, as transformers does it (image_transforms.rescale / normalize): rescale in float64
// (uint8 · 1/255) then cast to float32; normalise in float32 with mean and std cast to float32:
// (x − mean) / std. The output is f32 CHW. Like the Python processors, these functions do not convert to
// RGB: an Image is RGB already (decode_image converts).
//
// Two options of tessera's own, for models trained from scratch on grayscale scans:
//   channels = 1: one plane, the luma of Pillow's convert("L"), L = (19595 R + 38470 G + 7471 B + 2^15)
//     >> 16 (libImaging's rgb2l: 0.299, 0.587, 0.114 in 16-bit fixed point, rounded; equal to v when
//     R = G = B = v), rescaled and normalised with mean[0], std[0].
//   per_image_standardize: instead of the fixed mean and std, every image is z-scored by its own
//     statistics: z = (x − m) / max(s, 1e-3), with x the rescaled values and m, s the mean and population
//     standard deviation of all of them (every plane together, so equal planes stay equal); in double,
//     written as float. Scan intensities are not calibrated across scanners, and this removes a global
//     brightness/contrast difference between sources.
#pragma once
#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image.h"
#include "engine/core/tensor.h"

namespace tessera {

struct ProcessorConfig {
  // How the image reaches the output size.
  //   Squash: resize straight to height × width (ViT).
  //   ShortestEdgeCrop (ConvNext): with S = height (= width, square output) and S < 384: resize the short
  //     side to int(S / crop_pct), the long side proportionally (truncated), then center-crop S × S.
  //     With S >= 384 ConvNext resizes straight to S × S (no crop); reproduced too.
  enum class Resize { Squash, ShortestEdgeCrop };
  Resize mode = Resize::Squash;
  int height = 224, width = 224;  // output size
  Filter filter = Filter::Bilinear;
  PassOrder pass_order = PassOrder::Pillow13;  // which Pillow's pass order to reproduce (see image.h)
  double crop_pct = 0.875;        // ShortestEdgeCrop only
  double rescale_factor = 1.0 / 255.0;
  std::array<double, 3> mean{0.5, 0.5, 0.5}, std{0.5, 0.5, 0.5};
  int channels = 3;                    // 1 or 3 output planes; not in the JSON (the model config has it)
  bool per_image_standardize = false;  // JSON "tessera_per_image_standardize", written only when true
  bool crop_foreground = false;        // JSON "tessera_crop_foreground", written only when true: see below
  bool equalize = false;               // JSON "tessera_equalize", written only when true: see below

  static ProcessorConfig vit(int size = 224);  // google/vit-base-patch16-224's preprocessor_config.json
  static ProcessorConfig cvt(int size = 224);  // microsoft/cvt-13's preprocessor_config.json
};

// preprocessor_config.json as transformers writes it (ViTImageProcessor / ConvNextImageProcessor), so a
// checkpoint folder carries the resolution it was trained at. Reading accepts those two processor types
// with their fields (size as {"height", "width"}, {"shortest_edge"} or a number; resample 2 or 3; mean,
// std, rescale_factor, crop_pct, and tessera_per_image_standardize as a boolean) and throws naming `source`
// and the field for anything else.
nlohmann::json processor_to_json(const ProcessorConfig& cfg);
ProcessorConfig processor_from_json(const nlohmann::json& j, const std::string& source);

enum class Processor { ViT, CvT };
ProcessorConfig processor_config(Processor p, int size = 224);

// Throws std::invalid_argument naming the field when channels is not 1 or 3 (the output size is checked
// where it is used).
void validate(const ProcessorConfig& cfg);

// The square around the image's foreground (crop_foreground). Foreground: the pixels brighter than a tenth
// of the image's brightest luma. Its box: from the 1st to the 99th percentile of their coordinates along
// each axis. The square: the box's longer side (at most the image's shorter side), centred on the box and
// moved inside the image. Scans are framed differently by different scanners and sites — in the
// brain-tumour set the head's box covers ~65 % of the frame's area in one source's glioma and meningioma
// images and ~85-88 % in the other source's — so a model can learn the framing as a shortcut for the
// class; cropping to the head removes that difference. The tenth of the maximum follows the image's own
// brightness (a brighter scanner moves it too); the percentiles ignore stray bright pixels and small
// burnt-in labels. An image with no such pixel (all black) is returned unchanged.
Image crop_to_foreground(const Image& image);

// Histogram equalisation (equalize), Pillow's ImageOps.equalize exactly: per band, with h the band's
// 256-bin histogram and step = (pixels - the count of the highest occupied level) / 255 (integer
// division), level i maps to min(255, (step / 2 + h[0] + ... + h[i-1]) / step); a band with one occupied
// level or step 0 is left unchanged. Every level's new value is its share of the pixels darker than it, so
// the output's histogram is close to flat whatever the scanner's contrast curve was: it removes a monotone
// intensity mapping between sources (gamma, windowing), which a mean and standard deviation (per-image
// standardisation) do not.
Image equalize(const Image& image);

// The resized (and cropped) 8-bit image the processor normalises: exposed for tests and inspection.
// With crop_foreground, crop_to_foreground comes first, then equalize with equalize.
Image processor_resize(const Image& image, const ProcessorConfig& cfg);

// f32 [channels, height, width], CHW, on the CPU.
Tensor preprocess(const Image& image, const ProcessorConfig& cfg);
Tensor preprocess(const Image& image, Processor p);
// Writes the same values into `out` (channels · height · width floats, CHW): for filling a batch in place.
void preprocess_into(const Image& image, const ProcessorConfig& cfg, float* out);
// f32 [N, channels, height, width]: the images preprocessed and stacked in order.
Tensor preprocess_batch(const std::vector<Image>& images, const ProcessorConfig& cfg);

}  // namespace tessera
