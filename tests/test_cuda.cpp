// The CUDA backend against the CPU reference. Every op: random inputs made on the CPU, the same op run on
// CUDA tensors (through engine/ops.h, or the backend directly where the op layer has no entry point), the
// result compared with the CPU's, computed in f64 on the very same (already rounded) inputs.
//
// Sizes are odd on purpose (1, 7, 33, 1023, 4097, ...) and inputs are also non-contiguous (transposed,
// sliced with a step, broadcast). Tolerances are derived per dtype: u(dtype) is the unit roundoff
// (f64 2^-53, f32 2^-24, f16 2^-11, bf16 2^-8) and each comparison says which error terms it allows.
// Where a result can be exact (integer-valued data, max, copies), the comparison is exact.
//
// Without a usable GPU every test that needs one prints why and returns (the runtime test still runs).
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
#include <vector>

#include "engine/core/cuda.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"

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

// ================================================================ unary
namespace {
struct UnaryCase {
  UnaryOp op;
  std::string name;
  double lo, hi, alpha, beta;
  double cancel;  // s in tol = k·u·(|ref| + s·|x|): error terms proportional to |x| (cancellation)
};
Tensor run_unary(const UnaryCase& c, const Tensor& x) {
  switch (c.op) {
    case UnaryOp::Neg: return neg(x);
    case UnaryOp::Exp: return exp(x);
    case UnaryOp::Log: return log(x);
    case UnaryOp::Sqrt: return sqrt(x);
    case UnaryOp::Tanh: return tanh(x);
    case UnaryOp::Erf: return erf(x);
    case UnaryOp::Abs: return abs(x);
    case UnaryOp::Gelu: return gelu(x);
    case UnaryOp::Affine: return affine(x, c.alpha, c.beta);
    case UnaryOp::PowScalar: return pow(x, c.alpha);
    case UnaryOp::Clamp: return clamp(x, c.alpha, c.beta);
  }
  return x;
}
}  // namespace

TEST_CASE("cuda unary ops vs the CPU in f64, every float dtype, odd sizes, non-contiguous inputs") {
  SKIP_WITHOUT_GPU();
  const UnaryCase cases[] = {
      {UnaryOp::Neg, "neg", -3, 3, 0, 0, 0},
      {UnaryOp::Exp, "exp", -3, 3, 0, 0, 0},
      {UnaryOp::Log, "log", 0.05, 4, 0, 0, 0},
      {UnaryOp::Sqrt, "sqrt", 0, 4, 0, 0, 0},
      {UnaryOp::Tanh, "tanh", -3, 3, 0, 0, 0},
      {UnaryOp::Erf, "erf", -3, 3, 0, 0, 0},
      {UnaryOp::Abs, "abs", -3, 3, 0, 0, 0},
      // x·Φ(x) for x < 0: 1 + erf(x/√2) cancels, leaving an error of ~u·|x|.
      {UnaryOp::Gelu, "gelu", -4, 4, 0, 0, 1},
      // alpha is rounded to the compute type (1.7 is not a float), and alpha·x + beta may cancel.
      {UnaryOp::Affine, "affine", -3, 3, 1.7, -0.3, 2},
      {UnaryOp::PowScalar, "pow 2.5", 0.1, 3, 2.5, 0, 0},
      {UnaryOp::Clamp, "clamp", -2, 2, -0.5, 0.8, 0},
  };
  Generator g(21);
  for (DType dt : kFloatTypes) {
    // f32/f64: CUDA's documented maximum errors for these functions are ≤ 4 ulp (powf), ≤ 2 ulp for the
    // rest, and one ulp is at most 2u relative, so ≤ 8u; the CPU reference (f64, or glibc's ≤ 1 ulp when
    // comparing f64 with f64) adds ≤ 2u → k = 16 leaves a margin below any real bug (O(1) errors).
    // 16-bit: the f32 result (error ≤ 16·2^-24) is rounded once (≤ u of the 16-bit type) → k = 2.
    const double k = (dt == DType::f32 || dt == DType::f64) ? 16 : 2, u = unit_roundoff(dt);
    for (const UnaryCase& c : cases) {
      for (const Layout& l : layouts_1d_and_views()) {
        Tensor base = g.uniform(l.base, c.lo, c.hi, DType::f64).to(dt);  // inputs rounded to dt
        Tensor x_gpu = l.view(base.to(Device::CUDA));
        Tensor x_ref = l.view(base.to(DType::f64));
        Tensor y_gpu = run_unary(c, x_gpu);
        Tensor y_ref = run_unary(c, x_ref);
        REQUIRE(y_gpu.shape() == y_ref.shape());
        CHECK(y_gpu.dtype() == dt);
        std::vector<double> got = values(y_gpu), want = y_ref.to_vector<double>(), xs = x_ref.to_vector<double>();
        Worst w = compare(got, want, [&](size_t i) {
          return k * u * (std::fabs(want[i]) + c.cancel * std::fabs(xs[i])) + subnormal_step(dt);
        });
        CHECK_WORST(w, c.name << " " << dname(dt) << " on " << l.name << " " << describe(x_gpu));
      }
    }
  }
}

// ================================================================ binary
namespace {
struct BinaryCase {
  BinaryOp op;
  std::string name;
  double alo, ahi, blo, bhi;
  bool integer_inputs;  // comparisons: small integers so ties happen
};
Shape broadcast(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}
// The backend call the op layer makes: both operands expanded to the output's shape.
Tensor run_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  Shape s = broadcast(a.shape(), b.shape());
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  backend(a.device()).binary(op, a.expand(s), b.expand(s), out);
  return out;
}
}  // namespace

TEST_CASE("cuda binary ops vs the CPU in f64: broadcasting, non-contiguous operands, every float dtype") {
  SKIP_WITHOUT_GPU();
  const BinaryCase cases[] = {
      {BinaryOp::Add, "add", -2, 2, -2, 2, false},
      {BinaryOp::Sub, "sub", -2, 2, -2, 2, false},
      {BinaryOp::Mul, "mul", -2, 2, -2, 2, false},
      {BinaryOp::Div, "div", -2, 2, 0.5, 2, false},
      {BinaryOp::Maximum, "maximum", -2, 2, -2, 2, true},
      {BinaryOp::Minimum, "minimum", -2, 2, -2, 2, true},
      {BinaryOp::Pow, "pow", 0.1, 3, -2, 2, false},
      {BinaryOp::GeluBackward, "gelu_backward", -4, 4, -2, 2, false},
      {BinaryOp::Eq, "eq", -2, 2, -2, 2, true},
      {BinaryOp::Gt, "gt", -2, 2, -2, 2, true},
      {BinaryOp::Ge, "ge", -2, 2, -2, 2, true},
  };
  struct Pair {
    Shape a_base, b_base;
    View a_view, b_view;
    std::string name;
  };
  const std::vector<Pair> pairs = {
      {{1}, {1}, identity, identity, "[1] . [1]"},
      {{7}, {7}, identity, identity, "[7] . [7]"},
      {{4097}, {4097}, identity, identity, "[4097] . [4097]"},
      {{4097}, {1}, identity, identity, "[4097] . [1] (scalar broadcast)"},
      {{33, 1023}, {1023}, identity, identity, "[33,1023] . [1023] (row broadcast)"},
      {{33, 1}, {1, 65}, identity, identity, "[33,1] . [1,65] (outer product)"},
      {{5, 1, 7}, {3, 7}, identity, identity, "[5,1,7] . [3,7]"},
      {{65, 33}, {33}, [](const Tensor& t) { return t.transpose(0, 1); },
       [](const Tensor& t) { return t.unsqueeze(1); }, "[33,65]ᵀ . [33,1]"},
      {{40, 100}, {40, 100}, [](const Tensor& t) { return t.slice(1, 3, 97, 3); },
       [](const Tensor& t) { return t.slice(1, 1, 95, 3); }, "stepped . stepped"},
  };
  Generator g(31);
  for (DType dt : kFloatTypes) {
    const double u = unit_roundoff(dt);
    const double k = (dt == DType::f32 || dt == DType::f64) ? 16 : 2;  // as for the unary ops
    for (const BinaryCase& c : cases) {
      for (const Pair& p : pairs) {
        Tensor a = (c.integer_inputs ? integers(g, p.a_base, -2, 2) : g.uniform(p.a_base, c.alo, c.ahi, DType::f64)).to(dt);
        Tensor b = c.integer_inputs ? integers(g, p.b_base, -2, 2) : g.uniform(p.b_base, c.blo, c.bhi, DType::f64);
        if (c.op == BinaryOp::Div) b = mul(b, integers(g, p.b_base, 0, 1) * 2.0 - 1.0);  // divisors of both signs
        b = b.to(dt);
        Tensor ag = p.a_view(a.to(Device::CUDA)), bg = p.b_view(b.to(Device::CUDA));
        Tensor ar = p.a_view(a.to(DType::f64)), br = p.b_view(b.to(DType::f64));
        Tensor y_gpu = run_binary(c.op, ag, bg), y_ref = run_binary(c.op, ar, br);
        Shape s = y_ref.shape();
        std::vector<double> got = values(y_gpu), want = y_ref.to_vector<double>();
        std::vector<double> av = ar.expand(s).contiguous().to_vector<double>(), bv = br.expand(s).contiguous().to_vector<double>();
        Worst w = compare(got, want, [&](size_t i) {
          switch (c.op) {
            case BinaryOp::Add: case BinaryOp::Sub:
              return k * u * (std::fabs(av[i]) + std::fabs(bv[i]));
            case BinaryOp::GeluBackward:  // Φ(x) + x·φ(x) cancels near x ≈ −0.75
              return k * u * (std::fabs(want[i]) + std::fabs(bv[i]) * (1 + std::fabs(av[i]))) + subnormal_step(dt);
            case BinaryOp::Mul: case BinaryOp::Div: case BinaryOp::Pow:
              return k * u * std::fabs(want[i]) + subnormal_step(dt);
            default:
              return 0.0;  // max/min/comparisons are exact
          }
        });
        CHECK_WORST(w, c.name << " " << dname(dt) << " on " << p.name << ": a " << describe(ag) << ", b " << describe(bg));
      }
    }
  }
  // Through the op layer (broadcasting done there): add, mul, div, maximum, pow on a bias-like shape.
  Tensor x = g.uniform({7, 1023}, 0.5, 2, DType::f32), bias = g.uniform({1023}, 0.5, 2, DType::f32);
  Tensor xg = x.to(Device::CUDA), bg = bias.to(Device::CUDA);
  for (auto [f, name] : std::vector<std::pair<Tensor (*)(const Tensor&, const Tensor&), std::string>>{
           {add, "add"}, {mul, "mul"}, {div, "div"}, {maximum, "maximum"}, {pow, "pow"}}) {
    std::vector<double> got = values(f(xg, bg)), want = f(x.to(DType::f64), bias.to(DType::f64)).to_vector<double>();
    Worst w = compare(got, want, [&](size_t i) { return 16 * 0x1p-24 * std::fabs(want[i]); });  // as above
    CHECK_WORST(w, "ops.h " << name << " f32 [7,1023] . [1023]");
  }
}

// ================================================================ reductions
TEST_CASE("cuda sum/max over rows: exact on integer data, within the tree bound on real data") {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t outer, R; };
  // Each kernel path: 1, 4, 16 and 32 lanes per row; a block per row; long rows split across blocks.
  const Case cases[] = {{1, 1}, {7, 1}, {1, 7}, {3, 2}, {100, 2}, {4097, 3}, {33, 33}, {64, 64}, {5, 1023},
                        {3136 * 4, 64}, {77, 768}, {3, 4097}, {1, 100000}, {2, 2000000}, {1000, 5000},
                        {600, 4500}, {10, 70001}};
  Generator g(41);
  for (DType dt : kFloatTypes) {
    for (const Case& c : cases) {
      INFO(dname(dt) << " [" << c.outer << ", " << c.R << "]");
      // (1) Integer values in [-8, 8]: every partial sum is an integer of magnitude ≤ 8·R ≤ 2^24 (R ≤ 2^21
      // here), so any summation order
      // is exact in f32/f64 accumulation; the GPU must equal the CPU exactly (the one rounding to a 16-bit
      // output is the same on both). Max values and first-max indices are always exact; the narrow range
      // makes ties (and so the first-index rule) common.
      Tensor xi = integers(g, {c.outer, c.R}, -8, 8).to(dt);
      Tensor xg = xi.to(Device::CUDA);
      CHECK_EXACT(values(sum(xg, {-1})), sum(xi.to(DType::f64), {-1}).to(dt).to_vector<double>());
      CHECK_EXACT(values(max(xg, {-1})), max(xi.to(DType::f64), {-1}).to(dt).to_vector<double>());
      CHECK_EXACT(values(argmax(xg, -1)), argmax(xi.to(DType::f64), -1).to_vector<double>());

      // (2) Real data: |computed − exact| ≤ γ·Σ|x| + u_out·|exact|, γ = (L + log2 P + 11)·u_acc with P the
      // fewest threads any path puts on a row of this length (1, 4, 16 or 32; longer rows get more) and
      // L = ceil(R/P) terms summed sequentially per thread; the 11 covers up to 1024 segments of a split row
      // plus the final rounding. See kernels/cuda/reduce.cu.
      Tensor xr = g.uniform({c.outer, c.R}, -1, 1, DType::f64).to(dt);
      Tensor x64 = xr.to(DType::f64);
      std::vector<double> got = values(sum(xr.to(Device::CUDA), {-1})), want = sum(x64, {-1}).to_vector<double>();
      std::vector<double> abs_sum = sum(abs(x64), {-1}).to_vector<double>();
      const int64_t P = c.R <= 2 ? 1 : c.R <= 16 ? 4 : c.R <= 64 ? 16 : 32;
      const double gamma = double((c.R + P - 1) / P + int64_t(std::log2(double(P))) + 11) * compute_roundoff(dt);
      const double u_out = dt == DType::f32 || dt == DType::f64 ? 0.0 : unit_roundoff(dt);
      Worst w = compare(got, want, [&](size_t i) {
        return gamma * abs_sum[i] + u_out * std::fabs(want[i]) + subnormal_step(dt);
      });
      CHECK_WORST(w, "sum of real data");
    }
  }
  // Reductions over other dims through the op layer (it permutes and copies first).
  Tensor x = g.uniform({33, 65, 7}, -1, 1, DType::f32);
  Tensor xg = x.to(Device::CUDA);
  std::vector<double> got = values(sum(xg, {0, 2})), want = sum(x.to(DType::f64), {0, 2}).to_vector<double>();
  Worst w = compare(got, want, [&](size_t) { return 30 * 0x1p-24 * 231; });  // γ·Σ|x|, Σ|x| ≤ 33·7 = 231
  CHECK_WORST(w, "sum over dims {0,2} of [33,65,7]");
  CHECK_EXACT(values(max(xg, {1})), max(x, {1}).to_vector<double>());
  // NaN propagates through max, and its index is the first NaN.
  Tensor n = Tensor::from(std::vector<double>{1, NAN, 5, NAN, 2}, {1, 5}, DType::f32).to(Device::CUDA);
  CHECK(std::isnan(max(n, {-1}).item()));
  CHECK(argmax(n, -1).item() == 1);
}

// ================================================================ softmax
TEST_CASE("cuda softmax / log_softmax and their backward vs the CPU in f64") {
  SKIP_WITHOUT_GPU();
  Generator g(51);
  const int64_t widths[] = {1, 7, 33, 64, 197, 1023, 1024, 1025, 4097};
  for (DType dt : kFloatTypes) {
    const double uc = compute_roundoff(dt), uo = dt == DType::f32 || dt == DType::f64 ? 0.0 : unit_roundoff(dt);
    for (int64_t C : widths) {
      for (int64_t rows : {int64_t(1), int64_t(5), int64_t(77)}) {
        // Error budget in the compute type (u = uc), per element: x − max (≤ 8u absolute for |x| ≤ 4),
        // exp (≤ 2 ulp), the row sum (tree: ≤ (C/32 + 5)·u relative, see reduce.cu), the division or log:
        // k = C/32 + 24 relative to |y| for softmax; for log_softmax the same k, absolute, scaled by
        // 1 + |y|. Plus one rounding to a 16-bit output (uo·|y|).
        const double k = double(C) / 32 + 24;
        for (bool log : {false, true}) {
          Tensor x = g.uniform({rows, C}, -4, 4, DType::f64).to(dt);
          Tensor x64 = x.to(DType::f64);
          Tensor yg = log ? log_softmax(x.to(Device::CUDA), -1) : softmax(x.to(Device::CUDA), -1);
          Tensor yr = log ? log_softmax(x64, -1) : softmax(x64, -1);
          std::vector<double> got = values(yg), want = yr.to_vector<double>();
          Worst w = compare(got, want, [&](size_t i) {
            double a = std::fabs(want[i]);
            return (log ? k * uc * (1 + a) : k * uc * a) + uo * a + subnormal_step(dt);
          });
          CHECK_WORST(w, std::string(log ? "log_softmax " : "softmax ") << dname(dt) << " [" << rows << ", " << C << "]");

          // Backward, through the backend: y (the reference output rounded to dt) and a random dy.
          Tensor y = yr.to(dt), dy = g.uniform({rows, C}, -1, 1, DType::f64).to(dt);
          Tensor y64 = y.to(DType::f64), dy64 = dy.to(DType::f64);
          Tensor dx_g = Tensor::empty({rows, C}, dt, Device::CUDA), dx_r = Tensor::empty({rows, C}, DType::f64);
          cuda_backend().softmax_backward(y.to(Device::CUDA), dy.to(Device::CUDA), dx_g, log);
          cpu_backend().softmax_backward(y64, dy64, dx_r, log);
          std::vector<double> gd = values(dx_g), wd = dx_r.to_vector<double>();
          std::vector<double> yv = y64.to_vector<double>(), dyv = dy64.to_vector<double>();
          // Scale of the terms that can cancel: softmax dx = y·(dy − Σ dy·y): |y|·(|dy| + Σ|dy·y|);
          // log: dx = dy − exp(y)·Σ dy: |dy| + exp(y)·Σ|dy|.
          std::vector<double> row_scale(size_t(rows), 0.0);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < C; ++j) {
              size_t i = size_t(r * C + j);
              row_scale[size_t(r)] += log ? std::fabs(dyv[i]) : std::fabs(dyv[i] * yv[i]);
            }
          Worst wb = compare(gd, wd, [&](size_t i) {
            double s = row_scale[i / size_t(C)];
            double scale = log ? std::fabs(dyv[i]) + std::exp(yv[i]) * s : std::fabs(yv[i]) * (std::fabs(dyv[i]) + s);
            return k * uc * (std::fabs(wd[i]) + scale) + uo * std::fabs(wd[i]) + subnormal_step(dt);
          });
          CHECK_WORST(wb, std::string(log ? "log_softmax_backward " : "softmax_backward ") << dname(dt) << " [" << rows << ", " << C << "]");
        }
      }
    }
  }
  // A non-last dim through the op layer (transposed copies around the kernel).
  Tensor x = g.uniform({33, 7, 5}, -4, 4, DType::f32);
  std::vector<double> got = values(softmax(x.to(Device::CUDA), 1)), want = softmax(x.to(DType::f64), 1).to_vector<double>();
  Worst w = compare(got, want, [&](size_t i) { return 32 * 0x1p-24 * std::fabs(want[i]); });
  CHECK_WORST(w, "softmax over dim 1 of [33,7,5]");
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

// ================================================================ adamw
TEST_CASE("cuda multi-tensor adamw matches the CPU over several steps") {
  SKIP_WITHOUT_GPU();
  // One list mixing what a step can hold: f32 parameters with f32 and with bf16 gradients, f64 parameters,
  // an empty tensor, sizes around the 64 Ki-element chunk and more tensors than one launch carries (36), each
  // with its own weight decay, so the packing (splits across launches, dtype groups) is exercised.
  struct Spec { int64_t n; DType param, grad; };
  std::vector<Spec> specs = {{4097, DType::f32, DType::f32}, {65536, DType::f32, DType::bf16},
                             {65537, DType::f32, DType::f32}, {0, DType::f32, DType::f32},
                             {200003, DType::f32, DType::bf16}, {1, DType::f64, DType::f64},
                             {70000, DType::f64, DType::f64}};
  for (int i = 0; i < 45; ++i) specs.push_back({3 + i, DType::f32, i % 3 ? DType::f32 : DType::bf16});
  Generator g(81);
  std::vector<Backend::AdamWParam> cpu, gpu;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& sp = specs[i];
    Tensor p = g.normal({sp.n}, 0, 1, sp.param);
    const double wd = 0.01 * double(i % 5);
    cpu.push_back({p, Tensor(), Tensor::zeros({sp.n}, sp.param), Tensor::zeros({sp.n}, sp.param), wd});
    gpu.push_back({p.to(Device::CUDA), Tensor(), Tensor::zeros({sp.n}, sp.param, Device::CUDA),
                   Tensor::zeros({sp.n}, sp.param, Device::CUDA), wd});
  }
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const int steps = 5;
  for (int t = 1; t <= steps; ++t) {
    for (size_t i = 0; i < specs.size(); ++i) {
      cpu[i].grad = g.normal({specs[i].n}, 0, 1, DType::f64).to(specs[i].grad);
      gpu[i].grad = cpu[i].grad.to(Device::CUDA);
    }
    Backend::AdamWStep s{lr, b1, b2, eps, 1 - std::pow(b1, t), 1 - std::pow(b2, t)};
    cpu_backend().adamw(cpu, s);
    cuda_backend().adamw(gpu, s);
  }
  // Both sides compute each element with the same double arithmetic (optim_math.h) and round once per step
  // to the parameter type, so they differ only where a compiler fused a multiply-add: ≤ 1 rounding per value
  // per step, carried forward with a factor ≈ 1 → |Δ| ≤ 2·steps·u·max|value| per tensor.
  for (size_t i = 0; i < specs.size(); ++i) {
    const double u = unit_roundoff(specs[i].param);
    const std::pair<Tensor, Tensor> pairs[] = {{gpu[i].param, cpu[i].param}, {gpu[i].exp_avg, cpu[i].exp_avg},
                                               {gpu[i].exp_avg_sq, cpu[i].exp_avg_sq}};
    const char* names[] = {"param", "exp_avg", "exp_avg_sq"};
    for (int k = 0; k < 3; ++k) {
      std::vector<double> got = values(pairs[k].first), want = pairs[k].second.to_vector<double>();
      double max_abs = 0;
      for (double w : want) max_abs = std::max(max_abs, std::fabs(w));
      Worst w = compare(got, want, [&](size_t) { return 2 * steps * u * max_abs; });
      CHECK_WORST(w, "adamw tensor " << i << " (n " << specs[i].n << ", param " << dname(specs[i].param)
                                     << ", grad " << dname(specs[i].grad) << ") " << names[k]);
    }
  }
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

TEST_CASE("an op a backend does not implement fails loudly, naming the op and the device") {
  // Every Backend op now has a CUDA kernel; the base class's refusal is what a new backend (or a new op)
  // starts from, so it is checked on a backend that implements nothing.
  struct Bare final : Backend {
    Device device() const override { return Device::CUDA; }
  } bare;
  Tensor x = Tensor::zeros({1, 1, 4, 5}), w = Tensor::zeros({1, 1, 1, 1}), y = Tensor::empty({1, 1, 4, 5});
  std::string msg;
  CHECK_MESSAGE(message_contains([&] { bare.conv2d(x, w, Tensor(), Conv2dArgs{}, y); },
                                 "conv2d is not implemented on the cuda backend", msg), msg);
}

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

TEST_CASE("cuda bias_gelu and its backward vs the CPU in f64") {
  SKIP_WITHOUT_GPU();
  // The GPU computes GELU(x + b) in fp32 (f64 for f64) from the rounded inputs; the reference computes the
  // same in f64 on the same rounded values. The sum, erf and exp each contribute a few units of the
  // compute type's roundoff relative to |x| + |b| (GELU' is at most 1.13, GELU'' at most 0.8), and the
  // result is rounded once to the storage type: tol = 16·u_c·(1 + |x| + |b|) + ulp(ref).
  Generator gen(77);
  for (DType dt : kFloatTypes)
    for (auto [rows, C] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 7}, {257, 33}, {64, 1025}}) {
      INFO(dname(dt) << " " << rows << "x" << C);
      Tensor x = gen.uniform({rows, C}, -4, 4, DType::f64).to(dt), b = gen.uniform({C}, -1, 1, DType::f64).to(dt);
      Tensor dy = gen.uniform({rows, C}, -1, 1, DType::f64).to(dt);
      Tensor y64 = Tensor::empty({rows, C}, DType::f64), dx64 = Tensor::empty({rows, C}, DType::f64);
      Tensor db64 = Tensor::empty({C}, DType::f64);
      cpu_backend().bias_gelu(as_f64(x), as_f64(b), y64);
      cpu_backend().bias_gelu_backward(as_f64(dy), as_f64(x), as_f64(b), dx64, db64);
      Tensor y = Tensor::empty({rows, C}, dt, Device::CUDA), dx = Tensor::empty({rows, C}, dt, Device::CUDA);
      Tensor db = Tensor::empty({C}, dt, Device::CUDA);
      cuda_backend().bias_gelu(on_gpu(x), on_gpu(b), y);
      cuda_backend().bias_gelu_backward(on_gpu(dy), on_gpu(x), on_gpu(b), dx, db);
      const auto xv = values(x), bv = values(b), yr = values(y64), dxr = values(dx64), dbr = values(db64);
      const double uc = compute_roundoff(dt);
      auto elem_tol = [&](size_t i, double ref) {
        return 16 * uc * (1 + std::fabs(xv[i]) + std::fabs(bv[i % size_t(C)])) + ulp_of(ref, dt);
      };
      check_close(values(y), yr, [&](size_t i) { return elem_tol(i, yr[i]); }, "y");
      check_close(values(dx), dxr, [&](size_t i) { return elem_tol(i, dxr[i]); }, "dx");
      // dbias sums a column of rounded dx values: each carries ulp(dx) of storage rounding, plus the sum's
      // own fp32 rounding over `rows` terms.
      check_close(values(db), dbr, [&](size_t c) {
        double mag = 0;
        for (int64_t r = 0; r < rows; ++r) mag += std::fabs(dxr[size_t(r * C) + c]);
        return (double(rows) * uc + unit_roundoff(dt)) * mag * 2 + ulp_of(dbr[c], dt);
      }, "dbias");
    }
}

TEST_CASE("cuda drop_path (with and without the residual) vs the CPU in f64") {
  SKIP_WITHOUT_GPU();
  // The GPU computes x·s (+ r) in the compute type from the rounded inputs with s = scale rounded to the
  // compute type, and rounds once to the storage type; the reference does the same arithmetic in f64. The
  // product and the sum contribute ≤ 2·u_c·(|x·s| + |r|) (s's own rounding is one more u_c·|x·s|), then one
  // storage rounding: tol = 3·u_c·(|x|·scale + |r|) + ulp(ref).
  Generator gen(78);
  const double scale = 1 / 0.9;
  for (DType dt : kFloatTypes)
    for (const Shape& shape : std::vector<Shape>{{1, 1}, {5, 1}, {3, 7, 5}, {64, 50, 192}})
      for (bool with_residual : {false, true}) {
        INFO(dname(dt) << " " << shape_str(shape) << (with_residual ? " + residual" : ""));
        Tensor x = gen.uniform(shape, -4, 4, DType::f64).to(dt), r = gen.uniform(shape, -2, 2, DType::f64).to(dt);
        Tensor mask = gen.bernoulli({shape[0]}, 0.6, dt);
        Tensor y64 = Tensor::empty(shape, DType::f64), y = Tensor::empty(shape, dt, Device::CUDA);
        const Tensor r64 = with_residual ? as_f64(r) : Tensor(), rg = with_residual ? on_gpu(r) : Tensor();
        cpu_backend().drop_path(as_f64(x), as_f64(mask), scale, r64, y64);
        cuda_backend().drop_path(on_gpu(x), on_gpu(mask), scale, rg, y);
        const auto xv = values(x), rv = values(r), yr = values(y64);
        const double uc = compute_roundoff(dt);
        check_close(values(y), yr, [&](size_t i) {
          return 3 * uc * (std::fabs(xv[i]) * scale + (with_residual ? std::fabs(rv[i]) : 0.0)) + ulp_of(yr[i], dt);
        }, "drop_path");
      }
}

TEST_CASE("cuda multi-tensor sum_of_squares and scale vs the CPU (clip_grad_norm's passes)") {
  SKIP_WITHOUT_GPU();
  // Mixed dtypes, an empty tensor, sizes around the 64 Ki chunk and more tensors than one launch carries.
  Generator g(82);
  std::vector<Tensor> cpu, gpu;
  const DType dts[] = {DType::f32, DType::bf16, DType::f64, DType::f16};
  const int64_t sizes[] = {0, 1, 65535, 65536, 65537, 300001};
  for (int i = 0; i < 50; ++i) {
    const int64_t n = i < 6 ? sizes[i] : 7 + 13 * i;
    Tensor t = g.normal({n}, 0, 1, DType::f64).to(dts[i % 4]);
    cpu.push_back(t.to(DType::f64));  // the CPU reference in f64 on the very same (rounded) values
    gpu.push_back(t.to(Device::CUDA));
  }
  Tensor want = Tensor::empty({}, DType::f64), got = Tensor::empty({}, DType::f64, Device::CUDA);
  cpu_backend().sum_of_squares(cpu, want);
  cuda_backend().sum_of_squares(gpu, got);
  // Both sum exact squares (of ≤ 24-bit significands) in f64, in different orders: |Δ| ≤ 2·n·2⁻⁵³·Σx² with
  // n ≈ 6·10⁵ terms, ≈ 1.3e-10 relative; 1e-9 leaves margin and still catches a lost chunk (≥ 1e-6).
  CHECK(std::fabs(got.item() - want.item()) <= 1e-9 * want.item());
  // The same bits on a second run: a fixed reduction order.
  Tensor again = Tensor::empty({}, DType::f64, Device::CUDA);
  cuda_backend().sum_of_squares(gpu, again);
  CHECK(again.item() == got.item());

  // scale by 0.37: one multiply in the compute type by the factor rounded to it, one rounding to storage.
  cuda_backend().scale(gpu, Tensor::scalar(0.37, DType::f64, Device::CUDA));
  for (size_t i = 0; i < gpu.size(); ++i) {
    const DType dt = gpu[i].dtype();
    const std::vector<double> x = cpu[i].to_vector<double>(), y = values(gpu[i]);
    const double f = dt == DType::f64 ? 0.37 : double(float(0.37));
    check_close(y, [&] { std::vector<double> r; for (double v : x) r.push_back(v * f); return r; }(),
                [&](size_t k) { return 2 * compute_roundoff(dt) * std::fabs(x[k] * f) + ulp_of(x[k] * f, dt); },
                "scale " + dname(dt));
  }
  // A factor of exactly 1 leaves every tensor bit for bit.
  std::vector<std::vector<double>> before;
  for (const Tensor& t : gpu) before.push_back(values(t));
  cuda_backend().scale(gpu, Tensor::scalar(1.0, DType::f64, Device::CUDA));
  for (size_t i = 0; i < gpu.size(); ++i) CHECK(values(gpu[i]) == before[i]);
}
