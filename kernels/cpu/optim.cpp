// CPU AdamW: the reference for the CUDA kernel. Each element is updated independently, in double whatever
// the storage dtype, then rounded once into param/m/v; so for f32 parameters it is at least as accurate as
// torch's fp32 arithmetic, and for f64 it is torch's update to a few ulps.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"

namespace tessera {

namespace {

template <typename P, typename G>
void adamw_kernel(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const Backend::AdamWStep& s) {
  P* p = param.data<P>();
  P* mp = m.data<P>();
  P* vp = v.data<P>();
  const G* g = grad.data<G>();
  const double decay = 1.0 - s.lr * s.weight_decay;
  const double step_size = s.lr / s.bias_correction1;
  const double bc2_sqrt = std::sqrt(s.bias_correction2);
  const double b1 = s.beta1, b2 = s.beta2, eps = s.eps;
  // ~10 flops per element: chunks of 16k elements keep thread hand-off cheap relative to the work.
  parallel_for(param.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double gi = to_double(g[i]);
      const double pd = double(p[i]) * decay;  // decoupled weight decay, before the moment update
      const double mi = b1 * double(mp[i]) + (1.0 - b1) * gi;
      const double vi = b2 * double(vp[i]) + (1.0 - b2) * gi * gi;
      const double denom = std::sqrt(vi) / bc2_sqrt + eps;
      mp[i] = P(mi);
      vp[i] = P(vi);
      p[i] = P(pd - step_size * (mi / denom));
    }
  });
}

}  // namespace

void CpuBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s) {
  const Tensor* operands[] = {&param, &grad, &m, &v};
  for (const Tensor* t : operands) {
    TS_CHECK(t->defined(), "adamw: an operand is undefined");
    TS_CHECK(t->device() == Device::CPU, "adamw (cpu): operand " + t->str() + " is not on the CPU");
    TS_CHECK(t->is_contiguous(), "adamw: operand " + t->str() + " is not contiguous");
  }
  TS_CHECK(grad.shape() == param.shape() && m.shape() == param.shape() && v.shape() == param.shape(),
           "adamw: shapes differ: param " + param.str() + ", grad " + grad.str() + ", exp_avg " + m.str() +
               ", exp_avg_sq " + v.str());
  TS_CHECK(m.dtype() == param.dtype() && v.dtype() == param.dtype(),
           "adamw: exp_avg " + m.str() + " and exp_avg_sq " + v.str() + " must have the dtype of param " +
               param.str());
  // bias corrections are 1 - beta^t with t >= 1 and beta in [0, 1): in (0, 1].
  TS_CHECK(s.bias_correction1 > 0 && s.bias_correction1 <= 1 && s.bias_correction2 > 0 &&
               s.bias_correction2 <= 1,
           "adamw: bias corrections " + std::to_string(s.bias_correction1) + ", " +
               std::to_string(s.bias_correction2) + " must be in (0, 1]");
  visit_float(param.dtype(), "adamw", [&](auto ptag) {
    using P = decltype(ptag);
    switch (grad.dtype()) {
      case DType::f32: return adamw_kernel<P, float>(param, grad, m, v, s);
      case DType::f64: return adamw_kernel<P, double>(param, grad, m, v, s);
      case DType::bf16: return adamw_kernel<P, bf16_t>(param, grad, m, v, s);
      default:
        fail(std::string("adamw: gradient ") + grad.str() + " must be f32, f64 or bf16");
    }
  });
}

}  // namespace tessera
