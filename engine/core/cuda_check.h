// Error checks for every CUDA runtime call: a failure throws std::runtime_error naming the
// call, the file and line, and the library's own description of the error. Kernel launches are followed by
// TS_CUDA_CHECK_LAUNCH(), which reports bad launch configurations immediately (errors raised while the
// kernel runs surface at the next synchronising call, which is checked too).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace tessera::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

}  // namespace tessera::cuda::detail

#define TS_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    cudaError_t ts_err_ = (expr);                                                            \
    if (ts_err_ != cudaSuccess)                                                              \
      ::tessera::cuda::detail::throw_cuda_error(ts_err_, #expr, __FILE__, __LINE__);         \
  } while (0)

// After a <<<...>>> launch: configuration errors (too many threads, too much shared memory, no kernel
// image for this GPU) are reported here, with the launching line.
#define TS_CUDA_CHECK_LAUNCH() TS_CUDA_CHECK(cudaGetLastError())
