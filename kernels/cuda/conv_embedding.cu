// Convolutional token embedding, fused (Backend::conv_embedding; the reference is the base class's
// composition conv2d → copy to tokens → layer_norm). groups = 1, C ≤ 1024 (f64: C ≤ 512); anything else
// takes Backend::conv_embedding(_backward), the composition. Tile shapes: conv_embedding_tiling.h.
//
// Forward: one kernel. A CTA owns a tile of BM consecutive tokens (flattened over N·Ho·Wo, so a tile may
// straddle two images) × ALL C channels, and computes the conv as an implicit GEMM [BM, K]·[K, C],
// K = Cin·kh·kw, in kBK = 32 slices: each step gathers the im2col slice of its tokens straight from x
// (NCHW; zero for padding) and the weight slice into shared memory, then
//   bf16/f16, C ≤ 512: wmma 16×16×16 tensor-core fragments with fp32 accumulation, BM = 64. 8 warps =
//     4 row blocks × 2 column halves, a warp holds ≤ 16 fragments (128 fp32 registers at C = 512; at the
//     CvT widths 64/192/384: 2/6/12 fragments). Staging is 5 KB + 32·(C+8)·2 B; after the K loop the
//     fragments go to a [64][C+4] fp32 tile (99 KB at C = 384: two CTAs per H100 SM) aliasing it.
//   f32/f64 (and 16-bit, 512 < C ≤ 1024): fp32/f64 FMA, BM = 32; lane l of warp w accumulates 4 tokens ×
//     CQ ≤ 8 channels (l + 32q) in registers — weight reads are conflict-free rows, the token values are
//     warp broadcasts — and C > 256 runs the K loop once per 256-channel pass into the [32][C] tile.
// Epilogue, same kernel: warp w normalises tile rows w, w+8, ...; each lane walks channels lane + 32q in
// shared memory: pass 1 adds the bias, rounds to the storage type (pre_norm is stored, and the norm
// uses exactly the stored value, as the composition's layer_norm does), writes pre_norm and sums; pass 2
// sums (v − mean)² (two-pass: no cancellation for |mean| ≫ std); pass 3 writes tokens. The warp
// reductions are shuffles in a fixed order. Stores are coalesced: a row of C contiguous channels per token.
// DRAM traffic per token: pre_norm + tokens (2·C·sizeof(T)) + 8 B of statistics, plus x read about once
// (neighbouring tiles' halos hit L2) and the weight from L2. The composition on this backend writes an
// im2col buffer (Cin·k²·sizeof(T) per token, 147 values at CvT's first layer), re-reads it in cuBLAS,
// writes the [N, C, Ho, Wo] image, reads+writes it for the bias, reads it for the transpose, writes
// pre_norm, reads it for layer_norm, writes tokens: ≈ 7·C·sizeof(T) per token + the im2col round trip,
// against 2·C·sizeof(T).
// Not done (first profiling targets): cp.async double-buffering of the K slices, vectorised x gathers.
//
// Backward: a layer-norm-backward kernel that writes dpre directly as the [N, C, Ho, Wo] image the conv
// backward wants. CTA = 32 consecutive pixels of one image: warp per token computes
// dpre = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·ln_w, x̂ = (pre − mean)·rstd, into a [C][33] shared
// tile; the tile is stored pixel-fastest (32 consecutive p per channel: coalesced). dln_weight/dln_bias:
// each CTA sums its 32 tokens per channel in token order (pre and dy re-read from L1/L2) into one row of
// a [CTAs, C] fp32 scratch buffer; a second kernel sums the rows in a fixed order — no atomics,
// bit-identical run to run. Then CudaBackend::conv2d_backward(dpre, ...) gives dx, dweight, dbias.
// Traffic saved against the composition: its layer_norm_backward writes dpre in token order (C·sizeof(T)
// per token) and the copy re-reads it and writes the image (2 more): 5 vs 3 C·sizeof(T) per token.
#include <mma.h>

#include <string>
#include <type_traits>
#include <utility>

#include "kernels/cuda/conv_embedding_tiling.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

using namespace emb;
template <typename T> struct WmmaOf;
template <> struct WmmaOf<bf16_t> { using type = __nv_bfloat16; };
template <> struct WmmaOf<f16_t> { using type = __half; };

struct Geo {  // conv geometry; P = Ho·Wo tokens per image, K = Cin·kh·kw
  int64_t N, Cin, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo, P, K;
};

// The im2col source of token `tok`: thread-constant image base and window origin, so each K slice costs
// one decode_k and a bounds test per element.
template <typename T> struct TokenSrc {
  const T* xn = nullptr;
  int64_t ih0 = 0, iw0 = 0;
  bool valid = false;
  __device__ TokenSrc(const T* x, const Geo& g, int64_t tok, int64_t ntok) {
    if (tok >= ntok) return;
    const int64_t n = tok / g.P, p = tok % g.P;
    xn = x + n * g.Cin * g.H * g.W;
    ih0 = (p / g.Wo) * g.sh - g.ph;
    iw0 = (p % g.Wo) * g.sw - g.pw;
    valid = true;
  }
  __device__ T at(const Geo& g, int64_t k) const {
    if (!valid || k >= g.K) return T{};
    const Tap t = decode_k(k, g.kh, g.kw);
    const int64_t ih = ih0 + t.i, iw = iw0 + t.j;
    return ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? xn[(t.ci * g.H + ih) * g.W + iw] : T{};
  }
};

// Epilogue over the CTA's [rows][ldc] accumulator tile: bias, pre_norm, LayerNorm, tokens (see the top).
template <typename T, typename A>
__device__ void norm_epilogue(A* tile, int64_t ldc, int rows, int64_t tok0, int64_t ntok, const Geo& g,
                              const T* bias, const T* lw, const T* lb, A eps, T* pre, T* tokens, A* mean, A* rstd) {
  const int lane = threadIdx.x % 32, C = int(g.C);
  for (int r = threadIdx.x / 32; r < rows; r += kEmbThreads / 32) {
    const int64_t tok = tok0 + r;
    if (tok >= ntok) break;  // warp-uniform
    A* row = tile + r * ldc;
    A s = 0;
    for (int c = lane; c < C; c += 32) {
      const T v = store<T>(row[c] + (bias ? load(bias[c]) : A(0)));
      pre[tok * C + c] = v;
      row[c] = load(v);
      s += row[c];
    }
    const A mu = warp_sum(s) / A(C);
    A q = 0;
    for (int c = lane; c < C; c += 32) q += (row[c] - mu) * (row[c] - mu);
    const A rs = A(1) / sqrt(warp_sum(q) / A(C) + eps);  // biased variance, as torch.nn.LayerNorm
    if (lane == 0) { mean[tok] = mu; rstd[tok] = rs; }
    for (int c = lane; c < C; c += 32) {
      A o = (row[c] - mu) * rs;
      if (lw) o *= load(lw[c]);
      if (lb) o += load(lb[c]);
      tokens[tok * C + c] = store<T>(o);
    }
  }
}

// ---------------------------------------------------------------- forward, tensor cores (bf16/f16)
template <typename T, int FR>
__global__ void __launch_bounds__(kEmbThreads) emb_forward_wmma(const T* x, const T* w, const T* bias, const T* lw,
                                                             const T* lb, float eps, T* pre, T* tokens, float* mean,
                                                             float* rstd, Geo g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wm = nvcuda::wmma;
  using W = typename WmmaOf<T>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t cpad = (g.C + 15) / 16 * 16, ldb = cpad + 8, ldc = cpad + 4, ntok = g.N * g.P;
  const int nfrag = int(cpad / 16);
  T* As = reinterpret_cast<T*>(smem);  // [kWmmaBM][kWmmaLdA]: token-major, the a fragments' row_major
  T* Bs = As + kWmmaBM * kWmmaLdA;     // [kBK][ldb]: Bs[k][c] = W[c, k0 + k]
  float* tile = reinterpret_cast<float*>(smem);  // [kWmmaBM][ldc], after the K loop
  const int64_t tok0 = int64_t(blockIdx.x) * kWmmaBM;
  const int warp = threadIdx.x / 32, rb = warp % 4, half = warp / 4;
  // kEmbThreads is a multiple of kWmmaBM: each thread gathers for one fixed token of the tile.
  const TokenSrc<T> src(x, g, tok0 + threadIdx.x % kWmmaBM, ntok);
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[FR];
#pragma unroll
  for (int f = 0; f < FR; ++f) wm::fill_fragment(acc[f], 0.0f);
  for (int64_t k0 = 0; k0 < g.K; k0 += kBK) {
    for (int kk = threadIdx.x / kWmmaBM; kk < kBK; kk += kEmbThreads / kWmmaBM)
      As[(threadIdx.x % kWmmaBM) * kWmmaLdA + kk] = src.at(g, k0 + kk);
    // Consecutive threads read consecutive k of one weight row (coalesced); the transposing smem store
    // is up to 4-way bank-conflicted, cheap next to the gather.
    for (int e = threadIdx.x; e < kBK * cpad; e += kEmbThreads) {
      const int kk = e % kBK;
      const int64_t c = e / kBK, k = k0 + kk;
      Bs[kk * ldb + c] = c < g.C && k < g.K ? w[c * g.K + k] : T{};
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wm::fragment<wm::matrix_a, 16, 16, 16, W, wm::row_major> a;
      wm::load_matrix_sync(a, reinterpret_cast<const W*>(As + rb * 16 * kWmmaLdA + kk), kWmmaLdA);
#pragma unroll
      for (int f = 0; f < FR; ++f) {
        const int col = half + 2 * f;
        if (col >= nfrag) break;
        wm::fragment<wm::matrix_b, 16, 16, 16, W, wm::row_major> b;
        wm::load_matrix_sync(b, reinterpret_cast<const W*>(Bs + kk * ldb + col * 16), unsigned(ldb));
        wm::mma_sync(acc[f], a, b, acc[f]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < FR; ++f) {
    const int col = half + 2 * f;
    if (col < nfrag) wm::store_matrix_sync(tile + rb * 16 * ldc + col * 16, acc[f], unsigned(ldc), wm::mem_row_major);
  }
  __syncthreads();
  norm_epilogue<T, float>(tile, ldc, kWmmaBM, tok0, ntok, g, bias, lw, lb, eps, pre, tokens, mean, rstd);
#else
  __trap();  // built for < sm_80: the host side never selects this path there (bf16 wmma needs sm_80)
#endif
}

// ---------------------------------------------------------------- forward, FMA (any dtype)
template <typename T, int CQ>
__global__ void __launch_bounds__(kEmbThreads) emb_forward_fma(const T* x, const T* w, const T* bias, const T* lw,
                                                            const T* lb, acc_t<T> eps, T* pre, T* tokens,
                                                            acc_t<T>* mean, acc_t<T>* rstd, Geo g) {
  using A = acc_t<T>;
  constexpr int CW = 32 * CQ, LDB = CW + 1;
  extern __shared__ __align__(128) unsigned char smem[];
  A* As = reinterpret_cast<A*>(smem);  // [kBK][kFmaBM]
  A* Bs = As + kBK * kFmaBM;           // [kBK][LDB]
  A* tile = Bs + kBK * LDB;            // [kFmaBM][C]
  const int64_t ntok = g.N * g.P, tok0 = int64_t(blockIdx.x) * kFmaBM;
  const int lane = threadIdx.x % 32, ty = threadIdx.x / 32;
  const TokenSrc<T> src(x, g, tok0 + lane, ntok);  // gathers for token `lane` of the tile
  for (int64_t c0 = 0; c0 < g.C; c0 += CW) {
    A acc[4][CQ] = {};
    for (int64_t k0 = 0; k0 < g.K; k0 += kBK) {
      for (int kk = ty; kk < kBK; kk += kEmbThreads / 32) As[kk * kFmaBM + lane] = load(src.at(g, k0 + kk));
      for (int e = threadIdx.x; e < kBK * CW; e += kEmbThreads) {
        const int kk = e % kBK, c = e / kBK;
        const int64_t k = k0 + kk;
        Bs[kk * LDB + c] = c0 + c < g.C && k < g.K ? load(w[(c0 + c) * g.K + k]) : A(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < kBK; ++kk) {
        A xa[4], wb[CQ];
#pragma unroll
        for (int i = 0; i < 4; ++i) xa[i] = As[kk * kFmaBM + ty * 4 + i];  // warp broadcast
#pragma unroll
        for (int q = 0; q < CQ; ++q) wb[q] = Bs[kk * LDB + lane + 32 * q];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int q = 0; q < CQ; ++q) acc[i][q] += xa[i] * wb[q];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int q = 0; q < CQ; ++q)
        if (c0 + lane + 32 * q < g.C) tile[(ty * 4 + i) * g.C + c0 + lane + 32 * q] = acc[i][q];
  }
  __syncthreads();
  norm_epilogue<T, A>(tile, g.C, kFmaBM, tok0, ntok, g, bias, lw, lb, eps, pre, tokens, mean, rstd);
}

// ---------------------------------------------------------------- backward
// Grid (bwd_tiles(P), N). dpre: [N, C, P] or null; part_w/part_b: [gridDim.x·gridDim.y, C] or null.
template <typename T>
__global__ void __launch_bounds__(kEmbThreads) emb_ln_backward(const T* dy, const T* pre, const T* lw,
                                                            const acc_t<T>* mean, const acc_t<T>* rstd, T* dpre,
                                                            acc_t<T>* part_w, acc_t<T>* part_b, int64_t P, int C) {
  using A = acc_t<T>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* tile = reinterpret_cast<T*>(smem);  // [C][kBwdTP + 1]
  __shared__ A smu[kBwdTP], srs[kBwdTP];
  const int64_t n = blockIdx.y, p0 = int64_t(blockIdx.x) * kBwdTP;
  const int np = int(P - p0 < kBwdTP ? P - p0 : kBwdTP), lane = threadIdx.x % 32;
  const int64_t row0 = n * P + p0;  // token row of pixel p0 in [N·P, C]
  for (int t = threadIdx.x / 32; t < np; t += kEmbThreads / 32) {
    const T *g = dy + (row0 + t) * C, *x = pre + (row0 + t) * C;
    const A mu = mean[row0 + t], rs = rstd[row0 + t];
    if (lane == 0) { smu[t] = mu; srs[t] = rs; }
    if (!dpre) continue;
    A sg = 0, sgx = 0;
    for (int c = lane; c < C; c += 32) {
      const A gv = lw ? load(g[c]) * load(lw[c]) : load(g[c]);
      sg += gv;
      sgx += gv * (load(x[c]) - mu) * rs;
    }
    sg = warp_sum(sg) / A(C);
    sgx = warp_sum(sgx) / A(C);
    for (int c = lane; c < C; c += 32) {
      const A gv = lw ? load(g[c]) * load(lw[c]) : load(g[c]);
      tile[c * (kBwdTP + 1) + t] = store<T>(rs * (gv - sg - (load(x[c]) - mu) * rs * sgx));
    }
  }
  __syncthreads();
  if (dpre)  // pixel-fastest: each channel's np consecutive pixels are one contiguous run of the image
    for (int e = threadIdx.x; e < C * kBwdTP; e += kEmbThreads) {
      const int t = e % kBwdTP, c = e / kBwdTP;
      if (t < np) dpre[(n * C + c) * P + p0 + t] = tile[c * (kBwdTP + 1) + t];
    }
  if (!part_w && !part_b) return;
  const int64_t prow = (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * C;
  for (int c = threadIdx.x; c < C; c += kEmbThreads) {  // coalesced over c; rows just read: L1/L2 hits
    A sw = 0, sb = 0;
    for (int t = 0; t < np; ++t) {
      const A gv = load(dy[(row0 + t) * C + c]);
      sw += gv * (load(pre[(row0 + t) * C + c]) - smu[t]) * srs[t];
      sb += gv;
    }
    if (part_w) part_w[prow + c] = sw;
    if (part_b) part_b[prow + c] = sb;
  }
}

// ---------------------------------------------------------------- host side
template <typename T> T* ptr(const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; }

void check_t(const char* op, const Tensor& t, const Tensor& x, const char* name, const tessera::Shape& shape) {
  check_on_cuda(t, op, name);
  check_same_dtype(x, t, op);
  check_contiguous(t, op, name);
  if (t.shape() != shape) fail(std::string(op) + " (cuda): " + name + " " + t.str() + " has the wrong shape");
}
void check_stats(const char* op, const Tensor& t, const Tensor& x, const char* name, int64_t rows) {
  check_on_cuda(t, op, name);
  const DType sdt = stat_dtype(x.dtype());
  if (t.dtype() != sdt || t.numel() != rows || !t.is_contiguous())
    fail(std::string(op) + " (cuda): " + name + " must be contiguous " + dtype_name(sdt) + " [" +
         std::to_string(rows) + "], got " + t.str());
}

// Validates x, weight, pre_norm (and the stats) and returns the geometry; groups must be 1 here.
Geo geometry(const char* op, const Tensor& x, const Tensor& w, const Conv2dArgs& a, const Tensor& pre,
             const Tensor& mean, const Tensor& rstd) {
  check_on_cuda(x, op, "x");
  check_contiguous(x, op, "x");
  if (x.dim() != 4 || w.dim() != 4 || w.size(1) != x.size(1) || a.stride_h < 1 || a.stride_w < 1 || a.pad_h < 0 ||
      a.pad_w < 0 || x.size(2) + 2 * a.pad_h < w.size(2) || x.size(3) + 2 * a.pad_w < w.size(3))
    fail(std::string(op) + " (cuda): invalid geometry: x " + x.str() + ", weight " + w.str());
  check_t(op, w, x, "weight", w.shape());
  Geo g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), a.stride_h, a.stride_w,
        a.pad_h, a.pad_w, 0, 0, 0, 0};
  g.Ho = (g.H + 2 * g.ph - g.kh) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.kw) / g.sw + 1;
  g.P = g.Ho * g.Wo;
  g.K = g.Cin * g.kh * g.kw;
  check_t(op, pre, x, "pre_norm", {g.N, g.P, g.C});
  check_stats(op, mean, x, "mean", g.N * g.P);
  check_stats(op, rstd, x, "rstd", g.N * g.P);
  return g;
}

template <typename K> void allow_smem(K kernel, size_t bytes) {
  TS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                                 const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens,
                                 Tensor& pre_norm, Tensor& mean, Tensor& rstd) {
  const char* op = "conv_embedding";
  const Path path = forward_path(weight.defined() ? weight.size(0) : 0, int(dtype_size(x.dtype())), a.groups);
  if (path == Path::Composed) return Backend::conv_embedding(x, weight, bias, a, ln_weight, ln_bias, eps, tokens,
                                                             pre_norm, mean, rstd);
  const Geo g = geometry(op, x, weight, a, pre_norm, mean, rstd);
  check_t(op, tokens, x, "tokens", {g.N, g.P, g.C});
  for (auto [t, name] : {std::pair{&bias, "bias"}, std::pair{&ln_weight, "ln_weight"}, std::pair{&ln_bias, "ln_bias"}})
    if (t->defined()) check_t(op, *t, x, name, {g.C});
  const int64_t ntok = g.N * g.P;
  if (ntok == 0) return;
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T *xp = ptr<T>(x), *wp = ptr<T>(weight), *bp = ptr<T>(bias), *lwp = ptr<T>(ln_weight), *lbp = ptr<T>(ln_bias);
    if constexpr (sizeof(T) == 2) {
      if (path == Path::Wmma) {
        const size_t smem = wmma_smem_bytes(g.C);
        const unsigned grid = unsigned((ntok + kWmmaBM - 1) / kWmmaBM);
        auto launch = [&](auto fr) {
          auto kernel = emb_forward_wmma<T, decltype(fr)::value>;
          allow_smem(kernel, smem);
          kernel<<<grid, kEmbThreads, smem, stream()>>>(xp, wp, bp, lwp, lbp, float(eps), ptr<T>(pre_norm),
                                                     ptr<T>(tokens), ptr<float>(mean), ptr<float>(rstd), g);
          TS_CUDA_CHECK_LAUNCH();
        };
        switch (wmma_frags_per_warp(g.C)) {
          case 1: return launch(std::integral_constant<int, 1>{});
          case 2: return launch(std::integral_constant<int, 2>{});
          case 4: return launch(std::integral_constant<int, 4>{});
          case 6: return launch(std::integral_constant<int, 6>{});
          case 8: return launch(std::integral_constant<int, 8>{});
          case 12: return launch(std::integral_constant<int, 12>{});
          default: return launch(std::integral_constant<int, 16>{});
        }
      }
    }
    const size_t smem = fma_smem_bytes(g.C, int(sizeof(A)));
    const unsigned grid = unsigned((ntok + kFmaBM - 1) / kFmaBM);
    auto launch = [&](auto cq) {
      auto kernel = emb_forward_fma<T, decltype(cq)::value>;
      allow_smem(kernel, smem);
      kernel<<<grid, kEmbThreads, smem, stream()>>>(xp, wp, bp, lwp, lbp, A(eps), ptr<T>(pre_norm), ptr<T>(tokens),
                                                 ptr<A>(mean), ptr<A>(rstd), g);
      TS_CUDA_CHECK_LAUNCH();
    };
    switch (fma_cq(g.C)) {
      case 1: return launch(std::integral_constant<int, 1>{});
      case 2: return launch(std::integral_constant<int, 2>{});
      case 4: return launch(std::integral_constant<int, 4>{});
      default: return launch(std::integral_constant<int, 8>{});
    }
  });
}

void CudaBackend::conv_embedding_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                                          const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight,
                                          const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                          Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias) {
  const char* op = "conv_embedding_backward";
  if (!backward_fused(weight.defined() ? weight.size(0) : 0, int(dtype_size(x.dtype())), a.groups))
    return Backend::conv_embedding_backward(dtokens, x, weight, a, pre_norm, ln_weight, mean, rstd, dx, dweight,
                                            dbias, dln_weight, dln_bias);
  const Geo g = geometry(op, x, weight, a, pre_norm, mean, rstd);
  check_t(op, dtokens, x, "dtokens", {g.N, g.P, g.C});
  if (ln_weight.defined()) check_t(op, ln_weight, x, "ln_weight", {g.C});
  for (auto [t, name] : {std::pair{&dln_weight, "dln_weight"}, std::pair{&dln_bias, "dln_bias"}})
    if (t->defined()) check_t(op, *t, x, name, {g.C});
  const bool want_conv = dx.defined() || dweight.defined() || dbias.defined();
  if (g.N * g.P == 0) {  // no tokens: every gradient is zero
    for (Tensor* t : {&dx, &dweight, &dbias, &dln_weight, &dln_bias})
      if (t->defined()) fill(*t, 0.0);
    return;
  }
  Tensor dpre = want_conv ? Tensor::empty({g.N, g.C, g.Ho, g.Wo}, x.dtype(), Device::CUDA) : Tensor();
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t tiles = bwd_tiles(g.P), rows = tiles * g.N;
    const DType adt = dtype_of<A>::value;
    Tensor pw = dln_weight.defined() ? Tensor::empty({rows, g.C}, adt, Device::CUDA) : Tensor();
    Tensor pb = dln_bias.defined() ? Tensor::empty({rows, g.C}, adt, Device::CUDA) : Tensor();
    if (!want_conv && !pw.defined() && !pb.defined()) return;
    if (g.N > 65535) fail("conv_embedding_backward (cuda): batch " + std::to_string(g.N) + " exceeds 65535");
    const size_t smem = bwd_smem_bytes(g.C, int(sizeof(T)));
    allow_smem(emb_ln_backward<T>, smem);
    emb_ln_backward<T><<<dim3(unsigned(tiles), unsigned(g.N)), kEmbThreads, smem, stream()>>>(
        ptr<T>(dtokens), ptr<T>(pre_norm), ptr<T>(ln_weight), ptr<A>(mean), ptr<A>(rstd), ptr<T>(dpre), ptr<A>(pw),
        ptr<A>(pb), g.P, int(g.C));
    TS_CUDA_CHECK_LAUNCH();
    for (auto [part, out] : {std::pair{&pw, &dln_weight}, std::pair{&pb, &dln_bias}}) {
      if (!part->defined()) continue;
      sum_partial_columns<T><<<unsigned((g.C + 31) / 32), dim3(32, 8), 0, stream()>>>(ptr<A>(*part), rows, g.C,
                                                                                  ptr<T>(*out));
      TS_CUDA_CHECK_LAUNCH();
    }
  });
  if (want_conv) conv2d_backward(dpre, x, weight, a, dx, dweight, dbias);
}

}  // namespace tessera
