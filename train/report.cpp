// The training report (see report.h): run.json, metrics.jsonl and eval_Testing.json become one offline HTML
// page (inline CSS, SVG charts drawn here, images as data: URIs) and a confusion-matrix PNG whose text is
// stb_easy_font's quads rasterised into the pixel buffer.
#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <vector>

// STATIC: the tests carry their own stb_image_write implementation, and both must link into one program.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_easy_font.h>
#include <stb_image_write.h>

#include "data/image.h"
#include "engine/core/fileio.h"
#include "train/metrics.h"

namespace tessera::train {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------- reading the run's files

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is the useful part.
std::string json_message(const std::exception& e) {
  std::string s = e.what();
  size_t p = s.find("] ");
  return s.rfind("[json.exception.", 0) == 0 && p != std::string::npos ? s.substr(p + 2) : s;
}

json read_json(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": invalid JSON: " + json_message(e));
  }
}

// A field for display: absent (or null) is an empty json, never an exception.
const json& at(const json& j, const char* key) {
  static const json none;
  if (!j.is_object()) return none;
  auto it = j.find(key);
  return it == j.end() ? none : *it;
}

std::string text_of(const json& j) {
  if (j.is_null()) return "—";
  return j.is_string() ? j.get<std::string>() : j.dump();
}

// NaN when absent or null (nlohmann writes a non-finite loss as null).
double num(const json& j, const char* key) {
  const json& v = at(j, key);
  return v.is_number() ? v.get<double>() : NAN;
}

// The metrics as they stand after every resume: a line for global step g replaces all steps from g on and
// every epoch that ended at or after g; a line for epoch e replaces epochs from e on. So the later line wins
// and a resumed run's stale tail (logged before the kill, not yet redone) disappears.
struct Metrics {
  bool present = false;
  std::map<int64_t, json> steps;   // by global_step
  std::map<int64_t, json> epochs;  // by epoch
};

Metrics read_metrics(const std::string& path) {
  Metrics m;
  if (!fs::exists(path)) return m;
  m.present = true;
  const std::string text = read_file(path);
  size_t pos = 0;
  for (int line_no = 1; pos < text.size(); ++line_no) {
    size_t end = text.find('\n', pos);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto fail = [&](const std::string& why) {
      return std::runtime_error(path + " line " + std::to_string(line_no) + ": " + why);
    };
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      if (!complete) break;  // a run being written (or killed mid-write) may end in half a line
      throw fail("invalid JSON: " + json_message(e));
    }
    if (!j.is_object()) throw fail("not a JSON object");
    const std::string event = at(j, "event").is_string() ? j["event"].get<std::string>() : "";
    auto integer = [&](const char* key) {
      if (!at(j, key).is_number_integer()) throw fail(std::string("\"") + key + "\" missing or not an integer");
      return j[key].get<int64_t>();
    };
    if (event == "step") {
      const int64_t g = integer("global_step");
      m.steps.erase(m.steps.lower_bound(g), m.steps.end());
      std::erase_if(m.epochs, [&](const auto& e) { return num(e.second, "global_step") > double(g); });
      m.steps[g] = std::move(j);
    } else if (event == "epoch") {
      const int64_t e = integer("epoch");
      m.epochs.erase(m.epochs.lower_bound(e), m.epochs.end());
      m.epochs[e] = std::move(j);
    }  // other events are not charted
  }
  return m;
}

struct Prediction {
  std::string path;
  int label = 0, pred = 0;
  double prob = NAN;  // of the predicted class
  bool novel = false;
};

struct Eval {
  std::string checkpoint;
  std::vector<std::string> classes;
  double accuracy = 0;
  int64_t total = 0;
  std::vector<ClassMetrics> per_class;
  ClassMetrics macro, weighted;
  std::vector<std::vector<int64_t>> confusion;
  json novel;  // null when the run had no novel list
  double loss = NAN;
  int64_t skipped = 0;  // unreadable images, left out of every number
  std::vector<Prediction> predictions;
};

ClassMetrics class_metrics(const json& j) {
  return {j.at("precision").get<double>(), j.at("recall").get<double>(), j.at("f1").get<double>(),
          j.at("support").get<int64_t>()};
}

Eval read_eval(const std::string& path) {
  const json j = read_json(path);
  Eval e;
  try {
    e.checkpoint = text_of(at(j, "checkpoint"));
    e.classes = j.at("classes").get<std::vector<std::string>>();
    e.accuracy = j.at("accuracy").get<double>();
    e.total = j.at("total").get<int64_t>();
    for (const json& c : j.at("per_class")) e.per_class.push_back(class_metrics(c));
    e.macro = class_metrics(j.at("macro_avg"));
    e.weighted = class_metrics(j.at("weighted_avg"));
    e.confusion = j.at("confusion_matrix").get<std::vector<std::vector<int64_t>>>();
    e.novel = at(j, "novel");
    e.loss = num(j, "loss");
    if (at(j, "skipped").is_number_integer()) e.skipped = j["skipped"].get<int64_t>();
    const int n = int(e.classes.size());
    for (const json& p : at(j, "predictions")) {
      Prediction q{p.at("path").get<std::string>(), p.at("label").get<int>(), p.at("pred").get<int>()};
      if (q.label < 0 || q.label >= n || q.pred < 0 || q.pred >= n)
        throw std::runtime_error("prediction for " + q.path + " has a label outside the " + std::to_string(n) + " classes");
      const json& probs = at(p, "probs");
      if (probs.is_array() && size_t(q.pred) < probs.size() && probs[size_t(q.pred)].is_number())
        q.prob = probs[size_t(q.pred)].get<double>();
      q.novel = at(p, "novel").is_boolean() && p["novel"].get<bool>();
      e.predictions.push_back(std::move(q));
    }
  } catch (const json::exception& ex) {
    throw std::runtime_error(path + ": " + json_message(ex));
  } catch (const std::runtime_error& ex) {
    throw std::runtime_error(path + ": " + ex.what());
  }
  const size_t n = e.classes.size();
  bool square = e.confusion.size() == n;
  for (const auto& row : e.confusion) square = square && row.size() == n;
  if (n == 0 || !square || e.per_class.size() != n)
    throw std::runtime_error(path + ": confusion_matrix and per_class must have one row per class (" +
                             std::to_string(n) + " classes)");
  return e;
}

// ---------------------------------------------------------------- formatting and encoding

std::string esc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  return out;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string f4(double v) { return std::isfinite(v) ? fmt("%.4f", v) : "—"; }
std::string pct(double v) { return std::isfinite(v) ? fmt("%.1f%%", 100 * v) : "—"; }

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    const size_t k = std::min<size_t>(3, in.size() - i);
    uint32_t v = 0;
    for (size_t b = 0; b < 3; ++b) v = v << 8 | (b < k ? uint8_t(in[i + b]) : 0u);
    for (size_t c = 0; c < 4; ++c) out += c <= k ? t[(v >> (18 - 6 * c)) & 63] : '=';
  }
  return out;
}

void append_bytes(void* out, void* data, int size) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(data), size_t(size));
}

std::string encode(const Image& im, bool jpeg) {
  std::string out;
  const int ok = jpeg ? stbi_write_jpg_to_func(append_bytes, &out, im.width, im.height, 3, im.rgb.data(), 85)
                      : stbi_write_png_to_func(append_bytes, &out, im.width, im.height, 3, im.rgb.data(), im.width * 3);
  if (!ok) throw std::runtime_error("report: cannot encode a " + std::to_string(im.width) + "x" +
                                    std::to_string(im.height) + " image");
  return out;
}

struct Rgb { uint8_t r, g, b; };

// matplotlib's "Blues" (what scikit-learn's ConfusionMatrixDisplay uses), t in [0, 1].
Rgb blues(double t) {
  static const Rgb stops[] = {{247, 251, 255}, {198, 219, 239}, {107, 174, 214}, {33, 113, 181}, {8, 48, 107}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(int(t), 3);
  const double f = t - i;
  auto mix = [&](uint8_t a, uint8_t b) { return uint8_t(std::lround(a + (b - a) * f)); };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}
std::string css(Rgb c) { return "rgb(" + std::to_string(c.r) + "," + std::to_string(c.g) + "," + std::to_string(c.b) + ")"; }

// Cells are shaded by their share of the true class (row), so a small class's errors show as clearly as a
// large one's; dark cells get white text.
double row_share(const std::vector<int64_t>& row, size_t j) {
  int64_t sum = 0;
  for (int64_t v : row) sum += v;
  return sum > 0 ? double(row[j]) / double(sum) : 0.0;
}

// ---------------------------------------------------------------- the confusion-matrix PNG

// stb_easy_font knows printable ASCII only (it indexes a table by char - 32).
std::string ascii(std::string s) {
  for (char& c : s)
    if (c < 32 || c > 126) c = '?';
  return s;
}
int text_width(const std::string& s, int scale) { return stb_easy_font_width(ascii(s).data()) * scale; }
constexpr int kGlyphHeight = 7;  // stb_easy_font's capital and digit height at scale 1

struct Canvas {
  Image im;
  Canvas(int w, int h) : im(w, h) { std::fill(im.rgb.begin(), im.rgb.end(), uint8_t(255)); }

  void fill(int x0, int y0, int x1, int y1, Rgb c) {
    x0 = std::max(x0, 0), y0 = std::max(y0, 0), x1 = std::min(x1, im.width), y1 = std::min(y1, im.height);
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        uint8_t* p = im.pixel(x, y);
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
      }
  }

  // Text whose top-left corner is (x, y); `up` turns it to read bottom to top with (x, y) its bottom-left.
  void text(int x, int y, const std::string& s, int scale, Rgb c, bool up = false) {
    std::string a = ascii(s);
    std::vector<char> buf(a.size() * 320 + 64);  // stb_easy_font's estimate: ~270 bytes per character
    const int quads = stb_easy_font_print(0, 0, a.data(), nullptr, buf.data(), int(buf.size()));
    for (int q = 0; q < quads; ++q) {
      float lo[2] = {1e9f, 1e9f}, hi[2] = {-1e9f, -1e9f};
      for (int v = 0; v < 4; ++v) {  // each vertex: x, y, z (floats), then 4 colour bytes
        float xy[2];
        std::memcpy(xy, buf.data() + q * 64 + v * 16, sizeof xy);
        for (int k = 0; k < 2; ++k) lo[k] = std::min(lo[k], xy[k]), hi[k] = std::max(hi[k], xy[k]);
      }
      const int qx0 = int(lo[0]) * scale, qx1 = int(hi[0]) * scale, qy0 = int(lo[1]) * scale, qy1 = int(hi[1]) * scale;
      if (up) fill(x + qy0, y - qx1, x + qy1, y - qx0, c);
      else fill(x + qx0, y + qy0, x + qx1, y + qy1, c);
    }
  }
};

// A class name broken at '_' into at most 3 lines (glioma / tumor), or whole.
std::vector<std::string> name_parts(const std::string& name) {
  std::vector<std::string> parts;
  for (size_t p = 0, q; p <= name.size(); p = q + 1) {
    q = std::min(name.find('_', p), name.size());
    parts.push_back(name.substr(p, q - p));
  }
  return parts.size() <= 3 ? parts : std::vector<std::string>{name};
}
int widest(const std::vector<std::string>& lines, int scale) {
  int w = 0;
  for (const auto& l : lines) w = std::max(w, text_width(l, scale));
  return w;
}
// The narrowest a class name gets at scale 2 (whole or broken at '_').
int label_width(const std::string& name) { return std::min(text_width(name, 2), widest(name_parts(name), 2)); }

// A class name in a box `width` pixels wide: whole at scale 2, else broken at '_' at 2, else at 1, else
// shortened with "..".
struct Label { std::vector<std::string> lines; int scale; };
Label fit_label(const std::string& name, int width) {
  if (text_width(name, 2) <= width) return {{name}, 2};
  if (widest(name_parts(name), 2) <= width) return {name_parts(name), 2};
  if (text_width(name, 1) <= width) return {{name}, 1};
  std::string s = name;
  while (s.size() > 1 && text_width(s + "..", 1) > width) s.pop_back();
  return {{s + ".."}, 1};
}

Image draw_confusion(const Eval& e) {
  // About 680 x 520 for a few classes; wider for long class names (up to a point: then scale 1), larger for many.
  const int n = int(e.classes.size());
  int name_w = 0;
  for (const auto& name : e.classes) name_w = std::min(std::max(name_w, label_width(name)), 250);
  const int left = std::max(170, name_w + 44), top = 64, grid_w = std::max({490, 44 * n, (name_w + 12) * n}),
            grid_h = std::max(360, 34 * n);
  const int width = left + grid_w + 24, height = top + grid_h + 96;
  Canvas c(width, height);
  const Rgb ink{33, 37, 41}, muted{108, 117, 125}, white{255, 255, 255}, rule{173, 181, 189};
  auto cx = [&](int j) { return left + grid_w * j / n; };
  auto cy = [&](int i) { return top + grid_h * i / n; };

  const std::string title = "Confusion matrix - Testing";
  c.text((width - text_width(title, 2)) / 2, 14, title, 2, ink);
  const std::string sub = "rows: true class   columns: predicted class   shading: share of the row";
  c.text((width - text_width(sub, 1)) / 2, 40, sub, 1, muted);

  c.fill(left - 1, top - 1, left + grid_w + 1, top + grid_h + 1, rule);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double share = row_share(e.confusion[size_t(i)], size_t(j));
      const int x0 = cx(j), x1 = cx(j + 1) - 1, y0 = cy(i), y1 = cy(i + 1) - 1;  // 1 px rule between cells
      c.fill(x0, y0, x1, y1, blues(share));
      const Rgb fg = share > 0.5 ? white : ink;
      const std::string count = std::to_string(e.confusion[size_t(i)][size_t(j)]), p = fmt("%.1f%%", 100 * share);
      const int scale = text_width(count, 2) + 6 <= x1 - x0 ? 2 : 1;
      const bool room = y1 - y0 >= 3 * kGlyphHeight * scale && text_width(p, 1) + 6 <= x1 - x0;
      const int block = kGlyphHeight * scale + (room ? 6 + kGlyphHeight : 0);
      const int ty = (y0 + y1 - block) / 2;
      c.text((x0 + x1 - text_width(count, scale)) / 2, ty, count, scale, fg);
      if (room) c.text((x0 + x1 - text_width(p, 1)) / 2, ty + kGlyphHeight * scale + 6, p, 1, fg);
    }

  // Class names: right-aligned left of the rows, centred under the columns.
  for (int i = 0; i < n; ++i) {
    Label l = fit_label(e.classes[size_t(i)], left - 44);
    const int line_h = (kGlyphHeight + 5) * l.scale, block = line_h * int(l.lines.size()) - 5 * l.scale;
    int y = (cy(i) + cy(i + 1) - block) / 2;
    for (const auto& s : l.lines) c.text(left - 8 - text_width(s, l.scale), y, s, l.scale, ink), y += line_h;
  }
  for (int j = 0; j < n; ++j) {
    Label l = fit_label(e.classes[size_t(j)], cx(j + 1) - cx(j) - 6);
    int y = top + grid_h + 10;
    for (const auto& s : l.lines)
      c.text((cx(j) + cx(j + 1) - text_width(s, l.scale)) / 2, y, s, l.scale, ink), y += (kGlyphHeight + 5) * l.scale;
  }
  c.text(left + (grid_w - text_width("predicted", 2)) / 2, height - 24, "predicted", 2, ink);
  c.text(12, top + (grid_h + text_width("true", 2)) / 2, "true", 2, ink, /*up=*/true);
  return c.im;
}

// ---------------------------------------------------------------- SVG charts

// A rough width of 12 px sans-serif text, for laying out legends and label columns.
double est_width(const std::string& s, double px = 12) { return double(s.size()) * px * 0.56; }

// About `target` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
double tick_step(double lo, double hi, int target) {
  const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw))), f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

// Tick labels: plain decimals, or for tiny values (learning rates) short exponent notation: 2.5e-5.
std::string tick_label(double v, double step) {
  if (std::abs(v) < step * 1e-6) return "0";
  if (step < 1e-3) {
    std::string t = fmt("%.3g", v);
    for (const char* zero : {"e-0", "e+0"})
      if (size_t p = t.find(zero); p != std::string::npos) t.erase(p + 2, 1);
    return t;
  }
  const int decimals = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
  return fmt(("%." + std::to_string(decimals) + "f").c_str(), v);
}

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // non-finite values are skipped
  double stroke = 2, opacity = 1;
  bool dashed = false, dots = false;
};

struct Chart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  std::optional<double> marker;  // the best epoch, as an x value
  std::string marker_label;
  std::optional<std::pair<double, double>> y_range;  // fixed (accuracy: 0..1); else from the data
  bool integer_x = false;
};

std::string line_chart(const Chart& c) {
  const double W = 600, H = 320, L = 66, R = 20, B = 48;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : c.series)
    for (auto [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y))
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (!std::isfinite(x0)) return "";
  // The legend runs in rows above the plot.
  // The legend runs in rows above the plot; the best-epoch marker is explained there, never over the data.
  std::string legend;
  double lx = L, ly = 42;
  auto entry = [&](const std::string& name, const std::string& color, bool dashed, double stroke) {
    const double w = 26 + est_width(name) + 18;
    if (lx + w > W - R && lx > L) lx = L, ly += 18;
    legend += "<line x1='" + fmt("%.0f", lx) + "' y1='" + fmt("%.0f", ly - 4) + "' x2='" + fmt("%.0f", lx + 20) +
              "' y2='" + fmt("%.0f", ly - 4) + "' stroke='" + color + "' stroke-width='" + fmt("%g", stroke) + "'" +
              (dashed ? " stroke-dasharray='5 3'" : "") + "/><text x='" + fmt("%.0f", lx + 26) + "' y='" +
              fmt("%.0f", ly) + "'>" + esc(name) + "</text>";
    lx += w;
  };
  for (const auto& s : c.series) entry(s.name, s.color, s.dashed, 3);
  if (c.marker) entry(c.marker_label, "#c92a2a", true, 1.5);
  const double T = ly + 16;
  if (c.y_range) y0 = c.y_range->first, y1 = c.y_range->second;
  if (y1 - y0 < 1e-12 * std::max(1.0, std::abs(y1))) y0 -= std::max(std::abs(y0) * 0.1, 1e-12), y1 += std::max(std::abs(y1) * 0.1, 1e-12);
  const double ys = tick_step(y0, y1, 5);
  if (!c.y_range) y0 = std::floor(y0 / ys) * ys, y1 = std::ceil(y1 / ys) * ys;
  if (x1 == x0) x0 -= 1, x1 += 1;
  const double xs = c.integer_x ? std::max(1.0, std::round(tick_step(x0, x1, 8))) : tick_step(x0, x1, 6);
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - B - T); };
  auto num = [](double v) { return fmt("%.1f", v); };

  std::string s = "<svg class='chart' viewBox='0 0 600 320' role='img' aria-label='" + esc(c.title) + "'>";
  s += "<text class='title' x='" + num(L) + "' y='20'>" + esc(c.title) + "</text>" + legend;
  for (double t = std::ceil(y0 / ys - 1e-9) * ys; t <= y1 + ys * 1e-9; t += ys)
    s += "<line class='grid' x1='" + num(L) + "' x2='" + num(W - R) + "' y1='" + num(py(t)) + "' y2='" + num(py(t)) +
         "'/><text class='tick' x='" + num(L - 6) + "' y='" + num(py(t) + 4) + "' text-anchor='end'>" +
         tick_label(t, ys) + "</text>";
  for (double t = std::ceil(x0 / xs - 1e-9) * xs; t <= x1 + xs * 1e-9; t += xs)
    s += "<line class='axis' x1='" + num(px(t)) + "' x2='" + num(px(t)) + "' y1='" + num(H - B) + "' y2='" +
         num(H - B + 5) + "'/><text class='tick' x='" + num(px(t)) + "' y='" + num(H - B + 18) +
         "' text-anchor='middle'>" + tick_label(t, xs) + "</text>";
  s += "<polyline class='axis' points='" + num(L) + "," + num(T) + " " + num(L) + "," + num(H - B) + " " + num(W - R) +
       "," + num(H - B) + "'/>";
  s += "<text class='label' x='" + num((L + W - R) / 2) + "' y='" + num(H - 8) + "' text-anchor='middle'>" + esc(c.xlabel) + "</text>";
  s += "<text class='label' transform='translate(16 " + num((T + H - B) / 2) + ") rotate(-90)' text-anchor='middle'>" +
       esc(c.ylabel) + "</text>";
  if (c.marker)
    s += "<line class='best' x1='" + num(px(*c.marker)) + "' x2='" + num(px(*c.marker)) + "' y1='" + num(T) + "' y2='" +
         num(H - B) + "'/>";
  for (const auto& se : c.series) {
    std::string pts;
    for (auto [x, y] : se.points)
      if (std::isfinite(x) && std::isfinite(y)) pts += num(px(x)) + "," + num(py(y)) + " ";
    s += "<polyline fill='none' stroke='" + se.color + "' stroke-width='" + fmt("%g", se.stroke) + "' stroke-opacity='" +
         fmt("%g", se.opacity) + "'" + (se.dashed ? " stroke-dasharray='5 3'" : "") + " stroke-linejoin='round' points='" +
         pts + "'/>";
    if (se.dots || se.points.size() == 1)
      for (auto [x, y] : se.points)
        if (std::isfinite(x) && std::isfinite(y))
          s += "<circle cx='" + num(px(x)) + "' cy='" + num(py(y)) + "' r='3' fill='" + se.color + "'/>";
  }
  return s + "</svg>";
}

const char* kPalette[] = {"#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"};

// Horizontal bars, one per class: class names read in full on the left, counts at the bars' ends.
std::string bar_chart(const std::string& split, const std::vector<std::string>& names, const std::vector<int64_t>& counts) {
  const double W = 420, row = 26, T = 34;
  double name_w = 0;
  for (const auto& n : names) name_w = std::max(name_w, est_width(n));
  const double L = std::min(190.0, name_w + 16), R = 48, H = T + row * double(names.size()) + 44;
  int64_t total = 0, top = 1;
  for (int64_t v : counts) total += v, top = std::max(top, v);
  const double step = std::max(1.0, tick_step(0, double(top), 4)), x1 = std::ceil(double(top) / step) * step;
  auto px = [&](double v) { return L + v / x1 * (W - L - R); };
  auto num = [](double v) { return fmt("%.1f", v); };
  std::string s = "<svg class='chart bars' viewBox='0 0 420 " + num(H) + "' role='img' aria-label='" + esc(split) + "'>";
  s += "<text class='title' x='8' y='20'>" + esc(split) + " (" + std::to_string(total) + " images)</text>";
  for (double t = 0; t <= x1 + 1e-9; t += step)
    s += "<line class='grid' x1='" + num(px(t)) + "' x2='" + num(px(t)) + "' y1='" + num(T) + "' y2='" + num(H - 38) +
         "'/><text class='tick' x='" + num(px(t)) + "' y='" + num(H - 24) + "' text-anchor='middle'>" +
         tick_label(t, step) + "</text>";
  for (size_t i = 0; i < names.size(); ++i) {
    const double y = T + row * double(i), v = i < counts.size() ? double(counts[i]) : 0;
    s += "<text class='tick' x='" + num(L - 6) + "' y='" + num(y + row / 2 + 4) + "' text-anchor='end'>" + esc(names[i]) +
         "</text><rect x='" + num(L) + "' y='" + num(y + 4) + "' width='" + num(px(v) - L) + "' height='" + num(row - 8) +
         "' fill='" + kPalette[i % 8] + "'/><text class='tick' x='" + num(px(v) + 4) + "' y='" + num(y + row / 2 + 4) +
         "'>" + std::to_string(int64_t(v)) + "</text>";
  }
  s += "<line class='axis' x1='" + num(L) + "' x2='" + num(L) + "' y1='" + num(T) + "' y2='" + num(H - 38) + "'/>";
  s += "<text class='label' x='" + num((L + W - R) / 2) + "' y='" + num(H - 6) + "' text-anchor='middle'>images</text>";
  return s + "</svg>";
}

// ---------------------------------------------------------------- the page

const char* kStyle = R"css(
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#212529;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h3{font-size:15px;margin:18px 0 8px}
h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid #e9ecef}
section{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:18px 22px;margin:0 0 18px}
.sub{color:#6c757d} .note{background:#fff9db;border:1px solid #ffe066;padding:8px 12px;border-radius:6px}
.banner{background:#c92a2a;color:#fff;font-weight:600;padding:12px 16px;border-radius:6px;margin:0 0 18px}
.meta{display:grid;grid-template-columns:repeat(4,1fr);gap:6px 24px;margin:12px 0} .meta .wide{grid-column:span 2}
.meta b{display:block;color:#6c757d;font-weight:500;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
pre{background:#f1f3f5;padding:10px 12px;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere;margin:6px 0}
.opts{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:2px 24px;font-size:13px}
.opts div{overflow-wrap:anywhere} .opts span{color:#6c757d}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 150px;border:1px solid #e9ecef;border-radius:8px;padding:10px 14px;background:#f8f9fa}
.card b{display:block;font-size:22px;font-variant-numeric:tabular-nums} .card span{color:#6c757d;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
.bars-row{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px}
svg.chart{width:100%;height:auto;border:1px solid #e9ecef;border-radius:6px}
svg text{font-size:12px;fill:#495057} svg .title{font-size:14px;font-weight:600;fill:#212529} svg .label{fill:#212529}
svg .grid{stroke:#e9ecef} svg .axis{stroke:#868e96;fill:none} svg .best{stroke:#c92a2a;stroke-dasharray:5 3}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} td,th{padding:4px 10px}
.report td,.report thead th{text-align:right} .report td:first-child{text-align:left}
.report thead th{border-bottom:2px solid #dee2e6} .report tr.sep td{padding-top:10px;border-top:1px solid #dee2e6}
.cm th{font-weight:500;font-size:12px;text-align:right} .cm th.col{text-align:center;vertical-align:bottom;max-width:84px}
.cm td{width:84px;height:54px;text-align:center;border:1px solid #fff}
.cm td small{display:block;font-size:11px;opacity:.85} .cm .corner{font-size:11px;color:#6c757d}
.results{display:flex;flex-wrap:wrap;gap:16px 40px;align-items:flex-start}
img.cmpng{max-width:100%;border:1px solid #e9ecef;border-radius:6px}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:132px;padding:4px;border:3px solid #2b8a3e;border-radius:6px;background:#f8f9fa}
figure.wrong{border-color:#c92a2a;background:#fff5f5}
figure .img{height:112px;display:flex;align-items:center;justify-content:center}
figcaption{font-size:11px;line-height:1.35;margin-top:4px}
figcaption .file{font-weight:600;white-space:nowrap;text-overflow:ellipsis;overflow:hidden} figcaption .bad{color:#c92a2a;font-weight:700}
.tag{background:#364fc7;color:#fff;border-radius:3px;padding:0 4px;font-size:10px}
)css";

std::string meta_item(const std::string& name, const std::string& value, bool wide = false) {
  return std::string(wide ? "<div class='wide'>" : "<div>") + "<b>" + esc(name) + "</b>" + esc(value) + "</div>";
}

std::string card(const std::string& value, const std::string& caption) {
  return "<div class='card'><b>" + esc(value) + "</b><span>" + esc(caption) + "</span></div>";
}

std::string classification_table(const Eval& e) {
  std::vector<double> novel_recall;
  if (at(e.novel, "per_class_recall").is_array())
    for (const json& v : e.novel["per_class_recall"]) novel_recall.push_back(v.is_number() ? v.get<double>() : NAN);
  const bool novel = novel_recall.size() == e.classes.size();
  std::string s = "<table class='report'><thead><tr><th></th><th>precision</th><th>recall</th><th>f1-score</th><th>support</th>" +
                  std::string(novel ? "<th>novel recall</th>" : "") + "</tr></thead><tbody>";
  auto row = [&](const std::string& name, const ClassMetrics& m, const std::string& extra, const char* cls) {
    s += std::string("<tr") + cls + "><td>" + esc(name) + "</td><td>" + f4(m.precision) + "</td><td>" + f4(m.recall) +
         "</td><td>" + f4(m.f1) + "</td><td>" + std::to_string(m.support) + "</td>" +
         (novel ? "<td>" + extra + "</td>" : "") + "</tr>";
  };
  for (size_t i = 0; i < e.classes.size(); ++i) row(e.classes[i], e.per_class[i], novel ? f4(novel_recall[i]) : "", "");
  s += "<tr class='sep'><td>accuracy</td><td></td><td></td><td>" + f4(e.accuracy) + "</td><td>" + std::to_string(e.total) +
       "</td>" + (novel ? "<td>" + f4(num(e.novel, "accuracy")) + "</td>" : "") + "</tr>";
  row("macro avg", e.macro, "", "");
  row("weighted avg", e.weighted, "", "");
  return s + "</tbody></table>";
}

// A class name that may wrap after its underscores only (glioma_ / tumor), never inside a word.
std::string breakable(const std::string& name) {
  std::string s = esc(name);
  for (size_t p = 0; (p = s.find('_', p)) != std::string::npos; p += 6) s.insert(p + 1, "<wbr>");
  return s;
}

std::string confusion_table(const Eval& e) {
  std::string s = "<table class='cm'><tr><th class='corner'>true \\ predicted</th>";
  for (const auto& c : e.classes) s += "<th class='col'>" + breakable(c) + "</th>";
  s += "</tr>";
  for (size_t i = 0; i < e.classes.size(); ++i) {
    s += "<tr><th>" + esc(e.classes[i]) + "</th>";
    for (size_t j = 0; j < e.classes.size(); ++j) {
      const double share = row_share(e.confusion[i], j);
      s += "<td style='background:" + css(blues(share)) + ";color:" + (share > 0.5 ? "#fff" : "#212529") + "'>" +
           std::to_string(e.confusion[i][j]) + "<small>" + pct(share) + "</small></td>";
    }
    s += "</tr>";
  }
  return s + "</table>";
}

// For each class, up to 4 correct and 4 wrong Testing images in file order, as ~112 px JPEG thumbnails.
std::string thumbnails(const Eval& e) {
  constexpr int kPerKind = 4, kSize = 112;
  std::string s, skipped;
  for (size_t c = 0; c < e.classes.size(); ++c) {
    int shown[2] = {0, 0}, total = 0, correct = 0;
    std::string figs[2];
    for (const Prediction& p : e.predictions) {
      if (size_t(p.label) != c) continue;
      const bool right = p.label == p.pred;
      ++total, correct += right;
      if (shown[right] == kPerKind) continue;
      Image im;
      try {
        im = decode_image(p.path);
      } catch (const ImageError& err) {
        skipped += "<li>" + esc(err.what()) + "</li>";
        continue;
      }
      const double f = std::min(1.0, double(kSize) / std::max(im.width, im.height));
      im = resize(im, std::max(1, int(std::lround(im.width * f))), std::max(1, int(std::lround(im.height * f))), Filter::Bilinear);
      ++shown[right];
      const std::string file = fs::path(p.path).filename().string();
      figs[right] += std::string("<figure class='") + (right ? "right" : "wrong") + "' title='" + esc(p.path) +
                     "'><div class='img'><img alt='" + esc(file) + "' width='" + std::to_string(im.width) +
                     "' height='" + std::to_string(im.height) + "' src='data:image/jpeg;base64," +
                     base64(encode(im, true)) + "'></div><figcaption><div class='file'>" + esc(file) +
                     "</div>true: " + breakable(e.classes[size_t(p.label)]) + "<br>" +
                     (right ? "&#10003; pred: " : "<span class='bad'>&#10007; pred: ") +
                     breakable(e.classes[size_t(p.pred)]) + (right ? "" : "</span>") + "<br>" +
                     (std::isfinite(p.prob) ? "p = " + fmt("%.2f", p.prob) : "") +
                     (p.novel ? " <span class='tag'>novel</span>" : "") + "</figcaption></figure>";
    }
    s += "<h3>" + esc(e.classes[c]) + " <span class='sub'>— " + std::to_string(correct) + " of " +
         std::to_string(total) + " correct</span></h3>";
    s += total == 0 ? "<p class='sub'>No predictions for this class.</p>" : "<div class='thumbs'>" + figs[1] + figs[0] + "</div>";
  }
  if (!skipped.empty()) s += "<p class='note'>Images that could not be read were skipped:</p><ul>" + skipped + "</ul>";
  return s;
}

std::string render(const json& run, const Metrics& m, const std::optional<Eval>& e, const std::string& png,
                   const std::string& run_dir) {
  std::vector<std::string> classes;
  if (at(run, "classes").is_array())
    for (const json& c : run["classes"]) classes.push_back(text_of(c));
  const json& data = at(run, "data");
  const std::string model = text_of(at(run, "model"));

  // The best epoch: the last one marked best (each marks a new best on validation).
  std::optional<int64_t> best;
  for (const auto& [epoch, j] : m.epochs)
    if (at(j, "best").is_boolean() && j["best"].get<bool>()) best = epoch;

  std::string h = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
                  "content='width=device-width,initial-scale=1'><title>" + esc(model) + " training report — tessera</title><style>" +
                  kStyle + "</style></head><body><main>";
  if (at(data, "synthetic").is_boolean() && data["synthetic"].get<bool>())
    h += "<div class='banner'>SYNTHETIC DATA — this run trained and was evaluated on generated images, not the "
         "real data set. Its numbers say nothing about real performance.</div>";

  // ---- header
  h += "<section><h1>Training report: " + esc(model) + "</h1><div class='sub'>" + esc(run_dir) + " · started " +
       esc(text_of(at(run, "started"))) + " · tessera " + esc(text_of(at(run, "tessera_version"))) + "</div>";
  std::string class_list;
  for (const auto& c : classes) class_list += (class_list.empty() ? "" : ", ") + c;
  h += "<div class='meta'>" + meta_item("model", model) + meta_item("device", text_of(at(run, "device"))) +
       meta_item("precision", text_of(at(run, "precision"))) + meta_item("image size", text_of(at(run, "image_size"))) +
       meta_item(std::to_string(classes.size()) + " classes", class_list, true) +
       meta_item("data root", text_of(at(data, "root")), true) +
       "</div><b>command</b><pre>" + esc(text_of(at(run, "command"))) + "</pre>";
  if (at(run, "options").is_object() && !run["options"].empty()) {
    h += "<h3>options</h3><div class='opts'>";
    for (const auto& [k, v] : run["options"].items()) h += "<div><span>" + esc(k) + "</span> " + esc(text_of(v)) + "</div>";
    h += "</div>";
  }
  h += "</section>";

  // ---- summary
  h += "<section><h2>Summary</h2><div class='cards'>";
  h += card(std::to_string(m.epochs.size()), "epochs logged");
  if (best) {
    const json& b = m.epochs.at(*best);
    h += card(std::to_string(*best), "best epoch") + card(f4(num(b, "val_accuracy")), "best validation accuracy") +
         card(f4(num(b, "val_f1_macro")), "validation macro F1 at the best epoch");
  }
  if (e) {
    h += card(f4(e->accuracy), "Testing accuracy (" + std::to_string(e->total) + " images)");
    if (at(e->novel, "accuracy").is_number()) h += card(f4(num(e->novel, "accuracy")), "novel-subset accuracy");
  }
  if (!m.steps.empty() && std::isfinite(num(m.steps.rbegin()->second, "elapsed_s")))
    h += card(fmt("%.1f min", num(m.steps.rbegin()->second, "elapsed_s") / 60), "training time");
  h += "</div>";
  if (!e) h += "<p class='note'>No evaluation yet: eval_Testing.json is not in the run folder (training still going, or not evaluated).</p>";
  h += "</section>";

  // ---- training curves
  h += "<section><h2>Training curves</h2>";
  if (m.steps.empty() && m.epochs.empty()) {
    h += std::string("<p class='note'>") + (m.present ? "metrics.jsonl has no steps or epochs yet." : "No metrics.jsonl yet: training has not logged a step.") + "</p>";
  } else {
    Series step_loss{"training loss (step)", "#74a9cf", {}, 1, 0.7}, lr{"learning rate", "#1098ad", {}, 1.5},
        grad{"gradient norm (step)", "#5f3dc4", {}, 1, 0.8};
    for (const auto& [g, j] : m.steps) {
      step_loss.points.emplace_back(double(g), num(j, "loss"));
      lr.points.emplace_back(double(g), num(j, "lr"));
      grad.points.emplace_back(double(g), num(j, "grad_norm"));
    }
    Series train_loss{"training loss (epoch)", "#1c5d99", {}, 2.5}, val_loss{"validation loss", "#f08c00", {}, 2.5};
    Series acc{"validation accuracy", "#2b8a3e", {}, 2.5}, f1w{"validation weighted F1", "#7048e8", {}, 2},
        f1m{"validation macro F1", "#d6336c", {}, 2}, tacc{"training accuracy (augmented)", "#868e96", {}, 1.5};
    train_loss.dots = val_loss.dots = acc.dots = f1w.dots = f1m.dots = true;
    tacc.dashed = true;
    for (const auto& [ep, j] : m.epochs) {
      const double g = num(j, "global_step"), x = double(ep);
      train_loss.points.emplace_back(g, num(j, "train_loss"));
      val_loss.points.emplace_back(g, num(j, "val_loss"));
      acc.points.emplace_back(x, num(j, "val_accuracy"));
      f1w.points.emplace_back(x, num(j, "val_f1_weighted"));
      f1m.points.emplace_back(x, num(j, "val_f1_macro"));
      tacc.points.emplace_back(x, num(j, "train_accuracy"));
    }
    const std::string best_label = best ? "best: epoch " + std::to_string(*best) : "";
    std::optional<double> best_step;
    if (best && std::isfinite(num(m.epochs.at(*best), "global_step"))) best_step = num(m.epochs.at(*best), "global_step");
    Chart loss{"Loss", "step", "cross-entropy loss", {step_loss, train_loss, val_loss}, best_step, best_label, {}, false};
    Chart metrics{"Validation metrics per epoch", "epoch", "score", {acc, f1w, f1m, tacc}, best, best_label,
                  std::pair(0.0, 1.0), true};
    Chart rate{"Learning rate", "step", "learning rate", {lr}, best_step, best_label, {}, false};
    Chart norm{"Gradient norm (before clipping)", "step", "global L2 norm", {grad}, best_step, best_label, {}, false};
    h += "<div class='charts'>";
    // grad_norm is 0 on every step when clipping is off (nothing measured it): no chart then.
    const bool measured = std::any_of(grad.points.begin(), grad.points.end(), [](auto p) { return p.second > 0; });
    for (const Chart* c : {&loss, &metrics, &rate, &norm})
      if (c != &norm || measured) h += line_chart(*c);
    h += "</div>";
    if (m.epochs.empty()) h += "<p class='note'>No epoch has finished yet: only per-step values are shown.</p>";
  }
  h += "</section>";

  // ---- Testing results
  h += "<section><h2>Testing results</h2>";
  if (!e) {
    h += "<p class='note'>No evaluation yet: the best checkpoint has not been evaluated on the Testing split.</p>";
  } else {
    h += "<div class='cards'>" + card(f4(e->accuracy) + " (" + pct(e->accuracy) + ")", "accuracy on " + std::to_string(e->total) + " Testing images");
    if (e->novel.is_object())
      h += card(f4(num(e->novel, "accuracy")) + " (" + pct(num(e->novel, "accuracy")) + ")",
                "accuracy on the novel subset: " + text_of(at(e->novel, "correct")) + " of " +
                    text_of(at(e->novel, "total")) + " correct (Testing images with no near-copy in Training)");
    if (std::isfinite(e->loss)) h += card(f4(e->loss), "Testing loss");
    h += "</div>";
    if (e->skipped > 0)
      h += "<p class='note'>" + std::to_string(e->skipped) + " Testing images could not be read and are left out of every number.</p>";
    h += "<p class='sub'>checkpoint " + esc(e->checkpoint) + "</p><div class='results'><div><h3>Per class</h3>" +
         classification_table(*e) + "</div><div><h3>Confusion matrix</h3>" + confusion_table(*e) +
         "</div></div><h3>confusion_matrix.png</h3><img class='cmpng' alt='confusion matrix' src='data:image/png;base64," +
         base64(png) + "'>";
  }
  h += "</section>";

  // ---- class distribution
  h += "<section><h2>Class distribution</h2>";
  std::string bars;
  const json& counts = at(data, "counts");
  for (const char* split : {"train", "validation", "Testing"})
    if (at(counts, split).is_array()) {
      std::vector<int64_t> v;
      for (const json& x : counts[split]) v.push_back(x.is_number() ? x.get<int64_t>() : 0);
      bars += bar_chart(split, classes, v);
    }
  h += bars.empty() ? "<p class='note'>run.json has no class counts.</p>" : "<div class='bars-row'>" + bars + "</div>";
  h += "</section>";

  // ---- images
  h += "<section><h2>Testing images</h2>";
  if (e) h += "<p class='sub'>Per class, up to 4 correct (green) and 4 wrong (red) predictions in file order; "
              "the number is the predicted class's probability.</p>" + thumbnails(*e);
  else h += "<p class='note'>No evaluation yet.</p>";
  h += "</section><p class='sub'>Written by tessera " TESSERA_VERSION " (tessera report).</p></main></body></html>\n";
  return h;
}

}  // namespace

void write_report(const std::string& run_dir) {
  const fs::path dir(run_dir);
  const std::string run_path = (dir / "run.json").string();
  if (!fs::is_regular_file(run_path))
    throw std::runtime_error(run_path + ": not found (is " + run_dir + " a training run's --out folder?)");
  const json run = read_json(run_path);
  if (!run.is_object()) throw std::runtime_error(run_path + ": not a JSON object");
  const Metrics metrics = read_metrics((dir / "metrics.jsonl").string());
  std::optional<Eval> eval;
  const std::string eval_path = (dir / "eval_Testing.json").string();
  if (fs::exists(eval_path)) eval = read_eval(eval_path);
  const std::string png = eval ? encode(draw_confusion(*eval), false) : "";
  const std::string html = render(run, metrics, eval, png, run_dir);
  if (eval) write_file_atomic((dir / "confusion_matrix.png").string(), png);
  write_file_atomic((dir / "report.html").string(), html);
}

}  // namespace tessera::train
