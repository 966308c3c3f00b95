// A small parameter registry shared by the models, and the layers they are built from.
//
// A Module owns its tensors in checkpoint order (the order torch's state_dict lists them): parameters and
// buffers, each under the exact name it has in a Hugging Face `model.safetensors`. Layer structs (Linear,
// LayerNorm, ...) hold handles to the same tensors, so loading copies into the registered tensors in place and
// the layers see the new values. Each parameter says whether it belongs to a LayerNorm module, which is what
// the Trainer's weight-decay rule needs (engine/optim.h).
#pragma once
#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/optim.h"
#include "engine/random.h"
#include "engine/core/tensor.h"

namespace tessera::models {

// Thrown for bad checkpoints and configs; the message names the file and every problem.
struct ModelError : std::runtime_error { using std::runtime_error::runtime_error; };

struct ModuleEntry {
  std::string name;
  Tensor tensor;
  bool is_buffer = false;      // BatchNorm running statistics: saved and loaded, never trained
  bool in_layer_norm = false;  // parameter of an nn.LayerNorm (no weight decay in the Trainer)
};

// How a freshly registered tensor is filled by init_weights (the models' `_init_weights`).
enum class Init {
  TruncNormal,  // trunc_normal_(mean 0, std initializer_range, a=-2, b=2): Linear/Conv weights, cls tokens
  Zeros,        // biases, running_mean, num_batches_tracked
  Ones,         // LayerNorm/BatchNorm weights, running_var
};

// ---- layers: handles to registered tensors ----
// Mixed precision: a layer given activations of another float dtype than its parameters (bf16 activations,
// fp32 master weights) casts the parameters at use. The cast is differentiable, so gradients reach the
// master tensors in their own dtype, and the optimizer updates fp32 weights.
Tensor cast_to(const Tensor& p, DType dt);  // p itself when undefined or already of dtype dt

struct Linear {
  Tensor weight, bias;  // (out, in), (out) or undefined
  // (..., in) -> (..., out), plus residual (..., out) when given: the add fused into the layer
  Tensor operator()(const Tensor& x, const Tensor& residual = Tensor()) const;
  Tensor gelu(const Tensor& x) const;        // GELU(x·Wᵀ + b) in one call (linear_gelu: the GEMM applies both)
};
struct LayerNorm {
  Tensor weight, bias;  // (C), (C)
  double eps = 1e-5;
  Tensor operator()(const Tensor& x) const;  // normalises the last dim
};
struct Conv2d {
  Tensor weight, bias;  // (Cout, Cin/groups, k, k), (Cout) or undefined
  int64_t stride = 1, padding = 0, groups = 1;
  Tensor operator()(const Tensor& x) const;  // (B, Cin, H, W) -> (B, Cout, H', W')
};
struct BatchNorm2d {
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;  // (C) x4, i64 []
  double eps = 1e-5, momentum = 0.1;
  Tensor operator()(const Tensor& x, bool training) const;  // (B, C, H, W)
};

// What an attention hook is shown of one layer's attention op.
enum class AttentionPart {
  Query,    // (B, heads, Tq, D), the heads split
  Key,      // (B, heads, Tk, D)
  Value,    // (B, heads, Tk, D)
  Probs,    // (B, heads, Tq, Tk) softmax(q·kᵀ·scale)
  Context,  // (B, heads, Tq, D) probs·v after the head gate, before the heads are merged
};

// Hooks on the attention op of chosen layers: the API `tessera attn` is built on. Layers are numbered
// through the whole model in order (CvT: stage 0's layers first); CvT's keys and values come from strided
// projections, so Tk < Tq there (stage 3's token 0 is the cls token in both).
// - forward(layer, part, x): each hooked layer's parts in the order listed above. Without `backward`, the
//   layer's output still comes from the fused attention and the probabilities are computed apart for the
//   hook (f32 at least; engine/ops.h attention_probabilities), so reading them never changes the result.
// - backward(layer, part, dx): d(loss)/d(part) when a backward pass reaches it (Context first, Query last).
//   Setting it runs the hooked layers' attention as separate ops (scores, softmax, the product with v),
//   so that the probabilities are a node of the graph and have a gradient.
// - gates[layer]: a (heads) or (B, heads) tensor of factors on each head's context (0 removes the head),
//   in forward and backward, on the model's device and in any float dtype. A gate that requires grad
//   receives ∂L/∂g_h = Σ ⟨ctx_h, ∂L/∂(g_h·ctx_h)⟩, which at g = 1 is the head importance of Michel et al.
//   2019 (a (B, heads) gate gives it per image). Gates apply whatever `layers` says.
// - probability_layers: when set, only these hooked layers form and show their probabilities (Probs); the
//   others show q, k, v and the context from the fused op, which never forms Tq × Tk (a caller that
//   summarises attention from q and k, train/attention_page.h add_streamed, needs no more).
// With no hooks set (Model::set_attention_hooks(nullptr)) or none for a layer, that layer runs the fused op.
struct AttentionHooks {
  std::vector<int64_t> layers;  // the layers the callbacks see; empty: every layer
  std::function<void(int64_t layer, AttentionPart part, const Tensor& x)> forward, backward;
  std::map<int64_t, Tensor> gates;
  std::optional<std::vector<int64_t>> probability_layers;  // unset: every hooked layer
  bool wants(int64_t layer) const {
    return (forward || backward) &&
           (layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end());
  }
  bool shows_probabilities(int64_t layer) const {
    return wants(layer) && (!probability_layers || std::find(probability_layers->begin(), probability_layers->end(),
                                                             layer) != probability_layers->end());
  }
};

// What capture_attention keeps from a forward pass, per layer, detached: the split heads q (B, heads, Tq, D)
// and k (B, heads, Tk, D) of its query-key layers and the probabilities (B, heads, Tq, Tk) of its
// probability layers (f32; f64 for an f64 model).
struct AttentionCapture {
  std::map<int64_t, Tensor> queries, keys, probs;
};
// Hooks that fill `out` in forward. Only `probability_layers` form their probabilities (unset: every layer
// does, and every layer is hooked); the query-key layers run the fused op. `out` must outlive the hooks' use.
AttentionHooks capture_attention(AttentionCapture& out, std::vector<int64_t> query_key_layers,
                                 std::optional<std::vector<int64_t>> probability_layers);

// Multi-head attention core shared by CvT and ViT: q (B, Tq, C), k and v (B, Tk, C), heads own consecutive
// channel blocks of C/heads; returns softmax(q·kᵀ·scale)·v merged back to (B, Tq, C). `hooks` (optional)
// watch or gate it as layer `layer`.
Tensor multi_head_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale,
                            const AttentionHooks* hooks = nullptr, int64_t layer = 0);

// MixStyle (Zhou et al. 2021, "Domain generalization with MixStyle"): each sample's feature statistics
// replaced by a mix of its own and a partner's, so that what a feature map's per-channel mean and spread
// say (a scanner's contrast, texture, noise: its "style") stops being class evidence. For tokens x (B, T, C)
// and per sample b, channel c, with the statistics over the T tokens:
//   μ_bc = mean_t x_btc,   σ_bc = √(var_t x_btc + ε)   (var with the T − 1 divisor, as torch.var)
//   y_btc = (x_btc − μ_bc) / σ_bc · (λ_b σ_bc + (1 − λ_b) σ_pc) + λ_b μ_bc + (1 − λ_b) μ_pc,   p = partner[b]
// μ and σ are constants to the gradient (the paper's detach): dy/dx = (λ_b σ_bc + (1 − λ_b) σ_pc) / σ_bc.
// partner and lambda have one entry per sample (any p in [0, B), λ in [0, 1]); T < 2 has no spread and
// returns x unchanged. On a GPU each call uploads the two vectors from pageable host memory, which waits for
// the stream: MixStyle is in no recipe, and that cost has not been measured on a GPU.
struct StyleMix {
  std::vector<int64_t> partner;
  std::vector<double> lambda;
  static constexpr double kEps = 1e-6;  // the paper's
};
Tensor mix_style(const Tensor& x, const StyleMix& mix);

// (B, C, H, W) -> (B, H·W, C), token t = h·W + w; and back.
Tensor nchw_to_tokens(const Tensor& x);
Tensor tokens_to_nchw(const Tensor& x, int64_t H, int64_t W);

class Module {
 public:
  virtual ~Module() = default;

  const std::vector<ModuleEntry>& entries() const { return entries_; }
  // Trainable parameters in checkpoint order, with the LayerNorm flag (feed to trainer_param_groups).
  std::vector<NamedParameter> parameters() const;
  int64_t num_parameters() const;  // elements of the trainable parameters
  // Moves every tensor (parameters and buffers) to `device` in place: the layers' handles see the moved
  // tensors. Gradients are dropped; build optimizers after moving (their moments live on the parameters'
  // device).
  void to(Device device);
  Device device() const;  // where the tensors are (CPU for a module without tensors)
  // Every tensor (parameters and buffers) by checkpoint name; the model's own tensors, not copies.
  std::map<std::string, Tensor> state_dict() const;
  const Tensor& tensor(const std::string& name) const;  // throws naming the tensor

  // Fills every tensor as the model's `_init_weights` does (weights N(0, std²) truncated at ±2, ...).
  void init_weights(Generator& gen, double std);
  // Re-initialises only the tensors whose names start with `prefix` (a replaced classifier head).
  void init_weights(Generator& gen, double std, const std::string& prefix);

  // Copies `tensors` into the model, strictly: every name must exist with the same shape and no name may be
  // left over, except names starting with one of `skip_prefixes` (they are neither loaded nor missing).
  // Float tensors of any float dtype are converted (f16/bf16 checkpoints); integer buffers need an integer
  // dtype. On any problem throws ONE ModelError starting with `source` that lists the missing, unexpected and
  // mismatched names together, and changes nothing.
  void load_state_dict(const std::map<std::string, Tensor>& tensors, const std::string& source,
                       const std::vector<std::string>& skip_prefixes = {});
  // Loads a safetensors file (memory-mapped) the same way.
  void load_safetensors(const std::string& path, const std::vector<std::string>& skip_prefixes = {});
  // Writes every tensor under its checkpoint name, atomically, with metadata format=pt (transformers refuses
  // safetensors files without it).
  void save_safetensors(const std::string& path) const;

  // The architecture's name for messages ("CvT"); in lower case it is also the first component of its
  // checkpoint names ("cvt."), which load_state_dict uses to recognise the other architecture's files.
  virtual const char* arch_name() const = 0;
  DType dtype() const { return dtype_; }

 protected:
  // Parameters and float buffers registered after this call have dtype `dt` (f32 normally; f64 for
  // gradient checks).
  void set_dtype(DType dt) { dtype_ = dt; }
  Tensor add_param(const std::string& name, const Shape& shape, Init init, bool in_layer_norm = false);
  Tensor add_buffer(const std::string& name, const Shape& shape, Init init, bool integer = false);
  Linear linear(const std::string& name, int64_t in, int64_t out, bool bias = true);
  LayerNorm layer_norm(const std::string& name, int64_t C, double eps);
  Conv2d conv2d(const std::string& name, int64_t cin, int64_t cout, int64_t k, int64_t stride, int64_t padding,
                int64_t groups, bool bias);
  BatchNorm2d batch_norm2d(const std::string& name, int64_t C);

 private:
  std::vector<ModuleEntry> entries_;
  std::vector<Init> inits_;
  std::map<std::string, size_t> index_;
  DType dtype_ = DType::f32;
};

}  // namespace tessera::models
