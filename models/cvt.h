// CvT image classifier, as transformers' CvtForImageClassification (models/README.md lists every quirk).
// Members mirror the checkpoint names: cvt.encoder.stages.{s}.… , layernorm, classifier.
#pragma once
#include <vector>

#include "models/model.h"

namespace tessera::models {

class Cvt : public Model {
 public:
  explicit Cvt(const CvtConfig& config, DType dtype = DType::f32);
  Tensor forward(const Tensor& pixel_values, bool training, Generator& gen) override;
  const ModelConfig& config() const override { return config_; }
  const char* arch_name() const override { return "CvT"; }
  bool supports_style_mix() const override { return true; }

  // The drop path rate every layer of stage s uses: linspace(0, drop_path_rate[s], depth[s])[s] in float32,
  // as transformers' CvtStage picks it (indexed by the stage, not the layer).
  static double stage_drop_path_rate(const CvtConfig& c, int64_t stage);

 private:
  // convolution_projection_{query,key,value}: depthwise conv (no bias) + BatchNorm, then flatten.
  struct ConvProjection {
    Conv2d convolution;       // .convolution_projection.convolution   (C, 1, k, k)
    BatchNorm2d normalization;  // .convolution_projection.normalization (C)
  };
  struct Layer {
    std::string name;                         // cvt.encoder.stages.{s}.layers.{i}: the profiler's layer
    ConvProjection conv_q, conv_k, conv_v;    // attention.attention.convolution_projection_*
    Linear projection_q, projection_k, projection_v;  // attention.attention.projection_*  (C, C)
    Linear attention_output;                  // attention.output.dense  (C, C)
    Linear intermediate;                      // intermediate.dense      (4C, C)
    Linear output;                            // output.dense            (C, 4C)
    LayerNorm layernorm_before, layernorm_after;
  };
  struct Stage {
    std::string embedding_name;       // cvt.encoder.stages.{s}.embedding: the profiler's layer
    Tensor cls_token;                 // (1, 1, C) or undefined
    Conv2d embedding;                 // embedding.convolution_embeddings.projection
    LayerNorm embedding_norm;         // embedding.convolution_embeddings.normalization
    std::vector<Layer> layers;
    double drop_path = 0;
  };

  // `index`: the layer's number through all stages (attention capture).
  Tensor layer_forward(const Layer& l, size_t s, int64_t index, const Tensor& x, int64_t H, int64_t W, bool training,
                       Generator& gen) const;

  ModelConfig config_;
  const CvtConfig& c_;
  std::vector<Stage> stages_;
  LayerNorm layernorm_;  // layernorm (on the last stage's cls token)
  Linear classifier_;    // classifier (num_labels, C)
};

}  // namespace tessera::models
