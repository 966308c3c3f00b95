// The devices' backends by name, for code that must reach one device whatever a tensor's device is (the
// CPU reference in tests, a kernel that delegates a copy). Everything else asks backend(Device).
#pragma once
#include "engine/core/backend.h"

namespace tessera {

Backend& cpu_backend();
Backend& cuda_backend();  // throws, saying why, when tessera was built without CUDA or no GPU can be used

// The CPU's fp32 multiply-add ceiling, measured now (kernels/cpu/peak.cpp): `threads` threads each run
// independent FMA chains on the widest vectors the processor has for about `seconds` in all. An FMA is two
// FLOPs. The denominator for "fraction of the machine": the best any fp32 kernel here can do.
struct CpuPeak {
  double flops_per_second;
  const char* isa;  // "AVX-512", "AVX2" or "scalar"
};
CpuPeak cpu_fma_peak(int threads, double seconds = 0.3);

// bf16 GEMMs on the CPU multiply either with the processor's AVX512-BF16 dot products or on the fp32 kernel,
// the operands widened as they are packed. The default (asked at run time) is the dot products where the
// processor has them and issues them at its FMA's rate (AMD's cores), else widened (Intel's issue them at
// half that rate); tests and benchmarks cover and time both ways. Either way: exact products, fp32 sums,
// one rounding per result —
// except that the dot-product instruction treats subnormal inputs and products (|x| < 2^-126) as zero, as
// the processor manuals document; the widened path keeps them.
bool cpu_has_avx512_bf16();
void set_cpu_bf16_dot_products(bool use);  // true is ignored where the processor lacks them
bool cpu_bf16_dot_products();              // the setting, or else the processor's default
// Restores, when it goes out of scope, the choice it found (code that sets it in between may throw).
class CpuBf16DotProductsRestorer {
 public:
  CpuBf16DotProductsRestorer() : found_(cpu_bf16_dot_products()) {}
  ~CpuBf16DotProductsRestorer() { set_cpu_bf16_dot_products(found_); }
  CpuBf16DotProductsRestorer(const CpuBf16DotProductsRestorer&) = delete;
  CpuBf16DotProductsRestorer& operator=(const CpuBf16DotProductsRestorer&) = delete;

 private:
  bool found_;
};

// How CUDA GEMMs on fp32 data may compute. bf16 tensors always use bf16 inputs with fp32 accumulation.
enum class MatmulPrecision { Highest /* fp32 */, High /* tf32 */ };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();

}  // namespace tessera
