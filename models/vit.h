// ViT image classifier, as transformers' ViTForImageClassification (models/README.md lists its quirks).
// Members mirror the checkpoint names: vit.embeddings.… , vit.encoder.layer.{i}.… , vit.layernorm, classifier.
#pragma once
#include <vector>

#include "models/model.h"

namespace tessera::models {

// torch.nn.functional.interpolate(mode="bicubic", align_corners=False, size=out) along one axis, as a
// matrix W (out, in): resized = W · x. Keys cubic convolution with A = −0.75 (torch's, not PIL's −0.5), no
// antialiasing, source index (i + 0.5)·in/out − 0.5, taps clamped to the border. Computed in float32 like
// torch's CPU kernel.
Tensor bicubic_weights(int64_t in, int64_t out, DType dt = DType::f32);
// Resizes a (C, h, w) table to (C, oh, ow) bicubically (the separable form of the same interpolation); built
// from matmul, so it is differentiable with respect to `table`.
Tensor interpolate_bicubic(const Tensor& table, int64_t oh, int64_t ow);

class Vit : public Model {
 public:
  explicit Vit(const VitConfig& config, DType dtype = DType::f32);
  Tensor forward(const Tensor& pixel_values, bool training, Generator& gen) override;
  const ModelConfig& config() const override { return config_; }
  const char* arch_name() const override { return "ViT"; }

  // Inputs other than image_size × image_size are refused unless this is on; then the patch part of the
  // position table is resized bicubically to the new grid (ViTEmbeddings.interpolate_pos_encoding).
  bool interpolate_pos_encoding = false;

 private:
  struct Layer {
    std::string name;             // vit.encoder.layer.{i}: the profiler's layer
    Linear query, key, value;     // attention.attention.{query,key,value}  (C, C)
    Linear attention_output;      // attention.output.dense                 (C, C)
    Linear intermediate;          // intermediate.dense                     (I, C)
    Linear output;                // output.dense                           (C, I)
    LayerNorm layernorm_before, layernorm_after;
  };
  // The position table for a (gh, gw) patch grid: (1, 1 + gh·gw, C).
  Tensor position_embeddings_for(int64_t gh, int64_t gw) const;

  ModelConfig config_;
  const VitConfig& c_;
  Tensor cls_token_;             // vit.embeddings.cls_token            (1, 1, C)
  Tensor position_embeddings_;   // vit.embeddings.position_embeddings  (1, 1 + N, C)
  Conv2d patch_embeddings_;      // vit.embeddings.patch_embeddings.projection (C, 3, P, P)
  std::vector<Layer> layers_;    // vit.encoder.layer.{i}
  LayerNorm layernorm_;          // vit.layernorm
  Linear classifier_;            // classifier (num_labels, C)
};

}  // namespace tessera::models
