// An exponential moving average of a model's weights (Polyak averaging), kept next to the raw weights for
// evaluation and checkpointing.
//
// The average holds every tensor of a state dict: parameters and buffers (batch-norm running statistics
// included). Each update moves every floating tensor towards the live weights,
//   ema ← d·ema + (1 − d)·live,   d = min(decay, (1 + n) / (10 + n)),
// n the number of updates done before this one. The warm-up term keeps a short run's average from being
// dominated by the initial weights (d is 0.1 at the first update, 0.5 at the ninth). Integer tensors (a
// batch norm's num_batches_tracked) are copied, not averaged.
//
// The average lives on the live tensors' device in their dtype and is updated there with three kernel
// launches per tensor (two scalings and an add); nothing is read back to the host. With f32 tensors the
// kernels compute in f32, d and 1 − d rounded to f32.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "engine/core/tensor.h"

namespace tessera {

class WeightEma {
 public:
  // Copies `state` (clones on the same device, same dtype) as the initial average. decay in [0, 1).
  // Floating tensors must be f32 or f64: a 16-bit average would round away updates smaller than its
  // precision (with decay 0.9999, every update).
  WeightEma(const std::map<std::string, Tensor>& state, double decay);

  // One update from `live`, which must hold exactly the average's names with the same shapes, dtypes and
  // devices (checked for every tensor before any is changed). Records nothing on the autograd tape.
  void update(const std::map<std::string, Tensor>& live);

  const std::map<std::string, Tensor>& average() const { return average_; }
  int64_t updates() const { return updates_; }
  double decay() const { return decay_; }
  // The d the next update uses: min(decay, (1 + n) / (10 + n)).
  double next_decay() const;

  // Writes the average with save_safetensors (engine/safetensors.h), metadata ema_decay (17 significant
  // digits: the double round-trips exactly), ema_updates and format=pt (so the file also loads as a model's
  // weights).
  void save(const std::string& path) const;
  // Restores the average, the decay and the update count from a file written by save(). Every name of the
  // average must be in the file with the same shape and dtype and the file may hold no other tensor;
  // otherwise throws a one-line error naming the file and the first offending tensor, and changes nothing.
  // Saving after k updates, loading and continuing gives bit-identical averages to an uninterrupted run.
  void load(const std::string& path);

 private:
  std::map<std::string, Tensor> average_;
  double decay_ = 0;
  int64_t updates_ = 0;
};

}  // namespace tessera
