// CPU tests of the CUDA kernels' __host__ __device__ tiling and index arithmetic: attention tiles
// (kernels/cuda/attention_tiling.h), conv im2col/gather math (conv_math.h), the conv embedding's paths and
// fragments (conv_embedding_tiling.h), the layer norm's launch shapes and the cross-entropy formula
// (layer_norm_math.h); and the CPU's vectorisable float erf and exp (kernels/cpu/vector_math.h) against libm,
// its bf16 rounding against float_to_bf16.
// No device code runs: every machine, GPU or not.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <set>
#include <vector>

#include "engine/core/dtype.h"
#include "kernels/cpu/strided.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/cuda/attention_tiling.h"
#include "kernels/cuda/conv_embedding_tiling.h"
#include "kernels/cuda/conv_math.h"
#include "kernels/cuda/layer_norm_math.h"

namespace at = tessera::cuda::attn;
namespace cm = tessera::cuda::conv;
namespace emb = tessera::cuda::emb;
namespace ln = tessera::cuda::ln;

// ================================================================ attention tiling
TEST_CASE("attention tiling: tile counts and tail rows") {
  CHECK(at::num_tiles(0, 64) == 0);
  CHECK(at::num_tiles(1, 64) == 1);
  CHECK(at::num_tiles(64, 64) == 1);
  CHECK(at::num_tiles(65, 64) == 2);
  CHECK(at::num_tiles(197, 64) == 4);
  CHECK(at::num_tiles(3136, 64) == 49);
  CHECK(at::tile_rows(197, 0, 64) == 64);
  CHECK(at::tile_rows(197, 3, 64) == 5);  // 197 = 3·64 + 5: the tail tile
  CHECK(at::tile_rows(197, 4, 64) == 0);
  CHECK(at::tile_rows(50, 0, 64) == 50);
  CHECK(at::tile_rows(128, 1, 64) == 64);
  // Every length: the tiles' rows add up to the length, and only the last tile is partial.
  for (int64_t t : {1, 7, 50, 63, 64, 65, 129, 196, 197, 784, 3136})
    for (int64_t tile : {16, 32, 64}) {
      int64_t total = 0;
      for (int64_t i = 0; i < at::num_tiles(t, tile); ++i) {
        total += at::tile_rows(t, i, tile);
        if (i + 1 < at::num_tiles(t, tile)) CHECK(at::tile_rows(t, i, tile) == tile);
      }
      CHECK(total == t);
    }
}

TEST_CASE("attention tiling: the kernel head dim for any head dim") {
  CHECK(at::kernel_head_dim(1) == 32);
  CHECK(at::kernel_head_dim(16) == 32);
  CHECK(at::kernel_head_dim(32) == 32);
  CHECK(at::kernel_head_dim(33) == 64);
  CHECK(at::kernel_head_dim(64) == 64);
  CHECK(at::kernel_head_dim(100) == 128);
  CHECK(at::kernel_head_dim(128) == 128);
  CHECK(at::kernel_head_dim(129) == 0);  // unsupported: the op says so
}

TEST_CASE("attention tiling: tail mask and row offsets") {
  int64_t valid = 0;
  for (int64_t r = 0; r < 64; ++r) valid += at::row_valid(192, r, 197) ? 1 : 0;
  CHECK(valid == 5);
  CHECK(at::row_valid(0, 0, 1));
  CHECK_FALSE(at::row_valid(0, 1, 1));
  CHECK(at::row_offset(0, 0, 197, 64) == 0);
  CHECK(at::row_offset(0, 1, 197, 64) == 64);
  CHECK(at::row_offset(2, 3, 197, 64) == (2 * 197 + 3) * 64);
}

TEST_CASE("attention tiling: every configuration fits shared memory and wmma alignment") {
  for (int e : {2, 4, 8}) {
    const int a = e == 8 ? 8 : 4;
    const at::Config c = at::config(e);
    CHECK(c.bm == 16 * c.warps);
    CHECK(c.bnb == 16 * c.warps);
    CHECK(c.bn % 16 == 0);
    CHECK(c.bmb % 16 == 0);
    for (int D : {32, 64, 128}) {
      INFO("elem " << e << " D " << D);
      const auto f = at::fwd_only_layout(e, a, D), fq = at::fwd_layout(e, a, D);
      const auto b = at::bwd_layout(e, a, D);
      CHECK(f.total <= at::kMaxSmemBytes);
      CHECK(fq.total <= at::kMaxSmemBytes);
      CHECK(b.total <= at::kMaxSmemBytes);
      for (int64_t off : {fq.q, fq.dout, fq.k, fq.v, fq.s, fq.dp, fq.p, fq.acc, b.k, b.v, b.q, b.dout, b.lse,
                          b.delta, b.s, b.dp, b.p, b.dk, b.dv})
        CHECK(off % 128 == 0);
      if (e == 2) {  // wmma: 16-bit leading dims multiple of 8 elements, fp32 ones multiple of 4
        CHECK((D + at::pad_elems(e)) % 8 == 0);
        CHECK((c.bn + at::pad_elems(e)) % 8 == 0);
        CHECK((c.bmb + at::pad_elems(e)) % 8 == 0);
        CHECK((c.bn + at::kAccPad) % 4 == 0);
        CHECK((D + at::kAccPad) % 4 == 0);
      }
    }
  }
  // The sizes quoted in attention_tiling.h's comment (bf16, D = 128).
  MESSAGE("bf16 D=128 smem: fwd " << at::fwd_only_layout(2, 4, 128).total << " B, dq " << at::fwd_layout(2, 4, 128).total
                                  << " B, dkdv " << at::bwd_layout(2, 4, 128).total << " B");
}

// ================================================================ conv math
TEST_CASE("conv math: output size matches the definition") {
  for (int64_t in = 1; in <= 20; ++in)
    for (int64_t k = 1; k <= 7; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t p = 0; p <= 3; ++p) {
          if (in + 2 * p < k) continue;
          int64_t count = 0;  // window starts o·s − p with the window inside [−p, in + p)
          for (int64_t o = 0; o * s - p + k <= in + p; ++o) ++count;
          CHECK(cm::out_size(in, k, s, p) == count);
        }
  CHECK(cm::out_size(224, 7, 4, 2) == 56);
  CHECK(cm::out_size(56, 3, 2, 1) == 28);
  CHECK(cm::out_size(224, 16, 16, 0) == 14);
}

TEST_CASE("conv math: im2col source index and padding") {
  cm::Shape s{1, 3, 5, 7, 4, 3, 2, 0, 0, 2, 1, 1, 0, 1};
  s.Ho = cm::out_size(s.H, s.kh, s.sh, s.ph);
  s.Wo = cm::out_size(s.W, s.kw, s.sw, s.pw);
  for (int64_t r = 0; r < s.rows(); ++r)
    for (int64_t p = 0; p < s.P(); ++p) {
      const int64_t c = r / (s.kh * s.kw), i = r / s.kw % s.kh, j = r % s.kw, oh = p / s.Wo, ow = p % s.Wo;
      const int64_t eh = oh * s.sh - s.ph + i, ew = ow * s.sw - s.pw + j;
      int64_t gc = -1, gh = -1, gw = -1;
      const bool in = cm::im2col_source(s, r, p, gc, gh, gw);
      CHECK(in == (eh >= 0 && eh < s.H && ew >= 0 && ew < s.W));
      CHECK(gc == c);
      if (in) { CHECK(gh == eh); CHECK(gw == ew); }
    }
}

TEST_CASE("conv math: the gather's contributing outputs are exactly the readers of each input") {
  for (int64_t in_size = 1; in_size <= 17; in_size += 4)
    for (int64_t k = 1; k <= 5; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t p = 0; p <= 2; ++p) {
          if (in_size + 2 * p < k) continue;
          const int64_t out = cm::out_size(in_size, k, s, p);
          for (int64_t in = 0; in < in_size; ++in) {
            const cm::Range r = cm::contributors(in, k, s, p, out);
            for (int64_t o = 0; o < out; ++o) {
              const int64_t tap = in + p - o * s;
              const bool reads = tap >= 0 && tap < k;
              CHECK(reads == (o >= r.lo && o < r.hi));
            }
            CHECK(r.lo <= r.hi);
          }
        }
}

TEST_CASE("conv math: slices partition the range, chunks respect the budget") {
  for (int64_t M : {1, 2, 5, 100, 6272, 200704})
    for (int64_t S : {1, 2, 3, 7, 64}) {
      if (S > M) continue;
      int64_t next = 0;
      for (int64_t k = 0; k < S; ++k) {
        const cm::Range r = cm::slice(k, S, M);
        CHECK(r.lo == next);
        CHECK(r.hi > r.lo);
        next = r.hi;
      }
      CHECK(next == M);
    }
  for (int64_t C : {1, 64, 384, 100000})
    for (int64_t M : {1, 6272, 200704}) {
      const int64_t S = cm::slices_for(C, M, 132, 2048);
      CHECK(S >= 1);
      CHECK(S <= cm::kMaxSlices);
      CHECK(S <= std::max<int64_t>(1, (M + 2047) / 2048));
    }
  CHECK(cm::chunk_samples(64, 147 * 3136 * 2, cm::kIm2colBudget) == 64);
  CHECK(cm::chunk_samples(64, int64_t(100) << 20, cm::kIm2colBudget) == 2);
  CHECK(cm::chunk_samples(64, int64_t(1) << 30, cm::kIm2colBudget) == 1);
  CHECK(cm::chunk_samples(3, 0, cm::kIm2colBudget) == 3);
}

// ================================================================ conv embedding tiling
TEST_CASE("conv embedding tiling: path choice at the CvT widths and the limits") {
  using emb::Path;
  for (int64_t C : {64, 192, 384}) {
    CHECK(emb::forward_path(C, 2, 1) == Path::Wmma);
    CHECK(emb::forward_path(C, 4, 1) == Path::Fma);
    CHECK(emb::forward_path(C, 8, 1) == Path::Fma);
  }
  CHECK(emb::forward_path(600, 2, 1) == Path::Fma);
  CHECK(emb::forward_path(600, 8, 1) == Path::Composed);
  CHECK(emb::forward_path(1025, 4, 1) == Path::Composed);
  CHECK(emb::forward_path(64, 4, 2) == Path::Composed);
  CHECK(emb::wmma_frags_per_warp(64) == 2);
  CHECK(emb::wmma_frags_per_warp(192) == 6);
  CHECK(emb::wmma_frags_per_warp(384) == 12);
}

TEST_CASE("conv embedding tiling: fragments and channel passes cover C, shared memory fits") {
  for (int64_t C = 1; C <= emb::kMaxC; ++C) {
    INFO("C " << C);
    if (C <= emb::kMaxWmmaC) {
      const int fr = emb::wmma_frags_per_warp(C);
      CHECK(2 * fr * 16 >= C);                       // 2 warps per row block × fr fragments × 16 columns
      CHECK(fr <= 16);
      CHECK(emb::wmma_ldb(C) % 8 == 0);              // wmma ldm: a multiple of 16 bytes
      CHECK(emb::wmma_ldc(C) % 4 == 0);
      CHECK(emb::wmma_smem_bytes(C) <= emb::kSmemLimit);
    }
    const int cq = emb::fma_cq(C);
    CHECK(emb::fma_passes(C) * 32 * cq >= C);
    CHECK((emb::fma_passes(C) - 1) * 32 * cq < C);  // no empty pass
    CHECK(emb::fma_smem_bytes(C, 4) <= emb::kSmemLimit);
    if (C <= 512) CHECK(emb::fma_smem_bytes(C, 8) <= emb::kSmemLimit);
    for (int bytes : {2, 4}) CHECK(emb::backward_fused(C, bytes, 1));
    if (C <= 512) CHECK(emb::backward_fused(C, 8, 1));
  }
  CHECK(emb::kEmbThreads % emb::kWmmaBM == 0);  // each thread gathers for one fixed token
  CHECK(emb::kEmbThreads / 32 * 4 == emb::kFmaBM);
}

TEST_CASE("conv embedding tiling: decode_k inverts the weight's [Cin, kh, kw] order") {
  for (int64_t kh : {1, 3, 4, 7})
    for (int64_t kw : {1, 2, 7}) {
      int64_t k = 0;
      for (int64_t ci = 0; ci < 5; ++ci)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j, ++k) {
            const emb::Tap t = emb::decode_k(k, kh, kw);
            CHECK(t.ci == ci);
            CHECK(t.i == i);
            CHECK(t.j == j);
          }
    }
  CHECK(emb::bwd_tiles(3136) == 98);
  CHECK(emb::bwd_tiles(1) == 1);
  CHECK(emb::bwd_tiles(33) == 2);
}

// ================================================================ layer norm launch shapes
TEST_CASE("layer norm launch shape: vector width, chunks and column coverage") {
  for (int max_vec : {1, 2, 4, 8})
    for (bool aligned : {false, true})
      for (int64_t C = 1; C <= ln::kMaxWarpRowC; ++C) {
        const ln::WarpShape s = ln::warp_shape(C, max_vec, aligned);
        INFO("C " << C << " max_vec " << max_vec << " aligned " << aligned << " -> vec " << s.vec << " chunks " << s.chunks);
        REQUIRE((s.vec >= 1 && s.vec <= max_vec && (s.vec & (s.vec - 1)) == 0));
        REQUIRE(C % s.vec == 0);  // keeps every row start aligned
        if (!aligned) REQUIRE(s.vec == 1);
        REQUIRE(std::set<int>{1, 2, 3, 4, 6, 8, 16, 32}.count(s.chunks) == 1);
        REQUIRE(int64_t(32) * s.vec * s.chunks >= C);
        REQUIRE(s.vec * s.chunks <= 32);  // the kernels are instantiated for vec·chunks ≤ 32 only
        // Every column 0..C-1 is owned by exactly one (lane, chunk, component).
        std::vector<int> hits(size_t(C), 0);
        for (int lane = 0; lane < 32; ++lane)
          for (int k = 0; k < s.chunks; ++k)
            for (int v = 0; v < s.vec; ++v) {
              const int64_t col = ln::warp_column(lane, k, v, s.vec);
              if (col < C) ++hits[size_t(col)];
            }
        for (int64_t j = 0; j < C; ++j) REQUIRE(hits[size_t(j)] == 1);
      }
  // The model widths get every lane busy and no masked chunk (f32: max_vec 4, bf16: 8).
  struct Want { int64_t C; int max_vec, vec, chunks; };
  for (Want w : {Want{64, 4, 2, 1}, Want{192, 4, 2, 3}, Want{384, 4, 4, 3}, Want{768, 4, 4, 6}, Want{64, 8, 2, 1},
                 Want{192, 8, 2, 3}, Want{384, 8, 4, 3}, Want{768, 8, 8, 3}}) {
    const ln::WarpShape s = ln::warp_shape(w.C, w.max_vec, true);
    INFO("C " << w.C << " max_vec " << w.max_vec);
    CHECK(s.vec == w.vec);
    CHECK(s.chunks == w.chunks);
  }
}

TEST_CASE("layer norm backward partials: every row visited once, block count bounded") {
  for (int64_t rows : {1, 3, 8, 9, 257, 6272, 12608})
    for (int sms : {1, 7, 132})
      for (int per_sm : {1, 2, 4}) {
        const int64_t blocks = ln::backward_blocks(rows, sms, ln::kWarpsPerBlock, per_sm);
        INFO("rows " << rows << " sms " << sms << " per_sm " << per_sm << " blocks " << blocks);
        CHECK(blocks >= 1);
        CHECK(blocks <= int64_t(sms) * per_sm);
        CHECK(blocks <= (rows + ln::kWarpsPerBlock - 1) / ln::kWarpsPerBlock);
        int64_t total = 0;
        for (int64_t b = 0; b < blocks; ++b)
          for (int w = 0; w < ln::kWarpsPerBlock; ++w) total += ln::rows_of_warp(rows, blocks, b, w);
        CHECK(total == rows);
      }
  // The block-per-row kernel (rows_per_block 1) never gets more blocks than rows: each block's first row
  // initialises its scratch row.
  for (int64_t rows : {1, 2, 300}) CHECK(ln::backward_blocks(rows, 132, 1, 2) <= rows);
}

TEST_CASE("cross entropy loss from its device sums matches the reference formula") {
  // loss = (1 − ε)·a/W + (ε/C)·b/W
  CHECK(ln::cross_entropy_value<double>(3.0, 10.0, 2.0, 0.0, 4) == doctest::Approx(1.5));
  CHECK(ln::cross_entropy_value<double>(3.0, 10.0, 2.0, 0.1, 4) == doctest::Approx(0.9 * 1.5 + 0.025 * 5.0));
  // Without smoothing the smoothing sum is not used at all (as in the CPU reference).
  CHECK(std::isfinite(ln::cross_entropy_value<double>(3.0, INFINITY, 2.0, 0.0, 4)));
  // Every target ignored: W = 0, the loss is NaN as in torch.
  CHECK(std::isnan(ln::cross_entropy_value<float>(0.f, 0.f, 0.f, 0.1f, 4)));
}

// ================================================================ CPU row-block sums
TEST_CASE("cpu sum_over_rows: every row added once, across block splits and the column-parallel final sum") {
  // Integer-valued terms: every double sum is exact, so the result must equal the naive sum exactly. The
  // shapes cross the block sizes (32 to 256 rows, by width) and the final sum's column split.
  for (auto [rows, width] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {31, 5}, {33, 600}, {257, 33}, {1000, 1}, {544, 768}, {394, 3072}, {8192, 3}}) {
    CAPTURE(rows);
    CAPTURE(width);
    auto term = [&](int64_t r, int64_t c) { return double((r * 7 + c * 13) % 17) - 8; };
    std::vector<int> visits(size_t(rows), 0);
    const std::vector<double> got = tessera::sum_over_rows(rows, width, [&](int64_t r, double* acc) {
      ++visits[size_t(r)];  // each row in exactly one block, so no two threads touch one entry
      for (int64_t c = 0; c < width; ++c) acc[c] += term(r, c);
    });
    REQUIRE(int64_t(got.size()) == width);
    CHECK(std::all_of(visits.begin(), visits.end(), [](int v) { return v == 1; }));
    int64_t wrong = 0;
    for (int64_t c = 0; c < width; ++c) {
      double want = 0;
      for (int64_t r = 0; r < rows; ++r) want += term(r, c);
      wrong += got[size_t(c)] != want;
    }
    CHECK(wrong == 0);
  }
}

// ================================================================ CPU float erf
TEST_CASE("cpu::erf_float stays within its fit's error plus its float evaluation's") {
  // Bound, relative to |erf(x)|, empirical: the rational fit errs by at most 6.5e-8 relative on [−4, 4] (and
  // beyond, where the clamp returns the fit at ±4 and erf is within 1.6e-8 of ±1); its Horner steps, the
  // division and the result's rounding in float bring the sweep's worst to 6.3·2^-24 ≈ 3.7e-7, near ±4.
  // 8·2^-24 leaves room for another compiler's contraction of the multiply-adds. A wrong coefficient or a
  // sign slip is off by far more than that somewhere on the sweep.
  constexpr double kBound = 8 * 0x1p-24;
  double worst = 0, at = 0;
  auto check = [&](float x) {
    const double ref = std::erf(double(x)), got = double(tessera::cpu::erf_float(x));
    const double rel = std::fabs(got - ref) / std::max(std::fabs(ref), 1e-300);
    if (rel > worst) worst = rel, at = x;
  };
  for (int64_t i = -2000000; i <= 2000000; ++i) check(float(double(i) * 5e-6));  // [−10, 10], step 5e-6
  for (float x = 1e-30f; x < 1e-2f; x *= 1.001f) check(x), check(-x);            // tiny arguments
  INFO("worst relative error " << worst << " at x = " << at);
  CHECK(worst <= kBound);
  CHECK(worst > 0);  // the sweep did compare an approximation, not std::erf itself
  CHECK(tessera::cpu::erf_float(0.f) == 0.f);
  CHECK(tessera::cpu::erf_float(INFINITY) == 1.f);
  CHECK(tessera::cpu::erf_float(-INFINITY) == -1.f);
  CHECK(std::isnan(tessera::cpu::erf_float(NAN)));
}

TEST_CASE("cpu::exp_neg_half_square stays within 4·2^-24 relative of exp(-x^2/2)") {
  // Bound, empirical: exp_float's ≤ 2·2^-24, the correction 1 − l/2 for the square's low part and the last
  // product's rounding come to 2.9·2^-24 on this sweep where the result is a normal float, and 1.5 steps of
  // 2^-149 in the subnormal range (|x| ≥ 13.2); 4·2^-24 and two steps leave room for another compiler's
  // contractions. Without the low part the error grows with x² (65·2^-24 at |x| = 12): the sweep catches it.
  double worst = 0, at = 0;
  for (int64_t i = -4000000; i <= 4000000; ++i) {  // [−40, 40], step 1e-5: through the underflow to 0
    const float x = float(double(i) * 1e-5);
    const double ref = std::exp(-0.5 * double(x) * double(x)), got = double(tessera::cpu::exp_neg_half_square(x));
    const double excess = std::fabs(got - ref) / (ref >= 0x1p-126 ? 4 * 0x1p-24 * ref : 2 * 0x1p-149);
    if (excess > worst) worst = excess, at = x;
  }
  INFO("worst error / bound " << worst << " at x = " << at);
  CHECK(worst <= 1);
  CHECK(worst > 0);
  CHECK(tessera::cpu::exp_neg_half_square(0.f) == 1.f);
  CHECK(tessera::cpu::exp_neg_half_square(INFINITY) == 0.f);
  CHECK(tessera::cpu::exp_neg_half_square(-INFINITY) == 0.f);
  CHECK(tessera::cpu::exp_neg_half_square(20.f) == 0.f);
  CHECK(std::isnan(tessera::cpu::exp_neg_half_square(NAN)));
}

TEST_CASE("cpu::exp_float stays within 2·2^-24 relative of exp(x), over and under flow included") {
  // Bound, empirical: the degree-5 fit's own error (Cephes gives ~1e-7 relative on |r| ≤ ln(2)/2), the
  // float Horner steps' roundings and the final rounding come to 1.4·2^-24 relative on this sweep where the
  // result is a normal float, and 0.75 of the step 2^-149 in the subnormal range; 2·2^-24 and one step leave
  // room for another compiler's contraction of the multiply-adds. A wrong coefficient, a wrong half of ln 2
  // or a mis-split 2^k is off by far more somewhere on the sweep.
  double worst = 0, at = 0, worst_subnormal = 0, at_subnormal = 0;
  int64_t finite_past_overflow = 0;
  for (int64_t i = -11000000; i <= 9000000; ++i) {  // [−110, 90], step 1e-5: through both ends of float
    const float x = float(double(i) * 1e-5);
    const double ref = std::exp(double(x)), got = double(tessera::cpu::exp_float(x));
    if (ref > double(FLT_MAX)) {
      finite_past_overflow += !std::isinf(got);
    } else if (ref >= 0x1p-126) {
      const double e = std::fabs(got - ref) / (ref * 0x1p-24);
      if (e > worst) worst = e, at = x;
    } else {
      const double e = std::fabs(got - ref) / 0x1p-149;
      if (e > worst_subnormal) worst_subnormal = e, at_subnormal = x;
    }
  }
  INFO("worst " << worst << " · 2^-24 relative at x = " << at << "; subnormal " << worst_subnormal << " steps at "
                << at_subnormal);
  CHECK(worst <= 2);
  CHECK(worst > 0);  // the sweep did compare an approximation
  CHECK(worst_subnormal <= 1);
  CHECK(finite_past_overflow == 0);
  CHECK(tessera::cpu::exp_float(0.f) == 1.f);
  CHECK(tessera::cpu::exp_float(-INFINITY) == 0.f);
  CHECK(tessera::cpu::exp_float(-104.f) == 0.f);
  CHECK(std::isinf(tessera::cpu::exp_float(INFINITY)));
  CHECK(std::isnan(tessera::cpu::exp_float(NAN)));
}

TEST_CASE("cpu::round_to_bf16 gives the bits of float_to_bf16 widened back, NaN, infinities and ties included") {
  // Every 256th bit pattern (all exponents, both signs, the low half's tie 0x8000 and its neighbours 0x7f00
  // and 0x8100 among them), then the edges: float_to_bf16 is the rule; a wrong tie, carry or NaN case
  // differs somewhere.
  int64_t differ = 0;
  auto same = [&](uint32_t u) {
    const float v = std::bit_cast<float>(u);
    const uint32_t want = uint32_t(tessera::float_to_bf16(v).bits) << 16;
    differ += std::bit_cast<uint32_t>(tessera::cpu::round_to_bf16(v)) != want;
  };
  for (uint64_t u = 0; u <= 0xffffffffull; u += 256) same(uint32_t(u));
  for (uint32_t u : {0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u, 0x7f7fffffu, 0x7f800000u, 0xff800000u,
                     0x7fc00000u, 0x7f800001u, 0xffffffffu, 0x00008000u, 0x80018000u})
    same(u);
  CHECK(differ == 0);
}
