// cuDNN as a baseline in the benchmarks (the engine itself never uses cuDNN): error checks naming the call,
// and one handle bound to tessera's stream so its work is ordered with ours and timed by the same events.
#pragma once
#include <cudnn.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/core/cuda.h"
#include "engine/core/tensor.h"

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

// One convolution run by cuDNN as a baseline: x NCHW, y NCHW or NHWC (= tokens [N, Ho·Wo, C]), bias added
// after the convolution as cuDNN's users do. The constructor picks the fastest algorithm of each direction
// (cudnnFind* runs them all once) and takes one workspace, the largest of the three, from tessera's
// caching allocator.
class CudnnConv {
 public:
  struct Shape {
    int64_t N, Cin, H, W, Cout, k, stride, pad, groups;
    DType dtype;
    bool nhwc_output = false;
  };
  explicit CudnnConv(const Shape& s) {
    const cudnnDataType_t t = s.dtype == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    const int Ho = int((s.H + 2 * s.pad - s.k) / s.stride + 1), Wo = int((s.W + 2 * s.pad - s.k) / s.stride + 1);
    const cudnnTensorFormat_t yf = s.nhwc_output ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    TS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd_));
    TS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd_));
    TS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd_));
    TS_CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd_));
    TS_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd_));
    TS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd_, CUDNN_TENSOR_NCHW, t, int(s.N), int(s.Cin), int(s.H), int(s.W)));
    TS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd_, yf, t, int(s.N), int(s.Cout), Ho, Wo));
    TS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bd_, yf, t, 1, int(s.Cout), 1, 1));
    TS_CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd_, t, CUDNN_TENSOR_NCHW, int(s.Cout), int(s.Cin / s.groups), int(s.k),
                                              int(s.k)));
    TS_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd_, int(s.pad), int(s.pad), int(s.stride), int(s.stride), 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    TS_CUDNN_CHECK(cudnnSetConvolutionGroupCount(cd_, int(s.groups)));
    TS_CUDNN_CHECK(cudnnSetConvolutionMathType(cd_, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION));
    int n = 0;
    cudnnConvolutionFwdAlgoPerf_t f;
    TS_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(cudnn(), xd_, wd_, cd_, yd_, 1, &n, &f));
    cudnnConvolutionBwdDataAlgoPerf_t d;
    TS_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(cudnn(), wd_, yd_, cd_, xd_, 1, &n, &d));
    cudnnConvolutionBwdFilterAlgoPerf_t w;
    TS_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(cudnn(), xd_, yd_, cd_, wd_, 1, &n, &w));
    fwd_ = f.algo, bwd_data_ = d.algo, bwd_filter_ = w.algo;
    ws_ = Tensor::empty({int64_t(std::max({f.memory, d.memory, w.memory, size_t(1)}))}, DType::u8, Device::CUDA);
  }
  ~CudnnConv() {
    cudnnDestroyTensorDescriptor(xd_);
    cudnnDestroyTensorDescriptor(yd_);
    cudnnDestroyTensorDescriptor(bd_);
    cudnnDestroyFilterDescriptor(wd_);
    cudnnDestroyConvolutionDescriptor(cd_);
  }
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // y = conv(x, w) + b
  void forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
    const float one = 1, zero = 0;
    TS_CUDNN_CHECK(cudnnConvolutionForward(cudnn(), &one, xd_, x.raw_data(), wd_, w.raw_data(), cd_, fwd_,
                                           ws_.raw_data(), size_t(ws_.numel()), &zero, yd_, y.raw_data()));
    TS_CUDNN_CHECK(cudnnAddTensor(cudnn(), &one, bd_, b.raw_data(), &one, yd_, y.raw_data()));
  }
  // dx, dw, db from dy (all written, not accumulated)
  void backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw, Tensor& db) {
    const float one = 1, zero = 0;
    TS_CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn(), &one, wd_, w.raw_data(), yd_, dy.raw_data(), cd_,
                                                bwd_data_, ws_.raw_data(), size_t(ws_.numel()), &zero, xd_,
                                                dx.raw_data()));
    TS_CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn(), &one, xd_, x.raw_data(), yd_, dy.raw_data(), cd_,
                                                  bwd_filter_, ws_.raw_data(), size_t(ws_.numel()), &zero, wd_,
                                                  dw.raw_data()));
    TS_CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn(), &one, yd_, dy.raw_data(), &zero, bd_, db.raw_data()));
  }

 private:
  cudnnTensorDescriptor_t xd_{}, yd_{}, bd_{};
  cudnnFilterDescriptor_t wd_{};
  cudnnConvolutionDescriptor_t cd_{};
  cudnnConvolutionFwdAlgo_t fwd_{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_{};
  Tensor ws_;
};

}  // namespace tessera::bench
