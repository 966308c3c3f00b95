// The one dispatch point between the differentiable ops (engine/ops*.cpp) and the kernels.
//
// A Backend implements the same narrow op set for one device: the CPU reference (kernels/cpu/, every op,
// fp32 and fp64, the oracle every other backend is tested against; bf16 computed in fp32) and CUDA (kernels/cuda/). Ops receive
// tensors that already live on the backend's device, with outputs allocated by the caller. The contract
// lives here, in the tensor core, because the core's own copies and fills run on it; the implementations
// live a layer up and register themselves (register_backend, below).
//
// Layout conventions (the op layer arranges them): "rows" ops take a contiguous [rows, C] view and work
// along the last dim; `binary` takes inputs already expanded (stride-0 views) to the output's shape.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace tessera {

// The elementwise ops, each listed once: the enums below and the CUDA kernels' compile-time dispatch are
// made from these lists; each op's formula is in kernels/elementwise_math.h, shared by the CPU and CUDA.
//   Gelu: exact, x·Φ(x) = 0.5·x·(1 + erf(x/√2)); Affine: alpha·x + beta; PowScalar: x^alpha;
//   Clamp: min(max(x, alpha), beta); GeluBackward: a = x, b = dy -> dy·GELU'(x);
//   Eq, Gt, Ge: 1 or 0 in the output dtype.
#define TESSERA_UNARY_OPS(X) \
  X(Neg) X(Exp) X(Log) X(Sqrt) X(Tanh) X(Erf) X(Abs) X(Gelu) X(Affine) X(PowScalar) X(Clamp)
#define TESSERA_BINARY_OPS(X) \
  X(Add) X(Sub) X(Mul) X(Div) X(Maximum) X(Minimum) X(Pow) X(GeluBackward) X(Eq) X(Gt) X(Ge)
#define TS_ENUMERATOR(name) name,
enum class UnaryOp { TESSERA_UNARY_OPS(TS_ENUMERATOR) };
enum class BinaryOp { TESSERA_BINARY_OPS(TS_ENUMERATOR) };
#undef TS_ENUMERATOR
// The dtype of the statistics a backend hands back for floating data (layer- and batch-norm mean, rstd,
// invstd; attention's lse; cross-entropy's dloss; reduction partials): f64 for f64 data, f32 for the
// others (16-bit data accumulates in f32, and statistics are stored exactly as computed).
TS_HD DType stat_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

enum class ReduceOp { Sum, Max };  // Max also writes the index of the first maximum when asked
enum class RandomKind { Uniform, Normal, TruncatedNormal, Bernoulli };

// C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b], row-major; op(X) = Xᵀ when trans_x.
// A is [M,K] (or [K,M] when trans_a), B is [K,N] (or [N,K]), C is [M,N]; each matrix is contiguous and
// matrix b of X starts at X.data + b·stride_x (stride 0 broadcasts one matrix over the batch).
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t batch = 1, M = 0, N = 0, K = 0;
  double alpha = 1.0, beta = 0.0;
  Tensor A, B, C;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};


struct Conv2dArgs {
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, groups = 1;
};

// ---------------------------------------------------------------- the contract
// Every op's parameter list is written once, as TS_PARAMS_<op>, beside what it computes. Two lists name the
// ops: the primitives, which every backend implements (pure virtual, so an incomplete backend does not
// compile; a backend declares them all with one line, TESSERA_PRIMITIVES(TS_OVERRIDE)), and the fused ops,
// whose base-class body composes primitives (engine/core/fused.cpp: always correct, a few passes over memory),
// so a backend overrides only what it fuses, with TS_OVERRIDE(op) for each.

// ---- memory and randomness
// Same device; any dtypes and strides; out's shape equals src's.
#define TS_PARAMS_fill (Tensor& out, double value)
#define TS_PARAMS_copy (const Tensor& src, Tensor& out)
// Counter-based (Philox4x32-10): element i of `out` depends only on (seed, offset, i), so CPU and CUDA
// draw identical streams. Uniform in [a, b); Normal(mean a, std b); TruncatedNormal(0,1) cut to [a, b];
// Bernoulli: 1 with probability a.
#define TS_PARAMS_random (RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset)

// ---- elementwise, reductions, GEMM
#define TS_PARAMS_unary (UnaryOp op, const Tensor& x, Tensor& out, double alpha = 0, double beta = 0)
#define TS_PARAMS_binary (BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out)
// x contiguous [outer, R] -> out [outer]; indices (i64 [outer]) for Max when defined.
#define TS_PARAMS_reduce (ReduceOp op, const Tensor& x, Tensor& out, Tensor* indices)
#define TS_PARAMS_gemm (const GemmArgs& args)

// ---- rows ops: x, y contiguous [rows, C]
#define TS_PARAMS_softmax (const Tensor& x, Tensor& y, bool log)
#define TS_PARAMS_softmax_backward (const Tensor& y, const Tensor& dy, Tensor& dx, bool log)
// mean, rstd: f32/f64 [rows]; weight/bias [C] may be undefined (no affine).
#define TS_PARAMS_layer_norm \
  (const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y, Tensor& mean, Tensor& rstd)
// dx, dweight, dbias: any may be undefined (not needed). dweight/dbias are overwritten, not added to.
#define TS_PARAMS_layer_norm_backward                                                                  \
  (const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, \
   Tensor& dx, Tensor& dweight, Tensor& dbias)

// ---- convolution and batch norm
// x [N,Cin,H,W], weight [Cout,Cin/groups,kh,kw], bias [Cout] or undefined, y [N,Cout,Ho,Wo]; contiguous.
#define TS_PARAMS_conv2d (const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a, Tensor& y)
#define TS_PARAMS_conv2d_backward                                                                   \
  (const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a, Tensor& dx, Tensor& dweight, \
   Tensor& dbias)
// x [N,C,H,W] contiguous. Training: normalises with batch statistics and writes them to mean/invstd [C]
// (the op layer updates the running statistics). Eval (training=false): mean/invstd are inputs computed
// from the running statistics.
#define TS_PARAMS_batch_norm                                                                          \
  (const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean, Tensor& invstd, double eps, \
   bool training, Tensor& y)
#define TS_PARAMS_batch_norm_backward                                                                   \
  (const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& invstd, \
   bool training, Tensor& dx, Tensor& dweight, Tensor& dbias)

// ---- attention: q [B,H,Tq,D], k/v [B,H,Tk,D], out [B,H,Tq,D], lse [B,H,Tq] (f32/f64: log-sum-exp of the
// scaled scores)
#define TS_PARAMS_attention \
  (const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out, Tensor& lse)
#define TS_PARAMS_attention_backward                                                                   \
  (const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, \
   double scale, Tensor& dq, Tensor& dk, Tensor& dv)

// ---- loss: logits [N,C], target i64 [N], weight [C] or undefined. loss: one element, mean over the
// non-ignored targets weighted as torch.nn.functional.cross_entropy does. dlogits = d(loss)/d(logits) ·
// dloss, where dloss is a one-element tensor on the backend's device (f32, or f64 for f64 logits), read
// there: the backward never copies it to the host.
#define TS_PARAMS_cross_entropy                                                                  \
  (const Tensor& logits, const Tensor& target, const Tensor& weight, double label_smoothing, \
   int64_t ignore_index, Tensor& loss)
#define TS_PARAMS_cross_entropy_backward                                                         \
  (const Tensor& logits, const Tensor& target, const Tensor& weight, double label_smoothing, \
   int64_t ignore_index, const Tensor& dloss, Tensor& dlogits)

// ---- indexing: src [outer, n, inner], index i64 [m] -> out [outer, m, inner]; index_add adds src
// [outer, m, inner] into out [outer, n, inner] at the indexed rows (repeated indices accumulate).
#define TS_PARAMS_index_select (const Tensor& src, const Tensor& index, Tensor& out)
#define TS_PARAMS_index_add (const Tensor& src, const Tensor& index, Tensor& out)

// ---- the optimizer: one AdamW step of a list of parameters, exactly torch.optim.AdamW's for each:
// param ← param·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
// param ← param − (lr / bc1) · m / (√v / √bc2 + eps), bc_i = 1 − β_i^step. The step scalars are shared
// (the caller makes one call per step count); the weight decay is per parameter. param/grad/exp_avg/
// exp_avg_sq: contiguous, same shape; param and the moments f32 (or f64), grad f32/f64/bf16. Every entry
// is validated (check_adamw) before any is updated. A backend may update the whole list in a few launches
// (CUDA: a multi-tensor kernel, kernels/cuda/optim.cu).
#define TS_PARAMS_adamw (const std::vector<AdamWParam>& params, const AdamWStep& s)

#define TESSERA_PRIMITIVES(X)                                                                              \
  X(fill) X(copy) X(random) X(unary) X(binary) X(reduce) X(gemm) X(softmax) X(softmax_backward)            \
  X(layer_norm) X(layer_norm_backward) X(conv2d) X(conv2d_backward) X(batch_norm) X(batch_norm_backward) \
  X(attention) X(attention_backward) X(cross_entropy) X(cross_entropy_backward) X(index_select)           \
  X(index_add) X(adamw)

// ---------------------------------------------------------------- fused ops (composite fallbacks)
// GELU fused with the bias add before it (the MLP's first linear layer): y = GELU(x + bias), x and y
// contiguous [rows, C], bias [C]. Backward: dx = dy·GELU'(x + bias), dbias = Σ_rows dx; either may be
// undefined (not needed), both are overwritten. Composite: binary, unary and reduce.
#define TS_PARAMS_bias_gelu (const Tensor& x, const Tensor& bias, Tensor& y)
#define TS_PARAMS_bias_gelu_backward \
  (const Tensor& dy, const Tensor& x, const Tensor& bias, Tensor& dx, Tensor& dbias)
// A linear layer with its bias: y = x·Wᵀ + bias, x contiguous [M, K] (K ≥ 1), weight contiguous [N, K], bias
// [N], y contiguous [M, N]; 16-bit data as gemm's (fp32 sums), the bias added before the one rounding. With a
// residual (contiguous [M, N]; undefined: none) y = that result + residual, rounded again: the residual
// stream's add after an attention output or an MLP. The backward is the op layer's (two GEMMs and
// column_sums; the residual's gradient is y's). Composite: gemm, then binary's bias add and residual add,
// more passes over y; a fused kernel adds the bias in the GEMM and the residual to each block as it finishes.
#define TS_PARAMS_linear \
  (const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual, Tensor& y)
// A linear layer feeding GELU (the MLP's first layer): h = x·Wᵀ without the bias, rounded once to the data's
// type, and y = GELU(h + bias), the sum rounded first: gemm's and bias_gelu's arithmetic. h may be undefined
// (inference keeps nothing for a backward). x contiguous [M, K] (K ≥ 1), weight [N, K], bias [N], h and y
// contiguous [M, N]. The backward is the op layer's (bias_gelu_backward on h, then two GEMMs). Composite:
// gemm into h (or a temporary), then bias_gelu, a second pass over the product; a fused kernel applies the
// bias and GELU to each block of the product while the block is in cache.
#define TS_PARAMS_linear_gelu (const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& h, Tensor& y)
// Multi-head attention on token-major tensors: q [B, Tq, C], k and v [B, Tk, C], out and dout [B, Tq, C], all
// contiguous, C = heads·D with head h on channels [h·D, (h + 1)·D); lse [B, heads, Tq] and everything else
// as attention(_backward). A kernel reads and writes the heads in place, where attention needs them split
// into [B, heads, T, D] and merged back (a copy each way of q, k, v, out and of their gradients).
// Composite: those copies around attention(_backward).
#define TS_PARAMS_attention_tokens \
  (const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale, Tensor& out, Tensor& lse)
#define TS_PARAMS_attention_tokens_backward                                                               \
  (const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, \
   int64_t heads, double scale, Tensor& dq, Tensor& dk, Tensor& dv)
// Drop path with its residual add, forward and (residual undefined) backward: out[b, i] = x[b, i]·s_b
// (+ residual[b, i]), s_b = scale where keep_mask[b] ≠ 0, else 0. x, residual, out: contiguous [B, ...] of
// one dtype; keep_mask [B] in x's dtype. 16-bit data computes in fp32 with scale rounded to fp32 (not to
// the storage type) and one rounding of the result. Composite: unary, binary and binary.
#define TS_PARAMS_drop_path \
  (const Tensor& x, const Tensor& keep_mask, double scale, const Tensor& residual, Tensor& out)
// Convolutional token embedding (CvT's embeddings, ViT's patchify + a norm): conv2d with bias, LayerNorm
// over the output channels, written as tokens: tokens [N, Ho·Wo, C], token t = h·Wo + w. pre_norm
// [N, Ho·Wo, C] receives the convolution's output in token order (the backward's input), mean/rstd
// [N·Ho·Wo] the norm's statistics. Composite: conv2d, copy and layer_norm; a fused kernel makes one pass
// (no [N, C, Ho, Wo] intermediate in memory). Backward: dx, dweight, dbias, dln_weight, dln_bias: any may
// be undefined (not needed); all are overwritten.
#define TS_PARAMS_conv_embedding                                                                      \
  (const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a, const Tensor& ln_weight, \
   const Tensor& ln_bias, double eps, Tensor& tokens, Tensor& pre_norm, Tensor& mean, Tensor& rstd)
#define TS_PARAMS_conv_embedding_backward                                                              \
  (const Tensor& dtokens, const Tensor& x, const Tensor& weight, const Conv2dArgs& a, const Tensor& pre_norm, \
   const Tensor& ln_weight, const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,            \
   Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias)
// The same embedding of a channels-last x: contiguous [N, H, W, Cin] (the previous stage's tokens, which is
// how CvT's later embeddings see their input), dx likewise; weight, outputs and the rest as conv_embedding.
// Composite: a copy to [N, Cin, H, W], conv_embedding(_backward), dx copied back.
#define TS_PARAMS_conv_embedding_nhwc TS_PARAMS_conv_embedding
#define TS_PARAMS_conv_embedding_nhwc_backward TS_PARAMS_conv_embedding_backward
// Depthwise convolution (groups = Cin = Cout) and batch norm on channels-last memory: x, y, dy, dx
// contiguous [N, H, W, C]; weight [C, 1, kh, kw]; everything else as conv2d and batch_norm. CvT's q/k/v
// projections run on the token grid between layers that want tokens [N, H·W, C], which is this layout:
// these spare the two transposes around each. Composite: copies to [N, C, H, W], the primitive, copies back.
#define TS_PARAMS_depthwise_conv2d_nhwc \
  (const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a, Tensor& y)
#define TS_PARAMS_depthwise_conv2d_nhwc_backward                                                    \
  (const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a, Tensor& dx, Tensor& dweight, \
   Tensor& dbias)
#define TS_PARAMS_batch_norm_nhwc TS_PARAMS_batch_norm
#define TS_PARAMS_batch_norm_nhwc_backward TS_PARAMS_batch_norm_backward
// Gradient clipping's two passes over a list of tensors (floating, contiguous, on this device).
// sum_of_squares: out (f64, one element) = Σ over every element of every tensor of x², squares and sums in
// f64, in a fixed order (the same result on every run). scale: every tensor multiplied in place by factor
// (f64, one element on this device, read there: the host never waits); a factor of exactly 1 leaves the
// tensors untouched (x·1 = x). Composite: a few primitives per tensor; CUDA: multi-tensor kernels.
#define TS_PARAMS_sum_of_squares (const std::vector<Tensor>& xs, Tensor& out)
#define TS_PARAMS_scale (const std::vector<Tensor>& xs, const Tensor& factor)
// Column sums: out [C] = Σ_r x[r, c] over a contiguous x [R, C] (R may be 0), summed in f64 and rounded once
// into out's dtype, in an order fixed by the shape (the same result on every run). The bias gradient of a
// broadcast add: autograd's sum_to over leading dims. Composite: a transposing copy to [C, R] and the row
// reduction; a fused kernel reads x once in place.
#define TS_PARAMS_column_sums (const Tensor& x, Tensor& out)

#define TESSERA_FUSED_OPS(X)                                                                           \
  X(linear) X(linear_gelu) X(attention_tokens) X(attention_tokens_backward) X(bias_gelu) X(bias_gelu_backward) X(drop_path) X(conv_embedding) X(conv_embedding_backward) \
  X(conv_embedding_nhwc) X(conv_embedding_nhwc_backward) X(depthwise_conv2d_nhwc) X(depthwise_conv2d_nhwc_backward) X(batch_norm_nhwc) X(batch_norm_nhwc_backward) \
  X(sum_of_squares) X(scale) X(column_sums)

#define TS_PURE(op) virtual void op TS_PARAMS_##op = 0;
#define TS_COMPOSITE(op) virtual void op TS_PARAMS_##op;
#define TS_OVERRIDE(op) void op TS_PARAMS_##op override;

class Backend {
 public:
  struct AdamWStep { double lr, beta1, beta2, eps, bias_correction1, bias_correction2; };
  struct AdamWParam {
    Tensor param, grad, exp_avg, exp_avg_sq;  // handles: the update writes through param and the moments
    double weight_decay = 0;
  };

  virtual ~Backend() = default;
  virtual Device device() const = 0;
  TESSERA_PRIMITIVES(TS_PURE)
  TESSERA_FUSED_OPS(TS_COMPOSITE)

 protected:
  // adamw's contract (operands on this backend's device, shapes, dtypes, bias corrections in (0, 1]):
  // throws naming the parameter's position and the problem.
  void check_adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) const;
};

// The backend of a device. Implementations live a layer up (kernels/) and register themselves when their
// library loads, so the tensor core calls them without depending on them. The getter is called at each
// lookup: CUDA's throws, saying why, when no GPU can be used.
using BackendGetter = Backend& (*)();
void register_backend(Device device, BackendGetter getter);
Backend& backend(Device device);

}  // namespace tessera
