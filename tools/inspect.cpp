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
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "models/config.h"
#include "tools/cli.h"

namespace tessera::cli {
namespace {

struct TensorRow {
  std::string name, dtype;
  Shape shape;
  uint64_t elements = 0, bytes = 0, begin = 0, end = 0;
};

// A CvT or ViT checkpoint recognised from its tensor names and shapes.
struct ModelMatch {
  std::string arch;    // "CvT" / "ViT"
  std::string preset;  // the preset whose architecture it has, or "" for a custom configuration
  int64_t classes = 0;
  uint64_t parameters = 0, buffer_elements = 0;  // trainable elements; BatchNorm statistics and counters
};

struct InspectReport {
  std::string path;
  std::vector<TensorRow> tensors;  // in file (data offset) order
  uint64_t total_elements = 0, total_bytes = 0;
  std::map<std::string, std::string> metadata;
  std::optional<ModelMatch> model;
};

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Reads the architecture off the shapes: CvT by each stage's width and depth, ViT by width, depth, MLP
// width, patch and image size (heads do not change any shape, and no preset pair differs only in them).
std::optional<ModelMatch> recognise(const std::vector<TensorRow>& tensors) {
  std::map<std::string, const TensorRow*> by_name;
  for (const TensorRow& t : tensors) by_name[t.name] = &t;
  auto shape = [&](const std::string& name) -> const Shape* {
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : &it->second->shape;
  };
  auto count_layers = [&](const std::string& prefix, const std::string& suffix) {
    int64_t n = 0;
    while (by_name.count(prefix + std::to_string(n) + suffix)) ++n;
    return n;
  };
  const Shape* cvt_embed = shape("cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight");
  const Shape* vit_patch = shape("vit.embeddings.patch_embeddings.projection.weight");
  if (!cvt_embed && !vit_patch) return std::nullopt;

  ModelMatch m;
  for (const TensorRow& t : tensors) {
    bool buffer = ends_with(t.name, ".running_mean") || ends_with(t.name, ".running_var") ||
                  ends_with(t.name, ".num_batches_tracked");
    (buffer ? m.buffer_elements : m.parameters) += t.elements;
  }
  if (const Shape* head = shape("classifier.weight"); head && head->size() == 2) m.classes = (*head)[0];

  if (cvt_embed) {
    m.arch = "CvT";
    std::vector<int64_t> width, depth;
    for (int s = 0; s < 3; ++s) {
      std::string stage = "cvt.encoder.stages." + std::to_string(s) + ".";
      const Shape* w = shape(stage + "embedding.convolution_embeddings.projection.weight");
      width.push_back(w && !w->empty() ? (*w)[0] : 0);
      depth.push_back(count_layers(stage + "layers.", ".layernorm_before.weight"));
    }
    for (const std::string& name : models::preset_names()) {
      auto cfg = models::preset_config(name);
      if (auto* c = std::get_if<models::CvtConfig>(&cfg); c && c->embed_dim == width && c->depth == depth)
        m.preset = name;
    }
    return m;
  }
  m.arch = "ViT";
  const Shape* mlp = shape("vit.encoder.layer.0.intermediate.dense.weight");
  const Shape* pos = shape("vit.embeddings.position_embeddings");
  int64_t hidden = vit_patch->empty() ? 0 : (*vit_patch)[0], patch = vit_patch->size() == 4 ? (*vit_patch)[2] : 0;
  int64_t layers = count_layers("vit.encoder.layer.", ".layernorm_before.weight");
  int64_t inter = mlp && !mlp->empty() ? (*mlp)[0] : 0;
  int64_t tokens = pos && pos->size() == 3 ? (*pos)[1] - 1 : 0;
  for (const std::string& name : models::preset_names()) {
    auto cfg = models::preset_config(name);
    auto* c = std::get_if<models::VitConfig>(&cfg);
    if (!c) continue;
    int64_t side = c->image_size / c->patch_size;
    if (c->hidden_size == hidden && c->patch_size == patch && c->num_hidden_layers == layers &&
        c->intermediate_size == inter && side * side == tokens)
      m.preset = name;
  }
  return m;
}

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
  r.model = recognise(r.tensors);
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
  if (r.model) {
    const ModelMatch& m = *r.model;
    os << "model:      " << m.arch << ", " << (m.preset.empty() ? "custom configuration (no preset matches)"
                                                             : "preset " + m.preset)
       << ", " << m.classes << " classes, " << grouped(m.parameters) << " trainable parameters";
    if (m.buffer_elements) os << " (+ " << grouped(m.buffer_elements) << " buffer elements)";
    os << "\n";
  }
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
  nlohmann::ordered_json out = {
      {"file", r.path},
      {"tensors", tensors},
      {"totals", {{"tensors", r.tensors.size()}, {"parameters", r.total_elements}, {"bytes", r.total_bytes}}},
      {"metadata", r.metadata}};
  if (r.model)
    out["model"] = {{"architecture", r.model->arch},
                    {"preset", r.model->preset.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.model->preset)},
                    {"classes", r.model->classes},
                    {"trainable_parameters", r.model->parameters},
                    {"buffer_elements", r.model->buffer_elements}};
  return out;
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
