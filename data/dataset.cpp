#include "data/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <system_error>

#include "engine/core/fileio.h"
#include "engine/core/parallel.h"
#include "engine/core/philox.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

bool is_dir(const fs::path& p) {
  std::error_code ec;  // error_code overloads: a permission problem must not throw from the check itself
  return fs::is_directory(p, ec);
}

void require_dir(const fs::path& p, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(p, ec)) throw DatasetError(p.string() + ": " + what + " folder not found");
  if (!is_dir(p)) throw DatasetError(p.string() + ": " + what + " is not a folder");
}

// Entries of a folder; iteration errors (e.g. no permission) become DatasetErrors naming the folder.
std::vector<fs::directory_entry> list_dir(const fs::path& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) throw DatasetError(dir.string() + ": cannot list folder: " + ec.message());
  std::vector<fs::directory_entry> out;
  for (; it != end; it.increment(ec)) {
    if (ec) throw DatasetError(dir.string() + ": cannot list folder: " + ec.message());
    out.push_back(*it);
  }
  if (ec) throw DatasetError(dir.string() + ": cannot list folder: " + ec.message());
  return out;
}

// Non-hidden sub-folders, sorted by name (byte order, so the order is locale- and file-system-independent).
std::vector<std::string> sub_folders(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : list_dir(dir)) {
    std::string name = e.path().filename().string();
    if (!name.empty() && name[0] != '.' && is_dir(e.path())) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> images_in(const fs::path& dir) {
  std::vector<std::string> paths;
  // Not only regular files: an image-named entry whose type cannot be known (a symbolic link loop, a
  // dangling link) is kept, so that decoding it skips it with a warning naming it and it is counted.
  for (const auto& e : list_dir(dir)) {
    std::error_code ec;
    if (is_image_file(e.path().string()) && !e.is_directory(ec)) paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

std::vector<int64_t> DatasetSplit::class_counts() const {
  std::vector<int64_t> counts(classes.size(), 0);
  for (const auto& s : samples)
    if (s.label >= 0 && size_t(s.label) < counts.size()) ++counts[size_t(s.label)];
  return counts;
}

bool is_image_file(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp";
}

std::string fingerprint(const DatasetSplit& split, const std::string& root) {
  std::vector<std::string> lines(split.samples.size());
  parallel_for(int64_t(lines.size()), 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const std::string& path = split.samples[size_t(i)].path;
      const std::string rel = std::filesystem::path(path).lexically_relative(root).generic_string();
      std::error_code ec;
      const uintmax_t bytes = std::filesystem::file_size(path, ec);
      try {
        lines[size_t(i)] = rel + "\t" + std::to_string(bytes) + "\t" + sha256_file(path) + "\n";
      } catch (const FileError&) {
        lines[size_t(i)] = rel + "\tunreadable\n";
      }
    }
  });
  std::sort(lines.begin(), lines.end());  // independent of the class order the split was scanned in
  std::string text;
  for (const std::string& line : lines) text += line;
  return sha256_hex(text);
}

DatasetSplit scan_folder(const std::string& root, const std::vector<std::string>& classes) {
  fs::path r(root);
  require_dir(r, "data set");
  DatasetSplit out;
  if (classes.empty()) {
    out.classes = sub_folders(r);
  } else {
    std::set<std::string> seen;
    for (const auto& c : classes) {
      if (!seen.insert(c).second) throw DatasetError(root + ": class '" + c + "' is listed twice");
      if (!is_dir(r / c)) throw DatasetError((r / c).string() + ": class folder not found (class '" + c + "')");
    }
    out.classes = classes;
  }
  if (out.classes.size() < 2)
    throw DatasetError(root + ": need at least 2 class folders, found " + std::to_string(out.classes.size()));
  for (size_t label = 0; label < out.classes.size(); ++label) {
    fs::path dir = r / out.classes[label];
    auto paths = images_in(dir);
    if (paths.empty()) throw DatasetError(dir.string() + ": class folder has no images (.jpg .jpeg .png .bmp)");
    for (auto& p : paths) out.samples.push_back(Sample{std::move(p), int64_t(label)});
  }
  return out;
}

DatasetSplit scan_by_name(const std::string& root, const std::vector<std::string>& classes, const std::string& owner) {
  const fs::path r(root);
  require_dir(r, "data set");
  const std::vector<std::string> folders = sub_folders(r);
  // A folder no class is named after would get no label the model can output: refuse it, naming them all.
  std::string unknown;
  for (const auto& name : folders)
    if (std::find(classes.begin(), classes.end(), name) == classes.end())
      unknown += (unknown.empty() ? "" : ", ") + (r / name).string();
  if (!unknown.empty()) {
    std::string known;
    for (const auto& c : classes) known += (known.empty() ? "" : ", ") + c;
    throw DatasetError(unknown + ": class folder(s) not among the classes of " + owner + " (" + known + ")");
  }
  if (folders.empty()) throw DatasetError(root + ": no class folders");
  DatasetSplit out;
  out.classes = classes;
  for (size_t label = 0; label < classes.size(); ++label) {
    if (!is_dir(r / classes[label])) {
      out.missing.push_back(classes[label]);
      continue;
    }
    auto paths = images_in(r / classes[label]);
    if (paths.empty()) throw DatasetError((r / classes[label]).string() + ": class folder has no images (.jpg .jpeg .png .bmp)");
    for (auto& p : paths) out.samples.push_back(Sample{std::move(p), int64_t(label)});
  }
  return out;
}

Layout detect_layout(const std::string& root) {
  fs::path r(root);
  require_dir(r, "data set");
  bool train = is_dir(r / "Training"), test = is_dir(r / "Testing");
  if (train && test) return Layout::Split;
  if (train) throw DatasetError((r / "Testing").string() + ": split folder not found (Training exists)");
  if (test) throw DatasetError((r / "Training").string() + ": split folder not found (Testing exists)");
  return Layout::Flat;
}

SplitLayout load_split_layout(const std::string& root, const std::vector<std::string>& classes) {
  fs::path r(root);
  require_dir(r, "data set");
  require_dir(r / "Training", "split");
  require_dir(r / "Testing", "split");
  SplitLayout out;
  out.train = scan_folder((r / "Training").string(), classes);
  out.test = scan_by_name((r / "Testing").string(), out.train.classes, "Training");
  return out;
}

TrainVal stratified_split(const DatasetSplit& data, double f, uint64_t seed) {
  std::vector<int64_t> own(data.samples.size());
  std::iota(own.begin(), own.end(), int64_t(0));
  return grouped_split(data, own, f, seed);
}

TrainVal grouped_split(const DatasetSplit& data, const std::vector<int64_t>& group, double f, uint64_t seed) {
  if (!(f > 0.0 && f < 1.0))
    throw DatasetError("stratified split: validation fraction must be in (0, 1), got " + std::to_string(f));
  const size_t k = data.classes.size(), n = data.samples.size();
  if (group.size() != n)
    throw DatasetError("grouped split: " + std::to_string(group.size()) + " group ids for " + std::to_string(n) +
                       " samples");
  // Groups in order of their first member; each is stratified by that member's class.
  std::map<int64_t, size_t> group_index;
  std::vector<std::vector<size_t>> members;
  std::vector<std::vector<size_t>> by_class(k);  // group indices per class
  std::vector<int64_t> class_size(k, 0);
  for (size_t i = 0; i < n; ++i) {
    int64_t l = data.samples[i].label;
    if (l < 0 || size_t(l) >= k)
      throw DatasetError("stratified split: " + data.samples[i].path + " has label " + std::to_string(l) +
                         " outside [0, " + std::to_string(k) + ")");
    ++class_size[size_t(l)];
    auto [it, added] = group_index.emplace(group[i], members.size());
    if (added) {
      members.emplace_back();
      by_class[size_t(l)].push_back(it->second);
    }
    members[it->second].push_back(i);
  }

  // Largest-remainder apportionment of round(f·N) validation places (see dataset.h).
  const int64_t n_val = int64_t(std::nearbyint(f * double(n)));
  std::vector<int64_t> v(k);
  std::vector<double> frac(k);
  int64_t assigned = 0;
  for (size_t c = 0; c < k; ++c) {
    double share = f * double(class_size[c]);
    v[c] = int64_t(std::floor(share));
    frac[c] = share - double(v[c]);
    assigned += v[c];
  }
  std::vector<size_t> order(k);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return frac[a] > frac[b]; });
  for (size_t i = 0; assigned < n_val && i < k; ++i) {
    if (v[order[i]] < class_size[order[i]]) ++v[order[i]], ++assigned;
  }
  if (n_val == 0 || n_val >= int64_t(n))
    throw DatasetError("stratified split: fraction " + std::to_string(f) + " of " + std::to_string(n) +
                       " samples leaves the train or validation set empty");

  std::vector<char> in_val(n, 0);
  int64_t val_total = 0;
  uint64_t counter = 0;  // one Philox counter sequence through all classes: reproducible on any machine
  for (size_t c = 0; c < k; ++c) {
    auto& idx = by_class[c];
    for (size_t i = idx.size(); i > 1; --i) {  // Fisher-Yates: swap slot i-1 with a uniform j in [0, i)
      size_t j = size_t(philox::uniform(seed, counter++) * double(i));
      if (j >= i) j = i - 1;  // guard: u < 1 already, kept for safety against rounding
      std::swap(idx[i - 1], idx[j]);
    }
    // Whole groups in shuffled order, each taken while it still fits the class's places (with singleton
    // groups: exactly the first v_c samples).
    int64_t taken = 0;
    for (size_t g : idx) {
      const int64_t size = int64_t(members[g].size());
      if (taken + size > v[c]) continue;
      taken += size;
      for (size_t m : members[g]) in_val[m] = 1;
      if (taken == v[c]) break;
    }
    val_total += taken;
  }
  if (val_total == 0 || val_total == int64_t(n))
    throw DatasetError("grouped split: no way to split " + std::to_string(n) + " samples in whole groups leaves "
                       "both train and validation non-empty");

  TrainVal out;
  out.train.classes = out.val.classes = data.classes;
  for (size_t i = 0; i < n; ++i) (in_val[i] ? out.val : out.train).samples.push_back(data.samples[i]);
  return out;
}

std::optional<Image> try_decode(const Sample& sample, std::string& warning, const ImageLimits& limits) {
  try {
    return decode_image(sample.path, limits);
  } catch (const std::exception& e) {  // ImageError names the file; anything else gets the name added
    std::string msg = e.what();
    warning = msg.rfind(sample.path, 0) == 0 ? msg : sample.path + ": " + msg;
    return std::nullopt;
  }
}

}  // namespace tessera
