// The CUDA backend: the Backend ops implemented on the GPU, one .cu file per op family
// (elementwise.cu: fill/copy/random/unary/binary; reduce.cu: reduce/softmax; gemm.cu; index.cu; optim.cu;
// layer_norm.cu; cross_entropy.cu; conv.cu; batch_norm.cu; conv_embedding.cu).
// Every kernel runs on tessera's one stream (engine/core/cuda.h current_stream()), so the caching allocator's
// reuse of freed blocks is ordered after every kernel that used them.
//
// Below the class: argument checks shared by the .cu files, and (nvcc only) kernels/cuda/device_math.cuh.
#pragma once
#include <string>

#include "engine/core/cuda.h"
#include "engine/core/backend.h"
#include "kernels/devices.h"

namespace tessera {

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  TESSERA_PRIMITIVES(TS_OVERRIDE)
  // The fused ops with a kernel of their own (the rest compose primitives, engine/core/fused.cpp).
  TS_OVERRIDE(bias_gelu) TS_OVERRIDE(bias_gelu_backward) TS_OVERRIDE(drop_path)
  TS_OVERRIDE(conv_embedding) TS_OVERRIDE(conv_embedding_backward)
  TS_OVERRIDE(sum_of_squares) TS_OVERRIDE(scale)
};

namespace cuda {

// Throws unless t is defined and lives on the GPU; names the op and the argument.
inline void check_on_cuda(const Tensor& t, const char* op, const char* arg) {
  if (!t.defined()) fail(std::string(op) + " (cuda): " + arg + " is undefined");
  if (t.device() != Device::CUDA)
    fail(std::string(op) + " (cuda): " + arg + " is " + t.str() + ", expected a CUDA tensor");
}
inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  if (a.dtype() != b.dtype())
    fail(std::string(op) + " (cuda): dtype mismatch, " + a.str() + " vs " + b.str());
}
inline void check_contiguous(const Tensor& t, const char* op, const char* arg) {
  if (!t.is_contiguous()) fail(std::string(op) + " (cuda): " + arg + " " + t.str() + " must be contiguous");
}

}  // namespace cuda
}  // namespace tessera

#if defined(__CUDACC__)
#include "kernels/cuda/device_math.cuh"  // the device math and launch helpers every .cu file uses
#endif  // __CUDACC__
