// Attention probabilities as data: where each layer's queries and keys sit on the image, and the maps made
// from them: attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"),
// gradient-weighted rollout (jacobgil/vit-explain) and relevance (Chefer, Gur & Wolf 2021, "Generic
// Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").
//
// ViT: every layer attends over the same 1 + rows·cols tokens (cls first), and rollout is the published
// recipe. CvT: queries sit on the stage's token grid, but keys and values come from a stride-2 convolution
// of it, so each layer's attention is Tq × Tk with Tk < Tq and the layers' matrices do not chain. tessera's
// method (not a published one) carries every layer's key-grid attention back to the query grid through the
// key convolution's receptive fields, giving a Tq × Tq matrix per layer; rollout then runs as for ViT over
// the last stage, the only one with a cls token. Stages 1-2 are not rolled out (their maps would need
// 3136 × 3136 products at 224 px).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "models/config.h"
#include "models/model.h"

namespace tessera::models {

// Where one attention layer's tokens sit. Queries lie on a query grid and keys on a key grid; with `cls`,
// token 0 of both is the cls token and grid position (r, c) is token cls + r·cols + c.
struct AttentionLayout {
  int64_t layer = 0, stage = 0, heads = 1;
  int64_t query_rows = 0, query_cols = 0, key_rows = 0, key_cols = 0;
  bool cls = false;
  double scale = 1;
  // The key projection: key (a, b) covers query rows a·stride − padding .. a·stride − padding + kernel − 1
  // (columns alike). ViT's keys are its tokens: kernel 1, stride 1, padding 0.
  int64_t kernel = 1, stride = 1, padding = 0;
  // Receptive-field centres in input pixels, pixel (y, x) covering [y, y + 1) × [x, x + 1): query (r, c)
  // sits at (query_origin + query_step·r, query_origin + query_step·c), key (a, b) alike. A convolution
  // (kernel k, stride s, padding p) turns its input grid's (origin o, step d) into (o + d·((k − 1)/2 − p), d·s).
  double query_origin = 0.5, query_step = 1, key_origin = 0.5, key_step = 1;
  // Where the stage's tokens come from: a convolution (kernel, stride, padding) over the previous stage's
  // token grid, or over the pixels for the first stage (ViT: its patch embedding). Token (a, b) covers input
  // rows a·stride − padding .. a·stride − padding + kernel − 1 (columns alike); the query grid is the token
  // grid (CvT's queries are unstrided).
  int64_t input_rows = 0, input_cols = 0, embed_kernel = 1, embed_stride = 1, embed_padding = 0;
  int64_t queries() const { return int64_t(cls) + query_rows * query_cols; }
  int64_t keys() const { return int64_t(cls) + key_rows * key_cols; }
};

// Every attention layer of `config` for a height × width input, in the attention capture's numbering
// (CvT: stage 0's layers first). Throws ConfigError when the input is too small for the model.
std::vector<AttentionLayout> attention_layouts(const ModelConfig& config, int64_t height, int64_t width);
// The layers rollout runs over: every ViT layer, CvT's last stage; empty when that stage has no cls token.
std::vector<int64_t> rollout_layers(const std::vector<AttentionLayout>& layouts);

enum class HeadFusion { Mean, Max, Min };
// "mean", "max", "min"; anything else throws std::invalid_argument naming the word.
HeadFusion parse_head_fusion(const std::string& name);
const char* head_fusion_name(HeadFusion fusion);

// probs (B, heads, Tq, Tk) -> f64 (B, Tq, Tk): the mean, max or min over the listed heads (all when empty).
Tensor fuse_heads(const Tensor& probs, HeadFusion fusion, const std::vector<int64_t>& heads = {});

// The transport S (Tk × Tq, f64) of `layout`: key (a, b) spreads uniformly over the in-bounds query
// positions of its receptive field, S[key][query] = 1 / (their count); the cls key maps to the cls query.
// Rows sum to 1. With kernel 1, stride 1, padding 0 and equal grids it is the identity.
Tensor key_to_query_transport(const AttentionLayout& layout);
// fused (B, Tq, Tk) -> (B, Tq, Tq): the layer's attention carried to the query grid, A · S.
Tensor carry_to_queries(const Tensor& fused, const AttentionLayout& layout);

// Rollout's row of the cls token (token 0) over square (B, T, T) matrices given first layer first:
// R[0, :] of R = Â_L ⋯ Â_1 (f64, (B, T)), where Â_l is A_l with its lowest `discard` share zeroed, plus I,
// normalised by rows. 0 <= discard < 1.
Tensor rollout_cls_row(const std::vector<Tensor>& matrices, double discard);
// Relevance's row of the cls token over the same: R[0, :] of R = (I + Ā_L) ⋯ (I + Ā_1), which is
// R ← R + Ā_l·R applied layer by layer from R = I (no normalisation, no discard).
Tensor relevance_cls_row(const std::vector<Tensor>& matrices);

// How a map is made from the layers' probabilities A (B, heads, Tq, Tk) and, for the gradient methods,
// their gradients ∇A = ∂y_c/∂A of the chosen class's logit. Each gives one matrix Ā per layer, carried to
// the query grid (Ā·S; the identity for ViT), then a cls row R[0, patches] scaled to max 1:
//   rollout       Ā = fuse over heads of A (mean, max or min), then rollout_cls_row (Abnar & Zuidema)
//   grad-rollout  Ā = ReLU(mean over heads of A ⊙ ∇A), then rollout_cls_row (vit-explain)
//   relevance     Ā = mean over heads of ReLU(∇A ⊙ A), then relevance_cls_row (Chefer et al.)
enum class MapMethod { Rollout, GradRollout, Relevance };
// "rollout", "grad-rollout", "relevance"; anything else throws std::invalid_argument naming the word.
MapMethod parse_map_method(const std::string& name);
const char* map_method_name(MapMethod method);
inline bool needs_gradients(MapMethod method) { return method != MapMethod::Rollout; }

// The gradient methods' head weighting: f64 (B, Tq, Tk) from probs and grads (B, heads, Tq, Tk), over the
// listed heads (all when empty).
Tensor weigh_heads_by_gradient(const Tensor& probs, const Tensor& grads, MapMethod method,
                               const std::vector<int64_t>& heads = {});

struct MapOptions {
  MapMethod method = MapMethod::Rollout;
  HeadFusion fusion = HeadFusion::Mean;  // rollout only: the gradient methods' formulas fix the mean
  double discard = 0;          // rollout and grad-rollout: share of each matrix's entries zeroed, [0, 1)
  std::vector<int64_t> heads;  // the heads used (all when empty)
};

struct AttentionMap {
  Tensor map;  // f32 (B, rows, cols): R[cls, patches] on the query grid, scaled to max 1 per image
  // Rollout only: per layer, per image, the mean over query rows of the fused attention on the cls key,
  // the share of the attention that stays with the cls token and is not placed on the image.
  std::vector<std::vector<double>> cls_mass;
};
// The method over the probabilities (and for the gradient methods their gradients, one per layer) of
// rollout_layers(), in order, with their layouts. Throws std::invalid_argument for a bad option, a head a
// layer does not have, or missing gradients.
AttentionMap attention_map(const std::vector<Tensor>& probs, const std::vector<Tensor>& grads,
                           const std::vector<AttentionLayout>& layouts, const MapOptions& options);

// tessera's maps through every stage down to the pixels, for CvT's stages 1-2, which have no cls token of
// their own (and for ViT, down from its patches). The cls row r of the last stage's product (as in
// attention_map, without discard) is carried down: at a stage boundary the cls entry is dropped (the
// stage-3 cls token has no ancestor in stage 2; `cls_dropped` reports its share of r) and every token's
// entry is spread uniformly over the in-bounds positions of its embedding convolution's receptive field (E,
// rows summing to 1), then multiplied through that stage's layers, last first; on the pixels, each pixel
// gets the E-weighted mean of the tokens covering it (overlapping fields would otherwise draw a grid). Only
// the row vector is propagated: r·M_l is computed as ((r ⊘ ρ)·Ā_l)·S_l + r ⊘ ρ (ρ_i: row i's sum of
// Ā_l·S_l + I; relevance uses r·Ā_l·S_l + r), so no Tq × Tq matrix is formed (3136² at 224 px). Needs
// every layer's probabilities
// (and gradients for the gradient methods) in layer order.
struct PixelMaps {
  Tensor pixels;                  // f32 (B, height, width), scaled to max 1 per image
  std::vector<Tensor> stages;     // per stage, f32 (B, rows, cols): r on its token grid, scaled to max 1
  std::vector<double> cls_dropped;  // per image: the cls entry's share of r when leaving the last stage
};
PixelMaps attention_map_to_pixels(const std::vector<Tensor>& probs, const std::vector<Tensor>& grads,
                                  const std::vector<AttentionLayout>& layouts, const MapOptions& options);

// One forward and backward of `model` in eval mode on pixels (B, C, H, W): the listed layers'
// probabilities and their gradients ∂y/∂A, y = Σ_b logits[b, classes[b]] (images do not interact in eval
// mode, so each image's slice is the gradient of its own logit). `classes` holds one class per image, or
// is empty for each image's predicted class; `gates` (AttentionHooks::gates) mask or scale heads during the
// pass. Gradients stay off the model's parameters. `query_key_layers`: further layers whose split heads q
// (B, heads, Tq, D) and k (B, heads, Tk, D) the same pass returns, detached, without forming their
// probabilities (for statistics streamed from q and k). An empty `layers` means every layer's probabilities
// and gradients, with or without query-key layers.
struct AttentionGradients {
  Tensor logits;                        // (B, classes) f32
  std::vector<int64_t> classes;         // the class explained, per image
  std::map<int64_t, Tensor> probs, grads;  // layer -> (B, heads, Tq, Tk), f32 (f64 for an f64 model)
  std::map<int64_t, Tensor> queries, keys;  // query_key_layers -> (B, heads, T, D)
};
AttentionGradients attention_gradients(Model& model, const Tensor& pixels, const std::vector<int64_t>& layers,
                                       const std::vector<int64_t>& classes = {},
                                       const std::map<int64_t, Tensor>& gates = {},
                                       const std::vector<int64_t>& query_key_layers = {});

// Michel, Levy & Neubig 2019 ("Are Sixteen Heads Really Better than One?"): head h's importance is
// E_x |∂L/∂g_h| for a gate g_h = 1 on its context, = |Σ ⟨ctx_h, ∂L/∂ctx_h⟩|, L the cross-entropy of the
// labels. One forward and backward in eval mode with a (B, heads) gate per layer; returns, per layer,
// the sum over this batch's images of |∂L_b/∂g_h| (f64), to be accumulated over a data set and then divided
// by the image count and normalised (normalise_importance).
std::map<int64_t, std::vector<double>> head_importance_sums(Model& model, const Tensor& pixels, const Tensor& labels);
// Each layer's vector divided by its L2 norm (a zero vector stays zero).
std::map<int64_t, std::vector<double>> normalise_importance(std::map<int64_t, std::vector<double>> importance);

}  // namespace tessera::models
