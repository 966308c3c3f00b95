// Unary and binary elementwise ops on strided inputs; the output is contiguous (the op layer allocates it).
#include "kernels/elementwise_math.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace tessera {

void CpuBackend::unary(UnaryOp op, const Tensor& x, Tensor& out, double alpha, double beta) {
  TS_CHECK(x.dtype() == out.dtype(), "unary: dtype mismatch");
  visit_float(x.dtype(), "unary op", [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.storage()->data) + x.offset();
    T* po = static_cast<T*>(out.storage()->data) + out.offset();
    T a = T(alpha), b = T(beta);
    for_each_row<2>(out.shape(), {&x.strides(), &out.strides()}, [&](auto off, auto st, int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        po[off[1] + i * st[1]] = elementwise::unary<T>(op, px[off[0] + i * st[0]], a, b);
    });
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  TS_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), "binary: dtype mismatch");
  visit_float(out.dtype(), "binary op", [&](auto tag) {
    using T = decltype(tag);
    const T* pa = static_cast<const T*>(a.storage()->data) + a.offset();
    const T* pb = static_cast<const T*>(b.storage()->data) + b.offset();
    T* po = static_cast<T*>(out.storage()->data) + out.offset();
    for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                    [&](auto off, auto st, int64_t n) {
                      const T* ra = pa + off[0];
                      const T* rb = pb + off[1];
                      T* ro = po + off[2];
                      if (op == BinaryOp::Add && st[0] == 1 && st[1] == 1 && st[2] == 1) {
                        for (int64_t i = 0; i < n; ++i) ro[i] = ra[i] + rb[i];  // vectorised hot case
                        return;
                      }
                      for (int64_t i = 0; i < n; ++i)
                        ro[i * st[2]] = elementwise::binary<T>(op, ra[i * st[0]], rb[i * st[1]]);
                    });
  });
}

}  // namespace tessera
