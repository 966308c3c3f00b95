// What `tessera attn` draws and summarises (tools/attn.cpp writes it): heat maps of attention over the
// input image as PNGs (cairo; a build without cairo draws none, and the page says why), per-layer, per-head
// statistics of the probabilities, and DIR/index.html, one offline page.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "models/attention_maps.h"
#include "train/report_figures.h"

namespace tessera::train {

// The viridis colour map, dark purple through blue and green to yellow, perceptually uniform and readable
// in gray; t in [0, 1] (clamped, non-finite is 0).
Rgb viridis(double t);

// Per-head statistics of one layer's attention, added one image at a time. For every patch query q (the cls
// query is left out) of every image added, per head:
//   entropy     H_q = −Σ_k p_qk·ln p_qk over all Tk keys (cls included), in nats, and H_q / ln Tk (1: uniform)
//   distance    Σ_k p_qk·‖centre(q) − centre(k)‖ over the patch keys, in input pixels (the layout's
//               receptive-field centres). The cls key has no place on the image and adds nothing, so a head
//               that rests on cls looks near; cls_share says how much that is.
//   cls_share   p_q,cls (0 without a cls token)
// and each is reported as its mean over those queries and images.
class AttentionStatistics {
 public:
  // heads: indices along the probabilities' head axis (all of the layout's heads when empty).
  AttentionStatistics(const models::AttentionLayout& layout, std::vector<int64_t> heads);
  // probs (B, heads, Tq, Tk) laid out as `layout`, any float dtype; only one image is converted at a time.
  // A shape that does not match throws std::invalid_argument naming the layer.
  void add(const Tensor& probs);
  // The same sums from the layer's split heads q (B, heads, Tq, D) and k (B, heads, Tk, D), on whatever
  // device they are, without the probabilities (the fused attention never forms them): the patch queries a
  // chunk of `rows` at a time, s = scale·q·kᵀ (B, heads kept, rows, Tk), lse = ln Σ_k exp s (after its row
  // maximum), p = exp(s − lse); entropy = lse − Σ_k p·s (= −Σ_k p·ln p; computed from s minus its row
  // maximum, so that neither term grows with the scores), distance = Σ_k p·d(q, k) with d
  // the chunk's query-to-key centre distances (0 for the cls key), cls share = p[·, cls]. At most rows·Tk
  // probabilities per image and head exist at once, however large Tq·Tk; the per-head sums come to the
  // host once per chunk. Arithmetic in f64 for f64 input, else f32.
  void add_streamed(const Tensor& q, const Tensor& k, double scale, int64_t rows = 256);
  // Adds another's sums: the same layer and heads (a data set's classes into its total).
  void merge(const AttentionStatistics& other);

  struct Head { double entropy = 0, entropy_normalised = 0, distance = 0, cls_share = 0; };
  std::vector<Head> heads() const;  // in the order given; NaN before any image
  // {"heads", "images", "entropy_nats", "entropy_normalised", "mean_distance_px", "cls_share"}, per head.
  nlohmann::json to_json() const;

 private:
  models::AttentionLayout layout_;
  std::vector<int64_t> heads_;
  std::vector<Head> sums_;
  int64_t images_ = 0, queries_ = 0;  // queries_: (image, patch query) pairs added, the same for every head
};

// A map to draw over the image: values on a grid whose cell (r, c) is centred at (origin + step·r,
// origin + step·c) in input pixels.
struct HeatMap {
  int64_t rows = 0, cols = 0;
  double origin = 0.5, step = 1;
  std::vector<double> values;  // rows·cols, row-major
};
// Maps from one image's probabilities p (heads, Tq, Tk) of `layout`, averaged over `heads` (all when empty),
// on the key grid:
//   query_map  the row of query token q (0: the cls token when the layout has one), p[q, patch keys]
//   key_map    the attention each key position receives, Σ_q p[q, k] over every query
HeatMap query_map(const Tensor& p, const models::AttentionLayout& layout, const std::vector<int64_t>& heads, int64_t q);
HeatMap key_map(const Tensor& p, const models::AttentionLayout& layout, const std::vector<int64_t>& heads);
// One image's map from models/attention_maps.h (any dtype): on the query grid of `layout` (attention_map's
// rows·cols), or on the input's pixels (attention_map_to_pixels' height·width, a cell per pixel).
HeatMap query_grid_map(const Tensor& values, const models::AttentionLayout& layout);
HeatMap pixel_map(const Tensor& values, int64_t height, int64_t width);

// The preprocessed input as the model saw it: image i of pixels (N, C, H, W), C = 1 or 3, stretched to
// [0, 1] by its own minimum and maximum (so the normalisation's offset and scale drop out), as RGB.
struct InputImage {
  int height = 0, width = 0;
  std::vector<double> rgb;  // height·width·3
};
InputImage input_image(const Tensor& pixels, int64_t i);

// The map's value at each of height × width pixels (scale display pixels per input pixel): bilinear between
// the four nearest cell centres, held constant beyond the outermost ones.
std::vector<double> upsample(const HeatMap& m, int height, int width, double scale = 1);
// PNG bytes, nullopt exactly when figures_unavailable() is not "". input_png: the image in colour under a
// title. heat_map_png: the image in gray with the map over it in viridis at 50% opacity, scaled from the
// map's minimum to its maximum, and a colour bar labelled with both. Images under 224 px are enlarged by a
// whole factor.
std::optional<std::string> input_png(const InputImage& image, const std::string& title);
std::optional<std::string> heat_map_png(const InputImage& image, const HeatMap& m, const std::string& title);

// The page: per image its input, prediction and rows of figures; then the statistics table from attn.json's
// "layers" (their "statistics" objects).
struct Figure {
  std::string caption;
  std::string src;  // a data: URI or a path relative to the page; "" when no PNG was drawn
};
struct FigureRow {
  std::string title, method;  // method: how the row's maps are computed, in words
  std::vector<Figure> figures;
};
struct ImageSection {
  std::string file, label;
  double prob = 0;
  Figure input;
  std::vector<FigureRow> rows;
  std::string summary;  // when set, shown instead of the prediction (a class's mean over a data set)
};
// meta: attn.json's object; note: how the PNGs are stored (embedded or beside the page), or why there are none.
// Below the table, the statistics against depth as charts (one dot per head), and, when meta holds them,
// the heads' importance ("importance" per layer) and the result of masking heads ("masking").
std::string attention_page(const nlohmann::json& meta, const std::vector<ImageSection>& images, const std::string& note);

}  // namespace tessera::train
