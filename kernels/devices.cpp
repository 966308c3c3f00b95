// What the devices share: their registration with the tensor core (when this library loads) and the
// matmul precision setting.
#include "kernels/devices.h"

#include <atomic>

namespace tessera {
namespace {
const bool registered = [] {
  register_backend(Device::CPU, &cpu_backend);
  register_backend(Device::CUDA, &cuda_backend);
  return true;
}();
}  // namespace

static std::atomic<MatmulPrecision> g_matmul_precision{MatmulPrecision::Highest};
void set_matmul_precision(MatmulPrecision p) { g_matmul_precision = p; }
MatmulPrecision matmul_precision() { return g_matmul_precision; }

}  // namespace tessera
