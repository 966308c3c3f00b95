// Text for the report page: HTML escaping, the number formats it prints, and base64 for inlined images.
#pragma once
#include <string>
#include <string_view>

namespace tessera::train {

// s with & < > " ' as HTML entities: safe in element text and in quoted attributes.
std::string esc(std::string_view s);
// One double through printf's format f (e.g. "%.1f").
std::string fmt(const char* f, double v);
// 4 decimals, or "—" when not finite.
std::string f4(double v);
// A share as a percentage with 1 decimal (0.5 → "50.0%"), or "—" when not finite.
std::string pct(double v);
// RFC 4648 base64 with padding, for data: URIs.
std::string base64(std::string_view in);

}  // namespace tessera::train
