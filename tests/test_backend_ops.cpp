// Every entry of the op registry (tests/backend_ops.h), in two modes:
//  grad     float64 central finite differences on the CPU for every differentiable op (tests/gradcheck.h);
//  compare  each non-CPU backend against the CPU reference: the op's output and its input gradients in
//           every supported dtype against the CPU in f64 on the same (already rounded) inputs, with the
//           entry's tolerance rule. The CPU itself in f32 and bf16 is run the same way, so the machinery
//           and the f32 and bf16 rules are exercised on every machine; the CUDA part skips, saying why,
//           where no GPU is usable.
// A failure names the op, the case and the dtype, and prints the largest errors and the first elements out
// of tolerance.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "tests/backend_ops.h"

using namespace tessera;
using namespace tessera::opreg;
using tessera::testing::values;

namespace {

struct Outcome {
  Tensor out;
  std::vector<Tensor> grads;  // per input; undefined where the input is not differentiated
};

// W for out.backward(W): a fixed draw of out's shape (integers for exact cases), rounded to dt.
Tensor weights(const Shape& shape, DType dt, bool exact) {
  Generator g(4321);
  Tensor w = exact ? integers(g, shape, -3, 3) : uni(g, shape, -1, 1);
  return w.to(dt).to(DType::f64);
}

// Runs a case in dtype dt on `device`. `absolute`: every floating input and W replaced by its absolute value
// (the magnitude run of a multilinear op).
Outcome execute(const Entry& e, const Case& c, const Inputs& in, DType dt, Device device, DType round_to, bool absolute) {
  Inputs use = in;
  for (Input& i : use)
    if (i.value.defined() && is_floating(i.value.dtype())) {
      i.value = i.value.to(round_to).to(DType::f64);  // the very values the device under test sees
      if (absolute) i.value = abs(i.value);
    }
  std::vector<Tensor> xs = materialise(use, dt, device, e.differentiable);
  Outcome o;
  o.out = absolute && c.magnitude ? c.magnitude(xs) : c.call(xs);
  if (e.differentiable && o.out.requires_grad()) {
    Tensor w = weights(o.out.shape(), round_to, (c.tags & kExact) != 0);
    if (absolute) w = abs(w);
    o.out.backward(w.to(o.out.dtype()).to(device));
  }
  for (const Tensor& x : xs) {
    if (!x.defined() || !x.requires_grad()) { o.grads.emplace_back(); continue; }
    o.grads.push_back(x.grad().defined() ? x.grad() : Tensor::zeros(x.shape(), x.dtype(), x.device()));
  }
  return o;
}

std::string label(const Entry& e, const Case& c, DType dt, Device device) {
  return e.name + " | " + c.name + " | " + device_name(device) + " " + dtype_name(dt);
}

// The case on (device, dt) against the CPU f64 reference.
void compare_case(const Entry& e, const Case& c, DType dt, Device device, uint64_t seed) {
  const std::string what = label(e, c, dt, device);
  INFO(what);
  Generator g(seed);
  const Inputs in = c.make(g);
  Outcome got, ref, mag;
  double cond = 1;
  try {
    if (c.condition) {
      std::vector<Tensor> rounded;
      for (const Input& i : in) rounded.push_back(i.value.defined() && is_floating(i.value.dtype()) ? i.value.to(dt).to(DType::f64) : i.value);
      cond = c.condition(rounded);
    }
    got = execute(e, c, in, dt, device, dt, false);
    ref = execute(e, c, in, DType::f64, Device::CPU, dt, false);
    if (e.multilinear) mag = execute(e, c, in, DType::f64, Device::CPU, dt, true);
  } catch (const std::exception& ex) {
    FAIL_CHECK(what << ": threw " << ex.what());
    return;
  }
  const bool exact = (c.tags & kExact) != 0 || !is_floating(got.out.dtype());
  for (size_t which = 0; which <= got.grads.size(); ++which) {
    const Tensor& gt = which == 0 ? got.out : got.grads[which - 1];
    const Tensor& rt = which == 0 ? ref.out : ref.grads[which - 1];
    if (!gt.defined() && !rt.defined()) continue;
    const std::string result = which == 0 ? "output" : "gradient of input " + std::to_string(which - 1);
    REQUIRE_MESSAGE(gt.defined(), what << ": " << result << " missing");
    REQUIRE_MESSAGE(rt.defined(), what << ": reference " << result << " missing");
    CHECK_MESSAGE(gt.shape() == rt.shape(), what << ": " << result << " shape " << shape_str(gt.shape()) << " vs "
                                                  << shape_str(rt.shape()));
    if (gt.shape() != rt.shape()) continue;
    const std::vector<double> gv = values(gt);
    if (exact) {  // integer data: the exact result rounded once to the output dtype, on both sides
      const std::vector<double> rv = values(rt.to(gt.dtype()));
      CHECK_VALUES(gv, rv, [](size_t) { return 0.0; }, gt.shape(), what << " " << result << " (exact)");
      continue;
    }
    const std::vector<double> rv = values(rt);
    double max_ref = 0;
    for (double v : rv) max_ref = std::isfinite(v) ? std::max(max_ref, std::fabs(v)) : max_ref;
    const Tol t = e.tol(TolCtx{dt, int(which), c.length(int(which)), max_ref, cond});
    std::vector<double> mv;
    if (e.multilinear && t.mag > 0) mv = values(which == 0 ? mag.out : mag.grads[which - 1]);
    const double floor = tessera::testing::subnormal_step(dt);
    CHECK_VALUES(gv, rv, [&](size_t i) { return t.atol + t.rtol * std::fabs(rv[i]) + (mv.empty() ? 0 : t.mag * mv[i]) + floor; },
                 gt.shape(), what << " " << result << " (atol " << t.atol << ", rtol " << t.rtol << ", mag " << t.mag << ")");
  }
}

}  // namespace

TEST_CASE("op registry: every entry has cases, a tolerance rule and CUDA dtypes") {
  CHECK(registry().size() >= 40);
  for (const Entry& e : registry()) {
    INFO(e.name);
    CHECK_FALSE(e.cases.empty());
    CHECK(bool(e.tol));
    CHECK_FALSE(e.cuda_dtypes.empty());
    bool grad = false;
    for (const Case& c : e.cases) grad = grad || (c.tags & kGrad);
    if (e.differentiable) CHECK_MESSAGE(grad, e.name << " is differentiable but has no finite-difference case");
  }
}

TEST_CASE("op registry, grad: float64 finite differences of every differentiable op") {
  int checked = 0;
  for (const Entry& e : registry()) {
    if (!e.differentiable) continue;
    for (const Case& c : e.cases) {
      if (!(c.tags & kGrad)) continue;
      INFO(e.name << " | " << c.name << " | cpu f64 finite differences");
      Generator g(1000 + uint64_t(checked));
      const Inputs in = c.make(g);
      testing::gradcheck(c.call, materialise(in, DType::f64, Device::CPU, true));
      ++checked;
    }
  }
  MESSAGE(checked << " finite-difference cases");
}

TEST_CASE("op registry, compare: the CPU in f32 against the CPU in f64") {
  int checked = 0;
  for (const Entry& e : registry())
    for (const Case& c : e.cases)
      if (c.tags & kCpu) compare_case(e, c, DType::f32, Device::CPU, 2000 + uint64_t(checked++));
  MESSAGE(checked << " cases compared");
}

// bf16 on the CPU keeps the contract's rule for 16-bit data (fp32 arithmetic, one rounding per result:
// kernels/cpu/bf16.cpp), so each entry is held to the same bf16 tolerance as on CUDA. Every entry runs
// with the processor's bf16 dot products in the GEMMs (where it has them; else widened), then the entries
// whose kernels multiply on the GEMM run again with it widened to fp32.
TEST_CASE("op registry, compare: the CPU in bf16 against the CPU in f64") {
  int checked = 0;
  const bool has_dot = cpu_has_avx512_bf16();
  const CpuBf16DotProductsRestorer restore;
  if (!has_dot) MESSAGE("bf16 dot products skipped: this processor lacks AVX512-BF16; the widened path runs");
  for (const bool dot : {true, false}) {
    if (dot && !has_dot) continue;
    set_cpu_bf16_dot_products(dot);
    for (const Entry& e : registry()) {
      if (std::find(e.cuda_dtypes.begin(), e.cuda_dtypes.end(), DType::bf16) == e.cuda_dtypes.end()) continue;
      const bool on_gemm = e.multilinear || e.name == "scaled_dot_product_attention" ||
                           e.name == "attention_probabilities" || e.name == "conv_embedding";
      if (!dot && has_dot && !on_gemm) continue;  // the widened GEMM is all that differs
      for (const Case& c : e.cases)
        if (c.tags & kCpu) compare_case(e, c, DType::bf16, Device::CPU, 5000 + uint64_t(checked++));
    }
  }
  MESSAGE(checked << " cases compared");
}

TEST_CASE("op registry, compare: CUDA in every supported dtype against the CPU in f64") {
  if (!cuda::available()) {
    MESSAGE("skipped: " << cuda::status());
    return;
  }
  int checked = 0;
  for (const Entry& e : registry())
    for (const Case& c : e.cases) {
      if (!(c.tags & kCuda)) continue;
      for (DType dt : e.cuda_dtypes) compare_case(e, c, dt, Device::CUDA, 3000 + uint64_t(checked++));
    }
  MESSAGE(checked << " case × dtype comparisons");
}
