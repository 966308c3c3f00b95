// The CUDA kernels' strided index math (kernels/cuda/indexing.h), run on the CPU: for every element of a
// view, StridedIndexer::offset must give the element offset the Tensor's own shape and strides define,
// before and after dims are coalesced, with 32-bit and 64-bit divisions. No GPU needed.
#include <doctest/doctest.h>

#include <numeric>
#include <string>

#include "engine/core/tensor.h"
#include "kernels/cuda/indexing.h"

using namespace tessera;
using tessera::cuda::StridedIndexer;

namespace {

// The offset of the element at row-major position `linear` of shape/strides, by the definition.
int64_t reference_offset(const Shape& shape, const Shape& strides, int64_t linear) {
  int64_t off = 0;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    off += (linear % shape[size_t(d)]) * strides[size_t(d)];
    linear /= shape[size_t(d)];
  }
  return off;
}

// Checks one indexer against the definition for every element; reports the first mismatch.
void check_indexer(const StridedIndexer& ix, const Shape& shape, const Shape& strides, const std::string& what) {
  const int64_t n = shape_numel(shape);
  int64_t bad = -1, want = 0, got32 = 0, got64 = 0;
  for (int64_t i = 0; i < n && bad < 0; ++i) {
    want = reference_offset(shape, strides, i);
    got32 = ix.offset(uint32_t(i));
    got64 = ix.offset(uint64_t(i));
    if (got32 != want || got64 != want) bad = i;
  }
  INFO(what << ": shape " << shape_str(shape) << " strides " << shape_str(strides) << ", coalesced to "
            << ix.ndim << " dims; first mismatch at element " << bad << ": expected offset " << want
            << ", 32-bit " << got32 << ", 64-bit " << got64);
  CHECK(bad == -1);
}

// Checks a view both ways: its own (uncoalesced) indexer and the coalesced one; and that reading the
// storage at the computed offsets gives exactly the values the Tensor reports for the view.
void check_view(const Tensor& v, const std::string& what) {
  check_indexer(cuda::make_indexer(v.shape(), v.strides()), v.shape(), v.strides(), what);
  StridedIndexer c = cuda::make_indexers({&v})[0];
  check_indexer(c, v.shape(), v.strides(), what);
  const double* base = static_cast<const double*>(v.storage()->data) + v.offset();
  std::vector<double> expected = v.to_vector<double>();  // the Tensor's own strided read (CPU backend)
  int64_t bad = -1;
  for (int64_t i = 0; i < v.numel() && bad < 0; ++i)
    if (base[c.offset(uint64_t(i))] != expected[size_t(i)]) bad = i;
  INFO(what << ": " << v.str() << ": first element read at the wrong place: " << bad);
  CHECK(bad == -1);
}

// A CPU f64 tensor holding 0, 1, 2, ... so every element is identifiable.
Tensor iota(const Shape& shape) {
  std::vector<double> v(size_t(shape_numel(shape)));
  std::iota(v.begin(), v.end(), 0.0);
  return Tensor::from(v, shape, DType::f64);
}

}  // namespace

TEST_CASE("indexer: contiguous tensors coalesce to one dim") {
  Tensor t = iota({2, 3, 4, 5});
  StridedIndexer ix = cuda::make_indexers({&t})[0];
  CHECK(ix.ndim == 1);
  CHECK(ix.sizes[0] == 120);
  CHECK(ix.is_identity());
  check_view(t, "contiguous");
}

TEST_CASE("indexer: permuted views") {
  Tensor t = iota({2, 3, 4, 5});
  check_view(t.permute({2, 0, 3, 1}), "permute(2,0,3,1)");
  check_view(t.permute({3, 2, 1, 0}), "reverse permute");
  check_view(t.transpose(0, 1), "transpose(0,1)");  // inner dims 4·5 stay contiguous and merge
  StridedIndexer ix = cuda::make_indexers({&t})[0];
  Tensor tt = t.transpose(0, 1);
  StridedIndexer it = cuda::make_indexers({&tt})[0];
  CHECK(ix.ndim == 1);
  CHECK(it.ndim == 3);  // [3, 2, 20]: the two swapped dims cannot merge, the last two can
  CHECK_FALSE(it.is_identity());
}

TEST_CASE("indexer: slices with steps and offsets") {
  Tensor t = iota({10, 12});
  check_view(t.slice(0, 1, 9, 3), "rows 1:9:3");
  check_view(t.slice(1, 2, 11, 2), "cols 2:11:2");
  check_view(t.slice(0, 1, 9, 3).slice(1, 2, 11, 2), "both");
  check_view(t.slice(0, 3, 4), "one row (offset view)");
  check_view(t.select(1, 5), "one column");
  check_view(t.slice(1, 0, 12, 5).transpose(0, 1), "stepped then transposed");
}

TEST_CASE("indexer: expanded (stride-0) views") {
  Tensor row = iota({1, 5});
  check_view(row.expand({7, 5}), "row broadcast");
  Tensor col = iota({4, 1});
  check_view(col.expand({4, 6}), "column broadcast");
  Tensor t = iota({3, 1, 4});
  check_view(t.expand({2, 3, 5, 4}), "new leading dim + inner broadcast");
  Tensor s = iota({});
  check_view(s.expand({3, 2}), "scalar broadcast");
  Tensor e = col.expand({4, 6});
  StridedIndexer ix = cuda::make_indexers({&e})[0];
  CHECK(ix.strides[0] == 0);  // innermost dim is the broadcast one
}

TEST_CASE("indexer: 0-d tensors and size-1 dims") {
  Tensor s = iota({});
  StridedIndexer ix = cuda::make_indexers({&s})[0];
  CHECK(ix.ndim == 0);
  CHECK(ix.offset(uint32_t(0)) == 0);
  check_view(s, "0-d");
  Tensor t = iota({1, 5, 1, 3});
  check_view(t, "size-1 dims");
  check_view(t.permute({3, 2, 1, 0}), "size-1 dims permuted");
  check_view(t.unsqueeze(2), "unsqueezed");
  check_view(t.squeeze(0).transpose(0, 2), "squeezed and transposed");
  Tensor one = iota({1, 1, 1});
  CHECK(cuda::make_indexers({&one})[0].ndim == 0);
}

TEST_CASE("indexer: views composed") {
  Tensor t = iota({4, 6, 8});
  Tensor v = t.permute({2, 0, 1}).slice(0, 1, 8, 2).slice(2, 1, 5);
  check_view(v, "permute + slice + slice");
  Tensor w = iota({6, 1}).expand({6, 4}).transpose(0, 1).slice(1, 0, 6, 2);
  check_view(w, "expand + transpose + step");
}

TEST_CASE("indexer: several tensors coalesce only where all of them allow it") {
  Tensor a = iota({6, 8});
  Tensor b = iota({8}).expand({6, 8});  // bias-like broadcast of a row
  auto ix = cuda::make_indexers({&a, &b});
  REQUIRE(ix.size() == 2);
  CHECK(ix[0].ndim == 2);  // a alone would be 1-D, but b's stride-0 outer dim keeps the two apart
  check_indexer(ix[0], a.shape(), a.strides(), "a beside a broadcast");
  check_indexer(ix[1], b.shape(), b.strides(), "broadcast beside a");

  Tensor c = iota({4, 5, 6}), d = iota({4, 5, 6}).permute({0, 2, 1}).contiguous().permute({0, 2, 1});
  auto jx = cuda::make_indexers({&c, &d});
  check_indexer(jx[0], c.shape(), c.strides(), "contiguous beside permuted");
  check_indexer(jx[1], d.shape(), d.strides(), "permuted beside contiguous");
  CHECK(jx[0].ndim == 3);

  Tensor e = iota({3, 4});
  CHECK_THROWS_AS(cuda::make_indexers({&a, &e}), TensorError);  // different shapes
}

// Every tensor's offsets from one MultiIndexer, against the definition, 32- and 64-bit.
template <int N>
void check_multi(const std::vector<const Tensor*>& ts, const std::string& what) {
  cuda::MultiIndexer<N> m = cuda::make_multi_indexer<N>(ts);
  const int64_t n = ts[0]->numel();
  int64_t bad = -1, bad_t = -1, want = 0, got32 = 0, got64 = 0;
  for (int64_t i = 0; i < n && bad < 0; ++i) {
    int64_t o32[N], o64[N];
    m.offsets(uint32_t(i), o32);
    m.offsets(uint64_t(i), o64);
    for (int t = 0; t < N && bad < 0; ++t) {
      want = reference_offset(ts[size_t(t)]->shape(), ts[size_t(t)]->strides(), i);
      if (o32[t] != want || o64[t] != want) { bad = i; bad_t = t; got32 = o32[t]; got64 = o64[t]; }
    }
  }
  INFO(what << ": " << N << " tensors of shape " << shape_str(ts[0]->shape()) << ", coalesced to " << m.ndim
            << " dims; first mismatch at element " << bad << " of tensor " << bad_t << ": expected " << want
            << ", 32-bit " << got32 << ", 64-bit " << got64);
  CHECK(bad == -1);
}

TEST_CASE("multi-indexer: shared divisions give every operand's offset") {
  Tensor out = iota({6, 5, 8});
  Tensor a = iota({8, 6, 5}).permute({1, 2, 0});                 // permuted
  Tensor b = iota({5, 1}).expand({6, 5, 8});                     // broadcast over dims 0 and 2
  Tensor c = iota({12, 5, 16}).slice(0, 1, 12, 2).slice(2, 0, 16, 2);  // stepped
  check_multi<3>({&a, &b, &out}, "binary: permuted . broadcast -> contiguous");
  check_multi<3>({&c, &b, &a}, "stepped . broadcast -> permuted");
  check_multi<2>({&a, &out}, "copy: permuted -> contiguous");
  check_multi<2>({&out, &out}, "contiguous -> contiguous");
  CHECK(cuda::make_multi_indexer<2>({&out, &out}).ndim == 1);
  Tensor s = iota({});
  check_multi<2>({&s, &s}, "0-d");
  Tensor row = iota({8}).expand({6, 8}), mat = iota({6, 8});
  check_multi<3>({&mat, &row, &mat}, "bias add");
  CHECK(cuda::make_multi_indexer<3>({&mat, &row, &mat}).ndim == 2);
  CHECK_THROWS_AS(cuda::make_multi_indexer<2>({&mat, &out}), TensorError);  // shapes differ
}

TEST_CASE("indexer: more than 8 dims that cannot merge is an error, empty tensors index nothing") {
  Shape shape(9, 2);
  Tensor t = iota(shape);
  std::vector<int64_t> rev(9);
  std::iota(rev.rbegin(), rev.rend(), 0);
  Tensor r = t.permute(rev);  // every dim's stride breaks the merge with its neighbour
  CHECK_THROWS_AS(cuda::make_indexers({&r}), TensorError);
  CHECK(cuda::make_indexers({&t})[0].ndim == 1);  // 9 contiguous dims are fine: they merge to 1

  Tensor empty = Tensor::empty({3, 0, 2}, DType::f64);
  CHECK(cuda::make_indexers({&empty})[0].ndim == 0);
  CHECK(cuda::coalesce(empty.shape(), {empty.strides()}).sizes.empty());
}

TEST_CASE("indexer: 32-bit division limit") {
  CHECK(cuda::fits_u32(0));
  CHECK(cuda::fits_u32(int64_t(UINT32_MAX)));
  CHECK_FALSE(cuda::fits_u32(int64_t(UINT32_MAX) + 1));
  // Large sizes through the 64-bit path: a [3, 2^31] broadcast (no storage behind it is touched).
  StridedIndexer ix = cuda::make_indexer({3, int64_t(1) << 31}, {5, 0});
  CHECK(ix.offset(uint64_t(2) * (uint64_t(1) << 31) + 17) == 10);
}
