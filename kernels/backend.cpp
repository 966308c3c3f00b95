#include "engine/core/backend.h"

#include <atomic>

namespace tessera {

static std::atomic<MatmulPrecision> g_matmul_precision{MatmulPrecision::Highest};
void set_matmul_precision(MatmulPrecision p) { g_matmul_precision = p; }
MatmulPrecision matmul_precision() { return g_matmul_precision; }

void Backend::unsupported(const char* op) const {
  fail(std::string(op) + " is not implemented on the " + device_name(device()) + " backend");
}

void Backend::fill(Tensor&, double) { unsupported("fill"); }
void Backend::copy(const Tensor&, Tensor&) { unsupported("copy"); }
void Backend::random(RandomKind, Tensor&, double, double, uint64_t, uint64_t) { unsupported("random"); }
void Backend::unary(UnaryOp, const Tensor&, Tensor&, double, double) { unsupported("unary"); }
void Backend::binary(BinaryOp, const Tensor&, const Tensor&, Tensor&) { unsupported("binary"); }
void Backend::reduce(ReduceOp, const Tensor&, Tensor&, Tensor*) { unsupported("reduce"); }
void Backend::gemm(GemmArgs&) { unsupported("gemm"); }
void Backend::softmax(const Tensor&, Tensor&, bool) { unsupported("softmax"); }
void Backend::softmax_backward(const Tensor&, const Tensor&, Tensor&, bool) { unsupported("softmax_backward"); }
void Backend::layer_norm(const Tensor&, const Tensor&, const Tensor&, double, Tensor&, Tensor&, Tensor&) {
  unsupported("layer_norm");
}
void Backend::layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  Tensor&, Tensor&, Tensor&) {
  unsupported("layer_norm_backward");
}
void Backend::conv2d(const Tensor&, const Tensor&, const Tensor&, const Conv2dArgs&, Tensor&) {
  unsupported("conv2d");
}
void Backend::conv2d_backward(const Tensor&, const Tensor&, const Tensor&, const Conv2dArgs&, Tensor&, Tensor&,
                              Tensor&) {
  unsupported("conv2d_backward");
}
namespace {
// x + bias broadcast over the rows, materialised: [rows, C].
Tensor add_bias(Backend& be, const Tensor& x, const Tensor& bias) {
  const int64_t rows = x.size(0), C = x.size(1);
  Tensor pre = Tensor::empty(x.shape(), x.dtype(), x.device());
  be.binary(BinaryOp::Add, x, bias.reshape({1, C}).expand({rows, C}), pre);
  return pre;
}
}  // namespace

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

void Backend::batch_norm(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, double, bool, Tensor&) {
  unsupported("batch_norm");
}
void Backend::batch_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                                  Tensor&, Tensor&, Tensor&) {
  unsupported("batch_norm_backward");
}
void Backend::attention(const Tensor&, const Tensor&, const Tensor&, double, Tensor&, Tensor&) {
  unsupported("attention");
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, double, Tensor&, Tensor&, Tensor&) {
  unsupported("attention_backward");
}
void Backend::cross_entropy(const Tensor&, const Tensor&, const Tensor&, double, int64_t, Tensor&) {
  unsupported("cross_entropy");
}
void Backend::cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, double, int64_t, const Tensor&,
                                     Tensor&) {
  unsupported("cross_entropy_backward");
}
void Backend::index_select(const Tensor&, const Tensor&, Tensor&) { unsupported("index_select"); }
void Backend::index_add(const Tensor&, const Tensor&, Tensor&) { unsupported("index_add"); }
void Backend::adamw(const std::vector<AdamWParam>&, const AdamWStep&) { unsupported("adamw"); }

// Compositions of this backend's own ops: a few launches per tensor.
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

void Backend::scale(const std::vector<Tensor>& xs, const Tensor& factor) {
  for (const Tensor& x : xs) {
    Tensor f = Tensor::empty({}, x.dtype(), device());
    copy(factor.reshape({}), f);
    Tensor scaled = Tensor::empty(x.shape(), x.dtype(), device());
    binary(BinaryOp::Mul, x, f.expand(x.shape()), scaled);
    copy(scaled, const_cast<Tensor&>(x));
  }
}

void Backend::check_adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) const {
  // bias corrections are 1 − β^t with t ≥ 1 and β in [0, 1): in (0, 1].
  TS_CHECK(s.bias_correction1 > 0 && s.bias_correction1 <= 1 && s.bias_correction2 > 0 && s.bias_correction2 <= 1,
           "adamw: bias corrections " + std::to_string(s.bias_correction1) + ", " +
               std::to_string(s.bias_correction2) + " must be in (0, 1]");
  for (size_t i = 0; i < params.size(); ++i) {
    const AdamWParam& e = params[i];
    const std::string who = "adamw (" + std::string(device_name(device())) + "): parameter " + std::to_string(i);
    for (const Tensor* t : {&e.param, &e.grad, &e.exp_avg, &e.exp_avg_sq}) {
      TS_CHECK(t->defined(), who + ": an operand is undefined");
      TS_CHECK(t->device() == device(), who + ": operand " + t->str() + " is on the wrong device");
      TS_CHECK(t->is_contiguous(), who + ": operand " + t->str() + " is not contiguous");
    }
    TS_CHECK(e.grad.shape() == e.param.shape() && e.exp_avg.shape() == e.param.shape() &&
                 e.exp_avg_sq.shape() == e.param.shape(),
             who + ": shapes differ: param " + e.param.str() + ", grad " + e.grad.str() + ", exp_avg " +
                 e.exp_avg.str() + ", exp_avg_sq " + e.exp_avg_sq.str());
    TS_CHECK(e.param.dtype() == DType::f32 || e.param.dtype() == DType::f64,
             who + ": param " + e.param.str() + " must be f32 or f64");
    TS_CHECK(e.exp_avg.dtype() == e.param.dtype() && e.exp_avg_sq.dtype() == e.param.dtype(),
             who + ": exp_avg " + e.exp_avg.str() + " and exp_avg_sq " + e.exp_avg_sq.str() +
                 " must have the dtype of param " + e.param.str());
    TS_CHECK(e.grad.dtype() == DType::f32 || e.grad.dtype() == DType::f64 || e.grad.dtype() == DType::bf16,
             who + ": gradient " + e.grad.str() + " must be f32, f64 or bf16");
  }
}

}  // namespace tessera
