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

// confusion_matrix.png's bytes: the matrix shaded by row share with each cell's count and share, class
// names on both axes, a colour scale. About 684 x 520 px for a few classes with short names; wider for long
// names, larger for many classes. nullopt exactly when figures_unavailable() is not "".
std::optional<std::string> confusion_matrix_png(const Eval& e);

}  // namespace tessera::train
