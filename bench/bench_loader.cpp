// Images/s of the data pipeline alone: decode (or the decoded-image cache) → augmentation (optional) →
// CvT preprocessing to 224² into pinned batches, on the real data set. Args: workers (0 = all hardware
// threads), augment (0/1), cache_decoded (0/1). Each iteration is one full epoch over the first 512
// training images (a whole epoch, so no prefetched work is thrown away inside the timing); with the
// cache, one untimed epoch fills it first. Real time, since the work happens on the loader's threads.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "data/loader.h"

using namespace tessera;

namespace {

// $TESSERA_DATASET, else ../shared/datasets/brain-tumor-mri beside the repository (found from this file's
// path, which CMake passes absolute, so the benchmark runs from any folder).
std::string data_root() {
  if (const char* env = std::getenv("TESSERA_DATASET")) return env;
  return (std::filesystem::path(__FILE__).parent_path() / "../../shared/datasets/brain-tumor-mri").string();
}

void BM_Loader(benchmark::State& state) {
  const std::string root = data_root();
  if (!std::filesystem::exists(std::filesystem::path(root) / "Training")) {
    state.SkipWithError(("data set not present: " + root + " (set TESSERA_DATASET)").c_str());
    return;
  }
  SplitLayout data = load_split_layout(root);
  std::vector<Sample> samples = data.train.samples;
  // Every 4th image keeps all four classes (the list is grouped by class) in a fixed 512-image subset.
  std::vector<Sample> subset;
  for (size_t i = 0; i < samples.size() && subset.size() < 512; i += 4) subset.push_back(samples[i]);

  LoaderConfig cfg;
  cfg.processor = ProcessorConfig::cvt(224);
  if (state.range(1)) cfg.augment = AugmentConfig{};
  cfg.cache_decoded = state.range(2) != 0;
  cfg.batch_size = 32;
  cfg.num_workers = int(state.range(0));
  DataLoader loader(subset, int64_t(data.train.classes.size()), cfg);
  int64_t epoch = 0;
  auto run_epoch = [&] {
    loader.start_epoch(epoch++);
    int64_t n = 0;
    while (auto b = loader.next()) n += b->size();
    return n;
  };
  if (cfg.cache_decoded) run_epoch();
  int64_t images = 0;
  for (auto _ : state) images += run_epoch();
  state.counters["images/s"] = benchmark::Counter(double(images), benchmark::Counter::kIsRate);
  state.counters["workers"] = loader.num_workers();
}

}  // namespace

BENCHMARK(BM_Loader)
    ->ArgNames({"workers", "augment", "cache"})
    ->ArgsProduct({{1, 0}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

BENCHMARK_MAIN();
