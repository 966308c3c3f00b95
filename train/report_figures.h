// The report's PNG figure, confusion_matrix.png, drawn with cairo (text in DejaVu Sans through fontconfig),
// and the shading it shares with the page's HTML table. A build configured without cairo draws no PNG:
// figures_unavailable() says why, and the report says so.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "train/report_files.h"

#if TESSERA_HAS_CAIRO
#include <cairo.h>

#include <memory>
#endif

namespace tessera::train {

struct Rgb { uint8_t r, g, b; };

// The confusion-matrix palette, t in [0, 1] (non-finite is 0): near-white through light to dark blue in
// five stops, mixed linearly between them.
Rgb blues(double t);
// Cells are shaded by their share of the true class (row), so a small class's errors show as clearly as a
// large one's; 0 for an empty row.
double row_share(const std::vector<int64_t>& row, size_t j);

// Why this build draws no PNG figures (one sentence), or "" when it draws them.
std::string_view figures_unavailable();

#if TESSERA_HAS_CAIRO
// The figures' drawing surface, for the train layer's own sources only (CMake defines TESSERA_HAS_CAIRO for
// them alone): a cairo image surface with the few drawing calls the figures need; text through cairo's own
// font selection, which asks fontconfig for the family (any sans face stands in when DejaVu Sans is absent).
enum class Align { Left, Centre, Right };

class Canvas {
 public:
  Canvas(int width, int height);
  void fill(double x0, double y0, double x1, double y1, Rgb c);
  void font(double size, bool bold = false);
  double width(const std::string& s);  // the advance of s in the current font
  double digit_height();               // a digit's height above the baseline, for centring numbers
  double line_height();                // baseline to baseline
  // s with its baseline at y, aligned on x; `up` turns it to read bottom to top about (x, y).
  void text(double x, double y, const std::string& s, Rgb c, Align align = Align::Left, bool up = false);
  // A horizontal colour bar from x0 to x1: the confusion palette sampled once per pixel column.
  void scale_bar(int x0, int x1, int y0, int y1);
  // w x h pixels, row-major, with their top-left corner at (x, y) (inside the canvas).
  void pixels(int x, int y, int w, int h, const std::vector<Rgb>& rgb);
  // The PNG's bytes; a failure throws "WHO: cannot draw NAME: why".
  std::string png(const std::string& who = "report", const std::string& name = "confusion_matrix.png");

 private:
  void colour(Rgb c);

  std::unique_ptr<cairo_surface_t, void (*)(cairo_surface_t*)> surface_;
  std::unique_ptr<cairo_t, void (*)(cairo_t*)> cr_;
};
#endif

// confusion_matrix.png's bytes: the matrix shaded by row share with each cell's count and share, class
// names on both axes, a colour scale. About 684 x 520 px for a few classes with short names; wider for long
// names, larger for many classes. nullopt exactly when figures_unavailable() is not "".
std::optional<std::string> confusion_matrix_png(const Eval& e);

}  // namespace tessera::train
