// The devices' backends by name, for code that must reach one device whatever a tensor's device is (the
// CPU reference in tests, a kernel that delegates a copy). Everything else asks backend(Device).
#pragma once
#include "engine/core/backend.h"

namespace tessera {

Backend& cpu_backend();
Backend& cuda_backend();  // throws, saying why, when tessera was built without CUDA or no GPU can be used

// How CUDA GEMMs on fp32 data may compute. bf16 tensors always use bf16 inputs with fp32 accumulation.
enum class MatmulPrecision { Highest /* fp32 */, High /* tf32 */ };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();

}  // namespace tessera
