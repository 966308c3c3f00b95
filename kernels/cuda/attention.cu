// Fused multi-head attention on the GPU, FlashAttention-2 style (Dao, "FlashAttention-2: Faster Attention
// with Better Parallelism and Work Partitioning", 2023): out = softmax(scale·Q·Kᵀ)·V without ever holding
// the Tq×Tk score matrix in memory, plus the backward, and attention_probs for analysis tools.
//
// Kernels (geometry and shared-memory layouts in attention_tiling.h):
//   attn_fwd_kernel     block = bm query rows of one head (4 warps × 16 rows). K/V stream through shared
//                       memory in tiles of bn keys. Each warp computes its 16×bn scores S = Q·Kᵀ, updates
//                       its rows' running max m and sum l (online softmax), rescales its 16×D output
//                       accumulator by exp(m_old − m_new) and adds P·V. At the end O /= l, and
//                       lse = m + log l is written: the backward recomputes P = exp(scale·S − lse) from it
//                       instead of storing P (Tq·Tk per head), and attention_probs reuses it.
//   attn_delta_kernel   delta = rowsum(dO ∘ O) (= Σ_j P_ij·dP_ij), one warp per row.
//   attn_dkdv_kernel    block = bnb keys (4 warps × 16 keys), streams Q/dO tiles of bmb queries:
//                       Pᵀ = exp(scale·K·Qᵀ − lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ − delta),
//                       dK += dSᵀ·Q; dK·scale and dV are written once.
//   attn_dq_kernel      block = bm query rows, streams K/V tiles: S, P as forward, dP = dO·Vᵀ,
//                       dS = P∘(dP − delta), dQ += dS·K; dQ·scale written once.
// dQ choice: a separate pass (deterministic: every dQ element is summed by one warp in a fixed order)
// rather than fp32 atomicAdd from the dK/dV blocks. It recomputes Q·Kᵀ and dO·Vᵀ: 7 instead of 5 Tq×Tk×D
// products, so the backward does ≤ 1.4× the matmul work of the atomic scheme; the atomic variant is the
// first thing to benchmark against it (bench/bench_attention.cu) if the backward is compute-bound.
//
// Math. Scores are kept in the log2 domain: s2 = S·scale·log2(e), p = exp2(s2 − m2) (one FFMA + ex2 per
// element, as FA2 does); lse is stored in natural log (lse = m2·ln2 + log l) as the backend contract says.
// Accumulation is fp32 for f32/bf16/f16 (f64 for f64): scores, l, the O/dK/dV/dQ accumulators and delta.
//   bf16/f16: products on tensor cores through nvcuda::wmma 16×16×16 fragments (bf16/f16 in, fp32
//             accumulate). wmma rather than raw mma.sync PTX: it is portable across sm_80/sm_90, needs no
//             hand-written fragment layouts, and its only cost here is that accumulator fragments have an
//             opaque register layout, so row-wise work (softmax, the per-row rescale of O) goes through
//             shared memory. P and dS are rounded to the storage type before their products (as FA2
//             does); m, l and the row sums use the unrounded fp32 values.
//   f32/f64:  the same kernels with plain FMA loops over the shared-memory tiles (exact fp32 math; no tf32).
// Tails: tiles past Tq/Tk are zero-filled in shared memory, keys past Tk get p = 0 (score −inf in the
// max), queries past Tq get p = 0 in the dK/dV pass, and nothing is written for rows that do not exist.
// Not yet done (measure first): accumulators kept in registers (mma.sync with known layouts), cp.async
// double-buffering of K/V, Hopper wgmma/TMA.
#include <mma.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_tiling.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

using namespace attn;

template <typename T> constexpr bool kTensorCores = std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>;
template <typename T> struct WmmaType;
template <> struct WmmaType<bf16_t> { using type = __nv_bfloat16; };
template <> struct WmmaType<f16_t> { using type = __half; };

constexpr double kLog2e = 1.4426950408889634074, kLn2 = 0.6931471805599453094;

// ---------------------------------------------------------------- warp-level tile products
// One warp computes a 16-row tile. A is [16][K] (row stride lda), C is fp32/f64 [16][N] (stride ldc), all in
// shared memory; N and K are multiples of 16. Tensor-core path: one 16×16 output fragment at a time, the
// A fragments loaded once. FMA path: lane e covers outputs e, e+32, ... (a whole row per 32 lanes when
// N ≥ 32, so A is a broadcast and B's rows, odd-strided, hit 32 different banks).

// C = A·Bᵀ, B [N][K] (a K or V tile, or Q/dO in the dK/dV pass: row-major [n][k] is Bᵀ column-major).
template <int N, int K, typename T, typename Acc>
__device__ __forceinline__ void warp_gemm_nt(const T* A, int lda, const T* B, int ldb, Acc* C, int ldc) {
  if constexpr (kTensorCores<T>) {
    using namespace nvcuda;
    using W = typename WmmaType<T>::type;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a[K / 16];
#pragma unroll
    for (int kb = 0; kb < K / 16; ++kb) wmma::load_matrix_sync(a[kb], reinterpret_cast<const W*>(A + kb * 16), lda);
#pragma unroll
    for (int nb = 0; nb < N / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::fill_fragment(c, 0.0f);
#pragma unroll
      for (int kb = 0; kb < K / 16; ++kb) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::col_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const W*>(B + nb * 16 * ldb + kb * 16), ldb);
        wmma::mma_sync(c, a[kb], b, c);
      }
      wmma::store_matrix_sync(C + nb * 16, c, ldc, wmma::mem_row_major);
    }
  } else {
    for (int e = threadIdx.x % 32; e < 16 * N; e += 32) {
      const int i = e / N, j = e % N;
      Acc s = 0;
#pragma unroll 8
      for (int k = 0; k < K; ++k) s += load(A[i * lda + k]) * load(B[j * ldb + k]);
      C[i * ldc + j] = s;
    }
  }
  __syncwarp();
}

// C += A·B, B [K][N] row-major (V, dO, Q or K tiles).
template <int N, int K, typename T, typename Acc>
__device__ __forceinline__ void warp_gemm_nn_acc(const T* A, int lda, const T* B, int ldb, Acc* C, int ldc) {
  if constexpr (kTensorCores<T>) {
    using namespace nvcuda;
    using W = typename WmmaType<T>::type;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a[K / 16];
#pragma unroll
    for (int kb = 0; kb < K / 16; ++kb) wmma::load_matrix_sync(a[kb], reinterpret_cast<const W*>(A + kb * 16), lda);
#pragma unroll
    for (int nb = 0; nb < N / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::load_matrix_sync(c, C + nb * 16, ldc, wmma::mem_row_major);
#pragma unroll
      for (int kb = 0; kb < K / 16; ++kb) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const W*>(B + kb * 16 * ldb + nb * 16), ldb);
        wmma::mma_sync(c, a[kb], b, c);
      }
      wmma::store_matrix_sync(C + nb * 16, c, ldc, wmma::mem_row_major);
    }
  } else {
    for (int e = threadIdx.x % 32; e < 16 * N; e += 32) {
      const int i = e / N, j = e % N;
      Acc s = C[i * ldc + j];
#pragma unroll 8
      for (int k = 0; k < K; ++k) s += load(A[i * lda + k]) * load(B[k * ldb + j]);
      C[i * ldc + j] = s;
    }
  }
  __syncwarp();
}

// ---------------------------------------------------------------- tile loads
// Block-cooperative copy of `rows` rows of a contiguous [*, D] global tile into shared memory (row stride
// ld); rows [rows, R) are zero-filled (the tail mask: zeros, never stale data or NaN, enter the products).
// 16-bit types move 16-byte chunks (host checks 16-byte alignment; D·2 and ld·2 are multiples of 16).
template <int R, int D, typename T>
__device__ __forceinline__ void load_tile(const T* g, int rows, T* s, int ld) {
  if constexpr (sizeof(T) == 2) {
    constexpr int C = D / 8;
    for (int idx = threadIdx.x; idx < R * C; idx += blockDim.x) {
      const int r = idx / C, c = idx % C;
      const uint4 v = r < rows ? reinterpret_cast<const uint4*>(g + int64_t(r) * D)[c] : make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(s + r * ld + c * 8) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < R * D; idx += blockDim.x) {
      const int r = idx / D, c = idx % D;
      s[r * ld + c] = r < rows ? g[int64_t(r) * D + c] : T(0);
    }
  }
}
template <typename Acc> __device__ __forceinline__ void zero_warp(Acc* p, int n) {
  for (int i = threadIdx.x % 32; i < n; i += 32) p[i] = Acc(0);
  __syncwarp();
}

template <typename T> struct Args {
  const T *q, *k, *v, *out, *dout;
  T *o, *dq, *dk, *dv;
  acc_t<T>* lse;  // forward writes it; the backward reads it
  acc_t<T>* delta;
  int Tq, Tk;
  acc_t<T> scale, scale2;  // scale, scale·log2(e)
};

// ---------------------------------------------------------------- forward
template <typename T, int D>
__global__ void __launch_bounds__(128) attn_fwd_kernel(Args<T> a) {
  using Acc = acc_t<T>;
  constexpr Config cfg = config(sizeof(T));
  constexpr int BM = cfg.bm, BN = cfg.bn, LD = D + pad_elems(sizeof(T));
  constexpr int LDS = BN + kAccPad, LDP = BN + pad_elems(sizeof(T)), LDO = D + kAccPad;
  constexpr FwdLayout L = fwd_only_layout(sizeof(T), sizeof(Acc), D);
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  Acc* sS = reinterpret_cast<Acc*>(smem + L.s) + warp * 16 * LDS;  // this warp's scores
  T* sP = reinterpret_cast<T*>(smem + L.p) + warp * 16 * LDP;      // its probabilities (storage type)
  Acc* sO = reinterpret_cast<Acc*>(smem + L.acc) + warp * 16 * LDO;  // its output accumulator

  const int64_t bh = blockIdx.y;
  const int q0 = blockIdx.x * BM;
  load_tile<BM, D>(a.q + row_offset(bh, q0, a.Tq, D), int(tile_rows(a.Tq, blockIdx.x, BM)), sQ, LD);
  zero_warp(sO, 16 * LDO);
  // Lanes 2r and 2r+1 own row r of the warp's 16 rows for the row-wise steps, each taking every other column.
  const int row = lane >> 1, half = lane & 1;
  Acc m = neg_inf<Acc>(), l = 0;  // running max (log2 domain) and this lane's share of the running sum
  for (int n0 = 0; n0 < a.Tk; n0 += BN) {
    const int valid = a.Tk - n0 < BN ? a.Tk - n0 : BN;
    __syncthreads();  // every warp is done with the previous K/V tile (and Q is loaded, first time)
    load_tile<BN, D>(a.k + row_offset(bh, n0, a.Tk, D), valid, sK, LD);
    load_tile<BN, D>(a.v + row_offset(bh, n0, a.Tk, D), valid, sV, LD);
    __syncthreads();
    warp_gemm_nt<BN, D>(sQ + warp * 16 * LD, LD, sK, LD, sS, LDS);
    // Online softmax on row `row`: new max over the valid keys (tail keys are skipped: p = 0), rescale.
    const Acc* srow = sS + row * LDS;
    Acc mt = neg_inf<Acc>();
    for (int c = half; c < valid; c += 2) mt = fmax(mt, srow[c] * a.scale2);
    mt = fmax(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const Acc m_new = fmax(m, mt);
    const Acc alpha = acc_exp2(m - m_new);  // 0 on the first tile (m = −inf); m_new is finite for finite inputs
    Acc ps = 0;
    for (int c = half; c < BN; c += 2) {
      const Acc p = c < valid ? acc_exp2(srow[c] * a.scale2 - m_new) : Acc(0);
      ps += p;
      sP[row * LDP + c] = store<T>(p);
    }
    l = l * alpha + ps;
    m = m_new;
    for (int c = half; c < D; c += 2) sO[row * LDO + c] *= alpha;
    __syncwarp();
    warp_gemm_nn_acc<D, BN>(sP, LDP, sV, LD, sO, LDO);
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  const int qi = q0 + warp * 16 + row;
  if (qi < a.Tq) {
    const Acc inv = Acc(1) / l;
    T* orow = a.o + row_offset(bh, qi, a.Tq, D);
    for (int c = half; c < D; c += 2) orow[c] = store<T>(sO[row * LDO + c] * inv);
    if (half == 0) a.lse[bh * a.Tq + qi] = (m + acc_log2(l)) * Acc(kLn2);
  }
}

// ---------------------------------------------------------------- backward: delta = rowsum(dO ∘ O)
template <typename T, int D>
__global__ void attn_delta_kernel(Args<T> a, int64_t rows) {
  using Acc = acc_t<T>;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    Acc s = 0;
#pragma unroll
    for (int c = lane; c < D; c += 32) s += load(a.dout[r * D + c]) * load(a.out[r * D + c]);
    s = warp_sum(s);
    if (lane == 0) a.delta[r] = s;
  }
}

// ---------------------------------------------------------------- backward: dK, dV
template <typename T, int D>
__global__ void __launch_bounds__(128) attn_dkdv_kernel(Args<T> a) {
  using Acc = acc_t<T>;
  constexpr Config cfg = config(sizeof(T));
  constexpr int BN = cfg.bnb, BM = cfg.bmb, LD = D + pad_elems(sizeof(T));
  constexpr int LDS = BM + kAccPad, LDP = BM + pad_elems(sizeof(T)), LDO = D + kAccPad;
  constexpr BwdLayout L = bwd_layout(sizeof(T), sizeof(Acc), D);
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  Acc* sL = reinterpret_cast<Acc*>(smem + L.lse);  // lse·log2(e) of the tile's queries
  Acc* sD = reinterpret_cast<Acc*>(smem + L.delta);
  Acc* sS = reinterpret_cast<Acc*>(smem + L.s) + warp * 16 * LDS;    // Sᵀ, then Pᵀ (fp32)
  Acc* sdP = reinterpret_cast<Acc*>(smem + L.dp) + warp * 16 * LDS;  // dPᵀ
  T* sP = reinterpret_cast<T*>(smem + L.p) + warp * 16 * LDP;        // Pᵀ, then dSᵀ, in the storage type
  Acc* sdK = reinterpret_cast<Acc*>(smem + L.dk) + warp * 16 * LDO;
  Acc* sdV = reinterpret_cast<Acc*>(smem + L.dv) + warp * 16 * LDO;

  const int64_t bh = blockIdx.y;
  const int k0 = blockIdx.x * BN;
  const int krows = int(tile_rows(a.Tk, blockIdx.x, BN));
  load_tile<BN, D>(a.k + row_offset(bh, k0, a.Tk, D), krows, sK, LD);
  load_tile<BN, D>(a.v + row_offset(bh, k0, a.Tk, D), krows, sV, LD);
  zero_warp(sdK, 16 * LDO);
  zero_warp(sdV, 16 * LDO);
  // Keys past Tk are zero rows: their scores are 0, not −inf, but their dK/dV rows are never written and
  // they feed nothing else (a warp's dK/dV depend only on its own keys), so no mask is needed for them.
  const int row = lane >> 1, half = lane & 1;
  for (int m0 = 0; m0 < a.Tq; m0 += BM) {
    const int valid = a.Tq - m0 < BM ? a.Tq - m0 : BM;
    __syncthreads();
    load_tile<BM, D>(a.q + row_offset(bh, m0, a.Tq, D), valid, sQ, LD);
    load_tile<BM, D>(a.dout + row_offset(bh, m0, a.Tq, D), valid, sdO, LD);
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
      sL[i] = i < valid ? a.lse[bh * a.Tq + m0 + i] * Acc(kLog2e) : Acc(0);
      sD[i] = i < valid ? a.delta[bh * a.Tq + m0 + i] : Acc(0);
    }
    __syncthreads();
    const T* kw = sK + warp * 16 * LD;
    warp_gemm_nt<BM, D>(kw, LD, sQ, LD, sS, LDS);  // Sᵀ = K·Qᵀ  [16 keys][BM queries]
    for (int c = half; c < BM; c += 2) {           // Pᵀ; queries past Tq get p = 0
      const Acc p = c < valid ? acc_exp2(sS[row * LDS + c] * a.scale2 - sL[c]) : Acc(0);
      sS[row * LDS + c] = p;
      sP[row * LDP + c] = store<T>(p);
    }
    __syncwarp();
    warp_gemm_nn_acc<D, BM>(sP, LDP, sdO, LD, sdV, LDO);            // dV += Pᵀ·dO
    warp_gemm_nt<BM, D>(sV + warp * 16 * LD, LD, sdO, LD, sdP, LDS);  // dPᵀ = V·dOᵀ
    for (int c = half; c < BM; c += 2)                               // dSᵀ = Pᵀ∘(dPᵀ − delta)
      sP[row * LDP + c] = store<T>(sS[row * LDS + c] * (sdP[row * LDS + c] - sD[c]));
    __syncwarp();
    warp_gemm_nn_acc<D, BM>(sP, LDP, sQ, LD, sdK, LDO);  // dK += dSᵀ·Q
  }
  const int kj = k0 + warp * 16 + row;
  if (kj < a.Tk) {
    for (int c = half; c < D; c += 2) {
      if (a.dk) a.dk[row_offset(bh, kj, a.Tk, D) + c] = store<T>(sdK[row * LDO + c] * a.scale);
      if (a.dv) a.dv[row_offset(bh, kj, a.Tk, D) + c] = store<T>(sdV[row * LDO + c]);
    }
  }
}

// ---------------------------------------------------------------- backward: dQ (separate, deterministic)
template <typename T, int D>
__global__ void __launch_bounds__(128) attn_dq_kernel(Args<T> a) {
  using Acc = acc_t<T>;
  constexpr Config cfg = config(sizeof(T));
  constexpr int BM = cfg.bm, BN = cfg.bn, LD = D + pad_elems(sizeof(T));
  constexpr int LDS = BN + kAccPad, LDP = BN + pad_elems(sizeof(T)), LDO = D + kAccPad;
  constexpr FwdLayout L = fwd_layout(sizeof(T), sizeof(Acc), D);
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  Acc* sS = reinterpret_cast<Acc*>(smem + L.s) + warp * 16 * LDS;
  Acc* sdP = reinterpret_cast<Acc*>(smem + L.dp) + warp * 16 * LDS;
  T* sdS = reinterpret_cast<T*>(smem + L.p) + warp * 16 * LDP;
  Acc* sdQ = reinterpret_cast<Acc*>(smem + L.acc) + warp * 16 * LDO;

  const int64_t bh = blockIdx.y;
  const int q0 = blockIdx.x * BM;
  const int qrows = int(tile_rows(a.Tq, blockIdx.x, BM));
  load_tile<BM, D>(a.q + row_offset(bh, q0, a.Tq, D), qrows, sQ, LD);
  load_tile<BM, D>(a.dout + row_offset(bh, q0, a.Tq, D), qrows, sdO, LD);
  zero_warp(sdQ, 16 * LDO);
  const int row = lane >> 1, half = lane & 1;
  const int qi = q0 + warp * 16 + row;
  // This row's lse (log2 domain) and delta, in registers; rows past Tq use 0 and are never written.
  const Acc lse2 = qi < a.Tq ? a.lse[bh * a.Tq + qi] * Acc(kLog2e) : Acc(0);
  const Acc dlt = qi < a.Tq ? a.delta[bh * a.Tq + qi] : Acc(0);
  for (int n0 = 0; n0 < a.Tk; n0 += BN) {
    const int valid = a.Tk - n0 < BN ? a.Tk - n0 : BN;
    __syncthreads();
    load_tile<BN, D>(a.k + row_offset(bh, n0, a.Tk, D), valid, sK, LD);
    load_tile<BN, D>(a.v + row_offset(bh, n0, a.Tk, D), valid, sV, LD);
    __syncthreads();
    warp_gemm_nt<BN, D>(sQ + warp * 16 * LD, LD, sK, LD, sS, LDS);   // S = Q·Kᵀ
    warp_gemm_nt<BN, D>(sdO + warp * 16 * LD, LD, sV, LD, sdP, LDS);  // dP = dO·Vᵀ
    for (int c = half; c < BN; c += 2) {  // dS = P∘(dP − delta); keys past Tk: p = 0
      const Acc p = c < valid ? acc_exp2(sS[row * LDS + c] * a.scale2 - lse2) : Acc(0);
      sdS[row * LDP + c] = store<T>(p * (sdP[row * LDS + c] - dlt));
    }
    __syncwarp();
    warp_gemm_nn_acc<D, BN>(sdS, LDP, sK, LD, sdQ, LDO);  // dQ += dS·K
  }
  if (qi < a.Tq)
    for (int c = half; c < D; c += 2) a.dq[row_offset(bh, qi, a.Tq, D) + c] = store<T>(sdQ[row * LDO + c] * a.scale);
}

// ---------------------------------------------------------------- attention_probs (analysis only)
template <typename T>
__global__ void attn_probs_kernel(const T* q, const T* k, const acc_t<T>* lse, T* probs, int64_t BH, int Tq,
                                  int Tk, int D, acc_t<T> scale) {
  using Acc = acc_t<T>;
  const int64_t n = BH * Tq * Tk;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / Tk, j = i % Tk, bh = row / Tq;
    const T* qr = q + row * D;
    const T* kr = k + (bh * Tk + j) * D;
    Acc s = 0;
    for (int d = 0; d < D; ++d) s += load(qr[d]) * load(kr[d]);
    probs[i] = store<T>(acc_exp(s * scale - lse[row]));
  }
}

// ---------------------------------------------------------------- host side
// Raises the dynamic shared-memory limit of one kernel instantiation once (the default cap is 48 KB). The
// kernel is a template argument, not a parameter: kernels of one signature share a pointer type, and the
// once-flag must be per kernel.
template <auto Kernel> void allow_smem(int64_t bytes) {
  static const bool done = [&] {
    TS_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    return true;
  }();
  (void)done;
}

// Calls f(integral_constant<D>) for the head dims the kernels are built for.
template <typename F> void visit_head_dim(int64_t D, const char* op, F&& f) {
  switch (D) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: break;
  }
  fail(std::string(op) + " (cuda): head dim D = " + std::to_string(D) + " is not supported (at most 128)");
}

// Head dims other than 32/64/128 (≤ 128) run zero-padded to kernel_head_dim(D): zero columns of q and k
// add nothing to the scores (the scale is explicit, never derived from D), zero columns of v give zero
// output columns, which are dropped; in the backward the zero columns of dout and out add nothing to
// delta, and the gradients' padded columns are dropped. It costs a padded copy of every operand; CvT's and
// ViT's head dim (64) never takes this path.
Tensor pad_head_dim(const Tensor& t, int64_t Dp) {
  if (!t.defined()) return t;
  Shape s = t.shape();
  s.back() = Dp;
  Tensor padded = Tensor::zeros(s, t.dtype(), Device::CUDA);
  Tensor head = padded.slice(3, 0, t.size(3));
  cuda_backend().copy(t, head);
  return padded;
}
Tensor padded_like(const Tensor& t, int64_t Dp) {
  if (!t.defined()) return t;
  Shape s = t.shape();
  s.back() = Dp;
  return Tensor::empty(s, t.dtype(), Device::CUDA);
}
void unpad_into(const Tensor& padded, Tensor& out) {
  if (out.defined()) cuda_backend().copy(padded.slice(3, 0, out.size(3)), out);
}

struct Dims { int64_t B, H, Tq, Tk, D; };

// Device, dtype, rank, shape, contiguity and alignment checks shared by the three entry points.
Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse) {
  check_on_cuda(q, op, "q");
  check_on_cuda(k, op, "k");
  if (v.defined()) check_on_cuda(v, op, "v");
  check_on_cuda(lse, op, "lse");
  const auto need4 = [&](const Tensor& t, const char* name) {
    if (t.dim() != 4) fail(std::string(op) + " (cuda): " + name + " must be [B,H,T,D], got " + t.str());
    check_contiguous(t, op, name);
  };
  need4(q, "q");
  need4(k, "k");
  if (v.defined()) { need4(v, "v"); check_same_dtype(q, v, op); }
  check_same_dtype(q, k, op);
  Dims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  if (k.size(0) != d.B || k.size(1) != d.H || k.size(3) != d.D || (v.defined() && v.shape() != k.shape()))
    fail(std::string(op) + " (cuda): shapes do not match: q " + q.str() + ", k " + k.str() +
         (v.defined() ? ", v " + v.str() : std::string()));
  const DType stat = stat_dtype(q.dtype());
  if (lse.dtype() != stat || lse.shape() != Shape{d.B, d.H, d.Tq})
    fail(std::string(op) + " (cuda): lse must be " + dtype_name(stat) + " [B,H,Tq] = " +
         shape_str(Shape{d.B, d.H, d.Tq}) + ", got " + lse.str());
  check_contiguous(lse, op, "lse");
  if (d.B * d.H > 65535 || d.Tq > (int64_t(1) << 30) || d.Tk > (int64_t(1) << 30))
    fail(std::string(op) + " (cuda): B·H = " + std::to_string(d.B * d.H) + " > 65535 or a sequence over 2^30");
  return d;
}
void check_like(const char* op, const Tensor& t, const Tensor& like, const char* name) {
  check_on_cuda(t, op, name);
  check_contiguous(t, op, name);
  check_same_dtype(t, like, op);
  if (t.shape() != like.shape())
    fail(std::string(op) + " (cuda): " + name + " " + t.str() + " must have shape " + shape_str(like.shape()));
}
// 16-bit tiles move in 16-byte vectors: each head's rows must start 16-byte aligned.
void check_aligned(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && dtype_size(t->dtype()) == 2 && reinterpret_cast<uintptr_t>(t->raw_data()) % 16 != 0)
      fail(std::string(op) + " (cuda): " + t->str() + " does not start on a 16-byte boundary");
}

template <typename T> Args<T> make_args(const Dims& d, double scale) {
  Args<T> a{};
  a.Tq = int(d.Tq);
  a.Tk = int(d.Tk);
  a.scale = acc_t<T>(scale);
  a.scale2 = acc_t<T>(scale * kLog2e);
  return a;
}
template <typename T> const T* cptr(const Tensor& t) { return static_cast<const T*>(t.raw_data()); }
template <typename T> T* mptr(const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; }

}  // namespace

void attention_probs(const Tensor& q, const Tensor& k, double scale, const Tensor& lse, Tensor& probs) {
  const Dims d = check_inputs("attention_probs", q, k, Tensor(), lse);
  check_on_cuda(probs, "attention_probs", "probs");
  check_contiguous(probs, "attention_probs", "probs");
  check_same_dtype(q, probs, "attention_probs");
  if (probs.shape() != Shape{d.B, d.H, d.Tq, d.Tk})
    fail("attention_probs (cuda): probs must be " + shape_str(Shape{d.B, d.H, d.Tq, d.Tk}) + ", got " + probs.str());
  if (probs.numel() == 0) return;
  visit_floating(q.dtype(), "attention_probs", [&](auto tag) {
    using T = decltype(tag);
    attn_probs_kernel<T><<<grid_for(probs.numel()), kThreads, 0, stream()>>>(
        cptr<T>(q), cptr<T>(k), static_cast<const acc_t<T>*>(lse.raw_data()), mptr<T>(probs), d.B * d.H,
        int(d.Tq), int(d.Tk), int(d.D), acc_t<T>(scale));
    TS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda

using namespace cuda;

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out,
                            Tensor& lse) {
  const Dims d = check_inputs("attention", q, k, v, lse);
  check_like("attention", out, q, "out");
  check_aligned("attention", {&q, &k, &v, &out});
  if (d.B * d.H * d.Tq == 0) return;
  if (d.Tk == 0) {  // an empty softmax: no keys, nothing to average (lse = log 0)
    fill(out, 0.0);
    fill(lse, -INFINITY);
    return;
  }
  if (const int64_t Dp = kernel_head_dim(d.D); Dp != d.D && Dp != 0) {
    Tensor out_p = padded_like(out, Dp);
    attention(pad_head_dim(q, Dp), pad_head_dim(k, Dp), pad_head_dim(v, Dp), scale, out_p, lse);
    return unpad_into(out_p, out);
  }
  visit_floating(q.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(d.D, "attention", [&](auto dtag) {
      constexpr int D = decltype(dtag)::value;
      constexpr Config cfg = config(sizeof(T));
      constexpr int64_t smem = fwd_only_layout(sizeof(T), sizeof(acc_t<T>), D).total;
      static_assert(smem <= kMaxSmemBytes, "forward tiles exceed shared memory");
      Args<T> a = make_args<T>(d, scale);
      a.q = cptr<T>(q); a.k = cptr<T>(k); a.v = cptr<T>(v); a.o = mptr<T>(out);
      a.lse = static_cast<acc_t<T>*>(lse.raw_data());
      allow_smem<attn_fwd_kernel<T, D>>(smem);
      const dim3 grid(unsigned(num_tiles(d.Tq, cfg.bm)), unsigned(d.B * d.H));
      attn_fwd_kernel<T, D><<<grid, cfg.warps * 32, smem, stream()>>>(a);
      TS_CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                                     Tensor& dv) {
  const char* op = "attention_backward";
  const Dims d = check_inputs(op, q, k, v, lse);
  check_like(op, dout, q, "dout");
  check_like(op, out, q, "out");
  if (dq.defined()) check_like(op, dq, q, "dq");
  if (dk.defined()) check_like(op, dk, k, "dk");
  if (dv.defined()) check_like(op, dv, v, "dv");
  check_aligned(op, {&dout, &q, &k, &v, &out, &dq, &dk, &dv});
  if (d.B * d.H == 0) return;
  if (d.Tq == 0 || d.Tk == 0) {  // no scores: every gradient is zero
    for (Tensor* g : {&dq, &dk, &dv})
      if (g->defined()) fill(*g, 0.0);
    return;
  }
  if (const int64_t Dp = kernel_head_dim(d.D); Dp != d.D && Dp != 0) {
    Tensor dq_p = padded_like(dq, Dp), dk_p = padded_like(dk, Dp), dv_p = padded_like(dv, Dp);
    attention_backward(pad_head_dim(dout, Dp), pad_head_dim(q, Dp), pad_head_dim(k, Dp), pad_head_dim(v, Dp),
                       pad_head_dim(out, Dp), lse, scale, dq_p, dk_p, dv_p);
    unpad_into(dq_p, dq);
    unpad_into(dk_p, dk);
    unpad_into(dv_p, dv);
    return;
  }
  visit_floating(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    visit_head_dim(d.D, op, [&](auto dtag) {
      constexpr int D = decltype(dtag)::value;
      constexpr Config cfg = config(sizeof(T));
      constexpr int64_t smem_kv = bwd_layout(sizeof(T), sizeof(Acc), D).total;
      constexpr int64_t smem_q = fwd_layout(sizeof(T), sizeof(Acc), D).total;
      static_assert(smem_kv <= kMaxSmemBytes && smem_q <= kMaxSmemBytes, "backward tiles exceed shared memory");
      Tensor delta = Tensor::empty({d.B * d.H * d.Tq}, lse.dtype(), Device::CUDA);
      Args<T> a = make_args<T>(d, scale);
      a.q = cptr<T>(q); a.k = cptr<T>(k); a.v = cptr<T>(v); a.out = cptr<T>(out); a.dout = cptr<T>(dout);
      a.dq = mptr<T>(dq); a.dk = mptr<T>(dk); a.dv = mptr<T>(dv);
      a.lse = static_cast<Acc*>(lse.raw_data());
      a.delta = static_cast<Acc*>(delta.raw_data());
      const int64_t rows = d.B * d.H * d.Tq;
      attn_delta_kernel<T, D><<<grid_for(rows * 32), kThreads, 0, stream()>>>(a, rows);
      TS_CUDA_CHECK_LAUNCH();
      if (dk.defined() || dv.defined()) {
        allow_smem<attn_dkdv_kernel<T, D>>(smem_kv);
        const dim3 grid(unsigned(num_tiles(d.Tk, cfg.bnb)), unsigned(d.B * d.H));
        attn_dkdv_kernel<T, D><<<grid, cfg.warps * 32, smem_kv, stream()>>>(a);
        TS_CUDA_CHECK_LAUNCH();
      }
      if (dq.defined()) {
        allow_smem<attn_dq_kernel<T, D>>(smem_q);
        const dim3 grid(unsigned(num_tiles(d.Tq, cfg.bm)), unsigned(d.B * d.H));
        attn_dq_kernel<T, D><<<grid, cfg.warps * 32, smem_q, stream()>>>(a);
        TS_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

}  // namespace tessera
