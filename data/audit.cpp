// Data-set audit (see audit.h for the methods).
//
// Why the near-duplicate threshold is 0.95, measured on the brain-tumour MRI set (downscaled copy, the
// original files give the same picture): the best Training match of each of the 394 Testing images has
// a band-pass correlation >= 0.99 for 259 images (byte-identical copies: 1.0; resized/re-encoded copies:
// >= 0.99), then nothing between 0.95 and 0.99, then 7 images at 0.90–0.935 whose matches are neighbouring
// slices of the same scan (different pictures, looked at), and the rest below 0.85. 0.95 sits in the gap.
// The same 259 come out for thresholds 0.95–0.99 and 4 label-conflict pairs Testing × Training.
// Plain 16×16 luma correlation, tried first, has no such gap: different axial slices of different patients
// reach 0.97–0.98 (56 cross-label pairs at 0.97, looked at: clearly different brains).
// Known miss: Testing glioma image(52/98/99) are copies of Training m1(120) shifted/cropped; they score 0.80.
#include "data/audit.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "data/dataset.h"
#include "data/image.h"
#include "engine/core/fileio.h"
#include "engine/core/parallel.h"

namespace tessera {
namespace fs = std::filesystem;

uint64_t fnv1a64(const uint8_t* data, size_t size) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

constexpr int kThumb = 32;   // detail thumbnail side: 1024 luma values per image
constexpr int kCoarse = 8;   // the coarse version subtracted from it (each value covers 4×4 thumbnail pixels)
constexpr int kThumbN = kThumb * kThumb;

// An entry named like an image that is not a folder: a regular file, or one whose type cannot be known (a
// symbolic link loop, a dangling link), which is kept so that reading it reports it as unreadable.
bool is_image_entry(const fs::directory_entry& e) {
  std::error_code ec;
  return is_image_file(e.path().string()) && !e.is_directory(ec);
}

struct Found {
  std::string path, split, label;
};

// Sorted subdirectories of `dir` (the class folders).
std::vector<fs::path> subdirs(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory(ec)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// ROOT/Training/<class>/*, ROOT/Testing/<class>/*, or flat ROOT/<class>/*; files sorted by relative path.
std::vector<Found> walk(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw std::runtime_error("data audit: " + root.string() + ": not a directory");
  std::vector<std::pair<std::string, fs::path>> split_dirs;  // (split name, its folder)
  for (const char* s : {"Training", "Testing"})
    if (fs::is_directory(root / s)) split_dirs.push_back({s, root / s});
  if (split_dirs.empty()) split_dirs.push_back({"", root});

  std::vector<Found> out;
  for (const auto& [split, dir] : split_dirs)
    for (const fs::path& cls : subdirs(dir))
      for (const auto& e : fs::directory_iterator(cls))
        if (is_image_entry(e))
          out.push_back({e.path().lexically_relative(root).generic_string(), split, cls.filename().string()});
  std::sort(out.begin(), out.end(), [](const Found& a, const Found& b) { return a.path < b.path; });
  if (out.empty())
    throw std::runtime_error("data audit: " + root.string() +
                             ": no images (expected Training/<class>/*.jpg, Testing/<class>/*.jpg or <class>/*.jpg)");
  return out;
}

// The thumbnail as a zero-mean unit-norm vector, so that the Pearson correlation of two is their dot product.
struct Thumb {
  float v[kThumbN];
  float mean = 0;
  bool flat = false;  // no variation: correlation undefined
};

// PIL's convert("L") of a Pillow-bilinear resize: ITU-R 601-2 luma with integer weights and rounding.
std::vector<float> luma(const Image& img, int side) {
  Image small = resize(img, side, side, Filter::Bilinear);
  std::vector<float> out(size_t(side) * size_t(side));
  for (size_t i = 0; i < out.size(); ++i) {
    const uint8_t* p = small.rgb.data() + 3 * i;
    out[i] = float((p[0] * 299 + p[1] * 587 + p[2] * 114 + 500) / 1000);
  }
  return out;
}

// 32×32 luma minus the 8×8 luma spread over 4×4 blocks: a band-pass image. Subtracting the coarse image
// removes what every MRI slice shares (dark background, an oval head of similar size), which otherwise
// makes different slices correlate at 0.97–0.98 on plain thumbnails.
Thumb make_thumb(const Image& img) {
  std::vector<float> fine = luma(img, kThumb), coarse = luma(img, kCoarse);
  const int block = kThumb / kCoarse;
  Thumb t;
  double sum = 0;
  for (int y = 0; y < kThumb; ++y)
    for (int x = 0; x < kThumb; ++x) {
      int i = y * kThumb + x;
      t.v[i] = fine[size_t(i)] - coarse[size_t((y / block) * kCoarse + x / block)];
      sum += t.v[i];
    }
  double mean = 0;
  for (float f : fine) mean += f;
  t.mean = float(mean / kThumbN);  // for flat images only
  double norm = 0;
  for (float& x : t.v) {
    x -= float(sum / kThumbN);
    norm += double(x) * x;
  }
  t.flat = norm < 1e-6;
  if (!t.flat)
    for (float& x : t.v) x = float(x / std::sqrt(norm));
  return t;
}

double correlation(const Thumb& a, const Thumb& b) {
  if (a.flat || b.flat) return (a.flat && b.flat && std::fabs(a.mean - b.mean) <= 2) ? 1.0 : 0.0;
  // Eight partial sums: lets the compiler vectorise without -ffast-math (the 5M pairs of the MRI set).
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < kThumbN; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a.v[i + k] * b.v[i + k];
  return double(acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7]);
}

// Fills images/counts/exact groups from the walk; `thumbs` (when non-null) receives one per readable image.
AuditReport scan(const std::string& root, bool decode, std::vector<Thumb>* thumbs,
                 void (*warn)(const std::string&)) {
  const fs::path rootp(root);
  std::vector<Found> found = walk(rootp);
  const int64_t n = int64_t(found.size());

  std::vector<AuditImage> all(static_cast<size_t>(n));
  std::vector<std::string> error(static_cast<size_t>(n));
  std::vector<Thumb> all_thumbs(decode ? size_t(n) : 0);
  // Each file is read once: hashed, then decoded from the same bytes. Chunks of 8 files per task.
  parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      AuditImage& im = all[size_t(i)];
      im.path = found[size_t(i)].path;
      im.split = found[size_t(i)].split;
      im.label = found[size_t(i)].label;
      try {
        const std::string file = read_image_file((rootp / im.path).string());  // the decoder's file checks
        const auto* bytes = reinterpret_cast<const uint8_t*>(file.data());
        if (file.empty()) throw std::runtime_error("empty file");
        im.bytes = file.size();
        im.hash = fnv1a64(bytes, file.size());
        if (decode) {
          Image img = decode_image_memory(bytes, file.size(), im.path);
          im.width = img.width;
          im.height = img.height;
          all_thumbs[size_t(i)] = make_thumb(img);
        }
      } catch (const std::exception& e) {
        std::string what = e.what();
        // ImageError and FileError messages already name the file; keep one "path: reason".
        error[size_t(i)] = what.find(im.path) != std::string::npos ? what : im.path + ": " + what;
      }
    }
  });

  AuditReport r;
  r.root = root;
  r.files = n;
  std::map<std::pair<std::string, std::string>, ClassCount> counts;
  for (int64_t i = 0; i < n; ++i) {
    AuditImage& im = all[size_t(i)];
    ClassCount& c = counts[{im.split, im.label}];
    c.split = im.split;
    c.label = im.label;
    if (!error[size_t(i)].empty()) {
      ++c.unreadable;
      r.unreadable.push_back(error[size_t(i)]);
      if (warn) warn("skipping unreadable image " + error[size_t(i)]);
      continue;
    }
    ++c.images;
    r.images.push_back(std::move(im));
    if (thumbs) thumbs->push_back(all_thumbs[size_t(i)]);
  }
  for (auto& [key, c] : counts) r.counts.push_back(c);

  // Exact duplicates: bucket by hash, then split each bucket by comparing bytes (collisions stay apart).
  std::map<uint64_t, std::vector<int>> by_hash;
  for (int i = 0; i < int(r.images.size()); ++i) by_hash[r.images[size_t(i)].hash].push_back(i);
  r.distinct = 0;
  for (auto& [hash, bucket] : by_hash) {
    std::vector<std::pair<std::string, std::vector<int>>> contents;  // distinct bytes, members
    if (bucket.size() == 1) {
      ++r.distinct;
      continue;
    }
    for (int i : bucket) {
      std::string bytes = read_file((rootp / r.images[size_t(i)].path).string());
      auto it = std::find_if(contents.begin(), contents.end(), [&](const auto& c) { return c.first == bytes; });
      if (it == contents.end())
        contents.push_back({std::move(bytes), {i}});
      else
        it->second.push_back(i);
    }
    r.distinct += int64_t(contents.size());
    for (auto& [bytes, members] : contents) {
      if (members.size() < 2) continue;
      ExactGroup g;
      g.members = members;
      for (int m : members) {
        const AuditImage& a = r.images[size_t(m)];
        const AuditImage& first = r.images[size_t(members[0])];
        g.cross_split |= a.split != first.split;
        g.label_conflict |= a.label != first.label;
        r.images[size_t(m)].exact_group = int(r.exact_groups.size());
      }
      r.cross_split_distinct += g.cross_split;
      r.exact_groups.push_back(std::move(g));
    }
  }
  r.redundant = int64_t(r.images.size()) - r.distinct;
  // Groups in path order of their first member (the map above is in hash order).
  std::vector<int> order(r.exact_groups.size());
  for (size_t g = 0; g < order.size(); ++g) order[g] = int(g);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return r.exact_groups[size_t(a)].members[0] < r.exact_groups[size_t(b)].members[0];
  });
  std::vector<ExactGroup> sorted;
  std::vector<int> new_index(order.size());
  for (size_t k = 0; k < order.size(); ++k) {
    new_index[size_t(order[k])] = int(k);
    sorted.push_back(std::move(r.exact_groups[size_t(order[k])]));
  }
  r.exact_groups = std::move(sorted);
  for (AuditImage& im : r.images)
    if (im.exact_group >= 0) im.exact_group = new_index[size_t(im.exact_group)];
  return r;
}

}  // namespace

AuditReport audit_exact(const std::string& root, void (*warn)(const std::string&)) {
  return scan(root, false, nullptr, warn);
}

AuditReport audit_dataset(const std::string& root, const AuditOptions& options,
                          void (*warn)(const std::string&)) {
  std::vector<Thumb> thumbs;
  AuditReport r = scan(root, true, &thumbs, warn);
  r.options = options;
  const int n = int(r.images.size());
  std::vector<int> training, testing, flat;
  for (int i = 0; i < n; ++i) {
    const std::string& s = r.images[size_t(i)].split;
    (s == "Training" ? training : s == "Testing" ? testing : flat).push_back(i);
  }
  auto near = [&](int a, int b, NearPair& p) {
    const AuditImage &x = r.images[size_t(a)], &y = r.images[size_t(b)];
    p = {std::min(a, b), std::max(a, b), correlation(thumbs[size_t(a)], thumbs[size_t(b)]),
         x.exact_group >= 0 && x.exact_group == y.exact_group};
    return p.exact || p.correlation >= options.min_correlation;
  };

  // Every pair of `list` with itself (j > i) or `list` × `other`; pairs per row, merged in row order so
  // the result does not depend on the thread count.
  auto compare = [&](const std::vector<int>& list, const std::vector<int>* other, bool track_best) {
    std::vector<std::vector<NearPair>> rows(list.size());
    parallel_for(int64_t(list.size()), 4, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        int a = list[size_t(k)];
        const std::vector<int>& cand = other ? *other : list;
        for (size_t j = other ? 0 : size_t(k) + 1; j < cand.size(); ++j) {
          NearPair p;
          bool hit = near(a, cand[j], p);
          if (track_best && p.correlation > r.best_correlation[size_t(a)]) {
            r.best_correlation[size_t(a)] = p.correlation;
            r.best_match[size_t(a)] = cand[j];
          }
          if (hit) rows[size_t(k)].push_back(p);
        }
      }
    });
    std::vector<NearPair> out;
    for (auto& row : rows) out.insert(out.end(), row.begin(), row.end());
    return out;
  };

  r.best_match.assign(size_t(n), -1);
  r.best_correlation.assign(size_t(n), -2.0);
  std::vector<NearPair> cross = compare(testing, &training, true);
  std::vector<NearPair> within_train = compare(training, nullptr, false);
  std::vector<NearPair> within_test = compare(testing, nullptr, false);
  std::vector<NearPair> within_flat = compare(flat, nullptr, false);
  r.near_pairs_cross = int64_t(cross.size());
  r.near_pairs_training = int64_t(within_train.size());
  r.near_pairs_testing = int64_t(within_test.size());
  r.near_pairs_flat = int64_t(within_flat.size());

  // Near groups: union-find over every near pair (path halving; the smaller index becomes the root, so a
  // group is named by its first image in path order).
  std::vector<int> parent(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) parent[size_t(i)] = i;
  auto find = [&](int i) {
    while (parent[size_t(i)] != i) i = parent[size_t(i)] = parent[size_t(parent[size_t(i)])];
    return i;
  };
  for (const auto* list : {&cross, &within_train, &within_test, &within_flat})
    for (const NearPair& p : *list) {
      const int a = find(p.a), b = find(p.b);
      if (a != b) parent[size_t(std::max(a, b))] = std::min(a, b);
    }
  for (int i = 0; i < n; ++i) r.images[size_t(i)].near_group = find(i);

  std::vector<char> has_copy(size_t(n), 0);
  for (const NearPair& p : cross) has_copy[size_t(p.a)] = has_copy[size_t(p.b)] = 1;  // only the Testing one matters
  for (const auto* list : {&cross, &within_train, &within_test, &within_flat})
    for (const NearPair& p : *list)
      if (r.images[size_t(p.a)].label != r.images[size_t(p.b)].label) r.conflicts.push_back(p);

  for (int t : testing) {
    if (has_copy[size_t(t)]) {
      ++r.testing_with_near_copy;
      continue;
    }
    r.novel.push_back(t);
    for (ClassCount& c : r.counts)
      if (c.split == "Testing" && c.label == r.images[size_t(t)].label) ++c.novel;
  }
  return r;
}

}  // namespace tessera
