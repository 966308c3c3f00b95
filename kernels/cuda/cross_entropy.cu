// Cross-entropy loss over logits [N, C] and its fused backward, the definition of kernels/cpu/nn.cpp
// (torch.nn.functional.cross_entropy, reduction "mean"): with logp = log_softmax(logits) over the
// non-ignored rows i,
//   W = Σ_i w[y_i],  a = Σ_i −w[y_i]·logp[i, y_i],  b = Σ_i Σ_c −w[c]·logp[i, c]   (w ≡ 1 if none)
//   loss = (1 − ε)·a / W + (ε / C)·b / W
//   dz[i, j] = dloss/W · ((1 − ε)·w[y_i]·(p_ij − δ_{j,y_i}) + (ε/C)·(Σ_c w_c · p_ij − w_j)).
// f32/bf16/f16 compute in fp32, f64 in f64.
//
// No host synchronisation anywhere: W is summed on the device, so a training step that ends in this loss
// can be captured in a CUDA graph. The price: a target outside [0, C) (other than ignore_index), which
// the CPU reference reports with an exception, cannot be reported without a sync; its row contributes NaN
// instead, so the loss (and that row's gradient) is NaN — loud, never silently wrong.
//
// Forward: one warp per row (rows are short: C = 4 classes here, 1000 for ImageNet heads) with an online
// (max, Σ exp) pass and, with smoothing, a second pass for Σ_c w_c·(lse − x_c) (cached: the row was just
// read); lane 0 writes the row's (nll, smooth, w[y]) into a [3, N] scratch buffer. One block then sums the
// three columns in a fixed order (deterministic: no atomics) and writes the loss.
// Backward: one block sums W and Σ_c w_c into a 2-element scratch, then one warp per row recomputes
// max/lse and writes the gradient: logits read twice (the second from cache), dlogits written once.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/layer_norm_math.h"

namespace tessera {
namespace cuda {
namespace {

constexpr int kWarps = 8;  // rows per 256-thread block

template <typename A> __device__ __forceinline__ A a_nan() { return A(NAN); }

// Online log-sum-exp of one row across a warp: each lane keeps (max, Σ exp(x − max)) of its strided
// elements, the pairs merge by shuffles with rescaling. Returns lse on every lane.
template <typename T> __device__ __forceinline__ acc_t<T> warp_lse(const T* xr, int64_t C, int lane) {
  using A = acc_t<T>;
  MaxSum<A> p{neg_inf<A>(), A(0)};
  for (int64_t c = lane; c < C; c += 32) online_add(p, load(xr[c]));
  p = warp_online_merge(p);
  return p.m + acc_log(p.s);
}

// Sum of n values v(i) over one block of 256 threads in a fixed order (strided per thread, then block_sum).
template <typename A, typename F> __device__ __forceinline__ A block_sum_of(int64_t n, F&& v) {
  A s = 0;
  for (int64_t i = threadIdx.x; i < n; i += 32 * kWarps) s += v(i);
  return block_sum<32 * kWarps>(s);
}

template <typename T> __device__ __forceinline__ acc_t<T> weight_of(const T* w, int64_t c) {
  return w ? load(w[c]) : acc_t<T>(1);
}

// rowv: [3, N] = (nll_i, smooth_i, w[y_i]), zeros for ignored rows.
template <typename T>
__global__ void __launch_bounds__(256) ce_rows(const T* x, const int64_t* target, const T* w, int64_t N, int64_t C,
                                               int64_t ignore, bool smoothing, acc_t<T>* rowv) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (i >= N) return;  // whole warp
  const int64_t t = target[i];
  A nll = 0, smooth = 0, wy = 0;
  if (t != ignore) {
    if (t < 0 || t >= C) {
      nll = smooth = wy = a_nan<A>();  // see the file comment: NaN instead of a sync to report it
    } else {
      const T* xr = x + i * C;
      const A lse = warp_lse(xr, C, lane);
      wy = weight_of(w, t);
      nll = -wy * (load(xr[t]) - lse);
      if (smoothing) {
        A sm = 0;
        for (int64_t c = lane; c < C; c += 32) sm += weight_of(w, c) * (lse - load(xr[c]));
        smooth = warp_sum(sm);
      }
    }
  }
  if (lane == 0) { rowv[i] = nll; rowv[N + i] = smooth; rowv[2 * N + i] = wy; }
}

template <typename T>
__global__ void __launch_bounds__(256) ce_finish(const acc_t<T>* rowv, int64_t N, int64_t C, acc_t<T> eps, T* loss) {
  using A = acc_t<T>;
  const A a = block_sum_of<A>(N, [&](int64_t i) { return rowv[i]; });
  const A b = block_sum_of<A>(N, [&](int64_t i) { return rowv[N + i]; });
  const A W = block_sum_of<A>(N, [&](int64_t i) { return rowv[2 * N + i]; });
  if (threadIdx.x == 0) loss[0] = store<T>(ln::cross_entropy_value<A>(a, b, W, eps, C));
}

// sums = (W, Σ_c w_c). An out-of-range target makes W NaN, hence the whole gradient NaN.
template <typename T>
__global__ void __launch_bounds__(256) ce_denominators(const int64_t* target, const T* w, int64_t N, int64_t C,
                                                       int64_t ignore, acc_t<T>* sums) {
  using A = acc_t<T>;
  const A W = block_sum_of<A>(N, [&](int64_t i) {
    const int64_t t = target[i];
    return t == ignore ? A(0) : (t < 0 || t >= C) ? a_nan<A>() : weight_of(w, t);
  });
  const A sw = w ? block_sum_of<A>(C, [&](int64_t c) { return load(w[c]); }) : A(C);
  if (threadIdx.x == 0) { sums[0] = W; sums[1] = sw; }
}

template <typename T>
__global__ void __launch_bounds__(256) ce_backward_rows(const T* x, const int64_t* target, const T* w,
                                                        const acc_t<T>* sums, int64_t N, int64_t C, int64_t ignore,
                                                        acc_t<T> eps, const acc_t<T>* dloss, T* dx) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (i >= N) return;
  const int64_t t = target[i];
  T* dr = dx + i * C;
  if (t == ignore) {
    for (int64_t c = lane; c < C; c += 32) dr[c] = store<T>(A(0));
    return;
  }
  const T* xr = x + i * C;
  const A coef = *dloss / sums[0], sw = sums[1];  // dloss read on the device: no host round trip
  const bool bad = t < 0 || t >= C;
  const A lse = warp_lse(xr, C, lane), wy = bad ? a_nan<A>() : weight_of(w, t);
  for (int64_t c = lane; c < C; c += 32) {
    const A p = acc_exp(load(xr[c]) - lse);
    A g = (A(1) - eps) * wy * (p - (c == t ? A(1) : A(0)));
    if (eps > A(0)) g += eps / A(C) * (sw * p - weight_of(w, c));
    dr[c] = store<T>(coef * g);
  }
}

void check_args(const char* op, const Tensor& logits, const Tensor& target, const Tensor& weight) {
  check_on_cuda(logits, op, "logits");
  check_on_cuda(target, op, "target");
  check_contiguous(logits, op, "logits");
  check_contiguous(target, op, "target");
  if (logits.dim() != 2) fail(std::string(op) + " (cuda): logits must be [N, C], got " + logits.str());
  if (target.dtype() != DType::i64 || target.numel() != logits.size(0))
    fail(std::string(op) + " (cuda): target must be i64 [" + std::to_string(logits.size(0)) + "], got " + target.str());
  if (weight.defined()) {
    check_on_cuda(weight, op, "weight");
    check_same_dtype(logits, weight, op);
    check_contiguous(weight, op, "weight");
    if (weight.numel() != logits.size(1))
      fail(std::string(op) + " (cuda): weight " + weight.str() + " is not [" + std::to_string(logits.size(1)) + "]");
  }
}

template <typename T> const T* ptr_or_null(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr; }
unsigned row_grid(int64_t N) { return unsigned(std::max<int64_t>(1, (N + kWarps - 1) / kWarps)); }

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight,
                                double label_smoothing, int64_t ignore_index, Tensor& loss) {
  const char* op = "cross_entropy";
  check_args(op, logits, target, weight);
  check_on_cuda(loss, op, "loss");
  check_same_dtype(logits, loss, op);
  if (loss.numel() != 1) fail("cross_entropy (cuda): loss must have one element, got " + loss.str());
  const int64_t N = logits.size(0), C = logits.size(1);
  if (C < 1) fail("cross_entropy (cuda): logits " + logits.str() + " have no classes");
  visit_floating(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T *xp = static_cast<const T*>(logits.raw_data()), *wp = ptr_or_null<T>(weight);
    const int64_t* tp = target.data<int64_t>();
    // N = 0: W = 0 and the loss is 0/0 = NaN, as torch and the CPU reference; ce_finish handles it.
    Tensor rowv = Tensor::empty({3, std::max<int64_t>(N, 1)}, dtype_of<A>::value, Device::CUDA);
    A* rp = static_cast<A*>(rowv.raw_data());
    if (N > 0) {
      ce_rows<T><<<row_grid(N), 32 * kWarps, 0, stream()>>>(xp, tp, wp, N, C, ignore_index, label_smoothing > 0, rp);
      TS_CUDA_CHECK_LAUNCH();
    }
    ce_finish<T><<<1, 32 * kWarps, 0, stream()>>>(rp, N, C, A(label_smoothing), static_cast<T*>(loss.raw_data()));
    TS_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                                         double label_smoothing, int64_t ignore_index, const Tensor& dloss,
                                         Tensor& dlogits) {
  const char* op = "cross_entropy_backward";
  check_args(op, logits, target, weight);
  check_on_cuda(dlogits, op, "dlogits");
  check_same_dtype(logits, dlogits, op);
  check_contiguous(dlogits, op, "dlogits");
  if (dlogits.shape() != logits.shape())
    fail("cross_entropy_backward (cuda): dlogits " + dlogits.str() + " does not match logits " + logits.str());
  const int64_t N = logits.size(0), C = logits.size(1);
  check_on_cuda(dloss, op, "dloss");
  if (dloss.numel() != 1 || dloss.dtype() != stat_dtype(logits.dtype()))
    fail("cross_entropy_backward (cuda): dloss must be one f32 element (f64 for f64 logits), got " + dloss.str());
  if (N == 0 || C == 0) return;
  visit_floating(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const A* dlp = static_cast<const A*>(dloss.raw_data());  // one element: contiguous by definition
    const T *xp = static_cast<const T*>(logits.raw_data()), *wp = ptr_or_null<T>(weight);
    const int64_t* tp = target.data<int64_t>();
    Tensor sums = Tensor::empty({2}, dtype_of<A>::value, Device::CUDA);
    A* sp = static_cast<A*>(sums.raw_data());
    ce_denominators<T><<<1, 32 * kWarps, 0, stream()>>>(tp, wp, N, C, ignore_index, sp);
    TS_CUDA_CHECK_LAUNCH();
    ce_backward_rows<T><<<row_grid(N), 32 * kWarps, 0, stream()>>>(xp, tp, wp, sp, N, C, ignore_index,
                                                                    A(label_smoothing), dlp,
                                                                    static_cast<T*>(dlogits.raw_data()));
    TS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera
