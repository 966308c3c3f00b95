// Shared by the CUDA test programs and the op registry: skipping (with the reason) where no GPU is usable,
// dtype names for messages, and the rounding units the tolerances are written in.
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/core/dtype.h"
#include "engine/core/tensor.h"
#include "tests/gradcheck.h"

// Without a usable GPU a test that needs one prints why and returns.
#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    if (!::tessera::cuda::available()) {                     \
      MESSAGE("skipped: " << ::tessera::cuda::status());     \
      return;                                                \
    }                                                        \
  } while (0)

namespace tessera::testing {

// doctest 2.4's INFO/MESSAGE print a const char* as a pointer, so names go through std::string.
inline std::string dname(DType t) { return dtype_name(t); }

inline constexpr DType kFloatTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};

// Unit roundoff of a storage type: half the spacing of the numbers just above 1.
inline double unit_roundoff(DType t) {
  switch (t) {
    case DType::f64: return 0x1p-53;
    case DType::f32: return 0x1p-24;
    case DType::f16: return 0x1p-11;
    case DType::bf16: return 0x1p-8;
    default: return 0;
  }
}
// Unit roundoff of the type the GPU computes/accumulates in (16-bit types compute in f32).
inline double compute_roundoff(DType t) { return t == DType::f64 ? 0x1p-53 : 0x1p-24; }
// Spacing of the smallest subnormals: the absolute error floor of rounding a result near zero.
inline double subnormal_step(DType t) {
  switch (t) {
    case DType::f64: return 0x1p-1074;
    case DType::f32: return 0x1p-149;
    case DType::f16: return 0x1p-24;
    case DType::bf16: return 0x1p-133;
    default: return 0;
  }
}
// The spacing of dtype t's numbers at magnitude |x| (one ulp).
inline double ulp_of(double x, DType t) {
  const int mant_bits = t == DType::f64 ? 52 : t == DType::f32 ? 23 : t == DType::f16 ? 10 : 7;
  if (x == 0) return subnormal_step(t);
  int e;
  std::frexp(std::fabs(x), &e);  // |x| = f·2^e, f in [0.5, 1)
  return std::max(std::ldexp(1.0, e - 1 - mant_bits), subnormal_step(t));
}

// Values in logical order. contiguous() first: the GPU's own copy kernel packs a strided view, so the
// device-to-host transfer moves one dense block.
inline std::vector<double> values(const Tensor& t) { return t.contiguous().to(Device::CPU).to_vector<double>(); }
inline Tensor on_gpu(const Tensor& t) { return t.defined() ? t.to(Device::CUDA) : Tensor(); }
inline Tensor as_f64(const Tensor& t) { return t.defined() ? t.to(DType::f64) : Tensor(); }

// Checks |got − want| ≤ tol(i) everywhere (equal values, NaN where the reference is NaN, pass); a failure
// prints the largest errors and the first elements out of tolerance.
inline void check_close(const std::vector<double>& got, const std::vector<double>& want,
                        const std::function<double(size_t)>& tol, const std::string& what) {
  CHECK_VALUES(got, want, tol, Shape{int64_t(want.size())}, what);
}

}  // namespace tessera::testing
