// Elementwise ops on the GPU: fill, copy (any dtype to any dtype, any strides), random (Philox, the CPU's
// exact streams), unary and binary.
//
// Kernel shapes. Every op has a contiguous kernel that moves 16 bytes per load/store (when all pointers
// are 16-byte aligned, as the caching allocator's blocks are) and a general kernel that maps each output
// element's linear index to every operand's offset through a MultiIndexer (kernels/cuda/indexing.h: one
// division per dim, shared by all operands). Both are grid-stride loops. The general kernel's divisions run in 32 bits whenever the element count allows.
// Same-dtype copies whose source walks memory in a different order than the destination (transposes,
// permutes) go through a 32×32 shared-memory tile, so both the reads and the writes are coalesced.
#include <type_traits>

#include "engine/core/philox.h"
#include "kernels/elementwise_math.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/indexing.h"

namespace tessera {
namespace cuda {
namespace {

// ---------------------------------------------------------------- small helpers
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

template <typename T> constexpr bool is_half_v = std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>;
template <typename T> constexpr bool is_single_like_v = std::is_same_v<T, float> || is_half_v<T>;
template <typename T> constexpr bool is_integral_v = std::is_integral_v<T>;  // includes bool

// Converts between any two of the eight dtypes with the CPU's semantics (engine/core/dtype.h: through double,
// from_double<D>(to_double<S>(v))), taking exact shortcuts where they give the same bits: float and 16-bit
// floats convert through float (float → double → float is the identity), integers convert directly.
template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<D, bool>) {
    if constexpr (is_half_v<S>) return load(v) != 0.0f;
    else return v != S(0);
  } else if constexpr (is_integral_v<D> && is_integral_v<S>) {
    return static_cast<D>(v);
  } else if constexpr (is_single_like_v<D> && is_single_like_v<S>) {
    return store<D>(load(v));
  } else {
    double d;
    if constexpr (is_half_v<S>) d = double(load(v));
    else d = double(v);
    if constexpr (is_half_v<D>) return store<D>(float(d));
    else return static_cast<D>(d);
  }
}

// The unsigned type of a size, for bit-copies where only the element size matters.
template <size_t Bytes> struct Bits;
template <> struct Bits<1> { using type = uint8_t; };
template <> struct Bits<2> { using type = uint16_t; };
template <> struct Bits<4> { using type = uint32_t; };
template <> struct Bits<8> { using type = uint64_t; };

// Runs launch(I{}) with I the division type for n linear indices (see StridedIndexer::offset).
template <typename F> void with_index_type(int64_t n, F&& launch) {
  if (fits_u32(n)) launch(uint32_t{});
  else launch(uint64_t{});
}

// ---------------------------------------------------------------- fill
template <typename T, typename I>
__global__ void fill_kernel(T* out, StridedIndexer ix, int64_t n, T value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[ix.offset(I(i))] = value;
}

// ---------------------------------------------------------------- copy
template <typename S, typename D, int N>
__global__ void copy_contig_kernel(const S* src, D* dst, int64_t n) {
  int64_t nvec = n / N;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) {
    Vec<S, N> a = reinterpret_cast<const Vec<S, N>*>(src)[v];
    Vec<D, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = convert<D>(a.v[k]);
    reinterpret_cast<Vec<D, N>*>(dst)[v] = r;
  }
  for (int64_t i = nvec * N + global_thread(); i < n; i += grid_threads()) dst[i] = convert<D>(src[i]);
}

template <typename S, typename D, typename I>
__global__ void copy_strided_kernel(const S* src, D* dst, MultiIndexer<2> ix, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[2];
    ix.offsets(I(i), off);
    dst[off[1]] = convert<D>(src[off[0]]);
  }
}

// dst[b][ib][ia] = src[b][ia][ib] in terms of strides: along dim a the destination has stride 1, along dim b
// the source has stride 1; the remaining dims are a batch walked through two indexers. Each block stages a
// 32×32 tile in shared memory (padded to 33 columns so the transposed reads hit distinct banks).
constexpr int kTile = 32, kTileRows = 8;

template <typename T>
__global__ void transpose_tile_kernel(const T* src, T* dst, int64_t na, int64_t nb, int64_t src_stride_a,
                                      int64_t dst_stride_b, StridedIndexer batch_src,
                                      StridedIndexer batch_dst, int64_t nbatch) {
  __shared__ T tile[kTile][kTile + 1];
  const int64_t a0 = int64_t(blockIdx.x) * kTile, b0 = int64_t(blockIdx.y) * kTile;
  for (int64_t z = blockIdx.z; z < nbatch; z += gridDim.z) {
    const T* s = src + batch_src.offset(uint64_t(z));
    T* d = dst + batch_dst.offset(uint64_t(z));
    for (int k = threadIdx.y; k < kTile; k += kTileRows) {
      int64_t ia = a0 + k, ib = b0 + threadIdx.x;  // consecutive threads: consecutive source addresses
      if (ia < na && ib < nb) tile[k][threadIdx.x] = s[ia * src_stride_a + ib];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < kTile; k += kTileRows) {
      int64_t ib = b0 + k, ia = a0 + threadIdx.x;  // consecutive threads: consecutive destination addresses
      if (ia < na && ib < nb) d[ib * dst_stride_b + ia] = tile[threadIdx.x][k];
    }
    __syncthreads();
  }
}

// Tries the tiled transpose for a same-size copy; false when the layout is not a (batched) transpose.
template <typename T>
bool try_transpose_copy(const T* src, T* dst, const CoalescedLayout& c) {
  const Shape& size = c.sizes;
  const Shape &ss = c.strides[0], &ds = c.strides[1];
  const int64_t nd = int64_t(size.size());
  if (nd < 2) return false;
  int64_t a = -1, b = -1;
  for (int64_t d = 0; d < nd; ++d) {
    if (ds[size_t(d)] == 1 && a < 0) a = d;
    if (ss[size_t(d)] == 1 && b < 0) b = d;
  }
  // Worth it only when both tile edges are reasonably filled; otherwise the gather kernel is as good.
  if (a < 0 || b < 0 || a == b || size[size_t(a)] < 8 || size[size_t(b)] < 8) return false;
  const int64_t na = size[size_t(a)], nb = size[size_t(b)];
  const int64_t tiles_a = (na + kTile - 1) / kTile, tiles_b = (nb + kTile - 1) / kTile;
  if (tiles_a > int64_t(INT32_MAX) || tiles_b > 65535) return false;
  Shape bsize, bss, bds;
  for (int64_t d = 0; d < nd; ++d) {
    if (d == a || d == b) continue;
    bsize.push_back(size[size_t(d)]);
    bss.push_back(ss[size_t(d)]);
    bds.push_back(ds[size_t(d)]);
  }
  int64_t nbatch = shape_numel(bsize);
  dim3 grid(unsigned(tiles_a), unsigned(tiles_b), unsigned(std::min<int64_t>(nbatch, 65535)));
  transpose_tile_kernel<T><<<grid, dim3(kTile, kTileRows), 0, stream()>>>(
      src, dst, na, nb, ss[size_t(a)], ds[size_t(b)], make_indexer(bsize, bss), make_indexer(bsize, bds), nbatch);
  TS_CUDA_CHECK_LAUNCH();
  return true;
}

template <typename S, typename D>
void launch_copy(const Tensor& src, Tensor& out) {
  const int64_t n = out.numel();
  const S* s = static_cast<const S*>(src.raw_data());
  D* d = static_cast<D*>(out.raw_data());
  CoalescedLayout c = coalesce(out.shape(), {src.strides(), out.strides()});
  bool contig = c.sizes.size() <= 1 && (c.sizes.empty() || (c.strides[0][0] == 1 && c.strides[1][0] == 1));
  if (contig && std::is_same_v<S, D>) {
    TS_CUDA_CHECK(cudaMemcpyAsync(d, s, size_t(n) * sizeof(S), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  constexpr int N = vec_width<std::conditional_t<(sizeof(S) > sizeof(D)), S, D>>();
  if (contig && aligned16(s) && aligned16(d)) {
    copy_contig_kernel<S, D, N><<<grid_for(n / N + 1), kThreads, 0, stream()>>>(s, d, n);
    TS_CUDA_CHECK_LAUNCH();
    return;
  }
  if constexpr (std::is_same_v<S, D>) {
    using B = typename Bits<sizeof(S)>::type;
    if (try_transpose_copy<B>(reinterpret_cast<const B*>(s), reinterpret_cast<B*>(d), c)) return;
  }
  MultiIndexer<2> ix = make_multi_indexer<2>(c);
  with_index_type(n, [&](auto itag) {
    using I = decltype(itag);
    copy_strided_kernel<S, D, I><<<grid_for(n), kThreads, 0, stream()>>>(s, d, ix, n);
    TS_CUDA_CHECK_LAUNCH();
  });
}

// ---------------------------------------------------------------- random
// Element i of the draw uses Philox counter offset + i (i = row-major position in out's shape), and the
// double-precision value is formed exactly as the CPU backend forms it, then rounded to out's dtype. The
// __dadd_rn/__dmul_rn intrinsics stop nvcc from contracting a + r·u into one FMA, which would round once
// where the C++ expression rounds twice.
template <typename T, RandomKind K, typename I>
__global__ void random_kernel(T* out, StridedIndexer ix, int64_t n, double a, double b, uint64_t seed,
                              uint64_t offset) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const uint64_t counter = offset + uint64_t(i);
    double v;
    if constexpr (K == RandomKind::Uniform) {
      v = __dadd_rn(a, __dmul_rn(__dsub_rn(b, a), philox::uniform(seed, counter)));
    } else if constexpr (K == RandomKind::Normal) {
      v = __dadd_rn(a, __dmul_rn(b, philox::normal(seed, counter)));
    } else if constexpr (K == RandomKind::TruncatedNormal) {
      v = philox::truncated_normal(seed, counter, a, b);
    } else {
      v = philox::uniform(seed, counter) < a ? 1.0 : 0.0;
    }
    out[ix.offset(I(i))] = from_double<T>(v);
  }
}

// ---------------------------------------------------------------- unary / binary math
// The formulas are kernels/elementwise_math.h's, shared with the CPU reference; the op is a template
// argument, so each kernel's switch folds to the one formula at compile time.
template <UnaryOp OP, typename C>
__device__ __forceinline__ C unary_fn(C x, C alpha, C beta) { return elementwise::unary<C>(OP, x, alpha, beta); }
template <BinaryOp OP, typename C>
__device__ __forceinline__ C binary_fn(C a, C b) { return elementwise::binary<C>(OP, a, b); }

template <typename T, UnaryOp OP, int N>
__global__ void unary_contig_kernel(const T* x, T* y, int64_t n, acc_t<T> alpha, acc_t<T> beta) {
  int64_t nvec = n / N;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) {
    Vec<T, N> a = reinterpret_cast<const Vec<T, N>*>(x)[v], r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = store<T>(unary_fn<OP>(load(a.v[k]), alpha, beta));
    reinterpret_cast<Vec<T, N>*>(y)[v] = r;
  }
  for (int64_t i = nvec * N + global_thread(); i < n; i += grid_threads())
    y[i] = store<T>(unary_fn<OP>(load(x[i]), alpha, beta));
}

template <typename T, UnaryOp OP, typename I>
__global__ void unary_strided_kernel(const T* x, T* y, MultiIndexer<2> ix, int64_t n, acc_t<T> alpha,
                                     acc_t<T> beta) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[2];
    ix.offsets(I(i), off);
    y[off[1]] = store<T>(unary_fn<OP>(load(x[off[0]]), alpha, beta));
  }
}

template <typename T, BinaryOp OP, int N>
__global__ void binary_contig_kernel(const T* a, const T* b, T* y, int64_t n) {
  int64_t nvec = n / N;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) {
    Vec<T, N> va = reinterpret_cast<const Vec<T, N>*>(a)[v], vb = reinterpret_cast<const Vec<T, N>*>(b)[v], r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = store<T>(binary_fn<OP>(load(va.v[k]), load(vb.v[k])));
    reinterpret_cast<Vec<T, N>*>(y)[v] = r;
  }
  for (int64_t i = nvec * N + global_thread(); i < n; i += grid_threads())
    y[i] = store<T>(binary_fn<OP>(load(a[i]), load(b[i])));
}

template <typename T, BinaryOp OP, typename I>
__global__ void binary_strided_kernel(const T* a, const T* b, T* y, MultiIndexer<3> ix, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[3];
    ix.offsets(I(i), off);
    y[off[2]] = store<T>(binary_fn<OP>(load(a[off[0]]), load(b[off[1]])));
  }
}

// Runtime op -> compile-time template argument.
#define TS_CASE(E, V) case E::V: return f(std::integral_constant<E, E::V>{});
template <typename F> void visit_unary(UnaryOp op, F&& f) {
  switch (op) {
#define TS_UNARY_CASE(V) TS_CASE(UnaryOp, V)
    TESSERA_UNARY_OPS(TS_UNARY_CASE)
#undef TS_UNARY_CASE
  }
  fail("unary (cuda): unknown op " + std::to_string(int(op)));
}
template <typename F> void visit_binary(BinaryOp op, F&& f) {
  switch (op) {
#define TS_BINARY_CASE(V) TS_CASE(BinaryOp, V)
    TESSERA_BINARY_OPS(TS_BINARY_CASE)
#undef TS_BINARY_CASE
  }
  fail("binary (cuda): unknown op " + std::to_string(int(op)));
}
template <typename F> void visit_random(RandomKind k, F&& f) {
  switch (k) {
    TS_CASE(RandomKind, Uniform) TS_CASE(RandomKind, Normal) TS_CASE(RandomKind, TruncatedNormal)
    TS_CASE(RandomKind, Bernoulli)
  }
  fail("random (cuda): unknown kind " + std::to_string(int(k)));
}
#undef TS_CASE

bool all_identity(const CoalescedLayout& c) {
  if (c.sizes.size() > 1) return false;
  for (const Shape& s : c.strides)
    if (!s.empty() && s[0] != 1) return false;
  return true;
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::fill(Tensor& out, double value) {
  check_on_cuda(out, "fill", "out");
  const int64_t n = out.numel();
  if (n == 0) return;
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    StridedIndexer ix = make_indexers({&out})[0];
    T v = from_double<T>(value);
    with_index_type(n, [&](auto itag) {
      using I = decltype(itag);
      fill_kernel<T, I><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<T*>(out.raw_data()), ix, n, v);
      TS_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::copy(const Tensor& src, Tensor& out) {
  check_on_cuda(src, "copy", "src");
  check_on_cuda(out, "copy", "out");
  if (src.shape() != out.shape()) fail("copy (cuda): shape mismatch, " + src.str() + " into " + out.str());
  if (out.numel() == 0) return;
  visit_dtype(src.dtype(), [&](auto stag) {
    visit_dtype(out.dtype(), [&](auto dtag) { launch_copy<decltype(stag), decltype(dtag)>(src, out); });
  });
}

void CudaBackend::random(RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset) {
  check_on_cuda(out, "random", "out");
  if (kind != RandomKind::Bernoulli && !is_floating(out.dtype()))
    fail(std::string("random (cuda): uniform/normal draws need a floating dtype, got ") + out.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  StridedIndexer ix = make_indexers({&out})[0];
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_random(kind, [&](auto ktag) {
      with_index_type(n, [&](auto itag) {
        using I = decltype(itag);
        random_kernel<T, decltype(ktag)::value, I><<<grid_for(n), kThreads, 0, stream()>>>(
            static_cast<T*>(out.raw_data()), ix, n, a, b, seed, offset);
        TS_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, Tensor& out, double alpha, double beta) {
  check_on_cuda(x, "unary", "x");
  check_on_cuda(out, "unary", "out");
  check_same_dtype(x, out, "unary");
  if (x.shape() != out.shape()) fail("unary (cuda): shape mismatch, " + x.str() + " -> " + out.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  visit_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    using C = acc_t<T>;
    const T* xp = static_cast<const T*>(x.raw_data());
    T* yp = static_cast<T*>(out.raw_data());
    CoalescedLayout c = coalesce(out.shape(), {x.strides(), out.strides()});
    visit_unary(op, [&](auto otag) {
      constexpr UnaryOp OP = decltype(otag)::value;
      if (all_identity(c) && aligned16(xp) && aligned16(yp)) {
        constexpr int N = vec_width<T>();
        unary_contig_kernel<T, OP, N><<<grid_for(n / N + 1), kThreads, 0, stream()>>>(xp, yp, n, C(alpha), C(beta));
        TS_CUDA_CHECK_LAUNCH();
        return;
      }
      MultiIndexer<2> ix = make_multi_indexer<2>(c);
      with_index_type(n, [&](auto itag) {
        using I = decltype(itag);
        unary_strided_kernel<T, OP, I><<<grid_for(n), kThreads, 0, stream()>>>(xp, yp, ix, n, C(alpha), C(beta));
        TS_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  check_on_cuda(a, "binary", "a");
  check_on_cuda(b, "binary", "b");
  check_on_cuda(out, "binary", "out");
  check_same_dtype(a, out, "binary");
  check_same_dtype(b, out, "binary");
  if (a.shape() != out.shape() || b.shape() != out.shape())
    fail("binary (cuda): operands must already be expanded to the output's shape, got " + a.str() + ", " +
         b.str() + " -> " + out.str());
  const int64_t n = out.numel();
  if (n == 0) return;
  visit_floating(out.dtype(), "binary", [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(a.raw_data());
    const T* bp = static_cast<const T*>(b.raw_data());
    T* yp = static_cast<T*>(out.raw_data());
    CoalescedLayout c = coalesce(out.shape(), {a.strides(), b.strides(), out.strides()});
    visit_binary(op, [&](auto otag) {
      constexpr BinaryOp OP = decltype(otag)::value;
      if (all_identity(c) && aligned16(ap) && aligned16(bp) && aligned16(yp)) {
        constexpr int N = vec_width<T>();
        binary_contig_kernel<T, OP, N><<<grid_for(n / N + 1), kThreads, 0, stream()>>>(ap, bp, yp, n);
        TS_CUDA_CHECK_LAUNCH();
        return;
      }
      MultiIndexer<3> ix = make_multi_indexer<3>(c);
      with_index_type(n, [&](auto itag) {
        using I = decltype(itag);
        binary_strided_kernel<T, OP, I><<<grid_for(n), kThreads, 0, stream()>>>(ap, bp, yp, ix, n);
        TS_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

// ---------------------------------------------------------------- bias + GELU
namespace cuda {
namespace {

// One pass each way, where the composition writes x + b and reads it back: y = GELU(x + b[column]) and
// dx = dy·GELU'(x + b[column]), in the compute type (the sum is not rounded to 16 bits in between).
// Rows are C wide and contiguous, so element i's column is i % C.
template <typename T>
__global__ void bias_gelu_kernel(const T* x, const T* b, T* y, int64_t n, int64_t C) {
  using A = acc_t<T>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = store<T>(elementwise::gelu(A(load(x[i])) + A(load(b[i % C]))));
}

template <typename T>
__global__ void bias_gelu_backward_kernel(const T* dy, const T* x, const T* b, T* dx, int64_t n, int64_t C) {
  using A = acc_t<T>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = store<T>(A(load(dy[i])) * elementwise::gelu_grad(A(load(x[i])) + A(load(b[i % C]))));
}

// Drop path + residual: one read of x (and of the residual), one write. The sample's decision is read per
// element (a [B] array, L1-resident) rather than per block, so a block may straddle two samples.
template <typename T>
__global__ void drop_path_kernel(const T* x, const T* keep_mask, acc_t<T> scale, const T* residual, T* out,
                                 int64_t n, int64_t per_sample) {
  using A = acc_t<T>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const A s = load(keep_mask[i / per_sample]) != A(0) ? scale : A(0);
    A y = A(load(x[i])) * s;
    if (residual) y += A(load(residual[i]));
    out[i] = store<T>(y);
  }
}

void check_bias_gelu(const char* op, const Tensor& x, const Tensor& bias, const Tensor& out) {
  for (const Tensor* t : {&x, &bias, &out}) {
    check_on_cuda(*t, op, "argument");
    check_same_dtype(x, *t, op);
    check_contiguous(*t, op, "argument");
  }
  if (x.dim() != 2 || out.shape() != x.shape() || bias.dim() != 1 || bias.size(0) != x.size(1))
    fail(std::string(op) + " (cuda): expected x [rows, C], bias [C], out like x; got " + x.str() + ", " +
         bias.str() + ", " + out.str());
}

}  // namespace
}  // namespace cuda

void CudaBackend::bias_gelu(const Tensor& x, const Tensor& bias, Tensor& y) {
  cuda::check_bias_gelu("bias_gelu", x, bias, y);
  const int64_t n = x.numel(), C = x.size(1);
  if (n == 0) return;
  cuda::visit_floating(x.dtype(), "bias_gelu", [&](auto tag) {
    using T = decltype(tag);
    cuda::bias_gelu_kernel<T><<<cuda::grid_for(n), cuda::kThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(bias.raw_data()), static_cast<T*>(y.raw_data()), n, C);
    TS_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::drop_path(const Tensor& x, const Tensor& keep_mask, double scale, const Tensor& residual,
                            Tensor& out) {
  const char* op = "drop_path";
  for (const Tensor* t : std::initializer_list<const Tensor*>{&x, &keep_mask, &out}) {
    cuda::check_on_cuda(*t, op, "argument");
    cuda::check_same_dtype(x, *t, op);
    cuda::check_contiguous(*t, op, "argument");
  }
  if (residual.defined()) {
    cuda::check_on_cuda(residual, op, "residual");
    cuda::check_same_dtype(x, residual, op);
    cuda::check_contiguous(residual, op, "residual");
  }
  if (x.dim() < 1 || out.shape() != x.shape() || keep_mask.dim() != 1 || keep_mask.size(0) != x.size(0) ||
      (residual.defined() && residual.shape() != x.shape()))
    fail("drop_path (cuda): expected x [B, ...], keep_mask [B], residual and out like x; got " + x.str() + ", " +
         keep_mask.str() + ", " + (residual.defined() ? residual.str() : "no residual") + ", " + out.str());
  const int64_t n = x.numel();
  if (n == 0) return;
  cuda::visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    cuda::drop_path_kernel<T><<<cuda::grid_for(n), cuda::kThreads, 0, cuda::stream()>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(keep_mask.raw_data()), acc_t<T>(scale),
        residual.defined() ? static_cast<const T*>(residual.raw_data()) : nullptr, static_cast<T*>(out.raw_data()),
        n, n / x.size(0));
    TS_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::bias_gelu_backward(const Tensor& dy, const Tensor& x, const Tensor& bias, Tensor& dx,
                                     Tensor& dbias) {
  Tensor g = dx.defined() ? dx : Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::check_bias_gelu("bias_gelu_backward", x, bias, g);
  cuda::check_bias_gelu("bias_gelu_backward", dy, bias, g);
  const int64_t n = x.numel(), rows = x.size(0), C = x.size(1);
  if (n > 0)
    cuda::visit_floating(x.dtype(), "bias_gelu_backward", [&](auto tag) {
      using T = decltype(tag);
      cuda::bias_gelu_backward_kernel<T><<<cuda::grid_for(n), cuda::kThreads, 0, cuda::stream()>>>(
          static_cast<const T*>(dy.raw_data()), static_cast<const T*>(x.raw_data()),
          static_cast<const T*>(bias.raw_data()), static_cast<T*>(g.raw_data()), n, C);
      TS_CUDA_CHECK_LAUNCH();
    });
  if (!dbias.defined()) return;
  // The bias gradient is a column sum of dx: the transposing copy + row reduction (deterministic).
  Tensor by_column = Tensor::empty({C, rows}, x.dtype(), x.device());
  copy(g.transpose(0, 1), by_column);
  reduce(ReduceOp::Sum, by_column, dbias, nullptr);
}

}  // namespace tessera
