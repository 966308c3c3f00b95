#include "models/model.h"

#include "engine/core/fileio.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "models/cvt.h"
#include "models/vit.h"

namespace tessera::models {

namespace fs = std::filesystem;

std::unique_ptr<Model> make_model(const ModelConfig& config, DType dtype) {
  if (const auto* c = std::get_if<CvtConfig>(&config)) return std::make_unique<Cvt>(*c, dtype);
  return std::make_unique<Vit>(std::get<VitConfig>(config), dtype);
}

namespace {
double initializer_range(const ModelConfig& c) {
  return std::visit([](const auto& x) { return x.initializer_range; }, c);
}
}  // namespace

std::unique_ptr<Model> make_model(const ModelConfig& config, uint64_t seed, DType dtype) {
  auto m = make_model(config, dtype);
  Generator gen(seed);
  m->init_weights(gen, initializer_range(config));
  return m;
}

std::unique_ptr<Model> load_model(const ModelConfig& config, const std::string& file, const LoadOptions& options) {
  ModelConfig cfg = config;
  if (options.num_classes) {
    if (*options.num_classes < 1)
      throw ModelError(file + ": num_classes must be >= 1, got " + std::to_string(*options.num_classes));
    set_labels(cfg, default_labels(*options.num_classes));
  }
  auto m = make_model(cfg);
  std::vector<std::string> skip;
  if (options.num_classes) {
    // A fresh head (transformers' _init_weights for the new Linear); the file's classifier is not read.
    Generator gen(options.head_seed);
    m->init_weights(gen, initializer_range(cfg), Model::kHeadPrefix);
    skip.push_back(Model::kHeadPrefix);
  }
  m->load_safetensors(file, skip);
  return m;
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  fs::path p(path), dir, weights;
  if (fs::is_directory(p)) {
    dir = p;
    weights = p / "model.safetensors";
  } else {
    dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    weights = p;
  }
  const fs::path config = dir / "config.json";
  if (!fs::exists(config))
    throw ModelError(path + ": no config.json next to the weights (looked for " + config.string() + ")");
  if (!fs::exists(weights)) throw ModelError(path + ": no weights file " + weights.string());
  return load_model(load_config(config.string()), weights.string(), options);
}

void Model::set_compute_dtype(DType dt) {
  TS_CHECK(is_floating(dt), std::string("set_compute_dtype: ") + dtype_name(dt) + " is not a float dtype");
  compute_dtype_ = dt;
}

void save_model(const Model& model, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw ModelError(dir + ": cannot create the checkpoint directory: " + ec.message());
  const std::string config = (fs::path(dir) / "config.json").string();
  try {
    write_file_atomic(config, config_to_json(model.config()).dump(2) + "\n");
  } catch (const FileError& e) {
    throw ModelError(e.what());
  }
  model.save_safetensors((fs::path(dir) / "model.safetensors").string());
}

}  // namespace tessera::models
