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
void Backend::cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, double, int64_t, double,
                                     Tensor&) {
  unsupported("cross_entropy_backward");
}
void Backend::index_select(const Tensor&, const Tensor&, Tensor&) { unsupported("index_select"); }
void Backend::index_add(const Tensor&, const Tensor&, Tensor&) { unsupported("index_add"); }
void Backend::adamw(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamWStep&) { unsupported("adamw"); }

}  // namespace tessera
