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

template <typename F> struct Updated {
  F param, exp_avg, exp_avg_sq;
};

// torch.optim.AdamW for one element, in F: the parameter's type (float for f32 parameters, as torch's fp32
// an fp32 parameter's update; double for f64), whatever the gradient's (a bf16 gradient is widened first).
// Decoupled weight decay first, then the moments, then the bias-corrected step; the step's scalars are
// rounded to F once. Every result is stored as computed. Double arithmetic for f32 parameters had cost the
// CPU a double division and square root per element (3.5 ms of a small CvT's 2.4 M parameters a step on two
// cores: the update was bound by them, not by its 28 bytes an element).
template <typename F> TS_HD Updated<F> update(F p, F g, F m, F v, const Scalars& s) {
  // 1 − β in double, then rounded: 1 − float(0.999) would be 1.3e-5 off (torch, too, rounds 1 − β computed
  // in double). Loop-invariant: the compiler hoists these.
  const F beta1 = F(s.beta1), beta2 = F(s.beta2), rest1 = F(1.0 - s.beta1), rest2 = F(1.0 - s.beta2);
  const F decayed = p * F(s.decay);
  const F mi = beta1 * m + rest1 * g;
  const F vi = beta2 * v + rest2 * g * g;
  F root;
  if constexpr (sizeof(F) == sizeof(float)) root = sqrtf(vi);  // the float square root on host and device
  else root = sqrt(vi);
  const F denom = root / F(s.sqrt_bc2) + F(s.eps);
  return {decayed - F(s.step_size) * (mi / denom), mi, vi};
}

}  // namespace tessera::cuda::adamw
