// Linked instead of the CUDA kernels when tessera is built without CUDA (TESSERA_CUDA=OFF, or no nvcc).
#include <stdexcept>

#include "kernels/devices.h"

namespace tessera {

Backend& cuda_backend() {
  throw std::runtime_error("this tessera was built without CUDA (reconfigure with -DTESSERA_CUDA=ON)");
}

}  // namespace tessera
