// The CUDA runtime and backend-level contracts that are not a per-op comparison (those live in the op
// registry, tests/backend_ops.h + tests/test_backend_ops.cpp): availability and status, the allocator,
// host/device copies and every dtype conversion, events, the Philox streams, the backend calls that have no
// op-level form (GEMM's alpha/beta and broadcast strides, index_add, binary ops no op uses), the error
// messages that name the op, and bit-reproducibility (fixed reduction orders; gradients left undefined do
// not change the others).
//
// Tolerances are derived per dtype: u(dtype) is the unit roundoff (f64 2^-53, f32 2^-24, f16 2^-11,
// bf16 2^-8) and each comparison says which error terms it allows; where a result can be exact
// (integer-valued data, copies), the comparison is exact. Without a usable GPU every test that needs one
// prints why and returns (the runtime test still runs).
#include <doctest/doctest.h>

#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"
#include "engine/optim.h"
#include "kernels/cuda/attention_tiling.h"

using namespace tessera;

namespace {

using namespace tessera::testing;

// Values in logical order. contiguous() first: the GPU's own copy kernel packs a strided view, so the
// device-to-host transfer moves one dense block.

// The worst element of |got − want| / tol(i); <= 1 passes. NaN anywhere counts as a failure.
struct Worst {
  double ratio = 0, got = 0, want = 0, tol = 0, max_abs_err = 0;
  int64_t index = -1;
};
Worst compare(const std::vector<double>& got, const std::vector<double>& want,
              const std::function<double(size_t)>& tol) {
  REQUIRE(got.size() == want.size());
  Worst w;
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::fabs(got[i] - want[i]);
    bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    double t = tol(i);
    double r = same ? 0.0 : (t > 0 ? err / t : INFINITY);
    if (!(r <= w.ratio)) { w = {r, got[i], want[i], t, w.max_abs_err, int64_t(i)}; if (std::isnan(r)) w.ratio = INFINITY; }
    if (!same) w.max_abs_err = std::max(w.max_abs_err, std::isnan(err) ? INFINITY : err);
  }
  return w;
}
#define CHECK_WORST(w, what)                                                                             \
  do {                                                                                                   \
    const Worst& w_ = (w);                                                                               \
    INFO(what << ": worst element " << w_.index << ": got " << w_.got << ", want " << w_.want            \
              << ", |err| " << std::fabs(w_.got - w_.want) << " vs tolerance " << w_.tol                 \
              << " (ratio " << w_.ratio << "); max |err| " << w_.max_abs_err);                           \
    CHECK(w_.ratio <= 1.0);                                                                              \
  } while (0)

// Exact agreement, reported like CHECK_WORST (first worst element, both values) instead of "{?} == {?}".
#define CHECK_EXACT(got, want) CHECK_WORST(compare((got), (want), [](size_t) { return 0.0; }), #got)

std::string describe(const Tensor& t) {
  std::string s = t.str() + (t.is_contiguous() ? "" : " strides " + shape_str(t.strides()));
  return s;
}

// A view builder applied identically to a CPU tensor and its CUDA copy.
using View = std::function<Tensor(const Tensor&)>;
struct Layout {
  Shape base;
  View view;
  std::string name;
};
Tensor identity(const Tensor& t) { return t; }
std::vector<Layout> layouts_1d_and_views() {
  return {
      {{1}, identity, "[1]"},
      {{7}, identity, "[7]"},
      {{33}, identity, "[33]"},
      {{1023}, identity, "[1023]"},
      {{4097}, identity, "[4097]"},
      {{33, 65}, [](const Tensor& t) { return t.transpose(0, 1); }, "[33,65] transposed"},
      {{40, 100}, [](const Tensor& t) { return t.slice(1, 3, 97, 3); }, "[40,100][:, 3:97:3]"},
      {{5, 7, 9}, [](const Tensor& t) { return t.permute({2, 0, 1}).slice(0, 1, 9, 2); }, "[5,7,9] permuted+stepped"},
  };
}

// Integer-valued data in [lo, hi] (exact in every float type, and in sums that stay below 2^24).
Tensor integers(Generator& g, const Shape& shape, int lo, int hi) {
  std::vector<double> v = g.uniform(shape, 0, 1, DType::f64).to_vector<double>();
  for (double& x : v) x = std::floor(lo + (hi - lo + 1) * x);
  return Tensor::from(v, shape, DType::f64);
}

struct PrecisionGuard {
  MatmulPrecision saved = matmul_precision();
  explicit PrecisionGuard(MatmulPrecision p) { set_matmul_precision(p); }
  ~PrecisionGuard() { set_matmul_precision(saved); }
};

bool message_contains(const std::function<void()>& f, const std::string& needle, std::string& message) {
  try {
    f();
  } catch (const std::exception& e) {
    message = e.what();
    return message.find(needle) != std::string::npos;
  }
  message = "(nothing was thrown)";
  return false;
}

}  // namespace

// ================================================================ runtime
TEST_CASE("cuda runtime: built, availability and a clear status") {
  std::string status = cuda::status();
  MESSAGE("cuda::status(): " << status);
  CHECK_FALSE(status.empty());
  if (!cuda::built()) {  // a CPU-only build links engine/core/cuda_unavailable.cpp
    CHECK_FALSE(cuda::available());
    CHECK_THROWS(cuda_backend());
    return;
  }
  if (!cuda::available()) {
    // The program must keep running on the CPU: device queries say why, device work throws saying why.
    std::string msg;
    CHECK_MESSAGE(message_contains([] { cuda_backend(); }, status, msg), msg);
    CHECK_MESSAGE(message_contains([] { Tensor::empty({2}, DType::f32, Device::CUDA); }, "not available", msg), msg);
    CHECK_THROWS(cuda::pinned_alloc(16));
    CHECK_NOTHROW(cuda::synchronize());
    CHECK_NOTHROW(cuda::empty_cache());
    CHECK(cuda::allocator_stats().in_use == 0);
    // Pinned storage falls back to plain host memory, so pin_memory() still works.
    Tensor t = Tensor::arange(5).pin_memory();
    CHECK(t.to_vector<double>() == std::vector<double>{0, 1, 2, 3, 4});
    return;
  }
  CHECK(status.find("sm_") != std::string::npos);
  CHECK(status.find("SMs") != std::string::npos);
  CHECK(cuda::current_stream() != nullptr);
  CHECK(cuda_backend().device() == Device::CUDA);
}

// ================================================================ allocator
TEST_CASE("cuda allocator: rounding, reuse, stats, out-of-memory message, threads") {
  SKIP_WITHOUT_GPU();
  cuda::synchronize();
  cuda::empty_cache();
  cuda::AllocatorStats s0 = cuda::allocator_stats();
  CHECK(s0.cached == 0);

  void* p = cuda::device_alloc(1000);  // rounds to 1024
  cuda::AllocatorStats s1 = cuda::allocator_stats();
  CHECK(s1.in_use == s0.in_use + 1024);
  CHECK(s1.mallocs == s0.mallocs + 1);
  CHECK(s1.peak_in_use >= s1.in_use);
  cuda::device_free(p);
  cuda::AllocatorStats s2 = cuda::allocator_stats();
  CHECK(s2.in_use == s0.in_use);
  CHECK(s2.cached == 1024);

  void* q = cuda::device_alloc(900);  // same size class: the cached block comes back
  cuda::AllocatorStats s3 = cuda::allocator_stats();
  CHECK(q == p);
  CHECK(s3.reuses == s2.reuses + 1);
  CHECK(s3.mallocs == s2.mallocs);
  CHECK(s3.cached == 0);
  cuda::device_free(q);

  const size_t MiB = size_t(1) << 20;
  void* big = cuda::device_alloc(3 * MiB + 1);  // rounds to 4 MiB (2 MiB granularity)
  CHECK(cuda::allocator_stats().in_use == s0.in_use + 4 * MiB);
  cuda::device_free(big);
  void* big2 = cuda::device_alloc(3 * MiB + MiB / 2);  // also 4 MiB: reused
  CHECK(big2 == big);
  void* other = cuda::device_alloc(MiB + 1);  // 2 MiB block: the cached 1 KiB block is too small
  CHECK(other != big2);
  cuda::device_free(big2);
  void* small = cuda::device_alloc(2 * MiB + 1);  // 4 MiB class; the cached 4 MiB block fits exactly
  CHECK(small == big2);
  cuda::device_free(small);
  cuda::device_free(other);
  // Best fit with a waste limit: with only a 4 MiB block cached, a 512-byte request gets a fresh block.
  cuda::empty_cache();
  void* four = cuda::device_alloc(4 * MiB);
  cuda::device_free(four);
  cuda::AllocatorStats s4 = cuda::allocator_stats();
  void* tiny = cuda::device_alloc(512);
  CHECK(tiny != four);
  CHECK(cuda::allocator_stats().mallocs == s4.mallocs + 1);
  CHECK(cuda::allocator_stats().cached == 4 * MiB);
  cuda::device_free(tiny);

  cuda::empty_cache();
  CHECK(cuda::allocator_stats().cached == 0);
  CHECK(cuda::allocator_stats().in_use == s0.in_use);

  // Out of memory: empties the cache, retries once, then throws with the numbers.
  std::string msg;
  CHECK_MESSAGE(message_contains([] { cuda::device_alloc(size_t(1) << 50); }, "out of memory", msg), msg);
  CHECK_MESSAGE(msg.find("requested") != std::string::npos, msg);
  CHECK(cuda::allocator_stats().in_use == s0.in_use);

  // Many threads allocating and freeing at once: the books must balance.
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t, &failures] {
      try {
        for (int i = 0; i < 500; ++i) {
          void* a = cuda::device_alloc(size_t(100 + 37 * ((i * 7 + t) % 50)));
          void* b = cuda::device_alloc(size_t(1 + (i % 3)) * (size_t(1) << 21));
          cuda::device_free(a);
          cuda::device_free(b);
        }
      } catch (...) {
        ++failures;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(cuda::allocator_stats().in_use == s0.in_use);
  cuda::empty_cache();
}

// ================================================================ copies between host and device
TEST_CASE("cuda copies: pinned async round trip, pageable sync copies, device-to-device") {
  SKIP_WITHOUT_GPU();
  const size_t n = 1 << 20;
  auto* h_src = static_cast<float*>(cuda::pinned_alloc(n * sizeof(float)));
  auto* h_dst = static_cast<float*>(cuda::pinned_alloc(n * sizeof(float)));
  for (size_t i = 0; i < n; ++i) { h_src[i] = float(i) * 0.5f - 7.0f; h_dst[i] = -1.0f; }
  void* d1 = cuda::device_alloc(n * sizeof(float));
  void* d2 = cuda::device_alloc(n * sizeof(float));
  cuda::copy_host_to_device(d1, h_src, n * sizeof(float), /*async=*/true);
  cuda::copy_device_to_device(d2, d1, n * sizeof(float));
  cuda::copy_device_to_host(h_dst, d2, n * sizeof(float), /*async=*/true);
  cuda::synchronize();
  CHECK(std::memcmp(h_src, h_dst, n * sizeof(float)) == 0);

  // Pageable memory: synchronous copies are fine, async ones are refused with a reason.
  std::vector<float> pageable(n, 3.0f), back(n, 0.0f);
  cuda::copy_host_to_device(d1, pageable.data(), n * sizeof(float));
  cuda::copy_device_to_host(back.data(), d1, n * sizeof(float));
  CHECK(back == pageable);
  std::string msg;
  CHECK_MESSAGE(message_contains([&] { cuda::copy_host_to_device(d1, pageable.data(), 64, true); }, "page-locked", msg), msg);

  cuda::device_free(d1);
  cuda::device_free(d2);
  cuda::pinned_free(h_src);
  cuda::pinned_free(h_dst);

  // Through tensors: pinned CPU tensor -> CUDA -> CPU, and a strided CUDA destination.
  Generator g(7);
  Tensor x = g.normal({33, 65}, 0, 1, DType::f32).pin_memory();
  Tensor xc = x.to(Device::CUDA);
  CHECK_EXACT(values(xc), x.to_vector<double>());
  Tensor dst = Tensor::zeros({65, 33}, DType::f32, Device::CUDA).transpose(0, 1);
  dst.copy_(x);  // host -> device into a transposed view
  CHECK_EXACT(values(dst), x.to_vector<double>());
}

// ================================================================ fill / copy
TEST_CASE("cuda fill and copy: all 8 dtypes to all 8 dtypes, strided source and destination") {
  SKIP_WITHOUT_GPU();
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i64, DType::i32, DType::u8, DType::boolean};
  Generator g(11);
  // Integer values in [0, 100]: representable in every dtype, so every conversion is exact and the
  // GPU must match the CPU bit for bit (bool: nonzero -> 1).
  Tensor base64 = integers(g, {6, 37, 11}, 0, 100);
  const std::vector<std::pair<View, std::string>> views = {
      {identity, "contiguous"},
      {[](const Tensor& t) { return t.permute({2, 0, 1}); }, "permuted"},
      {[](const Tensor& t) { return t.slice(1, 2, 35, 3).transpose(0, 2); }, "stepped+transposed"},
      {[](const Tensor& t) { return t.select(2, 4).unsqueeze(2).expand({6, 37, 5}); }, "broadcast"},
  };
  for (DType s : all) {
    Tensor src_cpu = base64.to(s), src_gpu = src_cpu.to(Device::CUDA);
    for (DType d : all) {
      for (const auto& [view, vname] : views) {
        Tensor sv_cpu = view(src_cpu), sv_gpu = view(src_gpu);
        Tensor out_cpu = Tensor::empty(sv_cpu.shape(), d), out_gpu = Tensor::empty(sv_cpu.shape(), d, Device::CUDA);
        out_cpu.copy_(sv_cpu);
        out_gpu.copy_(sv_gpu);
        INFO(dname(s) << " -> " << dname(d) << ", source " << vname << " " << describe(sv_gpu));
        CHECK_EXACT(values(out_gpu), out_cpu.to_vector<double>());
      }
      // Strided destination: write into a transposed view.
      Tensor dst_gpu = Tensor::zeros({11, 37, 6}, d, Device::CUDA);
      Tensor dst_cpu = Tensor::zeros({11, 37, 6}, d);
      Tensor dv_gpu = dst_gpu.permute({2, 1, 0}), dv_cpu = dst_cpu.permute({2, 1, 0});
      dv_gpu.copy_(src_gpu);
      dv_cpu.copy_(src_cpu);
      INFO(dname(s) << " -> " << dname(d) << " into a permuted destination");
      CHECK_EXACT(values(dst_gpu), dst_cpu.to_vector<double>());
    }
  }
  // Non-integer floats: conversions between float types round identically (round to nearest even).
  Tensor r = g.normal({1023, 7}, 0, 100, DType::f64);
  for (DType s : kFloatTypes)
    for (DType d : kFloatTypes) {
      Tensor src_cpu = r.to(s), src_gpu = src_cpu.to(Device::CUDA);
      Tensor out_cpu = src_cpu.transpose(0, 1).to(d);
      Tensor out_gpu = src_gpu.transpose(0, 1).to(d);
      INFO("rounding " << dname(s) << " -> " << dname(d) << " (transposed source)");
      CHECK_EXACT(values(out_gpu), out_cpu.to_vector<double>());
    }
  // Large transposes take the tiled path; every element size, odd edges, a batch dim.
  for (DType dt : {DType::u8, DType::f16, DType::f32, DType::f64}) {
    for (const Shape& shape : std::vector<Shape>{{33, 1023}, {1023, 9}, {3, 129, 67}}) {
      Tensor x = integers(g, shape, 0, 100).to(dt);
      Tensor xg = x.to(Device::CUDA);
      Tensor t_cpu = x.transpose(-1, -2).contiguous(), t_gpu = xg.transpose(-1, -2).contiguous();
      INFO("transpose of " << x.str());
      CHECK_EXACT(values(t_gpu), t_cpu.to_vector<double>());
    }
  }
  // fill: every dtype, strided destination.
  for (DType d : all) {
    Tensor a = Tensor::zeros({9, 10}, d, Device::CUDA), b = Tensor::zeros({9, 10}, d);
    a.slice(1, 1, 10, 3).fill_(7.0);
    b.slice(1, 1, 10, 3).fill_(7.0);
    INFO("fill " << dname(d));
    CHECK_EXACT(values(a), b.to_vector<double>());
  }
}

// ================================================================ random
TEST_CASE("cuda random: the CPU's Philox streams") {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = 0x5eed1234abcdull, offset = 12345;
  struct Kind {
    RandomKind kind;
    double a, b;
    std::string name;
  };
  const Kind kinds[] = {
      {RandomKind::Uniform, -1.0, 1.0, "uniform[-1,1)"},    // a + 2u is exact: bit-identical in f64
      {RandomKind::Uniform, -0.3, 1.7, "uniform[-0.3,1.7)"},
      {RandomKind::Normal, 0.5, 2.0, "normal(0.5, 2)"},
      {RandomKind::TruncatedNormal, -2.0, 2.0, "truncated normal [-2,2]"},
      {RandomKind::Bernoulli, 0.3, 0.0, "bernoulli(0.3)"},
  };
  for (DType dt : kFloatTypes) {
    for (const Kind& k : kinds) {
      for (int64_t n : {1, 7, 1023, 4097}) {
        // CPU reference in f32/f64 (what the CPU backend draws), converted to dt when 16-bit: the GPU's
        // 16-bit draw rounds double -> float -> 16-bit, the same two roundings.
        DType cpu_dt = dt == DType::f64 ? DType::f64 : DType::f32;
        Tensor ref = Tensor::empty({n}, cpu_dt);
        cpu_backend().random(k.kind, ref, k.a, k.b, seed, offset);
        std::vector<double> want = ref.to(dt).to_vector<double>();
        // GPU: contiguous, and into a strided (stride-2) output; element i is the i-th in logical order.
        Tensor out = Tensor::empty({n}, dt, Device::CUDA);
        cuda_backend().random(k.kind, out, k.a, k.b, seed, offset);
        Tensor strided = Tensor::empty({n, 2}, dt, Device::CUDA).select(1, 0);  // stride 2
        cuda_backend().random(k.kind, strided, k.a, k.b, seed, offset);
        std::vector<double> got = values(out), got_strided = values(strided);
        INFO(k.name << " " << dname(dt) << " n=" << n << " offset " << offset);
        CHECK_EXACT(got_strided, got);
        const bool exact = k.kind == RandomKind::Bernoulli || (dt == DType::f64 && k.kind == RandomKind::Uniform && k.a == -1.0);
        Worst w = compare(got, want, [&](size_t i) -> double {
          if (exact) return 0.0;
          if (dt != DType::f64) return ulp_of(want[i], dt);  // one rounding of nearly equal doubles
          switch (k.kind) {
            case RandomKind::Uniform:
              // The CPU compiler may contract a + (b-a)·u into an FMA (one rounding instead of two).
              return ulp_of(want[i], dt);
            case RandomKind::Normal:
              // CUDA's log (1 ulp), cos (2 ulp) and sqrt vs glibc's (≤ 1 ulp): the standard normal n agrees
              // to ≤ ~6 ulp ≤ 12u relatively (u = 2^-53); a + b·n may cancel, so the bound is absolute in
              // |a| + |b·n|, with k = 32 for margin, plus the final rounding.
              return 32 * 0x1p-53 * (std::fabs(k.a) + std::fabs(want[i] - k.a)) + ulp_of(want[i], dt);
            default:
              // x = Φ⁻¹(p) by Newton on erfc: library erfc/exp differences (≤ 5 ulp in CUDA) move the root
              // by ~5u·Φ(x)/φ(x) ≤ 5u·1/φ(2) ≈ 100u for |x| ≤ 2, i.e. ~1e-14; 1e-12 leaves margin.
              return 1e-12;
          }
        });
        CHECK_WORST(w, "random draw");
      }
    }
  }
  // The public API on CUDA draws the CPU's stream.
  Generator gc(99), gg(99);
  Tensor a = gc.normal({257}, 0, 1, DType::f32), b = gg.normal({257}, 0, 1, DType::f32, Device::CUDA);
  std::vector<double> va = a.to_vector<double>(), vb = values(b);
  Worst w = compare(vb, va, [&](size_t i) { return ulp_of(va[i], DType::f32); });
  CHECK_WORST(w, "Generator::normal on CUDA vs CPU");
  CHECK(gc.offset() == gg.offset());
}

// ================================================================ gemm
namespace {
struct GemmCase {
  int64_t batch, M, N, K;
  bool ta, tb, broadcast_a, broadcast_b;
  double alpha, beta;
};
struct GemmMode {
  DType dt;
  MatmulPrecision precision;
  std::string name;
};
const GemmMode kGemmModes[] = {{DType::f32, MatmulPrecision::Highest, "f32"},
                               {DType::f32, MatmulPrecision::High, "tf32"},
                               {DType::bf16, MatmulPrecision::Highest, "bf16"},
                               {DType::f16, MatmulPrecision::Highest, "f16"},
                               {DType::f64, MatmulPrecision::Highest, "f64"}};

// Runs C = alpha·op(A)·op(B) + beta·C0 on `device` with the stored operands given (already on it).
Tensor run_gemm(const GemmCase& c, const Tensor& A, const Tensor& B, const Tensor& C0) {
  GemmArgs g;
  g.trans_a = c.ta; g.trans_b = c.tb;
  g.batch = c.batch; g.M = c.M; g.N = c.N; g.K = c.K;
  g.alpha = c.alpha; g.beta = c.beta;
  g.A = A; g.B = B; g.C = C0.clone();
  g.stride_a = c.broadcast_a ? 0 : c.M * c.K;
  g.stride_b = c.broadcast_b ? 0 : c.K * c.N;
  g.stride_c = c.M * c.N;
  backend(A.device()).gemm(g);
  return g.C;
}
Shape a_shape(const GemmCase& c) { return {c.broadcast_a ? 1 : c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K}; }
Shape b_shape(const GemmCase& c) { return {c.broadcast_b ? 1 : c.batch, c.tb ? c.N : c.K, c.tb ? c.K : c.N}; }
std::string gemm_name(const GemmCase& c, const GemmMode& m) {
  return std::string(m.name) + " batch " + std::to_string(c.batch) + " M " + std::to_string(c.M) + " N " +
         std::to_string(c.N) + " K " + std::to_string(c.K) + (c.ta ? " Aᵀ" : "") + (c.tb ? " Bᵀ" : "") +
         (c.broadcast_a ? " A broadcast" : "") + (c.broadcast_b ? " B broadcast" : "") + " alpha " +
         std::to_string(c.alpha) + " beta " + std::to_string(c.beta);
}
}  // namespace
TEST_CASE("cuda gemm: exact on integer data (every layout), error bounds on real data (every precision)") {
  SKIP_WITHOUT_GPU();
  const GemmCase layouts[] = {
      {1, 1, 1, 1, false, false, false, false, 1, 0},
      {1, 7, 33, 65, false, false, false, false, 1, 0},
      {1, 33, 7, 65, true, false, false, false, 1, 0},
      {1, 64, 64, 64, false, true, false, false, 1, 0},
      {1, 33, 1023, 7, true, true, false, false, 1, 0},
      {3, 17, 19, 23, false, false, true, false, 1, 0},
      {4, 8, 5, 300, false, true, false, true, 0.5, -1.5},
      {2, 128, 96, 1000, true, false, false, false, 1, 1},
      {2, 5, 6, 0, false, false, false, false, 1, 0.5},  // K = 0: C = beta·C
  };
  Generator g(61);
  for (const GemmMode& mode : kGemmModes) {
    PrecisionGuard guard(mode.precision);
    for (const GemmCase& c : layouts) {
      // Integers in [-3, 3]: exact in every input type (tf32 included); products ≤ 9 and sums ≤ 9·K < 2^24
      // are exact in fp32 accumulation in any order; alpha = 0.5 and beta = −1.5 with integer C keep the
      // epilogue exact. The only rounding is the final one to a 16-bit output, the same on both sides.
      Tensor A = integers(g, a_shape(c), -3, 3), B = integers(g, b_shape(c), -3, 3);
      Tensor C0 = integers(g, {c.batch, c.M, c.N}, -3, 3);
      Tensor got = run_gemm(c, A.to(mode.dt).to(Device::CUDA), B.to(mode.dt).to(Device::CUDA), C0.to(mode.dt).to(Device::CUDA));
      Tensor want = run_gemm(c, A, B, C0).to(mode.dt);
      INFO(gemm_name(c, mode));
      CHECK_EXACT(values(got), want.to_vector<double>());
    }
  }
  // Real data in [-1, 1]. Per element, with T = Σ_k |a_ik|·|b_kj| (computed in f64):
  //   f32 (Highest): the rigorous bound K·u32·T cannot tell fp32 from tf32 at this K, so the check uses
  //     the practical bound 4·√K·u32·T: fp32 rounding errors add like a random walk and stay ~100× below
  //     it, while tf32's input rounding (2^-11 per input) gives errors ≈ √K·2^-11·|ab|, several times above
  //     it — so this also verifies that Highest really computes in fp32.
  //   tf32 (High): inputs truncated or rounded to 10 mantissa bits (≤ 2^-10 each, 2·2^-10 per product)
  //     plus fp32 accumulation: (2·2^-10 + K·u32)·T.
  //   bf16 / f16: the inputs are exact (rounded before the reference is computed), fp32 accumulation
  //     K·u32·T, then one rounding of the output: u_out·|c|.
  //   f64: K·u64·T.
  const GemmCase real[] = {{1, 256, 256, 1024, false, false, false, false, 1, 0},
                           {3, 65, 33, 511, true, true, false, true, 1, 0}};
  for (const GemmMode& mode : kGemmModes) {
    PrecisionGuard guard(mode.precision);
    for (const GemmCase& c : real) {
      Tensor A = g.uniform(a_shape(c), -1, 1, DType::f64).to(mode.dt).to(DType::f64);
      Tensor B = g.uniform(b_shape(c), -1, 1, DType::f64).to(mode.dt).to(DType::f64);
      Tensor C0 = Tensor::zeros({c.batch, c.M, c.N}, DType::f64);
      Tensor got = run_gemm(c, A.to(mode.dt).to(Device::CUDA), B.to(mode.dt).to(Device::CUDA), C0.to(mode.dt).to(Device::CUDA));
      std::vector<double> want = run_gemm(c, A, B, C0).to_vector<double>();
      std::vector<double> T = run_gemm(c, abs(A), abs(B), C0).to_vector<double>();
      std::vector<double> gv = values(got);
      const double K = double(c.K), u32 = 0x1p-24;
      double rel;
      if (mode.dt == DType::f64) rel = K * 0x1p-53;
      else if (mode.dt != DType::f32) rel = K * u32;
      else if (mode.precision == MatmulPrecision::High) rel = 2 * 0x1p-10 + K * u32;
      else rel = 4 * std::sqrt(K) * u32;
      const double u_out = mode.dt == DType::bf16 || mode.dt == DType::f16 ? unit_roundoff(mode.dt) : 0.0;
      Worst w = compare(gv, want, [&](size_t i) { return rel * T[i] + u_out * std::fabs(want[i]) + subnormal_step(mode.dt); });
      CHECK_WORST(w, "real data " << gemm_name(c, mode));
    }
  }
  // matmul through the op layer: batch broadcasting and a transposed operand.
  PrecisionGuard guard(MatmulPrecision::Highest);
  Tensor a = g.uniform({2, 1, 7, 33}, -1, 1, DType::f32), b = g.uniform({3, 5, 33}, -1, 1, DType::f32).transpose(-1, -2);
  Tensor got = matmul(a.to(Device::CUDA), b.to(Device::CUDA));
  Tensor want = matmul(a.to(DType::f64), b.to(DType::f64));
  CHECK(got.shape() == Shape{2, 3, 7, 5});
  std::vector<double> gv = values(got), wv = want.to_vector<double>();
  Worst w = compare(gv, wv, [&](size_t) { return 33 * 0x1p-24 * 33; });  // K·u32·T with T ≤ K
  CHECK_WORST(w, "matmul [2,1,7,33] @ [3,33,5]ᵀ");
}
// ================================================================ index_select / index_add
TEST_CASE("cuda index_select / index_add vs the CPU, repeated and out-of-range indices") {
  SKIP_WITHOUT_GPU();
  Generator g(71);
  const std::vector<int64_t> iv = {0, 9, 3, 3, 7, 0, 9, 1, 2, 3, 8, 5, 3};  // repeats, both ends
  Tensor idx = Tensor::from(iv, {13}, DType::i64), idx_g = idx.to(Device::CUDA);
  // Gathers are copies: exact for every dtype.
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i64, DType::u8}) {
    Tensor x = integers(g, {3, 10, 7}, 0, 100).to(dt), xg = x.to(Device::CUDA);
    Tensor y = integers(g, {10, 5}, 0, 100).to(dt), yg = y.to(Device::CUDA);
    INFO("index_select " << dname(dt));
    CHECK_EXACT(values(index_select(xg, 1, idx_g)), index_select(x, 1, idx).to_vector<double>());
    CHECK_EXACT(values(index_select(yg, 0, idx_g)), index_select(y, 0, idx).to_vector<double>());
    // Non-contiguous source, destination and index, through the backend.
    Tensor src = integers(g, {7, 10, 3}, 0, 100).to(dt).permute({2, 1, 0});  // [3, 10, 7], strided
    Tensor src_gs = src.permute({2, 1, 0}).contiguous().to(Device::CUDA).permute({2, 1, 0});  // same, strided
    Tensor out_g = Tensor::empty({7, 13, 3}, dt, Device::CUDA).permute({2, 1, 0});   // [3, 13, 7], strided
    Tensor stepped_idx = Tensor::from(std::vector<int64_t>{4, 0, 2, 0, 9, 0, 9, 0, 1, 0, 3, 0, 5, 0, 5, 0, 0, 0, 6, 0, 8, 0, 7, 0, 2, 0},
                                      {26}, DType::i64).to(Device::CUDA).slice(0, 0, 26, 2);  // 13 indices, stride 2
    cuda_backend().index_select(src_gs, stepped_idx, out_g);
    Tensor want = Tensor::empty({3, 13, 7}, dt);
    cpu_backend().index_select(src.contiguous(), stepped_idx.contiguous().to(Device::CPU), want);
    CHECK_EXACT(values(out_g), want.to_vector<double>());
  }
  // index_add: repeated indices accumulate. Integer data keeps the atomics' sums exact in any order.
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor src = integers(g, {3, 13, 7}, -50, 50).to(dt), base = integers(g, {3, 10, 7}, -50, 50).to(dt);
    Tensor out_g = base.to(Device::CUDA), out_c = base.clone();
    cuda_backend().index_add(src.to(Device::CUDA), idx_g, out_g);
    cpu_backend().index_add(src, idx, out_c);
    INFO("index_add " << dname(dt));
    CHECK_EXACT(values(out_g), out_c.to_vector<double>());
  }
  // Out-of-range indices: a clear error naming the position and the value, for both ops.
  Tensor x = Tensor::zeros({3, 10, 7}, DType::f32, Device::CUDA);
  std::string msg;
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{0, 10, 2}, std::vector<int64_t>{1, 2, -1}}) {
    Tensor bi = Tensor::from(bad, {3}, DType::i64).to(Device::CUDA);
    CHECK_MESSAGE(message_contains([&] { index_select(x, 1, bi); }, "out of range", msg), msg);
    Tensor out = Tensor::zeros({3, 3, 7}, DType::f32, Device::CUDA);
    CHECK_MESSAGE(message_contains([&] { cuda_backend().index_select(x, bi, out); }, "out of range", msg), msg);
    Tensor dst = Tensor::zeros({3, 10, 7}, DType::f32, Device::CUDA);
    CHECK_MESSAGE(message_contains([&] { cuda_backend().index_add(out, bi, dst); }, "out of range", msg), msg);
  }
  CHECK_MESSAGE(message_contains([&] {
    Tensor bi = Tensor::from(std::vector<int64_t>{0, 10, 2}, {3}, DType::i64).to(Device::CUDA);
    Tensor out = Tensor::zeros({3, 3, 7}, DType::f32, Device::CUDA);
    cuda_backend().index_select(x, bi, out);
  }, "index[1] = 10", msg), msg);
  Tensor hb = Tensor::zeros({3, 13, 7}, DType::bf16, Device::CUDA), hd = Tensor::zeros({3, 10, 7}, DType::bf16, Device::CUDA);
  CHECK_THROWS_AS(cuda_backend().index_add(hb, idx_g, hd), TensorError);
}

// ================================================================ bad input
TEST_CASE("cuda backend: bad input gets a clear exception, unimplemented ops say so") {
  SKIP_WITHOUT_GPU();
  Backend& be = cuda_backend();
  Tensor a = Tensor::zeros({4, 5}, DType::f32, Device::CUDA), b = Tensor::zeros({5}, DType::f32, Device::CUDA);
  Tensor out = Tensor::empty({4, 5}, DType::f32, Device::CUDA);
  Tensor cpu = Tensor::zeros({4, 5});
  std::string msg;
  CHECK_MESSAGE(message_contains([&] { be.binary(BinaryOp::Add, a, b, out); }, "expanded", msg), msg);
  CHECK_MESSAGE(message_contains([&] { be.unary(UnaryOp::Exp, cpu, out, 0, 0); }, "expected a CUDA tensor", msg), msg);
  Tensor i64 = Tensor::zeros({4, 5}, DType::i64, Device::CUDA), o64 = Tensor::empty({4, 5}, DType::i64, Device::CUDA);
  CHECK_MESSAGE(message_contains([&] { be.unary(UnaryOp::Exp, i64, o64, 0, 0); }, "supports f32, f64, bf16 and f16", msg), msg);
  Tensor r = Tensor::empty({3}, DType::f32, Device::CUDA);
  CHECK_MESSAGE(message_contains([&] { be.reduce(ReduceOp::Sum, a, r, nullptr); }, "not [outer, R]", msg), msg);
  GemmArgs g;
  g.M = 4; g.N = 4; g.K = 5;
  g.A = a; g.B = Tensor::zeros({5, 4}, DType::f64, Device::CUDA); g.C = Tensor::empty({4, 4}, DType::f32, Device::CUDA);
  CHECK_MESSAGE(message_contains([&] { be.gemm(g); }, "dtype mismatch", msg), msg);
  g.B = Tensor::zeros({5, 3}, DType::f32, Device::CUDA);  // too small for K×N = 5×4
  CHECK_MESSAGE(message_contains([&] { be.gemm(g); }, "need", msg), msg);
}

// The contract is enforced by the compiler: a backend that leaves a primitive out cannot be instantiated,
// and one that implements the primitives alone is complete (every fused op has its composite).
struct PrimitivesOnly final : Backend {
  Device device() const override { return Device::CPU; }
  TESSERA_PRIMITIVES(TS_OVERRIDE)
};
struct MemoryOnly final : Backend {
  Device device() const override { return Device::CPU; }
  TS_OVERRIDE(fill) TS_OVERRIDE(copy)
};
static_assert(!std::is_abstract_v<PrimitivesOnly>, "the fused ops must have composite fallbacks");
static_assert(std::is_abstract_v<MemoryOnly>, "a backend without every primitive must not compile");

TEST_CASE("cuda events: synchronize waits for the work queued before record") {
  SKIP_WITHOUT_GPU();
  cuda::Event event;
  event.synchronize();  // never recorded: returns at once
  std::vector<float> host(size_t(1) << 22);
  float* pinned = static_cast<float*>(cuda::pinned_alloc(host.size() * sizeof(float)));
  Tensor t = Tensor::full({int64_t(host.size())}, 3.5, DType::f32, Device::CUDA);
  cuda::copy_device_to_host(pinned, t.raw_data(), host.size() * sizeof(float), /*async=*/true);
  event.record();
  event.synchronize();  // the asynchronous copy has landed
  CHECK(pinned[0] == 3.5f);
  CHECK(pinned[host.size() - 1] == 3.5f);
  cuda::pinned_free(pinned);
}

// ================================================================ attention
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
    check_close(p, want, [&](size_t i) { return 1e-30 + rel * std::fabs(want[i]); }, "probs");
    for (int64_t r = 0; r < B * H * Tq; ++r) {
      double s = 0;
      for (int64_t j = 0; j < Tk; ++j) s += p[size_t(r * Tk + j)];
      CHECK(std::fabs(s - 1) <= rel + 1e-12);
    }
  }
}
#endif
// ================================================================ conv2d, layer norm
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


// ================================================================ bit-reproducibility
TEST_CASE("cuda conv2d and conv_embedding backward: gradients left undefined leave the others bit for bit") {
  SKIP_WITHOUT_GPU();
  Generator g(5);
  for (DType dt : kFloatTypes) {
    INFO(dname(dt));
    // conv2d, grouped, with a bias.
    Conv2dArgs a;
    a.stride_h = a.stride_w = 2;
    a.pad_h = a.pad_w = 1;
    a.groups = 3;
    Tensor x = g.uniform({2, 6, 17, 19}, -1, 1, DType::f64).to(dt).to(Device::CUDA);
    Tensor w = g.uniform({9, 2, 3, 3}, -0.5, 0.5, DType::f64).to(dt).to(Device::CUDA);
    Tensor dy = g.uniform({2, 9, 9, 10}, -1, 1, DType::f64).to(dt).to(Device::CUDA);
    auto like = [&](const Tensor& t) { return Tensor::empty(t.shape(), dt, Device::CUDA); };
    Tensor dx = like(x), dw = like(w), db = Tensor::empty({9}, dt, Device::CUDA);
    cuda_backend().conv2d_backward(dy, x, w, a, dx, dw, db);
    for (int skip = 0; skip < 3; ++skip) {
      Tensor o[3] = {skip == 0 ? Tensor() : like(x), skip == 1 ? Tensor() : like(w),
                     skip == 2 ? Tensor() : Tensor::empty({9}, dt, Device::CUDA)};
      cuda_backend().conv2d_backward(dy, x, w, a, o[0], o[1], o[2]);
      const Tensor full[] = {dx, dw, db};
      for (int j = 0; j < 3; ++j)
        if (j != skip) {
          INFO("conv2d: output " << skip << " undefined, output " << j);
          CHECK(values(o[j]) == values(full[j]));
        }
    }
    // conv_embedding at a CvT stage-2 width on a small image.
    Conv2dArgs e;
    e.stride_h = e.stride_w = 2;
    e.pad_h = e.pad_w = 1;
    const int64_t C = 192, P = 5 * 5, T = 2 * P;
    const DType sdt = dt == DType::f64 ? DType::f64 : DType::f32;
    Tensor ex = g.uniform({2, 3, 9, 9}, -1, 1, DType::f64).to(dt).to(Device::CUDA);
    Tensor ew = g.uniform({C, 3, 3, 3}, -0.5, 0.5, DType::f64).to(dt).to(Device::CUDA);
    Tensor eb = g.uniform({C}, -0.5, 0.5, DType::f64).to(dt).to(Device::CUDA);
    Tensor lw = g.uniform({C}, 0.5, 1.5, DType::f64).to(dt).to(Device::CUDA), lb = eb.clone();
    Tensor tok = Tensor::empty({2, P, C}, dt, Device::CUDA), pre = Tensor::empty({2, P, C}, dt, Device::CUDA);
    Tensor mean = Tensor::empty({T}, sdt, Device::CUDA), rstd = Tensor::empty({T}, sdt, Device::CUDA);
    cuda_backend().conv_embedding(ex, ew, eb, e, lw, lb, 1e-5, tok, pre, mean, rstd);
    Tensor dtok = g.uniform({2, P, C}, -1, 1, DType::f64).to(dt).to(Device::CUDA);
    Tensor full[] = {like(ex), like(ew), like(eb), like(lw), like(lb)};
    cuda_backend().conv_embedding_backward(dtok, ex, ew, e, pre, lw, mean, rstd, full[0], full[1], full[2], full[3], full[4]);
    for (int skip = 0; skip < 5; ++skip) {
      Tensor o[5];
      for (int j = 0; j < 5; ++j)
        if (j != skip) o[j] = like(full[j]);
      cuda_backend().conv_embedding_backward(dtok, ex, ew, e, pre, lw, mean, rstd, o[0], o[1], o[2], o[3], o[4]);
      for (int j = 0; j < 5; ++j)
        if (j != skip) {
          INFO("conv_embedding: output " << skip << " undefined, output " << j);
          CHECK(values(o[j]) == values(full[j]));
        }
    }
  }
}

// ================================================================ binary ops no op uses
TEST_CASE("cuda minimum and ge (backend binary ops without an op of their own) are exact") {
  SKIP_WITHOUT_GPU();
  Generator g(31);
  for (DType dt : kFloatTypes)
    for (BinaryOp op : {BinaryOp::Minimum, BinaryOp::Ge}) {
      // Small integers (ties happen), a transposed operand broadcast against a row.
      Tensor a = integers(g, {65, 33}, -2, 2).to(dt), b = integers(g, {65}, -2, 2).to(dt);
      auto run = [&](const Tensor& x, const Tensor& y) {
        Tensor xv = x.transpose(0, 1), yv = y.unsqueeze(0).expand({33, 65});
        Tensor out = Tensor::empty({33, 65}, x.dtype(), x.device());
        backend(x.device()).binary(op, xv, yv, out);
        return values(out);
      };
      INFO(dname(dt) << (op == BinaryOp::Minimum ? " minimum" : " ge"));
      CHECK_EXACT(run(a.to(Device::CUDA), b.to(Device::CUDA)), run(a.to(DType::f64), b.to(DType::f64)));
    }
}

// ================================================================ reductions: NaN
TEST_CASE("cuda max and argmax: NaN propagates, and its index is the first NaN") {
  SKIP_WITHOUT_GPU();
  Tensor n = Tensor::from(std::vector<double>{1, NAN, 5, NAN, 2}, {1, 5}, DType::f32).to(Device::CUDA);
  CHECK(std::isnan(max(n, {-1}).item()));
  CHECK(argmax(n, -1).item() == 1);
}
