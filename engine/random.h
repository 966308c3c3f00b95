// Seeded random numbers whose streams are reproducible: a Generator is a (seed, offset) pair over the
// counter-based Philox4x32-10 generator. Each draw of n numbers uses counters [offset, offset + n) and
// advances offset, so a stream depends only on the seed and the sequence of draws, on any device.
#pragma once
#include <cstdint>

#include "engine/core/tensor.h"

namespace tessera {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }

  // New tensors (contiguous) on `device` filled from this stream.
  Tensor uniform(const Shape& shape, double lo = 0, double hi = 1, DType dt = DType::f32,
                 Device device = Device::CPU);
  Tensor normal(const Shape& shape, double mean = 0, double std = 1, DType dt = DType::f32,
                Device device = Device::CPU);
  // N(mean, std²) conditioned on [lo, hi] (absolute bounds), as torch.nn.init.trunc_normal_.
  Tensor truncated_normal(const Shape& shape, double mean, double std, double lo, double hi,
                          DType dt = DType::f32, Device device = Device::CPU);
  Tensor bernoulli(const Shape& shape, double p, DType dt = DType::f32, Device device = Device::CPU);

 private:
  uint64_t take(int64_t n);  // returns the current offset and advances past n counters
  uint64_t seed_, offset_ = 0;
};

}  // namespace tessera
