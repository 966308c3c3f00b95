// `tessera attn`'s drawings, statistics and page (see attention_page.h). TESSERA_HAS_CAIRO is set by CMake
// when pkg-config found cairo; without it the PNG functions return nullopt.
#include "train/attention_page.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/core/autograd.h"
#include "engine/ops.h"
#include "train/report_charts.h"
#include "train/report_text.h"

namespace tessera::train {

using json = nlohmann::json;

Rgb viridis(double t) {
  // viridis sampled at i/9, i = 0..9, mixed linearly between the stops: the largest deviation from the full
  // 256-entry map is a few levels of 255, invisible at 50% opacity.
  static const Rgb stops[] = {{68, 1, 84},    {72, 40, 120},  {62, 74, 137},  {49, 104, 142}, {38, 130, 142},
                              {31, 158, 137}, {53, 183, 121}, {109, 205, 89}, {180, 222, 44}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 9;
  const int i = std::min(int(t), 8);
  const double f = t - i;
  auto mix = [&](uint8_t a, uint8_t b) { return uint8_t(std::lround(a + (b - a) * f)); };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

namespace {

std::vector<int64_t> all_heads(std::vector<int64_t> heads, int64_t count) {
  if (heads.empty())
    for (int64_t h = 0; h < count; ++h) heads.push_back(h);
  return heads;
}

// One image's probabilities (heads, Tq, Tk) as float64, checked against the layout.
std::vector<double> one_image(const Tensor& p, const models::AttentionLayout& a, const std::vector<int64_t>& heads) {
  if (!p.defined() || p.dim() != 3 || p.size(1) != a.queries() || p.size(2) != a.keys())
    throw std::invalid_argument("layer " + std::to_string(a.layer) + ": attention " + (p.defined() ? p.str() : "undefined") +
                                " is not (heads, " + std::to_string(a.queries()) + ", " + std::to_string(a.keys()) + ")");
  for (int64_t h : heads)
    if (h < 0 || h >= p.size(0))
      throw std::invalid_argument("layer " + std::to_string(a.layer) + ": head " + std::to_string(h) + " does not exist");
  return p.to(DType::f64).contiguous().to_vector<double>();
}

// The receptive-field centres, in input pixels, of a layout's patch queries ((Tq − cls, 1) tensors) and of
// its keys ((1, Tk); the cls key has no place on the image and is masked out by `patch`), as tensors of `dt`
// on `device`. add_streamed makes them once per call on the model's device and slices them per chunk, so
// no Tq × Tk table is built on the host or copied across.
struct Centres {
  Tensor qy, qx, ky, kx, patch;
  Centres(const models::AttentionLayout& a, DType dt, Device device) : cls_(a.cls) {
    const int64_t Tq = a.queries(), Tk = a.keys(), n = Tq - cls_;
    std::vector<double> y(static_cast<size_t>(n)), x(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      y[size_t(i)] = a.query_origin + a.query_step * double(i / a.query_cols);
      x[size_t(i)] = a.query_origin + a.query_step * double(i % a.query_cols);
    }
    std::vector<double> key_y(static_cast<size_t>(Tk)), key_x(static_cast<size_t>(Tk)), mask(static_cast<size_t>(Tk));
    for (int64_t k = cls_; k < Tk; ++k) {
      key_y[size_t(k)] = a.key_origin + a.key_step * double((k - cls_) / a.key_cols);
      key_x[size_t(k)] = a.key_origin + a.key_step * double((k - cls_) % a.key_cols);
      mask[size_t(k)] = 1.0;
    }
    auto put = [&](const std::vector<double>& v, Shape shape) { return Tensor::from(v, shape).to(dt).to(device); };
    qy = put(y, {n, 1}), qx = put(x, {n, 1}), ky = put(key_y, {1, Tk}), kx = put(key_x, {1, Tk}), patch = put(mask, {1, Tk});
  }
  // d[i, k]: the distance from patch query r0 + i (token r0 + i; r0 ≥ cls) to key k, for the queries
  // r0 .. r1 − 1, (r1 − r0, Tk); 0 for the cls key.
  Tensor distances(int64_t r0, int64_t r1) const {
    const Tensor dy = sub(ky, qy.slice(0, r0 - cls_, r1 - cls_)), dx = sub(kx, qx.slice(0, r0 - cls_, r1 - cls_));
    return mul(sqrt(add(mul(dy, dy), mul(dx, dx))), patch);
  }

 private:
  int64_t cls_;
};

HeatMap key_grid(const models::AttentionLayout& a) {
  HeatMap m;
  m.rows = a.key_rows, m.cols = a.key_cols, m.origin = a.key_origin, m.step = a.key_step;
  m.values.assign(size_t(m.rows * m.cols), 0.0);
  return m;
}

}  // namespace

AttentionStatistics::AttentionStatistics(const models::AttentionLayout& layout, std::vector<int64_t> heads)
    : layout_(layout), heads_(all_heads(std::move(heads), layout.heads)), sums_(heads_.size()) {}

void AttentionStatistics::add(const Tensor& probs) {
  const models::AttentionLayout& a = layout_;
  if (!probs.defined() || probs.dim() != 4)
    throw std::invalid_argument("layer " + std::to_string(a.layer) + ": attention statistics need (B, heads, Tq, Tk) probabilities");
  const int64_t Tq = a.queries(), Tk = a.keys(), cls = a.cls;
  const std::vector<double> d = Centres(a, DType::f64, Device::CPU).distances(cls, Tq).to_vector<double>();
  for (int64_t b = 0; b < probs.size(0); ++b) {
    const std::vector<double> p = one_image(probs.select(0, b), a, heads_);
    for (size_t j = 0; j < heads_.size(); ++j)
      for (int64_t q = cls; q < Tq; ++q) {
        const double* row = p.data() + (heads_[j] * Tq + q) * Tk;
        const double* dq = d.data() + (q - cls) * Tk;
        double entropy = 0, distance = 0;
        for (int64_t k = 0; k < Tk; ++k)
          if (row[k] > 0) entropy -= row[k] * std::log(row[k]);  // 0·ln 0 = 0
        for (int64_t k = cls; k < Tk; ++k) distance += row[k] * dq[k];
        sums_[j].entropy += entropy;
        sums_[j].distance += distance;
        if (a.cls) sums_[j].cls_share += row[0];
      }
    ++images_;
    queries_ += Tq - cls;
  }
}

void AttentionStatistics::add_streamed(const Tensor& q, const Tensor& k, double scale, int64_t rows) {
  const models::AttentionLayout& a = layout_;
  const int64_t Tq = a.queries(), Tk = a.keys(), cls = a.cls;
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("layer " + std::to_string(a.layer) + ": streamed attention statistics: " + why);
  };
  if (rows < 1) throw bad("rows per chunk must be at least 1, got " + std::to_string(rows));
  if (!q.defined() || !k.defined() || q.dim() != 4 || q.size(1) != a.heads || q.size(2) != Tq ||
      k.shape() != Shape{q.size(0), a.heads, Tk, q.size(3)})
    throw bad("need q (B, " + std::to_string(a.heads) + ", " + std::to_string(Tq) + ", D) and k (B, " +
              std::to_string(a.heads) + ", " + std::to_string(Tk) + ", D); got " + (q.defined() ? q.str() : "none") +
              " and " + (k.defined() ? k.str() : "none"));
  for (int64_t h : heads_)
    if (h < 0 || h >= a.heads) throw bad("head " + std::to_string(h) + " does not exist");
  NoGradGuard no_grad;
  const int64_t B = q.size(0), H = int64_t(heads_.size());
  const DType dt = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor kept = Tensor::from(heads_, {H}).to(q.device());
  const Tensor qh = index_select(q.detach().to(dt), 1, kept), kt = index_select(k.detach().to(dt), 1, kept).transpose(-1, -2);
  const Centres centres(a, dt, q.device());
  for (int64_t r0 = cls; r0 < Tq; r0 += rows) {
    const int64_t r1 = std::min(Tq, r0 + rows);
    // z = s − max_k s, so that both terms of the entropy stay small whatever the scores' size (f32).
    const Tensor s = mul(matmul(qh.slice(2, r0, r1), kt), scale);  // (B, H, r1 − r0, Tk)
    const Tensor z = sub(s, max(s, {-1}, true));
    const Tensor lse = log(sum(exp(z), {-1}, true));               // of z
    const Tensor p = exp(sub(z, lse));
    const Tensor entropy = sub(lse, sum(mul(p, z), {-1}, true));    // −Σ p·ln p = lse − Σ p·z
    const Tensor d = centres.distances(r0, r1);  // (r1 − r0, Tk)
    auto per_head = [&](const Tensor& x) { return sum(x, {0, 2, 3}).to_vector<double>(); };
    const std::vector<double> e = per_head(entropy), dist = per_head(mul(p, d));
    const std::vector<double> share = cls ? per_head(p.slice(3, 0, 1)) : std::vector<double>(size_t(H), 0.0);
    for (int64_t j = 0; j < H; ++j) {
      sums_[size_t(j)].entropy += e[size_t(j)];
      sums_[size_t(j)].distance += dist[size_t(j)];
      sums_[size_t(j)].cls_share += share[size_t(j)];
    }
  }
  images_ += B;
  queries_ += B * (Tq - cls);
}

void AttentionStatistics::merge(const AttentionStatistics& other) {
  if (other.layout_.layer != layout_.layer || other.heads_ != heads_)
    throw std::invalid_argument("layer " + std::to_string(layout_.layer) + ": merging the statistics of layer " +
                                std::to_string(other.layout_.layer) + " or of other heads");
  for (size_t j = 0; j < sums_.size(); ++j) {
    sums_[j].entropy += other.sums_[j].entropy;
    sums_[j].distance += other.sums_[j].distance;
    sums_[j].cls_share += other.sums_[j].cls_share;
  }
  images_ += other.images_;
  queries_ += other.queries_;
}

std::vector<AttentionStatistics::Head> AttentionStatistics::heads() const {
  const double n = queries_ > 0 ? double(queries_) : NAN, log_tk = std::log(double(layout_.keys()));
  std::vector<Head> out;
  for (const Head& s : sums_)
    out.push_back({s.entropy / n, log_tk > 0 ? s.entropy / n / log_tk : NAN, s.distance / n, s.cls_share / n});
  return out;
}

json AttentionStatistics::to_json() const {
  json j = {{"heads", heads_}, {"images", images_}};
  for (const char* k : {"entropy_nats", "entropy_normalised", "mean_distance_px", "cls_share"}) j[k] = json::array();
  for (const Head& h : heads()) {
    j["entropy_nats"].push_back(h.entropy);
    j["entropy_normalised"].push_back(h.entropy_normalised);
    j["mean_distance_px"].push_back(h.distance);
    j["cls_share"].push_back(h.cls_share);
  }
  return j;
}

HeatMap query_map(const Tensor& p, const models::AttentionLayout& a, const std::vector<int64_t>& heads, int64_t q) {
  const std::vector<int64_t> hs = all_heads(heads, p.defined() && p.dim() == 3 ? p.size(0) : 0);
  const std::vector<double> v = one_image(p, a, hs);
  if (q < 0 || q >= a.queries())
    throw std::invalid_argument("layer " + std::to_string(a.layer) + ": query " + std::to_string(q) + " does not exist");
  HeatMap m = key_grid(a);
  const int64_t Tq = a.queries(), Tk = a.keys();
  for (int64_t h : hs)
    for (int64_t k = 0; k < int64_t(m.values.size()); ++k)
      m.values[size_t(k)] += v[size_t((h * Tq + q) * Tk + a.cls + k)] / double(hs.size());
  return m;
}

HeatMap query_grid_map(const Tensor& values, const models::AttentionLayout& layout) {
  return {layout.query_rows, layout.query_cols, layout.query_origin, layout.query_step,
          values.to(DType::f64).contiguous().to_vector<double>()};
}

HeatMap pixel_map(const Tensor& values, int64_t height, int64_t width) {
  return {height, width, 0.5, 1.0, values.to(DType::f64).contiguous().to_vector<double>()};
}

HeatMap key_map(const Tensor& p, const models::AttentionLayout& a, const std::vector<int64_t>& heads) {
  const std::vector<int64_t> hs = all_heads(heads, p.defined() && p.dim() == 3 ? p.size(0) : 0);
  const std::vector<double> v = one_image(p, a, hs);
  HeatMap m = key_grid(a);
  const int64_t Tq = a.queries(), Tk = a.keys();
  for (int64_t h : hs)
    for (int64_t q = 0; q < Tq; ++q)
      for (int64_t k = 0; k < int64_t(m.values.size()); ++k)
        m.values[size_t(k)] += v[size_t((h * Tq + q) * Tk + a.cls + k)] / double(hs.size());
  return m;
}

InputImage input_image(const Tensor& pixels, int64_t i) {
  if (!pixels.defined() || pixels.dim() != 4 || (pixels.size(1) != 1 && pixels.size(1) != 3))
    throw std::invalid_argument("input image: pixels must be (N, 1 or 3, H, W)");
  const std::vector<double> v = pixels.select(0, i).to(DType::f64).contiguous().to_vector<double>();
  const int64_t C = pixels.size(1), H = pixels.size(2), W = pixels.size(3);
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  const double range = *hi > *lo ? *hi - *lo : 1.0;
  InputImage im{int(H), int(W), std::vector<double>(size_t(H * W * 3))};
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < 3; ++c)
        im.rgb[size_t((y * W + x) * 3 + c)] = (v[size_t(((C == 3 ? c : 0) * H + y) * W + x)] - *lo) / range;
  return im;
}

std::vector<double> upsample(const HeatMap& m, int height, int width, double scale) {
  if (m.rows < 1 || m.cols < 1 || m.values.size() != size_t(m.rows * m.cols))
    throw std::invalid_argument("heat map: " + std::to_string(m.values.size()) + " values for a " +
                                std::to_string(m.rows) + "x" + std::to_string(m.cols) + " grid");
  // Display pixel i's centre is input coordinate (i + 0.5)/scale; on the grid that is u = (coordinate −
  // origin)/step, clamped to the outermost centres.
  auto cell = [&](int i, int64_t n, int64_t& i0, int64_t& i1, double& f) {
    const double u = std::clamp(((i + 0.5) / scale - m.origin) / m.step, 0.0, double(n - 1));
    i0 = std::min(int64_t(u), n - 1), i1 = std::min(i0 + 1, n - 1), f = u - double(i0);
  };
  std::vector<double> out(size_t(height) * size_t(width));
  for (int y = 0; y < height; ++y) {
    int64_t r0, r1;
    double fy;
    cell(y, m.rows, r0, r1, fy);
    for (int x = 0; x < width; ++x) {
      int64_t c0, c1;
      double fx;
      cell(x, m.cols, c0, c1, fx);
      auto at = [&](int64_t r, int64_t c) { return m.values[size_t(r * m.cols + c)]; };
      out[size_t(y) * size_t(width) + size_t(x)] =
          (1 - fy) * ((1 - fx) * at(r0, c0) + fx * at(r0, c1)) + fy * ((1 - fx) * at(r1, c0) + fx * at(r1, c1));
    }
  }
  return out;
}

#if TESSERA_HAS_CAIRO

namespace {

const Rgb kInk{33, 37, 41}, kMuted{108, 117, 125};
constexpr int kMargin = 8, kTop = 26, kBar = 14;

int enlargement(const InputImage& im) { return std::clamp(int(std::ceil(224.0 / std::max(im.height, im.width))), 1, 8); }

// The image (gray and the map's colours over it when `m` is given) under a title, a colour bar to its right.
std::string draw(const InputImage& im, const HeatMap* m, const std::string& title) {
  const int s = enlargement(im), w = im.width * s, h = im.height * s;
  std::vector<double> values;
  double lo = 0, hi = 0;
  if (m) {
    values = upsample(*m, h, w, s);
    lo = *std::min_element(m->values.begin(), m->values.end());
    hi = *std::max_element(m->values.begin(), m->values.end());
  }
  // 3 significant digits, more (up to 6) when those do not tell the ends of a nearly flat map apart.
  std::string lo_text, hi_text;
  for (const char* f : {"%.3g", "%.4g", "%.5g", "%.6g"})
    if ((lo_text = fmt(f, lo)) != (hi_text = fmt(f, hi))) break;
  Canvas measure(1, 1);
  measure.font(13, true);
  const double title_w = measure.width(title);
  measure.font(11);
  const double label_w = std::max(measure.width(lo_text), measure.width(hi_text));
  const int bar_x = kMargin + w + 10,
            width = std::max(m ? bar_x + kBar + 4 + int(std::ceil(label_w)) + kMargin : kMargin + w + kMargin,
                             int(std::ceil(title_w)) + 2 * kMargin),
            height = kTop + h + kMargin;
  Canvas c(width, height);
  c.font(13, true);
  c.text(kMargin, 17, title, kInk);
  std::vector<Rgb> px(size_t(w) * size_t(h));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double* p = im.rgb.data() + (size_t(y / s) * size_t(im.width) + size_t(x / s)) * 3;
      auto byte = [](double v) { return uint8_t(std::lround(std::clamp(v, 0.0, 1.0) * 255)); };
      Rgb& out = px[size_t(y) * size_t(w) + size_t(x)];
      if (!m) {
        out = {byte(p[0]), byte(p[1]), byte(p[2])};
        continue;
      }
      // Rec. 601 luma for the gray; the map's colour at 50% over it.
      const double gray = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      const Rgb v = viridis(hi > lo ? (values[size_t(y) * size_t(w) + size_t(x)] - lo) / (hi - lo) : 0.0);
      out = {byte((gray + v.r / 255.0) / 2), byte((gray + v.g / 255.0) / 2), byte((gray + v.b / 255.0) / 2)};
    }
  c.pixels(kMargin, kTop, w, h, px);
  if (m) {
    // The bar shows the map's colours at full strength, the maximum at the top.
    for (int y = 0; y < h; ++y) c.fill(bar_x, kTop + y, bar_x + kBar, kTop + y + 1, viridis(1 - double(y) / std::max(h - 1, 1)));
    c.font(11);
    c.text(bar_x + kBar + 4, kTop + 10, hi_text, kMuted);
    c.text(bar_x + kBar + 4, kTop + h, lo_text, kMuted);
  }
  return c.png("attn", title);
}

}  // namespace

std::optional<std::string> input_png(const InputImage& image, const std::string& title) { return draw(image, nullptr, title); }
std::optional<std::string> heat_map_png(const InputImage& image, const HeatMap& m, const std::string& title) {
  return draw(image, &m, title);
}

#else

std::optional<std::string> input_png(const InputImage&, const std::string&) { return std::nullopt; }
std::optional<std::string> heat_map_png(const InputImage&, const HeatMap& m, const std::string&) {
  (void)upsample(m, 1, 1);  // the same checks of the map as a build that draws
  return std::nullopt;
}

#endif

namespace {

const char* kStyle = R"css(
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#212529;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1400px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid #e9ecef}
h3{font-size:15px;margin:16px 0 4px}
section{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:18px 22px;margin:0 0 18px}
.sub,.method{color:#6c757d} .method{font-size:13px;margin:0 0 6px} .note{background:#fff9db;border:1px solid #ffe066;padding:8px 12px;border-radius:6px}
.figs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.fig{display:flex;flex-direction:column;font-size:11px;color:#495057;cursor:zoom-in}
.fig input{display:none} .fig img{height:120px;width:auto;border:1px solid #e9ecef;border-radius:4px}
.fig input:checked+img{height:auto;max-width:100%;cursor:zoom-out}
.missing{width:132px;height:120px;border:1px dashed #adb5bd;border-radius:4px;display:flex;align-items:center;justify-content:center}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} td,th{padding:3px 10px;text-align:right}
thead th{border-bottom:2px solid #dee2e6} td:first-child,th:first-child{text-align:left}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px;margin-top:12px}
)css";

// A figure: click the thumbnail to see it at full size (a hidden checkbox toggles the size; no script).
std::string figure(const Figure& f) {
  if (f.src.empty()) return "<div class='fig'><div class='missing'>no PNG</div>" + esc(f.caption) + "</div>";
  return "<label class='fig' title='click to enlarge'><input type='checkbox'><img src='" + esc(f.src) + "' alt='" +
         esc(f.caption) + "'>" + esc(f.caption) + "</label>";
}

std::string number(const json& v, const char* format) {
  return v.is_number() && std::isfinite(v.get<double>()) ? fmt(format, v.get<double>()) : "—";
}

// One row per layer (the mean over its heads), then every head in a collapsed table.
std::string statistics_table(const json& layers) {
  const std::string head = "<thead><tr><th>layer</th><th>stage</th><th>head</th><th>entropy (nats)</th>"
                           "<th>entropy / ln T<sub>k</sub></th><th>mean distance (px)</th><th>cls share</th></tr></thead><tbody>";
  std::string summary = "<table>" + head, detail = "<table>" + head;
  const char* keys[] = {"entropy_nats", "entropy_normalised", "mean_distance_px", "cls_share"};
  const char* formats[] = {"%.3f", "%.3f", "%.1f", "%.3f"};
  for (const json& l : layers) {
    const json& st = field(l, "statistics");
    if (!st.is_object()) continue;
    const std::string lead = "<tr><td>" + text_of(field(l, "layer")) + "</td><td>" + text_of(field(l, "stage")) + "</td>";
    summary += lead + "<td>mean</td>";
    for (int k = 0; k < 4; ++k) {
      double sum = 0;
      for (const json& v : field(st, keys[k])) sum += v.is_number() ? v.get<double>() : NAN;
      const size_t n = field(st, keys[k]).size();
      summary += "<td>" + number(n ? json(sum / double(n)) : json(), formats[k]) + "</td>";
    }
    summary += "</tr>";
    const json& heads = field(st, "heads");
    for (size_t h = 0; h < heads.size(); ++h) {
      detail += lead + "<td>" + text_of(heads[h]) + "</td>";
      for (int k = 0; k < 4; ++k) {
        const json& v = field(st, keys[k]);
        detail += "<td>" + number(h < v.size() ? v[h] : json(), formats[k]) + "</td>";
      }
      detail += "</tr>";
    }
  }
  return summary + "</tbody></table><details><summary>every head</summary>" + detail + "</tbody></table></details>";
}

// The statistics (and the importance, when there) against depth: one dot per head at its layer's index.
std::string depth_charts(const json& layers) {
  auto chart = [&](const std::string& title, const std::string& ylabel, const std::string& key, bool importance) {
    Chart c;
    c.title = title, c.xlabel = "layer", c.ylabel = ylabel, c.integer_x = true;
    Series dots;
    dots.name = "one dot per head", dots.color = "#4c78a8", dots.stroke = 0, dots.dots = true;
    for (const json& l : layers) {
      const json& values = importance ? field(l, "importance") : field(field(l, "statistics"), key.c_str());
      if (!values.is_array()) continue;
      for (const json& v : values)
        if (v.is_number()) dots.points.emplace_back(field(l, "layer").get<double>(), v.get<double>());
    }
    c.series.push_back(dots);
    return line_chart(c);
  };
  std::string s = chart("Mean attention distance by depth", "input pixels", "mean_distance_px", false) +
                  chart("Attention entropy by depth", "entropy / ln Tk", "entropy_normalised", false) +
                  chart("Share of attention on the cls token by depth", "share", "cls_share", false) +
                  chart("Head importance by depth (Michel et al. 2019, unit norm per layer)", "importance", "", true);
  return s.empty() ? "" : "<div class='charts'>" + s + "</div>";
}

}  // namespace

std::string attention_page(const json& meta, const std::vector<ImageSection>& images, const std::string& note) {
  const json& model = field(meta, "model");
  std::string s = "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tessera attn — " +
                  esc(text_of(field(model, "type"))) + "</title><style>" + kStyle + kChartStyle + "</style></head><body><main>";
  // The images the page speaks for: a data set's count (its sections are classes) or the files given.
  const json& data_images = field(field(meta, "data"), "images");
  const int64_t n = data_images.is_number_integer() ? data_images.get<int64_t>() : int64_t(field(meta, "images").size());
  s += "<h1>Attention maps</h1><p class='sub'>" + esc(text_of(field(model, "type"))) + " · " +
       esc(text_of(field(model, "source"))) + " · " + std::to_string(n) + " image" + (n == 1 ? "" : "s") + "</p>";
  s += "<p class='note'>" + esc(note) + "</p>";
  for (const ImageSection& im : images) {
    s += "<section><h2>" + esc(im.file) + "</h2><p>" +
         (im.summary.empty() ? "prediction: <b>" + esc(im.label) + "</b> (probability " + fmt("%.4f", im.prob) + ")"
                             : esc(im.summary)) +
         "</p><div class='figs'>" + figure(im.input) + "</div>";
    for (const FigureRow& row : im.rows) {
      s += "<h3>" + esc(row.title) + "</h3><p class='method'>" + esc(row.method) + "</p><div class='figs'>";
      for (const Figure& f : row.figures) s += figure(f);
      s += "</div>";
    }
    s += "</section>";
  }
  s += "<section><h2>Statistics per layer and head</h2><p class='method'>Over the patch queries of every image "
       "(the cls query left out), averaged: the entropy of each query's attention over all keys, in nats and "
       "divided by ln T<sub>k</sub> (1 is uniform); the mean attention distance Σ<sub>k</sub> p<sub>qk</sub>·‖centre(q) − "
       "centre(k)‖ over the patch keys, with receptive-field centres in input pixels (the cls key adds nothing); "
       "and the share of attention on the cls key.</p>" +
       statistics_table(field(meta, "layers")) + depth_charts(field(meta, "layers")) + "</section>";
  if (const json& m = field(meta, "masking"); m.is_object())
    s += "<section><h2>Heads masked</h2><p class='method'>" + esc(text_of(field(m, "description"))) + "</p><p>" +
         "accuracy " + number(field(m, "accuracy"), "%.4f") + " → " + number(field(m, "accuracy_masked"), "%.4f") +
         ", mean loss " + number(field(m, "loss"), "%.4f") + " → " + number(field(m, "loss_masked"), "%.4f") + " over " +
         text_of(field(m, "images")) + " images</p></section>";
  return s + "</main></body></html>\n";
}

}  // namespace tessera::train
