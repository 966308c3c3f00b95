// The arithmetic of AdamW, shared by the CPU reference (kernels/cpu/optim.cpp) and the CUDA multi-tensor
// kernel (optim.cu) so the two compute every element identically.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/core/dtype.h"
#include "engine/core/backend.h"

namespace tessera::cuda::adamw {

// The scalars of one step, derived once on the host from Backend::AdamWStep and the tensor's weight decay.
struct Scalars {
  double decay;      // 1 − lr·weight_decay
  double beta1, beta2;
  double step_size;  // lr / (1 − β1^t)
  double sqrt_bc2;   // √(1 − β2^t)
  double eps;
};

inline Scalars scalars(const Backend::AdamWStep& s, double weight_decay) {
  return {1.0 - s.lr * weight_decay, s.beta1, s.beta2, s.lr / s.bias_correction1, std::sqrt(s.bias_correction2), s.eps};
}

struct Updated {
  double param, exp_avg, exp_avg_sq;
};

// torch.optim.AdamW for one element, in double whatever the storage type (each result is rounded once when
// stored): decoupled weight decay first, then the moments, then the bias-corrected step.
TS_HD Updated update(double p, double g, double m, double v, const Scalars& s) {
  const double decayed = p * s.decay;
  const double mi = s.beta1 * m + (1.0 - s.beta1) * g;
  const double vi = s.beta2 * v + (1.0 - s.beta2) * g * g;
  const double denom = sqrt(vi) / s.sqrt_bc2 + s.eps;
  return {decayed - s.step_size * (mi / denom), mi, vi};
}

}  // namespace tessera::cuda::adamw
