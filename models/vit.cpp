#include "models/vit.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "engine/core/profile.h"
#include "engine/ops.h"

namespace tessera::models {

Tensor bicubic_weights(int64_t in, int64_t out, DType dt) {
  TS_CHECK(in >= 1 && out >= 1, "bicubic_weights: sizes must be positive, got " + std::to_string(in) + " -> " +
                                    std::to_string(out));
  // aten/src/ATen/native/UpSample.h, float32 opmath: scale = in/out (align_corners false, size given);
  // real = scale·(i + 0.5) − 0.5 (not clamped for cubic); index = min(floor(real), in − 1);
  // t = clamp(real − index, 0, 1); taps index−1 .. index+2 clamped into [0, in − 1].
  const float A = -0.75f;
  auto cc1 = [&](float x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };          // |x| <= 1
  auto cc2 = [&](float x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };   // 1 < |x| < 2
  const float scale = float(in) / float(out);
  std::vector<double> w(size_t(out * in), 0.0);
  for (int64_t i = 0; i < out; ++i) {
    const float real = scale * (float(i) + 0.5f) - 0.5f;
    const int64_t index = std::min(int64_t(std::floor(real)), in - 1);
    const float t = std::min(std::max(real - float(index), 0.0f), 1.0f);
    const float coeff[4] = {cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)};
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t src = std::clamp(index - 1 + j, int64_t(0), in - 1);
      w[size_t(i * in + src)] += double(coeff[j]);  // border taps collapse onto the edge pixel
    }
  }
  return Tensor::from(w, {out, in}, dt);
}

Tensor interpolate_bicubic(const Tensor& table, int64_t oh, int64_t ow) {
  TS_CHECK(table.defined() && table.dim() == 3, "interpolate_bicubic: table must be [C, h, w], got " +
                                                    (table.defined() ? table.str() : std::string("undefined")));
  const int64_t h = table.size(1), w = table.size(2);
  Tensor wy = bicubic_weights(h, oh, table.dtype()).to(table.device());  // (oh, h)
  Tensor wx = bicubic_weights(w, ow, table.dtype()).to(table.device());  // (ow, w)
  return matmul(matmul(wy, table), wx.transpose(0, 1));                  // (C, oh, ow)
}

Vit::Vit(const VitConfig& config, DType dtype) : config_(config), c_(std::get<VitConfig>(config_)) {
  validate(config_, "ViT config");
  set_dtype(dtype);
  const int64_t C = c_.hidden_size, P = c_.patch_size, grid = c_.image_size / P;
  // ViTEmbeddings registers cls_token, then position_embeddings, then the patch_embeddings submodule.
  cls_token_ = add_param("vit.embeddings.cls_token", {1, 1, C}, Init::TruncNormal);
  position_embeddings_ = add_param("vit.embeddings.position_embeddings", {1, 1 + grid * grid, C}, Init::TruncNormal);
  patch_embeddings_ = conv2d("vit.embeddings.patch_embeddings.projection", c_.num_channels, C, P, P, 0, 1, true);
  for (int64_t i = 0; i < c_.num_hidden_layers; ++i) {
    const std::string l = "vit.encoder.layer." + std::to_string(i) + ".";
    Layer L;
    L.name = l.substr(0, l.size() - 1);
    L.query = linear(l + "attention.attention.query", C, C, c_.qkv_bias);
    L.key = linear(l + "attention.attention.key", C, C, c_.qkv_bias);
    L.value = linear(l + "attention.attention.value", C, C, c_.qkv_bias);
    L.attention_output = linear(l + "attention.output.dense", C, C);
    L.intermediate = linear(l + "intermediate.dense", C, c_.intermediate_size);
    L.output = linear(l + "output.dense", c_.intermediate_size, C);
    L.layernorm_before = layer_norm(l + "layernorm_before", C, c_.layer_norm_eps);
    L.layernorm_after = layer_norm(l + "layernorm_after", C, c_.layer_norm_eps);
    layers_.push_back(L);
  }
  layernorm_ = layer_norm("vit.layernorm", C, c_.layer_norm_eps);
  classifier_ = linear("classifier", C, num_labels());
}

Tensor Vit::position_embeddings_for(int64_t gh, int64_t gw) const {
  const int64_t grid = c_.image_size / c_.patch_size, C = c_.hidden_size;
  if (gh == grid && gw == grid) return position_embeddings_;  // (1, 1 + N, C)
  Tensor cls_pos = position_embeddings_.slice(1, 0, 1);                       // (1, 1, C)
  Tensor table = position_embeddings_.slice(1, 1, 1 + grid * grid)            // (1, N, C)
                     .reshape({grid, grid, C}).permute({2, 0, 1});            // (C, grid, grid)
  Tensor resized = interpolate_bicubic(table, gh, gw);                        // (C, gh, gw)
  Tensor patch_pos = resized.permute({1, 2, 0}).reshape({1, gh * gw, C});     // (1, gh·gw, C)
  return concat({cls_pos, patch_pos}, 1);                                     // (1, 1 + gh·gw, C)
}

Tensor Vit::forward(const Tensor& pixel_values, bool training, Generator& gen) {
  TS_CHECK(pixel_values.defined() && pixel_values.dim() == 4 && pixel_values.size(1) == c_.num_channels,
           "ViT: pixel_values must be [B, " + std::to_string(c_.num_channels) + ", H, W], got " +
               (pixel_values.defined() ? pixel_values.str() : std::string("undefined")));
  const int64_t B = pixel_values.size(0), H = pixel_values.size(2), W = pixel_values.size(3);
  const int64_t C = c_.hidden_size;
  if (!interpolate_pos_encoding && (H != c_.image_size || W != c_.image_size))
    fail("ViT: input " + std::to_string(H) + "x" + std::to_string(W) + " does not match the model's " +
         std::to_string(c_.image_size) + "x" + std::to_string(c_.image_size) +
         "; resize the images or turn on position-embedding interpolation");
  TS_CHECK(H >= c_.patch_size && W >= c_.patch_size,
           "ViT: input " + std::to_string(H) + "x" + std::to_string(W) + " is smaller than one patch");
  std::optional<profile::LayerScope> embedding_scope(std::in_place, "vit.embeddings");
  Tensor e = patch_embeddings_(cast_to(pixel_values, compute_dtype()));  // (B, C, gh, gw)
  const int64_t gh = e.size(2), gw = e.size(3);
  Tensor x = concat({cast_to(cls_token_, e.dtype()).expand({B, 1, C}), nchw_to_tokens(e)}, 1);  // (B, 1 + gh·gw, C)
  x = x + cast_to(position_embeddings_for(gh, gw), x.dtype());
  x = dropout(x, c_.hidden_dropout_prob, training, gen);
  embedding_scope.reset();
  const double scale = 1.0 / std::sqrt(double(C / c_.num_attention_heads));  // head_dim^-0.5
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& L = layers_[i];
    profile::LayerScope scope(L.name);
    Tensor h = L.layernorm_before(x);                                     // (B, T, C)
    Tensor ctx = attention(L.query(h), L.key(h), L.value(h), c_.num_attention_heads, scale, int64_t(i));
    // Without dropout the residual adds are fused into the output layers (the same sums, one pass fewer).
    const bool drops = training && c_.hidden_dropout_prob > 0;
    x = drops ? dropout(L.attention_output(ctx), c_.hidden_dropout_prob, training, gen) + x
              : L.attention_output(ctx, x);
    Tensor hidden = L.intermediate.gelu(L.layernorm_after(x));              // (B, T, 4C)
    x = drops ? dropout(L.output(hidden), c_.hidden_dropout_prob, training, gen) + x : L.output(hidden, x);
  }
  profile::LayerScope head_scope("head");  // the final layernorm and the classifier
  Tensor cls = layernorm_(x).select(1, 0);                                // (B, C)
  return cast_to(classifier_(cls), dtype());                              // (B, num_labels)
}

}  // namespace tessera::models
