// Shared by the CUDA test programs: skipping (with the reason) where no GPU is usable, and dtype names
// for messages.
#pragma once
#include <doctest/doctest.h>

#include <string>

#include "engine/cuda.h"
#include "engine/dtype.h"

// Without a usable GPU a test that needs one prints why and returns.
#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    if (!::tessera::cuda::available()) {                     \
      MESSAGE("skipped: " << ::tessera::cuda::status());     \
      return;                                                \
    }                                                        \
  } while (0)

namespace tessera::testing {
// doctest 2.4's INFO/MESSAGE print a const char* as a pointer, so names go through std::string.
inline std::string dname(DType t) { return dtype_name(t); }
}  // namespace tessera::testing
