// The multi-tensor kernels against the CPU on lists that exercise their packing: mixed parameter and
// gradient dtypes, empty tensors, sizes around the 64 Ki-element chunk and more tensors than one launch
// carries (kernels/cuda/multi_tensor.h). The registry (test_backend_ops.cpp) checks AdamW and clipping
// through their public API on lists of one dtype; these lists only the backend calls can build.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/core/backend.h"
#include "engine/random.h"
#include "kernels/devices.h"
#include "tests/cuda_test_util.h"

using namespace tessera;
using namespace tessera::testing;

TEST_CASE("cuda multi-tensor adamw matches the CPU over several steps") {
  SKIP_WITHOUT_GPU();
  // f32 parameters with f32 and with bf16 gradients, f64 parameters, an empty tensor, sizes around the chunk
  // and more tensors than one launch carries (36), each with its own weight decay.
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
      check_close(got, want, [&](size_t) { return 2 * steps * u * max_abs; },
                  "adamw tensor " + std::to_string(i) + " (n " + std::to_string(specs[i].n) + ", param " +
                      dname(specs[i].param) + ", grad " + dname(specs[i].grad) + ") " + names[k]);
    }
  }
}

TEST_CASE("cuda multi-tensor sum_of_squares and scale vs the CPU (clip_grad_norm's passes)") {
  SKIP_WITHOUT_GPU();
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
    std::vector<double> want_scaled;
    for (double v : x) want_scaled.push_back(v * f);
    check_close(y, want_scaled,
                [&](size_t k) { return 2 * compute_roundoff(dt) * std::fabs(x[k] * f) + ulp_of(x[k] * f, dt); },
                "scale " + dname(dt));
  }
  // A factor of exactly 1 leaves every tensor bit for bit.
  std::vector<std::vector<double>> before;
  for (const Tensor& t : gpu) before.push_back(values(t));
  cuda_backend().scale(gpu, Tensor::scalar(1.0, DType::f64, Device::CUDA));
  for (size_t i = 0; i < gpu.size(); ++i) CHECK(values(gpu[i]) == before[i]);
}
