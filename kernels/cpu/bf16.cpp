// bf16 on the CPU. The contract's rule for 16-bit data is fp32 arithmetic with one rounding of each result
// to storage; CpuBf16 gives every op that rule around CpuBackend's fp32 kernels: bf16 operands are widened
// to fp32 on the way in (exact: every bf16 value is an fp32 value), the fp32 kernel runs, and each bf16
// output is rounded once on the way out. A fused op is widened whole, so its intermediates stay in fp32 as
// in a fused kernel. Ops that handle bf16 themselves go straight through: the GEMM (bf16 products with fp32
// sums: AVX512-BF16 dot products, or the fp32 kernel widening the operands as it packs them, by processor;
// gemm.cpp), attention (its products on that GEMM, scores in fp32, nn.cpp), the conv embedding's forward
// (one bf16 GEMM into the stored pre_norm), layer norm (fp64 statistics of bf16 loads), the channels-last
// depthwise convolution (fp32 rows), the elementwise ops and bias + GELU (fp32 arithmetic on bf16 loads,
// elementwise.cpp), copy, fill, index_select and AdamW's bf16 gradients. Widening costs a conversion pass per operand; where that shows in a profile, an op earns a
// native bf16 kernel and its line here becomes a plain forward.
#include <deque>

#include "kernels/cpu/cpu_backend.h"

namespace tessera {

namespace {

bool is_bf16(const Tensor& t) { return t.defined() && t.dtype() == DType::bf16; }

// The fp32 stand-ins of one call's bf16 tensors. Outputs are written back (rounded) by finish(); an output
// the op also reads (index_add accumulates, scale works in place) is widened with its values.
class Widened {
 public:
  explicit Widened(Backend& kernels) : kernels_(kernels) {}
  Tensor in(const Tensor& t) {
    if (!is_bf16(t)) return t;
    Tensor wide = Tensor::empty(t.shape(), DType::f32, Device::CPU);
    kernels_.copy(t, wide);
    return wide;
  }
  Tensor& out(Tensor& t, bool reads = false) {
    if (!is_bf16(t)) return t;
    outputs_.push_back({reads ? in(t) : Tensor::empty(t.shape(), DType::f32, Device::CPU), &t});
    return outputs_.back().wide;
  }
  std::vector<Tensor> in(const std::vector<Tensor>& ts) {
    std::vector<Tensor> wide;
    for (const Tensor& t : ts) wide.push_back(in(t));
    return wide;
  }
  void finish() {
    for (Output& o : outputs_) kernels_.copy(o.wide, *o.original);
  }

 private:
  struct Output {
    Tensor wide;
    Tensor* original;
  };
  Backend& kernels_;
  std::deque<Output> outputs_;  // stable references for out()
};

class CpuBf16 final : public Backend {
 public:
  Device device() const override { return Device::CPU; }

  // Native for every dtype.
  void fill TS_PARAMS_fill override { k_.fill(out, value); }
  void copy TS_PARAMS_copy override { k_.copy(src, out); }
  void gemm TS_PARAMS_gemm override { k_.gemm(args); }
  void index_select TS_PARAMS_index_select override { k_.index_select(src, index, out); }
  void adamw TS_PARAMS_adamw override { k_.adamw(params, s); }  // fp32 masters, bf16 gradients read directly
  void unary TS_PARAMS_unary override { k_.unary(op, x, out, alpha, beta); }
  void binary TS_PARAMS_binary override { k_.binary(op, a, b, out); }
  void linear TS_PARAMS_linear override { k_.linear(x, weight, bias, residual, y); }
  void linear_gelu TS_PARAMS_linear_gelu override { k_.linear_gelu(x, weight, bias, h, y); }
  void attention_tokens TS_PARAMS_attention_tokens override { k_.attention_tokens(q, k, v, heads, scale, out, lse); }
  void attention_tokens_backward TS_PARAMS_attention_tokens_backward override {
    k_.attention_tokens_backward(dout, q, k, v, out, lse, heads, scale, dq, dk, dv);
  }
  void bias_gelu TS_PARAMS_bias_gelu override { k_.bias_gelu(x, bias, y); }
  void bias_gelu_backward TS_PARAMS_bias_gelu_backward override { k_.bias_gelu_backward(dy, x, bias, dx, dbias); }
  void attention TS_PARAMS_attention override { k_.attention(q, k, v, scale, out, lse); }
  void layer_norm TS_PARAMS_layer_norm override { k_.layer_norm(x, weight, bias, eps, y, mean, rstd); }
  void layer_norm_backward TS_PARAMS_layer_norm_backward override {
    k_.layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias);
  }
  void conv_embedding TS_PARAMS_conv_embedding override {
    k_.conv_embedding(x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
  }
  void conv_embedding_nhwc TS_PARAMS_conv_embedding_nhwc override {
    k_.conv_embedding_nhwc(x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
  }
  void depthwise_conv2d_nhwc TS_PARAMS_depthwise_conv2d_nhwc override { k_.depthwise_conv2d_nhwc(x, weight, bias, a, y); }
  void depthwise_conv2d_nhwc_backward TS_PARAMS_depthwise_conv2d_nhwc_backward override {
    k_.depthwise_conv2d_nhwc_backward(dy, x, weight, a, dx, dweight, dbias);
  }
  void attention_backward TS_PARAMS_attention_backward override {
    k_.attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv);
  }

  // Widened.
#define TS_WIDENED(call) \
  Widened w(k_);         \
  call;                  \
  w.finish();
  void random TS_PARAMS_random override { TS_WIDENED(k_.random(kind, w.out(out), a, b, seed, offset)) }
  void reduce TS_PARAMS_reduce override { TS_WIDENED(k_.reduce(op, w.in(x), w.out(out), indices)) }
  void softmax TS_PARAMS_softmax override { TS_WIDENED(k_.softmax(w.in(x), w.out(y), log)) }
  void softmax_backward TS_PARAMS_softmax_backward override {
    TS_WIDENED(k_.softmax_backward(w.in(y), w.in(dy), w.out(dx), log))
  }
  void conv2d TS_PARAMS_conv2d override { TS_WIDENED(k_.conv2d(w.in(x), w.in(weight), w.in(bias), a, w.out(y))) }
  void conv2d_backward TS_PARAMS_conv2d_backward override {
    TS_WIDENED(k_.conv2d_backward(w.in(dy), w.in(x), w.in(weight), a, w.out(dx), w.out(dweight), w.out(dbias)))
  }
  void batch_norm TS_PARAMS_batch_norm override {
    TS_WIDENED(k_.batch_norm(w.in(x), w.in(weight), w.in(bias), mean, invstd, eps, training, w.out(y)))
  }
  void batch_norm_backward TS_PARAMS_batch_norm_backward override {
    TS_WIDENED(k_.batch_norm_backward(w.in(dy), w.in(x), w.in(weight), mean, invstd, training, w.out(dx),
                                      w.out(dweight), w.out(dbias)))
  }
  void cross_entropy TS_PARAMS_cross_entropy override {
    TS_WIDENED(k_.cross_entropy(w.in(logits), target, w.in(weight), label_smoothing, ignore_index, w.out(loss)))
  }
  void cross_entropy_backward TS_PARAMS_cross_entropy_backward override {
    TS_WIDENED(k_.cross_entropy_backward(w.in(logits), target, w.in(weight), label_smoothing, ignore_index,
                                         w.in(dloss), w.out(dlogits)))
  }
  void index_add TS_PARAMS_index_add override { TS_WIDENED(k_.index_add(w.in(src), index, w.out(out, true))) }

  void drop_path TS_PARAMS_drop_path override {
    TS_WIDENED(k_.drop_path(w.in(x), w.in(keep_mask), scale, w.in(residual), w.out(out)))
  }
  void conv_embedding_backward TS_PARAMS_conv_embedding_backward override {
    TS_WIDENED(k_.conv_embedding_backward(w.in(dtokens), w.in(x), w.in(weight), a, w.in(pre_norm), w.in(ln_weight),
                                          mean, rstd, w.out(dx), w.out(dweight), w.out(dbias), w.out(dln_weight),
                                          w.out(dln_bias)))
  }
  void conv_embedding_nhwc_backward TS_PARAMS_conv_embedding_nhwc_backward override {
    TS_WIDENED(k_.conv_embedding_nhwc_backward(w.in(dtokens), w.in(x), w.in(weight), a, w.in(pre_norm),
                                               w.in(ln_weight), mean, rstd, w.out(dx), w.out(dweight), w.out(dbias),
                                               w.out(dln_weight), w.out(dln_bias)))
  }
  void batch_norm_nhwc TS_PARAMS_batch_norm_nhwc override {
    TS_WIDENED(k_.batch_norm_nhwc(w.in(x), w.in(weight), w.in(bias), mean, invstd, eps, training, w.out(y)))
  }
  void batch_norm_nhwc_backward TS_PARAMS_batch_norm_nhwc_backward override {
    TS_WIDENED(k_.batch_norm_nhwc_backward(w.in(dy), w.in(x), w.in(weight), mean, invstd, training, w.out(dx),
                                           w.out(dweight), w.out(dbias)))
  }
  void sum_of_squares TS_PARAMS_sum_of_squares override { k_.sum_of_squares(Widened(k_).in(xs), out); }
  void column_sums TS_PARAMS_column_sums override { TS_WIDENED(k_.column_sums(w.in(x), w.out(out))) }
  void scale TS_PARAMS_scale override {  // in place: each bf16 tensor widened with its values, rounded back
    std::vector<Tensor> handles(xs.begin(), xs.end()), wide;  // lvalues for out(), sharing xs' storage
    Widened w(k_);
    for (Tensor& h : handles) wide.push_back(w.out(h, /*reads=*/true));
    k_.scale(wide, factor);
    w.finish();
  }
#undef TS_WIDENED

 private:
  CpuBackend k_;
};

// A fused op left out above would run the base class's composite on bf16 intermediates, each rounded.
#define TS_FORWARDED_HERE(op)                                                                  \
  static_assert(std::is_same_v<decltype(&CpuBf16::op), void(CpuBf16::*) TS_PARAMS_##op>, \
                "CpuBf16 must forward " #op);
TESSERA_FUSED_OPS(TS_FORWARDED_HERE)
#undef TS_FORWARDED_HERE

}  // namespace

Backend& cpu_backend() {
  static CpuBf16 instance;
  return instance;
}

}  // namespace tessera
