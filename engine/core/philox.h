// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the mappings
// from its output to the distributions tessera draws. Host and device share this code, so element i of a
// draw is the same number on the CPU and on the GPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera::philox {

struct U4 { uint32_t x, y, z, w; };

TS_HD U4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  U4 c{uint32_t(counter), uint32_t(counter >> 32), 0x9E3779B9u /* fixed stream tag */, 0u};
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c.x, p1 = uint64_t(0xCD9E8D57u) * c.z;
    c = U4{uint32_t(p1 >> 32) ^ c.y ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c.w ^ k1, uint32_t(p0)};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Element i of a uniform [0,1) stream.
TS_HD double uniform(uint64_t seed, uint64_t i) {
  U4 r = philox4x32_10(seed, i);
  return double((uint64_t(r.x) << 21) ^ (r.y >> 11)) * 0x1.0p-53;
}

// Element i of a standard normal stream (Box-Muller on two 53-bit uniforms; u1 in (0, 1]).
TS_HD double normal(uint64_t seed, uint64_t i) {
  U4 r = philox4x32_10(seed, i);
  double u1 = 1.0 - double((uint64_t(r.x) << 21) ^ (r.y >> 11)) * 0x1.0p-53;
  double u2 = double((uint64_t(r.z) << 21) ^ (r.w >> 11)) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// Inverse of the standard normal CDF by bisection-free Newton steps on erf; accurate to ~1e-15.
TS_HD double normal_quantile(double p) {
  // Initial guess: Acklam-style rational-free approximation via log, refined by Newton on the CDF.
  double q = p < 0.5 ? p : 1.0 - p;
  double t = std::sqrt(-2.0 * std::log(q));
  double x = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1.0 + 1.432788 * t + 0.189269 * t * t +
                                                                     0.001308 * t * t * t);
  if (p < 0.5) x = -x;
  for (int it = 0; it < 3; ++it) {  // Newton: f(x) = Φ(x) − p, f'(x) = φ(x)
    double cdf = 0.5 * std::erfc(-x * 0.7071067811865476);
    double pdf = 0.3989422804014327 * std::exp(-0.5 * x * x);
    x -= (cdf - p) / pdf;
  }
  return x;
}

// Element i of N(0,1) conditioned on [a, b] (standardised bounds), by the inverse CDF.
TS_HD double truncated_normal(uint64_t seed, uint64_t i, double a, double b) {
  double ca = 0.5 * std::erfc(-a * 0.7071067811865476), cb = 0.5 * std::erfc(-b * 0.7071067811865476);
  double u = uniform(seed, i);
  double p = ca + u * (cb - ca);
  const double tiny = 1e-300;
  if (p <= tiny) p = tiny;
  if (p >= 1.0) p = 1.0 - 1e-16;
  double x = normal_quantile(p);
  return x < a ? a : (x > b ? b : x);
}

}  // namespace tessera::philox
