// Unary and binary elementwise ops on strided inputs; the output is contiguous (the op layer allocates it).
// Each op gets its own loop (compile-time dispatch over the op lists), so the unit-stride rows (the common
// case, bias and residual broadcasts included) vectorise instead of switching on the op per element.
#include <algorithm>
#include <type_traits>

#include "kernels/elementwise_math.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"
#include "kernels/cpu/vector_math.h"

namespace tessera {

namespace {

template <UnaryOp Op> using UnaryK = std::integral_constant<UnaryOp, Op>;
template <BinaryOp Op> using BinaryK = std::integral_constant<BinaryOp, Op>;

// Calls f(std::integral_constant<Op, op>) for the runtime op.
template <typename F> void with_unary(UnaryOp op, F&& f) {
#define TS_UNARY_CASE(name) case UnaryOp::name: return f(UnaryK<UnaryOp::name>{});
  switch (op) { TESSERA_UNARY_OPS(TS_UNARY_CASE) }
#undef TS_UNARY_CASE
}
template <typename F> void with_binary(BinaryOp op, F&& f) {
#define TS_BINARY_CASE(name) case BinaryOp::name: return f(BinaryK<BinaryOp::name>{});
  switch (op) { TESSERA_BINARY_OPS(TS_BINARY_CASE) }
#undef TS_BINARY_CASE
}

// The shared formulas, except that float GELU and its gradient take erf and exp from kernels/cpu/vector_math.h
// (vectorisable). Always inlined: a call per element would keep the loops scalar.
template <typename T, UnaryOp Op> [[gnu::always_inline]] inline T unary_op(T x, T a, T b) {
  if constexpr (Op == UnaryOp::Gelu && std::is_same_v<T, float>)
    return elementwise::gelu_from(x, cpu::erf_float(elementwise::gelu_erf_arg(x)));
  else
    return elementwise::unary<T>(Op, x, a, b);
}
template <typename T, BinaryOp Op> [[gnu::always_inline]] inline T binary_op(T a, T b) {
  if constexpr (Op == BinaryOp::GeluBackward && std::is_same_v<T, float>)
    return b * elementwise::gelu_grad_from(a, cpu::erf_float(elementwise::gelu_erf_arg(a)), cpu::exp_neg_half_square(a));
  else
    return elementwise::binary<T>(Op, a, b);
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, Tensor& out, double alpha, double beta) {
  TS_CHECK(x.dtype() == out.dtype(), "unary: dtype mismatch");
  visit_float_or_bf16(x.dtype(), "unary op", [&](auto tag) {
    using T = decltype(tag);
    using C = Compute<T>;
    const T* px = static_cast<const T*>(x.storage()->data) + x.offset();
    T* po = static_cast<T*>(out.storage()->data) + out.offset();
    const C a = C(alpha), b = C(beta);
    with_unary(op, [&](auto k) {
      constexpr UnaryOp Op = decltype(k)::value;
      for_each_row<2>(out.shape(), {&x.strides(), &out.strides()}, [&](auto off, auto st, int64_t n) {
        const T* rx = px + off[0];
        T* ro = po + off[1];
        if (st[0] == 1 && st[1] == 1) {
          for (int64_t i = 0; i < n; ++i) ro[i] = narrow<T>(unary_op<C, Op>(widen(rx[i]), a, b));
          return;
        }
        for (int64_t i = 0; i < n; ++i) ro[i * st[1]] = narrow<T>(unary_op<C, Op>(widen(rx[i * st[0]]), a, b));
      });
    });
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  TS_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), "binary: dtype mismatch");
  visit_float_or_bf16(out.dtype(), "binary op", [&](auto tag) {
    using T = decltype(tag);
    using C = Compute<T>;
    const T* pa = static_cast<const T*>(a.storage()->data) + a.offset();
    const T* pb = static_cast<const T*>(b.storage()->data) + b.offset();
    T* po = static_cast<T*>(out.storage()->data) + out.offset();
    with_binary(op, [&](auto k) {
      constexpr BinaryOp Op = decltype(k)::value;
      for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                      [&](auto off, auto st, int64_t n) {
                        const T* ra = pa + off[0];
                        const T* rb = pb + off[1];
                        T* ro = po + off[2];
                        if (st[0] == 1 && st[2] == 1) {
                          if (st[1] == 1) {
                            for (int64_t i = 0; i < n; ++i) ro[i] = narrow<T>(binary_op<C, Op>(widen(ra[i]), widen(rb[i])));
                            return;
                          }
                          if (st[1] == 0) {  // b constant along the row (a per-row scalar)
                            const C s = widen(rb[0]);
                            for (int64_t i = 0; i < n; ++i) ro[i] = narrow<T>(binary_op<C, Op>(widen(ra[i]), s));
                            return;
                          }
                        }
                        for (int64_t i = 0; i < n; ++i)
                          ro[i * st[2]] = narrow<T>(binary_op<C, Op>(widen(ra[i * st[0]]), widen(rb[i * st[1]])));
                      });
    });
  });
}

// Drop path with its residual add in one pass: out = x·s_b (+ residual), where the composite makes the
// per-sample factors, multiplies through a broadcast view and adds in a second pass over a temporary (a
// CvT-13 block's [1576, 384] took 0.46 ms that way). f32 and f64 only: bf16 arrives widened (bf16.cpp).
// The product is rounded before the sum, as in the composite (one expression would let the compiler fuse
// them into one rounding), so the two agree exactly.
void CpuBackend::drop_path(const Tensor& x, const Tensor& keep_mask, double scale, const Tensor& residual,
                           Tensor& out) {
  TS_CHECK(x.is_contiguous() && keep_mask.is_contiguous() && out.is_contiguous() &&
               (!residual.defined() || residual.is_contiguous()),
           "drop_path: x, keep_mask, residual and out must be contiguous");
  visit_float(x.dtype(), "drop_path", [&](auto tag) {
    using T = decltype(tag);
    const int64_t B = x.size(0), per = B ? x.numel() / B : 0;
    const T *px = x.data<T>(), *pm = keep_mask.data<T>(), *pr = residual.defined() ? residual.data<T>() : nullptr;
    T* po = out.data<T>();
    parallel_for(B * per, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t b = i0 / per; b * per < i1; ++b) {
        const T s = pm[b] != T(0) ? T(scale) : T(0);
        const int64_t j0 = std::max(i0, b * per), j1 = std::min(i1, (b + 1) * per);
        for (int64_t c0 = j0; c0 < j1; c0 += 1024) {  // the sum a second loop over L1-resident products
          const int64_t c1 = std::min(j1, c0 + 1024);
          for (int64_t j = c0; j < c1; ++j) po[j] = px[j] * s;
          if (pr)
            for (int64_t j = c0; j < c1; ++j) po[j] += pr[j];
        }
      }
    });
  });
}

// GELU(x + bias) in one pass: the composite first materialises x + bias. The sum is rounded to T before
// the GELU, as there (so the bf16 results equal the composite's).
void CpuBackend::bias_gelu(const Tensor& x, const Tensor& bias, Tensor& y) {
  TS_CHECK(x.is_contiguous() && bias.is_contiguous() && y.is_contiguous(), "bias_gelu: x, bias and y must be contiguous");
  visit_float_or_bf16(x.dtype(), "bias_gelu", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), C = x.size(1);
    const T *px = x.data<T>(), *pb = bias.data<T>();
    T* py = y.data<T>();
    parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c)
          py[r * C + c] = narrow<T>(unary_op<Compute<T>, UnaryOp::Gelu>(
              widen(narrow<T>(widen(px[r * C + c]) + widen(pb[c]))), 0, 0));
    });
  });
}

// fp32: the product's blocks get the bias and GELU as the GEMM finishes them (gemm_f32_then), so y is not
// read back from memory in a second pass; without h the product is written into y and transformed in place.
// The arithmetic is the composite's (h rounded, h + bias rounded, the same GELU), so the two agree exactly.
// Other types: the composite.
void CpuBackend::linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& h, Tensor& y) {
  if (y.dtype() != DType::f32) return Backend::linear_gelu(x, weight, bias, h, y);
  const int64_t M = x.size(0), N = weight.size(0);
  const float* pb = bias.data<float>();
  float *ph = h.defined() ? h.data<float>() : y.data<float>(), *py = y.data<float>();
  gemm_f32_then(x.data<float>(), weight.data<float>(), ph, M, N, x.size(1),
                [&](int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
                  for (int64_t i = i0; i < i0 + rows; ++i) {
                    const float *hr = ph + i * N + j0, *br = pb + j0;
                    float* yr = py + i * N + j0;
                    for (int64_t j = 0; j < cols; ++j) yr[j] = unary_op<float, UnaryOp::Gelu>(hr[j] + br[j], 0, 0);
                  }
                });
}

// dx = dy·GELU'(x + bias) and dbias = Σ_rows dx in one pass over fixed blocks of rows (sum_over_rows: the
// same sums on any number of threads), each column summed in double over the rounded dx values, as the
// composite's reduce does; without dbias, row-parallel like the forward. The inner loops vectorise.
void CpuBackend::bias_gelu_backward(const Tensor& dy, const Tensor& x, const Tensor& bias, Tensor& dx,
                                    Tensor& dbias) {
  TS_CHECK(dy.is_contiguous() && x.is_contiguous() && bias.is_contiguous() && (!dx.defined() || dx.is_contiguous()),
           "bias_gelu_backward: dy, x, bias and dx must be contiguous");
  if (!dx.defined() && !dbias.defined()) return;
  visit_float_or_bf16(x.dtype(), "bias_gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    using F = Compute<T>;
    const int64_t rows = x.size(0), C = x.size(1);
    const Tensor g = dx.defined() ? dx : Tensor::empty(x.shape(), x.dtype());
    const T *pdy = dy.data<T>(), *px = x.data<T>(), *pb = bias.data<T>();
    T* pg = g.data<T>();
    auto gradient = [&](int64_t r, int64_t c) {
      return narrow<T>(binary_op<F, BinaryOp::GeluBackward>(widen(narrow<T>(widen(px[r * C + c]) + widen(pb[c]))),
                                                             widen(pdy[r * C + c])));
    };
    // A row's gradients, stored, and added to acc (when given). bf16 goes in pieces through an fp32 buffer
    // with the same roundings (cpu::round_to_bf16): composed per element, the conversions kept the loop scalar,
    // 9× the fp32 loop's time.
    auto row = [&](int64_t r, double* __restrict acc) {
      if constexpr (std::is_same_v<T, bf16_t>) {
        constexpr int64_t kPiece = 256;
        for (int64_t c0 = 0; c0 < C; c0 += kPiece) {
          const int64_t n = std::min(kPiece, C - c0);
          const bf16_t *xr = px + r * C + c0, *dyr = pdy + r * C + c0, *br = pb + c0;
          float g[kPiece];
          for (int64_t c = 0; c < n; ++c) {
            const float h = cpu::round_to_bf16(bf16_to_float(xr[c]) + bf16_to_float(br[c]));
            g[c] = cpu::round_to_bf16(binary_op<float, BinaryOp::GeluBackward>(h, bf16_to_float(dyr[c])));
          }
          for (int64_t c = 0; c < n; ++c) pg[r * C + c0 + c] = bf16_t{uint16_t(std::bit_cast<uint32_t>(g[c]) >> 16)};
          if (acc)
            for (int64_t c = 0; c < n; ++c) acc[c0 + c] += double(g[c]);
        }
      } else if (acc) {  // a loop each way: a test inside would keep the loop from vectorising (6× slower)
        for (int64_t c = 0; c < C; ++c) {
          const T v = gradient(r, c);
          pg[r * C + c] = v;
          acc[c] += to_double(v);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) pg[r * C + c] = gradient(r, c);
      }
    };
    if (!dbias.defined()) {
      parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row(r, nullptr);
      });
      return;
    }
    const std::vector<double> sums = sum_over_rows(rows, C, row);
    for (int64_t c = 0; c < C; ++c) dbias.data<T>()[c] = from_double<T>(sums[size_t(c)]);
  });
}

}  // namespace tessera
