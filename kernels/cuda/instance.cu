// The CUDA backend's instance, made on first use once a device is known to work.
#include <stdexcept>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/devices.h"

namespace tessera {

Backend& cuda_backend() {
  if (!cuda::available()) throw std::runtime_error("the CUDA backend cannot run: " + cuda::status());
  static CudaBackend backend;
  return backend;
}

}  // namespace tessera
