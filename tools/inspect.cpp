// `tessera inspect FILE.safetensors [--json]`: what a checkpoint holds.
//
// Structure: collect() reads the file into an InspectReport (the facts); print_table() and to_json() only
// present it. A new fact (e.g. which model preset the checkpoint matches) is one more field filled in
// collect() and shown by both presenters.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "tools/cli.h"

namespace tessera::cli {
namespace {

struct TensorRow {
  std::string name, dtype;
  Shape shape;
  uint64_t elements = 0, bytes = 0, begin = 0, end = 0;
};

struct InspectReport {
  std::string path;
  std::vector<TensorRow> tensors;  // in file (data offset) order
  uint64_t total_elements = 0, total_bytes = 0;
  std::map<std::string, std::string> metadata;
};

InspectReport collect(const std::string& path) {
  SafetensorsFile file(path);
  InspectReport r;
  r.path = path;
  for (const TensorInfo& ti : file.tensors()) {
    TensorRow row{ti.name, ti.dtype_tag, ti.shape, uint64_t(shape_numel(ti.shape)), ti.end - ti.begin,
                  ti.begin, ti.end};
    r.total_elements += row.elements;
    r.total_bytes += row.bytes;
    r.tensors.push_back(std::move(row));
  }
  r.metadata = file.metadata();
  return r;
}

// 1234567 -> "1,234,567"
std::string grouped(uint64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(b);
  int u = 0;
  while (v >= 1024 && u < 4) { v /= 1024; ++u; }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", v, units[u]);
  return buf;
}

// Names and metadata come from the file: show control characters escaped, and long values shortened.
std::string printable(const std::string& s, size_t max_len = 0) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  if (max_len && out.size() > max_len) {
    size_t cut = max_len;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;  // keep UTF-8 whole
    out = out.substr(0, cut) + "... (" + std::to_string(s.size()) + " bytes)";
  }
  return out;
}

void print_table(const InspectReport& r, std::ostream& os) {
  struct Col { const char* title; bool right; };
  const Col cols[] = {{"name", false}, {"dtype", false}, {"shape", false}, {"elements", true}, {"bytes", true}};
  std::vector<std::vector<std::string>> cells;
  for (const TensorRow& t : r.tensors)
    cells.push_back({printable(t.name), t.dtype, shape_str(t.shape), grouped(t.elements), grouped(t.bytes)});
  size_t width[5];
  for (int c = 0; c < 5; ++c) {
    width[c] = std::strlen(cols[c].title);
    for (const auto& row : cells) width[c] = std::max(width[c], row[size_t(c)].size());
  }
  auto line = [&](const std::vector<std::string>& row) {
    std::string s;
    for (int c = 0; c < 5; ++c) {
      const std::string& v = row[size_t(c)];
      std::string pad(width[c] - std::min(width[c], v.size()), ' ');
      s += c ? "  " : "";
      s += cols[c].right ? pad + v : (c == 4 ? v : v + pad);
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    os << s << "\n";
  };

  os << r.path << "\n\n";
  if (!r.tensors.empty()) {
    line({"name", "dtype", "shape", "elements", "bytes"});
    for (const auto& row : cells) line(row);
    os << "\n";
  }
  os << "tensors:    " << r.tensors.size() << "\n"
     << "parameters: " << grouped(r.total_elements) << "\n"
     << "bytes:      " << grouped(r.total_bytes) << " (" << human_bytes(r.total_bytes) << ")\n";
  if (r.metadata.empty()) {
    os << "metadata:   (none)\n";
  } else {
    os << "metadata:\n";
    for (const auto& [k, v] : r.metadata) os << "  " << printable(k) << ": " << printable(v, 120) << "\n";
  }
}

nlohmann::ordered_json to_json(const InspectReport& r) {
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const TensorRow& t : r.tensors)
    tensors.push_back({{"name", t.name},
                       {"dtype", t.dtype},
                       {"shape", t.shape},
                       {"elements", t.elements},
                       {"bytes", t.bytes},
                       {"data_offsets", nlohmann::ordered_json::array({t.begin, t.end})}});
  return {{"file", r.path},
          {"tensors", tensors},
          {"totals", {{"tensors", r.tensors.size()}, {"parameters", r.total_elements}, {"bytes", r.total_bytes}}},
          {"metadata", r.metadata}};
}

}  // namespace

void add_inspect(CLI::App& app) {
  CLI::App* sub = app.add_subcommand("inspect", "List the tensors, totals and metadata of a .safetensors file");
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  sub->add_option("file", *path, "the .safetensors file")->required();
  sub->add_flag("--json", *as_json, "print one JSON object instead of a table");
  sub->callback([path, as_json] {
    InspectReport report = collect(*path);
    if (*as_json)
      std::cout << to_json(report).dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    else
      print_table(report, std::cout);
  });
}

}  // namespace tessera::cli
