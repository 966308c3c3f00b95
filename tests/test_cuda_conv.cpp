// The CUDA conv2d and batch-norm kernels (kernels/cuda/conv.cu, batch_norm.cu) against the CPU reference,
// plus CPU-runnable checks of their index arithmetic (kernels/cuda/conv_math.h).
//
// Method (as tests/test_cuda_layer_norm.cpp): inputs are drawn on the CPU and rounded to the dtype under
// test; the reference runs in f64 on those rounded values (kernels/cpu/nn.cpp), the GPU in the dtype.
// Tolerances, per element: u_c = the unit roundoff the GPU accumulates in (2^-24 for f32/bf16/f16, 2^-53
// for f64; the tests force MatmulPrecision::Highest, so no tf32). A sum of L terms, in any order, errs by at
// most γ_L·Σ|terms| ≈ L·u_c·Σ|terms| (Higham §4.2). The magnitude Σ|terms| of each output element is the
// reference op itself applied to |x|, |w|, |dy| (a conv of absolute values), so the bounds follow the data.
// Where an intermediate is stored in the dtype (the GEMM's output before the bias add; dcol before the
// col2im gather) one more relative u_T of the dtype (2^-8 bf16, 2^-11 f16, u_c otherwise) is added. The
// final store: one ulp of the output dtype. Each bound gets a factor 2 (4 for batch norm's chained
// formulas) of safety; a wrong index or a missing term shows up as an O(1) relative error instead.
//
// Without a usable GPU every GPU test prints why and returns; the conv_math tests always run.
#include <doctest/doctest.h>

#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <tuple>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "kernels/cuda/conv_math.h"

using namespace tessera;
namespace cm = tessera::cuda::conv;

namespace {

using namespace tessera::testing;

Tensor abs64(const Tensor& t) { return t.defined() ? tessera::abs(as_f64(t)) : Tensor(); }
Tensor like(const Tensor& t, DType dt, Device d) { return Tensor::empty(t.shape(), dt, d); }

void check_identical(const Tensor& a, const Tensor& b, const std::string& what) {
  INFO(what);
  CHECK(values(a) == values(b));
}

struct PrecisionGuard {  // the tolerances assume true fp32 GEMMs
  MatmulPrecision saved = matmul_precision();
  PrecisionGuard() { set_matmul_precision(MatmulPrecision::Highest); }
  ~PrecisionGuard() { set_matmul_precision(saved); }
};

// ---------------------------------------------------------------- conv2d
struct ConvCase {
  int64_t N, Cin, Cout, H, W, kh, kw, stride, pad, groups;
};
std::string describe(const ConvCase& c, DType dt, bool bias) {
  return "x [" + std::to_string(c.N) + "," + std::to_string(c.Cin) + "," + std::to_string(c.H) + "," +
         std::to_string(c.W) + "] Cout " + std::to_string(c.Cout) + " k " + std::to_string(c.kh) + "x" +
         std::to_string(c.kw) + " stride " + std::to_string(c.stride) + " pad " + std::to_string(c.pad) +
         " groups " + std::to_string(c.groups) + " " + dname(dt) + (bias ? " bias" : "");
}

void check_conv(const ConvCase& c, DType dt, bool with_bias, uint64_t seed) {
  INFO(describe(c, dt, with_bias));
  Conv2dArgs a;
  a.stride_h = a.stride_w = c.stride;
  a.pad_h = a.pad_w = c.pad;
  a.groups = c.groups;
  const int64_t Ho = cm::out_size(c.H, c.kh, c.stride, c.pad), Wo = cm::out_size(c.W, c.kw, c.stride, c.pad);
  Generator g(seed);
  Tensor x = g.uniform({c.N, c.Cin, c.H, c.W}, -1, 1, DType::f64).to(dt);
  Tensor w = g.uniform({c.Cout, c.Cin / c.groups, c.kh, c.kw}, -0.5, 0.5, DType::f64).to(dt);
  Tensor b = with_bias ? g.uniform({c.Cout}, -0.5, 0.5, DType::f64).to(dt) : Tensor();
  Tensor dy = g.uniform({c.N, c.Cout, Ho, Wo}, -1, 1, DType::f64).to(dt);

  // Reference and magnitudes (the same ops on absolute values), all in f64 on the CPU.
  auto ref_fwd = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
    Tensor y = Tensor::empty({c.N, c.Cout, Ho, Wo}, DType::f64);
    cpu_backend().conv2d(xx, ww, bb, a, y);
    return values(y);
  };
  auto ref_bwd = [&](const Tensor& gg, const Tensor& xx, const Tensor& ww) {
    Tensor dx = like(x, DType::f64, Device::CPU), dw = like(w, DType::f64, Device::CPU),
           db = Tensor::empty({c.Cout}, DType::f64);
    cpu_backend().conv2d_backward(gg, xx, ww, a, dx, dw, db);
    return std::vector<std::vector<double>>{values(dx), values(dw), values(db)};
  };
  const std::vector<double> yref = ref_fwd(as_f64(x), as_f64(w), as_f64(b)), ymag = ref_fwd(abs64(x), abs64(w), abs64(b));
  const auto gref = ref_bwd(as_f64(dy), as_f64(x), as_f64(w)), gmag = ref_bwd(abs64(dy), abs64(x), abs64(w));

  const Tensor xg = on_gpu(x), wg = on_gpu(w), bg = on_gpu(b), dyg = on_gpu(dy);
  Tensor yg = Tensor::empty({c.N, c.Cout, Ho, Wo}, dt, Device::CUDA);
  cuda_backend().conv2d(xg, wg, bg, a, yg);
  Tensor dxg = like(x, dt, Device::CUDA), dwg = like(w, dt, Device::CUDA), dbg = Tensor::empty({c.Cout}, dt, Device::CUDA);
  cuda_backend().conv2d_backward(dyg, xg, wg, a, dxg, dwg, dbg);

  const double uc = compute_roundoff(dt), ut = unit_roundoff(dt);
  const bool depthwise = c.Cin / c.groups == 1;
  const double Kf = double((c.Cin / c.groups) * c.kh * c.kw);
  // y: K-term dot product (+ the bias add, after the GEMM's output was stored in the dtype: u_T).
  const double ky = (Kf + 1) * uc + (with_bias && !depthwise ? ut : 0);
  check_close(values(yg), yref, [&](size_t i) { return ulp_of(yref[i], dt) + 2 * ky * ymag[i]; }, "y");
  // dx: ≤ Coutg·kh·kw terms; the GEMM path stores dcol in the dtype before the gather sums it.
  const double kx = (double(c.Cout / c.groups) * double(c.kh * c.kw) + 1) * uc + (depthwise ? 0 : ut);
  check_close(values(dxg), gref[0], [&](size_t i) { return ulp_of(gref[0][i], dt) + 2 * kx * gmag[0][i]; }, "dx");
  // dweight and dbias: sums over N·Ho·Wo pixels (one GEMM / slice tree per chunk), + one dtype rounding
  // per batch chunk (≤ 1 here: a whole test batch fits the im2col budget).
  const double kw_ = (double(c.N * Ho * Wo) + 1) * uc + ut;
  check_close(values(dwg), gref[1], [&](size_t i) { return ulp_of(gref[1][i], dt) + 2 * kw_ * gmag[1][i]; }, "dweight");
  check_close(values(dbg), gref[2], [&](size_t i) { return ulp_of(gref[2][i], dt) + 2 * kw_ * gmag[2][i]; }, "dbias");

  // Each gradient left undefined in turn: the others are computed exactly as before (bit for bit).
  for (int skip = 0; skip < 3; ++skip) {
    Tensor dx2 = skip == 0 ? Tensor() : like(x, dt, Device::CUDA), dw2 = skip == 1 ? Tensor() : like(w, dt, Device::CUDA),
           db2 = skip == 2 ? Tensor() : Tensor::empty({c.Cout}, dt, Device::CUDA);
    cuda_backend().conv2d_backward(dyg, xg, wg, a, dx2, dw2, db2);
    const std::string what = "with output " + std::to_string(skip) + " (dx, dweight, dbias) undefined";
    if (skip != 0) check_identical(dx2, dxg, what + ": dx");
    if (skip != 1) check_identical(dw2, dwg, what + ": dweight");
    if (skip != 2) check_identical(db2, dbg, what + ": dbias");
  }
}

// ---------------------------------------------------------------- batch norm
void check_batch_norm(int64_t N, int64_t C, int64_t H, int64_t W, DType dt, bool affine, bool training, uint64_t seed) {
  INFO("batch_norm x [" << N << "," << C << "," << H << "," << W << "] " << dname(dt) << (affine ? " affine" : "")
                        << (training ? " train" : " eval"));
  const DType sdt = dt == DType::f64 ? DType::f64 : DType::f32;
  const double eps = 1e-5;
  Generator g(seed);
  Tensor x = g.uniform({N, C, H, W}, 1, 3, DType::f64).to(dt);  // |mean| > std: stresses the variance
  Tensor w = affine ? g.uniform({C}, 0.5, 1.5, DType::f64).to(dt) : Tensor();
  Tensor b = affine ? g.uniform({C}, -0.5, 0.5, DType::f64).to(dt) : Tensor();
  Tensor dy = g.uniform({N, C, H, W}, -1, 1, DType::f64).to(dt);
  Tensor m64 = training ? Tensor::empty({C}, DType::f64) : g.uniform({C}, 1.5, 2.5, DType::f64).to(sdt).to(DType::f64);
  Tensor i64 = training ? Tensor::empty({C}, DType::f64) : g.uniform({C}, 0.5, 2, DType::f64).to(sdt).to(DType::f64);
  Tensor y64 = like(x, DType::f64, Device::CPU);
  cpu_backend().batch_norm(as_f64(x), as_f64(w), as_f64(b), m64, i64, eps, training, y64);
  Tensor dx64 = like(x, DType::f64, Device::CPU), dw64 = Tensor::empty({C}, DType::f64), db64 = Tensor::empty({C}, DType::f64);
  cpu_backend().batch_norm_backward(as_f64(dy), as_f64(x), as_f64(w), m64, i64, training, dx64, dw64, db64);

  Tensor mg = training ? Tensor::empty({C}, sdt, Device::CUDA) : m64.to(sdt).to(Device::CUDA);
  Tensor ig = training ? Tensor::empty({C}, sdt, Device::CUDA) : i64.to(sdt).to(Device::CUDA);
  Tensor yg = like(x, dt, Device::CUDA);
  cuda_backend().batch_norm(on_gpu(x), on_gpu(w), on_gpu(b), mg, ig, eps, training, yg);
  Tensor dxg = like(x, dt, Device::CUDA), dwg = Tensor::empty({C}, dt, Device::CUDA), dbg = Tensor::empty({C}, dt, Device::CUDA);
  cuda_backend().batch_norm_backward(on_gpu(dy), on_gpu(x), on_gpu(w), mg, ig, training, dxg, dwg, dbg);

  const int64_t M = N * H * W, HW = H * W;
  const double uc = compute_roundoff(dt);
  // Summation depth: ceil(M/256) sequential terms per thread, 5 shuffle levels, 8 warps, ≤ 64 slices.
  const double k = double((M + 255) / 256 + 5 + 8 + cm::kMaxSlices);
  const std::vector<double> xv = values(x), gv = values(dy), mu = values(m64), is = values(i64);
  const std::vector<double> wv = affine ? values(w) : std::vector<double>(size_t(C), 1.0);
  std::vector<double> mean_g(size_t(C), 0), mean_gx(size_t(C), 0), max_xh(size_t(C), 0);  // mean |dy|, |dy·x̂|, max |x̂|
  for (int64_t i = 0; i < N * C * HW; ++i) {
    const size_t c = size_t(i / HW % C);
    const double xh = std::fabs(xv[size_t(i)] - mu[c]) * is[c];
    mean_g[c] += std::fabs(gv[size_t(i)]) / double(M);
    mean_gx[c] += std::fabs(gv[size_t(i)]) * xh / double(M);
    max_xh[c] = std::max(max_xh[c], xh);
  }
  auto ch = [&](size_t i) { return size_t(int64_t(i) / HW % C); };
  if (training) {  // mean of values in [1, 3]; invstd as layer norm's rstd (relative error (k + 4)·u_c)
    const std::vector<double> mref = values(m64), iref = values(i64);
    check_close(values(mg), mref, [&](size_t c) { return ulp_of(mref[c], sdt) + 2 * k * uc * 3; }, "mean");
    check_close(values(ig), iref, [&](size_t c) { return ulp_of(iref[c], sdt) + 2 * (k + 4) * uc * iref[c]; }, "invstd");
  }
  // y = x̂·w + b: x̂ errs by invstd·(mean's error + u_c·|x − mean|) + |x̂|·(invstd's relative error).
  const std::vector<double> yref = values(y64);
  check_close(values(yg), yref, [&](size_t i) {
    const size_t c = ch(i);
    const double xh = std::fabs(xv[i] - mu[c]) * is[c];
    return ulp_of(yref[i], dt) + 4 * (k + 4) * uc * (std::fabs(wv[c]) * (is[c] * 3 + xh + 1) + 1);
  }, "y");
  // dx = w·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)): each of the three terms with its sum's error and x̂'s.
  const std::vector<double> dxref = values(dx64);
  check_close(values(dxg), dxref, [&](size_t i) {
    const size_t c = ch(i);
    const double xh = std::fabs(xv[i] - mu[c]) * is[c];
    const double terms = std::fabs(gv[i]) + mean_g[c] + (xh + 1) * (mean_gx[c] + mean_g[c] * (max_xh[c] + 1));
    return ulp_of(dxref[i], dt) + 4 * (k + 8) * uc * std::fabs(wv[c]) * is[c] * terms;
  }, "dx");
  const std::vector<double> dwref = values(dw64), dbref = values(db64);
  check_close(values(dwg), dwref, [&](size_t c) {
    return ulp_of(dwref[c], dt) + 4 * (k + 8) * uc * double(M) * (mean_gx[c] + mean_g[c] * (max_xh[c] + 1));
  }, "dweight");
  check_close(values(dbg), dbref, [&](size_t c) { return ulp_of(dbref[c], dt) + 2 * k * uc * double(M) * mean_g[c]; },
              "dbias");
}

}  // namespace

// ---------------------------------------------------------------- conv_math.h (always run)
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

// ---------------------------------------------------------------- GPU
TEST_CASE("cuda conv2d at the CvT and ViT shapes") {
  SKIP_WITHOUT_GPU();
  PrecisionGuard pg;
  const ConvCase cases[] = {
      {2, 3, 64, 224, 224, 7, 7, 4, 2, 1},     // CvT stage-1 embedding
      {2, 64, 192, 56, 56, 3, 3, 2, 1, 1},     // stage-2 embedding
      {2, 192, 384, 28, 28, 3, 3, 2, 1, 1},    // stage-3 embedding
      {2, 64, 64, 56, 56, 3, 3, 1, 1, 64},     // depthwise q projection, stage 1
      {2, 64, 64, 56, 56, 3, 3, 2, 1, 64},     // depthwise k/v projection, stage 1
      {2, 384, 384, 14, 14, 3, 3, 1, 1, 384},  // stage 3
      {2, 384, 384, 14, 14, 3, 3, 2, 1, 384},
      {2, 3, 768, 224, 224, 16, 16, 16, 0, 1},  // ViT-B/16 patchify
  };
  uint64_t seed = 1;
  for (const ConvCase& c : cases)
    for (DType dt : kFloatTypes)
      for (bool bias : {false, true}) check_conv(c, dt, bias, seed++);
}

TEST_CASE("cuda conv2d odd sizes, strides, paddings and groupings") {
  SKIP_WITHOUT_GPU();
  PrecisionGuard pg;
  uint64_t seed = 100;
  for (int64_t hw : {1, 5, 17})
    for (int64_t k : {1, 2, 3})
      for (int64_t s : {1, 2, 3})
        for (int64_t p : {0, 1}) {
          if (hw + 2 * p < k) continue;
          for (auto [cin, cout, groups] : {std::tuple{1, 1, 1}, std::tuple{3, 7, 1}, std::tuple{7, 3, 1},
                                           std::tuple{7, 7, 7}, std::tuple{3, 6, 3} /* multiplier 2 */,
                                           std::tuple{6, 9, 3} /* grouped GEMM */})
            for (DType dt : kFloatTypes) {
              const bool bias = (seed & 1) != 0;  // alternate: every shape sees both across its dtypes
              check_conv({2, cin, cout, hw, hw + 2, k, k, s, p, groups}, dt, bias, seed++);
            }
        }
}

TEST_CASE("cuda conv2d errors name the op") {
  SKIP_WITHOUT_GPU();
  Tensor x = Tensor::zeros({1, 3, 8, 8}, DType::f32, Device::CUDA), w = Tensor::zeros({4, 3, 3, 3}, DType::f32, Device::CUDA);
  Tensor wrong = Tensor::empty({1, 4, 5, 5}, DType::f32, Device::CUDA), cpu_y = Tensor::empty({1, 4, 6, 6});
  CHECK_THROWS_WITH_AS(cuda_backend().conv2d(x, w, Tensor(), Conv2dArgs{}, wrong), doctest::Contains("conv2d (cuda)"),
                       std::exception);
  CHECK_THROWS_WITH_AS(cuda_backend().conv2d(x, w, Tensor(), Conv2dArgs{}, cpu_y), doctest::Contains("conv2d (cuda)"),
                       std::exception);
  Tensor xi = Tensor::zeros({1, 3, 8, 8}, DType::i32, Device::CUDA), wi = Tensor::zeros({4, 3, 3, 3}, DType::i32, Device::CUDA);
  Tensor yi = Tensor::empty({1, 4, 6, 6}, DType::i32, Device::CUDA);
  CHECK_THROWS_WITH_AS(cuda_backend().conv2d(xi, wi, Tensor(), Conv2dArgs{}, yi), doctest::Contains("conv2d"),
                       std::exception);
}

TEST_CASE("cuda batch_norm train and eval from 1 to 2x56x56 values per channel") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  const std::array<int64_t, 4> shapes[] = {{1, 3, 1, 1}, {2, 5, 1, 1}, {1, 7, 3, 5}, {2, 4, 17, 17},
                                           {3, 2, 33, 31}, {2, 64, 56, 56}, {2, 384, 14, 14}};
  for (const auto& s : shapes)
    for (DType dt : kFloatTypes)
      for (bool training : {true, false})
        for (bool affine : {true, false}) check_batch_norm(s[0], s[1], s[2], s[3], dt, affine, training, seed++);
}
