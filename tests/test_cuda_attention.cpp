// Fused attention on CUDA (kernels/cuda/attention.cu) against the CPU reference (kernels/cpu/nn.cpp), and
// the tile/index helpers of kernels/cuda/attention_tiling.h (those run everywhere, GPU or not).
//
// Method: inputs uniform in [−1, 1] made on the CPU in f64, rounded to the tested dtype, and the reference
// computed in f64 on the very same rounded inputs (cpu_backend() in f64), so the comparison measures only
// the kernel's own error. Shapes: the attention layers of CvT-13 and ViT-B/16 at small batch (lengths that
// are not multiples of the 64-row tiles, so tail masking is exercised) and odd sizes 1, 7, 63, 65, 129.
//
// Tolerances (u = unit roundoff of the storage type, u_c = 2^-24 of the fp32 accumulation; |q|,|k|,|v| ≤ 1):
//   scores: s = scale·Σ_d q_d k_d in fp32 over D terms: |Δs| ≤ γ_D·scale·Σ|q_d k_d| ≤ D·u_c·scale·D,
//     doubled for the ·log2(e) multiply and exp2f's few-ulp error. A relative error ε of every p moves
//     out = Σ p_j v_j / Σ p_j by at most 2ε·max|v|.
//   sums: the running sum l and the P·V accumulators add Tk terms sequentially (tile after tile): γ_Tk.
//   16-bit only: P is rounded to the storage type before P·V (as FlashAttention-2 does), a relative error
//     u per term, so |Δout| ≤ u·Σ_j p_j|v_j| / l ≤ u·max|v|; and the stored output rounds once more (u·|out|).
//     For bf16 (u = 2^-8) that is ≈ 2·2^-8 ≈ 7.8e-3 absolute on outputs of size ≤ 1 — independent of Tk,
//     because the p_j/l are convex weights; the fp32 terms (≈ Tk·2^-24 ≤ 5e-5 at Tk = 784) are far below it.
//   lse: |Δlse| ≤ |Δs| + γ_Tk (relative error of l), plus the f32 store of lse (u_c·|lse|).
//   backward: every gradient is a sum of products with P or dS rounded to u (16-bit); the bound is taken
//     normwise: |Δg| ≤ (8u + 2|Δs| + 4·T·u_c)·max|g_ref| + u·|g_ref|, T the summed length. The factor 8
//     covers dS = P∘(dP − delta) (two rounded factors and the cancellation in dP − delta) and the ratio
//     Σ|terms| / max|g| of these inputs; it is an engineering bound, to be confirmed on the GPU.
#include <doctest/doctest.h>

#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "kernels/cuda/attention_tiling.h"

using namespace tessera;
namespace at = tessera::cuda::attn;

namespace {

using namespace tessera::testing;


double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Worst |got − want| / tol over the elements (NaN fails); reports the element.
void check_close(const std::vector<double>& got, const std::vector<double>& want, double atol, double rtol,
                 const std::string& what) {
  REQUIRE(got.size() == want.size());
  double worst = 0, wg = 0, ww = 0;
  int64_t wi = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = atol + rtol * std::fabs(want[i]);
    const double r = std::fabs(got[i] - want[i]) / tol;
    if (!(r <= worst)) { worst = std::isnan(r) ? INFINITY : r; wi = int64_t(i); wg = got[i]; ww = want[i]; }
  }
  INFO(what << ": worst element " << wi << ": got " << wg << ", want " << ww << " (ratio " << worst << ")");
  CHECK(worst <= 1.0);
}

struct Case { int64_t B, H, Tq, Tk, D; };
std::string name_of(const Case& c, DType dt) {
  return dname(dt) + " B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " " + std::to_string(c.Tq) + "x" +
         std::to_string(c.Tk) + " D" + std::to_string(c.D);
}

// Runs forward (and backward) on CUDA in dtype dt and compares with the f64 CPU reference.
void run_case(const Case& c, DType dt, bool backward, uint64_t seed) {
  const std::string nm = name_of(c, dt);
  INFO(nm);
  Generator g(seed);
  const Shape sq{c.B, c.H, c.Tq, c.D}, sk{c.B, c.H, c.Tk, c.D};
  // Rounded to dt, then held in f64: the reference sees exactly the GPU's inputs.
  auto make = [&](const Shape& s) { return g.uniform(s, -1, 1, DType::f64).to(dt).to(DType::f64); };
  Tensor q = make(sq), k = make(sk), v = make(sk), dout = make(sq);
  const double scale = 1.0 / std::sqrt(double(c.D));
  const DType stat = dt == DType::f64 ? DType::f64 : DType::f32;

  Tensor out_ref = Tensor::empty(sq, DType::f64), lse_ref = Tensor::empty({c.B, c.H, c.Tq}, DType::f64);
  cpu_backend().attention(q, k, v, scale, out_ref, lse_ref);

  auto gpu = [&](const Tensor& t) { return t.to(dt).to(Device::CUDA); };
  Tensor qg = gpu(q), kg = gpu(k), vg = gpu(v);
  Tensor out = Tensor::empty(sq, dt, Device::CUDA), lse = Tensor::empty({c.B, c.H, c.Tq}, stat, Device::CUDA);
  cuda_backend().attention(qg, kg, vg, scale, out, lse);

  const double u = dt == DType::f32 || dt == DType::f64 ? 0.0 : unit_roundoff(dt), uc = compute_roundoff(dt);
  const double ds = 2.0 * double(c.D) * uc * scale * double(c.D);  // |Δs| bound, |q|,|k| ≤ 1
  const double store_u = unit_roundoff(dt);
  check_close(values(out), values(out_ref), 2 * ds + 2 * double(c.Tk) * uc + 2 * u + 4 * uc, store_u, nm + " out");
  check_close(values(lse), values(lse_ref), ds + 2 * double(c.Tk) * uc, 4 * compute_roundoff(stat), nm + " lse");
  if (!backward) return;

  Tensor dq_ref = Tensor::empty(sq, DType::f64), dk_ref = Tensor::empty(sk, DType::f64),
         dv_ref = Tensor::empty(sk, DType::f64);
  // The reference backward uses the reference forward's out and lse; the GPU its own (rounded) ones, as in
  // training. Their difference is within the forward tolerance and enters delta at the same order.
  cpu_backend().attention_backward(dout, q, k, v, out_ref, lse_ref, scale, dq_ref, dk_ref, dv_ref);
  Tensor dq = Tensor::empty(sq, dt, Device::CUDA), dk = Tensor::empty(sk, dt, Device::CUDA),
         dv = Tensor::empty(sk, dt, Device::CUDA);
  cuda_backend().attention_backward(gpu(dout), qg, kg, vg, out, lse, scale, dq, dk, dv);
  auto grad_check = [&](const Tensor& got, const Tensor& ref, int64_t T, const char* what) {
    const std::vector<double> r = values(ref);
    const double atol = (8 * std::max(u, store_u * (dt == DType::f32 ? 1 : 0)) + 2 * ds + 4 * double(T) * uc +
                         8 * uc) * std::max(max_abs(r), 1e-30);
    check_close(values(got), r, atol, store_u, nm + " " + what);
  };
  grad_check(dq, dq_ref, c.Tk, "dq");
  grad_check(dk, dk_ref, c.Tq, "dk");
  grad_check(dv, dv_ref, c.Tq, "dv");
}

}  // namespace

// ---------------------------------------------------------------- helpers (run without a GPU)
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

// ---------------------------------------------------------------- GPU against the CPU reference
TEST_CASE("cuda attention: model shapes forward and backward") {
  SKIP_WITHOUT_GPU();
  const Case cases[] = {{1, 1, 3136, 784, 64}, {1, 3, 784, 196, 64}, {2, 6, 197, 50, 64}, {2, 12, 197, 197, 64}};
  uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (const Case& c : cases) run_case(c, dt, true, seed++);
}

TEST_CASE("cuda attention: odd lengths and head dims") {
  SKIP_WITHOUT_GPU();
  const int64_t lens[] = {1, 7, 63, 65, 129};
  uint64_t seed = 1000;
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
    for (int64_t D : {32, 64, 128})
      for (int64_t tq : lens)
        for (int64_t tk : lens) run_case({1, 2, tq, tk, D}, dt, true, seed++);
}

TEST_CASE("cuda attention: head dims between the kernel sizes run zero-padded") {
  SKIP_WITHOUT_GPU();
  // D = 16 and 24 (the transformers fixtures' heads), 48, 100: padded to 32, 32, 64, 128. Same tolerances:
  // the padded columns are exact zeros and change no sum.
  const int64_t lens[] = {1, 65, 129};
  uint64_t seed = 3000;
  for (DType dt : {DType::f32, DType::bf16, DType::f64})
    for (int64_t D : {16, 24, 48, 100})
      for (int64_t tq : lens)
        for (int64_t tk : lens) run_case({2, 2, tq, tk, D}, dt, true, seed++);
}

TEST_CASE("cuda attention: bad inputs fail naming the op") {
  SKIP_WITHOUT_GPU();
  Tensor q = Tensor::empty({1, 1, 8, 160}, DType::f32, Device::CUDA);  // D > 128: no kernel
  Tensor out = Tensor::empty({1, 1, 8, 160}, DType::f32, Device::CUDA);
  Tensor lse = Tensor::empty({1, 1, 8}, DType::f32, Device::CUDA);
  CHECK_THROWS_WITH(cuda_backend().attention(q, q, q, 1.0, out, lse), doctest::Contains("head dim"));
  Tensor q2 = Tensor::empty({1, 1, 8, 64}, DType::f32, Device::CUDA);
  Tensor t2 = Tensor::empty({1, 8, 1, 64}, DType::f32, Device::CUDA).transpose(1, 2);
  Tensor out2 = Tensor::empty({1, 1, 8, 64}, DType::f32, Device::CUDA);
  CHECK_THROWS_WITH(cuda_backend().attention(t2, q2, q2, 1.0, out2, lse), doctest::Contains("contiguous"));
  Tensor lse64 = Tensor::empty({1, 1, 8}, DType::f64, Device::CUDA);
  CHECK_THROWS_WITH(cuda_backend().attention(q2, q2, q2, 1.0, out2, lse64), doctest::Contains("lse"));
  Tensor qc = Tensor::empty({1, 1, 8, 64}, DType::f32);
  CHECK_THROWS_WITH(cuda_backend().attention(qc, q2, q2, 1.0, out2, lse), doctest::Contains("attention"));
}

#ifdef TESSERA_HAS_CUDA
TEST_CASE("cuda attention_probs: rows sum to 1 and match the softmax") {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO(dname(dt));
    const int64_t B = 2, H = 3, Tq = 65, Tk = 50, D = 64;
    Generator g(7);
    Tensor q = g.uniform({B, H, Tq, D}, -1, 1, DType::f64).to(dt).to(DType::f64);
    Tensor k = g.uniform({B, H, Tk, D}, -1, 1, DType::f64).to(dt).to(DType::f64);
    Tensor v = g.uniform({B, H, Tk, D}, -1, 1, DType::f64).to(dt).to(DType::f64);
    const double scale = 0.125;
    Tensor qg = q.to(dt).to(Device::CUDA), kg = k.to(dt).to(Device::CUDA), vg = v.to(dt).to(Device::CUDA);
    Tensor out = Tensor::empty({B, H, Tq, D}, dt, Device::CUDA), lse = Tensor::empty({B, H, Tq}, DType::f32, Device::CUDA);
    cuda_backend().attention(qg, kg, vg, scale, out, lse);
    Tensor probs = Tensor::empty({B, H, Tq, Tk}, dt, Device::CUDA);
    cuda::attention_probs(qg, kg, scale, lse, probs);
    const std::vector<double> p = values(probs), qv = values(q), kv = values(k);
    std::vector<double> want(p.size());
    for (int64_t r = 0; r < B * H * Tq; ++r) {  // softmax of the f64 scores
      const int64_t bh = r / Tq;
      std::vector<double> s(size_t(Tk), 0.0);
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < Tk; ++j) {
        for (int64_t d = 0; d < D; ++d) s[size_t(j)] += qv[size_t(r * D + d)] * kv[size_t((bh * Tk + j) * D + d)];
        s[size_t(j)] *= scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      for (double& x : s) sum += std::exp(x - mx);
      for (int64_t j = 0; j < Tk; ++j) want[size_t(r * Tk + j)] = std::exp(s[size_t(j)] - mx) / sum;
    }
    // Each p carries the lse error (≈ |Δs| + Tk·u_c, relative) and one rounding to dt.
    const double u = unit_roundoff(dt), rel = 2 * 64.0 * 0x1p-24 * scale * 64.0 + 2 * Tk * 0x1p-24 + u;
    check_close(p, want, 1e-30, rel, "probs");
    for (int64_t r = 0; r < B * H * Tq; ++r) {
      double s = 0;
      for (int64_t j = 0; j < Tk; ++j) s += p[size_t(r * Tk + j)];
      CHECK(std::fabs(s - 1) <= rel + 1e-12);
    }
  }
}
#endif
