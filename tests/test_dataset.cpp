// Image-folder scanning, the stratified split, skip-on-corrupt decoding and online augmentation.
// Folders are built in a temporary directory with tiny PNG/JPEG/BMP files (stb_image_write); the real
// brain-tumor MRI copy is checked too when it is present (../shared/datasets/brain-tumor-mri from the repo).
#include <doctest/doctest.h>
#include <unistd.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "engine/core/fileio.h"
#include "engine/core/parallel.h"
#include "tests/errors.h"
#include "tests/temp_dir.h"

using namespace tessera;
using tessera::testing::contains;
namespace fs = std::filesystem;

namespace {

using tessera::testing::TempDir;

// A deterministic, non-symmetric test picture: every pixel different enough that flips/rotations show.
Image pattern(int w, int h, int salt = 0) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.pixel(x, y);
      p[0] = uint8_t((x * 7 + y * 3 + salt) & 255);
      p[1] = uint8_t((x * x + 5 * y + salt * 3) & 255);
      p[2] = uint8_t((x * y + 11 + salt) & 255);
    }
  return im;
}

void write_image(const fs::path& p, const Image& im) {
  fs::create_directories(p.parent_path());
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  int ok = 0;
  if (ext == ".png") ok = stbi_write_png(p.c_str(), im.width, im.height, 3, im.rgb.data(), im.width * 3);
  else if (ext == ".bmp") ok = stbi_write_bmp(p.c_str(), im.width, im.height, 3, im.rgb.data());
  else ok = stbi_write_jpg(p.c_str(), im.width, im.height, 3, im.rgb.data(), 90);
  REQUIRE_MESSAGE(ok != 0, "cannot write " << p);
}

void write_text(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << s;
}

// Runs f, requires it to throw DatasetError, returns the message.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const DatasetError& e) {
    return e.what();
  }
  FAIL("expected a DatasetError");
  return {};
}

// A DatasetSplit with given per-class counts and fake paths (the split never opens files).
DatasetSplit synthetic(const std::vector<int>& counts) {
  DatasetSplit d;
  for (size_t c = 0; c < counts.size(); ++c) {
    d.classes.push_back("class" + std::to_string(c));
    for (int i = 0; i < counts[c]; ++i)
      d.samples.push_back(Sample{"class" + std::to_string(c) + "/" + std::to_string(1000 + i) + ".jpg", int64_t(c)});
  }
  return d;
}

std::set<std::string> paths_of(const DatasetSplit& d) {
  std::set<std::string> s;
  for (const auto& x : d.samples) s.insert(x.path);
  return s;
}

const fs::path kRealData = fs::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "datasets" / "brain-tumor-mri";

}  // namespace

TEST_CASE("dataset: flat folder - sorted classes, image files by extension, sorted paths") {
  TempDir t("flat");
  const fs::path r = t.path / "data";
  write_image(r / "zeta" / "b.png", pattern(8, 6));
  write_image(r / "zeta" / "A (1).JPG", pattern(8, 6, 1));  // upper-case extension, space and parentheses
  write_image(r / "alpha" / "x.jpeg", pattern(5, 5));
  write_image(r / "alpha" / "w.bmp", pattern(5, 5, 2));
  write_text(r / "alpha" / "notes.txt", "not an image");
  write_text(r / "alpha" / "noext", "not an image");
  write_image(r / "mid dle" / "only.png", pattern(4, 4));
  fs::create_directories(r / ".hidden");  // hidden folders are not classes

  DatasetSplit d = scan_folder(r.string());
  CHECK(d.classes == std::vector<std::string>{"alpha", "mid dle", "zeta"});
  REQUIRE(d.size() == 5);
  CHECK(d.samples[0].path == (r / "alpha" / "w.bmp").string());
  CHECK(d.samples[1].path == (r / "alpha" / "x.jpeg").string());
  CHECK(d.samples[2].path == (r / "mid dle" / "only.png").string());
  CHECK(d.samples[3].path == (r / "zeta" / "A (1).JPG").string());
  CHECK(d.samples[4].path == (r / "zeta" / "b.png").string());
  CHECK(d.samples[0].label == 0);
  CHECK(d.samples[2].label == 1);
  CHECK(d.samples[4].label == 2);
  CHECK(d.class_counts() == std::vector<int64_t>{2, 1, 2});
  CHECK(detect_layout(r.string()) == Layout::Flat);

  // A given list fixes the order (and labels) and ignores other folders.
  DatasetSplit g = scan_folder(r.string(), {"zeta", "alpha"});
  CHECK(g.classes == std::vector<std::string>{"zeta", "alpha"});
  CHECK(g.class_counts() == std::vector<int64_t>{2, 2});
  CHECK(g.samples[0].label == 0);
  CHECK(g.samples[0].path == (r / "zeta" / "A (1).JPG").string());

  CHECK(is_image_file("a/b.PnG"));
  CHECK(is_image_file("x.JPEG"));
  CHECK_FALSE(is_image_file("x.gif"));
  CHECK_FALSE(is_image_file("jpg"));
}

TEST_CASE("dataset: errors name the folder and the problem") {
  TempDir t("errors");
  const fs::path r = t.path / "data";
  CHECK(contains(error_of([&] { scan_folder((t.path / "missing").string()); }), (t.path / "missing").string()));
  CHECK(contains(error_of([&] { detect_layout((t.path / "missing").string()); }), "not found"));

  write_image(r / "a" / "1.png", pattern(4, 4));
  std::string one = error_of([&] { scan_folder(r.string()); });
  CHECK(contains(one, "at least 2"));
  CHECK(contains(one, r.string()));

  fs::create_directories(r / "empty");
  write_text(r / "empty" / "readme.txt", "x");
  std::string empty = error_of([&] { scan_folder(r.string()); });
  CHECK(contains(empty, (r / "empty").string()));
  CHECK(contains(empty, "no images"));

  write_image(r / "empty" / "1.png", pattern(4, 4));
  CHECK(scan_folder(r.string()).size() == 2);
  std::string unknown = error_of([&] { scan_folder(r.string(), {"a", "nope"}); });
  CHECK(contains(unknown, (r / "nope").string()));
  CHECK(contains(error_of([&] { scan_folder(r.string(), {"a", "a"}); }), "twice"));
  // A file where the root should be.
  write_text(t.path / "file", "x");
  CHECK(contains(error_of([&] { scan_folder((t.path / "file").string()); }), "not a folder"));
}

TEST_CASE("dataset: Training/Testing split layout") {
  TempDir t("split");
  const fs::path r = t.path / "mri";
  for (const char* split : {"Training", "Testing"})
    for (const char* cls : {"no_tumor", "glioma_tumor"})
      for (int i = 0; i < 3; ++i)
        write_image(r / split / cls / ("img (" + std::to_string(i) + ").jpg"), pattern(6, 6, i));
  write_image(r / "Training" / "glioma_tumor" / "extra.png", pattern(6, 6));

  CHECK(detect_layout(r.string()) == Layout::Split);
  SplitLayout s = load_split_layout(r.string());
  CHECK(s.train.classes == std::vector<std::string>{"glioma_tumor", "no_tumor"});
  CHECK(s.test.classes == s.train.classes);
  CHECK(s.train.class_counts() == std::vector<int64_t>{4, 3});
  CHECK(s.test.class_counts() == std::vector<int64_t>{3, 3});

  // A Testing class that Training lacks is refused.
  write_image(r / "Testing" / "other" / "1.png", pattern(4, 4));
  CHECK(contains(error_of([&] { load_split_layout(r.string()); }), (r / "Testing" / "other").string()));
  fs::remove_all(r / "Testing" / "other");
  // Every extra class is named at once.
  write_image(r / "Testing" / "other" / "1.png", pattern(4, 4));
  write_image(r / "Testing" / "zebra" / "1.png", pattern(4, 4));
  CHECK(contains(error_of([&] { load_split_layout(r.string()); }), (r / "Testing" / "zebra").string()));
  fs::remove_all(r / "Testing" / "other");
  fs::remove_all(r / "Testing" / "zebra");
  // A Testing split missing a Training class is read by name: the other class keeps its Training label
  // (scanned by position it would become label 0), and the missing one is listed.
  fs::remove_all(r / "Testing" / "glioma_tumor");
  s = load_split_layout(r.string());
  CHECK(s.test.classes == s.train.classes);
  CHECK(s.test.missing == std::vector<std::string>{"glioma_tumor"});
  CHECK(s.test.class_counts() == std::vector<int64_t>{0, 3});
  for (const Sample& x : s.test.samples) CHECK(x.label == 1);
  // A fixed class list (a model's labels) in another order: labels follow the list, not the disk.
  DatasetSplit byname = scan_by_name((r / "Training").string(), {"no_tumor", "cat", "glioma_tumor"}, "the model");
  CHECK(byname.missing == std::vector<std::string>{"cat"});
  CHECK(byname.class_counts() == std::vector<int64_t>{3, 0, 4});
  CHECK(contains(error_of([&] { scan_by_name((r / "Training").string(), {"no_tumor"}, "the model"); }),
                 "not among the classes of the model (no_tumor)"));
  // Only one split folder.
  fs::remove_all(r / "Testing");
  CHECK(contains(error_of([&] { detect_layout(r.string()); }), (r / "Testing").string()));
  CHECK(contains(error_of([&] { load_split_layout(r.string()); }), (r / "Testing").string()));
}

TEST_CASE("dataset: a corrupt file is skipped with a warning naming it") {
  TempDir t("corrupt");
  const fs::path r = t.path / "data";
  write_image(r / "a" / "good.png", pattern(7, 5));
  write_text(r / "a" / "bad (copy).jpg", "this is not a jpeg");
  write_image(r / "b" / "good.jpg", pattern(7, 5));
  write_text(r / "b" / "empty.png", "");

  DatasetSplit d = scan_folder(r.string());
  REQUIRE(d.size() == 4);
  int decoded = 0, skipped = 0;
  std::vector<std::string> warnings;
  for (const auto& s : d.samples) {
    std::string warning;
    auto im = try_decode(s, warning);
    if (im) {
      ++decoded;
      CHECK(im->width == 7);
      CHECK(im->height == 5);
      CHECK(warning.empty());
    } else {
      ++skipped;
      CHECK(contains(warning, s.path));
      warnings.push_back(warning);
    }
  }
  CHECK(decoded == 2);
  CHECK(skipped == 2);
  std::string warning;
  CHECK_FALSE(try_decode(Sample{(r / "gone.png").string(), 0}, warning));
  CHECK(contains(warning, "gone.png"));
}

TEST_CASE("dataset: the fingerprint names the images, not where they lie or how they were scanned") {
  TempDir t("fingerprint");
  const fs::path r = t.path / "data";
  write_image(r / "a" / "one.png", pattern(7, 5));
  write_image(r / "a" / "two.png", pattern(7, 5, 1));
  write_image(r / "b" / "three.png", pattern(7, 5, 2));
  const std::string base = fingerprint(scan_folder(r.string()), r.string());
  CHECK(base.size() == 64);
  // A copy elsewhere, scanned with the classes in another order: the same images, the same fingerprint.
  fs::copy(r, t.path / "copy", fs::copy_options::recursive);
  CHECK(fingerprint(scan_folder((t.path / "copy").string(), {"b", "a"}), (t.path / "copy").string()) == base);
  // Every change to an image's bytes, name or class, and an added image, changes it.
  auto changed = [&](auto&& change) {
    fs::remove_all(t.path / "edit");
    fs::copy(r, t.path / "edit", fs::copy_options::recursive);
    change(t.path / "edit");
    return fingerprint(scan_folder((t.path / "edit").string()), (t.path / "edit").string()) != base;
  };
  CHECK(changed([](const fs::path& d) {
    std::fstream f(d / "a" / "one.png", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x7f');
  }));
  CHECK(changed([](const fs::path& d) { fs::rename(d / "a" / "two.png", d / "a" / "deux.png"); }));
  CHECK(changed([](const fs::path& d) { fs::rename(d / "a" / "two.png", d / "b" / "two.png"); }));
  CHECK(changed([](const fs::path& d) { write_image(d / "b" / "four.png", pattern(7, 5, 3)); }));
  // The SHA-256 is the standard one: the empty string's and "abc"'s digests (FIPS 180-4's examples).
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  write_text(t.path / "abc.txt", "abc");
  CHECK(sha256_file((t.path / "abc.txt").string()) == sha256_hex("abc"));
  CHECK_THROWS_WITH(sha256_file((t.path / "gone").string()), doctest::Contains("gone: cannot open"));
}

TEST_CASE("dataset: stratified split - sizes, proportions, disjoint, covering, seeded") {
  // The study's Training counts: 2870 → 2296 train / 574 validation at f = 0.2.
  const std::vector<int> counts{826, 822, 395, 827};
  DatasetSplit d = synthetic(counts);
  TrainVal s = stratified_split(d, 0.2, 42);
  CHECK(s.train.size() == 2296);
  CHECK(s.val.size() == 574);
  CHECK(s.train.classes == d.classes);
  auto vc = s.val.class_counts(), tc = s.train.class_counts();
  for (size_t c = 0; c < counts.size(); ++c) {
    double share = 0.2 * counts[c];
    CHECK(vc[c] >= int64_t(std::floor(share)));
    CHECK(vc[c] <= int64_t(std::ceil(share)));
    CHECK(vc[c] + tc[c] == counts[c]);
  }
  auto tp = paths_of(s.train), vp = paths_of(s.val);
  CHECK(tp.size() == 2296);  // no duplicates
  CHECK(vp.size() == 574);
  for (const auto& p : vp) CHECK_FALSE(tp.count(p));
  CHECK(tp.size() + vp.size() == d.size());

  // Same seed: same split. Another seed: another split.
  TrainVal again = stratified_split(d, 0.2, 42);
  CHECK(paths_of(again.val) == vp);
  TrainVal other = stratified_split(d, 0.2, 43);
  CHECK(other.val.size() == 574);
  CHECK(paths_of(other.val) != vp);

  // The total is round(f·N) even when the per-class floors fall short.
  TrainVal small = stratified_split(synthetic({5, 3, 3}), 0.5, 1);
  CHECK(small.val.size() == 6);  // round(5.5) = 6 (half to even)
  CHECK(small.train.size() == 5);

  CHECK_THROWS_AS(stratified_split(d, 0.0, 1), DatasetError);
  CHECK_THROWS_AS(stratified_split(d, 1.0, 1), DatasetError);
  CHECK_THROWS_AS(stratified_split(synthetic({1, 1}), 0.1, 1), DatasetError);  // empty validation
}

TEST_CASE("dataset: grouped split - whole groups, stratified, seeded, and singletons are the stratified split") {
  const std::vector<int> counts{826, 822, 395, 827};
  DatasetSplit d = synthetic(counts);
  // Every sample its own group: draw for draw the stratified split.
  std::vector<int64_t> own(d.size());
  for (size_t i = 0; i < own.size(); ++i) own[i] = int64_t(i) * 7 + 3;  // any distinct ids
  for (uint64_t seed : {42ull, 7ull})
    CHECK(paths_of(grouped_split(d, own, 0.2, seed).val) == paths_of(stratified_split(d, 0.2, seed).val));

  // Groups of 1 to 5 consecutive samples of a class (copies of one picture), one group spanning two classes.
  std::vector<int64_t> group(d.size());
  int64_t id = 0;
  for (size_t i = 0; i < d.size();) {
    const size_t size = 1 + (i * 2654435761u >> 7) % 5;
    for (size_t k = 0; k < size && i < d.size(); ++k, ++i) group[i] = id;
    ++id;
  }
  group[826] = group[825];  // the first meningioma joins the last glioma's group
  TrainVal s = grouped_split(d, group, 0.2, 42);
  std::map<int64_t, std::set<bool>> sides;
  const std::set<std::string> vp = paths_of(s.val);
  for (size_t i = 0; i < d.size(); ++i) sides[group[i]].insert(vp.count(d.samples[i].path) > 0);
  for (const auto& [g, side] : sides) CHECK_MESSAGE(side.size() == 1, "group " << g << " straddles the split");
  CHECK(s.train.size() + s.val.size() == d.size());
  // Each class's validation count stays within the largest group (5) of its share: groups are taken whole
  // while they fit, and small ones fill the rest.
  const auto vc = s.val.class_counts();
  for (size_t c = 0; c < counts.size(); ++c) {
    INFO("class " << c << ": " << vc[c] << " of " << counts[c]);
    CHECK(std::abs(double(vc[c]) - 0.2 * counts[c]) <= 5.0);
  }
  CHECK(paths_of(grouped_split(d, group, 0.2, 42).val) == vp);
  CHECK(paths_of(grouped_split(d, group, 0.2, 43).val) != vp);

  CHECK_THROWS_WITH_AS(grouped_split(d, std::vector<int64_t>(3, 0), 0.2, 1), doctest::Contains("3 group ids"),
                       DatasetError);
  // One group holding everything cannot be split.
  CHECK_THROWS_AS(grouped_split(d, std::vector<int64_t>(d.size(), 0), 0.2, 1), DatasetError);
}

TEST_CASE("dataset: the brain-tumor MRI copy (when present)") {
  if (!fs::exists(kRealData)) {
    MESSAGE("skipped: " << kRealData.string() << " not found");
    return;
  }
  const std::string root = kRealData.string();
  REQUIRE(detect_layout(root) == Layout::Split);
  SplitLayout s = load_split_layout(root);
  const std::vector<std::string> classes{"glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"};
  CHECK(s.train.classes == classes);
  CHECK(s.train.size() == 2870);
  CHECK(s.test.size() == 394);
  CHECK(s.train.class_counts() == std::vector<int64_t>{826, 822, 395, 827});
  CHECK(s.test.class_counts() == std::vector<int64_t>{100, 115, 105, 74});
  TrainVal tv = stratified_split(s.train, 0.2, 42);
  CHECK(tv.train.size() == 2296);
  CHECK(tv.val.size() == 574);
  // A few decode (names with spaces and parentheses included).
  for (size_t i = 0; i < s.test.size(); i += 97) {
    std::string warning;
    auto im = try_decode(s.test.samples[i], warning);
    CHECK_MESSAGE(im.has_value(), warning);
  }
}

// ---- augmentation ----

namespace {
AugmentConfig no_op_config(int size) {
  AugmentConfig c;
  c.rotation_degrees = 0;
  c.crop_scale_min = c.crop_scale_max = 1;
  c.ratio_min = c.ratio_max = 1;
  c.p_hflip = c.p_vflip = 0;
  c.brightness = c.contrast = 0;
  c.out_width = c.out_height = size;
  return c;
}
}  // namespace

TEST_CASE("augment: reproducible for (seed, key), different keys differ, any thread order") {
  const Image im = pattern(64, 48);
  AugmentConfig cfg;
  cfg.out_width = cfg.out_height = 32;
  Image a = augment(im, cfg, 42, 7), b = augment(im, cfg, 42, 7);
  CHECK(a.rgb == b.rgb);
  CHECK(a.width == 32);
  CHECK(a.height == 32);
  CHECK(augment(im, cfg, 42, 8).rgb != a.rgb);
  CHECK(augment(im, cfg, 43, 7).rgb != a.rgb);

  // Threads in any order produce what a serial loop does.
  const int n = 24;
  std::vector<Image> serial(n), parallel(n);
  for (int i = n - 1; i >= 0; --i) serial[i] = augment(im, cfg, 5, uint64_t(i));
  parallel_for(n, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) parallel[i] = augment(im, cfg, 5, uint64_t(i));
  });
  for (int i = 0; i < n; ++i) CHECK(serial[i].rgb == parallel[i].rgb);

  AugmentConfig off = cfg;
  off.enabled = false;
  CHECK(augment(im, off, 42, 7).rgb == im.rgb);
}

TEST_CASE("augment: flips are exact mirrors") {
  const Image im = pattern(9, 5);
  Image h = flip_horizontal(im), v = flip_vertical(im);
  bool ok = true;
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 9; ++x)
      for (int c = 0; c < 3; ++c) {
        ok &= h.pixel(x, y)[c] == im.pixel(8 - x, y)[c];
        ok &= v.pixel(x, y)[c] == im.pixel(x, 4 - y)[c];
      }
  CHECK(ok);
  CHECK(flip_horizontal(h).rgb == im.rgb);

  // Through the pipeline: only a horizontal flip drawn → exactly flip_horizontal.
  AugmentConfig cfg = no_op_config(0);
  AugmentParams p;
  p.crop = CropBox{0, 0, 9, 5};
  p.hflip = true;
  CHECK(apply_augment(im, p, cfg).rgb == h.rgb);
  cfg.p_hflip = 1;
  cfg.p_vflip = 1;
  cfg.ratio_min = 0.5;  // lets the full 9×5 crop be chosen in some attempt or the fallback
  cfg.ratio_max = 2.0;
  AugmentParams q = sample_augment_params(9, 5, cfg, 1, 1);
  CHECK(q.hflip);
  CHECK(q.vflip);
}

TEST_CASE("augment: no rotation, full crop, no flips or jitter is the identity") {
  const Image im = pattern(16, 16);
  CHECK(rotate(im, 0).rgb == im.rgb);
  CHECK(augment(im, no_op_config(16), 9, 3).rgb == im.rgb);
  AugmentParams p = sample_augment_params(16, 16, no_op_config(16), 9, 3);
  CHECK(p.crop.width == 16);
  CHECK(p.crop.height == 16);
  CHECK(p.brightness == 1);
  CHECK(p.contrast == 1);
}

TEST_CASE("augment: rotation by 90 degrees is PIL's counter-clockwise turn") {
  const Image im = pattern(6, 6);
  Image r = rotate(im, 90);
  bool ok = true;
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 6; ++x) ok &= std::equal(r.pixel(x, y), r.pixel(x, y) + 3, im.pixel(5 - y, x));
  CHECK(ok);
  // Golden values from Pillow 13: Image.rotate(angle, NEAREST, fillcolor=0) of a 7×5 image whose red
  // channel numbers the pixels 1..35 row by row (other channels 0). Exact: PIL's rotation is integer
  // fixed-point arithmetic, reproduced step by step.
  Image num(7, 5);
  for (int i = 0; i < 35; ++i) num.rgb[size_t(3 * i)] = uint8_t(i + 1);
  const std::vector<int> want_m112{8,  2,  3,  4,  5,  6,  0,  15, 9,  10, 11, 12, 13, 7,  22, 16, 17, 18,
                                   19, 20, 14, 29, 23, 24, 25, 26, 27, 21, 0,  30, 31, 32, 33, 34, 28};
  const std::vector<int> want_33{0,  0, 4,  5,  13, 14, 0,  2,  3,  11, 12, 19, 20, 28, 1,  9,  10, 18,
                                 26, 27, 35, 8, 16, 17, 24, 25, 33, 34, 0, 22, 23, 31, 32, 0,  0};
  for (auto [angle, want] : {std::pair{-11.2, want_m112}, std::pair{33.0, want_33}}) {
    Image rot = rotate(num, angle);
    std::vector<int> got;
    for (int i = 0; i < 35; ++i) got.push_back(rot.rgb[size_t(3 * i)]);
    CHECK_MESSAGE(got == want, "angle " << angle);
  }
  // A non-square canvas keeps its size; corners rotated out of it are filled with 0.
  Image r2 = rotate(pattern(20, 10), 45);
  CHECK(r2.width == 20);
  CHECK(r2.height == 10);
  CHECK(r2.pixel(0, 0)[0] == 0);
  CHECK(r2.pixel(0, 0)[1] == 0);
  CHECK(r2.pixel(0, 0)[2] == 0);
}

TEST_CASE("augment: brightness and contrast factors and arithmetic") {
  AugmentConfig cfg;
  const int n = 4000;
  double sum = 0, sum2 = 0, lo = 2, hi = 0;
  int brightness_first = 0, hflips = 0;
  for (int k = 0; k < n; ++k) {
    AugmentParams p = sample_augment_params(100, 100, cfg, 11, uint64_t(k));
    sum += p.brightness;
    sum2 += p.brightness * p.brightness;
    lo = std::min(lo, p.brightness);
    hi = std::max(hi, p.brightness);
    CHECK(p.contrast >= 0.8);
    CHECK(p.contrast <= 1.2);
    CHECK(std::abs(p.angle) <= 15.0);
    brightness_first += p.brightness_first;
    hflips += p.hflip;
  }
  const double mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
  // U(0.8, 1.2): mean 1, sd 0.4/√12 = 0.1155; with n = 4000 the mean's standard error is 0.0018, so 0.01 is
  // over 5 standard errors.
  CHECK(mean == doctest::Approx(1.0).epsilon(0.01));
  CHECK(sd == doctest::Approx(0.4 / std::sqrt(12.0)).epsilon(0.05));
  CHECK(lo >= 0.8);
  CHECK(hi <= 1.2);
  CHECK(lo < 0.81);
  CHECK(hi > 1.19);
  // Coin flips near 1/2 (binomial sd = 32 at n = 4000; 200 is over 6 sd).
  CHECK(std::abs(brightness_first - n / 2) < 200);
  CHECK(std::abs(hflips - n / 2) < 200);

  // PIL arithmetic: brightness trunc(f·v) clipped; contrast towards the gray mean.
  Image im(2, 1);
  im.rgb = {10, 100, 250, 0, 51, 200};
  Image b = adjust_brightness(im, 1.1);
  CHECK(b.rgb == std::vector<uint8_t>{11, 110, 255, 0, 56, 220});
  Image flat(3, 3);
  std::fill(flat.rgb.begin(), flat.rgb.end(), uint8_t(77));
  CHECK(adjust_contrast(flat, 1.2).rgb == flat.rgb);  // the mean of a flat image is the image
  Image c0 = adjust_contrast(im, 0.0);                // factor 0: every value becomes the gray mean
  // L = (19595 R + 38470 G + 7471 B + 2^15) >> 16: (10,100,250) → 90, (0,51,200) → 53; mean 71.5 → 72.
  CHECK(c0.rgb == std::vector<uint8_t>(6, 72));
}

TEST_CASE("augment: random resized crop within scale and ratio, output size") {
  AugmentConfig cfg;
  const int w = 300, h = 200;
  for (uint64_t k = 0; k < 500; ++k) {
    CropBox b = random_resized_crop_box(w, h, cfg, 3, k);
    REQUIRE(b.left >= 0);
    REQUIRE(b.top >= 0);
    REQUIRE(b.left + b.width <= w);
    REQUIRE(b.top + b.height <= h);
    // w, h are rounded to integers, so area and ratio may leave the ranges by the rounding (≤ 0.5 px each).
    double area = double(b.width) * b.height / (w * h), ratio = double(b.width) / b.height;
    CHECK(area >= 0.8 - 0.01);
    CHECK(area <= 1.0 + 0.01);
    CHECK(ratio >= 0.75 - 0.01);
    CHECK(ratio <= 4 / 3.0 + 0.01);
  }
  // Every attempt fails on a 1000×10 strip: the fallback is the center crop with ratio clamped to 4/3.
  CropBox f = random_resized_crop_box(1000, 10, cfg, 3, 0);
  CHECK(f.height == 10);
  CHECK(f.width == 13);
  CHECK(f.left == (1000 - 13) / 2);
  CHECK(f.top == 0);

  const Image im = pattern(w, h);
  Image out = augment(im, cfg, 1, 2);
  CHECK(out.width == 224);
  CHECK(out.height == 224);
  cfg.out_width = 0;  // no resize: the crop's own size
  AugmentParams p = sample_augment_params(w, h, cfg, 1, 2);
  Image raw = augment(im, cfg, 1, 2);
  CHECK(raw.width == p.crop.width);
  CHECK(raw.height == p.crop.height);
}

TEST_CASE("augment: invalid configurations are refused") {
  auto bad = [](auto edit) {
    AugmentConfig c;
    edit(c);
    CHECK_THROWS_AS(validate(c), std::invalid_argument);
  };
  bad([](AugmentConfig& c) { c.rotation_degrees = -1; });
  bad([](AugmentConfig& c) { c.crop_scale_min = 0; });
  bad([](AugmentConfig& c) { c.crop_scale_min = 0.9, c.crop_scale_max = 0.5; });
  bad([](AugmentConfig& c) { c.ratio_min = 2, c.ratio_max = 1; });
  bad([](AugmentConfig& c) { c.p_hflip = 1.5; });
  bad([](AugmentConfig& c) { c.brightness = -0.1; });
  CHECK_NOTHROW(validate(AugmentConfig{}));
}
