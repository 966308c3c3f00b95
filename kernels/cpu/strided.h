// Walks the elements of tensors that share one shape but not strides (views, stride-0 broadcasts):
// the last dim is the inner loop, the outer index is decomposed once per row, and rows run in parallel.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/core/parallel.h"

namespace tessera {

// The same elements as (shape, strides) with dims of size 1 dropped and neighbouring dims merged wherever
// every tensor steps through them as one (stride[d] = stride[d + 1]·shape[d + 1]): a view of [32, 192, 4, 4]
// becomes [32, 192, 16], so its inner loop runs 16 elements instead of 4. An empty shape stays as it is.
template <size_t K> struct Walk {
  Shape shape;
  std::array<Shape, K> strides;
};
template <size_t K> Walk<K> coalesce(const Shape& shape, const std::array<const Shape*, K>& strides) {
  Walk<K> w;
  if (shape_numel(shape) == 0) {
    w.shape = shape;
    for (size_t t = 0; t < K; ++t) w.strides[t] = *strides[t];
    return w;
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !w.shape.empty();
    for (size_t t = 0; merge && t < K; ++t) merge = w.strides[t].back() == (*strides[t])[d] * shape[d];
    if (merge) {
      w.shape.back() *= shape[d];
      for (size_t t = 0; t < K; ++t) w.strides[t].back() = (*strides[t])[d];
    } else {
      w.shape.push_back(shape[d]);
      for (size_t t = 0; t < K; ++t) w.strides[t].push_back((*strides[t])[d]);
    }
  }
  return w;
}

// The element offsets of outer index r (every dim but `skip_a` and `skip_b`, row-major) in each tensor.
template <size_t K>
std::array<int64_t, K> outer_offsets(const Walk<K>& w, int64_t r, int64_t skip_a, int64_t skip_b) {
  std::array<int64_t, K> off{};
  for (int64_t d = int64_t(w.shape.size()) - 1; d >= 0; --d) {
    if (d == skip_a || d == skip_b) continue;
    const int64_t i = r % w.shape[size_t(d)];
    r /= w.shape[size_t(d)];
    for (size_t t = 0; t < K; ++t) off[t] += i * w.strides[t][size_t(d)];
  }
  return off;
}

// fn(offsets, inner_strides, n): process n elements of one row; offsets[t] is tensor t's element offset of
// the row's first element, inner_strides[t] its stride along the row.
template <size_t K, typename F> void for_each_row(const Walk<K>& w, F&& fn) {
  const int64_t rank = int64_t(w.shape.size());
  const int64_t inner = rank ? w.shape.back() : 1;
  const int64_t rows = rank ? (inner ? shape_numel(w.shape) / inner : 0) : 1;
  if (rows == 0 || inner == 0) return;
  std::array<int64_t, K> inner_strides{};
  for (size_t t = 0; t < K; ++t) inner_strides[t] = rank ? w.strides[t].back() : 0;
  const int64_t grain = std::max<int64_t>(1, 16384 / inner);
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(outer_offsets(w, r, rank - 1, -1), inner_strides, inner);
  });
}
template <size_t K, typename F>
void for_each_row(const Shape& full_shape, const std::array<const Shape*, K>& full_strides, F&& fn) {
  for_each_row(coalesce(full_shape, full_strides), fn);
}

// Sums over the rows of a [rows, width] computation, in double: add_row(r, acc) adds row r into acc[0, width).
// Fixed blocks of rows run in parallel and their partial rows are added in block order (each column apart,
// columns in parallel), so the result is the same on any number of threads. A block is about 16K elements
// (32 to 256 rows): a short, wide matrix (a small CvT's last stage: 544 rows of 768) still splits into many
// blocks, where 256-row blocks had left one thread with two of its three.
template <typename RowFn> std::vector<double> sum_over_rows(int64_t rows, int64_t width, const RowFn& add_row) {
  const int64_t kRows = std::clamp<int64_t>(16384 / std::max<int64_t>(width, 1), 32, 256);
  const int64_t blocks = (rows + kRows - 1) / kRows;
  std::vector<double> part(size_t(blocks * width), 0.0);
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t r = b * kRows; r < std::min(rows, (b + 1) * kRows); ++r) add_row(r, part.data() + b * width);
  });
  std::vector<double> total(size_t(width), 0.0);
  parallel_for(width, std::max<int64_t>(16, 16384 / std::max<int64_t>(blocks, 1)), [&](int64_t k0, int64_t k1) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t k = k0; k < k1; ++k) total[size_t(k)] += part[size_t(b * width + k)];
  });
  return total;
}

// The column sums of a contiguous [rows, C] matrix (bias gradients), in double.
template <typename T> std::vector<double> column_sums(const T* x, int64_t rows, int64_t C) {
  return sum_over_rows(rows, C, [&](int64_t r, double* __restrict acc) {
    for (int64_t c = 0; c < C; ++c) acc[c] += to_double(x[r * C + c]);
  });
}

}  // namespace tessera
