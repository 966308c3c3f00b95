// The CPU reference backend: every op of engine/core/backend.h, in fp32 and fp64 (copy/fill: every dtype).
// Obvious code first; the GEMM is cache-blocked and multithreaded so the CPU path is usable, and the
// other hot loops run in parallel over rows or channels (engine/core/parallel.h).
// Method bodies live with their op family: elementwise.cpp, reduce.cpp, gemm.cpp, nn.cpp, index.cpp, ...
#pragma once
#include "engine/core/backend.h"
#include "kernels/devices.h"

namespace tessera {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  void fill(Tensor& out, double value) override;
  void copy(const Tensor& src, Tensor& out) override;
  void random(RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset) override;
  void unary(UnaryOp op, const Tensor& x, Tensor& out, double alpha, double beta) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* indices) override;
  void gemm(GemmArgs& args) override;
  void softmax(const Tensor& x, Tensor& y, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                  Tensor& mean, Tensor& rstd) override;
  void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
              Tensor& y) override;
  void conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a,
                       Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  void batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean, Tensor& invstd,
                  double eps, bool training, Tensor& y) override;
  void batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& invstd, bool training, Tensor& dx, Tensor& dweight,
                           Tensor& dbias) override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out,
                 Tensor& lse) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                          Tensor& dv) override;
  void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight,
                     double label_smoothing, int64_t ignore_index, Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                              double label_smoothing, int64_t ignore_index, const Tensor& dloss,
                              Tensor& dlogits) override;
  void index_select(const Tensor& src, const Tensor& index, Tensor& out) override;
  void index_add(const Tensor& src, const Tensor& index, Tensor& out) override;
  void adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) override;
};

// Calls f(T{}) for T = float or double, and fails naming `op` for any other dtype.
template <typename F> decltype(auto) visit_float(DType dt, const char* op, F&& f) {
  if (dt == DType::f32) return f(float{});
  if (dt == DType::f64) return f(double{});
  fail(std::string(op) + " on the CPU supports f32 and f64, not " + dtype_name(dt));
}

}  // namespace tessera
