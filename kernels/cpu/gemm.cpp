// CPU GEMM. fp32: the classic packed, cache-blocked design (Goto & van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication", 2008): B is packed into KC×NR panels that stay in L2, A
// into MR×KC micro-panels that stay in L1, and a register-tile micro-kernel written with GCC vector
// extensions (12 × 32 with AVX-512, 6 × 16 with AVX2, under -march=native) does the arithmetic. Tiles of C
// are spread over the thread pool; a deep product with few tiles splits its depth instead
// (gemm_f32_depth_split), and one too small to repay the packing runs in place (gemm_direct). bf16: the
// same blocking around AVX512-BF16 dot products (AMD's default), or the fp32 kernel itself, widening the
// operands as it packs them (Intel's; gemm_bf16, below). fp64 is a plain reference loop (used by the float64
// gradient checks).
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/intrinsics.h"
#include "engine/core/parallel.h"

namespace tessera {

namespace {

// The register tile is MR rows × two vectors, 2·MR accumulators. With AVX-512 a vector is 16 floats and the
// tile 12 × 32: an Intel Xeon with two 512-bit FMA ports retires twice the multiply-adds of 256-bit code
// (bench/RESULTS.md: 1.4-2.0× on bench_gemm's shapes), and 24 accumulators (27 of the 32 registers with the
// two B vectors and the broadcast) give 12 cycles of FMAs for every two vector loads of B, which streams
// from L2. On AMD's Zen 4, which splits a 512-bit FMA into two halves, a 6 × 32 tile ran level with 6 × 16;
// 12 × 32 has not been measured there. Otherwise (AVX2) a vector is 8 floats and the tile 6 × 16, whose 12
// accumulators leave AVX2's 16 registers room for the B row and the broadcast. Each element's sum runs
// along k in the same order and ends in the same epilogue whatever the tile, so results do not depend on it.
//
// The loops around the kernel (gemm_f32): for a task of MC rows × NC_TASK columns, each A micro-panel
// (MR × KC: 18 KiB with AVX-512) stays in L1 while the kernel runs it against every B micro-panel of the
// task (KC × NR, 48 KiB each, 384 KiB a task, from L2, fetched ahead in the kernel); the task's A block
// (MC × KC, 144 KiB) stays in L2 across the tasks that share it. A deeper KC means fewer passes over C
// (two for K = 768 instead of three). This replaced an 8 × 32 tile whose B micro-panel was to stay in L1
// (KC 256): it filled 32 of L1's 48 KiB, A's stream and C's lines evicted it, and the kernel, 98 % of the
// FMA peak on its own, ran at ~82 % inside the GEMM (bench/RESULTS.md, session 18).
#if defined(__AVX512F__)
constexpr int64_t kVecFloats = 16;
#else
constexpr int64_t kVecFloats = 8;
#endif
constexpr int64_t MR = kGemmTileRows;  // 12 with AVX-512, else 6 (cpu_backend.h)
typedef float vec __attribute__((vector_size(kVecFloats * sizeof(float))));
constexpr int64_t NR = 2 * kVecFloats;
constexpr int64_t KC = kGemmDepthPanel;  // depth of a packed panel (384)
constexpr int64_t MC = 96;               // rows of A packed per task: 96×384×4 = 144 KiB (L2)
constexpr int64_t NC_TASK = 256;         // columns of C per task
constexpr int64_t kBPrefetchDepths = 8;  // the kernel asks for B's row k + 8 (1 KiB ahead) at row k
static_assert(MC % MR == 0 && NC_TASK % NR == 0, "a task's rows and columns are whole micro-panels");

// Scratch that is written in full before it is read (packed panels, depth slices' partial sums): a
// std::vector would zero it first, which for small products (a 96 KiB A panel around a 32 × 32 tile) cost
// more than their arithmetic.
template <typename T> std::unique_ptr<T[]> scratch(int64_t n) { return std::unique_ptr<T[]>(new T[size_t(n)]); }

// An operand's element as the fp32 kernel computes with it: fp32 itself, or bf16 (its 16 bits) widened on
// the way into the packed panels, exactly (every bf16 value is an fp32 value). The bf16 operands then need
// no widened copy: the packing, which copies them anyway, converts them.
[[gnu::always_inline]] inline float widen_element(float v) { return v; }
[[gnu::always_inline]] inline float widen_element(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

template <typename E> struct Operand {  // element (r, c) of op(X) for a contiguous row-major X of E
  const E* p;
  int64_t ld;
  bool trans;
  float at(int64_t r, int64_t c) const { return widen_element(trans ? p[c * ld + r] : p[r * ld + c]); }
};

// n elements from src as fp32 into dst: a copy, or bf16 widened (the loop vectorises: a shift per lane).
template <typename E> [[gnu::always_inline]] inline void widen_into(const E* src, int64_t n, float* dst) {
  if constexpr (std::is_same_v<E, float>) std::memcpy(dst, src, size_t(n) * sizeof(float));
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = widen_element(src[i]);
}

#if defined(__AVX512F__)
// col[c][r] = src[r·lds + c] for r < rows (zero past them) and c < 16, in registers: pairs of rows
// interleaved by 32 then 64 bits (each 128-bit lane then holds 4 rows of one column), and the 128-bit lanes
// transposed as a 4 × 4 block. 64 shuffles per 256 floats, against a scalar loop's 256 strided stores.
[[gnu::always_inline]] inline void transpose16(const float* src, int64_t lds, int rows, __m512 (&col)[16]) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * lds) : _mm512_setzero_ps();
  for (int i = 0; i < 16; i += 2) {  // lane L: (r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]), then 4L+2, 4L+3
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  const auto pd = [](__m512 x) { return _mm512_castps_pd(x); };
  for (int g = 0; g < 16; g += 4) {  // r[g + c]'s lane L: rows g..g+3 of column 4L + c
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g]), pd(t[g + 2])));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g]), pd(t[g + 2])));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g + 1]), pd(t[g + 3])));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g + 1]), pd(t[g + 3])));
  }
  for (int c = 0; c < 4; ++c) {  // column 4L + c gathers lane L of r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    col[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    col[c + 4] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    col[c + 8] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    col[c + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// B's micro-panel rows: dst[c·ldd + j] = src[j·lds + c], 16 columns j of 16 depths c.
inline void pack_16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 col[16];
  transpose16(src, lds, 16, col);
  for (int c = 0; c < 16; ++c) _mm512_storeu_ps(dst + c * ldd, col[c]);
}

// A's micro-panel for 16 depths: dst[c·12 + i] = src[i·lds + c] for 12 rows i, 192 contiguous floats. Every
// 4 depths fill 3 vectors, each made of two columns by one two-source permute, so the stores are whole
// vectors (masked stores of 12 floats 48 bytes apart, most across two cache lines, had made the packing
// several times slower).
static_assert(MR == 12, "the AVX-512 packing writes 12-row panels");
// Lanes 0-11 of four vectors (four depths of a panel) as 48 contiguous floats: three whole-vector stores.
[[gnu::always_inline]] inline void store_4x12(const __m512 (&c)[4], float* dst) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19);  // c 0-11, c+1 0-3
  const __m512i middle = _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23);  // 4-11, 0-7
  const __m512i last = _mm512_setr_epi32(8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27);  // 8-11, 0-11
  _mm512_storeu_ps(dst, _mm512_permutex2var_ps(c[0], first, c[1]));
  _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(c[1], middle, c[2]));
  _mm512_storeu_ps(dst + 32, _mm512_permutex2var_ps(c[2], last, c[3]));
}
inline void pack_12x16(const float* src, int64_t lds, float* dst) {
  __m512 col[16];
  transpose16(src, lds, 12, col);
  for (int g = 0; g < 4; ++g) store_4x12({col[4 * g], col[4 * g + 1], col[4 * g + 2], col[4 * g + 3]}, dst + 48 * g);
}
// 12 consecutive elements as fp32 in lanes 0-11 (the rest zero), read under a mask: a transposed A's depth.
[[gnu::always_inline]] inline __m512 load12(const float* p) { return _mm512_maskz_loadu_ps(0x0FFF, p); }
#if defined(__AVX512BW__) && defined(__AVX512VL__)
constexpr bool kLoad12Bf16 = true;
[[gnu::always_inline]] inline __m512 load12(const uint16_t* p) {  // bf16's bits, widened: bits << 16
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(0x0FFF, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
#else
constexpr bool kLoad12Bf16 = false;
#endif
#elif defined(__AVX__)
// col[c][r] = src[r·lds + c] for r < rows (zero past them) and c < 8: pairs of rows interleaved by 32 bits,
// then by 64, which leaves each 128-bit lane holding 4 rows of one column; the lanes' halves then swapped
// across vectors. 24 shuffles per 64 floats, against the element loop's 64 strided stores, which had made
// the packing about 10 % of a CvT-13 training step on a Zen 3 core.
[[gnu::always_inline]] inline void transpose8(const float* src, int64_t lds, int rows, __m256 (&col)[8]) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_loadu_ps(src + i * lds) : _mm256_setzero_ps();
  for (int i = 0; i < 8; i += 2) {  // lane L: (r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]), then 4L+2, 4L+3
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {  // r[g + c]'s lane L: rows g..g+3 of column 4L + c
    r[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    r[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    r[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    r[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {  // column c: the low lanes of r[c] and r[4 + c]; column 4 + c: the high ones
    col[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);
    col[c + 4] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);
  }
}

// B's micro-panel rows: dst[c·ldd + j] = src[j·lds + c], 8 columns j of 8 depths c.
inline void pack_8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 col[8];
  transpose8(src, lds, 8, col);
  for (int c = 0; c < 8; ++c) _mm256_storeu_ps(dst + c * ldd, col[c]);
}

// A's micro-panel for 8 depths: dst[c·6 + i] = src[i·lds + c] for 6 rows i, 48 contiguous floats. Each
// depth's 8-float store runs 2 floats into the next depth's slots, which the next store overwrites; the
// last depth's is split in 4 + 2 so nothing past the 48 floats is written.
static_assert(MR == 6, "the AVX2 packing writes 6-row panels");
inline void pack_6x8(const float* src, int64_t lds, float* dst) {
  __m256 col[8];
  transpose8(src, lds, 6, col);
  for (int c = 0; c < 7; ++c) _mm256_storeu_ps(dst + c * 6, col[c]);
  _mm_storeu_ps(dst + 42, _mm256_castps256_ps128(col[7]));
  _mm_storel_pi(reinterpret_cast<__m64*>(dst + 46), _mm256_extractf128_ps(col[7], 1));
}
#endif

// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row micro-panels, k-major inside each: dst[(i/MR)*kc*MR + k*MR + i%MR].
// Whole panels get loops without per-element branches: for a transposed A each k is MR consecutive floats,
// otherwise MR rows are read side by side.
// bf16 blocks are widened into a small fp32 block first and transposed from there.
template <typename E>
void pack_a(const Operand<E>& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    float* panel = dst + (ir / MR) * kc * MR;
    const int64_t rows = std::min(MR, mc - ir);
    if (rows == MR && A.trans) {
      int64_t k = 0;
#if defined(__AVX512F__)
      // Four depths at a time, whole-vector stores (12-element copies, bf16 ones above all, had been most of
      // a weight gradient's time: with N = 32 the packing is as much work as the products).
      if constexpr (std::is_same_v<E, float> || kLoad12Bf16)
        for (; k + 4 <= kc; k += 4) {
          const E* at = A.p + (k0 + k) * A.ld + i0 + ir;
          store_4x12({load12(at), load12(at + A.ld), load12(at + 2 * A.ld), load12(at + 3 * A.ld)}, panel + k * MR);
        }
#endif
      for (; k < kc; ++k) widen_into(A.p + (k0 + k) * A.ld + i0 + ir, MR, panel + k * MR);
    } else if (rows == MR) {
      const E* r = A.p + (i0 + ir) * A.ld + k0;
      int64_t k = 0;
#if defined(__AVX512F__)
      for (; k + 16 <= kc; k += 16) {
        if constexpr (std::is_same_v<E, float>) {
          pack_12x16(r + k, A.ld, panel + k * MR);
        } else {
          alignas(64) float block[MR][16];
          for (int64_t i = 0; i < MR; ++i) widen_into(r + i * A.ld + k, 16, block[i]);
          pack_12x16(&block[0][0], 16, panel + k * MR);
        }
      }
#elif defined(__AVX__)
      for (; k + 8 <= kc; k += 8) {
        if constexpr (std::is_same_v<E, float>) {
          pack_6x8(r + k, A.ld, panel + k * MR);
        } else {
          alignas(32) float block[MR][8];
          for (int64_t i = 0; i < MR; ++i) widen_into(r + i * A.ld + k, 8, block[i]);
          pack_6x8(&block[0][0], 8, panel + k * MR);
        }
      }
#endif
      for (; k < kc; ++k)
        for (int64_t i = 0; i < MR; ++i) panel[k * MR + i] = widen_element(r[i * A.ld + k]);
    } else {  // an edge panel, zero past its rows (with 12-row tiles most small products have one: 32 = 12 + 12 + 8)
      std::fill(panel, panel + kc * MR, 0.f);
      if (A.trans) {
        for (int64_t k = 0; k < kc; ++k) widen_into(A.p + (k0 + k) * A.ld + i0 + ir, rows, panel + k * MR);
      } else {
        for (int64_t i = 0; i < rows; ++i) {
          const E* r = A.p + (i0 + ir + i) * A.ld + k0;
          for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = widen_element(r[k]);
        }
      }
    }
  }
}

// Packs op(B)[k0:k0+kc, j0:j0+nc] into NR-column panels: dst[(j/NR)*kc*NR + k*NR + j%NR]. Whole panels: a
// row of B is NR consecutive floats; a transposed B (a linear layer's weight) is read along its rows.
template <typename E>
void pack_b(const Operand<E>& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    float* panel = dst + (jr / NR) * kc * NR;
    const int64_t cols = std::min(NR, nc - jr);
    if (cols == NR && !B.trans) {
      for (int64_t k = 0; k < kc; ++k) widen_into(B.p + (k0 + k) * B.ld + j0 + jr, NR, panel + k * NR);
    } else if (cols == NR) {
      int64_t k = 0;
#if defined(__AVX512F__)
      for (; k + 16 <= kc; k += 16)
        for (int64_t h = 0; h < NR; h += 16) {
          const E* block = B.p + (j0 + jr + h) * B.ld + k0 + k;
          if constexpr (std::is_same_v<E, float>) {
            pack_16x16(block, B.ld, panel + k * NR + h, NR);
          } else {
            alignas(64) float wide[16][16];
            for (int64_t j = 0; j < 16; ++j) widen_into(block + j * B.ld, 16, wide[j]);
            pack_16x16(&wide[0][0], 16, panel + k * NR + h, NR);
          }
        }
#elif defined(__AVX__)
      for (; k + 8 <= kc; k += 8)
        for (int64_t h = 0; h < NR; h += 8) {
          const E* block = B.p + (j0 + jr + h) * B.ld + k0 + k;
          if constexpr (std::is_same_v<E, float>) {
            pack_8x8(block, B.ld, panel + k * NR + h, NR);
          } else {
            alignas(32) float wide[8][8];
            for (int64_t j = 0; j < 8; ++j) widen_into(block + j * B.ld, 8, wide[j]);
            pack_8x8(&wide[0][0], 8, panel + k * NR + h, NR);
          }
        }
#endif
      for (int64_t j = 0; j < NR; ++j) {
        const E* r = B.p + (j0 + jr + j) * B.ld + k0;
        for (int64_t kk = k; kk < kc; ++kk) panel[kk * NR + j] = widen_element(r[kk]);
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = 0; j < NR; ++j) panel[k * NR + j] = j < cols ? B.at(k0 + k, j0 + jr + j) : 0.f;
    }
  }
}

// out = alpha·v (+ bias) + beta·out, where beta 0 never reads out (C may be uninitialised).
inline void store_scaled(float& out, float v, float alpha, float beta, const float* bias = nullptr) {
  const float r = bias ? alpha * v + *bias : alpha * v;
  out = beta == 0.f ? r : r + beta * out;
}

// c[i][·] += Σ_k Ap[k·MR + i] · Bp[k·NR : k·NR + NR] for the tile's R rows: the depth loop. A function of its
// own rather than a lambda over the accumulators, whose capture takes their address. Inlined and unrolled
// whole at -O2 (the sanitized builds compile this file at -O2 too, CMakeLists.txt), the accumulators stay
// in registers; at -O1 every multiply-add went through memory that AddressSanitizer checks.
template <int64_t R, bool kPrefetchB>
[[gnu::always_inline]] inline void accumulate_tile(int64_t kc, const float* Ap, const float* Bp, vec (&c)[R][2]) {
  for (int64_t k = 0; k < kc; ++k) {
    vec b0, b1;
    std::memcpy(&b0, Bp + k * NR, sizeof(vec));
    std::memcpy(&b1, Bp + k * NR + kVecFloats, sizeof(vec));
    if constexpr (kPrefetchB) {  // B's row k + 8 (past the panel's end: the next panel's start, which the
      __builtin_prefetch(Bp + (k + kBPrefetchDepths) * NR);  // next call reads; a prefetch never faults)
      __builtin_prefetch(Bp + (k + kBPrefetchDepths) * NR + kVecFloats);
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < R; ++i) {
      float a = Ap[k * MR + i];
      c[i][0] += a * b0;
      c[i][1] += a * b1;
    }
  }
}

// C[0:rows, 0:cols] = alpha·(Ap·Bp) (+ bias[0:cols] on every row) + beta·C, for one tile of R ≤ MR rows
// (rows ≤ R) and NR columns; Ap is an MR-row micro-panel (row i of depth k at Ap[k·MR + i]), of which the
// kernel reads the first R rows.
template <int64_t R>
void micro_kernel_rows(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int64_t rows,
                       int64_t cols, float alpha, float beta, const float* bias) {
  // The tile of C is read (beta ≠ 0) and written only after the depth loop; asking for its lines now hides
  // their trip from L2/L3 behind the loop.
  for (int64_t i = 0; i < rows; ++i) {  // a row's first and last floats: both of its lines when C is aligned
    __builtin_prefetch(C + i * ldc, 1);
    __builtin_prefetch(C + i * ldc + cols - 1, 1);
  }
  vec c[R][2] = {};
  // A deep B micro-panel (32 KiB and more) streams from L2 and is fetched ahead (+3 % on 1576 × 768 × 3072);
  // a shallow one stays in cache, where the prefetches only cost issue slots (-5 % on cvt-tiny's 32-deep
  // 8192 × 32 × 128).
  if (kc >= 256) accumulate_tile<R, true>(kc, Ap, Bp, c);
  else accumulate_tile<R, false>(kc, Ap, Bp, c);
  // alpha·sum + beta·C by one vector formula for every element, in a whole tile or an edge one (through a
  // zero-padded copy): which elements sit in an edge tile depends on MR and NR, and a second, scalar
  // formula would round them differently, so results would depend on the tile. Vector stores also matter
  // for speed: with a shallow K they are most of the work.
  const bool whole = rows == R && cols == NR;
  alignas(64) float edge[R][NR];
  float* out = whole ? C : &edge[0][0];
  const int64_t ld = whole ? ldc : NR;
  if (!whole) {
    std::memset(edge, 0, sizeof edge);
    if (beta != 0.f)
      for (int64_t i = 0; i < rows; ++i) std::memcpy(edge[i], C + i * ldc, size_t(cols) * sizeof(float));
  }
  const vec va = vec{} + alpha, vb = vec{} + beta;
  vec vbias[2] = {};  // the tile's columns of the bias, zero past cols
  if (bias) std::memcpy(vbias, bias, size_t(cols) * sizeof(float));
  // Unrolled whole, the accumulators are stored straight from their registers (a loop kept the tile in a
  // zeroed stack array that every call cleared, spilled to and reloaded).
#pragma GCC unroll 16
  for (int64_t i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int64_t h = 0; h < 2; ++h) {
      float* o = out + i * ld + kVecFloats * h;
      vec r = va * c[i][h];
      // alpha·sum rounded before beta·C or the bias is added, in every copy of this function the compiler
      // makes: left to itself it fused the multiply into the add in one clone and not in another, so a
      // product's last bits depended on the caller (alpha ≠ 1 with beta ≠ 0: attention's dK and dQ). The
      // empty asm hides r's origin from the optimiser; a build without AVX (no FMA either, and a vector
      // wider than a register) takes it through memory.
#if defined(__x86_64__) && (defined(__AVX512F__) || defined(__AVX__))
      asm("" : "+v"(r));
#else
      asm("" : "+m"(r));
#endif
      if (bias) r += vbias[h];
      if (beta != 0.f) {  // beta 0: never read C
        vec old;
        std::memcpy(&old, o, sizeof(vec));
        r += vb * old;
      }
      std::memcpy(o, &r, sizeof(vec));
    }
  if (!whole)
    for (int64_t i = 0; i < rows; ++i) std::memcpy(C + i * ldc, edge[i], size_t(cols) * sizeof(float));
}

// One tile through the kernel with the fewest rows that covers it: an edge panel's rows past `rows` are zeros,
// and with 12-row tiles most small products end in one (a weight gradient's 32 output rows are 12 + 12 + 8, 64
// are 5·12 + 4), whose padding the full kernel would multiply out (36 rows of work for 32). Each element's sum
// is the same chain of multiply-adds in every instance, so the results do not depend on which one runs.
constexpr int64_t kTwoThirdsRows = MR * 2 / 3, kThirdRows = MR / 3;  // 8 and 4 with AVX-512, 4 and 2 without
void micro_kernel(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int64_t rows,
                  int64_t cols, float alpha, float beta, const float* bias) {
  if (rows > kTwoThirdsRows) return micro_kernel_rows<MR>(kc, Ap, Bp, C, ldc, rows, cols, alpha, beta, bias);
  if (rows > kThirdRows) return micro_kernel_rows<kTwoThirdsRows>(kc, Ap, Bp, C, ldc, rows, cols, alpha, beta, bias);
  micro_kernel_rows<kThirdRows>(kc, Ap, Bp, C, ldc, rows, cols, alpha, beta, bias);
}

// Depth slices for a deep product with few output tiles, 1024 deep (at 4·KC = 1536, cvt-tiny's weight
// gradients, 32 or 128 × 8192 × 32, had fewer slices to spread and ran 10 % slower on 2 threads).
constexpr int64_t KSLICE = 1024;

}  // namespace

// Two slices deep or more, and fewer than 4 blocks of MC × NC_TASK (a task each) to spread.
bool gemm_splits_depth(int64_t M, int64_t N, int64_t K) {
  return K >= 2 * KSLICE && ((M + MC - 1) / MC) * ((N + NC_TASK - 1) / NC_TASK) < 4;
}

namespace {

template <typename E> Operand<E> depth_window(const Operand<E>& X, int64_t k0, bool depth_is_row) {  // op(X) from depth k0 on
  const bool rows = depth_is_row != X.trans;  // is the depth index a row of the stored matrix?
  return {X.p + (rows ? k0 * X.ld : k0), X.ld, X.trans};
}

template <typename E>
void gemm_f32(const Operand<E>& A, const Operand<E>& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
              float beta, bool parallel, const float* bias = nullptr, const BlockEpilogue* after = nullptr);

// One depth panel's two phases: pack every B panel, then run the tiles, across the pool or (a batch of
// matrices already spread over the threads) here. Tiles go out in chunks of at least about a million
// multiply-adds (`task_macs` each task), up to 16 a thread rather than parallel_for's usual 4: tasks are
// equal but few (a ViT-B/16 projection at batch 8 has 51), and with 4 chunks a thread one thread was often
// left finishing a chunk alone, while shallow products' small tasks would spend the finer hand-offs' gain on
// the hand-offs (a product of a few such tasks stays on one thread). bench_gemm on 2 cores: 197/768/768
// 175 → 206-208, 512³ 230 → 274-277, 1024³ 260 → 287-293 GFLOP/s.
template <typename Pack, typename Tiles>
void pack_then_tiles(bool parallel, int64_t panels, const Pack& pack, int64_t tasks, int64_t task_macs,
                     const Tiles& tiles) {
  if (parallel) {
    parallel_for(panels, 4, pack);
    parallel_for(tasks, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(task_macs, 1)), tiles, 16);
  } else {
    pack(0, panels);
    tiles(0, tasks);
  }
}

// C = alpha·Σ_s (A·B over depth slice s) + beta·C, the slices in parallel into private buffers and added in
// slice order. Weight gradients need it: dW [out, in] = dYᵀ·X sums over every token of the batch (depth in
// the thousands) into a few tiles, which the tile loop would leave to one thread. The split depends on the
// shape alone (gemm_splits_depth), never on the thread count, so every machine computes the same sums.
template <typename E>
void gemm_f32_depth_split(const Operand<E>& A, const Operand<E>& B, float* C, int64_t M, int64_t N, int64_t K,
                          float alpha, float beta, const float* bias, const BlockEpilogue* after) {
  const int64_t slices = (K + KSLICE - 1) / KSLICE;
  const auto partial = scratch<float>(slices * M * N);
  parallel_for(slices, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t k0 = s * KSLICE;
      gemm_f32(depth_window(A, k0, false), depth_window(B, k0, true), partial.get() + s * M * N, M, N,
               std::min(KSLICE, K - k0), 1.f, 0.f, false);
    }
  });
  parallel_for(M, std::max<int64_t>(1, 4096 / N), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; ++j) {
        float sum = 0.f;
        for (int64_t s = 0; s < slices; ++s) sum += partial[(s * M + i) * N + j];
        store_scaled(C[i * N + j], sum, alpha, beta, bias ? bias + j : nullptr);
      }
    if (after) (*after)(i0, i1 - i0, 0, N);
  });
}

// Products too small to repay packing (a small model's per-head attention products: 17 × 5 over 64,
// 64 × 16 over 32), computed in place. With B's rows contiguous (B not transposed) a row of C gathers
// A(i, k)·B[k, :] along the row; with both operands contiguous along k, each element is a dot product in
// kLanes independent partial sums (the loop vectorises without reassociating), added in a fixed order.
constexpr int64_t kDirectMax = 32768;  // M·N·K
template <typename E>
void gemm_direct(const Operand<E>& A, const Operand<E>& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
                 float beta, const float* bias) {
  if (!B.trans) {
    std::vector<float> row(static_cast<size_t>(N));
    for (int64_t i = 0; i < M; ++i) {
      std::fill(row.begin(), row.end(), 0.f);
      for (int64_t k = 0; k < K; ++k) {
        const float a = A.at(i, k);
        const E* b = B.p + k * B.ld;
        for (int64_t j = 0; j < N; ++j) row[size_t(j)] += a * widen_element(b[j]);
      }
      for (int64_t j = 0; j < N; ++j) store_scaled(C[i * N + j], row[size_t(j)], alpha, beta, bias ? bias + j : nullptr);
    }
    return;
  }
  constexpr int64_t kLanes = 8;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float lane[kLanes] = {};
      int64_t k = 0;
      if (!A.trans) {
        const E *a = A.p + i * A.ld, *b = B.p + j * B.ld;
        for (; k + kLanes <= K; k += kLanes)
          for (int64_t l = 0; l < kLanes; ++l) lane[l] += widen_element(a[k + l]) * widen_element(b[k + l]);
      }
      for (; k < K; ++k) lane[k % kLanes] += A.at(i, k) * B.at(k, j);
      float sum = 0.f;
      for (int64_t l = 0; l < kLanes; ++l) sum += lane[l];
      store_scaled(C[i * N + j], sum, alpha, beta, bias ? bias + j : nullptr);
    }
}

// E: the operands' elements, float, or bf16's bits (uint16_t) widened as they are packed.
// bias (optional): N floats added to every row of alpha·A·B before beta·C, in the first depth panel's epilogue.
// after (optional): called on each finished block of C, by the thread that finished it (the last depth
// panel's tasks), while the block is still in that core's cache.
template <typename E>
void gemm_f32(const Operand<E>& A, const Operand<E>& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
              float beta, bool parallel, const float* bias, const BlockEpilogue* after) {
  if (K == 0 || M * N * K <= kDirectMax) {
    if (K == 0)
      for (int64_t i = 0; i < M * N; ++i) C[i] = (bias ? bias[i % N] : 0.f) + (beta == 0.f ? 0.f : beta * C[i]);
    else
      gemm_direct(A, B, C, M, N, K, alpha, beta, bias);
    if (after) (*after)(0, M, 0, N);
    return;
  }
  if (gemm_splits_depth(M, N, K))  // also on one thread (serially): the split decides the sums
    return gemm_f32_depth_split(A, B, C, M, N, K, alpha, beta, bias, after);
  int64_t n_panels = (N + NR - 1) / NR;
  const auto Bp = scratch<float>(n_panels * NR * std::min(K, KC));
  const int64_t n_tasks = (N + NC_TASK - 1) / NC_TASK;
  // Row blocks of MC rows; but a product of fewer than two tasks a thread gets more, evenly sized (whole
  // micro-panels) blocks where its rows allow: a small CvT's 136 × 192 at batch 8 was a 96- and a 40-row task,
  // one thread doing 70 % of it. (Smaller blocks than MC otherwise cost B panel reuse: ViT-B/16's 197-row
  // products lost 8 %.) Tiles never change the results: each element's sum runs along k in the same order.
  int64_t mc_rows = MC;
  if (const int64_t threads = num_threads(); parallel && ((M + MC - 1) / MC) * n_tasks < 2 * threads) {
    const int64_t m_blocks = std::min((M + MR - 1) / MR, (2 * threads + n_tasks - 1) / n_tasks);
    mc_rows = std::min(MC, ((M + m_blocks - 1) / m_blocks + MR - 1) / MR * MR);
  }
  const int64_t m_tasks = (M + mc_rows - 1) / mc_rows;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    int64_t kc = std::min(KC, K - k0);
    float beta_k = k0 == 0 ? beta : 1.f;  // later depth panels accumulate onto the first
    const float* bias_k = k0 == 0 ? bias : nullptr;
    const BlockEpilogue* after_k = k0 + kc == K ? after : nullptr;
    auto pack_panels = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        pack_b(B, k0, kc, p * NR, std::min(NR, N - p * NR), Bp.get() + p * kc * NR);
    };
    auto tiles = [&](int64_t t0, int64_t t1) {
      const auto Ap = scratch<float>(mc_rows * kc);
      int64_t packed_i0 = -1;  // consecutive tasks share a row block: pack its A panel once for all of them
      for (int64_t t = t0; t < t1; ++t) {
        int64_t i0 = (t / n_tasks) * mc_rows, j0 = (t % n_tasks) * NC_TASK;
        int64_t mc = std::min(mc_rows, M - i0), nc = std::min(NC_TASK, N - j0);
        if (i0 != packed_i0) pack_a(A, i0, mc, k0, kc, Ap.get());
        packed_i0 = i0;
        for (int64_t ir = 0; ir < mc; ir += MR)  // A's micro-panel in L1, B's panels streamed from L2
          for (int64_t jr = 0; jr < nc; jr += NR)
            micro_kernel(kc, Ap.get() + (ir / MR) * kc * MR, Bp.get() + ((j0 + jr) / NR) * kc * NR,
                         C + (i0 + ir) * N + j0 + jr, N, std::min(MR, mc - ir), std::min(NR, nc - jr),
                         alpha, beta_k, bias_k ? bias_k + j0 + jr : nullptr);
        if (after_k) (*after_k)(i0, mc, j0, nc);
      }
    };
    pack_then_tiles(parallel, n_panels, pack_panels, m_tasks * n_tasks, std::min(mc_rows, M) * std::min(NC_TASK, N) * kc,
                    tiles);
  }
}


// ---------------------------------------------------------------- bf16
// bf16 operands, fp32 sums, one rounding of each result: C = bf16(alpha·Σ + beta·C), the contract's rule
// for 16-bit data. The products go to an fp32 buffer P; one pass then applies alpha and beta and rounds.
// Two ways to P:
//  native: AVX512-BF16's VDPBF16PS multiplies a pair of bf16 along the depth in each 32-bit lane and adds
//    both products to that lane's fp32 sum, twice the fp32 FMA's multiplies per instruction. The panels
//    therefore hold depth pairs: B as 32-bit words (B[2q, j], B[2q+1, j]) for depth pair q and column j,
//    NR16 = 32 columns (two 512-bit vectors) per pair; A as words (A[i, 2q], A[i, 2q+1]), MR16 = 8 rows per
//    pair, each broadcast to every lane. An odd depth pads its last pair with a zero.
//  widened: gemm_f32 itself, its packing widening the bf16 operands into the fp32 panels (Operand<uint16_t>),
//    each block of C rounded as the kernel finishes it. Same products (exact in fp32), another summation
//    order.
// Which is faster depends on the core, so the default does. AMD's Zen 4 issues VDPBF16PS as often as a
// 512-bit FMA: the dot products ran 1.7-2.2× the fp32 kernel there, and stay its default. An Intel Xeon with
// two 512-bit FMA ports issues it at half the FMA's rate, so it cannot beat the fp32 kernel: there the
// widened path runs 1.1-1.8× the dot products on every bench_gemm shape (1024³: 258 against 155 GFLOP/s;
// the weight gradient 32/8192/32: 155 against 130; bench/RESULTS.md) and is Intel's default.
constexpr int64_t MR16 = 8, NR16 = 32;
constexpr int64_t KC16 = 512;      // depth per packed panel: a 32-column B panel is 32 KiB, an A panel 8 KiB
constexpr int64_t MC16 = 96;       // rows per task (12 micro-panels)
constexpr int64_t NC16_TASK = 256; // columns per task (8 panels)

struct Operand16 {  // element (r, c) of op(X) for a contiguous row-major bf16 X
  const uint16_t* p;
  int64_t ld;
  bool trans;
  int64_t rows, cols;  // of op(X): reads outside are zero (the padding of edge panels and odd depths)
  uint16_t at(int64_t r, int64_t c) const {
    if (r >= rows || c >= cols) return 0;
    return trans ? p[c * ld + r] : p[r * ld + c];
  }
  uint32_t pair(int64_t r, int64_t c) const {  // (X(r, c), X(r, c + 1)) along the depth, c the row's depth
    return uint32_t(at(r, c)) | uint32_t(at(r, c + 1)) << 16;
  }
};

std::atomic<int> g_bf16_dot_products{-1};  // -1: not yet decided (the processor's answer), 0 off, 1 on

bool processor_has_avx512_bf16() {  // and the AVX-512 subsets the kernel's loads, masks and stores use
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// op(A)[i0:i0+mc, k0:k0+kc] as MR16-row panels of depth pairs: dst[(i/MR16)·pairs·MR16 + q·MR16 + i%MR16].
// A whole panel of a row-major A reads each pair as one 32-bit word, of a transposed A (a weight gradient's
// dYᵀ) interleaves two rows; edges go element by element, zero-padded.
void pack_a16(const Operand16& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, uint32_t* dst) {
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t ir = 0; ir < mc; ir += MR16) {
    uint32_t* panel = dst + (ir / MR16) * pairs * MR16;
    if (!A.trans && ir + MR16 <= mc && kc % 2 == 0) {
      for (int64_t i = 0; i < MR16; ++i) {
        const uint16_t* row = A.p + (i0 + ir + i) * A.ld + k0;
        for (int64_t q = 0; q < pairs; ++q) std::memcpy(panel + q * MR16 + i, row + 2 * q, 4);
      }
      continue;
    }
    if (A.trans && ir + MR16 <= mc && kc % 2 == 0) {
      for (int64_t q = 0; q < pairs; ++q) {
        const uint16_t *r0 = A.p + (k0 + 2 * q) * A.ld + i0 + ir, *r1 = r0 + A.ld;
        for (int64_t i = 0; i < MR16; ++i) panel[q * MR16 + i] = uint32_t(r0[i]) | uint32_t(r1[i]) << 16;
      }
      continue;
    }
    // An edge: rows past mc are past M, and an odd kc ends the depth (panels are even), so at()'s zeros
    // outside op(A) are the padding.
    for (int64_t q = 0; q < pairs; ++q)
      for (int64_t i = 0; i < MR16; ++i) panel[q * MR16 + i] = A.pair(i0 + ir + i, k0 + 2 * q);
  }
}

// op(B)[k0:k0+kc, j0:j0+NR16] as one panel of depth pairs: dst[q·NR16 + j] = (B[k0+2q, j], B[k0+2q+1, j]).
// A whole panel: a transposed B (a linear layer's weight) holds each pair as one 32-bit word; a row-major B
// interleaves two rows.
void pack_b16(const Operand16& B, int64_t k0, int64_t kc, int64_t j0, uint32_t* dst) {
  const int64_t pairs = (kc + 1) / 2;
  if (j0 + NR16 <= B.cols && kc % 2 == 0) {
    if (B.trans) {
      for (int64_t j = 0; j < NR16; ++j) {
        const uint16_t* row = B.p + (j0 + j) * B.ld + k0;
        for (int64_t q = 0; q < pairs; ++q) std::memcpy(dst + q * NR16 + j, row + 2 * q, 4);
      }
    } else {
      for (int64_t q = 0; q < pairs; ++q) {
        const uint16_t *r0 = B.p + (k0 + 2 * q) * B.ld + j0, *r1 = r0 + B.ld;
        for (int64_t j = 0; j < NR16; ++j) dst[q * NR16 + j] = uint32_t(r0[j]) | uint32_t(r1[j]) << 16;
      }
    }
    return;
  }
  for (int64_t q = 0; q < pairs; ++q) {
    const int64_t k = k0 + 2 * q;
    const bool second = 2 * q + 1 < kc;
    for (int64_t j = 0; j < NR16; ++j)
      dst[q * NR16 + j] = uint32_t(B.at(k, j0 + j)) | (second ? uint32_t(B.at(k + 1, j0 + j)) << 16 : 0u);
  }
}

// Where a tile's sums go. Not the last depth panel: into the fp32 buffer P (stored by the first panel,
// added to by the others). The last: P's earlier sums added, then C = bf16(alpha·sum + beta·C) straight from
// the registers (a product of one panel, most of a small model's, never touches P).
struct TileOut {
  float* P;  // the tile's corner in P (row stride ldp); null when the product has one panel
  int64_t ldp;
  bool first, last;
  bf16_t* C;  // the tile's corner in C (row stride ldc)
  int64_t ldc;
  float alpha, beta;
};

#if defined(__x86_64__)
#define TS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// 16 lanes of alpha·v + beta·C rounded to bf16 (to nearest, ties to even; NaN kept quiet: float_to_bf16's
// rule, vectorised) and stored where `m` says.
TS_AVX512_BF16 inline void store_bf16(bf16_t* c, __mmask16 m, __m512 v, float alpha, float beta) {
  v = _mm512_mul_ps(v, _mm512_set1_ps(alpha));
  if (beta != 0.f) {  // beta 0: never read C
    const __m512i old = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, c)), 16);
    v = _mm512_fmadd_ps(_mm512_castsi512_ps(old), _mm512_set1_ps(beta), v);
  }
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  _mm256_mask_storeu_epi16(c, m, _mm512_cvtepi32_epi16(r));
}

// One MR16×NR16 tile (rows × cols of it real) of Ap·Bp over `pairs` depth pairs, sent where `out` says.
TS_AVX512_BF16 void micro_kernel_bf16(int64_t pairs, const uint32_t* Ap, const uint32_t* Bp, int64_t rows,
                                      int64_t cols, const TileOut& out) {
  __m512 c[MR16][2];
  for (int64_t i = 0; i < MR16; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + q * NR16);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + q * NR16 + 16);
    for (int64_t i = 0; i < MR16; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(Ap[q * MR16 + i]));
      c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
    }
  }
  // The sums leave the registers through a buffer: an epilogue indexing c[i] up to a run-time `rows`
  // would make the compiler keep c in memory, storing all 16 accumulators on every step of the loop above.
  alignas(64) float tile[MR16][NR16];
  for (int64_t i = 0; i < MR16; ++i) {
    _mm512_store_ps(tile[i], c[i][0]);
    _mm512_store_ps(tile[i] + 16, c[i][1]);
  }
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : 0;
  for (int64_t i = 0; i < rows; ++i) {
    __m512 lo = _mm512_load_ps(tile[i]), hi = _mm512_load_ps(tile[i] + 16);
    if (!out.first) {
      const float* p = out.P + i * out.ldp;
      lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m0, p));
      hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m1, p + 16));
    }
    if (out.last) {
      bf16_t* row = out.C + i * out.ldc;
      store_bf16(row, m0, lo, out.alpha, out.beta);
      if (m1) store_bf16(row + 16, m1, hi, out.alpha, out.beta);
    } else {
      float* p = out.P + i * out.ldp;
      _mm512_mask_storeu_ps(p, m0, lo);
      _mm512_mask_storeu_ps(p + 16, m1, hi);
    }
  }
}
#endif

// C = bf16(alpha·op(A)·op(B) + beta·C), or (C null) the fp32 sums op(A)·op(B) into `sums` [M, N], with the
// native kernel (the caller checked the processor).
void gemm_bf16_native(const Operand16& A, const Operand16& B, bf16_t* C, float* sums, int64_t M, int64_t N,
                      int64_t K, float alpha, float beta, bool parallel) {
#if defined(__x86_64__)
  const int64_t n_panels = (N + NR16 - 1) / NR16, m_tasks = (M + MC16 - 1) / MC16,
                n_tasks = (N + NC16_TASK - 1) / NC16_TASK;
  const auto Bp = scratch<uint32_t>(n_panels * NR16 * ((std::min(K, KC16) + 1) / 2));
  std::vector<float> own(!sums && K > KC16 ? size_t(M * N) : 0);  // earlier panels' sums, stored before read
  float* P = sums ? sums : own.empty() ? nullptr : own.data();
  for (int64_t k0 = 0; k0 < K; k0 += KC16) {
    const int64_t kc = std::min(KC16, K - k0), pairs = (kc + 1) / 2;
    auto pack_panels = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) pack_b16(B, k0, kc, p * NR16, Bp.get() + p * pairs * NR16);
    };
    auto tiles = [&](int64_t t0, int64_t t1) {
      const auto Ap = scratch<uint32_t>(MC16 * pairs);
      int64_t packed_i0 = -1;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = (t / n_tasks) * MC16, j0 = (t % n_tasks) * NC16_TASK;
        const int64_t mc = std::min(MC16, M - i0), nc = std::min(NC16_TASK, N - j0);
        if (i0 != packed_i0) pack_a16(A, i0, mc, k0, kc, Ap.get());
        packed_i0 = i0;
        for (int64_t jr = 0; jr < nc; jr += NR16)
          for (int64_t ir = 0; ir < mc; ir += MR16) {
            const int64_t i = i0 + ir, j = j0 + jr;
            const TileOut out{P ? P + i * N + j : nullptr, N, k0 == 0, !sums && k0 + kc == K,
                              C ? C + i * N + j : nullptr, N, alpha, beta};
            micro_kernel_bf16(pairs, Ap.get() + (ir / MR16) * pairs * MR16, Bp.get() + (j / NR16) * pairs * NR16,
                              std::min(MR16, mc - ir), std::min(NR16, nc - jr), out);
          }
      }
    };
    pack_then_tiles(parallel, n_panels, pack_panels, m_tasks * n_tasks,
                    std::min(MC16, M) * std::min(NC16_TASK, N) * kc, tiles);
  }
#else
  (void)A, (void)B, (void)C, (void)sums, (void)M, (void)N, (void)K, (void)alpha, (void)beta, (void)parallel;
  fail("gemm: the bf16 dot-product kernel needs an x86-64 processor");
#endif
}

// One element of C = bf16(alpha·p + beta·C), p its fp32 sum; with beta 0 C is never read (it may be garbage).
inline void round_element(float p, bf16_t& c, float alpha, float beta) {
  const float old = beta == 0.f ? 0.f : beta * bf16_to_float(c);
  c = float_to_bf16(alpha * p + old);
}

// C = bf16(alpha·P + beta·C) over M×N, P the fp32 sums.
void round_into(const float* P, bf16_t* C, int64_t M, int64_t N, float alpha, float beta) {
  parallel_for(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0 * N; i < i1 * N; ++i) round_element(P[i], C[i], alpha, beta);
  });
}

// C = bf16(alpha·op(A)·op(B) + beta·C); or, C32 given instead of C, C32 = alpha·op(A)·op(B) in fp32 (beta 0).
void gemm_bf16(const Operand16& A, const Operand16& B, bf16_t* C, float* C32, int64_t M, int64_t N, int64_t K,
               float alpha, float beta, bool parallel) {
  const bool native = K > 0 && cpu_bf16_dot_products() && M * N * K > kDirectMax;
  const bool split = gemm_splits_depth(M, N, K);
  if (native && !split && C) return gemm_bf16_native(A, B, C, nullptr, M, N, K, alpha, beta, parallel);
  const auto own = scratch<float>(C32 ? 0 : M * N);
  float* P = C32 ? C32 : own.get();  // the fp32 sums
  if (K == 0) {
    std::fill(P, P + M * N, 0.f);
  } else if (!native) {  // widened: the fp32 kernel, packing the bf16 operands; C rounded block by block
    const BlockEpilogue round_block = [&](int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
      for (int64_t i = i0; i < i0 + rows; ++i)
        for (int64_t j = j0; j < j0 + cols; ++j) round_element(P[i * N + j], C[i * N + j], alpha, beta);
    };
    gemm_f32<uint16_t>({A.p, A.ld, A.trans}, {B.p, B.ld, B.trans}, P, M, N, K, 1.f, 0.f, parallel, nullptr,
                       C ? &round_block : nullptr);
    if (C) return;
  } else if (split) {  // weight gradients: depth slices in parallel, as gemm_f32 does, added in slice order
    const int64_t slices = (K + KSLICE - 1) / KSLICE;
    const auto partial = scratch<float>(slices * M * N);
    parallel_for(slices, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t k0 = s * KSLICE, kc = std::min(KSLICE, K - k0);
        Operand16 a = A, b = B;  // the slice's window: depth k0..k0+kc
        a.p += A.trans ? k0 * A.ld : k0, a.cols = kc;
        b.p += B.trans ? k0 : k0 * B.ld, b.rows = kc;
        gemm_bf16_native(a, b, nullptr, partial.get() + s * M * N, M, N, kc, 1.f, 0.f, false);
      }
    });
    std::fill(P, P + M * N, 0.f);
    parallel_for(M * N, 4096, [&](int64_t i0, int64_t i1) {  // each element summed in slice order
      for (int64_t s = 0; s < slices; ++s)
        for (int64_t i = i0; i < i1; ++i) P[i] += partial[s * M * N + i];
    });
  } else {
    gemm_bf16_native(A, B, nullptr, P, M, N, K, 1.f, 0.f, parallel);
  }
  if (!C32) return round_into(P, C, M, N, alpha, beta);
  if (alpha != 1.f)
    for (int64_t i = 0; i < M * N; ++i) C32[i] *= alpha;
}

// The batch: many small matrices (attention heads) one per thread; few large ones with their tiles spread.
template <typename Run> void each_matrix(const GemmArgs& g, const Run& run) {
  const bool small = g.M * g.N * g.K < (int64_t(1) << 21);
  if (g.batch >= num_threads() && small) {
    parallel_for(g.batch, 1, [&](int64_t b0, int64_t b1) { for (int64_t b = b0; b < b1; ++b) run(b, false); });
  } else {
    for (int64_t b = 0; b < g.batch; ++b) run(b, true);
  }
}

std::pair<Operand16, Operand16> operands16(const GemmArgs& g, int64_t b) {
  const int64_t lda = g.trans_a ? g.M : g.K, ldb = g.trans_b ? g.K : g.N;
  return {{&g.A.data<bf16_t>()->bits + b * g.stride_a, lda, g.trans_a, g.M, g.K},
          {&g.B.data<bf16_t>()->bits + b * g.stride_b, ldb, g.trans_b, g.K, g.N}};
}

template <typename T>
void gemm_reference(bool ta, bool tb, const T* A, const T* B, T* C, int64_t M, int64_t N, int64_t K, T alpha,
                    T beta) {
  parallel_for(M, std::max<int64_t>(1, 4096 / std::max<int64_t>(N * K, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; ++j) {
        T acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
        C[i * N + j] = beta == T(0) ? alpha * acc : alpha * acc + beta * C[i * N + j];
      }
  });
}

}  // namespace

void CpuBackend::gemm(const GemmArgs& g) {
  TS_CHECK(g.A.dtype() == g.B.dtype() && g.A.dtype() == g.C.dtype(), "gemm: operands must share a dtype");
  if (g.M == 0 || g.N == 0) return;
  if (g.A.dtype() == DType::f64) {
    for (int64_t b = 0; b < g.batch; ++b)
      gemm_reference<double>(g.trans_a, g.trans_b, g.A.data<double>() + b * g.stride_a,
                             g.B.data<double>() + b * g.stride_b, g.C.data<double>() + b * g.stride_c, g.M, g.N,
                             g.K, g.alpha, g.beta);
    return;
  }
  TS_CHECK(g.A.dtype() == DType::f32 || g.A.dtype() == DType::bf16,
           std::string("gemm on the CPU supports f32, f64 and bf16, not ") + dtype_name(g.A.dtype()));
  each_matrix(g, [&](int64_t b, bool parallel) {
    if (g.A.dtype() == DType::bf16) {
      const auto [A, B] = operands16(g, b);
      return gemm_bf16(A, B, g.C.data<bf16_t>() + b * g.stride_c, nullptr, g.M, g.N, g.K, float(g.alpha),
                       float(g.beta), parallel);
    }
    const Operand<float> A{g.A.data<float>() + b * g.stride_a, g.trans_a ? g.M : g.K, g.trans_a};
    const Operand<float> B{g.B.data<float>() + b * g.stride_b, g.trans_b ? g.K : g.N, g.trans_b};
    gemm_f32(A, B, g.C.data<float>() + b * g.stride_c, g.M, g.N, g.K, float(g.alpha), float(g.beta), parallel);
  });
}

// y = x·Wᵀ + bias with the bias added to each fp32 sum before its one rounding, no second pass over y: fp32
// in the micro kernel's epilogue, and a residual added to each block of y as the last depth panel finishes
// it (in cache); bf16 and f64 as the GEMM's beta = 1 onto rows that hold the bias, then the residual's add.
void CpuBackend::linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual,
                        Tensor& y) {
  const int64_t M = x.size(0), N = weight.size(0);
  if (y.dtype() == DType::f32) {
    const float* pr = residual.defined() ? residual.data<float>() : nullptr;
    float* py = y.data<float>();
    const BlockEpilogue add_residual = [&](int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
      for (int64_t i = i0; i < i0 + rows; ++i)
        for (int64_t j = j0; j < j0 + cols; ++j) py[i * N + j] += pr[i * N + j];
    };
    return gemm_f32<float>({x.data<float>(), x.size(1), false}, {weight.data<float>(), x.size(1), true}, py, M, N,
                    x.size(1), 1.f, 0.f, true, bias.data<float>(), pr ? &add_residual : nullptr);
  }
  const int64_t bytes = N * int64_t(dtype_size(y.dtype()));
  const char* b = static_cast<const char*>(bias.raw_data());
  char* out = static_cast<char*>(y.raw_data());
  parallel_for(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(bytes, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(out + r * bytes, b, size_t(bytes));
  });
  GemmArgs g;
  g.trans_b = true;
  g.M = M, g.N = N, g.K = x.size(1);
  g.beta = 1.0;
  g.A = x, g.B = weight, g.C = y;
  gemm(g);
  if (residual.defined()) binary(BinaryOp::Add, y, residual, y);  // elementwise: out may be an operand
}

void gemm_f32_then(const float* x, const float* weight, float* y, int64_t M, int64_t N, int64_t K,
                   const BlockEpilogue& after) {
  gemm_f32<float>({x, K, false}, {weight, K, true}, y, M, N, K, 1.f, 0.f, true, nullptr, &after);
}

void PackedB::pack(const float* B, int64_t ld, bool trans, int64_t K_, int64_t N_) {
  K = K_, N = N_;
  const int64_t n_panels = (N + NR - 1) / NR;
  panels.resize(size_t(n_panels * NR * K));  // written in full below
  const Operand<float> op{B, ld, trans};
  for (int64_t k0 = 0; k0 < K; k0 += KC)  // depth panel k0 of every column panel, as gemm_f32 packs it
    pack_b(op, k0, std::min(KC, K - k0), 0, N, panels.data() + n_panels * NR * k0);
}

void gemm_f32_packed(const float* A, int64_t lda, bool trans_a, const PackedB& B, float* C, int64_t ldc, int64_t M,
                     float alpha, float beta) {
  const int64_t n_panels = (B.N + NR - 1) / NR;
  thread_local std::vector<float> Ap;
  Ap.resize(size_t(MC * std::min(B.K, KC)));
  for (int64_t k0 = 0; k0 < B.K; k0 += KC) {
    const int64_t kc = std::min(KC, B.K - k0);
    const float beta_k = k0 == 0 ? beta : 1.f;  // later depth panels accumulate onto the first
    const float* bk = B.panels.data() + n_panels * NR * k0;
    for (int64_t i0 = 0; i0 < M; i0 += MC) {
      const int64_t mc = std::min(MC, M - i0);
      pack_a(Operand<float>{A, lda, trans_a}, i0, mc, k0, kc, Ap.data());
      for (int64_t ir = 0; ir < mc; ir += MR)
        for (int64_t p = 0; p < n_panels; ++p)
          micro_kernel(kc, Ap.data() + (ir / MR) * kc * MR, bk + p * kc * NR, C + (i0 + ir) * ldc + p * NR, ldc,
                       std::min(MR, mc - ir), std::min(NR, B.N - p * NR), alpha, beta_k, nullptr);
    }
  }
}

void gemm_bf16_into_f32(const GemmArgs& g) {
  TS_CHECK(g.A.dtype() == DType::bf16 && g.B.dtype() == DType::bf16 && g.C.dtype() == DType::f32 && g.beta == 0,
           "gemm_bf16_into_f32: A and B bf16, C f32, beta 0");
  if (g.M == 0 || g.N == 0) return;
  each_matrix(g, [&](int64_t b, bool parallel) {
    const auto [A, B] = operands16(g, b);
    gemm_bf16(A, B, nullptr, g.C.data<float>() + b * g.stride_c, g.M, g.N, g.K, float(g.alpha), 0.f, parallel);
  });
}

bool cpu_has_avx512_bf16() { return processor_has_avx512_bf16(); }
void set_cpu_bf16_dot_products(bool use) { g_bf16_dot_products = use && processor_has_avx512_bf16() ? 1 : 0; }
bool cpu_bf16_dot_products() {
  if (g_bf16_dot_products < 0) {  // the processor's default (the bf16 notes above): AMD's cores, not Intel's
    __builtin_cpu_init();
    g_bf16_dot_products = processor_has_avx512_bf16() && !__builtin_cpu_is("intel") ? 1 : 0;
  }
  return g_bf16_dot_products == 1;
}

}  // namespace tessera
