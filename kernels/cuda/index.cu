// index_select / index_add on the GPU over [outer, n, inner] views (any strides).
//
// Index checking: a kernel cannot throw, so an out-of-range index is skipped by the kernel and its
// position recorded (atomicMin, so the first bad position wins) in an 8-byte flag; the host reads the flag
// back after the launch and throws naming the position and the value. That read synchronises the stream
// once per call: the price of a clear error instead of a silent out-of-bounds access.
//
// index_add accumulates with atomicAdd, so repeated indices are summed correctly but in an unspecified
// order: results may differ from run to run in the last bits (f32: by a few ulps of the sum).
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

constexpr unsigned long long kNoBadIndex = ~0ull;

// Decomposes the linear position of an element of [outer, m, inner] (row-major).
struct Pos3 {
  int64_t o, j, i;
};
template <typename I>
__device__ __forceinline__ Pos3 split3(I linear, I m, I inner) {
  I i = linear % inner, rest = linear / inner;
  return {int64_t(rest / m), int64_t(rest % m), int64_t(i)};
}

struct Strides3 {
  int64_t s0, s1, s2;
};
Strides3 strides3(const Tensor& t) { return {t.strides()[0], t.strides()[1], t.strides()[2]}; }

template <typename B, typename I>
__global__ void index_select_kernel(const B* src, Strides3 ss, int64_t n, const int64_t* index, int64_t index_stride,
                                    B* out, Strides3 os, int64_t m, int64_t inner, int64_t total,
                                    unsigned long long* bad) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    Pos3 p = split3<I>(I(t), I(m), I(inner));
    int64_t row = index[p.j * index_stride];
    if (row < 0 || row >= n) {
      atomicMin(bad, (unsigned long long)p.j);
      continue;
    }
    out[p.o * os.s0 + p.j * os.s1 + p.i * os.s2] = src[p.o * ss.s0 + row * ss.s1 + p.i * ss.s2];
  }
}

template <typename T, typename I>
__global__ void index_add_kernel(const T* src, Strides3 ss, int64_t m, int64_t inner, const int64_t* index,
                                 int64_t index_stride, T* out, Strides3 os, int64_t n, int64_t total,
                                 unsigned long long* bad) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    Pos3 p = split3<I>(I(t), I(m), I(inner));
    int64_t row = index[p.j * index_stride];
    if (row < 0 || row >= n) {
      atomicMin(bad, (unsigned long long)p.j);
      continue;
    }
    atomicAdd(out + p.o * os.s0 + row * os.s1 + p.i * os.s2, src[p.o * ss.s0 + p.j * ss.s1 + p.i * ss.s2]);
  }
}

// A device flag for the first bad index position, initialised to "none".
Tensor make_bad_flag() {
  Tensor flag = Tensor::empty({1}, DType::i64, Device::CUDA);
  TS_CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(unsigned long long), stream()));
  return flag;
}

// Reads the flag back (synchronising) and throws if a kernel saw a bad index.
void check_bad_flag(const Tensor& flag, const Tensor& index, int64_t n, const char* op) {
  unsigned long long pos = 0;
  copy_device_to_host(&pos, flag.raw_data(), sizeof pos);
  if (pos == kNoBadIndex) return;
  int64_t value = 0;
  const int64_t* where = index.data<int64_t>() + int64_t(pos) * index.strides()[0];
  copy_device_to_host(&value, where, sizeof value);
  fail(std::string(op) + " (cuda): index[" + std::to_string(pos) + "] = " + std::to_string(value) +
       " is out of range for a dim of size " + std::to_string(n));
}

void check_index(const Tensor& index, const char* op) {
  check_on_cuda(index, op, "index");
  if (index.dtype() != DType::i64 || index.dim() != 1)
    fail(std::string(op) + " (cuda): index must be a 1-d i64 tensor, got " + index.str());
}

template <typename F> void with_index_type(int64_t n, F&& launch) {
  if (n <= int64_t(UINT32_MAX)) launch(uint32_t{});
  else launch(uint64_t{});
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::index_select(const Tensor& src, const Tensor& index, Tensor& out) {
  check_on_cuda(src, "index_select", "src");
  check_on_cuda(out, "index_select", "out");
  check_index(index, "index_select");
  check_same_dtype(src, out, "index_select");
  const int64_t m = index.numel();
  if (src.dim() != 3 || out.dim() != 3 || out.size(0) != src.size(0) || out.size(1) != m ||
      out.size(2) != src.size(2))
    fail("index_select (cuda): expected src [outer, n, inner], index [m], out [outer, m, inner]; got src " +
         src.str() + ", index " + index.str() + ", out " + out.str());
  const int64_t n = src.size(1), inner = src.size(2), total = out.numel();
  if (total == 0) return;
  Tensor flag = make_bad_flag();
  visit_dtype(src.dtype(), [&](auto tag) {
    using B = std::conditional_t<sizeof(tag) == 1, uint8_t,
              std::conditional_t<sizeof(tag) == 2, uint16_t, std::conditional_t<sizeof(tag) == 4, uint32_t, uint64_t>>>;
    with_index_type(total, [&](auto itag) {
      using I = decltype(itag);
      index_select_kernel<B, I><<<grid_for(total), kThreads, 0, stream()>>>(
          static_cast<const B*>(src.raw_data()), strides3(src), n, index.data<int64_t>(), index.strides()[0],
          static_cast<B*>(out.raw_data()), strides3(out), m, inner, total,
          static_cast<unsigned long long*>(flag.raw_data()));
      TS_CUDA_CHECK_LAUNCH();
    });
  });
  check_bad_flag(flag, index, n, "index_select");
}

void CudaBackend::index_add(const Tensor& src, const Tensor& index, Tensor& out) {
  check_on_cuda(src, "index_add", "src");
  check_on_cuda(out, "index_add", "out");
  check_index(index, "index_add");
  check_same_dtype(src, out, "index_add");
  const int64_t m = index.numel();
  if (src.dim() != 3 || out.dim() != 3 || out.size(0) != src.size(0) || src.size(1) != m ||
      out.size(2) != src.size(2))
    fail("index_add (cuda): expected src [outer, m, inner], index [m], out [outer, n, inner]; got src " +
         src.str() + ", index " + index.str() + ", out " + out.str());
  const int64_t n = out.size(1), inner = src.size(2), total = src.numel();
  if (total == 0) return;
  Tensor flag = make_bad_flag();
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    with_index_type(total, [&](auto itag) {
      using I = decltype(itag);
      index_add_kernel<T, I><<<grid_for(total), kThreads, 0, stream()>>>(
          static_cast<const T*>(src.raw_data()), strides3(src), m, inner, index.data<int64_t>(),
          index.strides()[0], static_cast<T*>(out.raw_data()), strides3(out), n, total,
          static_cast<unsigned long long*>(flag.raw_data()));
      TS_CUDA_CHECK_LAUNCH();
    });
  };
  if (src.dtype() == DType::f32) launch(float{});
  else if (src.dtype() == DType::f64) launch(double{});
  else fail(std::string("index_add (cuda) supports f32 and f64, not ") + dtype_name(src.dtype()));
  check_bad_flag(flag, index, n, "index_add");
}

}  // namespace tessera
