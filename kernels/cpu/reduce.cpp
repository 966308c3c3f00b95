// Row reductions over a contiguous [outer, R] view. Sums accumulate in double: this is the reference
// the GPU's reduction trees are measured against.
#include "kernels/cpu/cpu_backend.h"
#include "engine/core/parallel.h"
#include "kernels/cpu/strided.h"

namespace tessera {

void CpuBackend::reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* indices) {
  TS_CHECK(x.is_contiguous() && out.is_contiguous(), "reduce: expects contiguous input and output");
  int64_t outer = out.numel(), R = outer ? x.numel() / outer : 0;
  visit_float(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t* pi = indices && indices->defined() ? indices->data<int64_t>() : nullptr;
    parallel_for(outer, std::max<int64_t>(1, 4096 / std::max<int64_t>(R, 1)), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const T* row = px + o * R;
        if (op == ReduceOp::Sum) {
          double acc = 0;
          for (int64_t r = 0; r < R; ++r) acc += double(row[r]);
          po[o] = T(acc);
        } else {
          TS_CHECK(R > 0, "max: cannot reduce over an empty dimension");
          int64_t best = 0;
          for (int64_t r = 1; r < R; ++r) {
            if (row[best] != row[best]) break;  // NaN is the maximum, like torch
            if (row[r] > row[best] || row[r] != row[r]) best = r;
          }
          po[o] = row[best];
          if (pi) pi[o] = best;
        }
      }
    });
  });
}

void CpuBackend::column_sums(const Tensor& x, Tensor& out) {
  TS_CHECK(x.dim() == 2 && x.is_contiguous() && out.is_contiguous() && out.numel() == x.size(1),
           "column_sums: expects a contiguous [R, C] input and C outputs, got " + x.str() + " and " + out.str());
  visit_float(x.dtype(), "column_sums", [&](auto tag) {
    using T = decltype(tag);
    const std::vector<double> sums = tessera::column_sums(x.data<T>(), x.size(0), x.size(1));
    T* po = out.data<T>();
    for (size_t c = 0; c < sums.size(); ++c) po[c] = T(sums[c]);
  });
}

}  // namespace tessera
