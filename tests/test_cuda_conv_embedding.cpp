// The fused CUDA conv token embedding (kernels/cuda/conv_embedding.cu) against the CPU backend's
// composition (Backend::conv_embedding: conv2d, the token layout, layer_norm), plus CPU-runnable checks of
// its tiling arithmetic (kernels/cuda/conv_embedding_tiling.h).
//
// Method (as tests/test_cuda_conv.cpp): inputs drawn on the CPU and rounded to the dtype under test; the
// reference runs in f64 on those rounded values. u_c = unit roundoff of the GPU's accumulation (2^-24 for
// f32/bf16/f16 — tensor-core products of 16-bit values are exact in fp32 — 2^-53 for f64), u_T that of the
// dtype. Tolerances, each with a factor 2 of safety; a wrong index or a missing term is an O(1) error:
//  pre_norm: a K-term dot product + the bias: (K+1)·u_c·|conv|(|x|,|w|,|b|) + one ulp of the dtype, + u_T·|conv|
//   for the composed fallback (C > 1024), whose cuBLAS GEMM rounds to the dtype before the bias add.
//  mean/rstd/tokens: the norm runs on the STORED pre_norm, the reference on the exact one. With E the
//   largest pre_norm error of a token: |Δmean| ≤ E, |Δvar| ≤ 4·E·std so |Δrstd|/rstd ≤ 2·E·rstd, and
//   |Δx̂| ≤ 2·E·rstd·(1 + |x̂|); the norm's own sums add (C+8)·u_c relative. tokens = x̂·w + b adds one ulp.
//  backward: the reference is fed the GPU's own pre_norm/mean/rstd (f64 copies), so only the backward's
//   rounding counts. dpre = rstd·(g − mean(g) − x̂·mean(g·x̂)): (C+8)·u_c times the same expression in
//   absolute values, + its storage rounding (one ulp). dx/dweight/dbias are linear in dpre: its error
//   bound is pushed through the conv backward of |x|, |w| (the CPU reference on absolute values), plus the
//   conv backward's own bound from tests/test_cuda_conv.cpp. dln_weight/dln_bias: sums over N·Ho·Wo
//   tokens in ≤ 32 + rows/8 + 8 sequential steps (CTA's tokens, strands, strand sum).
// Without a usable GPU every GPU test prints why and returns; the tiling tests always run.
#include <doctest/doctest.h>

#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "kernels/cuda/conv_embedding_tiling.h"

using namespace tessera;
namespace emb = tessera::cuda::emb;

namespace {

using namespace tessera::testing;

Tensor abs64(const Tensor& t) { return t.defined() ? tessera::abs(as_f64(t)) : Tensor(); }
Tensor from(const std::vector<double>& v, const Shape& s) { return Tensor::from(v, s, DType::f64); }

struct EmbCase {
  int64_t N, Cin, C, H, W, k, stride, pad;
};
std::string describe(const EmbCase& c, DType dt, bool bias, bool affine) {
  return "x [" + std::to_string(c.N) + "," + std::to_string(c.Cin) + "," + std::to_string(c.H) + "," +
         std::to_string(c.W) + "] C " + std::to_string(c.C) + " k " + std::to_string(c.k) + " stride " +
         std::to_string(c.stride) + " pad " + std::to_string(c.pad) + " " + dname(dt) + (bias ? " bias" : "") +
         (affine ? " affine" : "");
}

struct PrecisionGuard {  // the tolerances assume true fp32 GEMMs in the conv backward
  MatmulPrecision saved = matmul_precision();
  PrecisionGuard() { set_matmul_precision(MatmulPrecision::Highest); }
  ~PrecisionGuard() { set_matmul_precision(saved); }
};

void check_embedding(const EmbCase& c, DType dt, bool with_bias, bool affine, uint64_t seed) {
  INFO(describe(c, dt, with_bias, affine));
  Conv2dArgs a;
  a.stride_h = a.stride_w = c.stride;
  a.pad_h = a.pad_w = c.pad;
  const int64_t Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1, Wo = (c.W + 2 * c.pad - c.k) / c.stride + 1;
  const int64_t P = Ho * Wo, T = c.N * P, C = c.C, K = c.Cin * c.k * c.k;
  const DType sdt = dt == DType::f64 ? DType::f64 : DType::f32;
  const double eps = 1e-5;
  Generator g(seed);
  Tensor x = g.uniform({c.N, c.Cin, c.H, c.W}, -1, 1, DType::f64).to(dt);
  Tensor w = g.uniform({C, c.Cin, c.k, c.k}, -0.5, 0.5, DType::f64).to(dt);
  Tensor b = with_bias ? g.uniform({C}, -0.5, 0.5, DType::f64).to(dt) : Tensor();
  Tensor lw = affine ? g.uniform({C}, 0.5, 1.5, DType::f64).to(dt) : Tensor();
  Tensor lb = affine ? g.uniform({C}, -0.5, 0.5, DType::f64).to(dt) : Tensor();
  Tensor dtok = g.uniform({c.N, P, C}, -1, 1, DType::f64).to(dt);

  // ---- forward: reference and |conv| magnitudes in f64 on the CPU
  Tensor tok64 = Tensor::empty({c.N, P, C}, DType::f64), pre64 = Tensor::empty({c.N, P, C}, DType::f64);
  Tensor mean64 = Tensor::empty({T}, DType::f64), rstd64 = Tensor::empty({T}, DType::f64);
  cpu_backend().conv_embedding(as_f64(x), as_f64(w), as_f64(b), a, as_f64(lw), as_f64(lb), eps, tok64, pre64, mean64,
                               rstd64);
  Tensor img_mag = Tensor::empty({c.N, C, Ho, Wo}, DType::f64);
  cpu_backend().conv2d(abs64(x), abs64(w), abs64(b), a, img_mag);
  const std::vector<double> imag = values(img_mag);
  auto mag = [&](int64_t t, int64_t ch) { return imag[size_t(((t / P) * C + ch) * P + t % P)]; };

  const Tensor xg = on_gpu(x), wg = on_gpu(w), bg = on_gpu(b), lwg = on_gpu(lw), lbg = on_gpu(lb), dtg = on_gpu(dtok);
  Tensor tokg = Tensor::empty({c.N, P, C}, dt, Device::CUDA), preg = Tensor::empty({c.N, P, C}, dt, Device::CUDA);
  Tensor meang = Tensor::empty({T}, sdt, Device::CUDA), rstdg = Tensor::empty({T}, sdt, Device::CUDA);
  cuda_backend().conv_embedding(xg, wg, bg, a, lwg, lbg, eps, tokg, preg, meang, rstdg);

  const double uc = compute_roundoff(dt), ut = unit_roundoff(dt);
  const std::vector<double> pref = values(pre64), tref = values(tok64), mref = values(mean64), rref = values(rstd64);
  const std::vector<double> lwv = affine ? values(lw) : std::vector<double>(size_t(C), 1.0);
  const std::vector<double> lbv = affine ? values(lb) : std::vector<double>(size_t(C), 0.0);
  auto pre_err = [&](size_t i) {
    return 2 * ((double(K) + 1) * uc + ut) * mag(int64_t(i) / C, int64_t(i) % C) + ulp_of(pref[i], dt);
  };
  check_close(values(preg), pref, pre_err, "pre_norm");
  std::vector<double> E(size_t(T), 0), maxpre(size_t(T), 0);
  for (size_t i = 0; i < pref.size(); ++i) {
    E[i / size_t(C)] = std::max(E[i / size_t(C)], pre_err(i));
    maxpre[i / size_t(C)] = std::max(maxpre[i / size_t(C)], std::fabs(pref[i]));
  }
  const double kn = double(C + 8) * uc;
  check_close(values(meang), mref, [&](size_t t) { return ulp_of(mref[t], sdt) + 2 * (E[t] + kn * maxpre[t]); }, "mean");
  check_close(values(rstdg), rref,
              [&](size_t t) { return ulp_of(rref[t], sdt) + 2 * rref[t] * (2 * E[t] * rref[t] + kn); }, "rstd");
  check_close(values(tokg), tref, [&](size_t i) {
    const size_t t = i / size_t(C), ch = i % size_t(C);
    const double xh = std::fabs(pref[i] - mref[t]) * rref[t];
    return ulp_of(tref[i], dt) +
           2 * (std::fabs(lwv[ch]) * (2 * E[t] * rref[t] + kn) * (1 + xh) + uc * (std::fabs(lbv[ch]) + 1));
  }, "tokens");

  // ---- backward: the reference sees the GPU's own forward outputs
  const Tensor pre_in = as_f64(preg.to(Device::CPU)), mean_in = as_f64(meang.to(Device::CPU)),
               rstd_in = as_f64(rstdg.to(Device::CPU));
  Tensor dx64 = Tensor::empty(x.shape(), DType::f64), dw64 = Tensor::empty(w.shape(), DType::f64),
         db64 = Tensor::empty({C}, DType::f64), dlw64 = Tensor::empty({C}, DType::f64), dlb64 = Tensor::empty({C}, DType::f64);
  cpu_backend().conv_embedding_backward(as_f64(dtok), as_f64(x), as_f64(w), a, pre_in, as_f64(lw), mean_in, rstd_in,
                                        dx64, dw64, db64, dlw64, dlb64);
  // dpre's reference, magnitude and error bound, in the [N, C, Ho, Wo] layout.
  const std::vector<double> pv = values(pre_in), mv = values(mean_in), rv = values(rstd_in), gv = values(dtok);
  std::vector<double> dpre(size_t(T * C)), dpre_err(size_t(T * C)), dpre_abs(size_t(T * C));
  std::vector<double> sum_gx(size_t(C), 0), sum_g(size_t(C), 0);
  for (int64_t t = 0; t < T; ++t) {
    double sg = 0, sgx = 0, ag = 0, agx = 0;
    for (int64_t ch = 0; ch < C; ++ch) {
      const size_t i = size_t(t * C + ch);
      const double xh = (pv[i] - mv[size_t(t)]) * rv[size_t(t)], gg = gv[i] * lwv[size_t(ch)];
      sg += gg; sgx += gg * xh; ag += std::fabs(gg); agx += std::fabs(gg * xh);
      sum_gx[size_t(ch)] += std::fabs(gv[i] * xh);
      sum_g[size_t(ch)] += std::fabs(gv[i]);
    }
    sg /= double(C); sgx /= double(C); ag /= double(C); agx /= double(C);
    for (int64_t ch = 0; ch < C; ++ch) {
      const size_t i = size_t(t * C + ch), o = size_t(((t / P) * C + ch) * P + t % P);
      const double xh = (pv[i] - mv[size_t(t)]) * rv[size_t(t)], gg = gv[i] * lwv[size_t(ch)];
      dpre[o] = rv[size_t(t)] * (gg - sg - xh * sgx);
      const double m = rv[size_t(t)] * (std::fabs(gg) + ag + std::fabs(xh) * agx);
      dpre_err[o] = 2 * (kn + 4 * uc) * m + ulp_of(dpre[o], dt);
      dpre_abs[o] = std::fabs(dpre[o]) + dpre_err[o];
    }
  }
  auto conv_bwd = [&](const std::vector<double>& d, const Tensor& xx, const Tensor& ww) {
    Tensor dx = Tensor::empty(x.shape(), DType::f64), dw = Tensor::empty(w.shape(), DType::f64),
           db = Tensor::empty({C}, DType::f64);
    cpu_backend().conv2d_backward(from(d, {c.N, C, Ho, Wo}), xx, ww, a, dx, dw, db);
    return std::vector<std::vector<double>>{values(dx), values(dw), values(db)};
  };
  const auto prop = conv_bwd(dpre_err, abs64(x), abs64(w)), own = conv_bwd(dpre_abs, abs64(x), abs64(w));

  Tensor dxg = Tensor::empty(x.shape(), dt, Device::CUDA), dwg = Tensor::empty(w.shape(), dt, Device::CUDA),
         dbg = Tensor::empty({C}, dt, Device::CUDA), dlwg = Tensor::empty({C}, dt, Device::CUDA),
         dlbg = Tensor::empty({C}, dt, Device::CUDA);
  cuda_backend().conv_embedding_backward(dtg, xg, wg, a, preg, lwg, meang, rstdg, dxg, dwg, dbg, dlwg, dlbg);
  const double kx = (double(C * c.k * c.k) + 1) * uc + ut, kw = (double(T) + 1) * uc + ut;
  const std::vector<double> dxr = values(dx64), dwr = values(dw64), dbr = values(db64);
  check_close(values(dxg), dxr, [&](size_t i) { return ulp_of(dxr[i], dt) + prop[0][i] + 2 * kx * own[0][i]; }, "dx");
  check_close(values(dwg), dwr, [&](size_t i) { return ulp_of(dwr[i], dt) + prop[1][i] + 2 * kw * own[1][i]; }, "dweight");
  check_close(values(dbg), dbr, [&](size_t i) { return ulp_of(dbr[i], dt) + prop[2][i] + 2 * kw * own[2][i]; }, "dbias");
  const double kl = (32 + double(c.N * emb::bwd_tiles(P)) / 8 + 8 + 4) * uc;
  const std::vector<double> dlwr = values(dlw64), dlbr = values(dlb64);
  check_close(values(dlwg), dlwr, [&](size_t ch) { return ulp_of(dlwr[ch], dt) + 2 * kl * sum_gx[ch]; }, "dln_weight");
  check_close(values(dlbg), dlbr, [&](size_t ch) { return ulp_of(dlbr[ch], dt) + 2 * kl * sum_g[ch]; }, "dln_bias");

  // Each output undefined in turn: the others come out bit-identical.
  const Tensor full[] = {dxg, dwg, dbg, dlwg, dlbg};
  const char* names[] = {"dx", "dweight", "dbias", "dln_weight", "dln_bias"};
  for (int skip = 0; skip < 5; ++skip) {
    Tensor o[5];
    for (int j = 0; j < 5; ++j)
      if (j != skip) o[j] = Tensor::empty(full[j].shape(), dt, Device::CUDA);
    cuda_backend().conv_embedding_backward(dtg, xg, wg, a, preg, lwg, meang, rstdg, o[0], o[1], o[2], o[3], o[4]);
    for (int j = 0; j < 5; ++j) {
      if (j == skip) continue;
      INFO("with " << names[skip] << " undefined: " << names[j]);
      CHECK(values(o[j]) == values(full[j]));
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- tiling (always run)
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

// ---------------------------------------------------------------- GPU
TEST_CASE("cuda conv_embedding at the CvT shapes") {
  SKIP_WITHOUT_GPU();
  PrecisionGuard pg;
  const EmbCase cases[] = {
      {2, 3, 64, 224, 224, 7, 4, 2},   // stage-1 embedding
      {2, 64, 192, 56, 56, 3, 2, 1},   // stage 2
      {2, 192, 384, 28, 28, 3, 2, 1},  // stage 3
  };
  uint64_t seed = 1;
  for (const EmbCase& c : cases)
    for (DType dt : kFloatTypes)
      for (bool on : {true, false}) check_embedding(c, dt, on, on, seed++);
}

TEST_CASE("cuda conv_embedding odd sizes, kernels, strides, paddings and widths") {
  SKIP_WITHOUT_GPU();
  PrecisionGuard pg;
  uint64_t seed = 100;
  for (auto [H, W] : {std::tuple{5, 17}, std::tuple{17, 5}, std::tuple{17, 17}})
    for (int64_t k : {1, 3, 4, 7})
      for (int64_t s : {1, 2, 4})
        for (int64_t p : {0, 1, 2}) {
          if (std::min<int64_t>(H, W) + 2 * p < k) continue;
          for (auto [cin, C] : {std::tuple{1, 1}, std::tuple{3, 7}, std::tuple{5, 33}, std::tuple{3, 64},
                                std::tuple{1, 200}, std::tuple{5, 200}})
            for (DType dt : kFloatTypes) {
              // bias and affine alternate independently across the seeds
              check_embedding({2, cin, C, H, W, k, s, p}, dt, (seed & 1) != 0, (seed & 2) != 0, seed);
              ++seed;
            }
        }
}

TEST_CASE("cuda conv_embedding wide rows: the 16-bit FMA path and the composed fallback") {
  SKIP_WITHOUT_GPU();
  PrecisionGuard pg;
  uint64_t seed = 9000;
  for (DType dt : kFloatTypes)
    for (int64_t C : {600, 1100}) check_embedding({2, 3, C, 9, 9, 3, 2, 1}, dt, true, true, seed++);
}
