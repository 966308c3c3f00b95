// The training data loader: decode → augment (training only) → preprocess, on worker threads, into a ring
// of reusable host batches, handed to the consumer in order.
//
// Determinism. Epoch e's order is a Fisher-Yates permutation driven by Philox keyed by (seed, e) when
// shuffling, else the given order. Sample i (its index in the sample list) is augmented with key
// e·N + i, so an epoch's tensors depend only on (samples, config, seed, e) — never on the number of
// workers, the prefetch depth or thread timing.
//
// Work split. One worker fills one whole batch (as PyTorch's DataLoader does): it runs its samples in order
// and writes each straight into the batch's buffer with preprocess_into. Up to `prefetch` batches are in
// flight ahead of the consumer, so at most min(num_workers, prefetch) workers are busy; the default
// prefetch (max(2, num_workers)) keeps them all busy.
//
// Corrupt files. A file try_decode cannot read is skipped with one warning naming it (stderr and
// warnings()), counted once in skipped(), and remembered so later epochs skip it without re-reading.
// Its batch is simply one sample shorter (no pre-scan: that would read every file twice before training
// starts). A batch whose samples are all unreadable is not handed out, so batches_per_epoch() is an upper
// bound once files have been skipped.
//
// Errors. Any other exception in a worker (e.g. from `transform`, or out of memory) is stored with its
// batch and rethrown by next() when the consumer reaches that batch; the epoch is then over, and next()
// throws until start_epoch() is called again. Destroying the loader or calling start_epoch() mid-epoch
// stops the workers between samples and joins them.
//
// Memory. The ring holds prefetch + 1 batches of f32 [B, C, H, W] (C = processor.channels) in pinned
// memory (plain memory without a GPU), allocated once. cache_decoded keeps every decoded image (full size,
// 8-bit RGB: 3·w·h bytes per image — the brain-tumour MRI set, 3,264 images of about 256×256 (some
// larger), needs about 0.6 GB); it removes the JPEG decode from every epoch after the first.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "data/preprocess.h"
#include "engine/core/tensor.h"

namespace tessera {

struct LoaderConfig {
  ProcessorConfig processor;              // output size and normalisation
  std::optional<AugmentConfig> augment;   // training: augmented; nullopt (validation/test): preprocessing only
  int64_t batch_size = 32;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = false;  // false keeps the last partial batch, as the Hugging Face Trainer does
  int num_workers = 0;     // 0: std::thread::hardware_concurrency()
  int prefetch = 0;        // batches in flight ahead of the consumer; 0: max(2, num_workers)
  bool cache_decoded = false;
  ImageLimits image_limits;  // files refused by them are skipped like unreadable ones
  // Optional step right after decoding, before augmentation (sample index given): it must depend only on
  // the image and the index, never on the epoch, because with cache_decoded its result is what the cache
  // keeps (e.g. the study's fixed 224×224 resize, or its augmented copies made once). May throw.
  std::function<void(Image& image, int64_t sample_index)> prepare;
  // Optional extra step after augmentation, before preprocessing (sample index given). May throw: the
  // exception reaches the consumer through next().
  std::function<void(Image& image, int64_t sample_index)> transform;
};

// One batch: views into the loader's ring, valid until the next call to next() (or start_epoch, or the
// loader's destruction). Copy the tensors (clone / to(CUDA)) to keep them longer.
struct Batch {
  int64_t index = 0;             // batch number within the epoch
  Tensor images;                 // f32 [n, C, H, W], n <= batch_size (smaller: last batch or skipped files)
  Tensor labels;                 // i64 [n]
  std::span<const int64_t> indices;  // [n]: each row's index in the sample list
  int64_t size() const { return int64_t(indices.size()); }
};

class DataLoader {
 public:
  // Throws std::invalid_argument for an empty sample list, a label outside [0, num_classes), a batch size
  // < 1, negative workers/prefetch, or a bad augmentation config.
  DataLoader(std::vector<Sample> samples, int64_t num_classes, LoaderConfig cfg);
  ~DataLoader();  // stops and joins the workers, also mid-epoch
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Begins epoch `epoch` (>= 0); abandons whatever is left of the current one.
  void start_epoch(int64_t epoch);
  // The epoch's next batch in order, blocking until it is ready; nullopt at the end of the epoch.
  // Rethrows a worker's exception; throws std::logic_error before the first start_epoch.
  std::optional<Batch> next();

  int64_t batches_per_epoch() const;
  int64_t size() const { return int64_t(samples_.size()); }
  int64_t skipped() const;                 // distinct unreadable files met so far
  std::vector<std::string> warnings() const;  // one line per skipped file
  int num_workers() const { return int(threads_.size()); }
  int prefetch() const { return prefetch_; }

  // The epoch's sample order (for tests and logging).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  struct Slot {
    Tensor images, labels;         // the full [B, ...] buffers, allocated once
    std::vector<int64_t> indices;  // capacity B
    int64_t batch = -1;            // which batch of the epoch it holds
    bool ready = false;
    std::exception_ptr error;
  };

  void worker_loop();
  void fill(Slot& slot, int64_t batch, int64_t epoch, uint64_t generation);
  bool cancelled(uint64_t generation);
  void cancel_locked(std::unique_lock<std::mutex>& lock);  // stops in-flight work, waits for it

  std::vector<Sample> samples_;
  LoaderConfig cfg_;
  int prefetch_ = 2;
  int64_t chw_ = 0;  // floats per image

  std::vector<Slot> slots_;                  // prefetch + 1: the consumer's batch + those in flight
  std::vector<std::optional<Image>> cache_;  // cache_decoded only; a sample is touched by one worker at a time
  std::vector<uint8_t> bad_;                 // 1: unreadable, skip (one byte per sample: no shared words)

  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  bool stop_ = false, started_ = false, failed_ = false;
  uint64_t generation_ = 0;  // bumped by start_epoch / an error / destruction: in-flight work is dropped
  int64_t epoch_ = 0, num_batches_ = 0;
  std::vector<int64_t> order_;
  int64_t next_claim_ = 0;  // next batch a worker will take
  int64_t handed_ = 0;      // batches given to the consumer
  int64_t released_ = 0;    // batches whose slot may be refilled (all handed ones but the one in use)
  int busy_ = 0;            // workers filling a batch
  std::vector<std::string> warnings_;

  std::vector<std::thread> threads_;
};

}  // namespace tessera
