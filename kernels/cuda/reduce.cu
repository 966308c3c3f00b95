// Row reductions on the GPU: reduce (Sum, Max with the index of the first maximum) over the last dim of a
// contiguous [outer, R] view, and softmax / log-softmax and their backward over the rows of [rows, C].
//
// Accumulation: 16-bit inputs and f32 accumulate in float, f64 in double. Sums are trees: each thread adds
// its strided share of a row sequentially (L = ceil(R/P) terms for P threads on the row), then the P
// partial sums are combined pairwise by warp shuffles and shared memory (log2 P levels). The standard
// bound for such a sum (Higham, "Accuracy and Stability of Numerical Algorithms", §4.2) is
//     |computed − exact| ≤ γ_{L + log2 P} · Σ|x_i|,   γ_k = k·u / (1 − k·u),
// with u = 2^-24 for float accumulation (2^-53 for double). For a 768-wide row on one warp (P = 32):
// L + log2 P = 24 + 5 = 29, so the relative error (for same-sign data) is below 29·2^-24 ≈ 1.7e-6,
// versus R·u ≈ 4.6e-5 for a plain sequential float loop. Two-pass reductions (very long rows, few of
// them) add log2(number of segments) + 1 levels.
//
// Launch shapes, chosen from R:
//   R ≤ 4096: G lanes per row (G = 1, 4, 16 or 32 by R), several rows per block, 16-byte loads where the
//             rows are aligned;
//   R > 4096: one block of 256 threads per row, or, when there are too few rows to fill the GPU, the
//             rows are split into segments reduced by separate blocks, then the segment results reduced.
// Softmax rows of ≤ 1024 are held in registers by one warp each; longer rows use a block per row with an
// online (running max, rescaled sum) first pass, then a second pass that writes.
#include <cfloat>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

// ---------------------------------------------------------------- Sum / Max accumulators
// Max keeps (value, index). b replaces a when b is larger, or equal with a smaller index (so the FIRST
// maximum wins whatever order partial results meet in), or NaN (NaN propagates, the first NaN wins).
template <typename A> struct MaxAcc {
  A v;
  int64_t i;
};
template <typename A> __device__ __forceinline__ bool takes_over(A bv, int64_t bi, A av, int64_t ai) {
  bool b_nan = bv != bv, a_nan = av != av;
  if (b_nan || a_nan) return b_nan && (!a_nan || bi < ai);
  return bv > av || (bv == av && bi < ai);
}

template <typename A, ReduceOp OP> struct Acc;
template <typename A> struct Acc<A, ReduceOp::Sum> {
  A s = A(0);
  __device__ __forceinline__ void add(A v, int64_t) { s += v; }
  __device__ __forceinline__ void merge_shfl(int lane_mask, int width) {
    s += __shfl_xor_sync(0xffffffffu, s, lane_mask, width);
  }
  __device__ __forceinline__ void merge(const Acc& o) { s += o.s; }
  __device__ __forceinline__ A value() const { return s; }
  __device__ __forceinline__ int64_t index() const { return 0; }
};
template <typename A> struct Acc<A, ReduceOp::Max> {
  A v = neg_inf<A>();
  int64_t i = INT64_MAX;  // "no element yet": loses to any real element, even −inf
  __device__ __forceinline__ void add(A x, int64_t j) {
    if (takes_over(x, j, v, i)) { v = x; i = j; }
  }
  __device__ __forceinline__ void merge_shfl(int lane_mask, int width) {
    A ov = __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
    int64_t oi = __shfl_xor_sync(0xffffffffu, i, lane_mask, width);
    add(ov, oi);
  }
  __device__ __forceinline__ void merge(const Acc& o) { add(o.v, o.i); }
  __device__ __forceinline__ A value() const { return v; }
  __device__ __forceinline__ int64_t index() const { return i; }
};

// ---------------------------------------------------------------- G lanes per row (R ≤ 4096)
// Rows per block = kThreads / G. With VEC > 1 each lane loads VEC consecutive elements at once (rows are
// then R·sizeof(T) apart with R a multiple of VEC, so every row start is 16-byte aligned).
template <typename T, ReduceOp OP, int G, int VEC>
__global__ void reduce_group_kernel(const T* x, int64_t outer, int64_t R, T* out, int64_t* out_idx) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % G;
  const int64_t rows_per_block = kThreads / G;
  // The loop runs the same number of times for every thread of the block (a warp may hold rows past the
  // end: those lanes load nothing but still take part in the shuffles, which need the whole warp).
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_block; r0 < outer; r0 += int64_t(gridDim.x) * rows_per_block) {
    const int64_t r = r0 + threadIdx.x / G;
    const bool valid = r < outer;
    const T* row = x + (valid ? r : 0) * R;
    Acc<A, OP> acc;
    if constexpr (VEC > 1) {
      const Vec<T, VEC>* vrow = reinterpret_cast<const Vec<T, VEC>*>(row);
      const int64_t nvec = valid ? R / VEC : 0;
      for (int64_t v = lane; v < nvec; v += G) {
        Vec<T, VEC> p = vrow[v];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc.add(load(p.v[k]), v * VEC + k);
      }
    } else {
      const int64_t n = valid ? R : 0;
      for (int64_t j = lane; j < n; j += G) acc.add(load(row[j]), j);
    }
#pragma unroll
    for (int m = G / 2; m > 0; m /= 2) acc.merge_shfl(m, G);
    if (valid && lane == 0) {
      out[r] = store<T>(acc.value());
      if (out_idx) out_idx[r] = acc.index();
    }
  }
}

// ---------------------------------------------------------------- one block per (row, segment)
// Block-wide combination: shuffles inside each warp, then the warp results through shared memory.
template <typename A, ReduceOp OP>
__device__ __forceinline__ Acc<A, OP> block_combine(Acc<A, OP> acc) {
  __shared__ Acc<A, OP> warp_acc[kThreads / 32];
#pragma unroll
  for (int m = 16; m > 0; m /= 2) acc.merge_shfl(m, 32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_acc[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < kThreads / 32 ? warp_acc[lane] : Acc<A, OP>();
#pragma unroll
    for (int m = 16; m > 0; m /= 2) acc.merge_shfl(m, 32);
  }
  __syncthreads();  // warp_acc may be reused by the next row
  return acc;
}

// Reduces x[r, s·seg : min(R, (s+1)·seg)] for segment s = blockIdx.x of row r (rows grid-strided over
// blockIdx.y) into out[r·nseg + s]. in_idx, when given, holds the element indices of x (second pass over
// segment results); otherwise the index is the position in the row.
template <typename In, ReduceOp OP, typename Out>
__global__ void reduce_block_kernel(const In* x, const int64_t* in_idx, int64_t outer, int64_t R, int64_t seg,
                                    Out* out, int64_t* out_idx) {
  using A = acc_t<In>;
  const int64_t nseg = gridDim.x, s = blockIdx.x;
  const int64_t begin = s * seg, end = begin + seg < R ? begin + seg : R;
  for (int64_t r = blockIdx.y; r < outer; r += gridDim.y) {
    const In* row = x + r * R;
    Acc<A, OP> acc;
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads)
      acc.add(load(row[j]), in_idx ? in_idx[r * R + j] : j);
    acc = block_combine<A, OP>(acc);
    if (threadIdx.x == 0) {
      out[r * nseg + s] = store<Out>(acc.value());
      if (out_idx) out_idx[r * nseg + s] = acc.index();
    }
  }
}

template <typename T, ReduceOp OP>
void launch_reduce(const Tensor& x, Tensor& out, Tensor* indices, int64_t outer, int64_t R) {
  using A = acc_t<T>;
  const T* xp = static_cast<const T*>(x.raw_data());
  T* op = static_cast<T*>(out.raw_data());
  int64_t* ip = indices ? indices->data<int64_t>() : nullptr;
  if (R <= 4096) {
    auto run = [&](auto gtag) {
      constexpr int G = decltype(gtag)::value;
      constexpr int V = vec_width<T>();
      unsigned grid = grid_for(outer * G);
      if (G >= 16 && R % V == 0 && (reinterpret_cast<uintptr_t>(xp) % 16) == 0)
        reduce_group_kernel<T, OP, G, V><<<grid, kThreads, 0, stream()>>>(xp, outer, R, op, ip);
      else
        reduce_group_kernel<T, OP, G, 1><<<grid, kThreads, 0, stream()>>>(xp, outer, R, op, ip);
      TS_CUDA_CHECK_LAUNCH();
    };
    if (R <= 2) run(std::integral_constant<int, 1>{});
    else if (R <= 16) run(std::integral_constant<int, 4>{});
    else if (R <= 64) run(std::integral_constant<int, 16>{});
    else run(std::integral_constant<int, 32>{});
    return;
  }
  // Rows needed to keep every SM busy (a few resident blocks each), and how many segments each row would
  // need for that: at least 8192 elements per segment, so every thread still sums ≥ 32 elements.
  const int64_t busy_rows = 4 * int64_t(sm_count());
  int64_t nseg = std::clamp<int64_t>(busy_rows / outer, 1, std::max<int64_t>(1, R / 8192));
  nseg = std::min<int64_t>(nseg, 1024);
  if (outer >= busy_rows || nseg == 1) {
    dim3 grid(1, unsigned(std::min<int64_t>(outer, 65535)));
    reduce_block_kernel<T, OP, T><<<grid, kThreads, 0, stream()>>>(xp, nullptr, outer, R, R, op, ip);
    TS_CUDA_CHECK_LAUNCH();
    return;
  }
  // Few long rows: split each row into nseg segments so that about busy_rows blocks run; then reduce the
  // [outer, nseg] partial results.
  const int64_t seg = (R + nseg - 1) / nseg;
  nseg = (R + seg - 1) / seg;
  Tensor part = Tensor::empty({outer, nseg}, dtype_of<A>::value, Device::CUDA);
  Tensor part_idx = OP == ReduceOp::Max ? Tensor::empty({outer, nseg}, DType::i64, Device::CUDA) : Tensor();
  A* pp = static_cast<A*>(part.raw_data());
  int64_t* pi = part_idx.defined() ? part_idx.data<int64_t>() : nullptr;
  reduce_block_kernel<T, OP, A><<<dim3(unsigned(nseg), unsigned(outer)), kThreads, 0, stream()>>>(
      xp, nullptr, outer, R, seg, pp, pi);
  TS_CUDA_CHECK_LAUNCH();
  reduce_block_kernel<A, OP, T><<<dim3(1, unsigned(outer)), kThreads, 0, stream()>>>(
      pp, pi, outer, nseg, nseg, op, ip);
  TS_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------- softmax
// Forward:  y = exp(x − max) / Σ exp(x − max);   log: y = x − max − log Σ exp(x − max).
// Backward: dx = y·(dy − Σ dy·y);                 log: dx = dy − exp(y)·Σ dy.
constexpr int kWarpsPerBlock = kThreads / 32;

// One warp per row, the row in registers: VPT values per lane, element j = lane + 32·k (coalesced).
template <typename T, bool LOG, int VPT>
__global__ void softmax_warp_kernel(const T* x, T* y, int64_t rows, int C) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += int64_t(gridDim.x) * kWarpsPerBlock) {
    const T* xr = x + r * C;
    A v[VPT];
    A mx = neg_inf<A>();
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      int j = lane + 32 * k;
      v[k] = j < C ? load(xr[j]) : neg_inf<A>();
      mx = fmax(mx, v[k]);
    }
    mx = warp_max(mx);
    A sum = 0;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      int j = lane + 32 * k;
      A e = j < C ? acc_exp(v[k] - mx) : A(0);
      sum += e;
      if (!LOG) v[k] = e;
    }
    sum = warp_sum(sum);
    T* yr = y + r * C;
    const A lse = acc_log(sum), inv = A(1) / sum;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      int j = lane + 32 * k;
      if (j < C) yr[j] = store<T>(LOG ? v[k] - mx - lse : v[k] * inv);
    }
  }
}

template <typename T, bool LOG, int VPT>
__global__ void softmax_backward_warp_kernel(const T* y, const T* dy, T* dx, int64_t rows, int C) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += int64_t(gridDim.x) * kWarpsPerBlock) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    A yv[VPT], gv[VPT], dot = 0;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      int j = lane + 32 * k;
      yv[k] = j < C ? load(yr[j]) : A(0);
      gv[k] = j < C ? load(dyr[j]) : A(0);
      dot += LOG ? gv[k] : gv[k] * yv[k];
    }
    dot = warp_sum(dot);
    T* dxr = dx + r * C;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      int j = lane + 32 * k;
      if (j < C) dxr[j] = store<T>(LOG ? gv[k] - acc_exp(yv[k]) * dot : yv[k] * (gv[k] - dot));
    }
  }
}

template <typename T, bool LOG>
__global__ void softmax_block_kernel(const T* x, T* y, int64_t rows, int64_t C) {
  using A = acc_t<T>;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * C;
    MaxSum<A> p{neg_inf<A>(), A(0)};
    for (int64_t j = threadIdx.x; j < C; j += kThreads) online_add(p, load(xr[j]));
    p = block_online_merge<kThreads>(p);
    T* yr = y + r * C;
    const A lse = acc_log(p.s), inv = A(1) / p.s;
    for (int64_t j = threadIdx.x; j < C; j += kThreads) {
      A v = load(xr[j]);
      yr[j] = store<T>(LOG ? v - p.m - lse : acc_exp(v - p.m) * inv);
    }
  }
}

template <typename T, bool LOG>
__global__ void softmax_backward_block_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t C) {
  using A = acc_t<T>;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *yr = y + r * C, *dyr = dy + r * C;
    A dot = 0;
    for (int64_t j = threadIdx.x; j < C; j += kThreads) dot += LOG ? load(dyr[j]) : load(dyr[j]) * load(yr[j]);
    dot = block_sum<kThreads>(dot);
    T* dxr = dx + r * C;
    for (int64_t j = threadIdx.x; j < C; j += kThreads) {
      A yv = load(yr[j]), g = load(dyr[j]);
      dxr[j] = store<T>(LOG ? g - acc_exp(yv) * dot : yv * (g - dot));
    }
  }
}

// Calls f(integral_constant<int, VPT>) with the smallest power of two VPT such that 32·VPT ≥ C (C ≤ 1024).
template <typename F> void visit_vpt(int64_t C, F&& f) {
  if (C <= 32) f(std::integral_constant<int, 1>{});
  else if (C <= 64) f(std::integral_constant<int, 2>{});
  else if (C <= 128) f(std::integral_constant<int, 4>{});
  else if (C <= 256) f(std::integral_constant<int, 8>{});
  else if (C <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

template <typename F> void visit_bool(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// rows·C of a [.., C] tensor, checked contiguous.
void rows_and_cols(const Tensor& t, const char* op, const char* arg, int64_t& rows, int64_t& C) {
  check_contiguous(t, op, arg);
  C = t.dim() == 0 ? 1 : t.size(-1);
  rows = C == 0 ? 0 : t.numel() / C;
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* indices) {
  check_on_cuda(x, "reduce", "x");
  check_on_cuda(out, "reduce", "out");
  check_same_dtype(x, out, "reduce");
  check_contiguous(x, "reduce", "x");
  check_contiguous(out, "reduce", "out");
  const int64_t outer = out.numel();
  if (outer == 0) return;
  if (x.numel() % outer != 0)
    fail("reduce (cuda): x " + x.str() + " is not [outer, R] for out " + out.str());
  const int64_t R = x.numel() / outer;
  if (indices && indices->defined()) {
    check_on_cuda(*indices, "reduce", "indices");
    if (indices->dtype() != DType::i64 || indices->numel() != outer || !indices->is_contiguous())
      fail("reduce (cuda): indices must be contiguous i64 with " + std::to_string(outer) + " elements, got " +
           indices->str());
  } else {
    indices = nullptr;
  }
  if (op == ReduceOp::Sum && R == 0) {
    fill(out, 0.0);
    return;
  }
  if (op == ReduceOp::Max && R == 0) fail("reduce (cuda): max over an empty dim of " + x.str());
  visit_floating(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    if (op == ReduceOp::Sum) launch_reduce<T, ReduceOp::Sum>(x, out, nullptr, outer, R);
    else launch_reduce<T, ReduceOp::Max>(x, out, indices, outer, R);
  });
}

void CudaBackend::softmax(const Tensor& x, Tensor& y, bool log) {
  check_on_cuda(x, "softmax", "x");
  check_on_cuda(y, "softmax", "y");
  check_same_dtype(x, y, "softmax");
  if (x.shape() != y.shape()) fail("softmax (cuda): shape mismatch, " + x.str() + " -> " + y.str());
  int64_t rows, C;
  rows_and_cols(x, "softmax", "x", rows, C);
  check_contiguous(y, "softmax", "y");
  if (rows == 0) return;
  visit_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.raw_data());
    T* yp = static_cast<T*>(y.raw_data());
    visit_bool(log, [&](auto ltag) {
      constexpr bool LOG = decltype(ltag)::value;
      if (C <= 1024) {
        visit_vpt(C, [&](auto vtag) {
          softmax_warp_kernel<T, LOG, decltype(vtag)::value>
              <<<grid_for(rows * 32), kThreads, 0, stream()>>>(xp, yp, rows, int(C));
          TS_CUDA_CHECK_LAUNCH();
        });
      } else {
        softmax_block_kernel<T, LOG><<<unsigned(std::min<int64_t>(rows, 65535)), kThreads, 0, stream()>>>(xp, yp, rows, C);
        TS_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  check_on_cuda(y, "softmax_backward", "y");
  check_on_cuda(dy, "softmax_backward", "dy");
  check_on_cuda(dx, "softmax_backward", "dx");
  check_same_dtype(y, dy, "softmax_backward");
  check_same_dtype(y, dx, "softmax_backward");
  if (y.shape() != dy.shape() || y.shape() != dx.shape())
    fail("softmax_backward (cuda): shape mismatch, y " + y.str() + ", dy " + dy.str() + ", dx " + dx.str());
  int64_t rows, C;
  rows_and_cols(y, "softmax_backward", "y", rows, C);
  check_contiguous(dy, "softmax_backward", "dy");
  check_contiguous(dx, "softmax_backward", "dx");
  if (rows == 0) return;
  visit_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* yp = static_cast<const T*>(y.raw_data());
    const T* gp = static_cast<const T*>(dy.raw_data());
    T* dp = static_cast<T*>(dx.raw_data());
    visit_bool(log, [&](auto ltag) {
      constexpr bool LOG = decltype(ltag)::value;
      if (C <= 1024) {
        visit_vpt(C, [&](auto vtag) {
          softmax_backward_warp_kernel<T, LOG, decltype(vtag)::value>
              <<<grid_for(rows * 32), kThreads, 0, stream()>>>(yp, gp, dp, rows, int(C));
          TS_CUDA_CHECK_LAUNCH();
        });
      } else {
        softmax_backward_block_kernel<T, LOG>
            <<<unsigned(std::min<int64_t>(rows, 65535)), kThreads, 0, stream()>>>(yp, gp, dp, rows, C);
        TS_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

}  // namespace tessera
