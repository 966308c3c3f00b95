#include "data/loader.h"

#include <algorithm>
#include <iostream>
#include <stdexcept>

#include "engine/core/philox.h"

namespace tessera {

namespace {

// The shuffle's Philox key: derived from the seed so the permutation's stream is not the augmentation's
// stream (which uses the seed itself) — the order and the crops must not be correlated.
uint64_t shuffle_key(uint64_t seed) {
  philox::U4 r = philox::philox4x32_10(seed, 0x5348554646ull /* "SHUFF" */);
  return (uint64_t(r.x) << 32) | r.y;
}

constexpr uint64_t kMaxKey = uint64_t(1) << 58;  // augment(): key · 64 must not wrap

}  // namespace

DataLoader::DataLoader(std::vector<Sample> samples, int64_t num_classes, LoaderConfig cfg)
    : samples_(std::move(samples)), cfg_(std::move(cfg)) {
  if (samples_.empty()) throw std::invalid_argument("DataLoader: no samples");
  for (const Sample& s : samples_)
    if (s.label < 0 || s.label >= num_classes)
      throw std::invalid_argument("DataLoader: " + s.path + " has label " + std::to_string(s.label) +
                                  ", outside [0, " + std::to_string(num_classes) + ")");
  if (cfg_.batch_size < 1)
    throw std::invalid_argument("DataLoader: batch_size must be >= 1, got " + std::to_string(cfg_.batch_size));
  if (cfg_.num_workers < 0 || cfg_.prefetch < 0)
    throw std::invalid_argument("DataLoader: num_workers and prefetch must be >= 0 (0: default)");
  if (cfg_.processor.height < 1 || cfg_.processor.width < 1)
    throw std::invalid_argument("DataLoader: processor output size must be positive");
  validate(cfg_.processor);
  if (cfg_.augment) validate(*cfg_.augment);

  int workers = cfg_.num_workers > 0 ? cfg_.num_workers : int(std::max(1u, std::thread::hardware_concurrency()));
  prefetch_ = cfg_.prefetch > 0 ? cfg_.prefetch : std::max(2, workers);
  chw_ = int64_t(cfg_.processor.channels) * cfg_.processor.height * cfg_.processor.width;

  // The ring, allocated once: prefetch batches in flight + the one the consumer holds.
  const int64_t B = cfg_.batch_size;
  slots_.resize(size_t(prefetch_) + 1);
  for (Slot& s : slots_) {
    const ProcessorConfig& pc = cfg_.processor;
    s.images = Tensor::from_storage(Storage::allocate_pinned(size_t(B * chw_) * sizeof(float)),
                                    {B, pc.channels, pc.height, pc.width}, DType::f32);
    s.labels = Tensor::from_storage(Storage::allocate_pinned(size_t(B) * sizeof(int64_t)), {B}, DType::i64);
    s.indices.reserve(size_t(B));
  }
  bad_.assign(samples_.size(), 0);
  if (cfg_.cache_decoded) cache_.resize(samples_.size());

  threads_.reserve(size_t(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    ++generation_;  // in-flight batches stop at their next sample
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = size(), b = cfg_.batch_size;
  return cfg_.drop_last ? n / b : (n + b - 1) / b;
}

int64_t DataLoader::skipped() const {
  std::lock_guard<std::mutex> lk(mu_);
  return int64_t(warnings_.size());
}

std::vector<std::string> DataLoader::warnings() const {
  std::lock_guard<std::mutex> lk(mu_);
  return warnings_;
}

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  const int64_t n = size();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  if (!cfg_.shuffle) return order;
  // Fisher-Yates from the back, uniform number t of epoch e at counter e·N + t: depends only on (seed, e).
  const uint64_t key = shuffle_key(cfg_.seed);
  for (int64_t i = n - 1, t = 0; i > 0; --i, ++t) {
    double u = philox::uniform(key, uint64_t(epoch) * uint64_t(n) + uint64_t(t));
    int64_t j = std::min<int64_t>(int64_t(u * double(i + 1)), i);  // u < 1, but guard rounding anyway
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

void DataLoader::cancel_locked(std::unique_lock<std::mutex>& lk) {
  ++generation_;
  next_claim_ = num_batches_;  // nothing more to claim
  done_cv_.wait(lk, [&] { return busy_ == 0; });
}

void DataLoader::start_epoch(int64_t epoch) {
  if (epoch < 0) throw std::invalid_argument("DataLoader::start_epoch: negative epoch " + std::to_string(epoch));
  if (uint64_t(epoch) + 1 > kMaxKey / uint64_t(size()))
    throw std::invalid_argument("DataLoader::start_epoch: epoch " + std::to_string(epoch) +
                                " too large for the augmentation keys (epoch · N must stay below 2^58)");
  std::vector<int64_t> order = epoch_order(epoch);  // outside the lock: workers may still be running
  std::unique_lock<std::mutex> lk(mu_);
  cancel_locked(lk);  // no worker touches order_ or a slot after this
  order_ = std::move(order);
  epoch_ = epoch;
  num_batches_ = batches_per_epoch();
  next_claim_ = handed_ = released_ = 0;
  for (Slot& s : slots_) {
    s.ready = false;
    s.batch = -1;
    s.error = nullptr;
  }
  started_ = true;
  failed_ = false;
  lk.unlock();
  work_cv_.notify_all();
}

std::optional<Batch> DataLoader::next() {
  std::unique_lock<std::mutex> lk(mu_);
  if (!started_) throw std::logic_error("DataLoader::next: call start_epoch first");
  if (failed_)
    throw std::runtime_error("DataLoader::next: this epoch stopped at an earlier error; call start_epoch");
  const int64_t ring = int64_t(slots_.size());
  for (;;) {
    released_ = handed_;  // the batch handed out last time is no longer used: its slot may be refilled
    work_cv_.notify_all();
    if (handed_ >= num_batches_) return std::nullopt;
    const int64_t k = handed_;
    Slot& s = slots_[size_t(k % ring)];
    done_cv_.wait(lk, [&] { return s.ready && s.batch == k; });
    ++handed_;
    if (s.error) {
      std::exception_ptr e = s.error;
      s.error = nullptr;
      failed_ = true;
      cancel_locked(lk);
      std::rethrow_exception(e);
    }
    const int64_t n = int64_t(s.indices.size());
    if (n == 0) continue;  // every file of this batch was unreadable
    Batch b;
    b.index = k;
    b.images = n == cfg_.batch_size ? s.images : s.images.slice(0, 0, n);
    b.labels = n == cfg_.batch_size ? s.labels : s.labels.slice(0, 0, n);
    b.indices = std::span<const int64_t>(s.indices.data(), s.indices.size());
    return b;
  }
}

bool DataLoader::cancelled(uint64_t generation) {
  std::lock_guard<std::mutex> lk(mu_);
  return stop_ || generation != generation_;
}

void DataLoader::worker_loop() {
  const int64_t ring = int64_t(slots_.size());
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    // A batch may be filled once the batch that used its slot before (k − ring) has been released.
    work_cv_.wait(lk, [&] {
      return stop_ || (started_ && next_claim_ < num_batches_ && next_claim_ < released_ + ring);
    });
    if (stop_) return;
    const int64_t k = next_claim_++;
    const uint64_t gen = generation_;
    const int64_t epoch = epoch_;
    Slot& s = slots_[size_t(k % ring)];
    s.ready = false;
    s.batch = k;
    s.error = nullptr;
    ++busy_;
    lk.unlock();
    try {
      fill(s, k, epoch, gen);
    } catch (...) {
      s.error = std::current_exception();  // handed to the consumer in batch order
    }
    lk.lock();
    --busy_;
    if (gen == generation_ && !stop_) s.ready = true;
    done_cv_.notify_all();
  }
}

void DataLoader::fill(Slot& s, int64_t k, int64_t epoch, uint64_t gen) {
  const int64_t B = cfg_.batch_size, n = size();
  const int64_t begin = k * B, end = std::min(begin + B, n);
  float* images = s.images.data<float>();
  int64_t* labels = s.labels.data<int64_t>();
  s.indices.clear();
  Image work;
  for (int64_t p = begin; p < end; ++p) {
    if (cancelled(gen)) return;
    const int64_t i = order_[size_t(p)];
    if (bad_[size_t(i)]) continue;
    const Sample& sample = samples_[size_t(i)];

    std::optional<Image> decoded;
    const Image* src = nullptr;
    if (cfg_.cache_decoded && cache_[size_t(i)]) {
      src = &*cache_[size_t(i)];
    } else {
      std::string warning;
      decoded = try_decode(sample, warning, cfg_.image_limits);
      if (!decoded) {
        bad_[size_t(i)] = 1;  // only this worker touches sample i during the epoch
        std::lock_guard<std::mutex> lk(mu_);
        warnings_.push_back(warning);
        std::cerr << "tessera: warning: skipping unreadable image: " << warning << "\n";
        continue;
      }
      if (cfg_.prepare) cfg_.prepare(*decoded, i);
      if (cfg_.cache_decoded) {
        cache_[size_t(i)] = std::move(*decoded);
        src = &*cache_[size_t(i)];
      } else {
        src = &*decoded;
      }
    }
    if (cfg_.augment) {
      work = augment(*src, *cfg_.augment, cfg_.seed, uint64_t(epoch) * uint64_t(n) + uint64_t(i));
      src = &work;
    }
    if (cfg_.transform) {
      if (src != &work) work = *src;  // never modify the cached image
      cfg_.transform(work, i);
      src = &work;
    }
    const int64_t row = int64_t(s.indices.size());
    preprocess_into(*src, cfg_.processor, images + row * chw_);
    labels[row] = sample.label;
    s.indices.push_back(i);
  }
}

}  // namespace tessera
