// Error checks for every CUDA runtime and cuBLAS call: a failure throws std::runtime_error naming the
// call, the file and line, and the library's own description of the error. Kernel launches are followed by
// TS_CUDA_CHECK_LAUNCH(), which reports bad launch configurations immediately (errors raised while the
// kernel runs surface at the next synchronising call, which is checked too).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace tessera::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cublas_status_name(s) + " (" + std::to_string(int(s)) + ")");
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

#define TS_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                       \
    cublasStatus_t ts_st_ = (expr);                                                          \
    if (ts_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::tessera::cuda::detail::throw_cublas_error(ts_st_, #expr, __FILE__, __LINE__);        \
  } while (0)
