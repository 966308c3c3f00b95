// The statistics the CUDA forward kernels save for their backward, against the CPU reference at the Backend
// level: layer_norm's mean and rstd, attention's lse, conv_embedding's pre_norm, mean and rstd, and
// batch_norm's mean and invstd (training). The op registry (tests/test_backend_ops.cpp) compares outputs and
// input gradients only; a wrong statistic that the backward happens to tolerate shows up here.
//
// Method: inputs drawn on the CPU in f64 and rounded to the dtype under test; the CPU backend runs in f64 on
// those very rounded values, the CUDA backend in the dtype, so a comparison measures only the kernel's own
// error. Statistics are stored in f32 for f32/bf16/f16 and in f64 for f64 (stat_dtype, engine/core/backend.h). u_c = the unit
// roundoff the GPU computes and accumulates in (2^-24 for f32/bf16/f16, 2^-53 for f64); a sum of L terms in
// any order errs by at most γ_L·Σ|terms| ≈ L·u_c·Σ|terms| (Higham §4.2); the final store rounds once more,
// at most one ulp of the stat dtype (the GPU's and the reference's exact values may straddle a rounding
// boundary). Each tolerance carries a factor 2 of safety; a wrong index or a lost term is an O(1) error.
//
// Without a usable GPU every test prints why and returns.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/conv_math.h"
#include "tests/backend_ops.h"

using namespace tessera;
using namespace tessera::testing;
using opreg::Attn;
using opreg::uni;

namespace {

Tensor abs64(const Tensor& t) { return t.defined() ? tessera::abs(as_f64(t)) : Tensor(); }

// ---------------------------------------------------------------- layer norm
struct LnCase {
  int64_t rows, C;
  bool weight, bias;
  double eps, offset;  // offset: inputs in offset ± 2 (|mean| ≫ std stresses the variance computation)
};

void check_layer_norm(const LnCase& c, DType dt, uint64_t seed) {
  INFO("layer_norm [" << c.rows << ", " << c.C << "] " << dname(dt) << (c.weight ? " w" : "") << (c.bias ? " b" : "")
                      << " eps " << c.eps << " offset " << c.offset);
  const int64_t rows = c.rows, C = c.C;
  const DType sdt = stat_dtype(dt);
  Generator g(seed);
  Tensor x = uni(g, {rows, C}, c.offset - 2, c.offset + 2).to(dt);
  Tensor w = c.weight ? uni(g, {C}, 0.5, 1.5).to(dt) : Tensor();
  Tensor b = c.bias ? uni(g, {C}, -0.5, 0.5).to(dt) : Tensor();

  Tensor y64 = Tensor::empty({rows, C}, DType::f64), m64 = Tensor::empty({rows}, DType::f64),
         r64 = Tensor::empty({rows}, DType::f64);
  cpu_backend().layer_norm(as_f64(x), as_f64(w), as_f64(b), c.eps, y64, m64, r64);
  Tensor yg = Tensor::empty({rows, C}, dt, Device::CUDA), mg = Tensor::empty({rows}, sdt, Device::CUDA),
         rg = Tensor::empty({rows}, sdt, Device::CUDA);
  cuda_backend().layer_norm(on_gpu(x), on_gpu(w), on_gpu(b), c.eps, yg, mg, rg);

  const std::vector<double> xv = values(x), mu = values(m64), rs = values(r64);
  std::vector<double> mabs(size_t(rows), 0.0);  // mean |x| of each row
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < C; ++j) mabs[size_t(r)] += std::fabs(xv[size_t(r * C + j)]);
    mabs[size_t(r)] /= double(C);
  }
  const double uc = compute_roundoff(dt);
  // Depth of the row sums: ceil(C/32) per lane + 5 shuffle levels (warp kernel, C ≤ 1024), or ceil(C/256)
  // + 5 + 8 warp partials (block kernel); ceil(C/32) + 8 bounds both.
  const double k = double((C + 31) / 32 + 8);
  // mean: summation error k·u_c·mean|x|, plus its f32/f64 store.
  check_close(values(mg), mu, [&](size_t r) { return ulp_of(mu[r], sdt) + 2 * k * uc * mabs[r]; }, "mean");
  // rstd: var's relative error ≤ (k + 2)·u_c (the mean's error enters only squared), sqrt and division
  // add 2 u_c, halved by the square root; bound 2·(k + 4)·u_c relative, plus the store.
  check_close(values(rg), rs, [&](size_t r) { return ulp_of(rs[r], sdt) + 2 * (k + 4) * uc * rs[r]; }, "rstd");
}

// ---------------------------------------------------------------- attention
// Tolerances (u_c = 2^-24 of the fp32 accumulation, 2^-53 in f64; |q|,|k| ≤ 1):
//   scores: s = scale·Σ_d q_d k_d over D terms: |Δs| ≤ γ_D·scale·Σ|q_d k_d| ≤ D·u_c·scale·D, doubled for
//     the ·log2(e) multiply and exp2f's few-ulp error.
//   the running sum l adds Tk terms sequentially (tile after tile): γ_Tk relative.
//   lse: |Δlse| ≤ |Δs| + γ_Tk (relative error of l), plus the store of lse (a few u of the stat dtype).
void check_attention(const Attn& c, DType dt, uint64_t seed) {
  INFO("attention " << dname(dt) << " B" << c.B << " H" << c.H << " " << c.Tq << "x" << c.Tk << " D" << c.D);
  const Shape sq{c.B, c.H, c.Tq, c.D}, sk{c.B, c.H, c.Tk, c.D};
  const DType sdt = stat_dtype(dt);
  Generator g(seed);
  Tensor q = uni(g, sq, -1, 1).to(dt), k = uni(g, sk, -1, 1).to(dt), v = uni(g, sk, -1, 1).to(dt);
  const double scale = 1.0 / std::sqrt(double(c.D));

  Tensor out64 = Tensor::empty(sq, DType::f64), lse64 = Tensor::empty({c.B, c.H, c.Tq}, DType::f64);
  cpu_backend().attention(as_f64(q), as_f64(k), as_f64(v), scale, out64, lse64);
  Tensor outg = Tensor::empty(sq, dt, Device::CUDA), lseg = Tensor::empty({c.B, c.H, c.Tq}, sdt, Device::CUDA);
  cuda_backend().attention(on_gpu(q), on_gpu(k), on_gpu(v), scale, outg, lseg);

  const double uc = compute_roundoff(dt);
  const double ds = 2.0 * double(c.D) * uc * scale * double(c.D);  // |Δs| bound, |q|,|k| ≤ 1
  const double atol = ds + 2 * double(c.Tk) * uc, rtol = 4 * compute_roundoff(sdt);
  const std::vector<double> lref = values(lse64);
  check_close(values(lseg), lref, [&](size_t i) { return atol + rtol * std::fabs(lref[i]); }, "lse");
}

// ---------------------------------------------------------------- conv token embedding
// u_T = the unit roundoff of the dtype (2^-8 bf16, 2^-11 f16; tensor-core products of 16-bit values are
// exact in fp32, so u_c covers the accumulation).
//  pre_norm: a K-term dot product + the bias: (K+1)·u_c·|conv|(|x|,|w|,|b|) + one ulp of the dtype, + u_T·|conv|
//   for the composed fallback (C > 1024), whose cuBLAS GEMM rounds to the dtype before the bias add.
//  mean/rstd: the norm runs on the STORED pre_norm, the reference on the exact one. With E the largest
//   pre_norm error of a token: |Δmean| ≤ E, |Δvar| ≤ 4·E·std so |Δrstd|/rstd ≤ 2·E·rstd; the norm's own
//   sums add (C+8)·u_c relative.
struct EmbCase {
  int64_t N, Cin, C, H, W, k, stride, pad;
};

void check_conv_embedding(const EmbCase& c, DType dt, bool with_bias, bool affine, uint64_t seed) {
  INFO("conv_embedding x [" << c.N << "," << c.Cin << "," << c.H << "," << c.W << "] C " << c.C << " k " << c.k
                            << " stride " << c.stride << " pad " << c.pad << " " << dname(dt)
                            << (with_bias ? " bias" : "") << (affine ? " affine" : ""));
  Conv2dArgs a;
  a.stride_h = a.stride_w = c.stride;
  a.pad_h = a.pad_w = c.pad;
  const int64_t Ho = (c.H + 2 * c.pad - c.k) / c.stride + 1, Wo = (c.W + 2 * c.pad - c.k) / c.stride + 1;
  const int64_t P = Ho * Wo, T = c.N * P, C = c.C, K = c.Cin * c.k * c.k;
  const DType sdt = stat_dtype(dt);
  const double eps = 1e-5;
  Generator g(seed);
  Tensor x = uni(g, {c.N, c.Cin, c.H, c.W}, -1, 1).to(dt);
  Tensor w = uni(g, {C, c.Cin, c.k, c.k}, -0.5, 0.5).to(dt);
  Tensor b = with_bias ? uni(g, {C}, -0.5, 0.5).to(dt) : Tensor();
  Tensor lw = affine ? uni(g, {C}, 0.5, 1.5).to(dt) : Tensor();
  Tensor lb = affine ? uni(g, {C}, -0.5, 0.5).to(dt) : Tensor();

  Tensor tok64 = Tensor::empty({c.N, P, C}, DType::f64), pre64 = Tensor::empty({c.N, P, C}, DType::f64);
  Tensor mean64 = Tensor::empty({T}, DType::f64), rstd64 = Tensor::empty({T}, DType::f64);
  cpu_backend().conv_embedding(as_f64(x), as_f64(w), as_f64(b), a, as_f64(lw), as_f64(lb), eps, tok64, pre64, mean64,
                               rstd64);
  Tensor img_mag = Tensor::empty({c.N, C, Ho, Wo}, DType::f64);  // |conv|: the conv of absolute values
  cpu_backend().conv2d(abs64(x), abs64(w), abs64(b), a, img_mag);
  const std::vector<double> imag = values(img_mag);
  auto mag = [&](int64_t t, int64_t ch) { return imag[size_t(((t / P) * C + ch) * P + t % P)]; };

  Tensor tokg = Tensor::empty({c.N, P, C}, dt, Device::CUDA), preg = Tensor::empty({c.N, P, C}, dt, Device::CUDA);
  Tensor meang = Tensor::empty({T}, sdt, Device::CUDA), rstdg = Tensor::empty({T}, sdt, Device::CUDA);
  cuda_backend().conv_embedding(on_gpu(x), on_gpu(w), on_gpu(b), a, on_gpu(lw), on_gpu(lb), eps, tokg, preg, meang,
                                rstdg);

  const double uc = compute_roundoff(dt), ut = unit_roundoff(dt);
  const std::vector<double> pref = values(pre64), mref = values(mean64), rref = values(rstd64);
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
}

// ---------------------------------------------------------------- batch norm (training)
// Per channel, M = N·H·W values in [1, 3] (|mean| > std stresses the variance).
void check_batch_norm(const Shape& s, DType dt, bool affine, uint64_t seed) {
  INFO("batch_norm train x " << shape_str(s) << " " << dname(dt) << (affine ? " affine" : ""));
  const int64_t C = s[1];
  const DType sdt = stat_dtype(dt);
  const double eps = 1e-5;
  Generator g(seed);
  Tensor x = uni(g, s, 1, 3).to(dt);
  Tensor w = affine ? uni(g, {C}, 0.5, 1.5).to(dt) : Tensor();
  Tensor b = affine ? uni(g, {C}, -0.5, 0.5).to(dt) : Tensor();

  Tensor m64 = Tensor::empty({C}, DType::f64), i64 = Tensor::empty({C}, DType::f64), y64 = Tensor::empty(s, DType::f64);
  cpu_backend().batch_norm(as_f64(x), as_f64(w), as_f64(b), m64, i64, eps, true, y64);
  Tensor mg = Tensor::empty({C}, sdt, Device::CUDA), ig = Tensor::empty({C}, sdt, Device::CUDA),
         yg = Tensor::empty(s, dt, Device::CUDA);
  cuda_backend().batch_norm(on_gpu(x), on_gpu(w), on_gpu(b), mg, ig, eps, true, yg);

  const int64_t M = s[0] * s[2] * s[3];
  const double uc = compute_roundoff(dt);
  // Summation depth: ceil(M/256) sequential terms per thread, 5 shuffle levels, 8 warps, ≤ 64 slices.
  const double k = double((M + 255) / 256 + 5 + 8 + cuda::conv::kMaxSlices);
  // mean of values in [1, 3]; invstd as layer norm's rstd (relative error (k + 4)·u_c).
  const std::vector<double> mref = values(m64), iref = values(i64);
  check_close(values(mg), mref, [&](size_t c) { return ulp_of(mref[c], sdt) + 2 * k * uc * 3; }, "mean");
  check_close(values(ig), iref, [&](size_t c) { return ulp_of(iref[c], sdt) + 2 * (k + 4) * uc * iref[c]; }, "invstd");
}

}  // namespace

TEST_CASE("cuda layer_norm saved mean and rstd") {
  SKIP_WITHOUT_GPU();
  const LnCase cases[] = {
      {2 * 3136, 64, true, true, 1e-5, 0},  // CvT-13 stage 1
      {2 * 784, 192, true, true, 1e-5, 0},  // stage 2
      {2 * 197, 384, true, true, 1e-5, 0},  // stage 3
      {2 * 197, 768, true, true, 1e-5, 0},  // ViT-B/16
      {1, 1, false, false, 1e-5, 0},        // a zero variance: rstd = 1/√eps
      {3, 7, true, false, 1e-6, 0},
      {257, 33, true, true, 1e-5, 0},
      {3, 1025, false, false, 1e-5, 0},     // the block kernel (C > 1024)
      {1, 4097, true, true, 1e-5, 0},
      {257, 768, true, true, 1e-5, 50},     // large |mean| against the spread
      {3, 4097, true, false, 1e-5, 50},
      {257, 192, true, true, 0.5, 0},       // a big eps
  };
  uint64_t seed = 100;
  for (const LnCase& c : cases)
    for (DType dt : kFloatTypes) check_layer_norm(c, dt, seed++);
}

TEST_CASE("cuda attention saved lse") {
  SKIP_WITHOUT_GPU();
  struct A { Attn a; std::vector<DType> dts; };
  const std::vector<DType> model = {DType::f32, DType::bf16, DType::f16};
  const std::vector<DType> odd = {DType::f32, DType::bf16, DType::f16, DType::f64};
  const std::vector<DType> padded = {DType::f32, DType::bf16, DType::f64};
  const A cases[] = {
      {{1, 1, 3136, 784, 64}, model},  // CvT-13 stage 1 (k/v strided by 2)
      {{1, 3, 784, 196, 64}, model},   // stage 2
      {{2, 6, 197, 50, 64}, model},    // stage 3
      {{2, 12, 197, 197, 64}, model},  // ViT-B/16
      {{1, 2, 1, 1, 32}, odd},         // one query, one key
      {{1, 2, 7, 129, 64}, odd},       // tails of the 64-row tiles
      {{1, 2, 65, 63, 128}, odd},
      {{1, 2, 129, 7, 32}, odd},
      {{2, 2, 65, 129, 24}, padded},   // head dims between the kernel sizes, zero-padded
      {{2, 2, 129, 1, 100}, padded},
  };
  uint64_t seed = 1000;
  for (const A& c : cases)
    for (DType dt : c.dts) check_attention(c.a, dt, seed++);
}

TEST_CASE("cuda conv_embedding saved pre_norm, mean and rstd") {
  SKIP_WITHOUT_GPU();
  // The pre_norm bound assumes true fp32 GEMMs (the default precision) in the composed path.
  REQUIRE(matmul_precision() == MatmulPrecision::Highest);
  const EmbCase cases[] = {
      {2, 3, 64, 224, 224, 7, 4, 2},   // CvT-13 stage-1 embedding
      {2, 64, 192, 56, 56, 3, 2, 1},   // stage 2
      {2, 192, 384, 28, 28, 3, 2, 1},  // stage 3
      {2, 1, 1, 5, 17, 1, 1, 0},       // one channel: a zero variance
      {2, 3, 7, 17, 5, 3, 2, 1},
      {2, 5, 33, 17, 17, 7, 4, 2},
      {2, 5, 200, 5, 17, 4, 1, 2},
      {2, 3, 600, 9, 9, 3, 2, 1},      // the 16-bit FMA path
      {2, 3, 1100, 9, 9, 3, 2, 1},     // the composed fallback (C > 1024)
  };
  uint64_t seed = 1;
  for (const EmbCase& c : cases)
    for (DType dt : kFloatTypes) {
      // bias and affine alternate independently across the seeds
      check_conv_embedding(c, dt, (seed & 1) != 0, (seed & 2) != 0, seed);
      ++seed;
    }
}

TEST_CASE("cuda batch_norm saved mean and invstd (training)") {
  SKIP_WITHOUT_GPU();
  const Shape cases[] = {{2, 64, 56, 56}, {2, 384, 14, 14},  // CvT-13-sized activations
                         {1, 3, 1, 1}, {2, 5, 1, 1}, {1, 7, 3, 5}, {3, 2, 33, 31}};
  uint64_t seed = 500;
  for (const Shape& s : cases)
    for (DType dt : kFloatTypes) {
      check_batch_norm(s, dt, (seed & 1) != 0, seed);
      ++seed;
    }
}
