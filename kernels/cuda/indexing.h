// Strided indexing for CUDA kernels: turns the linear (row-major) index of an element of a tensor's
// logical shape into the element offset of that element in memory, for any strides (permuted, sliced with
// a step, expanded with stride 0). Built on the host from Tensors; the index math is __host__ __device__ so
// the CPU tests (tests/test_indexing.cpp) check exactly the code the kernels run.
//
// Kernels that walk several tensors of one shape (copy: src and out; binary: a, b and out) build their
// indexers together (make_indexers, make_multi_indexer), which drop size-1 dims and merges adjacent dims that every
// tensor lays out contiguously relative to each other. A permuted 4-D tensor typically becomes 2-D or 3-D
// and a contiguous one 1-D; MultiIndexer then shares each dim's division among all the tensors, and the
// outermost dim needs none, so most launches do one or two divisions per element.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/core/tensor.h"

#if defined(__CUDA_ARCH__)  // device compilation pass only: the host compiler does not know the pragma
#define TS_UNROLL _Pragma("unroll")
#else
#define TS_UNROLL
#endif

namespace tessera::cuda {

constexpr int kMaxDims = 8;

// sizes/strides are stored INNERMOST FIRST (dim 0 = the fastest-varying dim), so offset() peels dims off
// the linear index with one division each, starting from the inner end.
struct StridedIndexer {
  int32_t ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements; may be 0 (broadcast)

  // I is the type the divisions run in: uint32_t when the element count fits (32-bit division is several
  // times cheaper on the GPU), else uint64_t. The offset itself is always accumulated in 64 bits.
  template <typename I>
  TS_HD int64_t offset(I linear) const {
    int64_t off = 0;
    TS_UNROLL
    for (int d = 0; d < kMaxDims; ++d) {
      if (d >= ndim - 1) {  // outermost dim: what is left of an in-range index is its own index
        if (d == ndim - 1) off += int64_t(linear) * strides[d];
        break;
      }
      I size = I(sizes[d]);
      I q = linear / size;
      off += int64_t(linear - q * size) * strides[d];
      linear = q;
    }
    return off;
  }

  // True when offset(i) == i for every i: contiguous kernels may then skip the index math.
  TS_HD bool is_identity() const { return ndim == 0 || (ndim == 1 && strides[0] == 1); }
};

// N tensors of one shape walked together (copy: src and dst; binary: a, b and out). The sizes are shared,
// so each dim costs one division for all N offsets instead of one per tensor.
template <int N>
struct MultiIndexer {
  int32_t ndim = 0;
  int64_t sizes[kMaxDims] = {};       // innermost first
  int64_t strides[kMaxDims][N] = {};  // [dim][tensor]

  template <typename I>
  TS_HD void offsets(I linear, int64_t (&off)[N]) const {
    TS_UNROLL
    for (int t = 0; t < N; ++t) off[t] = 0;
    TS_UNROLL
    for (int d = 0; d < kMaxDims; ++d) {
      if (d >= ndim - 1) {
        if (d == ndim - 1) {
          TS_UNROLL
          for (int t = 0; t < N; ++t) off[t] += int64_t(linear) * strides[d][t];
        }
        break;
      }
      I size = I(sizes[d]);
      I q = linear / size;
      int64_t r = int64_t(linear - q * size);
      TS_UNROLL
      for (int t = 0; t < N; ++t) off[t] += r * strides[d][t];
      linear = q;
    }
  }
};

// ---- host-side construction ----

// A shape and the strides of several tensors over it (outermost first), with size-1 dims dropped and
// adjacent dims merged where all tensors allow it. Merging dim p (outer) with dim d (inner) is valid for a
// tensor iff stride[p] == stride[d]·size[d]: walking the merged dim then visits the same elements.
struct CoalescedLayout {
  Shape sizes;
  std::vector<Shape> strides;  // one per tensor
};

inline CoalescedLayout coalesce(const Shape& shape, const std::vector<Shape>& strides) {
  for (const Shape& s : strides)
    if (s.size() != shape.size())
      fail("indexing: " + std::to_string(s.size()) + " strides for shape " + shape_str(shape));
  CoalescedLayout out;
  out.strides.resize(strides.size());
  for (int64_t size : shape)
    if (size == 0) return out;  // no elements: nothing to index
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // its index is always 0; its stride never matters
    bool merge = !out.sizes.empty();
    for (size_t t = 0; merge && t < strides.size(); ++t)
      merge = out.strides[t].back() == strides[t][d] * shape[d];
    if (merge) {
      out.sizes.back() *= shape[d];
      for (size_t t = 0; t < strides.size(); ++t) out.strides[t].back() = strides[t][d];
    } else {
      out.sizes.push_back(shape[d]);
      for (size_t t = 0; t < strides.size(); ++t) out.strides[t].push_back(strides[t][d]);
    }
  }
  return out;
}

// An indexer for one tensor of `sizes`/`strides` (outermost first, as Tensor stores them).
inline StridedIndexer make_indexer(const Shape& sizes, const Shape& strides) {
  if (sizes.size() > size_t(kMaxDims))
    fail("CUDA kernels index at most " + std::to_string(kMaxDims) + " non-mergeable dims; got shape " +
         shape_str(sizes) + " with strides " + shape_str(strides));
  StridedIndexer ix;
  ix.ndim = int32_t(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    size_t d = sizes.size() - 1 - i;  // innermost first
    ix.sizes[i] = sizes[d];
    ix.strides[i] = strides[d];
  }
  return ix;
}

// Indexers for tensors that all have the same shape, coalesced together.
inline std::vector<StridedIndexer> make_indexers(const std::vector<const Tensor*>& tensors) {
  if (tensors.empty()) return {};
  const Shape& shape = tensors[0]->shape();
  std::vector<Shape> strides;
  for (const Tensor* t : tensors) {
    if (t->shape() != shape)
      fail("indexing: tensors of different shapes " + tensors[0]->str() + " and " + t->str());
    strides.push_back(t->strides());
  }
  CoalescedLayout c = coalesce(shape, strides);
  std::vector<StridedIndexer> out;
  for (const Shape& s : c.strides) out.push_back(make_indexer(c.sizes, s));
  return out;
}

// A MultiIndexer over the tensors of a coalesced layout (N of them).
template <int N>
MultiIndexer<N> make_multi_indexer(const CoalescedLayout& c) {
  if (c.strides.size() != size_t(N))
    fail("indexing: a layout of " + std::to_string(c.strides.size()) + " tensors for a " + std::to_string(N) +
         "-tensor indexer");
  MultiIndexer<N> m;
  for (int t = 0; t < N; ++t) {
    StridedIndexer one = make_indexer(c.sizes, c.strides[size_t(t)]);  // checks the dim limit
    m.ndim = one.ndim;
    for (int d = 0; d < one.ndim; ++d) {
      m.sizes[d] = one.sizes[d];
      m.strides[d][t] = one.strides[d];
    }
  }
  return m;
}

// A MultiIndexer over N tensors of one shape, coalesced together.
template <int N>
MultiIndexer<N> make_multi_indexer(const std::vector<const Tensor*>& tensors) {
  if (tensors.size() != size_t(N)) fail("indexing: expected " + std::to_string(N) + " tensors");
  std::vector<Shape> strides;
  for (const Tensor* t : tensors) {
    if (t->shape() != tensors[0]->shape())
      fail("indexing: tensors of different shapes " + tensors[0]->str() + " and " + t->str());
    strides.push_back(t->strides());
  }
  return make_multi_indexer<N>(coalesce(tensors[0]->shape(), strides));
}

// Whether n linear indices can run through the 32-bit division path.
inline bool fits_u32(int64_t n) { return n >= 0 && n <= int64_t(std::numeric_limits<uint32_t>::max()); }

}  // namespace tessera::cuda
