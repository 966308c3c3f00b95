// `tessera attn`: a model's attention probabilities for some images, written as data, with maps over the
// last stage (CvT) or the patch grid (ViT): attention rollout, gradient-weighted rollout and relevance
// (--method). The math is models/attention_maps.h.
//
// DIR/attn.safetensors holds float32 tensors
//   layer.{L}.attention_probs   [images, heads kept, queries, keys] for every selected layer L
//   rollout, grad_rollout, relevance
//                               [images, rows, cols] each method's cls row on the query grid, max 1
//   rollout.pixels, ...         [images, H, W] CvT: the same carried through every stage to the pixels
// and __metadata__ whose values are JSON text: "layers" (per layer: stage, query_grid and key_grid as
// [rows, cols], cls_token, scale, heads kept, heads_total), "images" (the paths), "preprocessing" (the
// processor's preprocessor_config.json fields and channels), "model" (type, source, config), "predictions"
// (per image: file, index, label, prob, and explained: the class whose logit the gradient methods follow)
// and "maps" (per method: name, tensor, formula, fuse, discard, heads, the layers used, grid; rollout also
// cls_mass: per layer, per image, the mean attention on the cls key). Each layer also carries
// "statistics": per kept head, the entropy, mean attention distance and cls share over all the images
// (train/attention_page.h). DIR/attn.json holds the same metadata as one JSON object.
//
// DIR/png/ holds the heat maps (train/attention_page.h draws them; a build without cairo draws none) and
// DIR/index.html shows them per image with the method of each, and the statistics.
//
// With --data ROOT (run_on_data) a labelled folder is streamed instead: DIR/statistics.csv (per layer, head
// and class: entropy, mean distance, cls share, and importance), DIR/attn.safetensors with each method's
// mean map per class ("<method>.mean.<class>"), DIR/attn.json ("data": counts and accuracy per class,
// "layers" with "statistics", "statistics_by_class" and "importance", "maps", "masking", "importance") and
// DIR/index.html (the class means, the statistics against depth, the masking result).
//
// With --data the statistics come from each layer's q and k, a chunk of query rows at a time
// (train/attention_page.h add_streamed): no layer's Tq × Tk probabilities are formed for them, on either
// device; only the rolled-out layers' are, for the maps.
//
// --device cuda runs the passes (forward, and backward for the gradient methods) on the GPU with the
// probabilities composed there (softmax(q·kᵀ·scale), as on the CPU) and the streamed statistics computed
// there by the same ops; the probabilities and gradients the maps need come to the host, where the maps are
// made by the same code as on the CPU. tools/gpu_round.sh's attn step compares the two devices'
// attn.safetensors.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
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
#include "train/trainer.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct AttnOptions {
  std::string model, weights, checkpoint, config, device, out, fuse = "mean";
  std::string methods = "maps,rollout", target = "predicted";
  std::string data, split = "Testing", mask_heads;
  int64_t batch_size = 16;
  // From `methods`, once checked: the per-layer maps, and the maps over the rolled-out layers in order.
  bool layer_maps = false, importance = false;
  std::vector<models::MapMethod> map_methods;
  std::vector<int64_t> layers, heads, query;
  double discard = 0;
  bool json = false;
  std::vector<std::string> images;
};

// A method's tensor name in attn.safetensors: grad-rollout -> grad_rollout.
std::string map_tensor(models::MapMethod m) {
  std::string t = models::map_method_name(m);
  std::replace(t.begin(), t.end(), '-', '_');
  return t;
}

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
    for (int64_t l : o.layer_maps ? layers : std::vector<int64_t>{}) {
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
    for (const json& m : meta["maps"]) {
      const models::AttentionLayout& last = layouts[size_t(rollout.back())];
      const std::string tensor = m["tensor"].get<std::string>();
      const train::HeatMap h = train::query_grid_map(tensors.at(tensor).select(0, b), last);
      train::FigureRow row;
      row.title = m["title"].get<std::string>();
      if (m.contains("explained")) row.title += " · explaining " + m["explained"][size_t(b)].get<std::string>();
      row.method = m["formula"].get<std::string>();
      row.figures.push_back(picture(stem + tensor + ".png", train::heat_map_png(im, h, m["name"].get<std::string>()),
                                    m["name"].get<std::string>() + ", last stage"));
      if (m.contains("pixels") && m["pixels"]["tensor"].is_string()) {
        const std::string pt = m["pixels"]["tensor"].get<std::string>();
        const train::HeatMap px = train::pixel_map(tensors.at(pt).select(0, b), im.height, im.width);
        row.method += " Second picture: " + m["pixels"]["formula"].get<std::string>() +
                      train::fmt(" Here the cls entry held %.3f of the row.", m["pixels"]["cls_dropped"][size_t(b)].get<double>());
        std::string file = pt;
        std::replace(file.begin(), file.end(), '.', '_');
        row.figures.push_back(picture(stem + file + ".png", train::heat_map_png(im, px, m["name"].get<std::string>() + " · pixels"),
                                      m["name"].get<std::string>() + ", every stage, on the pixels"));
      }
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

// ---------------------------------------------------------------- a data set (--data)

struct DataRun {
  const AttnOptions& o;
  const models::ModelConfig& config;
  const ProcessorConfig& proc;
  const std::vector<models::AttentionLayout>& layouts;
  const std::vector<int64_t>& layers;   // whose statistics are kept
  const std::vector<int64_t>& rollout;  // the rolled-out layers (empty: no cls token)
  const models::MapOptions& map_options;
  const std::map<int64_t, Tensor>& gates;  // --mask-heads
  const std::string& masked;
  const std::optional<int64_t>& explained_class;  // --class as an index; none: predicted, or each label
  models::Model& model;
  Device device;  // the model's; the probabilities come back to the host for the running sums
};

// Streams a labelled folder through the model a batch at a time, keeping only running sums: per layer and
// head the statistics (overall and per class), per class the mean map of each --method (the gradient
// methods from one forward and backward per batch) and the mean input, accuracy and
// loss (with and without --mask-heads), and the heads' importance (--method importance). Memory does not grow
// with the folder: each batch's probabilities are dropped once summarised.
void run_on_data(const DataRun& r) {
  namespace fs = std::filesystem;
  const AttnOptions& o = r.o;
  const fs::path split_root = o.split.empty() ? fs::path(o.data) : fs::path(o.data) / o.split;
  if (!fs::is_directory(split_root))
    throw std::runtime_error("attn: " + split_root.string() + " is not a folder (--data ROOT --split NAME)");
  const std::vector<std::string> names = std::visit([](const auto& c) { return c.id2label; }, r.config);
  const DatasetSplit split = scan_by_name(split_root.string(), names, "the model");
  const int64_t C = int64_t(names.size());

  // Running sums.
  auto stats_of = [&] {
    std::vector<train::AttentionStatistics> v;
    for (int64_t l : r.layers) v.emplace_back(r.layouts[size_t(l)], o.heads);
    return v;
  };
  std::vector<train::AttentionStatistics> overall = stats_of();
  std::vector<std::vector<train::AttentionStatistics>> by_class;
  for (int64_t c = 0; c < C; ++c) by_class.push_back(stats_of());
  const bool maps = !r.rollout.empty() && !o.map_methods.empty();
  const bool gradients = maps && std::any_of(o.map_methods.begin(), o.map_methods.end(), models::needs_gradients);
  const models::AttentionLayout* last = r.rollout.empty() ? nullptr : &r.layouts[size_t(r.rollout.back())];
  const int64_t cells = last ? last->query_rows * last->query_cols : 0;
  // map_sum[method][class]: the sum of the class's images' maps.
  std::vector<std::vector<std::vector<double>>> map_sum(
      o.map_methods.size(), std::vector<std::vector<double>>(static_cast<size_t>(C), std::vector<double>(static_cast<size_t>(cells), 0.0)));
  std::vector<std::vector<double>> pixel_sum(static_cast<size_t>(C));
  std::vector<int64_t> seen(size_t(C), 0), correct(size_t(C), 0), correct_unmasked(size_t(C), 0);
  double loss = 0, loss_unmasked = 0;
  std::map<int64_t, std::vector<double>> importance;
  int64_t skipped = 0;

  // Each batch's statistics come from the layers' q and k (AttentionStatistics::add_streamed), so no layer's
  // Tq × Tk probabilities are formed for them; only the rolled-out layers' are, and only for the maps.
  models::AttentionCapture captured;
  models::AttentionHooks hooks =
      models::capture_attention(captured, r.layers, maps ? r.rollout : std::vector<int64_t>{});
  hooks.gates = r.gates;
  std::map<int64_t, Tensor> grads_by_layer;
  for (size_t start = 0; start < split.samples.size(); start += size_t(o.batch_size)) {
    std::vector<Image> images;
    std::vector<int64_t> labels;
    for (size_t i = start; i < std::min(split.samples.size(), start + size_t(o.batch_size)); ++i) {
      std::string warning;
      if (auto im = try_decode(split.samples[i], warning)) {
        images.push_back(std::move(*im));
        labels.push_back(split.samples[i].label);
      } else {
        std::cerr << "attn: skipped " << warning << "\n";
        ++skipped;
      }
    }
    if (images.empty()) continue;
    const int64_t B = int64_t(images.size());
    const Tensor pixels = preprocess_batch(images, r.proc);
    const Tensor on_device = pixels.to(r.device), target = Tensor::from(labels, {B}).to(r.device);
    images.clear();
    Generator unused(0);  // eval mode draws nothing
    auto score = [&](const Tensor& logits, std::vector<int64_t>& right, double& loss_sum) {
      loss_sum += cross_entropy(logits, target).item() * double(B);
      const std::vector<int64_t> pred = argmax(logits, 1).to_vector<int64_t>();
      for (int64_t b = 0; b < B; ++b) right[size_t(labels[size_t(b)])] += pred[size_t(b)] == labels[size_t(b)];
    };
    // One pass for q, k and the rolled-out probabilities (with their gradients when a gradient method is
    // asked for).
    captured = {}, grads_by_layer.clear();
    if (gradients) {
      std::vector<int64_t> classes;  // predicted: empty
      if (o.target == "label") classes = labels;
      else if (r.explained_class) classes.assign(size_t(B), *r.explained_class);
      models::AttentionGradients g = models::attention_gradients(r.model, on_device, r.rollout, classes, r.gates, r.layers);
      captured = {std::move(g.queries), std::move(g.keys), std::move(g.probs)};
      grads_by_layer = std::move(g.grads);
      score(g.logits, correct, loss);
    } else {
      NoGradGuard no_grad;
      r.model.set_attention_hooks(&hooks);
      const Tensor logits = r.model.forward(on_device, /*training=*/false, unused);
      r.model.set_attention_hooks(nullptr);
      score(logits, correct, loss);
    }
    for (auto* m : {&captured.probs, &grads_by_layer})  // the maps are made on the host
      for (auto& [l, t] : *m) t = t.to(Device::CPU);
    if (!r.gates.empty()) {
      NoGradGuard no_grad;
      score(r.model.forward(on_device, /*training=*/false, unused), correct_unmasked, loss_unmasked);
    }
    // Per class (every image has one), then the classes' sums into the total: each score computed once.
    for (size_t i = 0; i < r.layers.size(); ++i) {
      const int64_t l = r.layers[i];
      const Tensor &q = captured.queries.at(l), &k = captured.keys.at(l);
      const double scale = r.layouts[size_t(l)].scale;
      for (int64_t c = 0; c < C; ++c) {
        std::vector<int64_t> mine;
        for (int64_t b = 0; b < B; ++b)
          if (labels[size_t(b)] == c) mine.push_back(b);
        if (mine.empty()) continue;
        const Tensor images_of_c = Tensor::from(mine, {int64_t(mine.size())}).to(r.device);
        by_class[size_t(c)][i].add_streamed(index_select(q, 0, images_of_c), index_select(k, 0, images_of_c), scale);
      }
    }
    std::vector<std::vector<double>> map_values;  // per method, (B, cells)
    if (maps) {
      std::vector<Tensor> rolled_probs, rolled_grads;
      std::vector<models::AttentionLayout> rolled;
      for (int64_t l : r.rollout) {
        rolled_probs.push_back(captured.probs.at(l)), rolled.push_back(r.layouts[size_t(l)]);
        if (gradients) rolled_grads.push_back(grads_by_layer.at(l));
      }
      for (models::MapMethod m : o.map_methods) {
        models::MapOptions mo = r.map_options;
        mo.method = m;
        map_values.push_back(models::attention_map(rolled_probs, rolled_grads, rolled, mo).map.to_vector<double>());
      }
    }
    const std::vector<double> px = pixels.to(DType::f64).contiguous().to_vector<double>();
    const size_t plane = px.size() / size_t(B);
    for (int64_t b = 0; b < B; ++b) {
      const size_t c = size_t(labels[size_t(b)]);
      ++seen[c];
      if (pixel_sum[c].empty()) pixel_sum[c].assign(plane, 0.0);
      for (size_t k = 0; k < plane; ++k) pixel_sum[c][k] += px[size_t(b) * plane + k];
      for (size_t m = 0; m < map_values.size(); ++m)
        for (int64_t k = 0; k < cells; ++k) map_sum[m][c][size_t(k)] += map_values[m][size_t(b * cells + k)];
    }
    if (o.importance)
      for (auto& [l, v] : models::head_importance_sums(r.model, on_device, target)) {
        auto& acc = importance[l];
        if (acc.empty()) acc.assign(v.size(), 0.0);
        for (size_t h = 0; h < v.size(); ++h) acc[h] += v[h];
      }
  }
  for (size_t i = 0; i < r.layers.size(); ++i)
    for (int64_t c = 0; c < C; ++c) overall[i].merge(by_class[size_t(c)][i]);
  int64_t total = 0, right = 0, right_unmasked = 0;
  for (int64_t c = 0; c < C; ++c)
    total += seen[size_t(c)], right += correct[size_t(c)], right_unmasked += correct_unmasked[size_t(c)];
  if (total == 0) throw std::runtime_error("attn: " + split_root.string() + ": no image could be read");
  if (o.importance) importance = models::normalise_importance(importance);

  // attn.safetensors: the mean maps per class; attn.json and statistics.csv: the rest.
  std::map<std::string, Tensor> tensors;
  json classes = json::array();
  for (int64_t c = 0; c < C; ++c) {
    const int64_t n = seen[size_t(c)];
    classes.push_back({{"name", names[size_t(c)]}, {"images", n},
                       {"accuracy", n ? json(double(correct[size_t(c)]) / double(n)) : json()}});
    for (size_t m = 0; n && maps && m < o.map_methods.size(); ++m) {
      std::vector<float> mean(static_cast<size_t>(cells));
      for (int64_t k = 0; k < cells; ++k) mean[size_t(k)] = float(map_sum[m][size_t(c)][size_t(k)] / double(n));
      tensors[map_tensor(o.map_methods[m]) + ".mean." + names[size_t(c)]] =
          Tensor::from(mean, {last->query_rows, last->query_cols});
    }
  }
  json layer_meta = json::array();
  std::string csv = "layer,stage,head,class,images,entropy_nats,entropy_normalised,mean_distance_px,cls_share,importance\n";
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const int64_t l = r.layers[i];
    const models::AttentionLayout& a = r.layouts[size_t(l)];
    json per_class = json::object();
    for (int64_t c = 0; c < C; ++c)
      if (seen[size_t(c)]) per_class[names[size_t(c)]] = by_class[size_t(c)][i].to_json();
    json entry = {{"layer", l}, {"stage", a.stage}, {"query_grid", {a.query_rows, a.query_cols}},
                  {"key_grid", {a.key_rows, a.key_cols}}, {"cls_token", a.cls}, {"heads_total", a.heads},
                  {"statistics", overall[i].to_json()}, {"statistics_by_class", per_class}};
    if (o.importance) entry["importance"] = importance.at(l);
    auto rows = [&](const std::string& cls, const train::AttentionStatistics& st, bool with_importance) {
      const json j = st.to_json();
      for (size_t h = 0; h < j["heads"].size(); ++h) {
        const int64_t head = j["heads"][h].get<int64_t>();
        auto v = [&](const char* key) { return j[key][h].is_number() ? train::fmt("%.6g", j[key][h].get<double>()) : ""; };
        csv += std::to_string(l) + "," + std::to_string(a.stage) + "," + std::to_string(head) + "," + cls + "," +
               std::to_string(j["images"].get<int64_t>()) + "," + v("entropy_nats") + "," + v("entropy_normalised") +
               "," + v("mean_distance_px") + "," + v("cls_share") + "," +
               (with_importance ? train::fmt("%.6g", importance.at(l)[size_t(head)]) : "") + "\n";
      }
    };
    rows("all", overall[i], o.importance);
    for (int64_t c = 0; c < C; ++c)
      if (seen[size_t(c)]) rows(names[size_t(c)], by_class[size_t(c)][i], false);
    layer_meta.push_back(entry);
  }
  json preprocessing = processor_to_json(r.proc);
  preprocessing["channels"] = r.proc.channels;
  json meta = {{"model", {{"type", models::model_type(r.config)},
                          {"source", o.checkpoint.empty() ? o.weights : o.checkpoint},
                          {"config", models::config_to_json(r.config)}}},
               {"data", {{"root", o.data}, {"split", o.split}, {"images", total}, {"skipped", skipped},
                         {"accuracy", double(right) / double(total)}, {"loss", loss / double(total)},
                         {"classes", classes}}},
               {"preprocessing", preprocessing},
               {"layers", layer_meta}};
  meta["maps"] = json::array();
  for (size_t m = 0; maps && m < o.map_methods.size(); ++m) {
    json entry = {{"name", models::map_method_name(o.map_methods[m])},
                  {"tensor", map_tensor(o.map_methods[m]) + ".mean.<class>"}, {"layers", r.rollout}, {"heads", o.heads},
                  {"formula", "the mean over a class's images of each image's " +
                                  std::string(models::map_method_name(o.map_methods[m])) +
                                  " map (scaled to max 1 per image; models/README.md has the formula)"}};
    if (o.map_methods[m] == models::MapMethod::Rollout) entry["fuse"] = o.fuse;
    if (o.map_methods[m] != models::MapMethod::Relevance) entry["discard"] = o.discard;
    if (models::needs_gradients(o.map_methods[m]))
      entry["explained"] = o.target == "label" ? "each image's label"
                           : r.explained_class ? names[size_t(*r.explained_class)]
                                               : "each image's predicted class";
    meta["maps"].push_back(entry);
  }
  if (!r.gates.empty())
    meta["masking"] = {{"heads", o.mask_heads}, {"images", total},
                       {"description", "Each pass of this run had " + r.masked + " zeroed (a gate of 0 on the "
                                       "head's context); the statistics and maps are of that model. Accuracy and mean "
                                       "cross-entropy without and with the mask:"},
                       {"accuracy", double(right_unmasked) / double(total)}, {"accuracy_masked", double(right) / double(total)},
                       {"loss", loss_unmasked / double(total)}, {"loss_masked", loss / double(total)}};
  if (o.importance) {  // per layer under "layers"[i]["importance"] too; here with the method
    json by_layer = json::object();
    for (const auto& [l, v] : importance) by_layer[std::to_string(l)] = v;
    meta["importance"] = {{"method", "Michel, Levy & Neubig 2019: per head the mean over images of |dL/dg_h| for a gate "
                                     "g_h = 1 on its context (no head masked), L the cross-entropy of the image's "
                                     "label; unit L2 norm per layer"},
                          {"layers", by_layer}};
  }

  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) throw std::runtime_error("attn: --out " + o.out + ": cannot create the folder: " + ec.message());
  std::map<std::string, std::string> metadata;
  for (auto it = meta.begin(); it != meta.end(); ++it) metadata[it.key()] = dump_json(it.value());
  const std::string st = (fs::path(o.out) / "attn.safetensors").string();
  if (!tensors.empty()) save_safetensors(st, tensors, metadata);
  write_file_atomic((fs::path(o.out) / "attn.json").string(), dump_json(meta, 2) + "\n");
  write_file_atomic((fs::path(o.out) / "statistics.csv").string(), csv);

  // The page: per class its mean input and mean rollout map, then the statistics, charts and masking.
  const std::string png_dir = (fs::path(o.out) / "png").string();
  const bool drawing = train::figures_unavailable().empty();
  if (drawing) fs::create_directories(png_dir, ec);
  std::vector<train::ImageSection> sections;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t n = seen[size_t(c)];
    if (!n) continue;
    std::vector<double> mean_px = pixel_sum[size_t(c)];
    for (double& v : mean_px) v /= double(n);
    const Tensor mean_image = Tensor::from(mean_px, {1, r.proc.channels, r.proc.height, r.proc.width});
    const train::InputImage im = train::input_image(mean_image, 0);
    auto picture = [&](const std::string& name, std::optional<std::string> bytes, const std::string& caption) {
      train::Figure f{caption, ""};
      if (bytes) {
        write_file_atomic(png_dir + "/" + name, *bytes);
        f.src = "data:image/png;base64," + train::base64(*bytes);
      }
      return f;
    };
    train::ImageSection sec;
    sec.file = "class " + names[size_t(c)] + " (" + std::to_string(n) + " images)";
    sec.summary = train::fmt("accuracy %.4f on this class", double(correct[size_t(c)]) / double(n));
    sec.input = picture("class" + std::to_string(c) + "_input.png",
                        train::input_png(im, "mean input of " + names[size_t(c)]), "the class's mean input");
    if (maps) {
      train::FigureRow row;
      row.title = "mean maps over layers " + joined(r.rollout);
      row.method = "Each: the mean over the class's images of each image's map (scaled to max 1 per image), "
                   "drawn over the class's mean input.";
      for (size_t m = 0; m < o.map_methods.size(); ++m) {
        const std::string tensor = map_tensor(o.map_methods[m]), method = models::map_method_name(o.map_methods[m]);
        const train::HeatMap h = train::query_grid_map(tensors.at(tensor + ".mean." + names[size_t(c)]), *last);
        row.figures.push_back(picture("class" + std::to_string(c) + "_" + tensor + ".png",
                                      train::heat_map_png(im, h, "mean " + method + " · " + names[size_t(c)]),
                                      "mean " + method));
      }
      sec.rows.push_back(std::move(row));
    }
    sections.push_back(std::move(sec));
  }
  const std::string note = drawing ? "Streamed over " + std::to_string(total) + " images of " + split_root.string() +
                                         (skipped ? " (" + std::to_string(skipped) + " unreadable, skipped)" : "") +
                                         "; statistics.csv holds every layer, head and class."
                                   : "No pictures: " + std::string(train::figures_unavailable()) + ".";
  const std::string page = (fs::path(o.out) / "index.html").string();
  write_file_atomic(page, train::attention_page(meta, sections, note));

  if (o.json) {
    std::cout << dump_json(meta, 2) << "\n";
    return;
  }
  using train::fmt;
  std::cout << split_root.string() << ": " << total << " images" << (skipped ? " (" + std::to_string(skipped) + " skipped)" : "")
            << ", accuracy " << fmt("%.4f", double(right) / double(total)) << ", loss " << fmt("%.4f", loss / double(total));
  if (!r.gates.empty())
    std::cout << " (without the masked heads: accuracy " << fmt("%.4f", double(right_unmasked) / double(total))
              << ", loss " << fmt("%.4f", loss_unmasked / double(total)) << ")";
  std::cout << "\nwrote " << (fs::path(o.out) / "statistics.csv").string() << ", "
            << (fs::path(o.out) / "attn.json").string() << (tensors.empty() ? "" : ", " + st) << "\nwrote " << page << "\n";
}

void run_attn(AttnOptions o) {
  namespace fs = std::filesystem;
  // Every option is checked before the model loads, so a typo costs nothing.
  if (o.checkpoint.empty() == o.weights.empty())
    throw std::runtime_error("attn: give --weights FILE or --checkpoint DIR (exactly one)");
  if (o.images.empty() && o.data.empty()) throw std::runtime_error("attn: no images given (IMAGE... or --data ROOT)");
  if (!o.images.empty() && !o.data.empty())
    throw std::runtime_error("attn: give images or --data ROOT, not both");
  if (o.batch_size < 1) throw std::runtime_error("attn: --batch-size must be at least 1");
  if (o.out.empty()) throw std::runtime_error("attn: give --out DIR");
  const Device device = train::resolve_device(train::parse_device(o.device), std::cerr);
  if (!(o.discard >= 0 && o.discard < 1))
    throw std::runtime_error("attn: --discard " + json(o.discard).dump() + " is outside [0, 1)");
  models::MapOptions map_options;
  try {
    map_options.fusion = models::parse_head_fusion(o.fuse);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("attn: --fuse: ") + e.what());
  }
  for (size_t start = 0; start <= o.methods.size();) {
    const size_t end = std::min(o.methods.find(',', start), o.methods.size());
    const std::string word = o.methods.substr(start, end - start);
    start = end + 1;
    if (word == "maps" || word == "importance") {
      (word == "maps" ? o.layer_maps : o.importance) = true;
      continue;
    }
    try {
      const models::MapMethod m = models::parse_map_method(word);
      if (std::find(o.map_methods.begin(), o.map_methods.end(), m) == o.map_methods.end()) o.map_methods.push_back(m);
    } catch (const std::invalid_argument&) {
      throw std::runtime_error("attn: --method '" + word + "': known methods are maps, rollout, grad-rollout, relevance, importance");
    }
  }
  // Repeats would duplicate heads in the file and weigh them twice in the fusion.
  for (std::vector<int64_t>* v : {&o.layers, &o.heads}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  map_options.discard = o.discard;
  map_options.heads = o.heads;

  std::string processor_dir;
  if (!o.checkpoint.empty()) {
    processor_dir = train::resolve_checkpoint(o.checkpoint);
    o.weights = processor_dir + "/model.safetensors";
  }
  const models::ModelConfig config = resolve_model_config("attn", o.model, o.weights, o.config);
  const ProcessorConfig proc =
      processor_dir.empty() ? default_processor(config) : train::checkpoint_processor(processor_dir, config);
  const auto layouts = models::attention_layouts(config, proc.height, proc.width);
  const std::vector<std::string> labels = std::visit([](const auto& c) { return c.id2label; }, config);
  auto label_of = [&](int64_t c) { return c < int64_t(labels.size()) ? labels[size_t(c)] : "LABEL_" + std::to_string(c); };

  // --class: an index or a label name, or "predicted" (each image's own most probable class).
  std::optional<int64_t> explained_class;
  if (o.target == "label" && o.data.empty())
    throw std::runtime_error("attn: --class label explains each image's label, which only --data gives");
  if (o.target != "predicted" && o.target != "label") {
    for (size_t c = 0; c < labels.size(); ++c)
      if (labels[c] == o.target) explained_class = int64_t(c);
    if (!explained_class && !o.target.empty() && o.target.find_first_not_of("0123456789") == std::string::npos &&
        o.target.size() < 10 && std::stoll(o.target) < int64_t(labels.size()))
      explained_class = std::stoll(o.target);
    if (!explained_class) {
      std::string known;
      for (const std::string& l : labels) known += (known.empty() ? "" : ", ") + l;
      throw std::runtime_error("attn: --class " + o.target + ": not a class of the model (predicted, 0.." +
                               std::to_string(labels.size() - 1) + ", or one of " + known + ")");
    }
  }

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

  // --mask-heads L:H,...: those heads' contexts are multiplied by 0 in every pass (AttentionHooks::gates).
  std::map<int64_t, Tensor> gates;
  std::string masked;  // "layer L head H, ..." for the page
  for (size_t start = 0; !o.mask_heads.empty() && start <= o.mask_heads.size();) {
    const size_t end = std::min(o.mask_heads.find(',', start), o.mask_heads.size());
    const std::string item = o.mask_heads.substr(start, end - start);
    start = end + 1;
    const size_t colon = item.find(':');
    auto bad = [&](const std::string& why) { return std::runtime_error("attn: --mask-heads " + item + ": " + why); };
    int64_t l = -1, h = -1;
    try {
      size_t used = 0;
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      l = std::stoll(item.substr(0, colon), &used);
      if (used != colon) throw std::invalid_argument("layer");
      h = std::stoll(item.substr(colon + 1), &used);
      if (used != item.size() - colon - 1) throw std::invalid_argument("head");
    } catch (const std::exception&) {
      throw bad("give LAYER:HEAD pairs, like 3:0,3:2");
    }
    if (l < 0 || l >= count) throw bad("the model has layers 0.." + std::to_string(count - 1));
    const int64_t H = layouts[size_t(l)].heads;
    if (h < 0 || h >= H) throw bad("layer " + std::to_string(l) + " has heads 0.." + std::to_string(H - 1));
    if (!gates.count(l)) gates[l] = Tensor::ones({H});
    gates[l].data<float>()[h] = 0.0f;  // on the host; moved to the model's device below
    masked += (masked.empty() ? "" : ", ") + std::string("layer ") + std::to_string(l) + " head " + std::to_string(h);
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

  std::unique_ptr<models::Model> model = models::load_model(config, o.weights);
  model->to(device);
  for (auto& [l, g] : gates) g = g.to(device);
  if (!o.data.empty()) {
    DataRun run{o, config, proc, layouts, layers, rollout, map_options, gates, masked, explained_class, *model, device};
    run_on_data(run);
    return;
  }
  std::vector<Image> images;
  for (const std::string& path : o.images) images.push_back(decode_image(path));
  const Tensor pixels = preprocess_batch(images, proc);

  // One pass: in eval mode without gradients, or, for the gradient methods, a forward and backward with the
  // probabilities in the graph (models/attention_maps.h attention_gradients).
  std::vector<int64_t> watched = layers;
  watched.insert(watched.end(), rollout.begin(), rollout.end());
  // CvT's maps also go down through every stage to the pixels: that needs every layer.
  const bool to_pixels = !rollout.empty() && !o.map_methods.empty() && layouts.back().stage > 0;
  if (to_pixels)
    for (const auto& a : layouts) watched.push_back(a.layer);
  const bool gradients = !rollout.empty() && std::any_of(o.map_methods.begin(), o.map_methods.end(), models::needs_gradients);
  std::map<int64_t, Tensor> recorded, recorded_grads;
  std::vector<int64_t> explained;  // per image, the class the gradient methods explain
  Tensor logits;
  if (gradients) {
    std::vector<int64_t> classes;
    if (explained_class) classes.assign(size_t(pixels.size(0)), *explained_class);
    models::AttentionGradients g = models::attention_gradients(*model, pixels.to(device), watched, classes, gates);
    logits = g.logits.to(Device::CPU).to(DType::f64);
    recorded = std::move(g.probs), recorded_grads = std::move(g.grads), explained = std::move(g.classes);
  } else {
    models::AttentionCapture kept;
    models::AttentionHooks capture = models::capture_attention(kept, {}, watched);
    capture.gates = gates;
    NoGradGuard no_grad;
    Generator unused(0);  // eval mode draws nothing
    model->set_attention_hooks(&capture);
    logits = model->forward(pixels.to(device), /*training=*/false, unused).to(Device::CPU).to(DType::f64);
    model->set_attention_hooks(nullptr);
    recorded = std::move(kept.probs);
  }
  for (auto* m : {&recorded, &recorded_grads})  // the analysis below runs on the host
    for (auto& [l, t] : *m) t = t.to(Device::CPU);
  auto captured = [&](int64_t layer) {
    if (auto it = recorded.find(layer); it != recorded.end()) return it->second;
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

  // The maps over the rolled-out layers, one per method.
  json maps = json::array();
  if (!rollout.empty() && !o.map_methods.empty()) {
    std::vector<Tensor> probs, grads;
    std::vector<models::AttentionLayout> rolled;
    for (int64_t l : rollout) {
      probs.push_back(captured(l));
      if (gradients) grads.push_back(recorded_grads.at(l));
      rolled.push_back(layouts[size_t(l)]);
    }
    const models::AttentionLayout& last = rolled.back();
    const bool carried = !(last.kernel == 1 && last.stride == 1);
    auto grid = [](int64_t r, int64_t c) { return std::to_string(r) + "×" + std::to_string(c); };
    const std::string heads = o.heads.empty() ? "all heads" : "heads " + joined(o.heads);
    // How Ā_l reaches the query grid: ·S for CvT (its keys sit on a coarser grid).
    const std::string carry = carried ? "·S" : "";
    const std::string transport =
        carried ? " S (Tk × Tq) spreads key (a, b) uniformly over the query positions of its " + std::to_string(last.kernel) +
                      "×" + std::to_string(last.kernel) + " receptive field (stride " + std::to_string(last.stride) +
                      ", padding " + std::to_string(last.padding) + ") and the cls key onto the cls query (tessera's method "
                      "for queries and keys on different grids, models/attention_maps.h)."
                : "";
    const std::string map_of = " The map is R[cls, patches] on the " + grid(last.query_rows, last.query_cols) +
                               " query grid, scaled to max 1.";
    const std::string discard = json(o.discard).dump();
    for (models::MapMethod m : o.map_methods) {
      models::MapOptions mo = map_options;
      mo.method = m;
      const models::AttentionMap r = models::attention_map(probs, grads, rolled, mo);
      const std::string name = models::map_method_name(m), tensor = map_tensor(m);
      tensors[tensor] = r.map;
      json entry = {{"name", name}, {"tensor", tensor}, {"layers", rollout}, {"heads", o.heads},
                    {"grid", {last.query_rows, last.query_cols}}};
      if (m == models::MapMethod::Rollout) {
        entry["title"] = "attention rollout over layers " + joined(rollout);
        entry["fuse"] = o.fuse, entry["discard"] = o.discard;
        entry["formula"] = "Abnar & Zuidema 2020: Ā_l = fuse_heads(A_l)" + carry + " (" + o.fuse + " over " + heads +
                           "), Â_l = norm_rows(Ā_l + I) after zeroing the lowest " + discard +
                           " share of Ā_l's entries (never the cls token's own), R = Â_L ⋯ Â_1." + transport + map_of;
        json mass = json::object();
        for (size_t i = 0; i < rollout.size(); ++i) mass[std::to_string(rollout[i])] = r.cls_mass[i];
        entry["cls_mass"] = mass;  // per rolled-out layer, per image
      } else {
        json names = json::array();
        for (int64_t c : explained) names.push_back(label_of(c));
        entry["explained"] = names;
        if (m == models::MapMethod::GradRollout) {
          entry["title"] = "gradient-weighted rollout over layers " + joined(rollout);
          entry["discard"] = o.discard;
          entry["formula"] = "vit-explain's grad rollout: Ā_l = ReLU(mean over " + heads + " of A_l ⊙ ∂y_c/∂A_l)" + carry +
                             ", y_c the explained class's logit; Â_l = norm_rows(Ā_l + I) after zeroing the lowest " +
                             discard + " share of Ā_l's entries (never the cls token's own), R = Â_L ⋯ Â_1." +
                             transport + map_of;
        } else {
          entry["title"] = "relevance over layers " + joined(rollout);
          entry["formula"] = "Chefer, Gur & Wolf 2021: Ā_l = mean over " + heads + " of ReLU(∂y_c/∂A_l ⊙ A_l)" + carry +
                             ", y_c the explained class's logit; R ← R + Ā_l·R layer by layer from R = I." + transport +
                             map_of;
        }
      }
      if (to_pixels && o.discard == 0) {
        std::vector<Tensor> all_probs, all_grads;
        for (const auto& a : layouts) {
          all_probs.push_back(captured(a.layer));
          if (gradients) all_grads.push_back(recorded_grads.at(a.layer));
        }
        const models::PixelMaps pm = models::attention_map_to_pixels(all_probs, all_grads, layouts, mo);
        tensors[tensor + ".pixels"] = pm.pixels;
        entry["pixels"] = {{"tensor", tensor + ".pixels"},
                           {"cls_dropped", pm.cls_dropped},  // per image
                           {"formula", "tessera's chain through every stage: the cls row r of the last stage's "
                                       "product, its cls entry dropped (no ancestor below; cls_dropped is its share), "
                                       "is spread over each token's embedding receptive field (E, rows summing to 1) "
                                       "and multiplied through the stage below, layer by layer, down to the pixels; "
                                       "scaled to max 1."}};
      } else if (to_pixels) {
        entry["pixels"] = {{"tensor", nullptr}, {"why", "no map on the pixels with --discard (it would rank Tq × Tq "
                                                        "matrices the chain never forms)"}};
      }
      maps.push_back(entry);
    }
  }

  // Predictions: the most probable class per image.
  const Tensor probs = softmax(logits, -1);
  const std::vector<double> pv = probs.to_vector<double>();
  const int64_t n = probs.size(0), classes = probs.size(1);
  json predictions = json::array();
  for (int64_t i = 0; i < n; ++i) {
    const auto row = pv.begin() + i * classes;
    const int64_t best = int64_t(std::max_element(row, row + classes) - row);
    json p = {{"file", o.images[size_t(i)]}, {"index", best}, {"label", label_of(best)}, {"prob", row[best]}};
    if (!explained.empty()) p["explained"] = {{"index", explained[size_t(i)]}, {"label", label_of(explained[size_t(i)])}};
    predictions.push_back(p);
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
                     {"maps", maps}};
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
  for (const json& m : maps)
    std::cout << ", " << m["tensor"].get<std::string>() << " " << shape_str(tensors.at(m["tensor"].get<std::string>()).shape());
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
      "attn", "Write a model's attention probabilities and its rollout, grad-rollout and relevance maps for images "
              "(DIR/attn.safetensors, DIR/index.html)");
  sub->add_option("--checkpoint", o->checkpoint, "A training run directory (its best checkpoint) or a checkpoint directory");
  sub->add_option("--model", o->model, "Preset (cvt-13, vit-b16, ...); default: config.json beside the weights");
  sub->add_option("--weights", o->weights, "model.safetensors (Hugging Face layout), instead of --checkpoint");
  sub->add_option("--config", o->config, "A Hugging Face config.json of a cvt or vit model");
  sub->add_option("--layers", o->layers, "Layers to write, numbered through the model (default: all)")->delimiter(',');
  sub->add_option("--heads", o->heads, "Heads to keep, in the written layers and the rollout (default: all)")
      ->delimiter(',');
  sub->add_option("--method", o->methods,
                  "What to draw, comma-separated: maps (each selected layer's attention), rollout, grad-rollout, relevance")
      ->capture_default_str();
  sub->add_option("--class", o->target,
                  "The class grad-rollout and relevance explain: predicted, an index or a class name, or (with "
                  "--data) label, each image's own")
      ->capture_default_str();
  sub->add_option("--fuse", o->fuse, "How rollout fuses heads: mean, max or min")->capture_default_str();
  sub->add_option("--discard", o->discard,
                  "Share of each matrix's lowest entries rollout and grad-rollout zero, in [0, 1)")
      ->capture_default_str();
  sub->add_option("--device", o->device,
                  "cuda or cpu (default: cuda when present and verified); the probabilities are analysed on the host");
  sub->add_option("--query", o->query, "ROW,COL: also map that query patch's attention, in every selected layer "
                                       "whose query grid has it")
      ->delimiter(',');
  sub->add_flag("--json", o->json, "Print attn.json's content instead of a summary");
  sub->add_option("--out", o->out, "Output folder (created)");
  sub->add_option("--data", o->data, "A labelled folder: streamed statistics per layer, head and class instead of images");
  sub->add_option("--split", o->split, "With --data: the split folder under ROOT (\"\" for a flat ROOT/<class>)")
      ->capture_default_str();
  sub->add_option("--batch-size", o->batch_size, "With --data: images per forward pass")->capture_default_str();
  sub->add_option("--mask-heads", o->mask_heads, "LAYER:HEAD,...: run with those heads zeroed (with --data: "
                                                  "accuracy and loss with and without them)");
  sub->add_option("images", o->images, "Image files");
  sub->callback([o] { run_attn(*o); });
}

}  // namespace tessera::cli
