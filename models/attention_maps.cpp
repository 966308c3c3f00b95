#include "models/attention_maps.h"

#include "engine/ops.h"
#include "engine/random.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace tessera::models {

namespace {

// A convolution's output length: (n + 2p − k) / s + 1, as torch's Conv2d gives it.
int64_t conv_out(int64_t n, int64_t kernel, int64_t stride, int64_t padding) {
  return (n + 2 * padding - kernel) / stride + 1;
}

// The centres' (origin, step) after a convolution (see AttentionLayout).
std::pair<double, double> conv_centres(std::pair<double, double> in, int64_t kernel, int64_t stride, int64_t padding) {
  return {in.first + in.second * (double(kernel - 1) / 2 - double(padding)), in.second * double(stride)};
}

void check_shape(const Tensor& t, int64_t dims, const char* what) {
  if (!t.defined() || t.dim() != dims)
    throw std::invalid_argument(std::string(what) + " must have " + std::to_string(dims) + " dimensions, got " +
                                (t.defined() ? t.str() : std::string("undefined")));
}

// A layer's fused matrix (B, Tq, Tk) must match its layout's queries and keys (and B images when B ≥ 0).
void check_fused_shape(const Tensor& fused, const AttentionLayout& layout, int64_t B = -1) {
  check_shape(fused, 3, "fused attention");
  const int64_t Tq = layout.queries(), Tk = layout.keys();
  if ((B >= 0 && fused.size(0) != B) || fused.size(1) != Tq || fused.size(2) != Tk)
    throw std::invalid_argument("layer " + std::to_string(layout.layer) + ": attention " + fused.str() +
                                " does not match its layout's " + std::to_string(Tq) + " queries and " +
                                std::to_string(Tk) + " keys");
}

}  // namespace

std::vector<AttentionLayout> attention_layouts(const ModelConfig& config, int64_t height, int64_t width) {
  std::vector<AttentionLayout> out;
  if (const auto* v = std::get_if<VitConfig>(&config)) {
    const int64_t rows = height / v->patch_size, cols = width / v->patch_size;
    if (rows < 1 || cols < 1)
      throw ConfigError("ViT: a " + std::to_string(height) + "x" + std::to_string(width) +
                        " input is smaller than one patch");
    for (int64_t l = 0; l < v->num_hidden_layers; ++l) {
      AttentionLayout a;
      a.layer = l, a.heads = v->num_attention_heads, a.cls = true;
      a.input_rows = height, a.input_cols = width;
      a.embed_kernel = a.embed_stride = v->patch_size, a.embed_padding = 0;
      a.query_rows = a.key_rows = rows, a.query_cols = a.key_cols = cols;
      a.scale = 1.0 / std::sqrt(double(v->hidden_size / v->num_attention_heads));  // head_dim^-0.5
      a.query_origin = a.key_origin = double(v->patch_size) / 2;  // patch r covers rows P·r .. P·r + P − 1
      a.query_step = a.key_step = double(v->patch_size);
      out.push_back(a);
    }
    return out;
  }
  const CvtConfig& c = std::get<CvtConfig>(config);
  int64_t H = height, W = width, layer = 0;
  std::pair<double, double> tokens{0.5, 1.0};  // the stage's token centres, starting from the pixels
  for (size_t s = 0; s < 3; ++s) {
    const int64_t input_rows = H, input_cols = W;
    H = conv_out(H, c.patch_sizes[s], c.patch_stride[s], c.patch_padding[s]);  // the stage's token grid
    W = conv_out(W, c.patch_sizes[s], c.patch_stride[s], c.patch_padding[s]);
    tokens = conv_centres(tokens, c.patch_sizes[s], c.patch_stride[s], c.patch_padding[s]);
    if (H < 1 || W < 1)
      throw ConfigError("CvT: a " + std::to_string(height) + "x" + std::to_string(width) +
                        " input leaves stage " + std::to_string(s) + " no tokens");
    for (int64_t i = 0; i < c.depth[s]; ++i) {
      AttentionLayout a;
      a.layer = layer++, a.stage = int64_t(s), a.heads = c.num_heads[s], a.cls = c.cls_token[s];
      a.query_rows = conv_out(H, c.kernel_qkv[s], c.stride_q[s], c.padding_q[s]);
      a.query_cols = conv_out(W, c.kernel_qkv[s], c.stride_q[s], c.padding_q[s]);
      a.key_rows = conv_out(H, c.kernel_qkv[s], c.stride_kv[s], c.padding_kv[s]);
      a.key_cols = conv_out(W, c.kernel_qkv[s], c.stride_kv[s], c.padding_kv[s]);
      a.scale = std::pow(double(c.embed_dim[s]), -0.5);  // CvT scales by the whole stage width
      a.kernel = c.kernel_qkv[s], a.stride = c.stride_kv[s], a.padding = c.padding_kv[s];
      a.input_rows = input_rows, a.input_cols = input_cols;
      a.embed_kernel = c.patch_sizes[s], a.embed_stride = c.patch_stride[s], a.embed_padding = c.patch_padding[s];
      std::tie(a.query_origin, a.query_step) = conv_centres(tokens, c.kernel_qkv[s], c.stride_q[s], c.padding_q[s]);
      std::tie(a.key_origin, a.key_step) = conv_centres(tokens, c.kernel_qkv[s], c.stride_kv[s], c.padding_kv[s]);
      out.push_back(a);
    }
  }
  return out;
}

std::vector<int64_t> rollout_layers(const std::vector<AttentionLayout>& layouts) {
  std::vector<int64_t> out;
  if (layouts.empty() || !layouts.back().cls) return out;
  for (const AttentionLayout& a : layouts)
    if (a.stage == layouts.back().stage) out.push_back(a.layer);
  return out;
}

HeadFusion parse_head_fusion(const std::string& name) {
  if (name == "mean") return HeadFusion::Mean;
  if (name == "max") return HeadFusion::Max;
  if (name == "min") return HeadFusion::Min;
  throw std::invalid_argument("unknown head fusion '" + name + "' (known: mean, max, min)");
}

const char* head_fusion_name(HeadFusion fusion) {
  switch (fusion) {
    case HeadFusion::Mean: return "mean";
    case HeadFusion::Max: return "max";
    case HeadFusion::Min: return "min";
  }
  return "?";
}

MapMethod parse_map_method(const std::string& name) {
  for (MapMethod m : {MapMethod::Rollout, MapMethod::GradRollout, MapMethod::Relevance})
    if (name == map_method_name(m)) return m;
  throw std::invalid_argument("unknown map method '" + name + "' (known: rollout, grad-rollout, relevance)");
}

const char* map_method_name(MapMethod method) {
  switch (method) {
    case MapMethod::Rollout: return "rollout";
    case MapMethod::GradRollout: return "grad-rollout";
    case MapMethod::Relevance: return "relevance";
  }
  return "?";
}

namespace {
// The listed heads (all of the H when empty), each checked to exist.
std::vector<int64_t> selected_heads(int64_t H, const std::vector<int64_t>& heads) {
  std::vector<int64_t> hs = heads;
  if (hs.empty())
    for (int64_t h = 0; h < H; ++h) hs.push_back(h);
  for (int64_t h : hs)
    if (h < 0 || h >= H)
      throw std::invalid_argument("head " + std::to_string(h) + " does not exist: the layer has " +
                                  std::to_string(H) + " head" + (H == 1 ? "" : "s"));
  return hs;
}
}  // namespace

// F[b, i, t] = mean / max / min over h in `heads` of P[b, h, i, t].
Tensor fuse_heads(const Tensor& probs, HeadFusion fusion, const std::vector<int64_t>& heads) {
  check_shape(probs, 4, "attention probabilities");
  const int64_t B = probs.size(0), H = probs.size(1), Tq = probs.size(2), Tk = probs.size(3);
  const std::vector<int64_t> hs = selected_heads(H, heads);
  const std::vector<double> p = probs.to_vector<double>();
  const int64_t plane = Tq * Tk;
  std::vector<double> f(size_t(B * plane));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < plane; ++e) {
      double acc = fusion == HeadFusion::Mean ? 0.0 : p[size_t((b * H + hs[0]) * plane + e)];
      for (int64_t h : hs) {
        const double x = p[size_t((b * H + h) * plane + e)];
        acc = fusion == HeadFusion::Mean ? acc + x : fusion == HeadFusion::Max ? std::max(acc, x) : std::min(acc, x);
      }
      f[size_t(b * plane + e)] = fusion == HeadFusion::Mean ? acc / double(hs.size()) : acc;
    }
  return Tensor::from(f, {B, Tq, Tk});
}

// grad-rollout: F = max(0, (1/|hs|)·Σ_h P_h ⊙ G_h); relevance: F = (1/|hs|)·Σ_h max(0, G_h ⊙ P_h).
Tensor weigh_heads_by_gradient(const Tensor& probs, const Tensor& grads, MapMethod method,
                               const std::vector<int64_t>& heads) {
  check_shape(probs, 4, "attention probabilities");
  if (!needs_gradients(method)) throw std::invalid_argument("rollout weighs no heads by gradients");
  if (!grads.defined() || grads.shape() != probs.shape())
    throw std::invalid_argument("attention gradients " + (grads.defined() ? grads.str() : std::string("missing")) +
                                " do not match the probabilities " + probs.str());
  const int64_t B = probs.size(0), H = probs.size(1), Tq = probs.size(2), Tk = probs.size(3);
  const std::vector<int64_t> hs = selected_heads(H, heads);
  const std::vector<double> p = probs.to_vector<double>(), g = grads.to_vector<double>();
  const int64_t plane = Tq * Tk;
  const bool relu_each = method == MapMethod::Relevance;
  std::vector<double> f(size_t(B * plane));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < plane; ++e) {
      double acc = 0;
      for (int64_t h : hs) {
        const size_t i = size_t((b * H + h) * plane + e);
        acc += relu_each ? std::max(0.0, p[i] * g[i]) : p[i] * g[i];
      }
      f[size_t(b * plane + e)] = std::max(0.0, acc / double(hs.size()));
    }
  return Tensor::from(f, {B, Tq, Tk});
}

namespace {

// A convolution's receptive fields as a transport: for each output token (a, b) of an out_rows × out_cols
// grid, the in-bounds input positions it covers, R = [a·s − p, a·s − p + k − 1] ∩ [0, in_rows) and columns
// C alike, each with weight 1 / (|R|·|C|). Tokens are numbered from `first` on both sides (1 past a cls
// token). Throws when a token covers nothing (`what` names the layer or stage).
std::vector<std::vector<std::pair<int64_t, double>>> receptive_rows(int64_t out_rows, int64_t out_cols, int64_t in_rows,
                                                                    int64_t in_cols, int64_t kernel, int64_t stride,
                                                                    int64_t padding, int64_t first, const std::string& what) {
  std::vector<std::vector<std::pair<int64_t, double>>> rows(size_t(first + out_rows * out_cols));
  auto span = [&](int64_t a, int64_t n) {  // the in-bounds input range of output coordinate a
    return std::pair<int64_t, int64_t>{std::max<int64_t>(a * stride - padding, 0),
                                       std::min<int64_t>(a * stride - padding + kernel, n)};
  };
  for (int64_t a = 0; a < out_rows; ++a)
    for (int64_t b = 0; b < out_cols; ++b) {
      const auto [r0, r1] = span(a, in_rows);
      const auto [c0, c1] = span(b, in_cols);
      if (r1 <= r0 || c1 <= c0)
        throw std::invalid_argument(what + ": token (" + std::to_string(a) + ", " + std::to_string(b) +
                                    ") covers no position of the grid below it");
      const double w = 1.0 / double((r1 - r0) * (c1 - c0));
      auto& row = rows[size_t(first + a * out_cols + b)];
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) row.emplace_back(first + r * in_cols + c, w);
    }
  return rows;
}

// The nonzeros of S's row for each key: the key convolution's receptive fields over the query grid; the cls
// key maps to the cls query.
std::vector<std::vector<std::pair<int64_t, double>>> transport_rows(const AttentionLayout& l) {
  auto rows = receptive_rows(l.key_rows, l.key_cols, l.query_rows, l.query_cols, l.kernel, l.stride, l.padding,
                             int64_t(l.cls), "layer " + std::to_string(l.layer) + " key");
  if (l.cls) rows[0] = {{0, 1.0}};
  return rows;
}

}  // namespace

Tensor key_to_query_transport(const AttentionLayout& layout) {
  const int64_t Tk = layout.keys(), Tq = layout.queries();
  std::vector<double> s(size_t(Tk * Tq), 0.0);
  const auto rows = transport_rows(layout);
  for (int64_t t = 0; t < Tk; ++t)
    for (const auto& [j, w] : rows[size_t(t)]) s[size_t(t * Tq + j)] = w;
  return Tensor::from(s, {Tk, Tq});
}

// M[b, i, j] = Σ_t F[b, i, t] · S[t, j], over S's nonzeros only: each key row has at most kernel² of them,
// so the product costs Tq·Tk·kernel², never a dense Tq × Tk × Tq one. With S = I every M[b, i, j] is
// 0 + F[b, i, j]·1, F exactly.
Tensor carry_to_queries(const Tensor& fused, const AttentionLayout& layout) {
  check_fused_shape(fused, layout);
  const int64_t B = fused.size(0), Tq = layout.queries(), Tk = layout.keys();
  const auto rows = transport_rows(layout);
  const std::vector<double> f = fused.to_vector<double>();
  std::vector<double> m(size_t(B * Tq * Tq), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tq; ++i) {
      const double* fi = f.data() + (b * Tq + i) * Tk;
      double* mi = m.data() + (b * Tq + i) * Tq;
      for (int64_t t = 0; t < Tk; ++t)
        for (const auto& [j, w] : rows[size_t(t)]) mi[j] += fi[t] * w;
    }
  return Tensor::from(m, {B, Tq, Tq});
}

namespace {

// The matrices of every layer as flat B × T × T vectors, after checking they agree in shape.
std::vector<std::vector<double>> layer_matrices(const std::vector<Tensor>& matrices, const char* what, int64_t& B,
                                                int64_t& T) {
  if (matrices.empty()) throw std::invalid_argument(std::string(what) + " needs at least one layer");
  check_shape(matrices[0], 3, what);
  B = matrices[0].size(0), T = matrices[0].size(1);
  std::vector<std::vector<double>> flat;
  for (const Tensor& m : matrices) {
    if (m.shape() != Shape{B, T, T})
      throw std::invalid_argument(std::string(what) + " matrices differ in shape: " + m.str() + " and " +
                                  matrices[0].str());
    flat.push_back(m.to_vector<double>());
  }
  return flat;
}

// e_0ᵀ F_L ⋯ F_1 per image, F_l = factors[l] (+ I when plus_identity): the row vector times each factor from
// the last layer down, O(L·T²), so no T × T product is ever formed.
Tensor cls_row_through(const std::vector<std::vector<double>>& factors, int64_t B, int64_t T, bool plus_identity) {
  std::vector<double> out(size_t(B * T)), r(static_cast<size_t>(T)), next(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(r.begin(), r.end(), 0.0);
    r[0] = 1.0;
    for (size_t l = factors.size(); l-- > 0;) {
      if (plus_identity) next = r;
      else std::fill(next.begin(), next.end(), 0.0);
      const double* f = factors[l].data() + b * T * T;
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) next[size_t(j)] += r[size_t(i)] * f[i * T + j];
      r.swap(next);
    }
    std::copy(r.begin(), r.end(), out.begin() + b * T);
  }
  return Tensor::from(out, {B, T});
}

}  // namespace

Tensor rollout_cls_row(const std::vector<Tensor>& matrices, double discard) {
  if (!(discard >= 0 && discard < 1))
    throw std::invalid_argument("discard ratio " + std::to_string(discard) + " is outside [0, 1)");
  int64_t B = 0, T = 0;
  std::vector<std::vector<double>> hat = layer_matrices(matrices, "rollout", B, T);
  const int64_t n = T * T;
  for (std::vector<double>& a : hat) {  // Â_l for every layer and image
    // Discard (vit-explain): the k = ⌊n·discard⌋ smallest of the n = T² entries are zeroed, except flat
    // index 0, the cls token's attention to itself. Ties go to the lower index (numpy's stable argsort), so
    // the choice is reproducible.
    const int64_t k = int64_t(double(n) * discard);
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t b = 0; b < B && k > 0; ++b) {
      double* ab = a.data() + b * n;
      for (int64_t e = 0; e < n; ++e) order[size_t(e)] = e;
      std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), [&](int64_t x, int64_t y) {
        return ab[x] != ab[y] ? ab[x] < ab[y] : x < y;
      });
      for (int64_t e = 0; e < k; ++e)
        if (order[size_t(e)] != 0) ab[order[size_t(e)]] = 0;
    }
    // Â[i, j] = (A[i, j] + δ_ij) / Σ_j' (A[i, j'] + δ_ij'). vit-explain halves A + I first; the
    // normalisation cancels that.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T; ++i) {
        double* row = a.data() + b * n + i * T;
        row[i] += 1.0;
        double s = 0;
        for (int64_t j = 0; j < T; ++j) s += row[j];
        for (int64_t j = 0; j < T; ++j) row[j] /= s;
      }
  }
  return cls_row_through(hat, B, T, false);  // R[0, :] = e_0ᵀ Â_L ⋯ Â_1
}

Tensor relevance_cls_row(const std::vector<Tensor>& matrices) {
  int64_t B = 0, T = 0;
  const std::vector<std::vector<double>> bars = layer_matrices(matrices, "relevance", B, T);
  return cls_row_through(bars, B, T, true);  // e_0ᵀ (I + Ā_L) ⋯ (I + Ā_1)
}

namespace {
// The checks attention_map and attention_map_to_pixels share: a layout per captured layer, gradients for the
// gradient methods, a cls token in the last layer.
void check_map_inputs(const std::string& name, const std::vector<Tensor>& probs, const std::vector<Tensor>& grads,
                      const std::vector<AttentionLayout>& layouts, MapMethod method) {
  if (probs.size() != layouts.size() || probs.empty())
    throw std::invalid_argument(name + ": " + std::to_string(probs.size()) + " captured layers for " +
                                std::to_string(layouts.size()) + " layouts");
  if (needs_gradients(method) && grads.size() != probs.size())
    throw std::invalid_argument(std::string(map_method_name(method)) + " needs the gradients of every layer: " +
                                std::to_string(grads.size()) + " for " + std::to_string(probs.size()) + " layers");
  if (!layouts.back().cls)
    throw std::invalid_argument(std::string(map_method_name(method)) + " needs a cls token; layer " +
                                std::to_string(layouts.back().layer) + " has none");
}

// Layer l's heads as one matrix Ā (B, Tq, Tk): fused (rollout) or weighed by the gradients.
Tensor layer_matrix(const std::vector<Tensor>& probs, const std::vector<Tensor>& grads, size_t l,
                    const AttentionLayout& a, const MapOptions& options) {
  try {
    return needs_gradients(options.method) ? weigh_heads_by_gradient(probs[l], grads[l], options.method, options.heads)
                                           : fuse_heads(probs[l], options.fusion, options.heads);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("layer " + std::to_string(a.layer) + ": " + e.what());
  }
}
}  // namespace

AttentionMap attention_map(const std::vector<Tensor>& probs, const std::vector<Tensor>& grads,
                           const std::vector<AttentionLayout>& layouts, const MapOptions& options) {
  const std::string name = map_method_name(options.method);
  check_map_inputs(name, probs, grads, layouts, options.method);
  const bool weighted = needs_gradients(options.method);
  const AttentionLayout& last = layouts.back();
  AttentionMap out;
  std::vector<Tensor> matrices;
  for (size_t l = 0; l < probs.size(); ++l) {
    const AttentionLayout& a = layouts[l];
    if (a.queries() != last.queries() || !a.cls)
      throw std::invalid_argument(name + ": layers " + std::to_string(a.layer) + " and " +
                                  std::to_string(last.layer) + " do not share a token grid with a cls token");
    const Tensor fused = layer_matrix(probs, grads, l, a, options);
    if (!weighted) {  // cls mass: (1/Tq)·Σ_i F[b, i, 0]
      const std::vector<double> f = fused.to_vector<double>();
      const int64_t B = fused.size(0), Tq = fused.size(1), Tk = fused.size(2);
      std::vector<double> mass(size_t(B), 0.0);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < Tq; ++i) mass[size_t(b)] += f[size_t((b * Tq + i) * Tk)];
        mass[size_t(b)] /= double(Tq);
      }
      out.cls_mass.push_back(mass);
    }
    matrices.push_back(carry_to_queries(fused, a));
  }
  // map[b, r, c] = R[0, 1 + r·cols + c] / max over (r, c); an all-zero row stays zero.
  const Tensor row = options.method == MapMethod::Relevance ? relevance_cls_row(matrices)
                                                            : rollout_cls_row(matrices, options.discard);
  const int64_t B = row.size(0), T = row.size(1), P = T - 1;
  const std::vector<double> r = row.to_vector<double>();
  std::vector<float> map(size_t(B * P));
  for (int64_t b = 0; b < B; ++b) {
    const double* rb = r.data() + b * T + 1;
    const double peak = *std::max_element(rb, rb + P);
    for (int64_t p = 0; p < P; ++p) map[size_t(b * P + p)] = float(peak > 0 ? rb[p] / peak : 0.0);
  }
  out.map = Tensor::from(map, {B, last.query_rows, last.query_cols});
  return out;
}

PixelMaps attention_map_to_pixels(const std::vector<Tensor>& probs, const std::vector<Tensor>& grads,
                                  const std::vector<AttentionLayout>& layouts, const MapOptions& options) {
  const std::string name = std::string(map_method_name(options.method)) + " to pixels";
  check_map_inputs(name, probs, grads, layouts, options.method);
  for (size_t i = 0; i < layouts.size(); ++i)
    if (layouts[i].layer != int64_t(i))
      throw std::invalid_argument(name + " needs every layer in order; got layer " +
                                  std::to_string(layouts[i].layer) + " at position " + std::to_string(i));
  const bool relevance = options.method == MapMethod::Relevance;
  if (options.discard != 0)
    throw std::invalid_argument(name + " takes no discard (it never forms the matrices discard ranks)");
  const AttentionLayout& last = layouts.back();
  check_shape(probs[0], 4, "attention probabilities");
  const int64_t B = probs[0].size(0);
  std::vector<std::vector<double>> r(size_t(B), std::vector<double>(size_t(last.queries()), 0.0));
  for (auto& rb : r) rb[0] = 1.0;  // e_cls
  PixelMaps out;
  out.stages.resize(size_t(last.stage + 1));
  out.cls_dropped.assign(size_t(B), 0.0);
  auto scaled = [&](const std::vector<std::vector<double>>& v, size_t from, int64_t rows, int64_t cols) {
    std::vector<float> m(size_t(B * rows * cols));
    for (int64_t b = 0; b < B; ++b) {
      const double* vb = v[size_t(b)].data() + from;
      const double peak = *std::max_element(vb, vb + rows * cols);
      for (int64_t k = 0; k < rows * cols; ++k) m[size_t(b * rows * cols + k)] = float(peak > 0 ? vb[k] / peak : 0.0);
    }
    return Tensor::from(m, {B, rows, cols});
  };
  size_t l = layouts.size();
  for (int64_t stage = last.stage; stage >= 0; --stage) {
    const size_t stage_end = l;
    while (l > 0 && layouts[l - 1].stage == stage) {  // r ← r·M_l, the stage's layers last first
      const AttentionLayout& a = layouts[--l];
      const Tensor fused = layer_matrix(probs, grads, l, a, options);
      check_fused_shape(fused, a, B);
      const int64_t Tq = a.queries(), Tk = a.keys();
      const std::vector<double> f = fused.to_vector<double>();
      const auto rows = transport_rows(a);
      std::vector<double> v(static_cast<size_t>(Tk));
      for (int64_t b = 0; b < B; ++b) {
        const double* F = f.data() + b * Tq * Tk;
        std::vector<double>& u = r[size_t(b)];
        if (!relevance)  // ρ_i = Σ_j (Ā·S)[i, j] + 1 = Σ_t Ā[i, t] + 1, S's rows summing to 1
          for (int64_t i = 0; i < Tq; ++i) {
            double rho = 1;
            for (int64_t t = 0; t < Tk; ++t) rho += F[i * Tk + t];
            u[size_t(i)] /= rho;
          }
        std::fill(v.begin(), v.end(), 0.0);
        for (int64_t i = 0; i < Tq; ++i)
          if (u[size_t(i)] != 0)
            for (int64_t t = 0; t < Tk; ++t) v[size_t(t)] += u[size_t(i)] * F[i * Tk + t];
        for (int64_t t = 0; t < Tk; ++t)  // u + v·S: the identity's share, then the keys' spread over queries
          for (const auto& [j, w] : rows[size_t(t)]) u[size_t(j)] += v[size_t(t)] * w;
      }
    }
    if (l == stage_end) throw std::invalid_argument(name + ": stage " + std::to_string(stage) + " has no layer");
    const AttentionLayout& a = layouts[l];  // the stage's first layer: its query grid is the stage's token grid
    out.stages[size_t(stage)] = scaled(r, size_t(a.cls), a.query_rows, a.query_cols);
    if (a.cls)
      for (int64_t b = 0; b < B; ++b) {  // the cls token has no ancestor below: its share is dropped
        std::vector<double>& rb = r[size_t(b)];
        double total = 0;
        for (double x : rb) total += x;
        if (stage == last.stage) out.cls_dropped[size_t(b)] = total > 0 ? rb[0] / total : 0.0;
        rb.erase(rb.begin());
      }
    // Down through the stage's embedding convolution to the grid below (the pixels for stage 0).
    const auto embed = receptive_rows(a.query_rows, a.query_cols, a.input_rows, a.input_cols, a.embed_kernel,
                                      a.embed_stride, a.embed_padding, 0, "stage " + std::to_string(stage) + " embedding");
    const bool below_cls = l > 0 && layouts[l - 1].cls;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> next(size_t(int64_t(below_cls) + a.input_rows * a.input_cols), 0.0);
      for (size_t t = 0; t < embed.size(); ++t)
        for (const auto& [j, w] : embed[t]) next[size_t(int64_t(below_cls) + j)] += r[size_t(b)][t] * w;
      r[size_t(b)] = std::move(next);
    }
    if (stage == 0) {
      // Each pixel's value is the weighted mean of the tokens covering it (divided by E's column sum), not
      // their summed mass: overlapping receptive fields would otherwise print their overlap as a grid.
      std::vector<double> coverage(size_t(a.input_rows * a.input_cols), 0.0);
      for (const auto& row : embed)
        for (const auto& [j, w] : row) coverage[size_t(j)] += w;
      for (auto& rb : r)
        for (size_t j = 0; j < rb.size(); ++j) rb[j] = coverage[j] > 0 ? rb[j] / coverage[j] : 0.0;
      out.pixels = scaled(r, 0, a.input_rows, a.input_cols);
      break;
    }
  }
  return out;
}

namespace {
// For one analysis pass: the model's parameters stop requiring grad (the gradients wanted are the
// activations', and no parameter should receive or accumulate one) and `hooks` are set; both are undone when
// the pass ends, by an exception too.
class AnalysisPass {
 public:
  AnalysisPass(Model& model, const AttentionHooks& hooks) : model_(model) {
    for (const auto& e : model.entries()) {
      Tensor t = e.tensor;
      had_grad_.push_back(t.requires_grad());
      t.set_requires_grad(false);
    }
    model.set_attention_hooks(&hooks);
  }
  ~AnalysisPass() {
    model_.set_attention_hooks(nullptr);
    for (size_t i = 0; i < had_grad_.size(); ++i) {
      Tensor t = model_.entries()[i].tensor;
      t.set_requires_grad(had_grad_[i]);
    }
  }
  AnalysisPass(const AnalysisPass&) = delete;
  AnalysisPass& operator=(const AnalysisPass&) = delete;

 private:
  Model& model_;
  std::vector<bool> had_grad_;
};
}  // namespace

AttentionGradients attention_gradients(Model& model, const Tensor& pixels, const std::vector<int64_t>& layers,
                                       const std::vector<int64_t>& classes, const std::map<int64_t, Tensor>& gates,
                                       const std::vector<int64_t>& query_key_layers) {
  const int64_t B = pixels.size(0);
  if (!classes.empty() && int64_t(classes.size()) != B)
    throw std::invalid_argument(std::to_string(classes.size()) + " classes for " + std::to_string(B) + " images");
  AttentionGradients out;
  AttentionCapture kept;
  AttentionHooks hooks = capture_attention(kept, query_key_layers,
                                           layers.empty() ? std::nullopt : std::optional(layers));  // empty: all
  hooks.gates = gates;
  hooks.backward = [&](int64_t layer, AttentionPart part, const Tensor& g) {
    if (part == AttentionPart::Probs) out.grads[layer] = g.to(g.dtype() == DType::f64 ? DType::f64 : DType::f32);
  };
  AnalysisPass pass(model, hooks);
  // The input is the graph's one leaf that requires grad: the backward reaches every attention layer.
  Tensor x = pixels.detach();
  x.set_requires_grad(true);
  Generator unused(0);  // eval mode draws nothing
  out.logits = model.forward(x, /*training=*/false, unused);
  out.classes = classes;
  if (out.classes.empty())
    for (int64_t c : argmax(out.logits, 1).to_vector<int64_t>()) out.classes.push_back(c);
  const int64_t C = out.logits.size(1);
  for (int64_t c : out.classes)
    if (c < 0 || c >= C)
      throw std::invalid_argument("class " + std::to_string(c) + " does not exist: the model has " +
                                  std::to_string(C) + " classes");
  // y = Σ_b logits[b, c_b], as the sum of the logits times a one-hot matrix.
  std::vector<double> onehot(size_t(B * C), 0.0);
  for (int64_t b = 0; b < B; ++b) onehot[size_t(b * C + out.classes[size_t(b)])] = 1.0;
  const Tensor select = Tensor::from(onehot, {B, C}).to(out.logits.dtype()).to(out.logits.device());
  sum(mul(out.logits, select)).backward();
  out.logits = out.logits.detach().to(DType::f32);
  out.probs = std::move(kept.probs), out.queries = std::move(kept.queries), out.keys = std::move(kept.keys);
  return out;
}

std::map<int64_t, std::vector<double>> head_importance_sums(Model& model, const Tensor& pixels, const Tensor& labels) {
  const int64_t B = pixels.size(0);
  AttentionHooks hooks;
  for (const AttentionLayout& a : attention_layouts(model.config(), pixels.size(2), pixels.size(3))) {
    Tensor gate = Tensor::ones({B, a.heads}, model.compute_dtype(), model.device());
    gate.set_requires_grad(true);
    hooks.gates[a.layer] = gate;
  }
  {
    AnalysisPass pass(model, hooks);
    Generator unused(0);  // eval mode draws nothing
    const Tensor logits = model.forward(pixels, /*training=*/false, unused);
    // The summed loss, so that each image's gate gradient is its own ∂L_b/∂g (the mean would scale it by 1/B).
    mul(cross_entropy(logits, labels), double(B)).backward();
  }
  std::map<int64_t, std::vector<double>> out;
  for (const auto& [layer, gate] : hooks.gates) {
    const std::vector<double> g = gate.grad().to_vector<double>();
    const int64_t H = gate.size(1);
    std::vector<double> s(size_t(H), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) s[size_t(h)] += std::abs(g[size_t(b * H + h)]);
    out[layer] = s;
  }
  return out;
}

std::map<int64_t, std::vector<double>> normalise_importance(std::map<int64_t, std::vector<double>> importance) {
  for (auto& [layer, v] : importance) {
    double n = 0;
    for (double x : v) n += x * x;
    n = std::sqrt(n);
    if (n > 0)
      for (double& x : v) x /= n;
  }
  return importance;
}

}  // namespace tessera::models
