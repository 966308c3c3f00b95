#include "kernels/backend.h"

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
void Backend::adamw(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamWStep&) { unsupported("adamw"); }

}  // namespace tessera
