// Differentiable tensor operations. Each validates its inputs (throwing TensorError that names the op and
// the shapes), allocates outputs, calls the device's Backend (engine/core/backend.h) and records its backward
// rule on the tape (autograd.h). Binary ops broadcast like NumPy. Both operands must be on one device.
#pragma once
#include <optional>
#include <vector>

#include "engine/core/autograd.h"
#include "engine/core/tensor.h"

namespace tessera {

class Generator;
struct Conv2dArgs;  // engine/core/backend.h: the general form of conv2d's stride and padding

// ---- elementwise ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);  // gradient to `a` where a >= b, else to `b`
Tensor pow(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor affine(const Tensor& x, double alpha, double beta);  // alpha·x + beta
Tensor pow(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor gelu(const Tensor& x);  // exact (erf) GELU
// gelu(x + bias) with bias (C) over the last dim of x (..., C): one op so a backend can fuse the two passes.
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
// Not differentiable: 1/0 masks in a's dtype.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }

// ---- reductions (dims may be negative; empty dims = all) ----
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Maximum over dims; the gradient goes to the first maximal element of each reduced group.
Tensor max(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // i64, first maximum
Tensor argmax(const Tensor& x);                                     // over the flattened tensor

// ---- linear algebra ----
// (..., M, K) @ (..., K, N) with broadcast batch dims; 1-D operands as in torch.matmul.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) · weightᵀ (out, in) + bias (out) [+ residual (..., out): a residual stream's add, fused]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), const Tensor& residual = Tensor());
// GELU(linear(x, weight, bias)) in one backend call (Backend::linear_gelu): the MLP's first layer. bias required.
Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- neural-network ops ----
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(), int64_t stride = 1,
              int64_t padding = 0, int64_t groups = 1);
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& args);
// Train mode: batch mean and biased variance; running_mean/var (if defined) are updated in place,
// r = (1 - momentum)·r + momentum·batch_stat with the UNBIASED variance, and num_batches_tracked (if
// defined, i64 scalar) is incremented. Eval mode: the running statistics normalise.
Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                    Tensor running_var, Tensor num_batches_tracked, bool training, double momentum = 0.1,
                    double eps = 1e-5);
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);  // last dim
// Convolutional token embedding: conv2d(x, weight, bias, stride, padding) → tokens (N, Ho·Wo, C) →
// layer_norm over C with ln_weight/ln_bias (token t = h·Wo + w). One op so a backend can fuse it
// (Backend::conv_embedding); equal to composing conv2d, the layout change and layer_norm.
Tensor conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding,
                      const Tensor& ln_weight, const Tensor& ln_bias, double eps);
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
// softmax(q·kᵀ·scale)·v; q (..., Tq, D), k and v (..., Tk, D).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale);
// Multi-head attention on tokens: q (B, Tq, C), k and v (B, Tk, C), C = heads·D, head h on channels
// [h·D, (h + 1)·D); returns (B, Tq, C), each head's softmax(q·kᵀ·scale)·v in its channels. Equal to splitting
// the heads, scaled_dot_product_attention and merging them, without the copies where a backend reads the
// heads in place (Backend::attention_tokens).
Tensor attention_tokens(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale);
// softmax(q·kᵀ·scale) (..., Tq, Tk): the attention probabilities, for analysis. A separate computation
// (not recorded by autograd, f32 or f64), so the fused attention never materialises them.
Tensor attention_probabilities(const Tensor& q, const Tensor& k, double scale);
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
// Per-sample drop path (stochastic depth): each sample (dim 0) is zeroed with probability p, the rest
// scaled by 1/(1-p); `residual` (x's shape, optional) is added in the same pass: the residual branch
// `residual + drop_path(x)` is one kernel (Backend::drop_path).
Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen, const Tensor& residual = Tensor());
struct CrossEntropyOptions {
  double label_smoothing = 0.0;
  Tensor weight;               // per-class weights [C], optional
  int64_t ignore_index = -100;
};
// logits (N, C), target i64 (N): the mean loss as torch.nn.functional.cross_entropy computes it.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opt = {});

// ---- joining and indexing ----
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Tensor> split(const Tensor& x, int64_t chunk, int64_t dim);  // equal chunks, last may be short
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);

// ---- watching the graph ----
// x itself (the same storage and values) with `hook` called on d(loss)/d(x) when a backward pass reaches it;
// the gradient flows on unchanged. When x is not recorded (no grad mode, or nothing upstream requires
// grad) there is no gradient to see: x is returned and the hook never fires.
Tensor with_gradient_hook(const Tensor& x, std::function<void(const Tensor&)> hook);

}  // namespace tessera
