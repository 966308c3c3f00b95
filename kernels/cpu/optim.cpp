// CPU AdamW: the reference for the CUDA kernel. Each element is updated independently in double whatever
// the storage dtype (kernels/cuda/optim_math.h, the same function the GPU runs), then rounded once into
// param/m/v; so for f32 parameters it is at least as accurate as torch's fp32 arithmetic, and for f64 it is
// torch's update to a few ulps.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "engine/core/parallel.h"
#include "kernels/cuda/optim_math.h"

namespace tessera {

namespace {

template <typename P, typename G>
void adamw_tensor(const Backend::AdamWParam& e, const cuda::adamw::Scalars& s) {
  P* p = e.param.data<P>();
  P* m = e.exp_avg.data<P>();
  P* v = e.exp_avg_sq.data<P>();
  const G* g = e.grad.data<G>();
  // ~15 flops per element: chunks of 16k elements keep thread hand-off cheap relative to the work.
  parallel_for(e.param.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto u = cuda::adamw::update(double(p[i]), to_double(g[i]), double(m[i]), double(v[i]), s);
      p[i] = P(u.param);
      m[i] = P(u.exp_avg);
      v[i] = P(u.exp_avg_sq);
    }
  });
}

}  // namespace

void CpuBackend::adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) {
  check_adamw(params, s);
  for (const AdamWParam& e : params) {
    const cuda::adamw::Scalars sc = cuda::adamw::scalars(s, e.weight_decay);
    visit_float(e.param.dtype(), "adamw", [&](auto ptag) {
      using P = decltype(ptag);
      switch (e.grad.dtype()) {
        case DType::f32: return adamw_tensor<P, float>(e, sc);
        case DType::f64: return adamw_tensor<P, double>(e, sc);
        default: return adamw_tensor<P, bf16_t>(e, sc);  // check_adamw admits f32, f64 and bf16 only
      }
    });
  }
}

}  // namespace tessera
