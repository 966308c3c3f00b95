// Math for the CPU's loops in a form the compiler inlines and vectorises. erf and exp for the float GELU and
// softmax loops: libm's erff and expf are opaque calls that keep every loop around them scalar (only the
// float paths use these; double keeps std::erf and std::exp, the exact references the float64 gradient
// checks compare against). lane_sum for the double row sums (layer norm, gradient clipping, the softmax's
// denominator): one running sum would wait on its previous add for every element. round_to_bf16 for the
// bf16 rows' roundings.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/intrinsics.h"

namespace tessera::cpu {

// erf for float: the rational fit erf(x) ≈ x·P(x²)/Q(x²) on [−4, 4] (P of degree 6 and Q of degree 4 in x²),
// the minimax form vector math libraries use for float erf. Its own error is ≤ 6.5e-8 relative over the
// range; evaluated in float (16 lanes a vector, the division included) its Horner steps and the division
// bring the worst case to ~6·2^-24 relative, near ±4 where |erf| → 1, i.e. ≤ 4e-7 absolute. Evaluated in
// double instead (8 lanes, and a double division that stalls the pipe) the result carried one rounding
// more than the fit, but GELU's backward took 1.75× as long; the GELU tolerances (derived in the op
// registry, a few uc relative to |x|) hold either way.
// Beyond ±4, erf rounds to ±1 in float; clamping the argument to ±4 gives that (and NaN passes through).
inline float erf_float(float a) {
  // The clamp works on the bits (|a| as an integer orders like the float): a floating compare ahead of the
  // division would be lowered to a branch that, with trapping math, keeps the loop from vectorising.
  const uint32_t bits = std::bit_cast<uint32_t>(a), mag = bits & 0x7fffffffu, four = 0x40800000u;  // 4.0f
  const uint32_t clamped = mag > 0x7f800000u ? mag : (mag < four ? mag : four);                    // NaN stays
  const float x = std::bit_cast<float>(clamped | (bits & 0x80000000u)), x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// exp(x) for float x, in float: 16 lanes a vector, where a double form would have 8 (the softmax's rows,
// ViT-B/16's 45 million scores a step; GELU's gradient). x = k·ln 2 + r with k = round(x / ln 2) and ln 2
// in two parts (Cody & Waite: k·0.693359375 is exact for |k| < 2^12, so r carries only the low part's rounding);
// exp(r) = 1 + r + r²·P(r), P the degree-5 minimax fit of Cephes' expf on |r| ≤ ln(2)/2; 2^k applied in
// two exact halves, so results in the subnormal range (k down to −150) round once, at the last product.
// x is clamped to [−104, 89] on its bits first (exp is 0 and inf in float beyond; NaN passes). Error ≤
// 2·2^-24 relative where the result is normal (test_kernel_math measures 1.4).
[[gnu::always_inline]] inline float exp_float(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x), mag = bits & 0x7fffffffu, sign = bits & 0x80000000u;
  const uint32_t cap = sign ? 0x42d00000u : 0x42b20000u;  // 104.0f below zero, 89.0f above
  const uint32_t clamped = mag > 0x7f800000u ? mag : (mag < cap ? mag : cap);
  const float xc = std::bit_cast<float>(clamped | sign);
  const float shifter = 0x1.8p23f, kf_shifted = xc * 1.44269504088896341f + shifter;
  const int32_t k = std::bit_cast<int32_t>(kf_shifted) - std::bit_cast<int32_t>(shifter);
  const float kf = kf_shifted - shifter;
  const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t k1 = k >> 1, k2 = k - k1;  // k in [−150, 128], so each in [−75, 64]: normal floats
  return y * std::bit_cast<float>(uint32_t(k1 + 127) << 23) * std::bit_cast<float>(uint32_t(k2 + 127) << 23);
}

// exp(−x²/2) for float x (GELU's gradient), in float: x² = h + l exactly (l by a fused multiply-add), so
// exp(−x²/2) = exp(−h/2)·exp(−l/2) with −h/2 exact, exp(−h/2) from exp_float (≤ 2·2^-24) and exp(−l/2) =
// 1 − l/2 to within (l/2)²/2 ≤ 2^-37 relative for |x| ≤ 15 (|l| ≤ ulp(225)/2 = 2^-17). The worst case
// comes to ~3·2^-24 relative where the result is normal. |x| is clamped to 15 first (on the float's bits, as in erf_float: a 32-bit select keeps
// the GELU loops vectorised): exp(−112.5) is below the smallest float, so the result is 0 from there on, as
// for an infinite x (whose l would be NaN); NaN passes through, blended in by a bit mask at the end. (A NaN
// kept in the clamp's select, as erf_float does, let GCC 12 turn the clamp into a branch with the
// multiply-adds on one side; with AVX-512 the loop vectorised anyway, with AVX2 GELU's gradient ran scalar,
// 10 ns an element: bias_gelu_backward took 410 ms of a ~3 s CvT-13 training step on a 2-core AMD EPYC.)
inline float exp_neg_half_square(float a) {
  const uint32_t mag = std::bit_cast<uint32_t>(a) & 0x7fffffffu, cap = 0x41700000u;  // 15.0f
  const float x = std::bit_cast<float>(mag < cap ? mag : cap), h = x * x, l = __builtin_fmaf(x, x, -h);
  const float r = exp_float(-0.5f * h) * (1.0f - 0.5f * l);
  const uint32_t nan = 0u - uint32_t(mag > 0x7f800000u);  // all ones where a is NaN: a, else r
  return std::bit_cast<float>((std::bit_cast<uint32_t>(r) & ~nan) | (std::bit_cast<uint32_t>(a) & nan));
}

// v rounded to bf16 (to nearest, ties to even) and widened back: the bits of bf16_to_float(float_to_bf16(v)),
// NaN kept quiet, in a form loops vectorise (float_to_bf16 returns early for NaN; here a select).
[[gnu::always_inline]] inline float round_to_bf16(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  return std::bit_cast<float>(r & 0xffff0000u);
}

// 16 floats, one AVX-512 register (two AVX2 ones elsewhere), as a GCC/Clang vector: for loops whose running
// sums must stay in registers, which the auto-vectoriser does not promise (it may swap a sum's loops, or
// keep the sums in memory, where each multiply-add waits on the previous one's store).
constexpr int64_t kF32Lanes = 16;
typedef float f32x16 __attribute__((vector_size(kF32Lanes * sizeof(float))));
// Half of one, and the 8 doubles the same 8 floats widen to (sums in double of float terms).
typedef float f32x8 __attribute__((vector_size(8 * sizeof(float))));
typedef double f64x8 __attribute__((vector_size(8 * sizeof(double))));
[[gnu::always_inline]] inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}
[[gnu::always_inline]] inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof v); }

// One register of floats on the machine the build targets: 16 with AVX-512, else 8 (two SSE registers where
// there is no AVX). For loops that hold many vectors at once (a depthwise conv's 9 tap weights), where a
// 16-float vector on AVX2 would be two registers each and spill.
#if defined(__AVX512F__)
constexpr int64_t kRegisterF32Lanes = 16;
#else
constexpr int64_t kRegisterF32Lanes = 8;
#endif
typedef float f32xR __attribute__((vector_size(kRegisterF32Lanes * sizeof(float))));
[[gnu::always_inline]] inline f32xR loadR(const float* p) {
  f32xR v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}
[[gnu::always_inline]] inline void storeR(float* p, f32xR v) { std::memcpy(p, &v, sizeof v); }

// 8 floats widened to 8 doubles, and a 16-float vector's halves so widened: one vcvtps2pd each with AVX-512.
// GCC 12 lowers __builtin_convertvector between these widths to two 128-bit conversions, an extract and an
// insert; in the softmax's exp loop that sequence and a trip of the exps through the stack took 18 % of
// its time (a one-thread harness on 72 rows of 784 scores, bit-identical results).
[[gnu::always_inline]] inline f64x8 widen8(f32x8 v) {
#if defined(__AVX512F__)
  return f64x8(_mm512_cvtps_pd(__m256(v)));
#else
  return __builtin_convertvector(v, f64x8);
#endif
}
[[gnu::always_inline]] inline f64x8 widen_low8(f32x16 v) {
  return widen8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7));
}
[[gnu::always_inline]] inline f64x8 widen_high8(f32x16 v) {
  return widen8(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}

// Σ_{i<n} term(i) as `Lanes` running sums of type Acc, added in lane order at the end. One running sum waits
// on the previous add (4 cycles) for every term, which made the CPU's row reductions (layer norm, clipping)
// latency-bound; independent lanes vectorise and overlap. The order depends on n alone: the same result on
// every run and thread count. lane_sum is the double form; float sums fill one AVX-512 register with 16.
template <typename Acc, int64_t Lanes = 16, typename Term>
[[gnu::always_inline]] inline Acc lane_sum_in(int64_t n, const Term& term) {
  Acc lane[Lanes] = {};
  int64_t i = 0;
  for (; i + Lanes <= n; i += Lanes)
    for (int64_t l = 0; l < Lanes; ++l) lane[l] += term(i + l);
  for (int64_t l = 0; i + l < n; ++l) lane[l] += term(i + l);
  Acc sum = 0;
  for (Acc v : lane) sum += v;
  return sum;
}
template <int64_t Lanes = 16, typename Term> [[gnu::always_inline]] inline double lane_sum(int64_t n, const Term& term) {
  return lane_sum_in<double, Lanes>(n, term);
}

// Σ_{i<n} a[i]·b[i] in double for float vectors: the products and sums in two vectors of 8 double lanes (16
// floats a step), added in lane order at the end, the tail after them. A single running sum is a chain of n
// dependent adds: the attention backward's rowsum(dO ⊙ O) over a head dim of 64 spent 62 % of its row pass
// waiting on it. The order depends on n alone.
inline double dot_in_double(const float* a, const float* b, int64_t n) {
  f64x8 lo = {}, hi = {};
  int64_t i = 0;
  for (; i + kF32Lanes <= n; i += kF32Lanes) {
    const f32x16 va = load16(a + i), vb = load16(b + i);
    lo += widen_low8(va) * widen_low8(vb);
    hi += widen_high8(va) * widen_high8(vb);
  }
  double sum = 0;
  for (int l = 0; l < 8; ++l) sum += lo[l];
  for (int l = 0; l < 8; ++l) sum += hi[l];
  for (; i < n; ++i) sum += double(a[i]) * double(b[i]);
  return sum;
}

}  // namespace tessera::cpu

