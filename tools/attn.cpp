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
// grid, and cls_mass: per layer, per image, the mean attention on the cls key). Each layer also carries
// "statistics": per kept head, the entropy, mean attention distance and cls share over all the images
// (train/attention_page.h). DIR/attn.json holds the same metadata as one JSON object.
//
// DIR/png/ holds the heat maps (train/attention_page.h draws them; a build without cairo draws none) and
// DIR/index.html shows them per image with the method of each, and the statistics.
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
#include "train/attention_page.h"
#include "train/checkpoint.h"
#include "train/report_text.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct AttnOptions {
  std::string model, weights, checkpoint, config, device, out, fuse = "mean";
  std::vector<int64_t> layers, heads, query;
  double discard = 0;
  bool json = false;
  std::vector<std::string> images;
};

// Embedded in index.html below this total; above it the page links png/ instead, so it stays quick to open.
constexpr size_t kEmbedLimit = 20u << 20;

std::string joined(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// The heat maps under DIR/png/ and DIR/index.html; returns the page's path and how its PNGs are stored.
template <typename Captured>
std::string write_pictures(const AttnOptions& o, const std::vector<models::AttentionLayout>& layouts,
                           const std::vector<int64_t>& layers, const std::vector<int64_t>& rollout,
                           const Captured& captured, const Tensor& pixels, const std::map<std::string, Tensor>& tensors,
                           const json& meta) {
  namespace fs = std::filesystem;
  const std::string png_dir = (fs::path(o.out) / "png").string();
  const bool drawing = train::figures_unavailable().empty();
  std::error_code ec;
  if (drawing) fs::create_directories(png_dir, ec);
  if (ec) throw std::runtime_error("attn: --out " + o.out + ": cannot create png/: " + ec.message());
  std::map<std::string, std::string> pngs;  // by src, png/NAME
  auto picture = [&](const std::string& name, std::optional<std::string> bytes, const std::string& caption) {
    train::Figure f{caption, ""};
    if (bytes) {
      write_file_atomic(png_dir + "/" + name, *bytes);
      f.src = "png/" + name;
      pngs[f.src] = std::move(*bytes);
    }
    return f;
  };
  auto grid = [](int64_t r, int64_t c) { return std::to_string(r) + "×" + std::to_string(c); };
  const std::string mean_of = o.heads.empty() ? "all heads" : "heads " + joined(o.heads);
  const json& predictions = meta["predictions"];
  std::vector<train::ImageSection> sections;
  for (int64_t b = 0; b < pixels.size(0); ++b) {
    const train::InputImage im = train::input_image(pixels, b);
    const std::string stem = std::to_string(b) + "_", file = fs::path(o.images[size_t(b)]).filename().string();
    train::ImageSection sec;
    sec.file = o.images[size_t(b)];
    sec.label = predictions[size_t(b)]["label"].get<std::string>();
    sec.prob = predictions[size_t(b)]["prob"].get<double>();
    sec.input = picture(stem + "input.png", train::input_png(im, file + " as the model saw it"),
                        "input, " + grid(im.height, im.width) + " px");
    for (int64_t l : layers) {
      const models::AttentionLayout& a = layouts[size_t(l)];
      const Tensor p = captured(l).select(0, b);
      const std::string name = stem + "layer" + std::to_string(l), title = "layer " + std::to_string(l);
      train::FigureRow row;
      if (a.cls) {
        row.title = title + " (stage " + std::to_string(a.stage) + "): the cls token's attention to the patches";
        row.method = "p[cls, k] for each patch key k of the " + grid(a.key_rows, a.key_cols) +
                     " key grid, per head and as the mean over " + mean_of + "; drawn between the keys' receptive-field "
                     "centres (bilinear), coloured from the map's minimum to its maximum.";
        std::vector<int64_t> kept = o.heads;
        if (kept.empty())
          for (int64_t h = 0; h < a.heads; ++h) kept.push_back(h);
        for (int64_t h : kept)
          row.figures.push_back(picture(name + "_head" + std::to_string(h) + ".png",
                                        train::heat_map_png(im, train::query_map(p, a, {h}, 0),
                                                            title + " · head " + std::to_string(h) + " · cls row"),
                                        "head " + std::to_string(h)));
        row.figures.push_back(picture(name + "_mean.png",
                                      train::heat_map_png(im, train::query_map(p, a, o.heads, 0), title + " · mean · cls row"),
                                      "mean"));
      } else {
        row.title = title + " (stage " + std::to_string(a.stage) + ", no cls token): the attention each key receives";
        row.method = "Σ_q p[q, k] over all " + std::to_string(a.queries()) + " queries for each key k of the " +
                     grid(a.key_rows, a.key_cols) + " key grid (the stride-" + std::to_string(a.stride) +
                     " key convolution's), averaged over " + mean_of + ".";
        row.figures.push_back(picture(name + "_keys.png",
                                      train::heat_map_png(im, train::key_map(p, a, o.heads), title + " · keys received"),
                                      "mean over heads"));
      }
      sec.rows.push_back(std::move(row));
    }
    if (!rollout.empty()) {
      const models::AttentionLayout& last = layouts[size_t(rollout.back())];
      train::HeatMap m{last.query_rows, last.query_cols, last.query_origin, last.query_step,
                       tensors.at("rollout").select(0, b).to(DType::f64).contiguous().to_vector<double>()};
      train::FigureRow row;
      row.title = "attention rollout over layers " + joined(rollout);
      const std::string common = "R = Â_L ⋯ Â_1 over those layers, map = R[cls, patches] on the " +
                                 grid(last.query_rows, last.query_cols) + " query grid, scaled to max 1 (fuse_heads: " +
                                 o.fuse + " over " + mean_of + "; discard " + json(o.discard).dump() + ").";
      row.method = last.kernel == 1 && last.stride == 1
                       ? "Â_l = norm_rows(fuse_heads(A_l) + I), " + common
                       : "Â_l = norm_rows(fuse_heads(A_l)·S + I), where S (Tk × Tq) spreads key (a, b) uniformly over "
                         "the query positions of its " + std::to_string(last.kernel) + "×" + std::to_string(last.kernel) +
                         " receptive field (stride " + std::to_string(last.stride) + ", padding " +
                         std::to_string(last.padding) + ") and the cls key onto the cls query; " + common;
      row.figures.push_back(picture(stem + "rollout.png", train::heat_map_png(im, m, "rollout"), "rollout"));
      sec.rows.push_back(std::move(row));
    }
    if (!o.query.empty()) {
      const int64_t r = o.query[0], c = o.query[1];
      train::FigureRow row;
      row.title = "query (" + std::to_string(r) + ", " + std::to_string(c) + ")";
      row.method = "p[q, k] of the query at row " + std::to_string(r) + ", column " + std::to_string(c) +
                   " of each selected layer's query grid that has it, over that layer's patch keys, averaged over " +
                   mean_of + ".";
      for (int64_t l : layers) {
        const models::AttentionLayout& a = layouts[size_t(l)];
        if (r >= a.query_rows || c >= a.query_cols) continue;
        const std::string title = "layer " + std::to_string(l) + " · query (" + std::to_string(r) + ", " + std::to_string(c) + ")";
        row.figures.push_back(picture(
            stem + "layer" + std::to_string(l) + "_query_" + std::to_string(r) + "_" + std::to_string(c) + ".png",
            train::heat_map_png(im, train::query_map(captured(l).select(0, b), a, o.heads, a.cls + r * a.query_cols + c), title),
            "layer " + std::to_string(l)));
      }
      sec.rows.push_back(std::move(row));
    }
    sections.push_back(std::move(sec));
  }

  size_t total = 0;
  for (const auto& [src, bytes] : pngs) total += bytes.size();
  const bool embed = total < kEmbedLimit;
  const std::string size = train::fmt("%.1f MB", double(total) / (1 << 20)), count = std::to_string(pngs.size()) + " PNGs";
  std::string note, how;
  if (!drawing) {
    note = "No pictures: " + std::string(train::figures_unavailable()) + ". The statistics below are complete.";
    how = "no PNGs";
  } else if (embed) {
    note = "The " + count + " (" + size + ") are embedded in this page; copies are in png/. Click a picture to enlarge it.";
    how = count + " embedded, copies in png/";
    auto inline_src = [&](train::Figure& f) {
      if (!f.src.empty()) f.src = "data:image/png;base64," + train::base64(pngs.at(f.src));
    };
    for (train::ImageSection& s : sections) {
      inline_src(s.input);
      for (train::FigureRow& r : s.rows)
        for (train::Figure& f : r.figures) inline_src(f);
    }
  } else {
    note = "The " + count + " (" + size + ", over " + std::to_string(kEmbedLimit >> 20) +
           " MB) are linked from png/ beside this page: keep the folder together. Click a picture to enlarge it.";
    how = count + " linked from png/";
  }
  const std::string path = (fs::path(o.out) / "index.html").string();
  write_file_atomic(path, train::attention_page(meta, sections, note));
  return path + " (" + how + ")";
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

  // --query ROW,COL: a query patch, on the query grid of every selected layer that has it.
  if (!o.query.empty()) {
    if (o.query.size() != 2 || o.query[0] < 0 || o.query[1] < 0)
      throw std::runtime_error("attn: --query " + joined(o.query) + ": give ROW,COL, two numbers from 0");
    std::string grids;
    bool found = false;
    for (int64_t l : layers) {
      const models::AttentionLayout& a = layouts[size_t(l)];
      found |= o.query[0] < a.query_rows && o.query[1] < a.query_cols;
      grids += (grids.empty() ? "" : ", ") + std::to_string(a.query_rows) + "x" + std::to_string(a.query_cols);
    }
    if (!found)
      throw std::runtime_error("attn: --query " + joined(o.query) + ": no selected layer's query grid has it (layers " +
                               joined(layers) + ": " + grids + ")");
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
    train::AttentionStatistics stats(a, kept);
    stats.add(captured(l));
    layer_meta.push_back({{"layer", l}, {"stage", a.stage}, {"query_grid", {a.query_rows, a.query_cols}},
                          {"key_grid", {a.key_rows, a.key_cols}}, {"cls_token", a.cls}, {"scale", a.scale},
                          {"heads", kept}, {"heads_total", a.heads}, {"statistics", stats.to_json()}});
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
  for (auto it = meta.begin(); it != meta.end(); ++it) metadata[it.key()] = dump_json(it.value());

  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) throw std::runtime_error("attn: --out " + o.out + ": cannot create the folder: " + ec.message());
  const std::string st = (fs::path(o.out) / "attn.safetensors").string();
  save_safetensors(st, tensors, metadata);
  write_file_atomic((fs::path(o.out) / "attn.json").string(), dump_json(meta, 2) + "\n");

  const std::string page = write_pictures(o, layouts, layers, rollout, captured, pixels, tensors, meta);

  if (o.json) {
    std::cout << dump_json(meta, 2) << "\n";
    return;
  }
  std::cout << "wrote " << st << ": " << layers.size() << " layer" << (layers.size() == 1 ? "" : "s") << " ("
            << joined(layers) << ")";
  if (tensors.count("rollout")) std::cout << ", rollout " << shape_str(tensors.at("rollout").shape());
  std::cout << "\n";
  for (const json& p : predictions)
    std::cout << "  " << p["file"].get<std::string>() << "  " << p["label"].get<std::string>() << "  "
              << p["prob"].get<double>() << "\n";
  std::cout << "wrote " << page << "\n";
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
  sub->add_option("--query", o->query, "ROW,COL: also map that query patch's attention, in every selected layer "
                                       "whose query grid has it")
      ->delimiter(',');
  sub->add_flag("--json", o->json, "Print attn.json's content instead of a summary");
  sub->add_option("--out", o->out, "Output folder (created)");
  sub->add_option("images", o->images, "Image files");
  sub->callback([o] { run_attn(*o); });
}

}  // namespace tessera::cli
