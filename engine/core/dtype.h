// Element types and their conversions. The 16-bit float conversions are __host__ __device__ so
// CPU reference code and CUDA kernels round identically (round-to-nearest-even, NaN preserved).
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define TS_HD __host__ __device__ __forceinline__
#else
#define TS_HD inline
#endif

namespace tessera {

enum class DType : uint8_t { f32, f64, bf16, f16, i64, i32, u8, boolean };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::u8: case DType::boolean: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";   case DType::f64: return "f64";
    case DType::bf16: return "bf16"; case DType::f16: return "f16";
    case DType::i64: return "i64";   case DType::i32: return "i32";
    case DType::u8: return "u8";     case DType::boolean: return "bool";
  }
  return "?";
}

inline bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}

// Bit-level 16-bit float types: storage only; arithmetic happens in float.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

TS_HD uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
TS_HD float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

TS_HD float bf16_to_float(bf16_t h) { return bits_float(uint32_t(h.bits) << 16); }
TS_HD bf16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16_t{uint16_t(u >> 16)};
}

TS_HD float f16_to_float(f16_t h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {                                                        // zero / subnormal
    if (man == 0) return bits_float(sign);
    float v = float(man) * (1.0f / 16777216.0f);  // man · 2^-24
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}
TS_HD f16_t float_to_f16(float f) {
  uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16_t{uint16_t(sign | 0x7e00u)};  // NaN
  if (a >= 0x477ff000u) return f16_t{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below the smallest normal 2^-14: subnormal, round to nearest even
    // Adding 0.5 moves the value so the FPU's own round-to-nearest-even does the subnormal rounding.
    float v = bits_float(a) + 0.5f;
    return f16_t{uint16_t(sign | (float_bits(v) - 0x3f000000u))};
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return f16_t{uint16_t(sign | (a >> 13))};
}

// Maps a C++ type to its DType.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16_t> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<f16_t> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };

// Conversions through double/float for the generic copy kernels.
template <typename T> TS_HD double to_double(T v) { return double(v); }
template <> TS_HD double to_double<bf16_t>(bf16_t v) { return bf16_to_float(v); }
template <> TS_HD double to_double<f16_t>(f16_t v) { return f16_to_float(v); }
template <typename T> TS_HD T from_double(double v) { return T(v); }
template <> TS_HD bf16_t from_double<bf16_t>(double v) { return float_to_bf16(float(v)); }
template <> TS_HD f16_t from_double<f16_t>(double v) { return float_to_f16(float(v)); }
template <> TS_HD bool from_double<bool>(double v) { return v != 0.0; }

// Calls f(T{}) with T the C++ type of `t` (all eight dtypes).
template <typename F> decltype(auto) visit_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16_t{});
    case DType::f16: return f(f16_t{});
    case DType::i64: return f(int64_t{});
    case DType::i32: return f(int32_t{});
    case DType::u8: return f(uint8_t{});
    case DType::boolean: return f(bool{});
  }
  throw std::logic_error("visit_dtype: bad dtype");
}

enum class Device : uint8_t { CPU, CUDA };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

}  // namespace tessera
