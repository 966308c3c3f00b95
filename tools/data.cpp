// `tessera data audit ROOT [--json] [--out FILE] [--min-correlation C]`: what a classification data set
// holds — counts per split and class, exact duplicates, near-duplicates, label conflicts — and the list of
// Testing images with no near-copy in Training (the "novel" subset evaluation reports separately).
//
// The facts come from data/audit.h (audit_dataset); this file only presents them and writes the list.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <nlohmann/json.hpp>
#include <string>

#include "data/audit.h"
#include "data/dataset.h"
#include "engine/core/fileio.h"
#include "train/evaluate.h"
#include "tools/cli.h"

namespace tessera::cli {
namespace {

struct AuditCliOptions {
  std::string root;
  std::string out = "audit/novel_testing.txt";
  double min_correlation = AuditOptions{}.min_correlation;
  bool json = false;
};

std::string split_name(const std::string& s) { return s.empty() ? "(flat)" : s; }

// The novel list (train/evaluate.h's format: the Testing folder's fingerprint, then one path per line
// relative to ROOT); the parent folder is created. Nothing is written for data without a Testing folder.
void write_novel(const AuditReport& r, const std::string& out) {
  namespace fs = std::filesystem;
  const fs::path testing = fs::path(r.root) / "Testing";
  std::vector<std::string> classes;  // Testing's class folders, as eval scans them
  for (const ClassCount& c : r.counts)
    if (c.split == "Testing") classes.push_back(c.label);
  if (classes.empty()) return;
  const std::string fp = fingerprint(scan_by_name(testing.string(), classes, "the audit"), testing.string());
  std::set<std::string> paths;
  for (int i : r.novel) paths.insert(r.images[size_t(i)].path);
  std::error_code ec;
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path(), ec);
  write_file_atomic(out, train::novel_list_text(fp, paths));
}

nlohmann::ordered_json to_json(const AuditReport& r, const std::string& out) {
  using J = nlohmann::ordered_json;
  auto path = [&](int i) { return r.images[size_t(i)].path; };
  J counts = J::array();
  for (const ClassCount& c : r.counts)
    counts.push_back({{"split", c.split}, {"class", c.label}, {"images", c.images},
                      {"unreadable", c.unreadable}, {"novel", c.split == "Testing" ? J(c.novel) : J(nullptr)}});
  J groups = J::array();
  for (const ExactGroup& g : r.exact_groups) {
    J members = J::array();
    for (int m : g.members) members.push_back(path(m));
    groups.push_back({{"files", members}, {"cross_split", g.cross_split}, {"label_conflict", g.label_conflict}});
  }
  J conflicts = J::array();
  for (const NearPair& p : r.conflicts)
    conflicts.push_back({{"a", path(p.a)}, {"a_class", r.images[size_t(p.a)].label},
                         {"b", path(p.b)}, {"b_class", r.images[size_t(p.b)].label},
                         {"correlation", p.correlation}, {"exact", p.exact}});
  J novel = J::array();
  for (int i : r.novel) novel.push_back(path(i));
  return J{{"root", r.root},
           {"method", "Pearson correlation of 32x32 luma minus 8x8 luma (Pillow bilinear) >= min_correlation, "
                      "or identical bytes"},
           {"min_correlation", r.options.min_correlation},
           {"files", r.files},
           {"images", r.images.size()},
           {"unreadable", r.unreadable},
           {"counts", counts},
           {"exact", {{"distinct", r.distinct}, {"redundant", r.redundant},
                      {"groups", r.exact_groups.size()}, {"cross_split_distinct", r.cross_split_distinct}}},
           {"exact_groups", groups},
           {"near_pairs", {{"testing_x_training", r.near_pairs_cross}, {"training", r.near_pairs_training},
                           {"testing", r.near_pairs_testing}, {"flat", r.near_pairs_flat}}},
           {"testing_with_near_copy_in_training", r.testing_with_near_copy},
           {"label_conflicts", conflicts},
           {"novel_count", r.novel.size()},
           {"novel_file", out},
           {"novel", novel}};
}

void print_summary(const AuditReport& r, const std::string& out, std::ostream& os) {
  char line[256];
  os << "data set " << r.root << ": " << r.files << " image files, " << r.images.size() << " readable, "
     << r.unreadable.size() << " unreadable\n\n";
  std::snprintf(line, sizeof line, "  %-10s %-20s %8s %11s %7s\n", "split", "class", "images", "unreadable", "novel");
  os << line;
  for (const ClassCount& c : r.counts) {
    std::snprintf(line, sizeof line, "  %-10s %-20s %8lld %11lld %7s\n", split_name(c.split).c_str(),
                  c.label.c_str(), (long long)c.images, (long long)c.unreadable,
                  c.split == "Testing" ? std::to_string(c.novel).c_str() : "-");
    os << line;
  }
  int64_t conflicts_exact = 0;
  for (const NearPair& p : r.conflicts) conflicts_exact += p.exact;
  int64_t testing = 0;
  for (const ClassCount& c : r.counts)
    if (c.split == "Testing") testing += c.images;
  os << "\nexact duplicates (identical bytes): " << r.distinct << " distinct of " << r.images.size() << " ("
     << r.redundant << " redundant copies in " << r.exact_groups.size() << " groups), " << r.cross_split_distinct
     << " distinct images in both Training and Testing\n";
  os << "near-duplicates (band-pass 32x32 luma correlation >= " << r.options.min_correlation
     << " or identical bytes): pairs Testing x Training " << r.near_pairs_cross << ", within Training "
     << r.near_pairs_training << ", within Testing " << r.near_pairs_testing;
  if (r.near_pairs_flat) os << ", within the flat set " << r.near_pairs_flat;
  os << "\nTesting images with a near-copy in Training: " << r.testing_with_near_copy << " of " << testing
     << "; novel: " << r.novel.size() << " (listed in " << out << ")\n";
  os << "label conflicts (copies with different classes): " << r.conflicts.size() << " pairs (" << conflicts_exact
     << " byte-identical)\n";
  const size_t shown = std::min<size_t>(r.conflicts.size(), 20);
  for (size_t k = 0; k < shown; ++k) {
    const NearPair& p = r.conflicts[k];
    std::snprintf(line, sizeof line, "  %.4f%s ", p.correlation, p.exact ? " exact" : "      ");
    os << line << r.images[size_t(p.a)].path << "  <->  " << r.images[size_t(p.b)].path << "\n";
  }
  if (shown < r.conflicts.size()) os << "  ... " << r.conflicts.size() - shown << " more (see --json)\n";
}

void warn_stderr(const std::string& message) { std::cerr << "tessera: warning: " << message << "\n"; }

}  // namespace

void add_data(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Data-set tools");
  data->require_subcommand(1);
  CLI::App* audit = data->add_subcommand(
      "audit", "Counts, exact and near-duplicates, label conflicts; writes the Testing images with no "
               "near-copy in Training");
  auto o = std::make_shared<AuditCliOptions>();
  audit->add_option("root", o->root, "data set folder: Training/<class>/*, Testing/<class>/* or <class>/*")
      ->required();
  audit->add_flag("--json", o->json, "print one JSON object instead of the summary");
  audit->add_option("--out", o->out, "where to write the novel Testing images, one path per line relative to ROOT")
      ->capture_default_str();
  audit->add_option("--min-correlation", o->min_correlation,
                    "near-duplicate threshold on the correlation of 32x32 minus 8x8 luma thumbnails")
      ->capture_default_str()
      ->check(CLI::Range(-1.0, 1.0));
  audit->callback([o] {
    AuditOptions opt;
    opt.min_correlation = o->min_correlation;
    AuditReport r = audit_dataset(o->root, opt, warn_stderr);
    write_novel(r, o->out);
    if (o->json)
      std::cout << to_json(r, o->out).dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    else
      print_summary(r, o->out, std::cout);
  });
}

}  // namespace tessera::cli
