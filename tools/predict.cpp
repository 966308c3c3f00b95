// `tessera predict`: classify images (or preprocessed pixel tensors) with a CvT or ViT checkpoint.
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "engine/core/fileio.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "tools/cli.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace tessera::cli {

namespace {

struct PredictOptions {
  std::string model, weights, checkpoint, config, pixels, device;
  int64_t num_classes = 0;  // 0: keep the checkpoint's head
  int top = 5;
  bool json = false;
  std::vector<std::string> images;
};

std::vector<std::string> labels_of(const models::ModelConfig& c) {
  return std::visit([](const auto& cfg) { return cfg.id2label; }, c);
}

void run_predict(PredictOptions o) {
  if (o.checkpoint.empty() == o.weights.empty())
    throw std::runtime_error("predict: give --weights FILE or --checkpoint DIR (exactly one)");
  std::string processor_dir;
  if (!o.checkpoint.empty()) {
    processor_dir = train::resolve_checkpoint(o.checkpoint);
    o.weights = processor_dir + "/model.safetensors";
  }
  if (o.images.empty() == o.pixels.empty())
    throw std::runtime_error("predict: give either image files or --pixels FILE.safetensors (exactly one)");
  if (o.top < 1) throw std::runtime_error("predict: --top must be at least 1");
  models::ModelConfig config = resolve_model_config("predict", o.model, o.weights, o.config);
  models::LoadOptions load;
  if (o.num_classes > 0) load.num_classes = o.num_classes;
  std::unique_ptr<models::Model> model = models::load_model(config, o.weights, load);
  const Device device = train::resolve_device(train::parse_device(o.device), std::cerr);
  model->to(device);

  // The batch: images through the checkpoint's processor, or a pixel_values tensor as it is.
  Tensor pixels;
  std::vector<std::string> names;
  if (!o.pixels.empty()) {
    SafetensorsFile file(o.pixels);
    if (!file.contains("pixel_values"))
      throw std::runtime_error(o.pixels + ": no tensor named pixel_values");
    pixels = file.get("pixel_values").to(DType::f32).contiguous();
    if (pixels.dim() != 4 || pixels.size(1) != 3)
      throw std::runtime_error(o.pixels + ": pixel_values must be [N, 3, H, W], got " + pixels.str());
    for (int64_t i = 0; i < pixels.size(0); ++i) names.push_back(o.pixels + "[" + std::to_string(i) + "]");
  } else {
    ProcessorConfig proc = processor_dir.empty() ? default_processor(model->config())
                                                 : train::checkpoint_processor(processor_dir, model->config());
    std::vector<Image> images;
    for (const std::string& path : o.images) images.push_back(decode_image(path));
    pixels = preprocess_batch(images, proc);
    names = o.images;
  }

  Tensor logits;
  {
    NoGradGuard no_grad;
    Generator unused(0);  // eval mode draws nothing
    logits = model->forward(pixels.to(device), /*training=*/false, unused).to(Device::CPU).to(DType::f64);
  }
  Tensor probs = softmax(logits, -1);
  std::vector<std::string> labels = labels_of(model->config());
  const int64_t n = logits.size(0), classes = logits.size(1);
  auto lv = logits.to_vector<double>(), pv = probs.to_vector<double>();
  int k = int(std::min<int64_t>(o.top, classes));

  nlohmann::json out = nlohmann::json::array();
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> order(static_cast<size_t>(classes));
    for (int64_t c = 0; c < classes; ++c) order[size_t(c)] = c;
    auto p = [&](int64_t c) { return pv[size_t(i * classes + c)]; };
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p(a) > p(b); });
    auto label = [&](int64_t c) { return c < int64_t(labels.size()) ? labels[size_t(c)] : "LABEL_" + std::to_string(c); };
    if (o.json) {
      nlohmann::json top = nlohmann::json::array();
      for (int r = 0; r < k; ++r)
        top.push_back({{"index", order[size_t(r)]}, {"label", label(order[size_t(r)])}, {"prob", p(order[size_t(r)])}});
      out.push_back({{"file", names[size_t(i)]},
                     {"logits", std::vector<double>(lv.begin() + i * classes, lv.begin() + (i + 1) * classes)},
                     {"probs", std::vector<double>(pv.begin() + i * classes, pv.begin() + (i + 1) * classes)},
                     {"top", top}});
      continue;
    }
    std::cout << names[size_t(i)] << "\n";
    for (int r = 0; r < k; ++r)
      std::cout << "  " << std::fixed << std::setprecision(4) << p(order[size_t(r)]) << "  "
                << label(order[size_t(r)]) << "\n";
  }
  if (o.json) std::cout << dump_json(out, 2) << "\n";
}

}  // namespace

ProcessorConfig default_processor(const models::ModelConfig& c) {
  ProcessorConfig p = std::holds_alternative<models::VitConfig>(c)
                          ? ProcessorConfig::vit(int(std::get<models::VitConfig>(c).image_size))
                          : ProcessorConfig::cvt(224);
  p.channels = int(models::num_channels(c));
  return p;
}

models::ModelConfig resolve_model_config(const std::string& command, const std::string& model,
                                        const std::string& weights_file, const std::string& config) {
  if (!config.empty()) return models::load_config(config);
  std::string dir = weights_file.substr(0, weights_file.find_last_of('/') + 1);
  std::string beside = (dir.empty() ? std::string("./") : dir) + "config.json";
  if (model.empty()) {
    if (FILE* f = std::fopen(beside.c_str(), "r")) {
      std::fclose(f);
      return models::load_config(beside);
    }
    throw std::runtime_error(command + ": give --model NAME (one of the presets) or --config FILE; no " + beside);
  }
  // A preset fixes the architecture; the class count is the checkpoint's own (its classifier's rows).
  models::ModelConfig preset = models::preset_config(model);
  SafetensorsFile weights(weights_file);
  if (weights.contains("classifier.weight")) {
    const Shape& head = weights.info("classifier.weight").shape;
    if (head.size() == 2 && head[0] != models::num_labels(preset))
      models::set_labels(preset, models::default_labels(head[0]));
  }
  return preset;
}

void add_predict(CLI::App& app) {
  auto o = std::make_shared<PredictOptions>();
  CLI::App* sub = app.add_subcommand("predict", "Classify images with a CvT or ViT checkpoint (top classes and probabilities)");
  sub->add_option("--model", o->model, "Preset (cvt-13, vit-b16, ...); default: config.json beside the weights");
  sub->add_option("--weights", o->weights, "model.safetensors (Hugging Face layout)");
  sub->add_option("--checkpoint", o->checkpoint,
                  "A training run directory (its best checkpoint) or a checkpoint directory, instead of --weights");
  sub->add_option("--config", o->config, "A Hugging Face config.json of a cvt or vit model");
  sub->add_option("--num-classes", o->num_classes, "Replace the classifier with a fresh one of N classes");
  sub->add_option("--top", o->top, "How many classes to show per image")->capture_default_str();
  sub->add_option("--device", o->device, "cuda or cpu (default: cuda when present and verified)");
  sub->add_flag("--json", o->json, "One JSON array: file, logits, probs, top per image");
  sub->add_option("--pixels", o->pixels, "A safetensors file with preprocessed pixel_values [N,3,H,W]");
  sub->add_option("images", o->images, "Image files");
  sub->callback([o] { run_predict(*o); });
}

}  // namespace tessera::cli
