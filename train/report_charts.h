// The report's SVG charts, drawn as inline <svg> text (styled by the page's CSS: .title, .tick, .grid, ...).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tessera::train {

// The CSS the charts need, for the <style> of any page that shows them.
extern const char* const kChartStyle;

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

// Lines over x, a legend above the plot (the marker explained there, never over the data); "" when no
// series has a finite point.
std::string line_chart(const Chart& c);

// Horizontal bars, one per class: class names read in full on the left, counts at the bars' ends.
std::string bar_chart(const std::string& split, const std::vector<std::string>& names, const std::vector<int64_t>& counts);

}  // namespace tessera::train
