#include "models/cvt.h"

#include <cmath>
#include <optional>

#include "engine/core/profile.h"
#include "engine/ops.h"

namespace tessera::models {

// Every CvT LayerNorm uses nn.LayerNorm's default eps, whatever config.layer_norm_eps says (transformers'
// CvT never passes the config's value on).
constexpr double kCvtLayerNormEps = 1e-5;

double Cvt::stage_drop_path_rate(const CvtConfig& c, int64_t stage) {
  // torch.linspace(0, r, n) in float32 (aten's CPU kernel): step = (end − start)/(n − 1); the first half
  // counts up from start, the second half down from end. transformers then takes element [stage].
  const int64_t n = c.depth[size_t(stage)];
  const float r = float(c.drop_path_rate[size_t(stage)]);
  if (n == 1) return 0.0;  // linspace with one step is [start]; validate() guarantees stage < n
  const float step = (r - 0.0f) / float(n - 1);
  const int64_t i = stage;
  const float v = i < n / 2 ? 0.0f + step * float(i) : r - step * float(n - i - 1);
  return double(v);
}

Cvt::Cvt(const CvtConfig& config, DType dtype) : config_(config), c_(std::get<CvtConfig>(config_)) {
  validate(config_, "CvT config");
  set_dtype(dtype);
  const int64_t last_dim = c_.embed_dim[2];
  int64_t cin = c_.num_channels;
  for (size_t s = 0; s < 3; ++s) {
    const int64_t C = c_.embed_dim[s];
    const std::string p = "cvt.encoder.stages." + std::to_string(s) + ".";
    Stage st;
    st.embedding_name = p + "embedding";
    // CvtStage registers cls_token before its submodules, so it comes first in the checkpoint order.
    if (c_.cls_token[s]) st.cls_token = add_param(p + "cls_token", {1, 1, last_dim}, Init::TruncNormal);
    st.embedding = conv2d(p + "embedding.convolution_embeddings.projection", cin, C, c_.patch_sizes[s],
                          c_.patch_stride[s], c_.patch_padding[s], 1, true);
    st.embedding_norm = layer_norm(p + "embedding.convolution_embeddings.normalization", C, kCvtLayerNormEps);
    st.drop_path = stage_drop_path_rate(c_, int64_t(s));
    const int64_t hidden = int64_t(double(C) * c_.mlp_ratio[s]);  // int(embed_dim * mlp_ratio), as CvtIntermediate
    for (int64_t i = 0; i < c_.depth[s]; ++i) {
      const std::string l = p + "layers." + std::to_string(i) + ".";
      const std::string a = l + "attention.attention.";
      Layer L;
      L.name = l.substr(0, l.size() - 1);
      auto projection = [&](const char* which, int64_t stride, int64_t padding) {
        const std::string cp = a + "convolution_projection_" + which + ".convolution_projection.";
        return ConvProjection{conv2d(cp + "convolution", C, C, c_.kernel_qkv[s], stride, padding, C, false),
                              batch_norm2d(cp + "normalization", C)};
      };
      L.conv_q = projection("query", c_.stride_q[s], c_.padding_q[s]);
      L.conv_k = projection("key", c_.stride_kv[s], c_.padding_kv[s]);
      L.conv_v = projection("value", c_.stride_kv[s], c_.padding_kv[s]);
      L.projection_q = linear(a + "projection_query", C, C, c_.qkv_bias[s]);
      L.projection_k = linear(a + "projection_key", C, C, c_.qkv_bias[s]);
      L.projection_v = linear(a + "projection_value", C, C, c_.qkv_bias[s]);
      L.attention_output = linear(l + "attention.output.dense", C, C);
      L.intermediate = linear(l + "intermediate.dense", C, hidden);
      L.output = linear(l + "output.dense", hidden, C);
      L.layernorm_before = layer_norm(l + "layernorm_before", C, kCvtLayerNormEps);
      L.layernorm_after = layer_norm(l + "layernorm_after", C, kCvtLayerNormEps);
      st.layers.push_back(L);
    }
    stages_.push_back(st);
    cin = C;
  }
  layernorm_ = layer_norm("layernorm", last_dim, kCvtLayerNormEps);
  classifier_ = linear("classifier", last_dim, num_labels());
}

Tensor Cvt::layer_forward(const Layer& L, size_t s, int64_t index, const Tensor& x, int64_t H, int64_t W,
                          bool training, Generator& gen) const {
  profile::LayerScope scope(L.name);
  const bool cls = c_.cls_token[s];
  const int64_t T = x.size(1);                   // x (B, [1 +] H·W, C)
  Tensor h = L.layernorm_before(x);              // (B, T, C)
  Tensor cls_h, spatial = h;
  if (cls) {
    cls_h = h.slice(1, 0, 1);                    // (B, 1, C): skips the conv projections
    spatial = h.slice(1, 1, T).contiguous();     // (B, H·W, C): copied once here, not by each projection
  }
  // (B, C, H, W) as a view of the tokens (channels-last memory): the depthwise convs and batch norms below
  // keep that layout (engine/ops_nn.cpp), so their outputs are tokens again without a transpose.
  Tensor img = tokens_to_nchw(spatial, H, W);
  auto project = [&](const ConvProjection& p) {  // (B, T', C), T' = H'·W' of the (strided) conv
    Tensor t = nchw_to_tokens(p.normalization(p.convolution(img), training));
    return cls ? concat({cls_h, t}, 1) : t;
  };
  Tensor q = L.projection_q(project(L.conv_q));  // (B, Tq, C)
  Tensor k = L.projection_k(project(L.conv_k));  // (B, Tk, C)
  Tensor v = L.projection_v(project(L.conv_v));  // (B, Tk, C)
  // The scale uses the FULL embed dim, not the head dim (CvtSelfAttention.scale = embed_dim ** -0.5).
  const double scale = std::pow(double(c_.embed_dim[s]), -0.5);
  Tensor ctx = attention(q, k, v, c_.num_heads[s], scale, index);  // (B, Tq, C)
  const double dp = stages_[s].drop_path;
  // Without dropout or drop path the residual adds are fused into the output layers (the same sums).
  const bool drops = training && c_.drop_rate[s] > 0, drops_paths = training && dp > 0;
  Tensor x1 = drops || drops_paths  // (B, T, C): x + drop_path(attn), one pass
                  ? drop_path(dropout(L.attention_output(ctx), c_.drop_rate[s], training, gen), dp, training, gen, x)
                  : L.attention_output(ctx, x);
  Tensor hidden = L.intermediate.gelu(L.layernorm_after(x1));  // (B, T, 4C)
  Tensor y = drops ? dropout(L.output(hidden), c_.drop_rate[s], training, gen) + x1 : L.output(hidden, x1);
  // transformers' CvT applies drop path to the whole sum, residual included: a dropped sample loses its
  // residual stream too.
  return drop_path(y, dp, training, gen);
}

Tensor Cvt::forward(const Tensor& pixel_values, bool training, Generator& gen) {
  TS_CHECK(pixel_values.defined() && pixel_values.dim() == 4 && pixel_values.size(1) == c_.num_channels,
           "CvT: pixel_values must be [B, " + std::to_string(c_.num_channels) + ", H, W], got " +
               (pixel_values.defined() ? pixel_values.str() : std::string("undefined")));
  Tensor x = cast_to(pixel_values, compute_dtype());  // (B, Cin, H, W)
  Tensor cls_out;
  const int64_t B = x.size(0);
  int64_t layer_index = 0;  // through all stages: the attention capture's numbering
  for (size_t s = 0; s < 3; ++s) {
    const Stage& st = stages_[s];
    // The strided convolution, then LayerNorm over channels, as tokens: one op a backend can fuse.
    const Conv2d& conv = st.embedding;
    const int64_t k = conv.weight.size(2), C = conv.weight.size(0);
    const int64_t H = (x.size(2) + 2 * conv.padding - k) / conv.stride + 1;
    const int64_t W = (x.size(3) + 2 * conv.padding - k) / conv.stride + 1;
    const DType dt = x.dtype();
    std::optional<profile::LayerScope> embedding_scope(std::in_place, st.embedding_name);
    Tensor t = conv_embedding(x, cast_to(conv.weight, dt), cast_to(conv.bias, dt), conv.stride, conv.padding,
                              cast_to(st.embedding_norm.weight, dt), cast_to(st.embedding_norm.bias, dt),
                              st.embedding_norm.eps);        // (B, H·W, C)
    t = dropout(t, c_.drop_rate[s], training, gen);
    if (st.cls_token.defined()) t = concat({cast_to(st.cls_token, t.dtype()).expand({B, 1, C}), t}, 1);  // (B, 1 + H·W, C)
    embedding_scope.reset();
    for (const Layer& L : st.layers) t = layer_forward(L, s, layer_index++, t, H, W, training, gen);
    if (st.cls_token.defined()) {
      cls_out = t.slice(1, 0, 1);                          // (B, 1, C)
      t = t.slice(1, 1, t.size(1));                        // (B, H·W, C)
    }
    // MixStyle after the first two stages (the paper's place: after the early blocks, whose statistics
    // carry style; the last stage's carry the class).
    if (training && style_mix() && s < 2) t = mix_style(t, *style_mix());
    x = tokens_to_nchw(t, H, W);                           // (B, C, H, W)
  }
  profile::LayerScope head_scope("head");  // the final layernorm and the classifier
  // Head: LayerNorm then mean over tokens: the single cls token, or every spatial token without one.
  Tensor seq = c_.cls_token[2] ? layernorm_(cls_out) : layernorm_(nchw_to_tokens(x));  // (B, T, C)
  return cast_to(classifier_(mean(seq, {1})), dtype());    // (B, num_labels)
}

}  // namespace tessera::models
