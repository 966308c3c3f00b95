// The CPU backend's instance and its memory ops: fill, strided copy with dtype conversion, random.
#include <cmath>

#include "engine/core/philox.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace tessera {

Backend& cpu_backend() {
  static CpuBackend instance;
  return instance;
}

void CpuBackend::fill(Tensor& out, double value) {
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = from_double<T>(value);
    T* base = static_cast<T*>(out.storage()->data) + out.offset();
    for_each_row<1>(out.shape(), {&out.strides()}, [&](auto off, auto st, int64_t n) {
      for (int64_t i = 0; i < n; ++i) base[off[0] + i * st[0]] = v;
    });
  });
}

void CpuBackend::copy(const Tensor& src, Tensor& out) {
  visit_dtype(src.dtype(), [&](auto stag) {
    using S = decltype(stag);
    visit_dtype(out.dtype(), [&](auto dtag) {
      using D = decltype(dtag);
      const S* s = static_cast<const S*>(src.storage()->data) + src.offset();
      D* d = static_cast<D*>(out.storage()->data) + out.offset();
      for_each_row<2>(out.shape(), {&src.strides(), &out.strides()}, [&](auto off, auto st, int64_t n) {
        if constexpr (std::is_same_v<S, D>) {
          if (st[0] == 1 && st[1] == 1) { std::memcpy(d + off[1], s + off[0], size_t(n) * sizeof(S)); return; }
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = s[off[0] + i * st[0]];
        } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, double>) {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = s[off[0] + i * st[0]];
        } else {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = from_double<D>(to_double(s[off[0] + i * st[0]]));
        }
      });
    });
  });
}

void CpuBackend::random(RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset) {
  TS_CHECK(out.is_contiguous(), "random: output must be contiguous");
  visit_float(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    T* p = out.data<T>();
    parallel_for(out.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        uint64_t c = offset + uint64_t(i);
        double v = 0;
        switch (kind) {
          case RandomKind::Uniform: v = a + (b - a) * philox::uniform(seed, c); break;
          case RandomKind::Normal: v = a + b * philox::normal(seed, c); break;
          case RandomKind::TruncatedNormal: v = philox::truncated_normal(seed, c, a, b); break;
          case RandomKind::Bernoulli: v = philox::uniform(seed, c) < a ? 1.0 : 0.0; break;
        }
        p[i] = T(v);
      }
    });
  });
}

}  // namespace tessera
