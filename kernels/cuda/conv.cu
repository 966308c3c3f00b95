// 2-D convolution on the GPU, forward and backward (kernels/cpu/nn.cpp is the reference). f32, f64, bf16,
// f16; 16-bit data accumulates in fp32 (cuBLAS's CUBLAS_COMPUTE_32F, acc_t in the kernels).
//
// Dense and grouped convolutions with Cin/groups > 1 (CvT's 7×7/4 and 3×3/2 embeddings, ViT's 16×16/16
// patchify): implicit GEMM through an explicit im2col buffer and the backend's own gemm (cuBLAS, dtype and
// tf32 policy handled there). The column buffer is Tensor::empty on the GPU (the caching allocator) and
// covers a chunk of samples at most conv::kIm2colBudget (256 MiB) large, so memory stays bounded at any
// batch while each GEMM stays big (at the model shapes a chunk holds the whole batch of 64 in bf16).
//   forward:  col [nb][rows][P] (sample-major), y[n, group] = W[group] · col[n, group]: one strided-batched
//             GEMM over the chunk's samples per group (W broadcast with stride 0). Bias: one elementwise pass.
//   backward: dy's chunk is first permuted to dyT [Cout][nb·P] and col is built sample-INNER, [rows][nb·P],
//             so the batch becomes part of the GEMM's inner dimension: dW[group] = dyT[group] · col[group]ᵀ
//             is ONE GEMM of inner size nb·P per chunk (fp32 accumulation across all samples inside cuBLAS;
//             chunks accumulate with beta = 1), and dcol = W[group]ᵀ · dyT[group] is one GEMM too. The
//             permute costs 2·|dy| bytes, small next to the column buffer ((Cin·kh·kw)/Cout times larger).
//             dx = col2im(dcol) as a GATHER: each thread owns one dx element and sums the column entries
//             that read it (conv::contributors gives the exact output range per axis, so no tap is tested
//             and skipped). A scatter would need atomics: nondeterministic and, in bf16/f16, not available
//             for every type. dbias: one block per channel, fixed-order block sum.
// Cin/groups == 1 (depthwise, CvT's 3×3 q/k/v projections; also channel multipliers Cout = m·Cin): direct
// kernels, one thread per output element. A 3×3 tap window overlaps its neighbours' 9-fold, but those
// re-reads hit L1 (a 56² plane of f32 is 12.5 KB); DRAM traffic is already the minimum (x read once, y
// written once), and an inner size of kh·kw = 9 would make a GEMM pointless. A shared-memory tile would
// trade L1 hits for __syncthreads and halo logic without cutting DRAM bytes, so it is not done.
//   dx: gather again (thread per dx element over its channel's m output channels and contributing taps).
//   dW: grid (S slices, Cout): block (s, co) reduces its slice of the N·Ho·Wo pixels for every tap into a
//       [Cout·kh·kw, S] partial buffer; a second kernel sums each row's S partials in order. No atomics:
//       bit-identical run to run (S depends only on the shape and the SM count).
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/conv_math.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace cuda {
namespace {

using conv::Shape;
constexpr int kBlock = 256;

// Grid-stride loop over [0, n).
#define TS_GRID_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)


// col[n·sn + r·sr + p] for the chunk's nb samples (x points at the chunk's first sample). Sample-major
// (sn = rows·P, sr = P) for the forward, sample-inner (sn = P, sr = nb·P) for the backward. Consecutive
// threads write consecutive p: coalesced stores; the loads are strided by sw (the im2col read pattern).
template <typename T>
__global__ void __launch_bounds__(kBlock) im2col(const T* x, T* col, Shape s, int64_t nb, int64_t sn, int64_t sr) {
  const int64_t P = s.P(), rows = s.rows();
  TS_GRID_LOOP(idx, nb * rows * P) {
    const int64_t p = idx % P, r = (idx / P) % rows, n = idx / (P * rows);
    int64_t c, ih, iw;
    const bool in = conv::im2col_source(s, r, p, c, ih, iw);
    col[n * sn + r * sr + p] = in ? x[((n * s.Cin + c) * s.H + ih) * s.W + iw] : T{};
  }
}

// The adjoint, as a gather: dx[n, c, ih, iw] = Σ dcol[(c, i, j), (oh, ow)] over the outputs that read it.
template <typename T>
__global__ void __launch_bounds__(kBlock) col2im_gather(const T* dcol, T* dx, Shape s, int64_t nb, int64_t sn,
                                                        int64_t sr) {
  TS_GRID_LOOP(idx, nb * s.Cin * s.H * s.W) {
    const int64_t iw = idx % s.W, ih = (idx / s.W) % s.H, c = (idx / (s.W * s.H)) % s.Cin;
    const int64_t n = idx / (s.W * s.H * s.Cin);
    const conv::Range ro = conv::contributors(ih, s.kh, s.sh, s.ph, s.Ho);
    const conv::Range rw = conv::contributors(iw, s.kw, s.sw, s.pw, s.Wo);
    const T* cn = dcol + n * sn;
    acc_t<T> sum = 0;
    for (int64_t oh = ro.lo; oh < ro.hi; ++oh) {
      const int64_t i = ih + s.ph - oh * s.sh;
      for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
        const int64_t j = iw + s.pw - ow * s.sw;
        sum += load(cn[((c * s.kh + i) * s.kw + j) * sr + oh * s.Wo + ow]);
      }
    }
    dx[idx] = store<T>(sum);
  }
}

// out[(c·nb + j)·P + p] = in[(j·C + c)·P + p]: [nb, C, P] -> [C, nb, P], contiguous runs of P both sides.
template <typename T>
__global__ void __launch_bounds__(kBlock) permute_nc(const T* in, T* out, int64_t nb, int64_t C, int64_t P) {
  TS_GRID_LOOP(idx, nb * C * P) {
    const int64_t p = idx % P, c = (idx / P) % C, j = idx / (P * C);
    out[(c * nb + j) * P + p] = in[idx];
  }
}

// y[n, co, p] += b[co] (rounded after the GEMM's own store, as the CPU reference does).
template <typename T>
__global__ void __launch_bounds__(kBlock) add_bias(T* y, const T* b, int64_t total, int64_t C, int64_t P) {
  TS_GRID_LOOP(idx, total) y[idx] = store<T>(load(y[idx]) + load(b[(idx / P) % C]));
}

// out[c] = Σ_{n,p} g[n, c, p]: one block per channel, threads strided over each plane (coalesced).
template <typename T>
__global__ void __launch_bounds__(kBlock) channel_sum(const T* g, T* out, int64_t N, int64_t C, int64_t P) {
  const int64_t c = blockIdx.x;
  acc_t<T> s = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = threadIdx.x; p < P; p += kBlock) s += load(g[(n * C + c) * P + p]);
  s = block_sum<kBlock>(s);
  if (threadIdx.x == 0) out[c] = store<T>(s);
}

// ---------------------------------------------------------------- depthwise (Cin/groups == 1)
// Output channel co reads input channel co / mult (mult = Cout / Cin).
template <typename T>
__global__ void __launch_bounds__(kBlock) dw_forward(const T* x, const T* w, const T* b, T* y, Shape s) {
  const int64_t mult = s.Coutg(), P = s.P();
  TS_GRID_LOOP(idx, s.N * s.Cout * P) {
    const int64_t ow = idx % s.Wo, oh = (idx / s.Wo) % s.Ho, co = (idx / P) % s.Cout, n = idx / (P * s.Cout);
    const T* xc = x + (n * s.Cin + co / mult) * s.H * s.W;
    const T* wc = w + co * s.kh * s.kw;
    acc_t<T> acc = b ? load(b[co]) : acc_t<T>(0);
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t iw = ow * s.sw - s.pw + j;
        if (iw >= 0 && iw < s.W) acc += load(wc[i * s.kw + j]) * load(xc[ih * s.W + iw]);
      }
    }
    y[idx] = store<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock) dw_backward_dx(const T* dy, const T* w, T* dx, Shape s) {
  const int64_t mult = s.Coutg(), P = s.P();
  TS_GRID_LOOP(idx, s.N * s.Cin * s.H * s.W) {
    const int64_t iw = idx % s.W, ih = (idx / s.W) % s.H, ci = (idx / (s.W * s.H)) % s.Cin;
    const int64_t n = idx / (s.W * s.H * s.Cin);
    const conv::Range ro = conv::contributors(ih, s.kh, s.sh, s.ph, s.Ho);
    const conv::Range rw = conv::contributors(iw, s.kw, s.sw, s.pw, s.Wo);
    acc_t<T> acc = 0;
    for (int64_t co = ci * mult; co < (ci + 1) * mult; ++co) {
      const T* gc = dy + (n * s.Cout + co) * P;
      const T* wc = w + co * s.kh * s.kw;
      for (int64_t oh = ro.lo; oh < ro.hi; ++oh)
        for (int64_t ow = rw.lo; ow < rw.hi; ++ow)
          acc += load(wc[(ih + s.ph - oh * s.sh) * s.kw + (iw + s.pw - ow * s.sw)]) * load(gc[oh * s.Wo + ow]);
    }
    dx[idx] = store<T>(acc);
  }
}

// Block (slice, co): part[(co·kh·kw + t)·S + slice] = Σ over the slice's pixels of dy·x at tap t. The taps
// loop outside the pixels so each thread needs one accumulator; the slice's dy values are re-read per tap
// from L1/L2 (a slice is a few KB), DRAM sees them once.
template <typename T>
__global__ void __launch_bounds__(kBlock) dw_weight_partials(const T* dy, const T* x, acc_t<T>* part, Shape s,
                                                             int64_t S) {
  const int64_t co = blockIdx.y, ci = co / s.Coutg(), P = s.P(), KK = s.kh * s.kw;
  const conv::Range q = conv::slice(blockIdx.x, S, s.N * P);
  for (int64_t t = 0; t < KK; ++t) {
    const int64_t i = t / s.kw, j = t % s.kw;
    acc_t<T> acc = 0;
    for (int64_t e = q.lo + threadIdx.x; e < q.hi; e += kBlock) {
      const int64_t n = e / P, p = e % P;
      const int64_t ih = (p / s.Wo) * s.sh - s.ph + i, iw = (p % s.Wo) * s.sw - s.pw + j;
      if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
        acc += load(dy[(n * s.Cout + co) * P + p]) * load(x[((n * s.Cin + ci) * s.H + ih) * s.W + iw]);
    }
    acc = block_sum<kBlock>(acc);
    if (threadIdx.x == 0) part[(co * KK + t) * S + blockIdx.x] = acc;
  }
}

// out[r] = Σ_s part[r·S + s], in order.
template <typename T>
__global__ void __launch_bounds__(kBlock) sum_slices(const acc_t<T>* part, int64_t S, int64_t rows, T* out) {
  TS_GRID_LOOP(r, rows) {
    acc_t<T> s = 0;
    for (int64_t k = 0; k < S; ++k) s += part[r * S + k];
    out[r] = store<T>(s);
  }
}

// ---------------------------------------------------------------- host helpers
template <typename T> T* ptr(const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; }

// A flat view of t's storage from element `off` of t: how a GEMM operand starts at a group/sample.
Tensor at(const Tensor& t, int64_t off) {
  return Tensor::from_storage(t.storage(), {t.numel() - off}, t.dtype(), t.offset() + off);
}

void check_tensor(const char* op, const Tensor& t, const Tensor& x, const char* name) {
  check_on_cuda(t, op, name);
  check_same_dtype(x, t, op);
  check_contiguous(t, op, name);
}

// Validates the operands and returns the geometry; `out` is y (forward) or dy (backward).
Shape geometry(const char* op, const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dArgs& a) {
  check_tensor(op, x, x, "x");
  check_tensor(op, w, x, "weight");
  check_tensor(op, out, x, std::string(op) == "conv2d" ? "y" : "dy");
  if (x.dim() != 4 || w.dim() != 4 || out.dim() != 4)
    fail(std::string(op) + " (cuda): expected 4-d x, weight, output; got " + x.str() + ", " + w.str() + ", " + out.str());
  Shape s{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), 0, 0,
          a.stride_h, a.stride_w, a.pad_h, a.pad_w, a.groups};
  if (s.sh < 1 || s.sw < 1 || s.ph < 0 || s.pw < 0 || s.groups < 1 || s.Cin % s.groups || s.Cout % s.groups ||
      w.size(1) != s.Cin / s.groups || s.H + 2 * s.ph < s.kh || s.W + 2 * s.pw < s.kw)
    fail(std::string(op) + " (cuda): invalid geometry: x " + x.str() + ", weight " + w.str() + ", stride (" +
         std::to_string(s.sh) + ", " + std::to_string(s.sw) + "), padding (" + std::to_string(s.ph) + ", " +
         std::to_string(s.pw) + "), groups " + std::to_string(s.groups));
  s.Ho = conv::out_size(s.H, s.kh, s.sh, s.ph);
  s.Wo = conv::out_size(s.W, s.kw, s.sw, s.pw);
  if (out.shape() != tessera::Shape{s.N, s.Cout, s.Ho, s.Wo})
    fail(std::string(op) + " (cuda): output " + out.str() + " is not [" + std::to_string(s.N) + ", " +
         std::to_string(s.Cout) + ", " + std::to_string(s.Ho) + ", " + std::to_string(s.Wo) + "]");
  return s;
}

void check_param(const char* op, const Tensor& p, const Tensor& x, const char* name, const tessera::Shape& shape) {
  if (!p.defined()) return;
  check_tensor(op, p, x, name);
  if (p.numel() != shape_numel(shape))
    fail(std::string(op) + " (cuda): " + name + " " + p.str() + " has the wrong number of elements");
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a, Tensor& y) {
  const char* op = "conv2d";
  const conv::Shape s = geometry(op, x, weight, y, a);
  check_param(op, bias, x, "bias", {s.Cout});
  if (y.numel() == 0) return;
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const int64_t P = s.P();
    auto bias_pass = [&] {
      if (!bias.defined()) return;
      add_bias<T><<<grid_for(y.numel()), kBlock, 0, stream()>>>(ptr<T>(y), ptr<T>(bias), y.numel(), s.Cout, P);
      TS_CUDA_CHECK_LAUNCH();
    };
    if (x.numel() == 0) {  // Cin = 0 (or a padding-only input): y = 0 (+ bias)
      fill(y, 0.0);
      bias_pass();
      return;
    }
    if (s.Cg() == 1) {
      dw_forward<T><<<grid_for(y.numel()), kBlock, 0, stream()>>>(ptr<T>(x), ptr<T>(weight), ptr<T>(bias), ptr<T>(y), s);
      TS_CUDA_CHECK_LAUNCH();
      return;
    }
    const int64_t rows = s.rows(), K = s.K(), Coutg = s.Coutg();
    const int64_t nb = conv::chunk_samples(s.N, rows * P * int64_t(sizeof(T)), conv::kIm2colBudget);
    Tensor col = Tensor::empty({nb * rows * P}, x.dtype(), Device::CUDA);
    for (int64_t n0 = 0; n0 < s.N; n0 += nb) {
      const int64_t m = std::min(nb, s.N - n0);
      im2col<T><<<grid_for(m * rows * P), kBlock, 0, stream()>>>(ptr<T>(x) + n0 * s.Cin * s.H * s.W, ptr<T>(col), s,
                                                                 m, rows * P, P);
      TS_CUDA_CHECK_LAUNCH();
      for (int64_t g = 0; g < s.groups; ++g) {  // y[n, g] [Coutg, P] = W[g] [Coutg, K] · col[n, g] [K, P]
        GemmArgs ga;
        ga.batch = m; ga.M = Coutg; ga.N = P; ga.K = K;
        ga.A = at(weight, g * Coutg * K); ga.stride_a = 0;
        ga.B = at(col, g * K * P); ga.stride_b = rows * P;
        ga.C = at(y, n0 * s.Cout * P + g * Coutg * P); ga.stride_c = s.Cout * P;
        gemm(ga);
      }
    }
    bias_pass();
  });
}

void CudaBackend::conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a,
                                  Tensor& dx, Tensor& dweight, Tensor& dbias) {
  const char* op = "conv2d_backward";
  const conv::Shape s = geometry(op, x, weight, dy, a);
  check_param(op, dx, x, "dx", x.shape());
  check_param(op, dweight, x, "dweight", weight.shape());
  check_param(op, dbias, x, "dbias", {s.Cout});
  const int64_t P = s.P();
  if (s.N * P == 0) {  // no outputs: nothing flows back
    for (Tensor* t : {&dx, &dweight, &dbias})
      if (t->defined()) fill(*t, 0.0);
    return;
  }
  visit_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (dbias.defined() && s.Cout > 0) {
      channel_sum<T><<<unsigned(s.Cout), kBlock, 0, stream()>>>(ptr<T>(dy), ptr<T>(dbias), s.N, s.Cout, P);
      TS_CUDA_CHECK_LAUNCH();
    }
    if (x.numel() == 0 || weight.numel() == 0) {  // empty channels: zero gradients
      for (Tensor* t : {&dx, &dweight})
        if (t->defined()) fill(*t, 0.0);
      return;
    }
    if (s.Cg() == 1) {
      if (dx.defined()) {
        dw_backward_dx<T><<<grid_for(dx.numel()), kBlock, 0, stream()>>>(ptr<T>(dy), ptr<T>(weight), ptr<T>(dx), s);
        TS_CUDA_CHECK_LAUNCH();
      }
      if (dweight.defined()) {
        if (s.Cout > 65535) fail("conv2d_backward (cuda): depthwise dweight supports at most 65535 channels");
        const int64_t KK = s.kh * s.kw;
        const int64_t S = conv::slices_for(s.Cout, s.N * P, sm_count(), 2048);
        Tensor part = Tensor::empty({s.Cout * KK * S}, dtype_of<A>::value, Device::CUDA);
        dw_weight_partials<T><<<dim3(unsigned(S), unsigned(s.Cout)), kBlock, 0, stream()>>>(ptr<T>(dy), ptr<T>(x),
                                                                                          ptr<A>(part), s, S);
        TS_CUDA_CHECK_LAUNCH();
        sum_slices<T><<<grid_for(s.Cout * KK), kBlock, 0, stream()>>>(ptr<A>(part), S, s.Cout * KK, ptr<T>(dweight));
        TS_CUDA_CHECK_LAUNCH();
      }
      return;
    }
    if (!dx.defined() && !dweight.defined()) return;
    const int64_t rows = s.rows(), K = s.K(), Coutg = s.Coutg();
    const int64_t nb = conv::chunk_samples(s.N, (rows + s.Cout) * P * int64_t(sizeof(T)), conv::kIm2colBudget);
    Tensor col = Tensor::empty({nb * rows * P}, x.dtype(), Device::CUDA);  // col, then reused as dcol
    Tensor dyt = Tensor::empty({s.Cout * nb * P}, x.dtype(), Device::CUDA);
    for (int64_t n0 = 0; n0 < s.N; n0 += nb) {
      const int64_t m = std::min(nb, s.N - n0), L = m * P;  // L: the chunk's GEMM inner / column length
      permute_nc<T><<<grid_for(s.Cout * L), kBlock, 0, stream()>>>(ptr<T>(dy) + n0 * s.Cout * P, ptr<T>(dyt), m,
                                                                   s.Cout, P);
      TS_CUDA_CHECK_LAUNCH();
      if (dweight.defined()) {  // dW[g] [Coutg, K] (+)= dyT[g] [Coutg, L] · col[g]ᵀ [L, K], all groups batched
        im2col<T><<<grid_for(m * rows * P), kBlock, 0, stream()>>>(ptr<T>(x) + n0 * s.Cin * s.H * s.W, ptr<T>(col),
                                                                   s, m, P, L);
        TS_CUDA_CHECK_LAUNCH();
        GemmArgs ga;
        ga.trans_b = true;
        ga.batch = s.groups; ga.M = Coutg; ga.N = K; ga.K = L;
        ga.beta = n0 == 0 ? 0.0 : 1.0;
        ga.A = dyt; ga.stride_a = Coutg * L;
        ga.B = col; ga.stride_b = K * L;
        ga.C = dweight; ga.stride_c = Coutg * K;
        gemm(ga);
      }
      if (dx.defined()) {  // dcol[g] [K, L] = W[g]ᵀ [K, Coutg] · dyT[g] [Coutg, L]; then the gather
        GemmArgs ga;
        ga.trans_a = true;
        ga.batch = s.groups; ga.M = K; ga.N = L; ga.K = Coutg;
        ga.A = weight; ga.stride_a = Coutg * K;
        ga.B = dyt; ga.stride_b = Coutg * L;
        ga.C = col; ga.stride_c = K * L;
        gemm(ga);
        col2im_gather<T><<<grid_for(m * s.Cin * s.H * s.W), kBlock, 0, stream()>>>(
            ptr<T>(col), ptr<T>(dx) + n0 * s.Cin * s.H * s.W, s, m, P, L);
        TS_CUDA_CHECK_LAUNCH();
      }
    }
  });
}

}  // namespace tessera
