// `tessera data audit` (data/audit.h): a synthetic data set where every count is known, the folder layouts,
// errors, and — when the real data set is beside the repository — its exact-duplicate numbers.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "data/audit.h"
#include "data/image.h"
#include "tests/temp_dir.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

using tessera::testing::TempDir;

// A 64×64 picture with detail at every scale the audit looks at: 16×16 random levels, bicubic-upsampled.
// Different seeds give unrelated pictures (feature correlation near 0).
Image pattern(unsigned seed) {
  std::mt19937 rng(seed);
  Image small(16, 16);
  for (size_t i = 0; i < small.rgb.size(); i += 3)
    small.rgb[i] = small.rgb[i + 1] = small.rgb[i + 2] = uint8_t(rng() % 256);
  return resize(small, 64, 64, Filter::Bicubic);
}

void write_png(const fs::path& path, const Image& img) {
  fs::create_directories(path.parent_path());
  REQUIRE_MESSAGE(stbi_write_png(path.string().c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3),
                  "cannot write " << path);
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A copy that differs in every byte of the file and slightly in pixels: resized, brightened by 3 levels.
Image altered(const Image& img, int w, int h) {
  Image out = resize(img, w, h, Filter::Bicubic);
  for (uint8_t& v : out.rgb) v = uint8_t(std::min(255, v + 3));
  return out;
}

int index_of(const AuditReport& r, const std::string& path) {
  for (size_t i = 0; i < r.images.size(); ++i)
    if (r.images[i].path == path) return int(i);
  FAIL("no image " << path << " in the report");
  return -1;
}

const ClassCount& count_of(const AuditReport& r, const std::string& split, const std::string& label) {
  for (const ClassCount& c : r.counts)
    if (c.split == split && c.label == label) return c;
  FAIL("no count for " << split << "/" << label);
  return r.counts.front();
}

}  // namespace

TEST_CASE("fnv1a64 matches the published test vectors") {
  CHECK(fnv1a64(nullptr, 0) == 0xcbf29ce484222325ull);
  const uint8_t a[] = {'a'};
  CHECK(fnv1a64(a, 1) == 0xaf63dc4c8601ec8cull);
  const uint8_t foobar[] = {'f', 'o', 'o', 'b', 'a', 'r'};
  CHECK(fnv1a64(foobar, 6) == 0x85944171f73967e8ull);
}

TEST_CASE("audit of a synthetic Training/Testing set: counts, duplicates, conflicts, novel list") {
  TempDir tmp;
  const fs::path& root = tmp.path;
  write_png(root / "Training/cat/base1.png", pattern(1));
  write_png(root / "Training/cat/base2.png", pattern(2));
  write_png(root / "Training/dog/base4.png", pattern(4));
  fs::copy_file(root / "Training/cat/base1.png", root / "Training/dog/dup1.PNG");  // exact, other label
  fs::create_directories(root / "Testing/cat");
  fs::copy_file(root / "Training/cat/base1.png", root / "Testing/cat/copy1.png");  // exact, across splits
  write_png(root / "Testing/cat/near2.png", altered(pattern(2), 60, 60));      // near copy, same label
  write_png(root / "Testing/cat/novel3.png", pattern(3));                       // a different picture
  write_png(root / "Testing/cat/conflict4.png", altered(pattern(4), 56, 56));  // near copy of a dog
  write_bytes(root / "Testing/dog/corrupt.jpg", "\xff\xd8\xff\xe0 not really a jpeg");
  write_bytes(root / "Testing/cat/notes.txt", "not an image: ignored");

  std::vector<std::string> warnings;
  static std::vector<std::string>* sink = nullptr;
  sink = &warnings;
  AuditReport r = audit_dataset(root.string(), AuditOptions{}, [](const std::string& m) { sink->push_back(m); });

  // Counts: 9 image files, the corrupt one skipped with a warning naming it.
  CHECK(r.files == 9);
  CHECK(r.images.size() == 8);
  REQUIRE(r.unreadable.size() == 1);
  CHECK(r.unreadable[0].find("Testing/dog/corrupt.jpg") != std::string::npos);
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("Testing/dog/corrupt.jpg") != std::string::npos);
  CHECK(count_of(r, "Training", "cat").images == 2);
  CHECK(count_of(r, "Training", "dog").images == 2);
  CHECK(count_of(r, "Testing", "cat").images == 4);
  CHECK(count_of(r, "Testing", "dog").images == 0);
  CHECK(count_of(r, "Testing", "dog").unreadable == 1);
  CHECK(count_of(r, "Testing", "cat").novel == 1);

  // Exact: base1 = dup1 = copy1 (one group across splits and labels); 6 distinct contents of 8.
  CHECK(r.distinct == 6);
  CHECK(r.redundant == 2);
  CHECK(r.cross_split_distinct == 1);
  REQUIRE(r.exact_groups.size() == 1);
  CHECK(r.exact_groups[0].members.size() == 3);
  CHECK(r.exact_groups[0].cross_split);
  CHECK(r.exact_groups[0].label_conflict);

  // Near: copy1 ~ base1, copy1 ~ dup1 (exact), near2 ~ base2, conflict4 ~ base4; base1 ~ dup1 in Training.
  const int near2 = index_of(r, "Testing/cat/near2.png"), novel3 = index_of(r, "Testing/cat/novel3.png");
  const int conflict4 = index_of(r, "Testing/cat/conflict4.png");
  INFO("near2 " << r.best_correlation[size_t(near2)] << ", conflict4 " << r.best_correlation[size_t(conflict4)]
                << ", novel3 " << r.best_correlation[size_t(novel3)]);
  CHECK(r.best_correlation[size_t(near2)] >= 0.95);
  CHECK(r.best_match[size_t(near2)] == index_of(r, "Training/cat/base2.png"));
  CHECK(r.best_match[size_t(conflict4)] == index_of(r, "Training/dog/base4.png"));
  CHECK(r.best_correlation[size_t(novel3)] < 0.5);
  CHECK(r.near_pairs_cross == 4);
  CHECK(r.near_pairs_training == 1);
  CHECK(r.near_pairs_testing == 0);
  CHECK(r.testing_with_near_copy == 3);

  // Conflicts: copy1/dup1 and base1/dup1 (exact), conflict4/base4 (near).
  REQUIRE(r.conflicts.size() == 3);
  int exact = 0;
  for (const NearPair& p : r.conflicts) exact += p.exact;
  CHECK(exact == 2);

  REQUIRE(r.novel.size() == 1);
  CHECK(r.images[size_t(r.novel[0])].path == "Testing/cat/novel3.png");

  // Near groups: the connected components of those pairs, named by their first image in path order.
  auto group = [&](const char* path) { return r.images[size_t(index_of(r, path))].near_group; };
  const int base1 = group("Training/cat/base1.png");
  CHECK(base1 == std::min({index_of(r, "Training/cat/base1.png"), index_of(r, "Training/dog/dup1.PNG"),
                           index_of(r, "Testing/cat/copy1.png")}));
  CHECK(group("Training/dog/dup1.PNG") == base1);
  CHECK(group("Testing/cat/copy1.png") == base1);
  CHECK(group("Testing/cat/near2.png") == group("Training/cat/base2.png"));
  CHECK(group("Testing/cat/conflict4.png") == group("Training/dog/base4.png"));
  CHECK(group("Training/cat/base2.png") != base1);
  CHECK(group("Training/dog/base4.png") != group("Training/cat/base2.png"));
  CHECK(group("Testing/cat/novel3.png") == index_of(r, "Testing/cat/novel3.png"));  // alone

  // A threshold above 1 would still find exact copies (identical bytes always count).
  AuditOptions strict;
  strict.min_correlation = 1.5;
  AuditReport s = audit_dataset(root.string(), strict);
  CHECK(s.near_pairs_cross == 2);
  CHECK(s.testing_with_near_copy == 1);
  CHECK(s.novel.size() == 3);
}

TEST_CASE("flat layout ROOT/class/* and extension matching") {
  TempDir tmp;
  write_png(tmp.path / "b_class/x.PNG", pattern(7));
  write_png(tmp.path / "a_class/y.png", pattern(8));
  fs::copy_file(tmp.path / "a_class/y.png", tmp.path / "a_class/z.JpEg");  // named .jpeg, PNG bytes: decodes
  write_bytes(tmp.path / "a_class/readme.md", "ignored");
  AuditReport r = audit_dataset(tmp.path.string());
  REQUIRE(r.images.size() == 3);
  CHECK(r.images[0].path == "a_class/y.png");  // sorted
  CHECK(r.images[0].split == "");
  CHECK(r.images[2].label == "b_class");
  CHECK(r.distinct == 2);
  CHECK(r.near_pairs_flat == 1);
  CHECK(r.novel.empty());
}

TEST_CASE("errors name the path and the problem") {
  TempDir tmp;
  CHECK_THROWS_WITH(audit_dataset((tmp.path / "missing").string()),
                    doctest::Contains("missing: not a directory"));
  fs::create_directories(tmp.path / "Training/empty_class");
  CHECK_THROWS_WITH(audit_dataset(tmp.path.string()), doctest::Contains("no images"));
}

// The real data set, when it is beside the repository. Only the byte hashes (fast, also under ASan).
// Numbers: the downscaled copy has 2,945 distinct contents, 145 of them in both splits. The dataset README's
// 3,027 / 64 are for the original files (this code gives exactly 3,027 / 64 on them, and git's blob ids of
// the original repository agree); re-encoding made more files identical: originals that differed only in
// their JPEG encoding decode to the same pixels, and the same resize + encoder then writes the same bytes.
TEST_CASE("real data set exact duplicates (skipped when absent)") {
  const fs::path root = fs::path(TESSERA_SOURCE_DIR) / "../shared/datasets/brain-tumor-mri";
  if (!fs::is_directory(root / "Training")) {
    MESSAGE("skipped: no data set at " << root.string());
    return;
  }
  AuditReport r = audit_exact(root.string());
  CHECK(r.files == 3264);
  CHECK(r.unreadable.empty());
  CHECK(count_of(r, "Training", "glioma_tumor").images == 826);
  CHECK(count_of(r, "Training", "no_tumor").images == 395);
  CHECK(count_of(r, "Testing", "meningioma_tumor").images == 115);
  CHECK(count_of(r, "Testing", "pituitary_tumor").images == 74);
  CHECK(r.distinct == 2945);
  CHECK(r.redundant == 319);
  CHECK(r.cross_split_distinct == 145);
}
