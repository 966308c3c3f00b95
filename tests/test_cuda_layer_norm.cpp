// The CUDA layer norm and cross-entropy kernels (kernels/cuda/layer_norm.cu, cross_entropy.cu) against the
// CPU reference, plus CPU-runnable checks of their launch-shape arithmetic (kernels/cuda/layer_norm_math.h).
//
// Method: inputs are drawn on the CPU and rounded to the dtype under test; the CPU reference then runs in
// f64 on those very rounded values, and the GPU runs on the same values in the dtype. Tolerances are
// derived per element: u_c is the unit roundoff the GPU computes in (2^-24 for f32/bf16/f16, 2^-53 for
// f64); a tree sum of n terms split into runs of L sequential additions followed by a tree of depth d errs
// by at most γ_{L+d}·Σ|terms| (Higham §4.2), which we bound by (L + d)·u_c·Σ|terms| ("k" below); the final
// store rounds once more, at most one ulp of the output dtype (the GPU's and the reference's exact values
// may straddle a rounding boundary). Each tolerance is that sum with a safety factor of 2–4, said where used.
//
// Without a usable GPU every GPU test prints why and returns; the launch-shape tests always run.
#include <doctest/doctest.h>

#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "kernels/cuda/layer_norm_math.h"

using namespace tessera;
namespace ln = tessera::cuda::ln;

namespace {

using namespace tessera::testing;

DType stat_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }



// ---------------------------------------------------------------- layer norm
struct LnCase {
  int64_t rows, C;
  DType dt;
  bool weight, bias;
  double eps, offset;  // offset: inputs in offset ± 2 (|mean| ≫ std stresses the variance computation)
};
std::string describe(const LnCase& c) {
  return "[" + std::to_string(c.rows) + ", " + std::to_string(c.C) + "] " + dname(c.dt) + (c.weight ? " w" : "") +
         (c.bias ? " b" : "") + " eps " + std::to_string(c.eps) + " offset " + std::to_string(c.offset);
}

void check_layer_norm(const LnCase& c, uint64_t seed) {
  INFO(describe(c));
  const int64_t rows = c.rows, C = c.C;
  Generator g(seed);
  Tensor x = g.uniform({rows, C}, c.offset - 2, c.offset + 2, DType::f64).to(c.dt);
  Tensor w = c.weight ? g.uniform({C}, 0.5, 1.5, DType::f64).to(c.dt) : Tensor();
  Tensor b = c.bias ? g.uniform({C}, -0.5, 0.5, DType::f64).to(c.dt) : Tensor();
  Tensor dy = g.uniform({rows, C}, -1, 1, DType::f64).to(c.dt);
  const DType sdt = stat_dtype(c.dt);

  // Reference forward in f64.
  Tensor y64 = Tensor::empty({rows, C}, DType::f64), m64 = Tensor::empty({rows}, DType::f64),
         r64 = Tensor::empty({rows}, DType::f64);
  cpu_backend().layer_norm(as_f64(x), as_f64(w), as_f64(b), c.eps, y64, m64, r64);
  // GPU forward.
  Tensor yg = Tensor::empty({rows, C}, c.dt, Device::CUDA), mg = Tensor::empty({rows}, sdt, Device::CUDA),
         rg = Tensor::empty({rows}, sdt, Device::CUDA);
  cuda_backend().layer_norm(on_gpu(x), on_gpu(w), on_gpu(b), c.eps, yg, mg, rg);

  const std::vector<double> xv = values(x), wv = w.defined() ? values(w) : std::vector<double>(size_t(C), 1.0),
                            bv = b.defined() ? values(b) : std::vector<double>(size_t(C), 0.0), gv = values(dy);
  const std::vector<double> mu = values(m64), rs = values(r64), yref = values(y64);
  std::vector<double> mabs(size_t(rows), 0.0);  // mean |x| of each row
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < C; ++j) mabs[size_t(r)] += std::fabs(xv[size_t(r * C + j)]);
    mabs[size_t(r)] /= double(C);
  }
  const double uc = compute_roundoff(c.dt);
  // Depth of the row sums: ceil(C/32) per lane + 5 shuffle levels (warp kernel, C ≤ 1024), or ceil(C/256)
  // + 5 + 8 warp partials (block kernel); ceil(C/32) + 8 bounds both.
  const double k = double((C + 31) / 32 + 8);
  // mean: summation error k·u_c·mean|x|, plus its f32/f64 store.
  check_close(values(mg), mu, [&](size_t r) { return ulp_of(mu[r], sdt) + 2 * k * uc * mabs[r]; }, "mean");
  // rstd: var's relative error ≤ (k + 2)·u_c (the mean's error enters only squared), sqrt and division
  // add 2 u_c, halved by the square root; bound 2·(k + 4)·u_c relative, plus the store.
  check_close(values(rg), rs, [&](size_t r) { return ulp_of(rs[r], sdt) + 2 * (k + 4) * uc * rs[r]; }, "rstd");
  // y = x̂·w + b: x̂ errs by rstd·(mean's error + u_c·|x − mean|) + |x̂|·(rstd's relative error), times |w|;
  // then two roundings (·w, +b) of u_c each and the final store (1 ulp of the dtype). Factor 2.
  check_close(values(yg), yref, [&](size_t i) {
    const size_t r = i / size_t(C), j = i % size_t(C);
    const double xh = std::fabs(xv[i] - mu[r]) * rs[r];
    const double exh = rs[r] * k * uc * mabs[r] + (k + 6) * uc * xh;
    return ulp_of(yref[i], c.dt) + 2 * (std::fabs(wv[j]) * exh + 2 * uc * (xh * std::fabs(wv[j]) + std::fabs(bv[j])));
  }, "y");

  // Backward on the same statistics for both: the reference's rounded to the stat dtype.
  Tensor ms = m64.to(sdt), rss = r64.to(sdt);
  const std::vector<double> mus = values(ms), rss_v = values(rss);
  Tensor dx64 = Tensor::empty({rows, C}, DType::f64), dw64 = c.weight ? Tensor::empty({C}, DType::f64) : Tensor(),
         db64 = Tensor::empty({C}, DType::f64);
  cpu_backend().layer_norm_backward(as_f64(dy), as_f64(x), as_f64(w), as_f64(ms), as_f64(rss), dx64, dw64, db64);
  Tensor dxg = Tensor::empty({rows, C}, c.dt, Device::CUDA), dwg = c.weight ? Tensor::empty({C}, c.dt, Device::CUDA) : Tensor(),
         dbg = Tensor::empty({C}, c.dt, Device::CUDA);
  cuda_backend().layer_norm_backward(on_gpu(dy), on_gpu(x), on_gpu(w), on_gpu(ms), on_gpu(rss), dxg, dwg, dbg);
  // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)): with xs = (|x| + |mean|)·rstd bounding |x̂| before the
  // subtraction, every term errs by at most (k + 6)·u_c times rstd·(|g| + mean|g| + (xs + 1)·mean(|g|·xs)).
  // Factor 4.
  std::vector<double> xs(xv.size()), Mg(size_t(rows), 0.0), Mgx(size_t(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < C; ++j) {
      const size_t i = size_t(r * C + j);
      xs[i] = (std::fabs(xv[i]) + std::fabs(mus[size_t(r)])) * rss_v[size_t(r)];
      const double gi = std::fabs(gv[i] * wv[size_t(j)]);
      Mg[size_t(r)] += gi / double(C);
      Mgx[size_t(r)] += gi * xs[i] / double(C);
    }
  const std::vector<double> dxref = values(dx64);
  check_close(values(dxg), dxref, [&](size_t i) {
    const size_t r = i / size_t(C), j = i % size_t(C);
    const double gi = std::fabs(gv[i] * wv[j]);
    return ulp_of(dxref[i], c.dt) + 4 * (k + 6) * uc * rss_v[r] * (gi + Mg[r] + (xs[i] + 1) * Mgx[r]);
  }, "dx");
  // dweight, dbias: sums over rows. Worst-case depth: one block doing every row, i.e. ceil(rows/8) per
  // warp + 8 warps + the partial reduction (warp kernel) or all rows sequentially (block kernel); + 16 for
  // the fixed-order combines. Each dy·x̂ term errs by (xs-relative) 3·u_c. Factor 2.
  const double kr = double((C <= ln::kMaxWarpRowC ? (rows + 7) / 8 : rows) + 16);
  std::vector<double> sgx(size_t(C), 0.0), sg(size_t(C), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < C; ++j) {
      const size_t i = size_t(r * C + j);
      sgx[size_t(j)] += std::fabs(gv[i]) * xs[i];
      sg[size_t(j)] += std::fabs(gv[i]);
    }
  if (c.weight) {
    const std::vector<double> ref = values(dw64);
    check_close(values(dwg), ref, [&](size_t j) { return ulp_of(ref[j], c.dt) + 2 * (kr + 3) * uc * sgx[j]; }, "dweight");
  }
  const std::vector<double> dbref = values(db64);
  check_close(values(dbg), dbref, [&](size_t j) { return ulp_of(dbref[j], c.dt) + 2 * kr * uc * sg[j]; }, "dbias");
}

// ---------------------------------------------------------------- cross entropy
void check_cross_entropy(int64_t N, int64_t C, DType dt, bool weighted, double eps, int ignore_every, uint64_t seed) {
  INFO("N " << N << " C " << C << " " << dname(dt) << (weighted ? " weighted" : "") << " eps " << eps
            << " ignore every " << ignore_every);
  const int64_t ignore = -100;
  Generator g(seed);
  Tensor x = g.uniform({N, C}, -4, 4, DType::f64).to(dt);
  Tensor w = weighted ? g.uniform({C}, 0.2, 2, DType::f64).to(dt) : Tensor();
  std::vector<double> u = g.uniform({N}, 0, 1, DType::f64).to_vector<double>();
  std::vector<int64_t> tv(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i)
    tv[size_t(i)] = ignore_every && i % ignore_every == 0 ? ignore : std::min<int64_t>(C - 1, int64_t(u[size_t(i)] * double(C)));
  Tensor t = Tensor::from(tv, {N}, DType::i64);

  Tensor l64 = Tensor::empty({}, DType::f64);
  cpu_backend().cross_entropy(as_f64(x), t, as_f64(w), eps, ignore, l64);
  Tensor lg = Tensor::empty({}, dt, Device::CUDA);
  cuda_backend().cross_entropy(on_gpu(x), on_gpu(t), on_gpu(w), eps, ignore, lg);

  const std::vector<double> xv = values(x), wv = weighted ? values(w) : std::vector<double>(size_t(C), 1.0);
  double W = 0, S = 0, swabs = 0;
  for (double v : wv) swabs += std::fabs(v);
  std::vector<double> lse(size_t(N), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, xv[size_t(i * C + c)]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(xv[size_t(i * C + c)] - m);
    lse[size_t(i)] = m + std::log(s);
    const int64_t ti = tv[size_t(i)];
    if (ti == ignore) continue;
    W += wv[size_t(ti)];
    S += (1 - eps) * std::fabs(wv[size_t(ti)]) * (std::fabs(xv[size_t(i * C + ti)]) + std::fabs(lse[size_t(i)]) + 1);
    for (int64_t c = 0; c < C; ++c)
      S += eps / double(C) * std::fabs(wv[size_t(c)]) * (std::fabs(xv[size_t(i * C + c)]) + std::fabs(lse[size_t(i)]) + 1);
  }
  S /= std::fabs(W);
  const double uc = compute_roundoff(dt);
  // Depths: ceil(C/32) + 5 for a row's sums (warp), ceil(N/256) + 5 + 8 for the sums over rows (block).
  const double kC = double((C + 31) / 32 + 5), kN = double((N + 255) / 256 + 13);
  // loss: every row term errs by (kC + 4)·u_c relative to |w|·(|x| + |lse| + 1), the row sums by kN·u_c
  // relative to their Σ|terms|, the final divisions by 2 u_c. Factor 4 over (kC + kN + 4)·u_c·S.
  const std::vector<double> lref = values(l64);
  check_close(values(lg), lref, [&](size_t) { return ulp_of(lref[0], dt) + 4 * (kC + kN + 4) * uc * S; }, "loss");

  const double dloss = 0.7, coef = dloss / W;
  Tensor d64 = Tensor::empty({N, C}, DType::f64);
  cpu_backend().cross_entropy_backward(as_f64(x), t, as_f64(w), eps, ignore, Tensor::scalar(dloss, DType::f64), d64);
  Tensor dg = Tensor::empty({N, C}, dt, Device::CUDA);
  const DType acc = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  cuda_backend().cross_entropy_backward(on_gpu(x), on_gpu(t), on_gpu(w), eps, ignore,
                                        Tensor::scalar(dloss, acc, Device::CUDA), dg);
  // p = exp(x − lse) errs by p·(u_c·(|x| + |lse| + 1) + kC·u_c); W and Σw by kN·u_c relative. Factor 4.
  const std::vector<double> dref = values(d64);
  check_close(values(dg), dref, [&](size_t k) {
    const size_t i = k / size_t(C), c = k % size_t(C);
    const int64_t ti = tv[i];
    if (ti == ignore) return ulp_of(0, dt);
    const double p = std::exp(xv[k] - lse[i]), wt = std::fabs(wv[size_t(ti)]);
    const double mag = (std::fabs(xv[k]) + std::fabs(lse[i]) + 1) * p * ((1 - eps) * wt + eps / double(C) * swabs) +
                       (1 - eps) * wt * (int64_t(c) == ti ? 1 : 0) + eps / double(C) * std::fabs(wv[c]);
    return ulp_of(dref[k], dt) + 4 * (kC + kN + 8) * uc * std::fabs(coef) * mag;
  }, "dlogits");
}

}  // namespace

// ================================================================ launch shapes (run everywhere)
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

// ================================================================ GPU against the CPU reference
TEST_CASE("cuda layer_norm forward and backward at the CvT and ViT shapes") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (DType dt : kFloatTypes)
    for (auto [rows, C] : {std::pair<int64_t, int64_t>{2 * 3136, 64}, {2 * 784, 192}, {2 * 197, 384}, {2 * 197, 768}})
      check_layer_norm({rows, C, dt, true, true, 1e-5, 0.0}, seed++);
}

TEST_CASE("cuda layer_norm odd sizes, affine variants and eps") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (DType dt : kFloatTypes)
    for (int64_t C : {1, 7, 33, 1000, 1025, 4097})
      for (int64_t rows : {1, 3, 257})
        for (int affine = 0; affine < 3; ++affine)
          check_layer_norm({rows, C, dt, affine >= 1, affine == 2, affine == 1 ? 1e-6 : 1e-5, 0.0}, seed++);
  // Large |mean| relative to the spread, and a big eps.
  for (DType dt : kFloatTypes) {
    check_layer_norm({257, 768, dt, true, true, 1e-5, 50.0}, seed++);
    check_layer_norm({3, 4097, dt, true, false, 1e-5, 50.0}, seed++);
    check_layer_norm({257, 192, dt, true, true, 0.5, 0.0}, seed++);
  }
}

TEST_CASE("cuda layer_norm_backward is bit-reproducible and allows undefined outputs") {
  SKIP_WITHOUT_GPU();
  for (int64_t C : {768, 4097}) {
    Generator g(7);
    const int64_t rows = 1000;
    Tensor x = g.uniform({rows, C}, -2, 2, DType::f32, Device::CUDA), dy = g.uniform({rows, C}, -1, 1, DType::f32, Device::CUDA);
    Tensor w = g.uniform({C}, 0.5, 1.5, DType::f32, Device::CUDA), b = g.uniform({C}, -1, 1, DType::f32, Device::CUDA);
    Tensor y = Tensor::empty({rows, C}, DType::f32, Device::CUDA), m = Tensor::empty({rows}, DType::f32, Device::CUDA),
           r = Tensor::empty({rows}, DType::f32, Device::CUDA);
    cuda_backend().layer_norm(x, w, b, 1e-5, y, m, r);
    std::vector<double> first;
    for (int run = 0; run < 3; ++run) {
      Tensor dx, dw = Tensor::empty({C}, DType::f32, Device::CUDA), db;  // dx, dbias not needed
      cuda_backend().layer_norm_backward(dy, x, w, m, r, dx, dw, db);
      if (run == 0) first = values(dw);
      else CHECK(values(dw) == first);  // exact: no atomics, fixed summation order
    }
  }
}

TEST_CASE("cuda layer_norm errors name the op and the argument") {
  SKIP_WITHOUT_GPU();
  Tensor x = Tensor::zeros({4, 8}, DType::f32, Device::CUDA), y = Tensor::empty({4, 8}, DType::f32, Device::CUDA);
  Tensor m64 = Tensor::empty({4}, DType::f64, Device::CUDA), r = Tensor::empty({4}, DType::f32, Device::CUDA);
  try {
    cuda_backend().layer_norm(x, Tensor(), Tensor(), 1e-5, y, m64, r);
    FAIL("expected an exception");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(msg.find("layer_norm") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("mean") != std::string::npos, msg);
  }
}

TEST_CASE("cuda cross_entropy forward and backward") {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  for (DType dt : kFloatTypes)
    for (int64_t C : {4, 1000})
      for (int64_t N : {1, 32, 257})
        for (bool weighted : {false, true})
          for (double eps : {0.0, 0.1})
            for (int ignore_every : {0, 5}) check_cross_entropy(N, C, dt, weighted, eps, ignore_every, seed++);
  // Every row ignored: NaN loss (0/0, as torch), zero gradient.
  for (DType dt : kFloatTypes) check_cross_entropy(3, 4, dt, false, 0.1, 1, seed++);
}
