// The fused ops' composite fallbacks (engine/core/backend.h, TESSERA_FUSED_OPS): each composes the
// backend's own primitives, so it is correct on every device; a backend overrides the ones it fuses.
#include "engine/core/backend.h"

namespace tessera {

namespace {
// x + bias broadcast over the rows, materialised: [rows, C].
Tensor add_bias(Backend& be, const Tensor& x, const Tensor& bias) {
  const int64_t rows = x.size(0), C = x.size(1);
  Tensor pre = Tensor::empty(x.shape(), x.dtype(), x.device());
  be.binary(BinaryOp::Add, x, bias.reshape({1, C}).expand({rows, C}), pre);
  return pre;
}
}  // namespace

void Backend::linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual, Tensor& y) {
  GemmArgs g;
  g.trans_b = true;
  g.M = x.size(0), g.N = weight.size(0), g.K = x.size(1);
  g.A = x, g.B = weight, g.C = Tensor::empty(y.shape(), y.dtype(), y.device());
  gemm(g);
  Tensor biased = residual.defined() ? Tensor::empty(y.shape(), y.dtype(), y.device()) : y;
  binary(BinaryOp::Add, g.C, bias.reshape({1, g.N}).expand({g.M, g.N}), biased);
  if (residual.defined()) binary(BinaryOp::Add, biased, residual, y);
}

void Backend::linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& h, Tensor& y) {
  GemmArgs g;
  g.trans_b = true;
  g.M = x.size(0), g.N = weight.size(0), g.K = x.size(1);
  g.A = x, g.B = weight, g.C = h.defined() ? h : Tensor::empty(y.shape(), y.dtype(), y.device());
  gemm(g);
  bias_gelu(g.C, bias, y);
}

namespace {
// [B, T, heads·D] seen as [B, heads, T, D] (a view of the same memory).
Tensor heads_view(const Tensor& x, int64_t heads) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2) / heads;
  return x.reshape({B, T, heads, D}).permute({0, 2, 1, 3});
}
// Tokens [B, T, heads·D] as [B, heads, T, D] for attention: a copy, or with one head the same memory.
// Undefined stays undefined.
Tensor split_heads(Backend& be, const Tensor& x, int64_t heads) {
  if (!x.defined()) return x;
  const Tensor view = heads_view(x, heads);
  if (heads == 1) return view;  // [B, 1, T, D] with the tokens' strides: contiguous
  Tensor out = Tensor::empty(view.shape(), x.dtype(), x.device());
  be.copy(view, out);
  return out;
}
// Where attention writes a head-major result for tokens `out`: out itself with one head, else new memory.
Tensor head_major_for(const Tensor& out, int64_t heads) {
  if (!out.defined() || heads == 1) return out.defined() ? heads_view(out, heads) : out;
  const Tensor view = heads_view(out, heads);
  return Tensor::empty(view.shape(), out.dtype(), out.device());
}
// The head-major result back into the tokens (nothing to do where it was written there).
void merge_heads(Backend& be, const Tensor& x, Tensor& out, int64_t heads) {
  if (!out.defined() || heads == 1) return;
  Tensor dst = heads_view(out, heads);
  be.copy(x, dst);
}
}  // namespace

void Backend::attention_tokens(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale,
                               Tensor& out, Tensor& lse) {
  Tensor oh = head_major_for(out, heads);
  attention(split_heads(*this, q, heads), split_heads(*this, k, heads), split_heads(*this, v, heads), scale, oh, lse);
  merge_heads(*this, oh, out, heads);
}

void Backend::attention_tokens_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& out, const Tensor& lse, int64_t heads, double scale,
                                        Tensor& dq, Tensor& dk, Tensor& dv) {
  Tensor dqh = head_major_for(dq, heads), dkh = head_major_for(dk, heads), dvh = head_major_for(dv, heads);
  attention_backward(split_heads(*this, dout, heads), split_heads(*this, q, heads), split_heads(*this, k, heads),
                     split_heads(*this, v, heads), split_heads(*this, out, heads), lse, scale, dqh, dkh, dvh);
  merge_heads(*this, dqh, dq, heads);
  merge_heads(*this, dkh, dk, heads);
  merge_heads(*this, dvh, dv, heads);
}

void Backend::bias_gelu(const Tensor& x, const Tensor& bias, Tensor& y) {
  unary(UnaryOp::Gelu, add_bias(*this, x, bias), y);
}

void Backend::bias_gelu_backward(const Tensor& dy, const Tensor& x, const Tensor& bias, Tensor& dx, Tensor& dbias) {
  const int64_t rows = x.size(0), C = x.size(1);
  Tensor g = dx.defined() ? dx : Tensor::empty(x.shape(), x.dtype(), x.device());
  binary(BinaryOp::GeluBackward, add_bias(*this, x, bias), dy, g);
  if (!dbias.defined()) return;
  Tensor by_column = Tensor::empty({C, rows}, x.dtype(), x.device());  // reduce() sums contiguous rows
  copy(g.transpose(0, 1), by_column);
  reduce(ReduceOp::Sum, by_column, dbias, nullptr);
}

void Backend::drop_path(const Tensor& x, const Tensor& keep_mask, double scale, const Tensor& residual,
                        Tensor& out) {
  Shape per_sample(size_t(x.dim()), 1);
  per_sample[0] = x.size(0);
  Tensor s = Tensor::empty(keep_mask.shape(), x.dtype(), x.device());
  unary(UnaryOp::Affine, keep_mask, s, scale, 0.0);  // 0/1 → 0/scale, rounded once to x's dtype
  Tensor broadcast = s.reshape(per_sample).expand(x.shape());
  if (!residual.defined()) return binary(BinaryOp::Mul, x, broadcast, out);
  Tensor scaled = Tensor::empty(x.shape(), x.dtype(), x.device());
  binary(BinaryOp::Mul, x, broadcast, scaled);
  binary(BinaryOp::Add, scaled, residual, out);
}

void Backend::conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                             const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens,
                             Tensor& pre_norm, Tensor& mean, Tensor& rstd) {
  const int64_t N = x.size(0), C = weight.size(0), P = pre_norm.size(1);
  const int64_t Ho = (x.size(2) + 2 * a.pad_h - weight.size(2)) / a.stride_h + 1;
  Tensor image = Tensor::empty({N, C, Ho, P / Ho}, x.dtype(), x.device());    // [N, C, Ho, Wo]
  conv2d(x, weight, bias, a, image);
  copy(image.reshape({N, C, P}).transpose(1, 2), pre_norm);                  // [N, P, C]
  Tensor rows = tokens.reshape({N * P, C});
  layer_norm(pre_norm.reshape({N * P, C}), ln_weight, ln_bias, eps, rows, mean, rstd);
}

void Backend::conv_embedding_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                                      const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight,
                                      const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                      Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias) {
  const int64_t N = x.size(0), C = weight.size(0), P = pre_norm.size(1);
  const int64_t Ho = (x.size(2) + 2 * a.pad_h - weight.size(2)) / a.stride_h + 1;
  Tensor dpre = Tensor::empty({N * P, C}, x.dtype(), x.device());
  layer_norm_backward(dtokens.reshape({N * P, C}), pre_norm.reshape({N * P, C}), ln_weight, mean, rstd, dpre,
                      dln_weight, dln_bias);
  Tensor dimage = Tensor::empty({N, C, Ho, P / Ho}, x.dtype(), x.device());
  Tensor dimage_tokens = dimage.reshape({N, C, P}).transpose(1, 2);         // a [N, P, C] view
  copy(dpre.reshape({N, P, C}), dimage_tokens);
  conv2d_backward(dimage, x, weight, a, dx, dweight, dbias);
}

namespace {
// A new contiguous [N, C, H, W] for an [N, H, W, C] tensor (undefined for an undefined one).
Tensor empty_nchw(const Tensor& nhwc) {
  if (!nhwc.defined()) return Tensor();
  return Tensor::empty({nhwc.size(0), nhwc.size(3), nhwc.size(1), nhwc.size(2)}, nhwc.dtype(), nhwc.device());
}
// [N, H, W, C] (any strides) -> a new contiguous [N, C, H, W], and back into a contiguous [N, H, W, C].
Tensor to_nchw(Backend& be, const Tensor& nhwc) {
  Tensor out = empty_nchw(nhwc);
  be.copy(nhwc.permute({0, 3, 1, 2}), out);
  return out;
}
void from_nchw(Backend& be, const Tensor& nchw, Tensor& nhwc) {
  Tensor view = nhwc.permute({0, 3, 1, 2});
  be.copy(nchw, view);
}
}  // namespace

void Backend::conv_embedding_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                                  const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens,
                                  Tensor& pre_norm, Tensor& mean, Tensor& rstd) {
  conv_embedding(to_nchw(*this, x), weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
}

void Backend::conv_embedding_nhwc_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                                           const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight,
                                           const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                           Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias) {
  Tensor dx_nchw = empty_nchw(dx);
  conv_embedding_backward(dtokens, to_nchw(*this, x), weight, a, pre_norm, ln_weight, mean, rstd, dx_nchw, dweight,
                          dbias, dln_weight, dln_bias);
  if (dx.defined()) from_nchw(*this, dx_nchw, dx);
}

void Backend::depthwise_conv2d_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                                    Tensor& y) {
  Tensor y_nchw = empty_nchw(y);
  conv2d(to_nchw(*this, x), weight, bias, a, y_nchw);
  from_nchw(*this, y_nchw, y);
}

void Backend::depthwise_conv2d_nhwc_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                             const Conv2dArgs& a, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  Tensor dx_nchw = empty_nchw(dx);
  conv2d_backward(to_nchw(*this, dy), to_nchw(*this, x), weight, a, dx_nchw, dweight, dbias);
  if (dx.defined()) from_nchw(*this, dx_nchw, dx);
}

void Backend::batch_norm_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean,
                              Tensor& invstd, double eps, bool training, Tensor& y) {
  Tensor y_nchw = empty_nchw(y);
  batch_norm(to_nchw(*this, x), weight, bias, mean, invstd, eps, training, y_nchw);
  from_nchw(*this, y_nchw, y);
}

void Backend::batch_norm_nhwc_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                       const Tensor& invstd, bool training, Tensor& dx, Tensor& dweight,
                                       Tensor& dbias) {
  Tensor dx_nchw = empty_nchw(dx);
  batch_norm_backward(to_nchw(*this, dy), to_nchw(*this, x), weight, mean, invstd, training, dx_nchw, dweight, dbias);
  if (dx.defined()) from_nchw(*this, dx_nchw, dx);
}

void Backend::sum_of_squares(const std::vector<Tensor>& xs, Tensor& out) {
  fill(out, 0.0);
  Tensor part = Tensor::empty({}, DType::f64, device());
  for (const Tensor& x : xs) {
    if (x.numel() == 0) continue;
    Tensor x64 = Tensor::empty({1, x.numel()}, DType::f64, device());
    copy(x.reshape({1, x.numel()}), x64);
    binary(BinaryOp::Mul, x64, x64, x64);
    reduce(ReduceOp::Sum, x64, part, nullptr);
    binary(BinaryOp::Add, out, part, out);
  }
}

void Backend::column_sums(const Tensor& x, Tensor& out) {
  if (x.size(0) == 0) return fill(out, 0.0);  // no rows: every sum is empty
  Tensor by_column = Tensor::empty({x.size(1), x.size(0)}, x.dtype(), device());
  copy(x.transpose(0, 1), by_column);
  reduce(ReduceOp::Sum, by_column, out, nullptr);
}

void Backend::scale(const std::vector<Tensor>& xs, const Tensor& factor) {
  for (const Tensor& x : xs) {
    Tensor f = Tensor::empty({}, x.dtype(), device());
    copy(factor.reshape({}), f);
    Tensor scaled = Tensor::empty(x.shape(), x.dtype(), device());
    binary(BinaryOp::Mul, x, f.expand(x.shape()), scaled);
    Tensor target = x;  // a handle to the same storage: the scaled values go back into x
    copy(scaled, target);
  }
}

}  // namespace tessera
