// `tessera attn`: a model's attention probabilities for some images, written as data, with the attention
// rollout map of the last stage (CvT) or the patch grid (ViT). The math is models/attention_maps.h.
//
// DIR/attn.safetensors holds float32 tensors
//   layer.{L}.attention_probs   [images, heads kept, queries, keys] for every selected layer L
//   rollout                     [images, rows, cols] the cls row of the rollout on the query grid, max 1
// and __metadata__ whose values are JSON text: "layers" (per layer: stage, query_grid and key_grid as
// [rows, cols], cls_token, scale, heads kept, heads_total), "images" (the paths), "preprocessing" (the
// processor's preprocessor_config.json fields and channels), "model" (type, source, config), "predictions"
// (per image: file, index, label, prob) and "method" (name, fuse, discard, heads, the rolled-out layers,
// grid, and cls_mass: per layer, per image, the mean attention on the cls key). DIR/attn.json holds the
// same metadata as one JSON object.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "engine/core/fileio.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "models/attention_maps.h"
#include "models/model.h"
#include "tools/cli.h"
#include "train/checkpoint.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct AttnOptions {
  std::string model, weights, checkpoint, config, device, out, fuse = "mean";
  std::vector<int64_t> layers, heads;
  double discard = 0;
  bool json = false;
  std::vector<std::string> images;
};

std::string joined(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

void run_attn(AttnOptions o) {
  namespace fs = std::filesystem;
  // Every option is checked before the model loads, so a typo costs nothing.
  if (o.checkpoint.empty() == o.weights.empty())
    throw std::runtime_error("attn: give --weights FILE or --checkpoint DIR (exactly one)");
  if (o.images.empty()) throw std::runtime_error("attn: no images given");
  if (o.out.empty()) throw std::runtime_error("attn: give --out DIR");
  if (!o.device.empty() && o.device != "cpu")
    throw std::runtime_error("attn: --device " + o.device + ": attention maps run on the CPU only for now");
  if (!(o.discard >= 0 && o.discard < 1))
    throw std::runtime_error("attn: --discard " + json(o.discard).dump() + " is outside [0, 1)");
  models::RolloutOptions rollout_options;
  try {
    rollout_options.fusion = models::parse_head_fusion(o.fuse);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("attn: --fuse: ") + e.what());
  }
  // Repeats would duplicate heads in the file and weigh them twice in the fusion.
  for (std::vector<int64_t>* v : {&o.layers, &o.heads}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  rollout_options.discard = o.discard;
  rollout_options.heads = o.heads;

  std::string processor_dir;
  if (!o.checkpoint.empty()) {
    processor_dir = train::resolve_checkpoint(o.checkpoint);
    o.weights = processor_dir + "/model.safetensors";
  }
  const models::ModelConfig config = resolve_model_config("attn", o.model, o.weights, o.config);
  const ProcessorConfig proc =
      processor_dir.empty() ? default_processor(config) : train::checkpoint_processor(processor_dir, config);
  const auto layouts = models::attention_layouts(config, proc.height, proc.width);

  // The layers written (all by default) and their heads; a layer or head the model lacks is an error.
  std::vector<int64_t> layers = o.layers;
  if (layers.empty())
    for (const auto& l : layouts) layers.push_back(l.layer);
  const int64_t count = int64_t(layouts.size());
  for (int64_t l : layers)
    if (l < 0 || l >= count)
      throw std::runtime_error("attn: --layers " + std::to_string(l) + ": the model has layers 0.." +
                               std::to_string(count - 1));
  const std::vector<int64_t> rollout = models::rollout_layers(layouts);
  for (int64_t h : o.heads) {
    std::vector<int64_t> used = layers;
    used.insert(used.end(), rollout.begin(), rollout.end());
    for (int64_t l : used)
      if (h < 0 || h >= layouts[size_t(l)].heads)
        throw std::runtime_error("attn: --heads " + std::to_string(h) + ": layer " + std::to_string(l) +
                                 (std::find(layers.begin(), layers.end(), l) == layers.end() ? " (rolled out)" : "") +
                                 " has heads 0.." + std::to_string(layouts[size_t(l)].heads - 1));
  }

  std::vector<Image> images;
  for (const std::string& path : o.images) images.push_back(decode_image(path));
  const Tensor pixels = preprocess_batch(images, proc);
  std::unique_ptr<models::Model> model = models::load_model(config, o.weights);

  models::AttentionCapture capture;
  capture.layers = layers;
  capture.layers.insert(capture.layers.end(), rollout.begin(), rollout.end());
  Tensor logits;
  {
    NoGradGuard no_grad;
    Generator unused(0);  // eval mode draws nothing
    model->set_attention_capture(&capture);
    logits = model->forward(pixels, /*training=*/false, unused).to(DType::f64);
    model->set_attention_capture(nullptr);
  }
  auto captured = [&](int64_t layer) {
    for (const auto& [l, p] : capture.probs)
      if (l == layer) return p;
    throw std::logic_error("attn: layer " + std::to_string(layer) + " was not captured");
  };

  std::map<std::string, Tensor> tensors;
  json layer_meta = json::array();
  for (int64_t l : layers) {
    const models::AttentionLayout& a = layouts[size_t(l)];
    Tensor p = captured(l).to(DType::f32);  // (N, heads, Tq, Tk)
    std::vector<int64_t> kept = o.heads;
    if (kept.empty())
      for (int64_t h = 0; h < a.heads; ++h) kept.push_back(h);
    else p = index_select(p, 1, Tensor::from(kept, {int64_t(kept.size())}));
    tensors["layer." + std::to_string(l) + ".attention_probs"] = p.contiguous();
    layer_meta.push_back({{"layer", l}, {"stage", a.stage}, {"query_grid", {a.query_rows, a.query_cols}},
                          {"key_grid", {a.key_rows, a.key_cols}}, {"cls_token", a.cls}, {"scale", a.scale},
                          {"heads", kept}, {"heads_total", a.heads}});
  }

  json method = {{"fuse", o.fuse}, {"discard", o.discard}, {"heads", o.heads}, {"layers", rollout}};
  if (rollout.empty()) {
    method["name"] = "none: the last stage has no cls token, so there is no rollout map";
  } else {
    std::vector<Tensor> probs;
    std::vector<models::AttentionLayout> rolled;
    for (int64_t l : rollout) {
      probs.push_back(captured(l));
      rolled.push_back(layouts[size_t(l)]);
    }
    models::Rollout r = models::attention_rollout(probs, rolled, rollout_options);
    tensors["rollout"] = r.map;
    const bool cvt = std::holds_alternative<models::CvtConfig>(config);
    method["name"] = cvt ? "attention rollout over the last stage, key-grid attention carried to the query grid "
                           "(tessera's method, models/attention_maps.h)"
                         : "attention rollout (Abnar & Zuidema 2020)";
    method["grid"] = {rolled.back().query_rows, rolled.back().query_cols};
    json mass = json::object();
    for (size_t i = 0; i < rollout.size(); ++i) mass[std::to_string(rollout[i])] = r.cls_mass[i];
    method["cls_mass"] = mass;  // per rolled-out layer, per image
  }

  // Predictions: the most probable class per image.
  const std::vector<std::string> labels = std::visit([](const auto& c) { return c.id2label; }, config);
  const Tensor probs = softmax(logits, -1);
  const std::vector<double> pv = probs.to_vector<double>();
  const int64_t n = probs.size(0), classes = probs.size(1);
  json predictions = json::array();
  for (int64_t i = 0; i < n; ++i) {
    const auto row = pv.begin() + i * classes;
    const int64_t best = int64_t(std::max_element(row, row + classes) - row);
    predictions.push_back({{"file", o.images[size_t(i)]}, {"index", best},
                           {"label", best < int64_t(labels.size()) ? labels[size_t(best)] : "LABEL_" + std::to_string(best)},
                           {"prob", row[best]}});
  }

  json preprocessing = processor_to_json(proc);
  preprocessing["channels"] = proc.channels;
  const json meta = {{"layers", layer_meta},
                     {"images", o.images},
                     {"preprocessing", preprocessing},
                     {"model", {{"type", models::model_type(config)},
                                {"source", o.checkpoint.empty() ? o.weights : o.checkpoint},
                                {"config", models::config_to_json(config)}}},
                     {"predictions", predictions},
                     {"method", method}};
  std::map<std::string, std::string> metadata;
  for (auto it = meta.begin(); it != meta.end(); ++it) metadata[it.key()] = it.value().dump();

  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) throw std::runtime_error("attn: --out " + o.out + ": cannot create the folder: " + ec.message());
  const std::string st = (fs::path(o.out) / "attn.safetensors").string();
  save_safetensors(st, tensors, metadata);
  write_file_atomic((fs::path(o.out) / "attn.json").string(), meta.dump(2) + "\n");

  if (o.json) {
    std::cout << meta.dump(2) << "\n";
    return;
  }
  std::cout << "wrote " << st << ": " << layers.size() << " layer" << (layers.size() == 1 ? "" : "s") << " ("
            << joined(layers) << ")";
  if (tensors.count("rollout")) std::cout << ", rollout " << shape_str(tensors.at("rollout").shape());
  std::cout << "\n";
  for (const json& p : predictions)
    std::cout << "  " << p["file"].get<std::string>() << "  " << p["label"].get<std::string>() << "  "
              << p["prob"].get<double>() << "\n";
}

}  // namespace

void add_attn(CLI::App& app) {
  auto o = std::make_shared<AttnOptions>();
  CLI::App* sub = app.add_subcommand(
      "attn", "Write a model's attention probabilities and its rollout map for images (DIR/attn.safetensors)");
  sub->add_option("--checkpoint", o->checkpoint, "A training run directory (its best checkpoint) or a checkpoint directory");
  sub->add_option("--model", o->model, "Preset (cvt-13, vit-b16, ...); default: config.json beside the weights");
  sub->add_option("--weights", o->weights, "model.safetensors (Hugging Face layout), instead of --checkpoint");
  sub->add_option("--config", o->config, "A Hugging Face config.json of a cvt or vit model");
  sub->add_option("--layers", o->layers, "Layers to write, numbered through the model (default: all)")->delimiter(',');
  sub->add_option("--heads", o->heads, "Heads to keep, in the written layers and the rollout (default: all)")
      ->delimiter(',');
  sub->add_option("--fuse", o->fuse, "How rollout fuses heads: mean, max or min")->capture_default_str();
  sub->add_option("--discard", o->discard, "Share of each fused matrix's lowest entries rollout zeroes, in [0, 1)")
      ->capture_default_str();
  sub->add_option("--device", o->device, "cpu (the only device for now)");
  sub->add_flag("--json", o->json, "Print attn.json's content instead of a summary");
  sub->add_option("--out", o->out, "Output folder (created)");
  sub->add_option("images", o->images, "Image files");
  sub->callback([o] { run_attn(*o); });
}

}  // namespace tessera::cli
