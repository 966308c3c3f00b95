#include "engine/random.h"

#include <cmath>

#include "engine/core/backend.h"

namespace tessera {

uint64_t Generator::take(int64_t n) {
  uint64_t start = offset_;
  offset_ += uint64_t(n);
  return start;
}

static Tensor draw(uint64_t seed, uint64_t offset, RandomKind kind, const Shape& shape, double a, double b,
                   DType dt, Device device) {
  TS_CHECK(is_floating(dt), std::string("random: floating dtype required, not ") + dtype_name(dt));
  // Draw in a dtype the backends generate (f32/f64), then convert: 16-bit tensors get rounded values.
  DType gen_dt = dt == DType::f64 ? DType::f64 : DType::f32;
  Tensor t = Tensor::empty(shape, gen_dt, device);
  if (t.numel() > 0) backend(device).random(kind, t, a, b, seed, offset);
  return t.to(dt);
}

Tensor Generator::uniform(const Shape& shape, double lo, double hi, DType dt, Device device) {
  TS_CHECK(lo <= hi, "uniform: lo > hi");
  return draw(seed_, take(shape_numel(shape)), RandomKind::Uniform, shape, lo, hi, dt, device);
}

Tensor Generator::normal(const Shape& shape, double mean, double std, DType dt, Device device) {
  TS_CHECK(std >= 0, "normal: negative std");
  return draw(seed_, take(shape_numel(shape)), RandomKind::Normal, shape, mean, std, dt, device);
}

Tensor Generator::truncated_normal(const Shape& shape, double mean, double std, double lo, double hi, DType dt,
                                   Device device) {
  TS_CHECK(std > 0 && lo < hi, "truncated_normal: needs std > 0 and lo < hi");
  // Draw the standard variable on the standardised bounds, then scale: x = mean + std·z.
  Tensor z = draw(seed_, take(shape_numel(shape)), RandomKind::TruncatedNormal, shape, (lo - mean) / std,
                  (hi - mean) / std, dt == DType::f64 ? DType::f64 : DType::f32, device);
  Tensor x = Tensor::empty(shape, z.dtype(), device);
  if (x.numel()) backend(device).unary(UnaryOp::Affine, z, x, std, mean);
  return x.to(dt);
}

Tensor Generator::bernoulli(const Shape& shape, double p, DType dt, Device device) {
  TS_CHECK(p >= 0 && p <= 1, "bernoulli: p must be in [0, 1]");
  return draw(seed_, take(shape_numel(shape)), RandomKind::Bernoulli, shape, p, 0, dt, device);
}

}  // namespace tessera
