// The image classifiers as one interface, built from a config, and their checkpoints on disk.
//
// A checkpoint directory is what transformers' save_pretrained writes: config.json + model.safetensors.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "engine/random.h"
#include "models/config.h"
#include "models/module.h"

namespace tessera::models {

class Model : public Module {
 public:
  Model() = default;
  Model(const Model&) = delete;  // layers hold handles into the registry: copies would alias
  Model& operator=(const Model&) = delete;
  // pixel_values (B, num_channels, H, W) -> logits (B, num_labels). `training` selects BatchNorm batch
  // statistics (and their running-stat updates), drop path and dropout; `gen` draws their masks.
  virtual Tensor forward(const Tensor& pixel_values, bool training, Generator& gen) = 0;
  virtual const ModelConfig& config() const = 0;
  // The dtype activations are computed in (default: the parameters' dtype). bf16 with f32 parameters is
  // mixed precision: pixel_values are cast on entry, parameters at each use (module.h cast_to), BatchNorm
  // runs in the parameters' dtype, and the logits come back in the parameters' dtype for the loss.
  void set_compute_dtype(DType dt);
  DType compute_dtype() const { return compute_dtype_ ? *compute_dtype_ : dtype(); }
  // Hooks on the attention of the following forward and backward passes (module.h AttentionHooks);
  // nullptr removes them. The hooks must outlive their use.
  void set_attention_hooks(const AttentionHooks* hooks) { hooks_ = hooks; }
  // MixStyle (module.h mix_style) in the following training forward passes, where the architecture has
  // places for it (supports_style_mix); nullptr turns it off. `mix` must outlive the forward pass.
  void set_style_mix(const StyleMix* mix) { style_mix_ = mix; }
  virtual bool supports_style_mix() const { return false; }
  int64_t num_labels() const { return models::num_labels(config()); }
  // Name prefix of the classification head ("classifier.").
  static constexpr const char* kHeadPrefix = "classifier.";

 private:
  std::optional<DType> compute_dtype_;

 protected:
  // Attention layer `layer` (numbered through the model), under the hooks if any.
  Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale, int64_t layer) const {
    return multi_head_attention(q, k, v, heads, scale, hooks_, layer);
  }
  const StyleMix* style_mix() const { return style_mix_; }

 private:
  const AttentionHooks* hooks_ = nullptr;
  const StyleMix* style_mix_ = nullptr;
};

// A model of `config` with its tensors allocated but NOT initialised (call init_weights or load); cheap
// even at full size, which is how parameter counts are taken.
std::unique_ptr<Model> make_model(const ModelConfig& config, DType dtype = DType::f32);
// A model initialised like transformers' `_init_weights` from `seed`.
std::unique_ptr<Model> make_model(const ModelConfig& config, uint64_t seed, DType dtype = DType::f32);

struct LoadOptions {
  // Replace the classifier with a fresh one of this many classes (weight N(0, initializer_range²), bias 0,
  // drawn from head_seed); the checkpoint's classifier is then ignored, as transformers'
  // from_pretrained(num_labels=N, ignore_mismatched_sizes=True) does.
  std::optional<int64_t> num_classes;
  uint64_t head_seed = 0;
};

// Loads `path`: a checkpoint directory (config.json + model.safetensors) or a model.safetensors whose
// folder holds config.json. Strict (see Module::load_state_dict).
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});
// Loads weights of `file` into a model built from `config` (same options).
std::unique_ptr<Model> load_model(const ModelConfig& config, const std::string& file,
                                  const LoadOptions& options = {});
// Writes dir/config.json and dir/model.safetensors (creating dir), both atomically replaced.
void save_model(const Model& model, const std::string& dir);

}  // namespace tessera::models
