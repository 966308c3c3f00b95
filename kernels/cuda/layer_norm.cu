// Layer norm over the last dim of a contiguous [rows, C] view, forward and backward (kernels/cpu/nn.cpp is
// the reference). f32/bf16/f16 compute and keep statistics in fp32, f64 in f64.
//
// Forward, C ≤ 1024: one warp per row, the row held in registers (layer_norm_math.h warp_shape: `chunks`
// vectors of `vec` elements per lane, 16-byte accesses where aligned). Statistics are two-pass over the
// registers: mean = Σx / C, then var = Σ(x − mean)² / C. Welford would need a division per element and a
// more expensive merge in the shuffle tree; the two-pass form costs one more warp reduction and, because
// the second pass subtracts the exact-ish mean before squaring, has no cancellation when |mean| ≫ std (the
// textbook E[x²] − mean² one-pass formula does). Memory traffic is the minimum: x read once, y written
// once, 8 bytes of statistics per row: 2·C·sizeof(T) + 8 bytes per row.
// Forward, C > 1024: one block of 256 threads per row; the two statistic passes re-read the row (L1/L2
// hits: a row of a few KB stays cached), so DRAM traffic is still about 2·C·sizeof(T) per row.
//
// Backward: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w, x̂ = (x − mean)·rstd, using the saved
// statistics. dweight = Σ_rows dy·x̂ and dbias = Σ_rows dy are formed in the same pass: for C ≤ 1024 each
// warp keeps the partial sums of its lane's columns in registers over the rows it visits (grid-strided),
// the 8 warps of a block then add theirs into shared memory in warp order, and the block writes one row
// of a [blocks, C] fp32 scratch buffer; a second small kernel sums that buffer's columns in a fixed order.
// For C > 1024 (block per row) each block accumulates straight into its own scratch row (it owns it: no
// races). No atomics anywhere, so dweight/dbias are bit-identical run to run on a given GPU (the block
// count depends only on rows and the device). Traffic: x, dy read once, dx written once (3·C·sizeof(T)
// per row) plus 2·blocks·C·4 bytes of partials (a few % at the model shapes).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/layer_norm_math.h"

namespace tessera {
namespace cuda {
namespace {

using ln::kWarpsPerBlock;

// Widest vector a dtype uses: 16 bytes for f32 and bf16 (the training dtypes); f16 and f64 stay scalar
// to keep the number of template instantiations (and compile time) down.
template <typename T> constexpr int max_vec() {
  return std::is_same_v<T, float> ? 4 : std::is_same_v<T, bf16_t> ? 8 : 1;
}

// Optional affine parameters: an undefined weight reads as 1, an undefined bias as 0.
template <typename T, int V, typename A>
__device__ __forceinline__ void load_or(const T* p, int64_t i, A fallback, A (&out)[V]) {
  if (p) load_vec<T, V>(p, i, out);
  else
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = fallback;
}

// ---------------------------------------------------------------- forward
template <typename T, int VEC, int CH>
__global__ void __launch_bounds__(256) ln_forward_warp(const T* x, const T* w, const T* b, acc_t<T> eps, T* y,
                                                       acc_t<T>* mean, acc_t<T>* rstd, int64_t rows, int C) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together, so the shuffles below see full warps
  const T* xr = x + r * C;
  A v[CH][VEC];
  A s = 0;
#pragma unroll
  for (int k = 0; k < CH; ++k) {
    const int64_t c = ln::warp_column(lane, k, 0, VEC);
    if (c < C) load_vec<T, VEC>(xr, c, v[k]);
    else
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[k][j] = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += v[k][j];
  }
  const A mu = warp_sum(s) / A(C);
  A q = 0;
#pragma unroll
  for (int k = 0; k < CH; ++k)
    if (ln::warp_column(lane, k, 0, VEC) < C)
#pragma unroll
      for (int j = 0; j < VEC; ++j) q += (v[k][j] - mu) * (v[k][j] - mu);
  const A rs = A(1) / sqrt(warp_sum(q) / A(C) + eps);  // biased variance, as torch.nn.LayerNorm
  if (lane == 0) { mean[r] = mu; rstd[r] = rs; }
  T* yr = y + r * C;
#pragma unroll
  for (int k = 0; k < CH; ++k) {
    const int64_t c = ln::warp_column(lane, k, 0, VEC);
    if (c >= C) continue;
    A wv[VEC], bv[VEC], o[VEC];
    load_or<T, VEC>(w, c, A(1), wv);
    load_or<T, VEC>(b, c, A(0), bv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) o[j] = (v[k][j] - mu) * rs * wv[j] + bv[j];
    store_vec<T, VEC>(yr, c, o);
  }
}

template <typename T>
__global__ void __launch_bounds__(256) ln_forward_block(const T* x, const T* w, const T* b, acc_t<T> eps, T* y,
                                                        acc_t<T>* mean, acc_t<T>* rstd, int64_t C) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x;
  const T* xr = x + r * C;
  A s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += load(xr[c]);
  const A mu = block_sum<ln::kBlockThreads>(s) / A(C);
  A q = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) { A d = load(xr[c]) - mu; q += d * d; }
  const A rs = A(1) / sqrt(block_sum<ln::kBlockThreads>(q) / A(C) + eps);
  if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
  T* yr = y + r * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A o = (load(xr[c]) - mu) * rs;
    if (w) o *= load(w[c]);
    if (b) o += load(b[c]);
    yr[c] = store<T>(o);
  }
}

// ---------------------------------------------------------------- backward
// part_w / part_b: this launch's [gridDim.x, C] scratch rows, or null when that gradient is not needed.
template <typename T, int VEC, int CH>
__global__ void __launch_bounds__(256) ln_backward_warp(const T* dy, const T* x, const T* w, const acc_t<T>* mean,
                                                        const acc_t<T>* rstd, T* dx, acc_t<T>* part_w,
                                                        acc_t<T>* part_b, int64_t rows, int C) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  A aw[CH][VEC] = {}, ab[CH][VEC] = {};  // this lane's columns of Σ dy·x̂ and Σ dy over its rows
  for (int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + warp; r < rows; r += int64_t(gridDim.x) * kWarpsPerBlock) {
    const T *xr = x + r * C, *gr = dy + r * C;
    const A mu = mean[r], rs = rstd[r];
    A xh[CH][VEC], g[CH][VEC], sg = 0, sgx = 0;
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int64_t c = ln::warp_column(lane, k, 0, VEC);
      if (c >= C) continue;
      A wv[VEC];
      load_vec<T, VEC>(xr, c, xh[k]);
      load_vec<T, VEC>(gr, c, g[k]);
      load_or<T, VEC>(w, c, A(1), wv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xh[k][j] = (xh[k][j] - mu) * rs;
        aw[k][j] += g[k][j] * xh[k][j];
        ab[k][j] += g[k][j];
        g[k][j] *= wv[j];
        sg += g[k][j];
        sgx += g[k][j] * xh[k][j];
      }
    }
    if (!dx) continue;
    sg = warp_sum(sg) / A(C);
    sgx = warp_sum(sgx) / A(C);
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int64_t c = ln::warp_column(lane, k, 0, VEC);
      if (c >= C) continue;
      A o[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = rs * (g[k][j] - sg - xh[k][j] * sgx);
      store_vec<T, VEC>(dx + r * C, c, o);
    }
  }
  if (!part_w && !part_b) return;
  // Warps add their register partials into shared memory one after another (fixed order), then the
  // block writes its scratch row.
  extern __shared__ unsigned char smem_raw[];
  A* sw = reinterpret_cast<A*>(smem_raw);
  A* sb = sw + C;
  for (int turn = 0; turn < kWarpsPerBlock; ++turn) {
    if (warp == turn) {
#pragma unroll
      for (int k = 0; k < CH; ++k)
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int64_t c = ln::warp_column(lane, k, j, VEC);
          if (c >= C) continue;
          sw[c] = turn ? sw[c] + aw[k][j] : aw[k][j];
          sb[c] = turn ? sb[c] + ab[k][j] : ab[k][j];
        }
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    if (part_w) part_w[blockIdx.x * C + c] = sw[c];
    if (part_b) part_b[blockIdx.x * C + c] = sb[c];
  }
}

// C > 1024: block b handles rows b, b + gridDim.x, ... (gridDim.x ≤ rows, so every block has a first row
// that initialises its scratch row).
template <typename T>
__global__ void __launch_bounds__(256) ln_backward_block(const T* dy, const T* x, const T* w, const acc_t<T>* mean,
                                                         const acc_t<T>* rstd, T* dx, acc_t<T>* part_w,
                                                         acc_t<T>* part_b, int64_t rows, int64_t C) {
  using A = acc_t<T>;
  A* pw = part_w ? part_w + blockIdx.x * C : nullptr;
  A* pb = part_b ? part_b + blockIdx.x * C : nullptr;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * C, *gr = dy + r * C;
    const A mu = mean[r], rs = rstd[r];
    const bool first = r == blockIdx.x;
    A sg = 0, sgx = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const A xh = (load(xr[c]) - mu) * rs, gv = load(gr[c]), g = w ? gv * load(w[c]) : gv;
      sg += g;
      sgx += g * xh;
      if (pw) pw[c] = first ? gv * xh : pw[c] + gv * xh;  // this thread's own column: no race
      if (pb) pb[c] = first ? gv : pb[c] + gv;
    }
    if (!dx) continue;
    sg = block_sum<ln::kBlockThreads>(sg) / A(C);
    sgx = block_sum<ln::kBlockThreads>(sgx) / A(C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const A xh = (load(xr[c]) - mu) * rs, g = w ? load(gr[c]) * load(w[c]) : load(gr[c]);
      dx[r * C + c] = store<T>(rs * (g - sg - xh * sgx));
    }
  }
}

// Calls f(integral_constant VEC, integral_constant CH) for a shape from ln::warp_shape (VEC ≤ MAXV).
template <int MAXV, typename F> void visit_warp_shape(ln::WarpShape s, F&& f) {
  auto with_vec = [&](auto vtag) {
    constexpr int V = decltype(vtag)::value;
    // Shapes with vec·chunks > 32 are not instantiated (warp_shape never yields them for C ≤ 1024); reaching
    // one is a bug in warp_shape, reported rather than silently skipping the kernel.
    auto ch = [&](auto ctag) {
      if constexpr (V * decltype(ctag)::value <= 32) f(vtag, ctag);
      else fail("layer_norm (cuda): internal error, warp shape vec " + std::to_string(V) + " × chunks " +
                std::to_string(decltype(ctag)::value) + " exceeds one warp's 32 vectors");
    };
    switch (s.chunks) {
      case 1: ch(std::integral_constant<int, 1>{}); break;
      case 2: ch(std::integral_constant<int, 2>{}); break;
      case 3: ch(std::integral_constant<int, 3>{}); break;
      case 4: ch(std::integral_constant<int, 4>{}); break;
      case 6: ch(std::integral_constant<int, 6>{}); break;
      case 8: ch(std::integral_constant<int, 8>{}); break;
      case 16: ch(std::integral_constant<int, 16>{}); break;
      default: ch(std::integral_constant<int, 32>{}); break;
    }
  };
  if constexpr (MAXV >= 8) if (s.vec == 8) return with_vec(std::integral_constant<int, 8>{});
  if constexpr (MAXV >= 4) if (s.vec == 4) return with_vec(std::integral_constant<int, 4>{});
  if constexpr (MAXV >= 2) if (s.vec == 2) return with_vec(std::integral_constant<int, 2>{});
  with_vec(std::integral_constant<int, 1>{});
}

bool aligned16(const Tensor& t) { return !t.defined() || reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

template <typename T> const T* ptr_or_null(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr; }

void check_param(const char* op, const Tensor& x, const Tensor& p, const char* name, int64_t C) {
  if (!p.defined()) return;
  check_on_cuda(p, op, name);
  check_same_dtype(x, p, op);
  check_contiguous(p, op, name);
  if (p.numel() != C) fail(std::string(op) + " (cuda): " + name + " " + p.str() + " is not [" + std::to_string(C) + "]");
}

// Shared argument checks: x [rows, C] contiguous; weight/bias [C] of x's dtype when defined; statistics
// [rows] in f32 (f64 for f64 x).
void check_common(const char* op, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                  int64_t& rows, int64_t& C) {
  check_on_cuda(x, op, "x");
  check_contiguous(x, op, "x");
  C = x.dim() == 0 ? 1 : x.size(-1);
  rows = C == 0 ? 0 : x.numel() / C;
  const DType sdt = stat_dtype(x.dtype());
  for (auto [t, name] : {std::pair{&mean, "mean"}, std::pair{&rstd, "rstd"}}) {
    check_on_cuda(*t, op, name);
    if (t->dtype() != sdt || t->numel() != rows || !t->is_contiguous())
      fail(std::string(op) + " (cuda): " + name + " must be contiguous " + dtype_name(sdt) + " [" +
           std::to_string(rows) + "] for x " + x.str() + ", got " + t->str());
  }
  check_param(op, x, weight, "weight", C);
}
}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                             Tensor& mean, Tensor& rstd) {
  const char* op = "layer_norm";
  int64_t rows, C;
  check_common(op, x, weight, mean, rstd, rows, C);
  check_on_cuda(y, op, "y");
  check_same_dtype(x, y, op);
  check_contiguous(y, op, "y");
  if (y.shape() != x.shape()) fail("layer_norm (cuda): y " + y.str() + " does not match x " + x.str());
  check_param(op, x, bias, "bias", C);
  if (rows == 0) return;
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T *xp = static_cast<const T*>(x.raw_data()), *wp = ptr_or_null<T>(weight), *bp = ptr_or_null<T>(bias);
    T* yp = static_cast<T*>(y.raw_data());
    A *mp = static_cast<A*>(mean.raw_data()), *rp = static_cast<A*>(rstd.raw_data());
    if (C <= ln::kMaxWarpRowC) {
      const bool al = aligned16(x) && aligned16(y) && aligned16(weight) && aligned16(bias);
      visit_warp_shape<max_vec<T>()>(ln::warp_shape(C, max_vec<T>(), al), [&](auto v, auto ch) {
        const unsigned grid = unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
        ln_forward_warp<T, decltype(v)::value, decltype(ch)::value>
            <<<grid, 32 * kWarpsPerBlock, 0, stream()>>>(xp, wp, bp, A(eps), yp, mp, rp, rows, int(C));
        TS_CUDA_CHECK_LAUNCH();
      });
    } else {
      ln_forward_block<T><<<unsigned(rows), ln::kBlockThreads, 0, stream()>>>(xp, wp, bp, A(eps), yp, mp, rp, C);
      TS_CUDA_CHECK_LAUNCH();
    }
  });
}

void CudaBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                      const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  const char* op = "layer_norm_backward";
  int64_t rows, C;
  check_common(op, x, weight, mean, rstd, rows, C);
  check_on_cuda(dy, op, "dy");
  check_same_dtype(x, dy, op);
  check_contiguous(dy, op, "dy");
  if (dy.shape() != x.shape()) fail("layer_norm_backward (cuda): dy " + dy.str() + " does not match x " + x.str());
  if (dx.defined()) {
    check_on_cuda(dx, op, "dx");
    check_same_dtype(x, dx, op);
    check_contiguous(dx, op, "dx");
    if (dx.shape() != x.shape()) fail("layer_norm_backward (cuda): dx " + dx.str() + " does not match x " + x.str());
  }
  check_param(op, x, dweight, "dweight", C);
  check_param(op, x, dbias, "dbias", C);
  const bool want_p = dweight.defined() || dbias.defined();
  if (!dx.defined() && !want_p) return;
  if (rows == 0) {
    for (Tensor* t : {&dweight, &dbias})
      if (t->defined()) fill(*t, 0.0);
    return;
  }
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const DType adt = dtype_of<A>::value;
    const T *gp = static_cast<const T*>(dy.raw_data()), *xp = static_cast<const T*>(x.raw_data()),
            *wp = ptr_or_null<T>(weight);
    const A *mp = static_cast<const A*>(mean.raw_data()), *rp = static_cast<const A*>(rstd.raw_data());
    T* dxp = dx.defined() ? static_cast<T*>(dx.raw_data()) : nullptr;
    int64_t blocks = 0;
    Tensor pw, pb;  // [blocks, C] scratch from the caching allocator, freed (stream-ordered) on return
    auto scratch = [&] {
      if (dweight.defined()) pw = Tensor::empty({blocks, C}, adt, Device::CUDA);
      if (dbias.defined()) pb = Tensor::empty({blocks, C}, adt, Device::CUDA);
    };
    auto pptr = [](Tensor& t) { return t.defined() ? static_cast<A*>(t.raw_data()) : nullptr; };
    if (C <= ln::kMaxWarpRowC) {
      const bool al = aligned16(x) && aligned16(dy) && aligned16(dx) && aligned16(weight);
      visit_warp_shape<max_vec<T>()>(ln::warp_shape(C, max_vec<T>(), al), [&](auto v, auto ch) {
        auto kernel = ln_backward_warp<T, decltype(v)::value, decltype(ch)::value>;
        const size_t smem = want_p ? 2 * size_t(C) * sizeof(A) : 0;
        // As many blocks as fit on the GPU at once (one wave), so each warp loops over several rows and
        // its register partials amortise the scratch write; dx-only launches use one warp per row.
        int per_sm = 0;
        TS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kWarpsPerBlock, smem));
        blocks = want_p ? ln::backward_blocks(rows, sm_count(), kWarpsPerBlock, std::max(per_sm, 1))
                        : (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
        scratch();
        kernel<<<unsigned(blocks), 32 * kWarpsPerBlock, smem, stream()>>>(gp, xp, wp, mp, rp, dxp, pptr(pw), pptr(pb),
                                                                       rows, int(C));
        TS_CUDA_CHECK_LAUNCH();
      });
    } else {
      blocks = want_p ? ln::backward_blocks(rows, sm_count(), 1, 2) : std::min<int64_t>(rows, 65535);
      scratch();
      ln_backward_block<T><<<unsigned(blocks), ln::kBlockThreads, 0, stream()>>>(gp, xp, wp, mp, rp, dxp, pptr(pw),
                                                                                pptr(pb), rows, C);
      TS_CUDA_CHECK_LAUNCH();
    }
    for (auto [part, out] : {std::pair{&pw, &dweight}, std::pair{&pb, &dbias}}) {
      if (!part->defined()) continue;
      sum_partial_columns<T><<<unsigned((C + 31) / 32), dim3(32, 8), 0, stream()>>>(pptr(*part), blocks, C,
                                                                           static_cast<T*>(out->raw_data()));
      TS_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace tessera
