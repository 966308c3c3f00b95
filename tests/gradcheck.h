// Shared helpers for op tests: random inputs, the element-by-element comparison report, and the float64
// finite-difference gradient check.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sstream>
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

// got vs want element by element, |got − want| <= tol(i) (equal values, NaN where want is NaN, pass): the
// worst ratio, the largest absolute and relative errors, and the first elements that fail, by index.
struct Mismatch {
  double worst = 0, max_abs = 0, max_rel = 0;
  size_t failures = 0;
  std::string report;  // "" when everything passes
};
inline std::string index_str(size_t flat, const Shape& shape) {
  std::string s = "[";
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] ? int64_t(flat) % shape[d] : 0;
    flat = shape[d] ? flat / size_t(shape[d]) : 0;
  }
  for (size_t d = 0; d < idx.size(); ++d) s += (d ? "," : "") + std::to_string(idx[d]);
  return s + "]";
}
inline Mismatch compare_values(const std::vector<double>& got, const std::vector<double>& want,
                               const std::function<double(size_t)>& tol, const Shape& shape) {
  Mismatch m;
  std::ostringstream first;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    if (same) continue;
    const double err = std::fabs(got[i] - want[i]), t = tol(i);
    const double r = std::isnan(err) ? INFINITY : t > 0 ? err / t : INFINITY;
    m.max_abs = std::max(m.max_abs, std::isnan(err) ? INFINITY : err);
    if (want[i] != 0) m.max_rel = std::max(m.max_rel, std::isnan(err) ? INFINITY : err / std::fabs(want[i]));
    m.worst = std::max(m.worst, r);
    if (r > 1.0 && ++m.failures <= 4)
      first << "\n    at " << index_str(i, shape) << ": got " << got[i] << ", want " << want[i] << ", |err| " << err
            << " > tolerance " << t;
  }
  if (got.size() != want.size()) {
    m.failures = 1;
    m.worst = INFINITY;
    m.report = "sizes differ: " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  } else if (m.failures) {
    std::ostringstream s;
    s << m.failures << " of " << got.size() << " elements out of tolerance; max |err| " << m.max_abs
      << ", max rel err " << m.max_rel << ", worst |err|/tolerance " << m.worst << "; first:" << first.str();
    m.report = s.str();
  }
  return m;
}
// Checks with compare_values, naming `what` and printing the report on failure.
#define CHECK_VALUES(got, want, tol, shape, what)                                                  \
  do {                                                                                             \
    const ::tessera::testing::Mismatch m_ = ::tessera::testing::compare_values(got, want, tol, shape); \
    INFO(what << ": " << m_.report);                                                               \
    CHECK(m_.failures == 0);                                                                       \
  } while (0)

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
  for (auto& x : inputs)
    if (x.defined()) x.zero_grad();
  sum(mul(out, W)).backward();

  auto objective = [&]() {
    NoGradGuard ng;
    return sum(mul(f(inputs), W)).item();
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
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
    CHECK_VALUES(analytic.to_vector<double>(), numeric, [&](size_t i) { return atol + rtol * std::fabs(numeric[i]); },
                 x.shape(), "gradient of input " << k << " " << x.str() << " (analytic vs central differences)");
  }
}

}  // namespace tessera::testing
