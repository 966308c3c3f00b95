// Text for the report page (see report_text.h).
#include "train/report_text.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

namespace tessera::train {

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

}  // namespace tessera::train
