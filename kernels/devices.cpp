// Registers the devices' backends with the tensor core when this library loads.
#include "kernels/devices.h"

namespace tessera {
namespace {
const bool registered = [] {
  register_backend(Device::CPU, &cpu_backend);
  register_backend(Device::CUDA, &cuda_backend);
  return true;
}();
}  // namespace
}  // namespace tessera
