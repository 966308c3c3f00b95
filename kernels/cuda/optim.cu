// AdamW on the GPU: one kernel per parameter tensor (the fused multi-tensor version is a later issue).
//
// The update is Backend::adamw's (torch.optim.AdamW's):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − (lr/bc1)·m / (√v/√bc2 + eps)
// Each element is computed in double from its stored values and rounded once to the parameter type, the
// same arithmetic as the CPU reference (kernels/cpu/optim.cpp), so the two agree to about one rounding of
// the stored type per step (they can differ only where a compiler contracts a·b + c into an FMA). The
// update moves 28 bytes per fp32 element for ~15 flops, so it should stay memory-bound even in double
// (H100: ~34 fp64 TFLOP/s against 3.35 TB/s); not yet measured.
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

struct AdamWScalars {
  double decay, beta1, beta2, step_size, sqrt_bc2, eps;
};

template <typename P, typename G>
__global__ void adamw_kernel(P* __restrict__ param, const G* __restrict__ grad, P* __restrict__ m,
                             P* __restrict__ v, int64_t n, AdamWScalars s) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double g = double(load(grad[i]));
    const double p = double(param[i]) * s.decay;  // decoupled weight decay, before the moment update
    const double mi = s.beta1 * double(m[i]) + (1.0 - s.beta1) * g;
    const double vi = s.beta2 * double(v[i]) + (1.0 - s.beta2) * g * g;
    const double denom = sqrt(vi) / s.sqrt_bc2 + s.eps;
    m[i] = P(mi);
    v[i] = P(vi);
    param[i] = P(p - s.step_size * (mi / denom));
  }
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s) {
  check_on_cuda(param, "adamw", "param");
  check_on_cuda(grad, "adamw", "grad");
  check_on_cuda(m, "adamw", "m");
  check_on_cuda(v, "adamw", "v");
  check_same_dtype(param, m, "adamw");
  check_same_dtype(param, v, "adamw");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&param, &grad, &m, &v}) {
    check_contiguous(*t, "adamw", "operand");
    if (t->shape() != param.shape())
      fail("adamw (cuda): shape mismatch, param " + param.str() + " vs " + t->str());
  }
  if (s.bias_correction1 <= 0 || s.bias_correction2 <= 0)
    fail("adamw (cuda): bias corrections must be positive (1 − β^step), got " + std::to_string(s.bias_correction1) +
         " and " + std::to_string(s.bias_correction2));
  const int64_t n = param.numel();
  if (n == 0) return;
  auto run = [&](auto ptag, auto gtag) {
    using P = decltype(ptag);
    using G = decltype(gtag);
    AdamWScalars sc{1.0 - s.lr * s.weight_decay, s.beta1, s.beta2, s.lr / s.bias_correction1,
                    std::sqrt(s.bias_correction2), s.eps};
    adamw_kernel<P, G><<<grid_for(n), kThreads, 0, stream()>>>(
        static_cast<P*>(param.raw_data()), static_cast<const G*>(grad.raw_data()), static_cast<P*>(m.raw_data()),
        static_cast<P*>(v.raw_data()), n, sc);
    TS_CUDA_CHECK_LAUNCH();
  };
  auto with_grad = [&](auto ptag) {
    switch (grad.dtype()) {
      case DType::f32: return run(ptag, float{});
      case DType::f64: return run(ptag, double{});
      case DType::bf16: return run(ptag, bf16_t{});
      case DType::f16: return run(ptag, f16_t{});
      default: fail(std::string("adamw (cuda): grad must be floating, got ") + grad.str());
    }
  };
  if (param.dtype() == DType::f32) with_grad(float{});
  else if (param.dtype() == DType::f64) with_grad(double{});
  else fail("adamw (cuda): param/m/v must be f32 or f64, got " + param.str());
}

}  // namespace tessera
