// Batch norm over (N, H, W) per channel of a contiguous [N, C, H, W] tensor, forward and backward
// (kernels/cpu/nn.cpp is the reference). f32/bf16/f16 compute and keep statistics in fp32, f64 in f64.
//
// Every per-channel reduction is two-level, so that a channel with M = N·H·W values (2·56·56 = 6272 in the
// tests, 64·56·56 = 200704 at training batch 64) is spread over S blocks however few channels there are
// (CvT stage 1 has only 64: one block per channel would leave half of an H100's 132 SMs idle):
//   partials:  grid (S, C); block (s, c) reduces slice s of channel c's M values (conv::slice: contiguous
//              runs of the flattened (n, p) index, so each plane row is read coalesced) into part[c·S + s];
//   finalize:  one thread per channel sums its S partials in order and applies the per-channel formula.
// S = conv::slices_for: about 4 blocks per SM in all, ≥ 2048 values per block, ≤ 64 partials per channel.
// No atomics anywhere: every result is bit-identical run to run on a given GPU.
//
// Forward (training): pass 1 Σx → mean; pass 2 Σ(x − mean)² → invstd = 1/√(var + eps), var biased (÷M),
// the same two-pass form as layer_norm.cu (no E[x²] − mean² cancellation); then y = x·scale + shift with
// scale = w·invstd, shift = b − mean·scale. Traffic 3 reads of x + 1 write of y; x is re-read from L2 when
// a layer's activations fit (≤ 50 MB), DRAM otherwise. Eval: the normalise pass alone (1 read, 1 write).
// Backward: one partial pass computes Σdy and Σdy·x̂ together, the finalize writes dweight = Σdy·x̂ and
// dbias = Σdy (when wanted) and keeps both sums in a [2, C] scratch for the dx pass:
// training dx = w·invstd·(dy − Σdy/M − x̂·Σdy·x̂/M); eval dx = w·invstd·dy.
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/conv_math.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

constexpr int kBlock = 256;


// Element e of channel c's flattened (n, p) range lives at (n·C + c)·HW + p.
struct Geom {
  int64_t N, C, HW;
  __device__ int64_t at(int64_t c, int64_t e) const { return (e / HW * C + c) * HW + e % HW; }
};

// Statistics partials: part[c·S + s] = Σ over the slice of x (center null) or of (x − center[c])².
template <typename T>
__global__ void __launch_bounds__(kBlock) stat_partials(const T* x, const acc_t<T>* center, acc_t<T>* part, Geom g,
                                                        int64_t S) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.y;
  const conv::Range r = conv::slice(blockIdx.x, S, g.N * g.HW);
  const A mu = center ? center[c] : A(0);
  A s = 0;
  for (int64_t e = r.lo + threadIdx.x; e < r.hi; e += kBlock) {
    const A v = load(x[g.at(c, e)]);
    s += center ? (v - mu) * (v - mu) : v;
  }
  s = block_sum<kBlock>(s);
  if (threadIdx.x == 0) part[c * S + blockIdx.x] = s;
}

// mean[c] = Σ/M, or (second pass) invstd[c] = 1/√(Σ/M + eps).
template <typename A>
__global__ void __launch_bounds__(kBlock) stat_finalize(const A* part, int64_t S, int64_t C, A M, A eps, A* out,
                                                        bool invstd) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  A s = 0;
  for (int64_t k = 0; k < S; ++k) s += part[c * S + k];
  out[c] = invstd ? A(1) / sqrt(s / M + eps) : s / M;
}

// y = x·scale + shift per channel (c = (i / HW) mod C).
template <typename T>
__global__ void __launch_bounds__(kBlock) normalize(const T* x, const T* w, const T* b, const acc_t<T>* mean,
                                                    const acc_t<T>* invstd, T* y, int64_t total, int64_t C,
                                                    int64_t HW) {
  using A = acc_t<T>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / HW % C;
    const A scale = (w ? load(w[c]) : A(1)) * invstd[c];
    const A shift = (b ? load(b[c]) : A(0)) - mean[c] * scale;
    y[i] = store<T>(load(x[i]) * scale + shift);
  }
}

// part_g[c·S + s] = Σ dy, part_gx[c·S + s] = Σ dy·x̂ over the slice.
template <typename T>
__global__ void __launch_bounds__(kBlock) grad_partials(const T* dy, const T* x, const acc_t<T>* mean,
                                                        const acc_t<T>* invstd, acc_t<T>* part_g,
                                                        acc_t<T>* part_gx, Geom g, int64_t S) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.y;
  const conv::Range r = conv::slice(blockIdx.x, S, g.N * g.HW);
  const A mu = mean[c], is = invstd[c];
  A sg = 0, sgx = 0;
  for (int64_t e = r.lo + threadIdx.x; e < r.hi; e += kBlock) {
    const int64_t i = g.at(c, e);
    const A gv = load(dy[i]);
    sg += gv;
    sgx += gv * (load(x[i]) - mu) * is;
  }
  sg = block_sum<kBlock>(sg);
  sgx = block_sum<kBlock>(sgx);
  if (threadIdx.x == 0) { part_g[c * S + blockIdx.x] = sg; part_gx[c * S + blockIdx.x] = sgx; }
}

// sums[c] = Σdy, sums[C + c] = Σdy·x̂ (for dx); dbias / dweight written when wanted.
template <typename T>
__global__ void __launch_bounds__(kBlock) grad_finalize(const acc_t<T>* part_g, const acc_t<T>* part_gx, int64_t S,
                                                        int64_t C, acc_t<T>* sums, T* dweight, T* dbias) {
  using A = acc_t<T>;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  A sg = 0, sgx = 0;
  for (int64_t k = 0; k < S; ++k) { sg += part_g[c * S + k]; sgx += part_gx[c * S + k]; }
  sums[c] = sg;
  sums[C + c] = sgx;
  if (dweight) dweight[c] = store<T>(sgx);
  if (dbias) dbias[c] = store<T>(sg);
}

// sums null (eval): dx = w·invstd·dy; else the training formula through the batch statistics.
template <typename T>
__global__ void __launch_bounds__(kBlock) grad_input(const T* dy, const T* x, const T* w, const acc_t<T>* mean,
                                                     const acc_t<T>* invstd, const acc_t<T>* sums, T* dx,
                                                     int64_t total, int64_t C, int64_t HW, acc_t<T> M) {
  using A = acc_t<T>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / HW % C;
    const A is = invstd[c], k = (w ? load(w[c]) : A(1)) * is;
    A v = load(dy[i]);
    if (sums) v -= sums[c] / M + (load(x[i]) - mean[c]) * is * (sums[C + c] / M);
    dx[i] = store<T>(k * v);
  }
}

template <typename T> T* ptr(const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; }

// x [N, C, H, W] contiguous on the GPU; per-channel tensors [C] of x's dtype; statistics [C] f32 (f64 for f64).
Geom check_args(const char* op, const Tensor& x, std::initializer_list<std::pair<const Tensor*, const char*>> params,
                std::initializer_list<std::pair<const Tensor*, const char*>> stats) {
  check_on_cuda(x, op, "x");
  check_contiguous(x, op, "x");
  if (x.dim() != 4) fail(std::string(op) + " (cuda): x must be [N, C, H, W], got " + x.str());
  const Geom g{x.size(0), x.size(1), x.size(2) * x.size(3)};
  for (auto [t, name] : params) {
    if (!t->defined()) continue;
    check_on_cuda(*t, op, name);
    check_same_dtype(x, *t, op);
    check_contiguous(*t, op, name);
    const bool whole = std::string(name) == "dy" || std::string(name) == "y" || std::string(name) == "dx";
    if (whole ? t->shape() != x.shape() : t->numel() != g.C)
      fail(std::string(op) + " (cuda): " + name + " " + t->str() + " does not fit x " + x.str());
  }
  const DType sdt = stat_dtype(x.dtype());
  for (auto [t, name] : stats) {
    check_on_cuda(*t, op, name);
    if (t->dtype() != sdt || t->numel() != g.C || !t->is_contiguous())
      fail(std::string(op) + " (cuda): " + name + " must be contiguous " + dtype_name(sdt) + " [" +
           std::to_string(g.C) + "], got " + t->str());
  }
  return g;
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean, Tensor& invstd,
                             double eps, bool training, Tensor& y) {
  const char* op = "batch_norm";
  const Geom g = check_args(op, x, {{&weight, "weight"}, {&bias, "bias"}, {&y, "y"}},
                            {{&mean, "mean"}, {&invstd, "invstd"}});
  const int64_t M = g.N * g.HW;
  if (g.C == 0) return;
  if (g.C > 65535) fail("batch_norm (cuda): at most 65535 channels are supported, x is " + x.str());
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    A *mp = ptr<A>(mean), *ip = ptr<A>(invstd);
    if (training) {
      if (M == 0) fail("batch_norm (cuda): training needs at least one value per channel, x is " + x.str());
      const int64_t S = conv::slices_for(g.C, M, sm_count(), 2048);
      Tensor part = Tensor::empty({g.C * S}, stat_dtype(x.dtype()), Device::CUDA);
      const dim3 grid(unsigned(S), unsigned(g.C));
      const unsigned fin = unsigned((g.C + kBlock - 1) / kBlock);
      for (bool second : {false, true}) {  // Σx -> mean, then Σ(x − mean)² -> invstd
        stat_partials<T><<<grid, kBlock, 0, stream()>>>(ptr<T>(x), second ? mp : nullptr, ptr<A>(part), g, S);
        TS_CUDA_CHECK_LAUNCH();
        stat_finalize<A><<<fin, kBlock, 0, stream()>>>(ptr<A>(part), S, g.C, A(M), A(eps), second ? ip : mp, second);
        TS_CUDA_CHECK_LAUNCH();
      }
    }
    if (x.numel() == 0) return;
    normalize<T><<<grid_for(x.numel()), kBlock, 0, stream()>>>(ptr<T>(x), ptr<T>(weight), ptr<T>(bias), mp, ip,
                                                             ptr<T>(y), x.numel(), g.C, g.HW);
    TS_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                      const Tensor& invstd, bool training, Tensor& dx, Tensor& dweight,
                                      Tensor& dbias) {
  const char* op = "batch_norm_backward";
  const Geom g = check_args(op, x, {{&dy, "dy"}, {&weight, "weight"}, {&dx, "dx"}, {&dweight, "dweight"},
                                    {&dbias, "dbias"}},
                            {{&mean, "mean"}, {&invstd, "invstd"}});
  check_on_cuda(dy, op, "dy");
  const int64_t M = g.N * g.HW;
  if (g.C == 0) return;
  if (g.C > 65535) fail("batch_norm_backward (cuda): at most 65535 channels are supported, x is " + x.str());
  if (M == 0) {
    for (Tensor* t : {&dweight, &dbias})
      if (t->defined()) fill(*t, 0.0);
    return;
  }
  // The sums are needed for dweight/dbias and for the training dx; eval dx alone skips them.
  const bool want_sums = dweight.defined() || dbias.defined() || (training && dx.defined());
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const A *mp = ptr<A>(mean), *ip = ptr<A>(invstd);
    Tensor sums;
    if (want_sums) {
      const int64_t S = conv::slices_for(g.C, M, sm_count(), 2048);
      Tensor part = Tensor::empty({2, g.C * S}, stat_dtype(x.dtype()), Device::CUDA);
      sums = Tensor::empty({2, g.C}, stat_dtype(x.dtype()), Device::CUDA);
      A* pp = ptr<A>(part);
      grad_partials<T><<<dim3(unsigned(S), unsigned(g.C)), kBlock, 0, stream()>>>(ptr<T>(dy), ptr<T>(x), mp, ip, pp,
                                                                                pp + g.C * S, g, S);
      TS_CUDA_CHECK_LAUNCH();
      grad_finalize<T><<<unsigned((g.C + kBlock - 1) / kBlock), kBlock, 0, stream()>>>(
          pp, pp + g.C * S, S, g.C, ptr<A>(sums), ptr<T>(dweight), ptr<T>(dbias));
      TS_CUDA_CHECK_LAUNCH();
    }
    if (!dx.defined()) return;
    grad_input<T><<<grid_for(x.numel()), kBlock, 0, stream()>>>(ptr<T>(dy), ptr<T>(x), ptr<T>(weight), mp, ip,
                                                              training ? ptr<A>(sums) : nullptr, ptr<T>(dx),
                                                              x.numel(), g.C, g.HW, A(M));
    TS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera
