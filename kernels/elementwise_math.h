// The scalar math of every elementwise op, shared by the CPU reference and the CUDA kernels so both
// compute the same formula. T is float or double (16-bit types compute in float).
#pragma once
#include <cmath>

#include "engine/core/dtype.h"
#include "engine/core/backend.h"

namespace tessera::elementwise {

// GELU(x) = x·Φ(x), Φ(x) = (1 + erf(x/√2)) / 2. The *_from forms take e = erf(x/√2) and g = exp(−x²/2) so
// that a device may supply its own functions (the CPU's float loops use vectorisable ones,
// kernels/cpu/vector_math.h).
template <typename T> TS_HD T gelu_erf_arg(T x) { return x * T(0.70710678118654752440); }
template <typename T> TS_HD T gelu_from(T x, T e) { return T(0.5) * x * (T(1) + e); }
// d/dx [x·Φ(x)] = Φ(x) + x·φ(x), φ(x) = g/√(2π)
template <typename T> TS_HD T gelu_grad_from(T x, T e, T g) {
  T cdf = T(0.5) * (T(1) + e);
  T pdf = T(0.39894228040143267794) * g;
  return cdf + x * pdf;
}
template <typename T> TS_HD T gelu(T x) { return gelu_from(x, std::erf(gelu_erf_arg(x))); }
template <typename T> TS_HD T gelu_grad(T x) {
  return gelu_grad_from(x, std::erf(gelu_erf_arg(x)), std::exp(T(-0.5) * x * x));
}

template <typename T> TS_HD T unary(UnaryOp op, T x, T alpha, T beta) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Erf: return std::erf(x);
    case UnaryOp::Abs: return std::fabs(x);
    case UnaryOp::Gelu: return gelu(x);
    case UnaryOp::Affine: return alpha * x + beta;
    case UnaryOp::PowScalar: return std::pow(x, alpha);
    case UnaryOp::Clamp: return x < alpha ? alpha : (x > beta ? beta : x);  // NaN passes through
  }
  return x;
}

template <typename T> TS_HD T binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Maximum: return (a >= b || a != a) ? a : b;  // NaN propagates, like torch.maximum
    case BinaryOp::Minimum: return (a <= b || a != a) ? a : b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::GeluBackward: return b * gelu_grad(a);
    case BinaryOp::Eq: return a == b ? T(1) : T(0);
    case BinaryOp::Gt: return a > b ? T(1) : T(0);
    case BinaryOp::Ge: return a >= b ? T(1) : T(0);
  }
  return a;
}

}  // namespace tessera::elementwise
