// cuDNN as a baseline in the benchmarks (the engine itself never uses cuDNN): error checks naming the call,
// and one handle bound to tessera's stream so its work is ordered with ours and timed by the same events.
#pragma once
#include <cudnn.h>

#include <stdexcept>
#include <string>

#include "engine/cuda.h"

#define TS_CUDNN_CHECK(expr)                                                                 \
  do {                                                                                       \
    cudnnStatus_t st_ = (expr);                                                              \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                         \
      throw std::runtime_error(std::string(#expr) + " failed: " + cudnnGetErrorString(st_)); \
  } while (0)

namespace tessera::bench {

inline cudnnHandle_t cudnn() {
  static const cudnnHandle_t h = [] {
    cudnnHandle_t created = nullptr;
    TS_CUDNN_CHECK(cudnnCreate(&created));
    TS_CUDNN_CHECK(cudnnSetStream(created, static_cast<cudaStream_t>(cuda::current_stream())));
    return created;
  }();
  return h;
}

}  // namespace tessera::bench
