// The report's SVG charts (see report_charts.h).
#include "train/report_charts.h"

#include <algorithm>
#include <cmath>

#include "train/report_text.h"

namespace tessera::train {

namespace {

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

// Bar colours, one per class (repeating after eight).
const char* kPalette[] = {"#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"};

}  // namespace

const char* const kChartStyle = R"css(
svg.chart{width:100%;height:auto;border:1px solid #e9ecef;border-radius:6px}
svg text{font-size:12px;fill:#495057} svg .title{font-size:14px;font-weight:600;fill:#212529} svg .label{fill:#212529}
svg .grid{stroke:#e9ecef} svg .axis{stroke:#868e96;fill:none} svg .best{stroke:#c92a2a;stroke-dasharray:5 3}
)css";

std::string line_chart(const Chart& c) {
  const double W = 600, H = 320, L = 66, R = 20, B = 48;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : c.series)
    for (auto [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y))
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (!std::isfinite(x0)) return "";
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

}  // namespace tessera::train
