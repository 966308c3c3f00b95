// The training data loader: order, shapes, determinism across worker counts and prefetch depths, skipped
// files, worker errors, shutdown mid-epoch. Built on tiny PNGs written to a temporary folder; the real data
// set is used when present.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <doctest/doctest.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <stdexcept>
#include <thread>

#include "data/loader.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

// A fresh temporary folder of `n` small PNGs of varied sizes and contents, removed afterwards.
struct TempImages {
  fs::path dir;
  std::vector<Sample> samples;
  TempImages(const std::string& tag, int n) {
    dir = fs::temp_directory_path() / ("tessera_test_loader_" + std::to_string(getpid()) + "_" + tag);
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (int i = 0; i < n; ++i) {
      Image im(30 + 3 * (i % 5), 24 + 2 * (i % 7));
      for (size_t j = 0; j < im.rgb.size(); ++j) im.rgb[j] = uint8_t((j * 7 + size_t(i) * 31) % 251);
      std::string p = (dir / ("img" + std::to_string(i) + ".png")).string();
      REQUIRE(stbi_write_png(p.c_str(), im.width, im.height, 3, im.rgb.data(), im.width * 3) != 0);
      samples.push_back({p, i % 3});
    }
  }
  ~TempImages() { fs::remove_all(dir); }
};

LoaderConfig small_config(bool augment) {
  LoaderConfig cfg;
  cfg.processor = ProcessorConfig::vit(16);  // small output: the tests are about the plumbing
  if (augment) {
    AugmentConfig a;
    a.out_width = a.out_height = 20;
    cfg.augment = a;
  }
  cfg.batch_size = 4;
  cfg.seed = 7;
  return cfg;
}

struct EpochData {
  std::vector<int64_t> indices, labels, batch_sizes;
  std::vector<float> pixels;
};

EpochData run_epoch(DataLoader& loader, int64_t epoch) {
  EpochData d;
  loader.start_epoch(epoch);
  while (auto b = loader.next()) {
    d.batch_sizes.push_back(b->size());
    d.indices.insert(d.indices.end(), b->indices.begin(), b->indices.end());
    auto l = b->labels.to_vector<int64_t>();
    d.labels.insert(d.labels.end(), l.begin(), l.end());
    auto p = b->images.to_vector<float>();
    d.pixels.insert(d.pixels.end(), p.begin(), p.end());
  }
  return d;
}

// Runs f on another thread; fails (instead of hanging the test program) when it takes over `seconds`.
// On a timeout the stuck thread is left detached and the program should be considered broken: the point is
// a clear failure message instead of a silent CTest timeout.
template <class F> void finishes_within(double seconds, F f) {
  auto done = std::make_shared<std::promise<void>>();
  auto fut = done->get_future();
  std::thread([f, done] { f(); done->set_value(); }).detach();
  REQUIRE(fut.wait_for(std::chrono::duration<double>(seconds)) == std::future_status::ready);
}

}  // namespace

TEST_CASE("every sample exactly once per epoch and batch shapes with a partial last batch") {
  TempImages t("once", 10);
  LoaderConfig cfg = small_config(true);
  cfg.num_workers = 3;
  DataLoader loader(t.samples, 3, cfg);
  CHECK(loader.batches_per_epoch() == 3);
  EpochData d = run_epoch(loader, 0);
  CHECK(d.batch_sizes == std::vector<int64_t>{4, 4, 2});
  std::vector<int64_t> sorted = d.indices;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 10; ++i) CHECK(sorted[size_t(i)] == i);
  for (size_t r = 0; r < d.indices.size(); ++r) CHECK(d.labels[r] == t.samples[size_t(d.indices[r])].label);
  CHECK(d.pixels.size() == 10u * 3 * 16 * 16);
  CHECK(loader.skipped() == 0);
  CHECK(!loader.next().has_value());  // stays at the end

  // Shapes of one batch, and drop_last.
  loader.start_epoch(1);
  auto b = loader.next();
  REQUIRE(b.has_value());
  CHECK(b->images.shape() == Shape{4, 3, 16, 16});
  CHECK(b->images.dtype() == DType::f32);
  CHECK(b->labels.shape() == Shape{4});
  CHECK(b->labels.dtype() == DType::i64);
  cfg.drop_last = true;
  DataLoader dropping(t.samples, 3, cfg);
  CHECK(dropping.batches_per_epoch() == 2);
  CHECK(run_epoch(dropping, 0).batch_sizes == std::vector<int64_t>{4, 4});
}

TEST_CASE("same seed and epoch give identical batches for any worker count and prefetch depth") {
  TempImages t("determinism", 11);
  std::vector<EpochData> runs;
  for (auto [workers, prefetch] : {std::pair{1, 1}, std::pair{4, 2}, std::pair{4, 7}, std::pair{2, 0}}) {
    LoaderConfig cfg = small_config(true);
    cfg.num_workers = workers;
    cfg.prefetch = prefetch;
    DataLoader loader(t.samples, 3, cfg);
    runs.push_back(run_epoch(loader, 3));
  }
  for (size_t r = 1; r < runs.size(); ++r) {
    CHECK(runs[r].indices == runs[0].indices);
    CHECK(runs[r].labels == runs[0].labels);
    CHECK(runs[r].pixels == runs[0].pixels);  // bit-identical
  }
  // The augmentation key is e·N + sample index: a batch size change reorders nothing within the epoch.
  LoaderConfig cfg = small_config(true);
  cfg.batch_size = 3;
  DataLoader other(t.samples, 3, cfg);
  EpochData d = run_epoch(other, 3);
  CHECK(d.indices == runs[0].indices);
  CHECK(d.pixels == runs[0].pixels);
}

TEST_CASE("different epochs give a different order and augmentation, without shuffling the given order") {
  TempImages t("epochs", 12);
  LoaderConfig cfg = small_config(true);
  DataLoader loader(t.samples, 3, cfg);
  EpochData e0 = run_epoch(loader, 0), e1 = run_epoch(loader, 1);
  CHECK(e0.indices != e1.indices);
  CHECK(run_epoch(loader, 0).pixels == e0.pixels);  // replaying an epoch reproduces it

  cfg.shuffle = false;
  DataLoader ordered(t.samples, 3, cfg);
  EpochData o0 = run_epoch(ordered, 0), o1 = run_epoch(ordered, 1);
  for (int64_t i = 0; i < 12; ++i) CHECK(o0.indices[size_t(i)] == i);
  CHECK(o1.indices == o0.indices);
  CHECK(o1.pixels != o0.pixels);  // same order, fresh augmentation
  // A different seed, a different permutation.
  cfg.shuffle = true;
  cfg.seed = 8;
  DataLoader reseeded(t.samples, 3, cfg);
  CHECK(reseeded.epoch_order(0) != loader.epoch_order(0));
}

TEST_CASE("without augmentation the pixels equal preprocess_into of the decoded image") {
  TempImages t("plain", 7);
  for (bool cache : {false, true}) {
    LoaderConfig cfg = small_config(false);
    cfg.processor = ProcessorConfig::cvt(16);
    cfg.cache_decoded = cache;
    cfg.num_workers = 2;
    DataLoader loader(t.samples, 3, cfg);
    for (int64_t epoch : {0, 1}) {  // the second epoch reads the cache
      EpochData d = run_epoch(loader, epoch);
      const size_t chw = 3 * 16 * 16;
      REQUIRE(d.pixels.size() == 7 * chw);
      for (size_t r = 0; r < d.indices.size(); ++r) {
        std::vector<float> expect(chw);
        preprocess_into(decode_image(t.samples[size_t(d.indices[r])].path), cfg.processor, expect.data());
        CHECK(std::memcmp(expect.data(), d.pixels.data() + r * chw, chw * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("a corrupt or deleted file is skipped, named and counted once, with no hang") {
  TempImages t("corrupt", 9);
  { std::ofstream(t.samples[2].path, std::ios::binary) << "not a png at all"; }
  LoaderConfig cfg = small_config(true);
  cfg.num_workers = 2;
  DataLoader loader(t.samples, 3, cfg);
  fs::remove(t.samples[5].path);  // deleted after scanning
  finishes_within(30, [&] {
    for (int64_t epoch : {0, 1}) {
      EpochData d = run_epoch(loader, epoch);
      CHECK(d.indices.size() == 7);
      CHECK(std::count(d.indices.begin(), d.indices.end(), 2) == 0);
      CHECK(std::count(d.indices.begin(), d.indices.end(), 5) == 0);
    }
  });
  CHECK(loader.skipped() == 2);  // counted once, not once per epoch
  auto w = loader.warnings();
  REQUIRE(w.size() == 2);
  std::sort(w.begin(), w.end());
  CHECK(w[0].find("img2.png") != std::string::npos);
  CHECK(w[1].find("img5.png") != std::string::npos);

  // A batch whose every file is unreadable is not handed out.
  std::vector<Sample> bad = {{t.samples[2].path, 0}, {t.samples[5].path, 1}, {t.samples[0].path, 0}};
  LoaderConfig one = small_config(false);
  one.batch_size = 2;
  one.shuffle = false;
  DataLoader skipping(bad, 3, one);
  finishes_within(30, [&] { CHECK(run_epoch(skipping, 0).indices == std::vector<int64_t>{2}); });
}

TEST_CASE("an exception in a worker reaches the consumer in batch order") {
  TempImages t("error", 12);
  LoaderConfig cfg = small_config(false);
  cfg.shuffle = false;
  cfg.num_workers = 3;
  cfg.transform = [](Image&, int64_t i) {
    if (i == 9) throw std::runtime_error("transform failed on sample 9");
  };
  DataLoader loader(t.samples, 3, cfg);
  finishes_within(30, [&] {
    loader.start_epoch(0);
    CHECK(loader.next().has_value());  // batches 0 and 1 are fine, batch 2 holds sample 9
    CHECK(loader.next().has_value());
    CHECK_THROWS_WITH_AS(loader.next(), "transform failed on sample 9", std::runtime_error);
    CHECK_THROWS_AS(loader.next(), std::runtime_error);  // the epoch is over until start_epoch
    loader.start_epoch(1);
    CHECK(loader.next().has_value());
  });
}

TEST_CASE("destroying the loader or restarting mid-epoch joins cleanly") {
  TempImages t("destroy", 16);
  LoaderConfig cfg = small_config(true);
  cfg.batch_size = 2;
  cfg.num_workers = 4;
  cfg.prefetch = 4;
  cfg.transform = [](Image&, int64_t) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); };
  finishes_within(30, [&] {
    auto loader = std::make_unique<DataLoader>(t.samples, 3, cfg);
    loader->start_epoch(0);
    CHECK(loader->next().has_value());
    loader->start_epoch(1);  // abandons epoch 0 with workers busy
    CHECK(loader->next().has_value());
    loader.reset();  // workers busy again
  });
  finishes_within(30, [&] { DataLoader never_started(t.samples, 3, cfg); });
}

TEST_CASE("bad arguments are clear errors") {
  TempImages t("args", 2);
  LoaderConfig cfg = small_config(false);
  CHECK_THROWS_AS(DataLoader({}, 3, cfg), std::invalid_argument);
  CHECK_THROWS_AS(DataLoader(t.samples, 1, cfg), std::invalid_argument);  // label 1 outside [0, 1)
  cfg.batch_size = 0;
  CHECK_THROWS_AS(DataLoader(t.samples, 3, cfg), std::invalid_argument);
  cfg.batch_size = 1;
  DataLoader loader(t.samples, 3, cfg);
  CHECK_THROWS_AS(loader.next(), std::logic_error);
  CHECK_THROWS_AS(loader.start_epoch(-1), std::invalid_argument);
}

TEST_CASE("the real data set gives full batches of CvT-preprocessed training images") {
  const fs::path root = fs::path(TESSERA_SOURCE_DIR) / "../shared/datasets/brain-tumor-mri";
  if (!fs::exists(root / "Training")) {
    MESSAGE("skipped: " << root.string() << " not present");
    return;
  }
  SplitLayout data = load_split_layout(root.string());
  LoaderConfig cfg;
  cfg.processor = ProcessorConfig::cvt(224);
  cfg.augment = AugmentConfig{};
  cfg.batch_size = 8;
  cfg.num_workers = 2;
  DataLoader loader(data.train.samples, int64_t(data.train.classes.size()), cfg);
  loader.start_epoch(0);
  for (int i = 0; i < 2; ++i) {
    auto b = loader.next();
    REQUIRE(b.has_value());
    CHECK(b->images.shape() == Shape{8, 3, 224, 224});
    auto px = b->images.to_vector<float>();
    auto [lo, hi] = std::minmax_element(px.begin(), px.end());
    CHECK(*lo >= -2.2f);  // ImageNet normalisation: (0 − 0.485) / 0.229 = −2.12 .. (1 − 0.406) / 0.225 = 2.64
    CHECK(*hi <= 2.7f);
    CHECK(*hi > *lo);
  }
}
