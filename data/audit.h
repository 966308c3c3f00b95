// Data-set audit: class counts, exact duplicates, near-duplicates, label conflicts and the "novel" Testing
// subset (Testing images with no near-copy in Training), for `tessera data audit`.
//
// Layouts: ROOT/Training/<class>/*, ROOT/Testing/<class>/* (either split may be missing), or a flat
// ROOT/<class>/* (split ""). Images: *.jpg/.jpeg/.png/.bmp, case-insensitive; files sorted by path.
//
// Exact duplicates: files whose bytes are identical. Files are bucketed by a 64-bit FNV-1a hash of their
// bytes, then every bucket is split by comparing bytes, so a hash collision can never merge two files.
//
// Near-duplicates: each image is decoded and resized with the Pillow-exact bilinear filter to 32×32 and to
// 8×8, both converted to luma (PIL's "L": (299 R + 587 G + 114 B) / 1000); the feature is the 32×32 luma
// minus the 8×8 luma spread over 4×4 blocks (a band-pass image, 1024 values). Two images are near-duplicates
// when the Pearson correlation of their features is >= `min_correlation`, or when their bytes are identical.
// Why band-pass: on plain thumbnails every axial MRI slice correlates at 0.97–0.98 with every other (dark
// background, oval head); removing the coarse image leaves the anatomy. Why correlation and not a 64-bit
// hash: it ignores brightness/contrast changes from re-encoding and gives a distance with a clear gap on the
// real data (see audit.cpp), and 1024-value dot products are cheap enough to compare every Testing image
// with every Training image and each split with itself. Known miss: a copy shifted or cropped by more than a
// few pixels (the features are not shift-invariant). Images whose feature is all zero ("flat": no detail at
// 32×32) are near-duplicates only of flat images of equal mean luma ± 2 levels.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

struct AuditOptions {
  // Why 0.95: see data/audit.cpp (measured on the brain-tumour MRI set).
  double min_correlation = 0.95;
};

struct AuditImage {
  std::string path;   // relative to ROOT, '/'-separated
  std::string split;  // "Training", "Testing", or "" for the flat layout
  std::string label;  // class folder name
  uint64_t bytes = 0;
  uint64_t hash = 0;  // FNV-1a 64 of the file bytes
  int width = 0, height = 0;
  int exact_group = -1;  // index into AuditReport::exact_groups, -1 when the file is unique
  // The connected component of the near-duplicate graph (exact copies included) over every split, named
  // by its smallest image index; an image with no near-copy is its own group. Set by audit_dataset only.
  // A component, not just direct pairs: a chain a~b~c of re-encoded copies is one picture, and a split
  // that kept a on one side and c on the other would leak it.
  int near_group = -1;
};

struct ClassCount {
  std::string split, label;
  int64_t images = 0, unreadable = 0;
  int64_t novel = 0;  // Testing only: images with no near-copy in Training
};

// Image indices (into AuditReport::images) of files with identical bytes; only groups of 2 or more.
struct ExactGroup {
  std::vector<int> members;
  bool cross_split = false;     // members in more than one split
  bool label_conflict = false;  // members with more than one label
};

struct NearPair {
  int a = 0, b = 0;  // image indices, a < b
  double correlation = 0;
  bool exact = false;  // identical bytes
};

struct AuditReport {
  std::string root;
  AuditOptions options;
  std::vector<AuditImage> images;  // readable images, sorted by path
  std::vector<std::string> unreadable;  // "path: reason", one per file that could not be read or decoded
  std::vector<ClassCount> counts;       // per (split, label), sorted
  std::vector<ExactGroup> exact_groups;

  int64_t files = 0;           // image files found, readable or not
  int64_t distinct = 0;        // distinct byte contents among readable images
  int64_t redundant = 0;       // images - distinct
  int64_t cross_split_distinct = 0;  // distinct contents present in both Training and Testing

  // Near-duplicate pairs (exact copies included) by where they lie.
  int64_t near_pairs_cross = 0, near_pairs_training = 0, near_pairs_testing = 0, near_pairs_flat = 0;
  std::vector<NearPair> conflicts;  // exact or near pairs whose labels differ (within and across splits)
  std::vector<int> novel;           // Testing images with no near-copy (or exact copy) in Training
  std::vector<int> best_match;      // per image: for Testing, the most correlated Training image, else -1
  std::vector<double> best_correlation;  // its correlation (-2 when none)
  int64_t testing_with_near_copy = 0;
};

// Scans ROOT, hashes every file, decodes in parallel and runs the comparisons. Unreadable images are
// recorded in `unreadable`, reported through `warn` (may be empty), and otherwise skipped. Throws when ROOT
// is missing or holds no class folder with images.
AuditReport audit_dataset(const std::string& root, const AuditOptions& options = {},
                          void (*warn)(const std::string& message) = nullptr);

// Only the folder walk and the byte hashes (no decoding): fills images, counts, files and the exact-
// duplicate fields. Fast enough for a test on the real data set.
AuditReport audit_exact(const std::string& root, void (*warn)(const std::string& message) = nullptr);

// FNV-1a, 64-bit, over a byte range.
uint64_t fnv1a64(const uint8_t* data, size_t size);

}  // namespace tessera
