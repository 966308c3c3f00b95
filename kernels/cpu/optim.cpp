// CPU AdamW: the reference for the CUDA kernel. Each element is updated independently by the function the GPU
// runs (kernels/cuda/optim_math.h), in the parameter's type: fp32 for f32 parameters, as torch's fp32
// arithmetic (which forms the first moment by lerp, a rounding apart), f64 for f64.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/vector_math.h"
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
      const auto u = cuda::adamw::update<P>(p[i], P(to_double(g[i])), m[i], v[i], s);
      p[i] = u.param;
      m[i] = u.exp_avg;
      v[i] = u.exp_avg_sq;
    }
  });
}

// Elements per chunk of the clipping passes: fixed, so sum_of_squares adds the same partial sums in the
// same order whatever the thread count (the contract: the same result on every run).
constexpr int64_t kClipChunk = 1 << 15;

bool all_f32_or_f64(const std::vector<Tensor>& xs) {
  return std::all_of(xs.begin(), xs.end(), [](const Tensor& x) {
    return x.dtype() == DType::f32 || x.dtype() == DType::f64;
  });
}

}  // namespace

// Gradient clipping's two passes, one parallel loop per tensor instead of the composite's conversion
// copies and temporaries (the composite still serves other dtypes).
void CpuBackend::sum_of_squares(const std::vector<Tensor>& xs, Tensor& out) {
  if (!all_f32_or_f64(xs)) return Backend::sum_of_squares(xs, out);
  double total = 0;
  std::vector<double> partial;
  for (const Tensor& x : xs) {
    const int64_t n = x.numel(), chunks = (n + kClipChunk - 1) / kClipChunk;
    partial.assign(size_t(chunks), 0.0);
    visit_float(x.dtype(), "sum_of_squares", [&](auto tag) {
      using T = decltype(tag);
      const T* data = x.data<T>();
      parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t begin = c * kClipChunk, end = std::min(n, begin + kClipChunk);
          partial[size_t(c)] = cpu::lane_sum<32>(end - begin, [&](int64_t i) {
            return double(data[begin + i]) * double(data[begin + i]);
          });
        }
      });
    });
    for (double p : partial) total += p;  // in chunk order
  }
  *out.data<double>() = total;
}

void CpuBackend::scale(const std::vector<Tensor>& xs, const Tensor& factor) {
  if (!all_f32_or_f64(xs)) return Backend::scale(xs, factor);
  const double f = factor.item();
  if (f == 1.0) return;  // x·1 = x: untouched, as the contract promises
  for (const Tensor& x : xs)
    visit_float(x.dtype(), "scale", [&](auto tag) {
      using T = decltype(tag);
      T* data = x.data<T>();
      const T factor_t = T(f);  // rounded to the tensor's dtype first, as the composite's copy does
      parallel_for(x.numel(), kClipChunk, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) data[i] *= factor_t;
      });
    });
}

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
