// Row gathers and scatters along the middle dim of [outer, n, inner] views.
#include "kernels/cpu/cpu_backend.h"
#include "engine/core/parallel.h"

namespace tessera {

namespace {
void check_index(const Tensor& index, int64_t n, const char* op) {
  const int64_t* idx = index.data<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    TS_CHECK(idx[i] >= 0 && idx[i] < n, std::string(op) + ": index " + std::to_string(idx[i]) +
                                            " out of range for a dim of size " + std::to_string(n));
}
}  // namespace

void CpuBackend::index_select(const Tensor& src, const Tensor& index, Tensor& out) {
  int64_t outer = src.size(0), n = src.size(1), inner = src.size(2), m = index.numel();
  check_index(index, n, "index_select");
  const int64_t* idx = index.data<int64_t>();
  visit_dtype(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* s = static_cast<const T*>(src.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    parallel_for(outer * m, std::max<int64_t>(1, 4096 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t a = r / m, i = r % m;
        std::copy_n(s + (a * n + idx[i]) * inner, inner, o + r * inner);
      }
    });
  });
}

void CpuBackend::index_add(const Tensor& src, const Tensor& index, Tensor& out) {
  int64_t outer = out.size(0), n = out.size(1), inner = out.size(2), m = index.numel();
  check_index(index, n, "index_add");
  const int64_t* idx = index.data<int64_t>();
  visit_float(src.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    const T* s = src.data<T>();
    T* o = out.data<T>();
    // Parallel over `outer` only: repeated indices within one slab then add serially, without races.
    parallel_for(outer, 1, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a)
        for (int64_t i = 0; i < m; ++i) {
          const T* row = s + (a * m + i) * inner;
          T* dst = o + (a * n + idx[i]) * inner;
          for (int64_t c = 0; c < inner; ++c) dst[c] += row[c];
        }
    });
  });
}

}  // namespace tessera
