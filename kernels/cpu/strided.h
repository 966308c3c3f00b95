// Walks the elements of tensors that share one shape but not strides (views, stride-0 broadcasts):
// the last dim is the inner loop, the outer index is decomposed once per row, and rows run in parallel.
#pragma once
#include <array>
#include <cstdint>

#include "engine/core/tensor.h"
#include "engine/core/parallel.h"

namespace tessera {

// fn(offsets, inner_strides, n): process n elements of one row; offsets[t] is tensor t's element offset of
// the row's first element, inner_strides[t] its stride along the row.
template <size_t K, typename F>
void for_each_row(const Shape& shape, const std::array<const Shape*, K>& strides, F&& fn) {
  int64_t rank = int64_t(shape.size());
  int64_t inner = rank ? shape.back() : 1;
  int64_t rows = inner ? shape_numel(shape) / inner : 0;
  if (rank == 0) rows = 1;
  if (rows == 0 || inner == 0) return;
  std::array<int64_t, K> inner_strides{};
  for (size_t t = 0; t < K; ++t) inner_strides[t] = rank ? strides[t]->back() : 0;
  int64_t grain = std::max<int64_t>(1, 16384 / inner);
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::array<int64_t, K> off{};
      int64_t rem = r;
      for (int64_t d = rank - 2; d >= 0; --d) {
        int64_t i = rem % shape[size_t(d)];
        rem /= shape[size_t(d)];
        for (size_t t = 0; t < K; ++t) off[t] += i * (*strides[t])[size_t(d)];
      }
      fn(off, inner_strides, inner);
    }
  });
}

}  // namespace tessera
