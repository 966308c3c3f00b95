// Tile geometry and index math of the fused attention kernels (kernels/cuda/attention.cu), kept apart so
// the CPU tests can check it: every function here is constexpr and __host__ __device__ under nvcc, plain
// inline C++ otherwise (tests/test_cuda_attention.cpp calls them in a build without CUDA).
//
// Geometry (FlashAttention-2 work split). A block has `warps` warps; every warp owns 16 rows, the height
// of one 16×16×16 tensor-core fragment:
//   forward and dQ pass: a block owns bm = 16·warps query rows and streams the keys in tiles of bn;
//   dK/dV pass:          a block owns bnb = 16·warps keys and streams the queries in tiles of bmb.
// A sequence of length T is cut into ceil(T / tile) tiles; the last (tail) tile holds T − (n−1)·tile rows.
// Its missing rows are zero-filled in shared memory (so no garbage, NaN included, enters a product) and
// masked where they would matter: keys past Tk get score −inf (probability exactly 0), queries past Tq
// get probability 0 in the dK/dV pass and are never written.
#pragma once
#include <cstdint>

#include "engine/core/tensor.h"

#if defined(__CUDACC__)
#define TS_ATT_HD __host__ __device__ __forceinline__ constexpr
#else
#define TS_ATT_HD inline constexpr
#endif

namespace tessera::cuda::attn {

TS_ATT_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Tiles covering a sequence of length t (0 for t = 0).
TS_ATT_HD int64_t num_tiles(int64_t t, int64_t tile) { return ceil_div(t, tile); }
// Rows of tile `index` that exist: `tile` for inner tiles, the remainder for the tail, 0 past the end.
TS_ATT_HD int64_t tile_rows(int64_t t, int64_t index, int64_t tile) {
  const int64_t left = t - index * tile;
  return left <= 0 ? 0 : left < tile ? left : tile;
}
// Whether row r of the tile starting at `start` is a real row of a length-t sequence (the tail mask).
TS_ATT_HD bool row_valid(int64_t start, int64_t r, int64_t t) { return start + r < t; }
// Element offset of row `t` of head `bh` (= b·H + h) in a contiguous [B, H, T, D] tensor.
TS_ATT_HD int64_t row_offset(int64_t bh, int64_t t, int64_t T, int64_t D) { return (bh * T + t) * D; }

// The head dim a kernel runs for a model's head dim D: the kernels are built for 32, 64 and 128, and any
// other D ≤ 128 runs zero-padded to the next of them (attention.cu); 0 when D > 128 (unsupported).
TS_ATT_HD int64_t kernel_head_dim(int64_t D) { return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 0; }

// Shared-memory row padding, in elements. Tensor-core loads (wmma::load_matrix_sync) need a leading
// dimension that is a multiple of 8 16-bit elements (16 bytes); 8 extra elements also shift successive
// rows by 16 bytes, which spreads the 16 rows of a fragment load over all banks instead of 2-way
// conflicts at D = 64. The FMA path (f32/f64) reads K rows lane-per-row, so an odd stride (+1) puts the
// 32 lanes in 32 different banks.
TS_ATT_HD int pad_elems(int elem_bytes) { return elem_bytes == 2 ? 8 : 1; }
// fp32/f64 scratch tiles (scores, accumulators) are written by wmma::store_matrix_sync too: +4 keeps the
// leading dimension a multiple of 4 floats (16 bytes) as it requires.
constexpr int kAccPad = 4;

struct Config {
  int warps, bm, bn, bnb, bmb;
};
// Tile sizes by element size. 16-bit and f32: 4 warps, 64 query rows × 64-key tiles forward, 64 keys ×
// 32-query tiles backward. Shared memory at D = 128 bf16 (printed by tests/test_cuda_attention.cpp):
// forward 110 KB (2 blocks per H100 SM), dQ pass 144 KB and dK/dV pass 140 KB (1 block per SM: the fp32
// accumulators and score tiles live in shared memory — moving them to registers is the first tuning step).
// f64 (the accuracy path, not a speed path) halves the tiles so D = 128 still fits the 227 KB limit.
TS_ATT_HD Config config(int elem_bytes) {
  return elem_bytes == 8 ? Config{2, 32, 32, 32, 16} : Config{4, 64, 64, 64, 32};
}

TS_ATT_HD int64_t align128(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// Shared-memory layouts (byte offsets, each region 128-byte aligned as wmma's 32-byte rule needs).
// e = element size of the storage type, a = size of the accumulation type (4 or 8), D = head dim.
struct FwdLayout {  // forward and dQ pass: Q/dO [bm][D], K/V [bn][D]; per warp two [16][bn] score tiles,
  int64_t q, dout, k, v, s, dp, p, acc, total;  // a [16][bn] operand tile (P or dS) and a [16][D] accumulator
};
TS_ATT_HD FwdLayout fwd_layout(int e, int a, int D) {
  const Config c = config(e);
  const int ld = D + pad_elems(e), lds = c.bn + kAccPad, ldp = c.bn + pad_elems(e), ldo = D + kAccPad;
  FwdLayout L{};
  L.q = 0;
  L.dout = L.q + align128(int64_t(c.bm) * ld * e);
  L.k = L.dout + align128(int64_t(c.bm) * ld * e);
  L.v = L.k + align128(int64_t(c.bn) * ld * e);
  L.s = L.v + align128(int64_t(c.bn) * ld * e);
  L.dp = L.s + align128(int64_t(c.warps) * 16 * lds * a);
  L.p = L.dp + align128(int64_t(c.warps) * 16 * lds * a);
  L.acc = L.p + align128(int64_t(c.warps) * 16 * ldp * e);
  L.total = L.acc + align128(int64_t(c.warps) * 16 * ldo * a);
  return L;
}
// The forward proper needs no dO tile and no dP tile: it uses a layout with those two regions empty.
TS_ATT_HD FwdLayout fwd_only_layout(int e, int a, int D) {
  const Config c = config(e);
  const int ld = D + pad_elems(e), lds = c.bn + kAccPad, ldp = c.bn + pad_elems(e), ldo = D + kAccPad;
  FwdLayout L{};
  L.q = 0;
  L.dout = L.q + align128(int64_t(c.bm) * ld * e);
  L.k = L.dout;
  L.v = L.k + align128(int64_t(c.bn) * ld * e);
  L.s = L.v + align128(int64_t(c.bn) * ld * e);
  L.dp = L.s + align128(int64_t(c.warps) * 16 * lds * a);
  L.p = L.dp;
  L.acc = L.p + align128(int64_t(c.warps) * 16 * ldp * e);
  L.total = L.acc + align128(int64_t(c.warps) * 16 * ldo * a);
  return L;
}
struct BwdLayout {  // dK/dV pass: K/V [bnb][D], Q/dO [bmb][D], lse/delta [bmb]; per warp P and dP
  int64_t k, v, q, dout, lse, delta, s, dp, p, dk, dv, total;  // [16][bmb], dS [16][bmb], dK/dV [16][D]
};
TS_ATT_HD BwdLayout bwd_layout(int e, int a, int D) {
  const Config c = config(e);
  const int ld = D + pad_elems(e), lds = c.bmb + kAccPad, ldp = c.bmb + pad_elems(e), ldo = D + kAccPad;
  BwdLayout L{};
  L.k = 0;
  L.v = L.k + align128(int64_t(c.bnb) * ld * e);
  L.q = L.v + align128(int64_t(c.bnb) * ld * e);
  L.dout = L.q + align128(int64_t(c.bmb) * ld * e);
  L.lse = L.dout + align128(int64_t(c.bmb) * ld * e);
  L.delta = L.lse + align128(int64_t(c.bmb) * a);
  L.s = L.delta + align128(int64_t(c.bmb) * a);
  L.dp = L.s + align128(int64_t(c.warps) * 16 * lds * a);
  L.p = L.dp + align128(int64_t(c.warps) * 16 * lds * a);
  L.dk = L.p + align128(int64_t(c.warps) * 16 * ldp * e);
  L.dv = L.dk + align128(int64_t(c.warps) * 16 * ldo * a);
  L.total = L.dv + align128(int64_t(c.warps) * 16 * ldo * a);
  return L;
}
// H100/H200: the most dynamic shared memory one block may opt into (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr int64_t kMaxSmemBytes = 227 * 1024;

}  // namespace tessera::cuda::attn

namespace tessera::cuda {

// Attention probabilities for analysis tools (attention maps): probs [B,H,Tq,Tk] = exp(scale·q·kᵀ − lse),
// using the lse the fused forward already wrote, so the fused path never materialises Tq×Tk. q [B,H,Tq,D],
// k [B,H,Tk,D], probs same dtype as q; lse f32 (f64 for f64 q). CUDA tensors, contiguous. Defined in
// attention.cu: only in builds with CUDA (callers guard with #ifdef TESSERA_HAS_CUDA).
void attention_probs(const Tensor& q, const Tensor& k, double scale, const Tensor& lse, Tensor& probs);

}  // namespace tessera::cuda
