// The devices' backends by name, for code that must reach one device whatever a tensor's device is (the
// CPU reference in tests, a kernel that delegates a copy). Everything else asks backend(Device).
#pragma once
#include "engine/core/backend.h"

namespace tessera {

Backend& cpu_backend();
Backend& cuda_backend();  // throws, saying why, when tessera was built without CUDA or no GPU can be used

}  // namespace tessera
