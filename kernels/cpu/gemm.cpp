// CPU GEMM. fp32: the classic packed, cache-blocked design (Goto & van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication", 2008): B is packed into KC×NR panels that stay in L2/L3, A
// into MR×KC micro-panels that stay in L1, and a 6×16 register-tile micro-kernel written with GCC vector
// extensions (AVX2/FMA with -march=native, SSE otherwise) does the arithmetic. Tiles of C are spread over
// the thread pool; a deep product with few tiles splits its depth instead (gemm_f32_depth_split), and one
// too small to repay the packing runs in place (gemm_direct). fp64 is a plain reference loop (used by the
// float64 gradient checks).
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "engine/core/parallel.h"

namespace tessera {

namespace {

constexpr int64_t MR = 6, NR = 16;  // register tile: 6 rows × 16 columns = 12 vectors of 8 floats
constexpr int64_t KC = 256;         // depth of a packed panel: an MR×KC A panel is 6 KiB (L1)
constexpr int64_t MC = 96;          // rows of A packed per task: 96×256×4 = 96 KiB (L2)
constexpr int64_t NC_TASK = 256;    // columns of C per task
typedef float v8 __attribute__((vector_size(32)));

struct Operand {  // element (r, c) of op(X) for a contiguous row-major X
  const float* p;
  int64_t ld;
  bool trans;
  float at(int64_t r, int64_t c) const { return trans ? p[c * ld + r] : p[r * ld + c]; }
};

// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row micro-panels, k-major inside each: dst[(i/MR)*kc*MR + k*MR + i%MR].
// Whole panels get loops without per-element branches: for a transposed A each k is MR consecutive floats,
// otherwise MR rows are read side by side.
void pack_a(const Operand& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    float* panel = dst + (ir / MR) * kc * MR;
    const int64_t rows = std::min(MR, mc - ir);
    if (rows == MR && A.trans) {
      for (int64_t k = 0; k < kc; ++k) std::memcpy(panel + k * MR, A.p + (k0 + k) * A.ld + i0 + ir, MR * sizeof(float));
    } else if (rows == MR) {
      const float* r = A.p + (i0 + ir) * A.ld + k0;
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < MR; ++i) panel[k * MR + i] = r[i * A.ld + k];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < MR; ++i) panel[k * MR + i] = i < rows ? A.at(i0 + ir + i, k0 + k) : 0.f;
    }
  }
}

// Packs op(B)[k0:k0+kc, j0:j0+nc] into NR-column panels: dst[(j/NR)*kc*NR + k*NR + j%NR]. Whole panels: a
// row of B is NR consecutive floats; a transposed B (a linear layer's weight) is read along its rows.
void pack_b(const Operand& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    float* panel = dst + (jr / NR) * kc * NR;
    const int64_t cols = std::min(NR, nc - jr);
    if (cols == NR && !B.trans) {
      for (int64_t k = 0; k < kc; ++k) std::memcpy(panel + k * NR, B.p + (k0 + k) * B.ld + j0 + jr, NR * sizeof(float));
    } else if (cols == NR) {
      for (int64_t j = 0; j < NR; ++j) {
        const float* r = B.p + (j0 + jr + j) * B.ld + k0;
        for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = r[k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = 0; j < NR; ++j) panel[k * NR + j] = j < cols ? B.at(k0 + k, j0 + jr + j) : 0.f;
    }
  }
}

// C[0:rows, 0:cols] = alpha·(Ap·Bp) + beta·C, for one MR×NR tile.
void micro_kernel(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int64_t rows,
                  int64_t cols, float alpha, float beta) {
  v8 c[MR][2] = {};
  for (int64_t k = 0; k < kc; ++k) {
    v8 b0, b1;
    std::memcpy(&b0, Bp + k * NR, sizeof(v8));
    std::memcpy(&b1, Bp + k * NR + 8, sizeof(v8));
    for (int64_t i = 0; i < MR; ++i) {
      float a = Ap[k * MR + i];
      c[i][0] += a * b0;
      c[i][1] += a * b1;
    }
  }
  if (rows == MR && cols == NR) {  // a whole tile: vector stores (with a shallow K they are most of the work)
    const v8 va = v8{} + alpha, vb = v8{} + beta;
    for (int64_t i = 0; i < MR; ++i) {
      float* out = C + i * ldc;
      for (int64_t h = 0; h < 2; ++h) {
        v8 r = va * c[i][h];
        if (beta != 0.f) {  // beta 0: never read C
          v8 old;
          std::memcpy(&old, out + 8 * h, sizeof(v8));
          r += vb * old;
        }
        std::memcpy(out + 8 * h, &r, sizeof(v8));
      }
    }
    return;
  }
  float tile[MR][NR];
  std::memcpy(tile, c, sizeof(tile));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      float& out = C[i * ldc + j];
      out = beta == 0.f ? alpha * tile[i][j] : alpha * tile[i][j] + beta * out;  // beta 0: never read C
    }
}

// Depth slices for a deep product with few output tiles: 4 packed panels each.
constexpr int64_t KSLICE = 4 * KC;

Operand depth_window(const Operand& X, int64_t k0, bool depth_is_row) {  // op(X) from depth k0 on
  const bool rows = depth_is_row != X.trans;  // is the depth index a row of the stored matrix?
  return {X.p + (rows ? k0 * X.ld : k0), X.ld, X.trans};
}

void gemm_f32(const Operand& A, const Operand& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
              float beta, bool parallel);

// C = alpha·Σ_s (A·B over depth slice s) + beta·C, the slices in parallel into private buffers and added in
// slice order. Weight gradients need it: dW [out, in] = dYᵀ·X sums over every token of the batch (depth in
// the thousands) into a few tiles, which the tile loop would leave to one thread. The split depends on the
// shape alone, never on the thread count, so every machine computes the same sums.
void gemm_f32_depth_split(const Operand& A, const Operand& B, float* C, int64_t M, int64_t N, int64_t K,
                          float alpha, float beta) {
  const int64_t slices = (K + KSLICE - 1) / KSLICE;
  std::vector<float> partial(size_t(slices * M * N));
  parallel_for(slices, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t k0 = s * KSLICE;
      gemm_f32(depth_window(A, k0, false), depth_window(B, k0, true), partial.data() + s * M * N, M, N,
               std::min(KSLICE, K - k0), 1.f, 0.f, false);
    }
  });
  parallel_for(M, std::max<int64_t>(1, 4096 / N), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; ++j) {
        float sum = 0.f;
        for (int64_t s = 0; s < slices; ++s) sum += partial[size_t((s * M + i) * N + j)];
        float& out = C[i * N + j];
        out = beta == 0.f ? alpha * sum : alpha * sum + beta * out;
      }
  });
}

// Products too small to repay packing (a small model's per-head attention products: 17 × 5 over 64,
// 64 × 16 over 32), computed in place. With B's rows contiguous (B not transposed) a row of C gathers
// A(i, k)·B[k, :] along the row; with both operands contiguous along k, each element is a dot product in
// kLanes independent partial sums (the loop vectorises without reassociating), added in a fixed order.
constexpr int64_t kDirectMax = 32768;  // M·N·K
void gemm_direct(const Operand& A, const Operand& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
                 float beta) {
  auto store = [&](float& out, float v) { out = beta == 0.f ? alpha * v : alpha * v + beta * out; };
  if (!B.trans) {
    std::vector<float> row(static_cast<size_t>(N));
    for (int64_t i = 0; i < M; ++i) {
      std::fill(row.begin(), row.end(), 0.f);
      for (int64_t k = 0; k < K; ++k) {
        const float a = A.at(i, k), *b = B.p + k * B.ld;
        for (int64_t j = 0; j < N; ++j) row[size_t(j)] += a * b[j];
      }
      for (int64_t j = 0; j < N; ++j) store(C[i * N + j], row[size_t(j)]);
    }
    return;
  }
  constexpr int64_t kLanes = 8;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float lane[kLanes] = {};
      int64_t k = 0;
      if (!A.trans) {
        const float *a = A.p + i * A.ld, *b = B.p + j * B.ld;
        for (; k + kLanes <= K; k += kLanes)
          for (int64_t l = 0; l < kLanes; ++l) lane[l] += a[k + l] * b[k + l];
      }
      for (; k < K; ++k) lane[k % kLanes] += A.at(i, k) * B.at(k, j);
      float sum = 0.f;
      for (int64_t l = 0; l < kLanes; ++l) sum += lane[l];
      store(C[i * N + j], sum);
    }
}

void gemm_f32(const Operand& A, const Operand& B, float* C, int64_t M, int64_t N, int64_t K, float alpha,
              float beta, bool parallel) {
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0.f ? 0.f : beta * C[i];
    return;
  }
  if (M * N * K <= kDirectMax) return gemm_direct(A, B, C, M, N, K, alpha, beta);
  if (parallel && K >= 2 * KSLICE && ((M + MC - 1) / MC) * ((N + NC_TASK - 1) / NC_TASK) < 4)
    return gemm_f32_depth_split(A, B, C, M, N, K, alpha, beta);
  int64_t n_panels = (N + NR - 1) / NR;
  std::vector<float, std::allocator<float>> Bp(size_t(n_panels * NR * std::min(K, KC)));
  int64_t m_tasks = (M + MC - 1) / MC, n_tasks = (N + NC_TASK - 1) / NC_TASK;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    int64_t kc = std::min(KC, K - k0);
    float beta_k = k0 == 0 ? beta : 1.f;  // later depth panels accumulate onto the first
    auto pack_panels = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        pack_b(B, k0, kc, p * NR, std::min(NR, N - p * NR), Bp.data() + p * kc * NR);
    };
    auto tiles = [&](int64_t t0, int64_t t1) {
      std::vector<float> Ap(size_t(MC * kc));
      int64_t packed_i0 = -1;  // consecutive tasks share a row block: pack its A panel once for all of them
      for (int64_t t = t0; t < t1; ++t) {
        int64_t i0 = (t / n_tasks) * MC, j0 = (t % n_tasks) * NC_TASK;
        int64_t mc = std::min(MC, M - i0), nc = std::min(NC_TASK, N - j0);
        if (i0 != packed_i0) pack_a(A, i0, mc, k0, kc, Ap.data());
        packed_i0 = i0;
        for (int64_t jr = 0; jr < nc; jr += NR)
          for (int64_t ir = 0; ir < mc; ir += MR)
            micro_kernel(kc, Ap.data() + (ir / MR) * kc * MR, Bp.data() + ((j0 + jr) / NR) * kc * NR,
                         C + (i0 + ir) * N + j0 + jr, N, std::min(MR, mc - ir), std::min(NR, nc - jr),
                         alpha, beta_k);
      }
    };
    if (parallel) {
      parallel_for(n_panels, 4, pack_panels);
      parallel_for(m_tasks * n_tasks, 1, tiles);
    } else {
      pack_panels(0, n_panels);
      tiles(0, m_tasks * n_tasks);
    }
  }
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
  TS_CHECK(g.A.dtype() == DType::f32, std::string("gemm on the CPU supports f32 and f64, not ") +
                                          dtype_name(g.A.dtype()));
  auto run = [&](int64_t b, bool parallel) {
    Operand A{g.A.data<float>() + b * g.stride_a, g.trans_a ? g.M : g.K, g.trans_a};
    Operand B{g.B.data<float>() + b * g.stride_b, g.trans_b ? g.K : g.N, g.trans_b};
    gemm_f32(A, B, g.C.data<float>() + b * g.stride_c, g.M, g.N, g.K, float(g.alpha), float(g.beta), parallel);
  };
  // Many small matrices (attention heads): one matrix per thread. Few large ones: tiles per thread.
  bool small = g.M * g.N * g.K < (int64_t(1) << 21);
  if (g.batch >= num_threads() && small) {
    parallel_for(g.batch, 1, [&](int64_t b0, int64_t b1) { for (int64_t b = b0; b < b1; ++b) run(b, false); });
  } else {
    for (int64_t b = 0; b < g.batch; ++b) run(b, true);
  }
}

}  // namespace tessera
