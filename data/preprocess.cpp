// The checkpoints' image processors; see preprocess.h for the definitions reproduced.
#include "data/preprocess.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/core/fileio.h"

namespace tessera {

ProcessorConfig ProcessorConfig::vit(int size) {
  // {"do_resize": true, "size": 224, "resample": 2 (BILINEAR), "do_normalize": true,
  //  "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}; rescale_factor is the default 1/255.
  ProcessorConfig c;
  c.mode = Resize::Squash;
  c.height = c.width = size;
  c.filter = Filter::Bilinear;
  c.mean = {0.5, 0.5, 0.5};
  c.std = {0.5, 0.5, 0.5};
  return c;
}

ProcessorConfig ProcessorConfig::cvt(int size) {
  // {"crop_pct": 0.875, "size": 224 (-> shortest_edge), "resample": 3 (BICUBIC), "do_normalize": true,
  //  "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]} (ImageNet); rescale 1/255.
  ProcessorConfig c;
  c.mode = Resize::ShortestEdgeCrop;
  c.height = c.width = size;
  c.filter = Filter::Bicubic;
  c.crop_pct = 0.875;
  c.mean = {0.485, 0.456, 0.406};
  c.std = {0.229, 0.224, 0.225};
  return c;
}

nlohmann::json processor_to_json(const ProcessorConfig& c) {
  nlohmann::json j = {{"do_resize", true}, {"do_rescale", true}, {"rescale_factor", c.rescale_factor},
                      {"do_normalize", true}, {"image_mean", c.mean}, {"image_std", c.std},
                      {"resample", c.filter == Filter::Bicubic ? 3 : 2}};
  if (c.mode == ProcessorConfig::Resize::ShortestEdgeCrop) {
    j["image_processor_type"] = "ConvNextImageProcessor";
    j["size"] = {{"shortest_edge", c.height}};
    j["crop_pct"] = c.crop_pct;
  } else {
    j["image_processor_type"] = "ViTImageProcessor";
    j["size"] = {{"height", c.height}, {"width", c.width}};
  }
  if (c.per_image_standardize) j["tessera_per_image_standardize"] = true;
  if (c.crop_foreground) j["tessera_crop_foreground"] = true;
  if (c.equalize) j["tessera_equalize"] = true;
  return j;
}

ProcessorConfig processor_from_json(const nlohmann::json& j, const std::string& source) {
  auto bad = [&](const std::string& what) -> std::runtime_error { return std::runtime_error(source + ": " + what); };
  auto integer = [&](const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
    try {
      return json_integer(v, what, lo, hi);
    } catch (const std::runtime_error& e) {
      throw bad(e.what());
    }
  };
  if (!j.is_object()) throw bad("not a JSON object");
  const std::string type = j.value("image_processor_type", "");
  ProcessorConfig c;
  int size = 224;
  try {
    const nlohmann::json& sz = j.contains("size") ? j.at("size") : nlohmann::json(224);
    if (sz.is_number()) size = int(integer(sz, "size", 1, 4096));
    else if (sz.contains("shortest_edge")) size = int(integer(sz.at("shortest_edge"), "size.shortest_edge", 1, 4096));
    else if (sz.contains("height")) {
      size = int(integer(sz.at("height"), "size.height", 1, 4096));
      if (integer(sz.at("width"), "size.width", 1, 4096) != size) throw bad("only square sizes are supported");
    } else throw bad("size: expected a number, {shortest_edge} or {height, width}");
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("size: ") + e.what());
  }
  if (type == "ConvNextImageProcessor") c = ProcessorConfig::cvt(size);
  else if (type == "ViTImageProcessor") c = ProcessorConfig::vit(size);
  else throw bad("image_processor_type '" + type + "' is not supported (ViTImageProcessor, ConvNextImageProcessor)");
  try {
    if (j.contains("crop_pct")) c.crop_pct = j.at("crop_pct").get<double>();
    if (j.contains("rescale_factor")) c.rescale_factor = j.at("rescale_factor").get<double>();
    if (j.contains("image_mean")) c.mean = j.at("image_mean").get<std::array<double, 3>>();
    if (j.contains("image_std")) c.std = j.at("image_std").get<std::array<double, 3>>();
    if (j.contains("resample")) {
      const int64_t r = integer(j.at("resample"), "resample", INT64_MIN, INT64_MAX);
      if (r != 2 && r != 3) throw bad("resample " + std::to_string(r) + ": only 2 (bilinear) and 3 (bicubic)");
      c.filter = r == 3 ? Filter::Bicubic : Filter::Bilinear;
    }
    for (auto [key, flag] : {std::pair{"tessera_per_image_standardize", &c.per_image_standardize},
                             std::pair{"tessera_crop_foreground", &c.crop_foreground},
                             std::pair{"tessera_equalize", &c.equalize}})
      if (j.contains(key)) {
        const nlohmann::json& f = j.at(key);
        if (!f.is_boolean()) throw bad(std::string(key) + " must be true or false, got " + f.dump());
        *flag = f.get<bool>();
      }
  } catch (const nlohmann::json::exception& e) {
    throw bad(e.what());
  }
  if (!(c.crop_pct > 0 && c.crop_pct <= 1)) throw bad("crop_pct must be in (0, 1]");
  for (double s : c.std)
    if (!(s > 0)) throw bad("image_std must be positive");
  return c;
}

ProcessorConfig processor_config(Processor p, int size) {
  return p == Processor::ViT ? ProcessorConfig::vit(size) : ProcessorConfig::cvt(size);
}

void validate(const ProcessorConfig& cfg) {
  if (cfg.channels != 1 && cfg.channels != 3)
    throw std::invalid_argument("processor config: channels must be 1 or 3, got " + std::to_string(cfg.channels));
}

Image crop_to_foreground(const Image& image) {
  const int w = image.width, h = image.height;
  auto luma = [&](int x, int y) {
    const uint8_t* p = image.pixel(x, y);
    return (19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16;  // Pillow's rgb2l
  };
  uint32_t brightest = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) brightest = std::max(brightest, luma(x, y));
  if (brightest == 0) return image;
  const uint32_t threshold = brightest / 10;
  std::vector<int> per_row(size_t(h), 0), per_col(size_t(w), 0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      if (luma(x, y) > threshold) ++per_row[size_t(y)], ++per_col[size_t(x)];
  // Along one axis: the first and last index with more than 1 % of the foreground pixels before and after
  // it (the 1st and 99th percentiles of their coordinate).
  auto span = [](const std::vector<int>& counts) {
    int64_t total = 0;
    for (int c : counts) total += c;
    const int64_t skip = total / 100;
    int first = 0, last = int(counts.size()) - 1;
    for (int64_t seen = counts[0]; seen <= skip;) seen += counts[size_t(++first)];
    for (int64_t seen = counts[size_t(last)]; seen <= skip;) seen += counts[size_t(--last)];
    return std::pair{first, last};
  };
  const auto [top, bottom] = span(per_row);
  const auto [left, right] = span(per_col);
  const int side = std::min({std::max(bottom - top + 1, right - left + 1), w, h});
  // Centred on the box (twice the centre, to stay in integers), then moved inside the image.
  const int x0 = std::clamp((left + right + 1 - side) / 2, 0, w - side);
  const int y0 = std::clamp((top + bottom + 1 - side) / 2, 0, h - side);
  Image out(side, side);
  for (int y = 0; y < side; ++y)
    std::copy_n(image.pixel(x0, y0 + y), size_t(side) * 3, out.pixel(0, y));
  return out;
}

Image equalize(const Image& image) {
  std::array<std::array<uint8_t, 256>, 3> lut;
  const size_t pixels = size_t(image.width) * size_t(image.height);
  for (size_t band = 0; band < 3; ++band) {
    std::array<uint64_t, 256> h{};
    for (size_t i = 0; i < pixels; ++i) ++h[image.rgb[i * 3 + band]];
    int occupied = 0, highest = 0;
    for (int v = 0; v < 256; ++v)
      if (h[size_t(v)]) ++occupied, highest = v;
    const uint64_t step = (pixels - h[size_t(highest)]) / 255;
    for (int v = 0; v < 256; ++v) lut[band][size_t(v)] = uint8_t(v);
    if (occupied <= 1 || step == 0) continue;
    uint64_t below = step / 2;  // Pillow's rounding offset, then the pixels darker than the level
    for (size_t v = 0; v < 256; ++v) {
      lut[band][v] = uint8_t(std::min<uint64_t>(below / step, 255));  // Image.point clips to 8 bits
      below += h[v];
    }
  }
  Image out = image;
  for (size_t i = 0; i < pixels * 3; ++i) out.rgb[i] = lut[i % 3][image.rgb[i]];
  return out;
}

Image processor_resize(const Image& input, const ProcessorConfig& cfg) {
  Image prepared;  // the crop and then the equalisation, each when asked for
  const Image* source = &input;
  if (cfg.crop_foreground) prepared = crop_to_foreground(*source), source = &prepared;
  if (cfg.equalize) prepared = equalize(*source), source = &prepared;
  const Image& image = *source;
  if (cfg.height <= 0 || cfg.width <= 0)
    throw ImageError("preprocess: output size must be positive, got " + std::to_string(cfg.width) + "x" +
                     std::to_string(cfg.height));
  if (cfg.mode == ProcessorConfig::Resize::Squash) return resize(image, cfg.width, cfg.height, cfg.filter, cfg.pass_order);

  if (cfg.height != cfg.width)
    throw ImageError("preprocess: shortest-edge resize + crop needs a square output, got " +
                     std::to_string(cfg.width) + "x" + std::to_string(cfg.height));
  const int shortest_edge = cfg.height;
  // ConvNextImageProcessor.resize: at 384 and above, no crop (the model was fine-tuned that way).
  if (shortest_edge >= 384) return resize(image, shortest_edge, shortest_edge, cfg.filter, cfg.pass_order);
  if (!(cfg.crop_pct > 0.0 && cfg.crop_pct <= 1.0))
    throw ImageError("preprocess: crop_pct must be in (0, 1], got " + std::to_string(cfg.crop_pct));
  // int(shortest_edge / crop_pct): Python float division then truncation, the same doubles here.
  const int resize_short = int(double(shortest_edge) / cfg.crop_pct);
  // get_resize_output_image_size(default_to_square=False): new_long = int(size * long / short), where
  // size * long is an exact integer product and "/" a correctly rounded double division, as below.
  const bool landscape = image.width > image.height;  // w <= h: width is the short side (ties included)
  const int short_side = landscape ? image.height : image.width;
  const int long_side = landscape ? image.width : image.height;
  const int resize_long = int(double(int64_t(resize_short) * long_side) / double(short_side));
  const int new_w = landscape ? resize_long : resize_short;
  const int new_h = landscape ? resize_short : resize_long;
  Image resized = resize(image, new_w, new_h, cfg.filter, cfg.pass_order);
  // image_transforms.center_crop: top = (h - crop_h) // 2, left = (w - crop_w) // 2. The resized image
  // is never smaller than the crop here (crop_pct <= 1), so the padding branch of center_crop never runs.
  const int top = (new_h - shortest_edge) / 2, left = (new_w - shortest_edge) / 2;
  return crop(resized, left, top, shortest_edge, shortest_edge);
}

void preprocess_into(const Image& image, const ProcessorConfig& cfg, float* out) {
  validate(cfg);
  const Image r = processor_resize(image, cfg);
  const size_t plane = size_t(r.width) * size_t(r.height);
  // Output plane c's 8-bit value at pixel i: the channel itself, or the luma for one plane.
  auto level = [&](int c, size_t i) -> uint32_t {
    const uint8_t* p = r.rgb.data() + i * 3;
    if (cfg.channels == 3) return p[c];
    return (19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16;  // Pillow's rgb2l
  };
  if (cfg.per_image_standardize) {
    double sum = 0, sum2 = 0;
    for (int c = 0; c < cfg.channels; ++c)
      for (size_t i = 0; i < plane; ++i) sum += double(level(c, i)) * cfg.rescale_factor;
    const double n = double(plane) * cfg.channels, m = sum / n;
    for (int c = 0; c < cfg.channels; ++c)  // two passes: no cancellation in the variance
      for (size_t i = 0; i < plane; ++i) {
        const double d = double(level(c, i)) * cfg.rescale_factor - m;
        sum2 += d * d;
      }
    const double inv = 1.0 / std::max(std::sqrt(sum2 / n), 1e-3);
    for (int c = 0; c < cfg.channels; ++c)
      for (size_t i = 0; i < plane; ++i)
        out[size_t(c) * plane + i] = float((double(level(c, i)) * cfg.rescale_factor - m) * inv);
    return;
  }
  for (int c = 0; c < cfg.channels; ++c) {
    // numpy: np.array(mean, dtype=float32), then float32 (x - mean) / std.
    const float mean = float(cfg.mean[size_t(c)]), std = float(cfg.std[size_t(c)]);
    float* dst = out + size_t(c) * plane;
    for (size_t i = 0; i < plane; ++i) {
      // rescale: image.astype(float64) * scale, then .astype(float32).
      const float x = float(double(level(c, i)) * cfg.rescale_factor);
      dst[i] = (x - mean) / std;
    }
  }
}

Tensor preprocess(const Image& image, const ProcessorConfig& cfg) {
  validate(cfg);
  Tensor t = Tensor::empty({cfg.channels, cfg.height, cfg.width}, DType::f32);
  preprocess_into(image, cfg, t.data<float>());
  return t;
}

Tensor preprocess(const Image& image, Processor p) { return preprocess(image, processor_config(p)); }

Tensor preprocess_batch(const std::vector<Image>& images, const ProcessorConfig& cfg) {
  if (images.empty()) throw ImageError("preprocess_batch: no images");
  validate(cfg);
  Tensor t = Tensor::empty({int64_t(images.size()), cfg.channels, cfg.height, cfg.width}, DType::f32);
  const size_t per = size_t(cfg.channels) * size_t(cfg.height) * size_t(cfg.width);
  float* base = t.data<float>();
  for (size_t i = 0; i < images.size(); ++i) preprocess_into(images[i], cfg, base + i * per);
  return t;
}

}  // namespace tessera
