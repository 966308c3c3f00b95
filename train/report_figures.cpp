// The report's PNG figure (see report_figures.h). TESSERA_HAS_CAIRO is set by CMake when pkg-config found
// cairo; without it only the shading and the fallback at the end are built.
#include "train/report_figures.h"

#include <algorithm>
#include <cmath>

#if TESSERA_HAS_CAIRO
#include <cairo.h>

#include <memory>
#include <stdexcept>

#include "train/report_text.h"
#endif

namespace tessera::train {

Rgb blues(double t) {
  static const Rgb stops[] = {{247, 251, 255}, {198, 219, 239}, {107, 174, 214}, {33, 113, 181}, {8, 48, 107}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(int(t), 3);
  const double f = t - i;
  auto mix = [&](uint8_t a, uint8_t b) { return uint8_t(std::lround(a + (b - a) * f)); };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

double row_share(const std::vector<int64_t>& row, size_t j) {
  int64_t sum = 0;
  for (int64_t v : row) sum += v;
  return sum > 0 ? double(row[j]) / double(sum) : 0.0;
}

#if TESSERA_HAS_CAIRO

namespace {

// Text sizes in pixels.
constexpr double kTitle = 18, kAxis = 15, kLabel = 14, kSmallLabel = 11, kCount = 20, kSmall = 12;
const Rgb kInk{33, 37, 41}, kMuted{108, 117, 125}, kWhite{255, 255, 255}, kRule{173, 181, 189};

}  // namespace

Canvas::Canvas(int width, int height)
    : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height), cairo_surface_destroy),
      cr_(cairo_create(surface_.get()), cairo_destroy) {
  fill(0, 0, width, height, kWhite);
}

void Canvas::fill(double x0, double y0, double x1, double y1, Rgb c) {
  colour(c);
  cairo_rectangle(cr_.get(), x0, y0, x1 - x0, y1 - y0);
  cairo_fill(cr_.get());
}

void Canvas::font(double size, bool bold) {
  cairo_select_font_face(cr_.get(), "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr_.get(), size);
}

double Canvas::width(const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr_.get(), s.c_str(), &e);
  return e.x_advance;
}

double Canvas::digit_height() {
  cairo_text_extents_t e;
  cairo_text_extents(cr_.get(), "0", &e);
  return -e.y_bearing;
}

double Canvas::line_height() {
  cairo_font_extents_t e;
  cairo_font_extents(cr_.get(), &e);
  return e.height;
}

void Canvas::text(double x, double y, const std::string& s, Rgb c, Align align, bool up) {
  const double w = width(s), dx = align == Align::Left ? 0 : align == Align::Centre ? -w / 2 : -w;
  cairo_save(cr_.get());
  cairo_translate(cr_.get(), x, y);
  if (up) cairo_rotate(cr_.get(), -M_PI / 2);
  cairo_move_to(cr_.get(), dx, 0);
  colour(c);
  cairo_show_text(cr_.get(), s.c_str());
  cairo_restore(cr_.get());
}

void Canvas::scale_bar(int x0, int x1, int y0, int y1) {
  for (int x = x0; x < x1; ++x) fill(x, y0, x + 1, y1, blues(double(x - x0) / double(x1 - x0 - 1)));
  cairo_set_line_width(cr_.get(), 1);
  colour(kRule);
  cairo_rectangle(cr_.get(), x0 - 0.5, y0 - 0.5, x1 - x0 + 1, y1 - y0 + 1);
  cairo_stroke(cr_.get());
}

// RGB24 keeps each pixel as a native-endian 32-bit 0x00RRGGBB word; rows are `stride` bytes apart.
void Canvas::pixels(int x, int y, int w, int h, const std::vector<Rgb>& rgb) {
  cairo_surface_flush(surface_.get());
  unsigned char* data = cairo_image_surface_get_data(surface_.get());
  const int stride = cairo_image_surface_get_stride(surface_.get());
  for (int r = 0; r < h; ++r) {
    auto* row = reinterpret_cast<uint32_t*>(data + size_t(y + r) * size_t(stride)) + x;
    for (int c = 0; c < w; ++c) {
      const Rgb p = rgb[size_t(r) * size_t(w) + size_t(c)];
      row[c] = uint32_t(p.r) << 16 | uint32_t(p.g) << 8 | uint32_t(p.b);
    }
  }
  cairo_surface_mark_dirty(surface_.get());
}

std::string Canvas::png(const std::string& who, const std::string& name) {
  cairo_surface_flush(surface_.get());
  if (cairo_status_t s = cairo_status(cr_.get()); s != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error(who + ": cannot draw " + name + ": " + cairo_status_to_string(s));
  std::string out;
  auto append = [](void* closure, const unsigned char* data, unsigned int size) {
    static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), size);
    return CAIRO_STATUS_SUCCESS;
  };
  if (cairo_status_t s = cairo_surface_write_to_png_stream(surface_.get(), append, &out); s != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error(who + ": cannot encode " + name + ": " + cairo_status_to_string(s));
  return out;
}

void Canvas::colour(Rgb c) { cairo_set_source_rgb(cr_.get(), c.r / 255.0, c.g / 255.0, c.b / 255.0); }

namespace {

// A class name broken at '_' into at most 3 lines (glioma / tumor), or whole.
std::vector<std::string> name_parts(const std::string& name) {
  std::vector<std::string> parts;
  for (size_t p = 0, q; p <= name.size(); p = q + 1) {
    q = std::min(name.find('_', p), name.size());
    parts.push_back(name.substr(p, q - p));
  }
  return parts.size() <= 3 ? parts : std::vector<std::string>{name};
}

double widest(Canvas& c, const std::vector<std::string>& lines) {
  double w = 0;
  for (const auto& l : lines) w = std::max(w, c.width(l));
  return w;
}

// A class name in a box `width` pixels wide: whole at the label size, else broken at '_', else whole at the
// small size, else shortened with "…". Leaves the canvas's font set to the label's.
std::vector<std::string> fit_label(Canvas& c, const std::string& name, double width) {
  c.font(kLabel);
  if (c.width(name) <= width) return {{name}};
  if (widest(c, name_parts(name)) <= width) return name_parts(name);
  c.font(kSmallLabel);
  if (c.width(name) <= width) return {{name}};
  std::string s = name;
  // Drop the last UTF-8 character (its continuation bytes 10xxxxxx, then its first byte) until "…" fits.
  while (!s.empty() && c.width(s + "…") > width) {
    while (!s.empty() && (uint8_t(s.back()) & 0xC0) == 0x80) s.pop_back();
    if (!s.empty()) s.pop_back();
  }
  return {{s + "…"}};
}

}  // namespace

std::string_view figures_unavailable() { return ""; }

std::optional<std::string> confusion_matrix_png(const Eval& e) {
  const int n = int(e.classes.size());
  // Room for the row names at the label size (whole or broken at '_', capped: longer ones shrink), columns
  // at least as wide as a name and 44 px, rows at least 34 px.
  Canvas measure(1, 1);
  measure.font(kLabel);
  int name_w = 0;
  for (const auto& name : e.classes)
    name_w = std::max(name_w, int(std::ceil(std::min(measure.width(name), widest(measure, name_parts(name))))));
  name_w = std::min(name_w, 250);
  const int left = std::max(170, name_w + 44), top = 64, grid_w = std::max({490, 44 * n, (name_w + 12) * n}),
            grid_h = std::max(360, 34 * n);
  const int width = left + grid_w + 24, height = top + grid_h + 96;
  Canvas c(width, height);
  auto cx = [&](int j) { return left + grid_w * j / n; };
  auto cy = [&](int i) { return top + grid_h * i / n; };

  // Title, then one caption line: how to read the matrix and the colour scale.
  c.font(kTitle, true);
  c.text(width / 2.0, 27, "Confusion matrix — Testing", kInk, Align::Centre);
  c.font(kSmall);
  const std::string how = "rows: true class · columns: predicted class · shading: share of the row", lo = "0%", hi = "100%";
  const int bar = 101, gap = 6;  // 101 px: the palette at every 1%, both ends included
  const double caption_w = c.width(how) + gap * 2 + c.width(lo) + gap + bar + gap + c.width(hi);
  double x = std::max(8.0, std::round((width - caption_w) / 2));
  c.text(x, 52, how, kMuted);
  x += c.width(how) + gap * 2;
  c.text(x, 52, lo, kMuted);
  x = std::round(x + c.width(lo) + gap);
  c.scale_bar(int(x), int(x) + bar, 42, 53);
  c.text(x + bar + gap, 52, hi, kMuted);

  // The cells, a 1 px rule between them; dark cells (over half the row) get white text.
  c.fill(left - 1, top - 1, left + grid_w + 1, top + grid_h + 1, kRule);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double share = row_share(e.confusion[size_t(i)], size_t(j));
      const int x0 = cx(j), x1 = cx(j + 1) - 1, y0 = cy(i), y1 = cy(i + 1) - 1;
      c.fill(x0, y0, x1, y1, blues(share));
      const Rgb fg = share > 0.5 ? kWhite : kInk;
      const std::string count = std::to_string(e.confusion[size_t(i)][size_t(j)]), p = pct(share);
      c.font(kCount, true);
      const double count_size = c.width(count) + 6 <= x1 - x0 ? kCount : kSmall;
      c.font(count_size, true);
      const double count_h = c.digit_height();
      c.font(kSmall);
      const double p_h = c.digit_height();
      const bool room = y1 - y0 >= 3 * count_h && c.width(p) + 6 <= x1 - x0;
      const double block = count_h + (room ? 7 + p_h : 0), base = (y0 + y1 - block) / 2 + count_h;
      if (room) c.text((x0 + x1) / 2.0, base + 7 + p_h, p, fg, Align::Centre);
      c.font(count_size, true);
      c.text((x0 + x1) / 2.0, base, count, fg, Align::Centre);
    }

  // Class names: right-aligned left of the rows, centred under the columns.
  for (int i = 0; i < n; ++i) {
    const std::vector<std::string> lines = fit_label(c, e.classes[size_t(i)], left - 44);
    const double line = c.line_height(), h = c.digit_height();
    double y = (cy(i) + cy(i + 1)) / 2.0 - (line * double(lines.size() - 1) + h) / 2 + h;
    for (const auto& s : lines) c.text(left - 8, y, s, kInk, Align::Right), y += line;
  }
  for (int j = 0; j < n; ++j) {
    const std::vector<std::string> lines = fit_label(c, e.classes[size_t(j)], cx(j + 1) - cx(j) - 6);
    const double line = c.line_height();
    double y = top + grid_h + 10 + c.digit_height();
    for (const auto& s : lines) c.text((cx(j) + cx(j + 1)) / 2.0, y, s, kInk, Align::Centre), y += line;
  }
  c.font(kAxis, true);
  c.text(left + grid_w / 2.0, height - 14, "predicted", kInk, Align::Centre);
  c.text(28, top + grid_h / 2.0, "true", kInk, Align::Centre, /*up=*/true);
  return c.png();
}

#else

// The fallback for a build configured without cairo (its development files were not found): no PNG.
std::string_view figures_unavailable() {
  return "this tessera was built without cairo (libcairo2-dev was not found when it was configured)";
}
std::optional<std::string> confusion_matrix_png(const Eval&) { return std::nullopt; }

#endif

}  // namespace tessera::train
