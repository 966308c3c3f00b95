// Shared helpers for op tests: random inputs and the float64 finite-difference gradient check.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace tessera::testing {

// A float64 leaf with values in [lo, hi) that requires grad.
inline Tensor leaf(Generator& gen, const Shape& shape, double lo = -1, double hi = 1) {
  Tensor t = gen.uniform(shape, lo, hi, DType::f64);
  t.set_requires_grad(true);
  return t;
}

// Largest |a - b| / (atol + rtol·|b|) over all elements: <= 1 means "close".
inline double closeness(const Tensor& a, const Tensor& b, double atol, double rtol) {
  REQUIRE(a.shape() == b.shape());
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double err = std::abs(va[i] - vb[i]) / (atol + rtol * std::abs(vb[i]));
    if (!(err <= worst)) worst = err;  // NaN-propagating max
  }
  return worst;
}
#define CHECK_CLOSE(a, b, atol, rtol) CHECK(::tessera::testing::closeness((a), (b), (atol), (rtol)) <= 1.0)

// Checks the autograd gradients of f(inputs) against central differences, in float64.
// The scalar differentiated is sum(f(inputs) ⊙ W) with W a fixed random tensor, so every output element
// contributes with a distinct weight. Central differences with h = 1e-6 have truncation error O(h²·f''')
// ≈ 1e-12 and rounding error O(ε·|f|/h) ≈ 1e-10 for |f| ~ 1, so 1e-6 absolute + 1e-5 relative is ~10⁴×
// above the noise and far below any real mistake (a wrong rule is off by O(1)).
inline void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double atol = 1e-6, double rtol = 1e-5, double h = 1e-6) {
  Generator wgen(1234);
  Tensor out = f(inputs);
  REQUIRE(out.requires_grad());
  Tensor W = wgen.uniform(out.shape(), -1, 1, DType::f64);
  for (auto& x : inputs) x.zero_grad();
  sum(mul(out, W)).backward();

  auto objective = [&]() {
    NoGradGuard ng;
    return sum(mul(f(inputs), W)).item();
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    REQUIRE(x.dtype() == DType::f64);
    REQUIRE(x.is_contiguous());
    Tensor analytic = x.grad().defined() ? x.grad() : Tensor::zeros(x.shape(), DType::f64);
    std::vector<double> numeric(size_t(x.numel()));
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double saved = p[i];
      p[i] = saved + h;
      double fp = objective();
      p[i] = saved - h;
      double fm = objective();
      p[i] = saved;
      numeric[size_t(i)] = (fp - fm) / (2 * h);
    }
    Tensor num = Tensor::from(numeric, x.shape());
    double c = closeness(analytic, num, atol, rtol);
    INFO("input " << k << " " << x.str() << ": worst |analytic - numeric| / tolerance = " << c);
    CHECK(c <= 1.0);
  }
}

}  // namespace tessera::testing
