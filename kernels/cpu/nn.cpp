// CPU reference kernels for the neural-network ops: softmax, layer norm, conv2d, batch norm, attention,
// cross-entropy. fp32 and fp64; statistics and sums accumulate in double so the fp32 path is as accurate as
// its storage allows. The op layer (engine/ops_nn.cpp) validates shapes and hands over contiguous tensors.
//
// Parallelism: rows / channels / samples that own disjoint outputs run through parallel_for. Reductions
// that cross those units (layer-norm dweight, bias gradients, attention dK/dV, ...) are either partial sums
// over fixed blocks of rows added in order (sum_over_rows, kernels/cpu/strided.h) or done by the GEMM, so no
// two threads ever write one element and no result depends on the thread count.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"
#include "kernels/cpu/vector_math.h"
#include "engine/core/parallel.h"

namespace tessera {

namespace {

// A per-row / per-channel statistic (mean, rstd, invstd, lse) stored as f32 or f64: the op layer keeps
// them in f64 for f64 data and in f32 otherwise, independently of the data's own type.
struct Stat {
  void* p;
  bool f64;
  Stat(const Tensor& t, const char* op) : p(t.raw_data()), f64(t.dtype() == DType::f64) {
    TS_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64,
             std::string(op) + ": statistics must be f32 or f64, got " + t.str());
  }
  double get(int64_t i) const { return f64 ? static_cast<double*>(p)[i] : double(static_cast<float*>(p)[i]); }
  void set(int64_t i, double v) const {
    if (f64) static_cast<double*>(p)[i] = v;
    else static_cast<float*>(p)[i] = float(v);
  }
};

template <typename T> const T* data_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }
template <typename T> T* mut_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

// A contiguous window of `t`'s storage starting `offset` elements after t's first element. Used to hand
// one sample / one head-chunk to the GEMM without copying; never recorded by autograd.
Tensor window(const Tensor& t, int64_t offset, const Shape& shape) {
  return Tensor::from_storage(t.storage(), shape, t.dtype(), t.offset() + offset);
}

// Rows per parallel chunk so each chunk does at least ~16k element-operations (amortises the dispatch).
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

void run_gemm(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K, double alpha, double beta,
              const Tensor& A, int64_t sa, const Tensor& B, int64_t sb, const Tensor& C, int64_t sc) {
  GemmArgs g;
  g.trans_a = ta; g.trans_b = tb;
  g.batch = batch; g.M = M; g.N = N; g.K = K;
  g.alpha = alpha; g.beta = beta;
  g.A = A; g.B = B; g.C = C;
  g.stride_a = sa; g.stride_b = sb; g.stride_c = sc;
  if (A.dtype() == DType::bf16 && C.dtype() == DType::f32) return gemm_bf16_into_f32(g);  // bf16 attention's scores
  cpu_backend().gemm(g);
}

// `t` in dtype dt: itself, or a rounded copy (bf16 attention's probabilities and score gradients, rounded
// once for their products with bf16 operands, as a fused attention kernel rounds them).
Tensor stored_as(const Tensor& t, DType dt) {
  if (t.dtype() == dt) return t;
  Tensor r = Tensor::empty(t.shape(), dt);
  cpu_backend().copy(t, r);
  return r;
}

}  // namespace

// ================================================================ softmax
void CpuBackend::softmax(const Tensor& x, Tensor& y, bool log) {
  visit_float(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = x.dim() ? x.size(-1) : 1, rows = C ? x.numel() / C : 0;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * C;
        T* yr = py + r * C;
        // Subtracting the row max keeps exp() <= 1: no overflow for large logits.
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t c = 0; c < C; ++c) m = std::max(m, xr[c]);
        double s = 0;
        for (int64_t c = 0; c < C; ++c) {
          T e = std::exp(xr[c] - m);
          if (!log) yr[c] = e;
          s += double(e);
        }
        if (log) {
          // (x − m) − log s, not x − (m + log s): rounding m + log s to T would cost an ulp of |m|.
          const double ls = std::log(s);
          for (int64_t c = 0; c < C; ++c) yr[c] = T(double(xr[c] - m) - ls);
        } else {
          const T inv = T(1.0 / s);
          for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
        }
      }
    });
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  visit_float(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = y.dim() ? y.size(-1) : 1, rows = C ? y.numel() / C : 0;
    const T *py = y.data<T>(), *pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T *yr = py + r * C, *gr = pdy + r * C;
        T* dr = pdx + r * C;
        double s = 0;
        if (log) {  // y = log p: dx = dy − p·Σdy
          for (int64_t c = 0; c < C; ++c) s += double(gr[c]);
          for (int64_t c = 0; c < C; ++c) dr[c] = T(double(gr[c]) - std::exp(double(yr[c])) * s);
        } else {    // y = p: dx = p ⊙ (dy − Σ dy⊙p)
          for (int64_t c = 0; c < C; ++c) s += double(gr[c]) * double(yr[c]);
          for (int64_t c = 0; c < C; ++c) dr[c] = T(double(yr[c]) * (double(gr[c]) - s));
        }
      }
    });
  });
}

// ================================================================ layer norm
void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                            Tensor& mean, Tensor& rstd) {
  visit_float_or_bf16(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
    const T *px = x.data<T>(), *pw = data_or_null<T>(weight), *pb = data_or_null<T>(bias);
    T* py = y.data<T>();
    Stat sm(mean, "layer_norm"), sr(rstd, "layer_norm");
    parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * C;
        T* yr = py + r * C;
        // Two passes (mean, then squared deviations): no cancellation when |mean| >> std. The mean's sum in
        // double (a large |mean| would cost a float sum its digits); the deviations, their sum and the
        // result in the compute type F (fp32 for f32 and bf16 data, with the mean rounded to it as the saved
        // statistic is; f64 stays the reference), 16 lanes a vector.
        using F = Compute<T>;
        const F mu = F(cpu::lane_sum(C, [&](int64_t c) { return to_double(xr[c]); }) / double(C));
        const F var = cpu::lane_sum_in<F>(C, [&](int64_t c) {
          const F d = widen(xr[c]) - mu;
          return d * d;
        }) / F(C);  // biased, as torch.nn.LayerNorm
        const F rs = F(1.0 / std::sqrt(double(var) + eps));
        sm.set(r, double(mu));
        sr.set(r, double(rs));
        for (int64_t c = 0; c < C; ++c) {
          F v = (widen(xr[c]) - mu) * rs;
          if (pw) v *= widen(pw[c]);
          if (pb) v += widen(pb[c]);
          yr[c] = narrow<T>(v);
        }
      }
    });
  });
}

namespace {
// One row of layer norm's dx: with g = dy⊙w and x̂ = (x−μ)·rstd, dx = rstd·(g − mean(g) − x̂·mean(g⊙x̂)), in
// the compute type F (fp32 for f32 and bf16 data, whose statistics are f32 already; f64 stays f64, the
// reference): the two row sums in 16 running sums, γ_C in F, as the contract's tolerance allows. Without
// contracting a product into the next add (here only): g − mean(g) must cancel exactly where it should —
// a one-channel row's dx is exactly 0, and its rstd (up to 1/√eps) would magnify an FMA's unrounded g.
template <typename T, typename F = Compute<T>>
__attribute__((optimize("fp-contract=off"))) void layer_norm_dx_row(const T* xr, const T* gr, const T* pw, T* dr,
                                                                     int64_t C, F mu, F rs) {
  auto g_at = [&](int64_t c) { return widen(gr[c]) * (pw ? widen(pw[c]) : F(1)); };
  auto xhat_at = [&](int64_t c) { return (widen(xr[c]) - mu) * rs; };
  const F sg = cpu::lane_sum_in<F>(C, g_at) / F(C),
          sgx = cpu::lane_sum_in<F>(C, [&](int64_t c) { return g_at(c) * xhat_at(c); }) / F(C);
  for (int64_t c = 0; c < C; ++c) dr[c] = narrow<T>(rs * (g_at(c) - sg - xhat_at(c) * sgx));
}
}  // namespace

void CpuBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                     const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                     Tensor& dbias) {
  visit_float_or_bf16(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
    const T *px = x.data<T>(), *pg = dy.data<T>(), *pw = data_or_null<T>(weight);
    Stat sm(mean, "layer_norm_backward"), sr(rstd, "layer_norm_backward");
    if (dx.defined()) {
      T* pdx = dx.data<T>();
      parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          layer_norm_dx_row(px + r * C, pg + r * C, pw, pdx + r * C, C, Compute<T>(sm.get(r)), Compute<T>(sr.get(r)));
      });
    }
    if (dweight.defined() || dbias.defined()) {
      // Σ dy·x̂ and Σ dy over the rows, side by side.
      T *pdw = mut_or_null<T>(dweight), *pdb = mut_or_null<T>(dbias);
      const std::vector<double> sums = sum_over_rows(rows, 2 * C, [&](int64_t r, double* __restrict acc) {
        const double mu = sm.get(r), rs = sr.get(r);
        const T *xr = px + r * C, *gr = pg + r * C;
        for (int64_t c = 0; c < C; ++c) {
          acc[c] += to_double(gr[c]) * (to_double(xr[c]) - mu) * rs;
          acc[C + c] += to_double(gr[c]);
        }
      });
      for (int64_t c = 0; c < C; ++c) {
        if (pdw) pdw[c] = from_double<T>(sums[size_t(c)]);
        if (pdb) pdb[c] = from_double<T>(sums[size_t(C + c)]);
      }
    }
  });
}

// ================================================================ conv2d
namespace {

struct ConvGeom {
  int64_t N, Cin, H, W, Cout, kh, kw, Ho, Wo, groups, Cg, Coutg;
  int64_t sh, sw, ph, pw;
  int64_t K() const { return Cg * kh * kw; }  // GEMM inner size per group
  int64_t P() const { return Ho * Wo; }       // output pixels
  // 1×1, stride 1, no padding: the im2col matrix IS the input sample.
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

ConvGeom conv_geom(const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dArgs& a) {
  ConvGeom g;
  g.N = x.size(0); g.Cin = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.Cout = w.size(0); g.kh = w.size(2); g.kw = w.size(3);
  g.Ho = y.defined() ? y.size(2) : (g.H + 2 * a.pad_h - g.kh) / a.stride_h + 1;
  g.Wo = y.defined() ? y.size(3) : (g.W + 2 * a.pad_w - g.kw) / a.stride_w + 1;
  g.groups = a.groups; g.Cg = g.Cin / a.groups; g.Coutg = g.Cout / a.groups;
  g.sh = a.stride_h; g.sw = a.stride_w; g.ph = a.pad_h; g.pw = a.pad_w;
  return g;
}

// Output columns ow in [lo, hi) read input column ow·sw − pw + j of kernel tap j; the rest is padding.
struct TapRange { int64_t lo, hi; };
inline TapRange tap_range(const ConvGeom& g, int64_t j) {
  // need 0 <= ow·sw − pw + j <= W − 1
  const int64_t a = g.pw - j, b = g.W - 1 + g.pw - j;
  int64_t lo = a <= 0 ? 0 : (a + g.sw - 1) / g.sw;
  int64_t hi = b < 0 ? 0 : b / g.sw + 1;
  lo = std::min(lo, g.Wo);
  return {lo, std::max(lo, std::min(hi, g.Wo))};
}
std::vector<TapRange> tap_ranges(const ConvGeom& g) {
  std::vector<TapRange> t(size_t(g.kw));
  for (int64_t j = 0; j < g.kw; ++j) t[size_t(j)] = tap_range(g, j);
  return t;
}

// col [Cin·kh·kw, Ho·Wo] for one sample: row (c, i, j) holds x[c, oh·sh − ph + i, ow·sw − pw + j] (0 outside).
// Group g's block [K, P] starts at row g·K because rows are ordered by input channel.
template <typename T> void im2col(const ConvGeom& g, const T* x, T* col) {
  const int64_t P = g.P();
  const std::vector<TapRange> taps = tap_ranges(g);
  parallel_for(g.Cin, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          T* row = col + ((c * g.kh + i) * g.kw + j) * P;
          const T* xc = x + c * g.H * g.W;
          const TapRange t = taps[size_t(j)];
          const int64_t off = j - g.pw;
          for (int64_t oh = 0; oh < g.Ho; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + i;
            T* out = row + oh * g.Wo;
            if (ih < 0 || ih >= g.H) { std::fill(out, out + g.Wo, T(0)); continue; }
            const T* xr = xc + ih * g.W;
            std::fill(out, out + t.lo, T(0));
            for (int64_t ow = t.lo; ow < t.hi; ++ow) out[ow] = xr[ow * g.sw + off];
            std::fill(out + t.hi, out + g.Wo, T(0));
          }
        }
  });
}

// The adjoint of im2col: dx[c, ih, iw] += col[(c,i,j), (oh,ow)]. Channels own disjoint parts of dx, so they
// run in parallel. dx must be zeroed by the caller.
template <typename T> void col2im(const ConvGeom& g, const T* col, T* dx) {
  const int64_t P = g.P();
  const std::vector<TapRange> taps = tap_ranges(g);
  parallel_for(g.Cin, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const T* row = col + ((c * g.kh + i) * g.kw + j) * P;
          T* xc = dx + c * g.H * g.W;
          const TapRange t = taps[size_t(j)];
          const int64_t off = j - g.pw;
          for (int64_t oh = 0; oh < g.Ho; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + i;
            if (ih < 0 || ih >= g.H) continue;
            T* xr = xc + ih * g.W;
            const T* in = row + oh * g.Wo;
            for (int64_t ow = t.lo; ow < t.hi; ++ow) xr[ow * g.sw + off] += in[ow];
          }
        }
  });
}

// Depthwise (one input channel per group, Cout = groups·mult): a direct loop beats im2col + a GEMM with
// an inner size of only kh·kw. Output channel co reads input channel co / mult.
//
// The loops run on "phase planes" so that every inner loop is unit-stride and long, even for strided
// convolutions and the 4×4 planes of a small model's last stage. The zero-padded input plane [Hp, Wp]
// (Hp = H + 2·ph, Wp = W + 2·pw) is split by (row mod sh, column mod sw) into sh·sw phase planes of pitch
// Wr = ⌈Wp / sw⌉: padded pixel (r, c) sits in phase (r mod sh, c mod sw) at (r / sh, c / sw). Tap (i, j) of
// output (oh, ow) reads padded pixel (oh·sh + i, ow·sw + j), i.e. phase (i mod sh, j mod sw) at
// (oh + i / sh, ow + j / sw). With the output flattened to the same pitch Wr (its columns ow ≥ Wo are
// scratch), one tap over the whole plane is ONE loop of Ho·Wr elements at a fixed shift of its phase plane.
// The runs also form products the direct form skips: with padding zeros (every pass), into scratch output
// columns (forward) and with the zeros that fill the padded dy's scratch columns (backward). Adding a
// zero product leaves a finite sum as it is, so finite data gives the direct form's sums; only an inf/NaN
// weight or input could reach a few more entries, in a computation that is non-finite anyway.
struct DwPlanes {
  int64_t sh, sw, Wr, plane, phases, L;
  explicit DwPlanes(const ConvGeom& g)
      : sh(g.sh), sw(g.sw), Wr((g.W + 2 * g.pw + g.sw - 1) / g.sw), phases(g.sh * g.sw), L(g.Ho * Wr) {
    TS_CHECK(g.Ho == (g.H + 2 * g.ph - g.kh) / g.sh + 1 && g.Wo == (g.W + 2 * g.pw - g.kw) / g.sw + 1,
             "conv2d (depthwise): output " + std::to_string(g.Ho) + "x" + std::to_string(g.Wo) +
                 " does not match the input, kernel, stride and padding");
    const int64_t Hr = (g.H + 2 * g.ph + g.sh - 1) / g.sh;
    // Rows oh + i/sh ≤ Hr − 1 for oh < Ho; the last tap's run may reach (kw − 1)/sw columns past row Hr − 1.
    plane = Hr * Wr + (g.kw - 1) / g.sw;
  }
  // Offset of each tap's run in the phase buffer (phases planes of `plane` elements each), taps in (i, j) order.
  std::vector<int64_t> tap_offsets(const ConvGeom& g) const {
    std::vector<int64_t> off;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) off.push_back(((i % sh) * sw + j % sw) * plane + (i / sh) * Wr + j / sw);
    return off;
  }
};

// The input plane by runs: pixels (r, c0), (r, c0 + sw), ... (c < W) of one row sit at consecutive elements
// of one phase plane. Computed once per call; loading a plane then needs no index arithmetic.
struct PhaseRun { int64_t src, dst, n; };  // x offset r·W + c0, phase-buffer offset, pixel count
std::vector<PhaseRun> phase_runs(const ConvGeom& g, const DwPlanes& d) {
  std::vector<PhaseRun> runs;
  for (int64_t r = 0; r < g.H; ++r)
    for (int64_t c0 = 0; c0 < std::min(g.sw, g.W); ++c0) {
      const int64_t pr = r + g.ph, pc = c0 + g.pw;
      runs.push_back({r * g.W + c0, ((pr % g.sh) * g.sw + pc % g.sw) * d.plane + (pr / g.sh) * d.Wr + pc / g.sw,
                      (g.W - c0 + g.sw - 1) / g.sw});
    }
  return runs;
}

// Writes the plane's pixels into the phase buffer; its padding elements are never written, so a buffer
// zeroed once serves every plane.
template <typename T> void load_phases(const std::vector<PhaseRun>& runs, int64_t sw, const T* xc, T* ph) {
  for (const PhaseRun& run : runs)
    for (int64_t k = 0; k < run.n; ++k) ph[run.dst + k] = xc[run.src + k * sw];
}

template <typename T> void store_phases(const std::vector<PhaseRun>& runs, int64_t sw, const T* ph, T* xc) {
  for (const PhaseRun& run : runs)
    for (int64_t k = 0; k < run.n; ++k) xc[run.src + k * sw] = ph[run.dst + k];
}

template <typename T> void axpy(T* __restrict y, T a, const T* __restrict x, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] += a * x[k];
}

// lane[l] += Σ a·b over the elements ≡ l (mod kLanes), products and sums in double: independent lanes so the
// loop vectorises without reassociating; the caller adds the lanes up once, after all its runs.
constexpr int64_t kLanes = 8;
template <typename T> void dot_f64_lanes(const T* __restrict a, const T* __restrict b, int64_t n, double* __restrict lane) {
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += double(a[k + l]) * double(b[k + l]);
  for (int64_t l = 0; k + l < n; ++l) lane[l] += double(a[k + l]) * double(b[k + l]);
}

template <typename T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* b, T* y) {
  const int64_t mult = g.Coutg, taps = g.kh * g.kw;
  const DwPlanes d(g);
  const std::vector<int64_t> tap = d.tap_offsets(g);
  const std::vector<PhaseRun> runs = phase_runs(g, d);
  parallel_for(g.N * g.Cin, 1, [&](int64_t u0, int64_t u1) {
    std::vector<T> ph(size_t(d.phases * d.plane), T(0)), acc(size_t(d.L));
    for (int64_t u = u0; u < u1; ++u) {  // u = (n, ci)
      const int64_t n = u / g.Cin, ci = u % g.Cin;
      load_phases(runs, g.sw, x + u * g.H * g.W, ph.data());
      for (int64_t co = ci * mult; co < (ci + 1) * mult; ++co) {
        // Starting from the bias and adding the taps in (i, j) order, as the direct form does.
        std::fill(acc.begin(), acc.end(), b ? b[co] : T(0));
        for (int64_t t = 0; t < taps; ++t)
          axpy(acc.data(), w[co * taps + t], ph.data() + tap[size_t(t)], d.L);
        T* yc = y + (n * g.Cout + co) * g.P();
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          std::copy(acc.begin() + oh * d.Wr, acc.begin() + oh * d.Wr + g.Wo, yc + oh * g.Wo);
      }
    }
  });
}

// Input channel ci owns dx[:, ci] and dw of its `mult` output channels, so both gradients come from one pass
// over its planes: dx scatters each tap's run of the padded dy into the phase planes of dx (then gathered
// back to the image), dw takes each tap's dot product of the padded dy with the input's phase planes.
// dw sums the products in double, over the samples too.
template <typename T>
void depthwise_backward(const ConvGeom& g, const T* dy, const T* x, const T* w, T* dx, T* dw) {
  if (!dx && !dw) return;
  const int64_t mult = g.Coutg, taps = g.kh * g.kw;
  const DwPlanes d(g);
  const std::vector<int64_t> tap = d.tap_offsets(g);
  const std::vector<PhaseRun> runs = phase_runs(g, d);
  parallel_for(g.Cin, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> xph(dw ? size_t(d.phases * d.plane) : 0, T(0)), dxph(dx ? size_t(d.phases * d.plane) : 0);
    std::vector<T> gp(size_t(d.L), T(0));  // dy[n, co] at pitch Wr; the scratch columns stay 0
    std::vector<double> acc(size_t(mult * taps * kLanes));
    for (int64_t ci = c0; ci < c1; ++ci) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t xoff = (n * g.Cin + ci) * g.H * g.W;
        if (dw) load_phases(runs, g.sw, x + xoff, xph.data());
        if (dx) std::fill(dxph.begin(), dxph.end(), T(0));
        for (int64_t m = 0; m < mult; ++m) {
          const int64_t co = ci * mult + m;
          const T* gc = dy + (n * g.Cout + co) * g.P();
          for (int64_t oh = 0; oh < g.Ho; ++oh) std::copy(gc + oh * g.Wo, gc + (oh + 1) * g.Wo, gp.begin() + oh * d.Wr);
          for (int64_t t = 0; t < taps; ++t) {
            if (dx) axpy(dxph.data() + tap[size_t(t)], w[co * taps + t], gp.data(), d.L);
            if (dw) dot_f64_lanes(gp.data(), xph.data() + tap[size_t(t)], d.L, acc.data() + (m * taps + t) * kLanes);
          }
        }
        if (dx) store_phases(runs, g.sw, dxph.data(), dx + xoff);
      }
      if (dw)
        for (int64_t k = 0; k < mult * taps; ++k) {
          double s = 0;
          for (int64_t l = 0; l < kLanes; ++l) s += acc[size_t(k * kLanes + l)];
          dw[ci * mult * taps + k] = T(s);
        }
    }
  });
}

// Channels-last depthwise (Backend::depthwise_conv2d_nhwc): every inner loop runs along the channels, which
// are contiguous, so it vectorises for any image size and stride, and no phase planes are needed. The weight
// is transposed to [taps, C] first. An output pixel starts from the bias and adds its taps in (i, j) order,
// in the compute type (fp32 for bf16 data), and is rounded once.
template <typename T> std::vector<Compute<T>> taps_by_channel(const ConvGeom& g, const T* w) {
  const int64_t taps = g.kh * g.kw;
  std::vector<Compute<T>> wt(size_t(taps * g.Cin));
  for (int64_t c = 0; c < g.Cin; ++c)
    for (int64_t t = 0; t < taps; ++t) wt[size_t(t * g.Cin + c)] = widen(w[c * taps + t]);
  return wt;
}

// fn(i, j, ih, iw) for each tap of output pixel (oh, ow) that reads inside the image, in (i, j) order.
template <typename F> void for_each_tap(const ConvGeom& g, int64_t oh, int64_t ow, const F& fn) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.sh - g.ph + i;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = ow * g.sw - g.pw + j;
      if (iw >= 0 && iw < g.W) fn(i, j, ih, iw);
    }
  }
}

// out[0, C) = init[c] + Σ_{t < n} w[t][c]·v[t][c] in the compute type (init: the bias, or none), t in order,
// rounded once. The depthwise conv's forward (v: the input pixels its taps read) and its dx (v: the dy
// pixels that read an input pixel). Float data sums blocks of 16 or 64 channels in registers of the machine's
// width (a pixel row in memory made every tap wait on the previous tap's store; 16-float vectors, two AVX2
// registers each, were kept on the stack); f64 and bf16 data in a row of the compute type.
template <int Blocks16>
[[gnu::always_inline]] inline void gather_taps_f32(const float* init, const float* const* v, const float* const* w,
                                                   int64_t n, int64_t c0, float* out) {
  constexpr int64_t R = cpu::kRegisterF32Lanes;
  constexpr int V = int(Blocks16 * cpu::kF32Lanes / R);
  cpu::f32xR a[V];
  for (int k = 0; k < V; ++k) a[k] = init ? cpu::loadR(init + c0 + k * R) : cpu::f32xR{};
  for (int64_t t = 0; t < n; ++t)
    for (int k = 0; k < V; ++k) a[k] += cpu::loadR(w[t] + c0 + k * R) * cpu::loadR(v[t] + c0 + k * R);
  for (int k = 0; k < V; ++k) cpu::storeR(out + c0 + k * R, a[k]);
}
template <typename T>
void gather_taps(const T* init, const T* const* v, const Compute<T>* const* w, int64_t n, int64_t C, T* out,
                 std::vector<Compute<T>>& row) {
  int64_t c = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; c + 64 <= C; c += 64) gather_taps_f32<4>(init, v, w, n, c, out);
    for (; c + 16 <= C; c += 16) gather_taps_f32<1>(init, v, w, n, c, out);
  }
  if (c == C) return;
  row.resize(size_t(C));
  Compute<T>* __restrict acc = row.data();
  for (int64_t k = c; k < C; ++k) acc[k] = init ? widen(init[k]) : Compute<T>(0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = c; k < C; ++k) acc[k] += w[t][k] * widen(v[t][k]);
  for (int64_t k = c; k < C; ++k) out[k] = narrow<T>(acc[k]);
}

// out[o·out_step + c] for o in [0, n) and c in [0, C) = init[c] (or 0) + Σ_t w[t][c]·src[t][o·step + c], the
// taps t in order, one multiply-add each: gather_taps' sums for a run of outputs that all read the same taps
// (a row's interior), without per-output pointer lists or bounds checks, so both paths give the same bits. A
// block of one register of channels keeps its taps' weights in registers (a 3 × 3 conv's 9 of AVX2's 16)
// while it runs along 8 outputs. The per-output path had run at ~7 GFLOP/s in CvT-13 on two Zen 3 cores: its
// 16-float sums were two AVX2 registers each, and the compiler kept them on the stack.
template <int Taps>
void taps_along_row(const float* const* src, const float* const* w, const float* init, int64_t step, int64_t n,
                    int64_t C, float* out, int64_t out_step) {
  constexpr int64_t L = cpu::kRegisterF32Lanes, kChunk = 8;
  for (int64_t o0 = 0; o0 < n; o0 += kChunk) {
    const int64_t o1 = std::min(o0 + kChunk, n);
    for (int64_t c = 0; c < C; c += L) {
      cpu::f32xR wr[Taps];
      for (int t = 0; t < Taps; ++t) wr[t] = cpu::loadR(w[t] + c);
      const cpu::f32xR start = init ? cpu::loadR(init + c) : cpu::f32xR{};
      for (int64_t o = o0; o < o1; ++o) {
        cpu::f32xR a = start;
#pragma GCC unroll 9
        for (int t = 0; t < Taps; ++t) a += wr[t] * cpu::loadR(src[t] + o * step + c);
        cpu::storeR(out + o * out_step + c, a);
      }
    }
  }
}
constexpr int kMaxRowTaps = 9;  // 3 × 3 kernels
// taps_along_row for a run-time tap count up to kMaxRowTaps; C a multiple of 16.
void taps_along_row(int taps, const float* const* src, const float* const* w, const float* init, int64_t step,
                    int64_t n, int64_t C, float* out, int64_t out_step) {
  switch (taps) {
    case 1: return taps_along_row<1>(src, w, init, step, n, C, out, out_step);
    case 2: return taps_along_row<2>(src, w, init, step, n, C, out, out_step);
    case 3: return taps_along_row<3>(src, w, init, step, n, C, out, out_step);
    case 4: return taps_along_row<4>(src, w, init, step, n, C, out, out_step);
    case 6: return taps_along_row<6>(src, w, init, step, n, C, out, out_step);
    case 9: return taps_along_row<9>(src, w, init, step, n, C, out, out_step);
    default: TS_CHECK(false, "taps_along_row: " + std::to_string(taps) + " taps");  // 3 × 3: |I|·|J| of 1-3 each
  }
}
// Whether a depthwise conv's rows go through taps_along_row: float data, at most a 3 × 3 kernel, channels in
// 16s (whole registers on every machine, so the same outputs take this path everywhere).
template <typename T> bool runs_along_rows(const ConvGeom& g) {
  return std::is_same_v<T, float> && g.kh <= 3 && g.kw <= 3 && g.Cin % cpu::kF32Lanes == 0;
}

template <typename T>
void depthwise_nhwc_forward(const ConvGeom& g, const T* x, const T* w, const T* b, T* y) {
  using F = Compute<T>;
  const int64_t C = g.Cin, taps = g.kh * g.kw;
  const std::vector<F> wt = taps_by_channel(g, w);
  // A row's interior: the outputs whose every tap reads inside the row, ow·sw − pw ≥ 0 and ow·sw − pw + kw ≤ W.
  const bool along_rows = runs_along_rows<T>(g);
  const int64_t ow_lo = std::min(g.Wo, (g.pw + g.sw - 1) / g.sw);
  const int64_t ow_hi = g.W + g.pw >= g.kw ? std::clamp<int64_t>((g.W + g.pw - g.kw) / g.sw + 1, ow_lo, g.Wo) : ow_lo;
  parallel_for(g.N * g.Ho, std::max<int64_t>(1, 8192 / std::max<int64_t>(g.Wo * C * taps, 1)),
               [&](int64_t r0, int64_t r1) {
    std::vector<const T*> in(static_cast<size_t>(taps));  // the input pixels this output's taps read, in (i, j) order
    std::vector<const F*> wr(static_cast<size_t>(taps));  // and their taps' weights
    std::vector<F> row;
    auto pixel = [&](int64_t r, int64_t n, int64_t oh, int64_t ow) {
      int64_t reads = 0;
      for_each_tap(g, oh, ow, [&](int64_t i, int64_t j, int64_t ih, int64_t iw) {
        in[size_t(reads)] = x + ((n * g.H + ih) * g.W + iw) * C;
        wr[size_t(reads++)] = wt.data() + (i * g.kw + j) * C;
      });
      gather_taps(b, in.data(), wr.data(), reads, C, y + (r * g.Wo + ow) * C, row);
    };
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.Ho, oh = r % g.Ho, ih0 = oh * g.sh - g.ph;
      const bool inside = along_rows && ih0 >= 0 && ih0 + g.kh <= g.H && ow_lo < ow_hi;
      const int64_t lo = inside ? ow_lo : g.Wo, hi = inside ? ow_hi : g.Wo;  // [lo, hi): the interior
      for (int64_t ow = 0; ow < lo; ++ow) pixel(r, n, oh, ow);
      if constexpr (std::is_same_v<T, float>)
        if (inside) {
          const float* src[kMaxRowTaps];  // tap (i, j)'s input pixel for output lo
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              src[i * g.kw + j] = x + ((n * g.H + ih0 + i) * g.W + lo * g.sw - g.pw + j) * C;
              wr[size_t(i * g.kw + j)] = wt.data() + (i * g.kw + j) * C;
            }
          taps_along_row(int(taps), src, wr.data(), b, g.sw * C, hi - lo, C, y + (r * g.Wo + lo) * C, C);
        }
      for (int64_t ow = hi; ow < g.Wo; ++ow) pixel(r, n, oh, ow);
    }
  });
}

// [first, last) of the outputs o in [0, O) whose tap reads inside [0, size): o·stride − shift in [0, size).
inline std::pair<int64_t, int64_t> valid_outputs(int64_t shift, int64_t stride, int64_t size, int64_t O) {
  auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); };
  return {std::clamp<int64_t>(ceil_div(shift, stride), 0, O), std::clamp<int64_t>(ceil_div(size + shift, stride), 0, O)};
}

// acc[0, C) += Σ_{k < n} dy[k·C + c]·x[k·x_step + c], in the compute type. Float data: blocks of 16 or 32
// channels, two running sums each (even and odd k) so that consecutive multiply-adds overlap, held as
// registers of the machine's width (16-float vectors, two AVX2 registers each, had been kept on the stack);
// the blocks are sized in 16 channels whatever the width, so which channels take the scalar tail's single
// sum, and so the result, does not depend on the machine. f64 and bf16 data: one running sum per channel in acc.
template <int Blocks16>
[[gnu::always_inline]] inline void dot_pixels_f32(const float* dy, const float* x, int64_t n, int64_t x_step,
                                                  int64_t C, float* acc) {
  constexpr int64_t R = cpu::kRegisterF32Lanes;
  constexpr int V = int(Blocks16 * cpu::kF32Lanes / R);
  cpu::f32xR a0[V] = {}, a1[V] = {};
  int64_t k = 0;
  for (; k + 2 <= n; k += 2)
    for (int l = 0; l < V; ++l) {
      a0[l] += cpu::loadR(dy + k * C + l * R) * cpu::loadR(x + k * x_step + l * R);
      a1[l] += cpu::loadR(dy + (k + 1) * C + l * R) * cpu::loadR(x + (k + 1) * x_step + l * R);
    }
  if (k < n)
    for (int l = 0; l < V; ++l) a0[l] += cpu::loadR(dy + k * C + l * R) * cpu::loadR(x + k * x_step + l * R);
  for (int l = 0; l < V; ++l) cpu::storeR(acc + l * R, cpu::loadR(acc + l * R) + (a0[l] + a1[l]));
}
template <typename T>
void dot_pixels(const T* dy, const T* x, int64_t n, int64_t x_step, int64_t C, Compute<T>* __restrict acc) {
  int64_t c = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; c + 32 <= C; c += 32) dot_pixels_f32<2>(dy + c, x + c, n, x_step, C, acc + c);
    for (; c + 16 <= C; c += 16) dot_pixels_f32<1>(dy + c, x + c, n, x_step, C, acc + c);
  }
  for (int64_t k = 0; k < n; ++k)
    for (int64_t l = c; l < C; ++l) acc[l] += widen(dy[k * C + l]) * widen(x[k * x_step + l]);
}

// dx by gathering (input pixel (ih, iw) collects the taps that read it, in (i, j) order), parallel over
// image rows; dweight and dbias as per-sample sums, added over the samples in order, so the result does not
// depend on the thread count.
template <typename T>
void depthwise_nhwc_backward(const ConvGeom& g, const T* dy, const T* x, const T* w, T* dx, T* dw, T* db) {
  using F = Compute<T>;
  const int64_t C = g.Cin, taps = g.kh * g.kw;
  if (dx) {
    const std::vector<F> wt = taps_by_channel(g, w);
    const bool along_rows = runs_along_rows<T>(g);
    // Input columns iw ≡ q (mod sw) are read by the same tap columns J_q = {j : sw divides iw + pw − j}; a
    // column's interior is where all of them fall inside the output, 0 ≤ (iw + pw − j)/sw < Wo:
    // iw ∈ [max J_q − pw, (Wo − 1)·sw + min J_q − pw]. first[q], end[q]: the interior's first column of class q
    // and one past its last (end ≤ first: none).
    std::vector<int64_t> first(size_t(g.sw)), end(size_t(g.sw));
    std::vector<std::vector<int64_t>> cols(size_t(g.sw));  // J_q in order
    for (int64_t q = 0; q < g.sw; ++q) {
      for (int64_t j = 0; j < g.kw; ++j)
        if (((q + g.pw - j) % g.sw + g.sw) % g.sw == 0) cols[size_t(q)].push_back(j);
      const auto& J = cols[size_t(q)];
      int64_t lo = J.empty() ? g.W : std::max<int64_t>(0, J.back() - g.pw);
      lo += ((q - lo) % g.sw + g.sw) % g.sw;  // the first column of class q from there
      first[size_t(q)] = lo;
      end[size_t(q)] = J.empty() ? lo : std::min(g.W, (g.Wo - 1) * g.sw + J.front() - g.pw + 1);
    }
    auto in_interior = [&](int64_t iw) { return iw >= first[size_t(iw % g.sw)] && iw < end[size_t(iw % g.sw)]; };
    parallel_for(g.N * g.H, std::max<int64_t>(1, 8192 / std::max<int64_t>(g.W * C * taps, 1)),
                 [&](int64_t r0, int64_t r1) {
      std::vector<const T*> gin(static_cast<size_t>(taps));  // the dy pixels that read this input pixel, in (i, j) order
      std::vector<const F*> wr(static_cast<size_t>(taps));  // and their taps' weights
      std::vector<F> row;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / g.H, ih = r % g.H;
        int64_t tap_rows[3], out_rows[3], n_rows = 0;  // the tap rows i that read input row ih, and their output rows
        if (along_rows)
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t hs = ih + g.ph - i;
            if (hs >= 0 && hs % g.sh == 0 && hs / g.sh < g.Ho) tap_rows[n_rows] = i, out_rows[n_rows++] = hs / g.sh;
          }
        const bool runs = n_rows > 0;  // else no tap row reads row ih (zeros) or no runs: every pixel goes alone
        for (int64_t iw = 0; iw < g.W; ++iw) {
          if (runs && in_interior(iw)) continue;
          int64_t readers = 0;
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t hs = ih + g.ph - i;  // = oh·sh for the output row that reads this pixel with tap row i
            if (hs < 0 || hs % g.sh != 0 || hs / g.sh >= g.Ho) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t ws = iw + g.pw - j;
              if (ws < 0 || ws % g.sw != 0 || ws / g.sw >= g.Wo) continue;
              gin[size_t(readers)] = dy + ((n * g.Ho + hs / g.sh) * g.Wo + ws / g.sw) * C;
              wr[size_t(readers++)] = wt.data() + (i * g.kw + j) * C;
            }
          }
          gather_taps<T>(nullptr, gin.data(), wr.data(), readers, C, dx + (r * g.W + iw) * C, row);
        }
        if constexpr (std::is_same_v<T, float>)
          for (int64_t q = 0; runs && q < g.sw; ++q) {
            const int64_t a = first[size_t(q)], count = (end[size_t(q)] - a + g.sw - 1) / g.sw;
            if (count <= 0) continue;
            const float* src[kMaxRowTaps];  // tap (i, j)'s dy pixel for input column a
            int t = 0;
            for (int64_t k = 0; k < n_rows; ++k)
              for (const int64_t j : cols[size_t(q)]) {
                src[t] = dy + ((n * g.Ho + out_rows[k]) * g.Wo + (a + g.pw - j) / g.sw) * C;
                wr[size_t(t++)] = wt.data() + (tap_rows[k] * g.kw + j) * C;
              }
            taps_along_row(t, src, wr.data(), nullptr, C, count, C, dx + (r * g.W + a) * C, g.sw * C);
          }
      }
    });
  }
  if (!dw && !db) return;
  // Per sample, in the compute type: Σ dy·x for each tap and Σ dy ([taps + 1, C]); the samples' partials
  // are then added in order, in double. A sample's sums have at most Ho·Wo terms each, within the
  // registry's γ bound in the compute type (which the old double sums spent half the vector width and a
  // conversion per term on: 15 GFLOP/s at cvt-tiny's shapes).
  const int64_t width = (taps + 1) * C;
  std::vector<F> part(size_t(g.N * width), F(0));
  parallel_for(g.N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      F* __restrict acc = part.data() + n * width;
      const T* dy_n = dy + n * g.Ho * g.Wo * C;
      F* __restrict bsum = acc + taps * C;
      for (int64_t p = 0; p < g.Ho * g.Wo; ++p)
        for (int64_t c = 0; c < C; ++c) bsum[c] += widen(dy_n[p * C + c]);
      if (!dw) continue;
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          // The output pixels whose tap (i, j) reads inside the image: ih = oh·sh − ph + i in [0, H), and
          // iw = ow·sw − pw + j in [0, W).
          const auto [oh0, oh1] = valid_outputs(g.ph - i, g.sh, g.H, g.Ho);
          const auto [ow0, ow1] = valid_outputs(g.pw - j, g.sw, g.W, g.Wo);
          if (oh0 >= oh1 || ow0 >= ow1) continue;
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + i, iw0 = ow0 * g.sw - g.pw + j;
            dot_pixels(dy_n + (oh * g.Wo + ow0) * C, x + ((n * g.H + ih) * g.W + iw0) * C, ow1 - ow0, g.sw * C,
                       C, acc + (i * g.kw + j) * C);
          }
        }
    }
  });
  parallel_for(width, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double sum = 0;
      for (int64_t n = 0; n < g.N; ++n) sum += double(part[size_t(n * width + k)]);
      const int64_t t = k / C, c = k % C;
      if (t < taps && dw) dw[c * taps + t] = from_double<T>(sum);
      if (t == taps && db) db[c] = from_double<T>(sum);
    }
  });
}

// The geometry of a channels-last depthwise conv: x [N, H, W, C], y or dy [N, Ho, Wo, C].
ConvGeom nhwc_geom(const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dArgs& a) {
  TS_CHECK(a.groups == x.size(3) && w.size(0) == x.size(3) && w.size(1) == 1,
           "depthwise_conv2d_nhwc: weight " + w.str() + " must be [C, 1, kh, kw] for x " + x.str());
  ConvGeom g;
  g.N = x.size(0); g.H = x.size(1); g.W = x.size(2); g.Cin = g.Cout = g.groups = x.size(3);
  g.kh = w.size(2); g.kw = w.size(3); g.Ho = y.size(1); g.Wo = y.size(2);
  g.Cg = g.Coutg = 1;
  g.sh = a.stride_h; g.sw = a.stride_w; g.ph = a.pad_h; g.pw = a.pad_w;
  return g;
}

}  // namespace

void CpuBackend::depthwise_conv2d_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                       const Conv2dArgs& a, Tensor& y) {
  visit_float_or_bf16(x.dtype(), "depthwise_conv2d_nhwc", [&](auto tag) {
    using T = decltype(tag);
    depthwise_nhwc_forward(nhwc_geom(x, weight, y, a), x.data<T>(), weight.data<T>(), data_or_null<T>(bias),
                           y.data<T>());
  });
}

void CpuBackend::depthwise_conv2d_nhwc_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                                const Conv2dArgs& a, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  visit_float_or_bf16(x.dtype(), "depthwise_conv2d_nhwc_backward", [&](auto tag) {
    using T = decltype(tag);
    depthwise_nhwc_backward(nhwc_geom(x, weight, dy, a), dy.data<T>(), x.data<T>(), weight.data<T>(),
                            mut_or_null<T>(dx), mut_or_null<T>(dweight), mut_or_null<T>(dbias));
  });
}

void CpuBackend::conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                        Tensor& y) {
  visit_float(x.dtype(), "conv2d", [&](auto tag) {
    using T = decltype(tag);
    const ConvGeom g = conv_geom(x, weight, y, a);
    const T *px = x.data<T>(), *pw = weight.data<T>(), *pb = data_or_null<T>(bias);
    T* py = y.data<T>();
    if (g.Cg == 1) { depthwise_forward(g, px, pw, pb, py); return; }
    const int64_t K = g.K(), P = g.P();
    // Samples run one after another; the GEMM parallelises inside (it has the most work to split).
    Tensor col = g.pointwise() ? Tensor() : Tensor::empty({g.Cin * g.kh * g.kw, P}, x.dtype());
    for (int64_t n = 0; n < g.N; ++n) {
      Tensor xn = window(x, n * g.Cin * g.H * g.W, {g.Cin * g.H * g.W});
      if (!g.pointwise()) im2col(g, px + n * g.Cin * g.H * g.W, col.data<T>());
      const Tensor& B = g.pointwise() ? xn : col;
      // y[n, group] [Cout_g, P] = W[group] [Cout_g, K] · col[group] [K, P]
      run_gemm(false, false, g.groups, g.Coutg, P, K, 1.0, 0.0, weight, g.Coutg * K, B, K * P,
               window(y, n * g.Cout * P, {g.Cout * P}), g.Coutg * P);
    }
    if (pb) {
      parallel_for(g.N * g.Cout, 1, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
          T* yc = py + u * P;
          const T b = pb[u % g.Cout];
          for (int64_t p = 0; p < P; ++p) yc[p] += b;
        }
      });
    }
  });
}

void CpuBackend::conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Conv2dArgs& a,
                                 Tensor& dx, Tensor& dweight, Tensor& dbias) {
  visit_float(x.dtype(), "conv2d_backward", [&](auto tag) {
    using T = decltype(tag);
    const ConvGeom g = conv_geom(x, weight, dy, a);
    const int64_t K = g.K(), P = g.P();
    const T *pdy = dy.data<T>(), *px = x.data<T>(), *pw = weight.data<T>();
    if (dbias.defined()) {
      T* pdb = dbias.data<T>();
      parallel_for(g.Cout, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co) {
          double s = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const T* gc = pdy + (n * g.Cout + co) * P;
            for (int64_t p = 0; p < P; ++p) s += double(gc[p]);
          }
          pdb[co] = T(s);
        }
      });
    }
    if (g.Cg == 1) {
      depthwise_backward(g, pdy, px, pw, mut_or_null<T>(dx), mut_or_null<T>(dweight));
      return;
    }
    if (!dx.defined() && !dweight.defined()) return;
    const bool direct = g.pointwise();
    Tensor col = direct ? Tensor() : Tensor::empty({g.Cin * g.kh * g.kw, P}, x.dtype());
    for (int64_t n = 0; n < g.N; ++n) {
      const int64_t xoff = n * g.Cin * g.H * g.W;
      Tensor dyn = window(dy, n * g.Cout * P, {g.Cout * P});
      if (dweight.defined()) {
        // dW[group] [Cout_g, K] (+)= dy[n, group] [Cout_g, P] · col[group]ᵀ [P, K]; beta accumulates samples.
        Tensor B = direct ? window(x, xoff, {g.Cin * P}) : col;
        if (!direct) im2col(g, px + xoff, col.data<T>());
        run_gemm(false, true, g.groups, g.Coutg, K, P, 1.0, n == 0 ? 0.0 : 1.0, dyn, g.Coutg * P, B, K * P,
                 dweight, g.Coutg * K);
      }
      if (dx.defined()) {
        // dcol[group] [K, P] = W[group]ᵀ [K, Cout_g] · dy[n, group] [Cout_g, P], then scattered back.
        Tensor dxn = window(dx, xoff, {g.Cin * g.H * g.W});
        const Tensor& C = direct ? dxn : col;  // col is free again: dW for this sample is done
        run_gemm(true, false, g.groups, K, P, g.Coutg, 1.0, 0.0, weight, g.Coutg * K, dyn, g.Coutg * P, C, K * P);
        if (!direct) {
          T* pdx = dxn.data<T>();
          std::fill(pdx, pdx + g.Cin * g.H * g.W, T(0));
          col2im(g, col.data<T>(), pdx);
        }
      }
    }
  });
}

// ================================================================ conv token embedding
// The composite (engine/core/fused.cpp) convolves sample by sample into an image [N, C, Ho, Wo] (GEMMs of
// only C rows, one sample at a time) and then transposes it into tokens. Here the convolution goes straight
// to the token layout as one GEMM per chunk of samples: im2row gathers each output pixel's receptive field
// into a row of K = Cin·kh·kw and pre_norm [pixels, C] = bias + rows · weightᵀ, a GEMM with thousands of
// rows. Backward keeps the layout: dbias = Σ_pixels dpre, dweight = dpreᵀ · rows (summed over the chunks)
// and drows = dpre · weight, scattered back (row2im).
//
// Two input layouts. NCHW (the image): a row's columns in the weight's own (c, i, j) order, gathered as
// Cin·kh runs of kw values. Channels-last [N, H, W, Cin] (the previous stage's tokens): columns in (i, j, c)
// order, gathered as kh runs of kw·Cin values — one copy per kernel row instead of Cin of them, and no
// transposing copy of the input or of dx — with the weight (and dweight) permuted to [C, kh, kw, Cin].
namespace {

// Samples per chunk, so that a chunk's rows [samples·P, K] stay near 16 MiB of f32 however large the batch.
int64_t embedding_chunk(const ConvGeom& g) {
  return std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(g.P() * g.K(), 1), 1, std::max<int64_t>(g.N, 1));
}

// Output column ow reads input columns iw0 + j for taps j in [j0, j1), iw0 = ow·sw − pw; the rest is padding.
struct TapSpan { int64_t iw0, j0, j1; };
inline TapSpan tap_span(const ConvGeom& g, int64_t ow) {
  const int64_t iw0 = ow * g.sw - g.pw;
  return {iw0, std::max<int64_t>(0, -iw0), std::min(g.kw, g.W - iw0)};
}

// NCHW: rows [(n − n0)·P + oh·Wo + ow, (c·kh + i)·kw + j] = x[n, c, oh·sh − ph + i, ow·sw − pw + j].
// Channels-last: rows [.., (i·kw + j)·Cin + c] = x[n, oh·sh − ph + i, ow·sw − pw + j, c]. 0 outside.
template <typename T> void im2row(const ConvGeom& g, bool nhwc, const T* x, int64_t n0, int64_t n1, T* rows) {
  const int64_t P = g.P(), K = g.K();
  parallel_for((n1 - n0) * P, std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = n0 + r / P, oh = r % P / g.Wo;
      const TapSpan t = tap_span(g, r % P % g.Wo);
      T* row = rows + r * K;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i;
        const bool inside = ih >= 0 && ih < g.H && t.j0 < t.j1;
        if (nhwc) {  // one run of kw·Cin: taps j0..j1 are adjacent pixels of input row ih
          T* out = row + i * g.kw * g.Cin;
          if (!inside) { std::fill(out, out + g.kw * g.Cin, T{}); continue; }
          const T* in = x + ((n * g.H + ih) * g.W + t.iw0 + t.j0) * g.Cin;
          std::fill(out, out + t.j0 * g.Cin, T{});
          std::copy(in, in + (t.j1 - t.j0) * g.Cin, out + t.j0 * g.Cin);
          std::fill(out + t.j1 * g.Cin, out + g.kw * g.Cin, T{});
          continue;
        }
        for (int64_t c = 0; c < g.Cin; ++c) {
          T* out = row + (c * g.kh + i) * g.kw;
          if (!inside) { std::fill(out, out + g.kw, T{}); continue; }
          const T* in = x + ((n * g.Cin + c) * g.H + ih) * g.W + t.iw0 + t.j0;
          std::fill(out, out + t.j0, T{});
          std::copy(in, in + (t.j1 - t.j0), out + t.j0);
          std::fill(out + t.j1, out + g.kw, T{});
        }
      }
    }
  });
}

// The adjoint of im2row into dx (zeroed here): samples own disjoint parts of dx, so they run in parallel,
// each adding its rows in order.
template <typename T> void row2im(const ConvGeom& g, bool nhwc, const T* rows, int64_t n0, int64_t n1, T* dx) {
  const int64_t P = g.P(), K = g.K(), image = g.Cin * g.H * g.W;
  parallel_for(n1 - n0, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T* dxn = dx + (n0 + s) * image;
      std::fill(dxn, dxn + image, T(0));
      for (int64_t p = 0; p < P; ++p) {
        const int64_t oh = p / g.Wo;
        const TapSpan t = tap_span(g, p % g.Wo);
        const T* row = rows + (s * P + p) * K;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i;
          if (ih < 0 || ih >= g.H || t.j0 >= t.j1) continue;
          if (nhwc) {
            const T* in = row + (i * g.kw + t.j0) * g.Cin;
            T* out = dxn + (ih * g.W + t.iw0 + t.j0) * g.Cin;
            for (int64_t q = 0; q < (t.j1 - t.j0) * g.Cin; ++q) out[q] += in[q];
            continue;
          }
          for (int64_t c = 0; c < g.Cin; ++c) {
            const T* in = row + (c * g.kh + i) * g.kw + t.j0;
            T* out = dxn + (c * g.H + ih) * g.W + t.iw0 + t.j0;
            for (int64_t j = 0; j < t.j1 - t.j0; ++j) out[j] += in[j];
          }
        }
      }
    }
  });
}

// [C, Cin, kh, kw] <-> [C, kh, kw, Cin] (the channels-last rows' column order), either way by `to_taps`.
template <typename T> void permute_weight(const ConvGeom& g, const T* from, T* to, bool to_taps) {
  for (int64_t co = 0; co < g.Cout; ++co)
    for (int64_t c = 0; c < g.Cin; ++c)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t chw = ((co * g.Cin + c) * g.kh + i) * g.kw + j, hwc = ((co * g.kh + i) * g.kw + j) * g.Cin + c;
          if (to_taps) to[hwc] = from[chw];
          else to[chw] = from[hwc];
        }
}

// The geometry of x [N, Cin, H, W], or of x [N, H, W, Cin] when nhwc.
ConvGeom embedding_geom(const Tensor& x, bool nhwc, const Tensor& weight, const Conv2dArgs& a) {
  TS_CHECK(a.groups == 1, "conv_embedding: groups must be 1, got " + std::to_string(a.groups));
  return conv_geom(nhwc ? x.permute({0, 3, 1, 2}) : x, weight, Tensor(), a);
}

// The weight in the rows' column order: itself for NCHW, permuted for channels-last.
template <typename T> Tensor weight_in_row_order(const ConvGeom& g, bool nhwc, const Tensor& weight) {
  if (!nhwc) return weight;
  Tensor taps = Tensor::empty(weight.shape(), weight.dtype());
  permute_weight(g, weight.data<T>(), taps.data<T>(), true);
  return taps;
}

// bf16: the GEMM rounds each convolution output (bias included) once into pre_norm, and the norm reads
// exactly those stored values, as the contract asks.
void embed(CpuBackend& be, bool nhwc, const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
           const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens, Tensor& pre_norm, Tensor& mean,
           Tensor& rstd) {
  visit_float_or_bf16(x.dtype(), "conv_embedding", [&](auto tag) {
    using T = decltype(tag);
    const ConvGeom g = embedding_geom(x, nhwc, weight, a);
    const int64_t P = g.P(), K = g.K(), C = g.Cout, chunk = embedding_chunk(g);
    const Tensor w = weight_in_row_order<T>(g, nhwc, weight).reshape({C, K});
    Tensor rows = Tensor::empty({chunk * P, K}, x.dtype());
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t n1 = std::min(g.N, n0 + chunk), M = (n1 - n0) * P;
      im2row(g, nhwc, x.data<T>(), n0, n1, rows.data<T>());
      Tensor pre = window(pre_norm, n0 * P * C, {M, C});
      if (bias.defined()) be.linear(window(rows, 0, {M, K}), w, bias, Tensor(), pre);  // the bias added in the GEMM
      else run_gemm(false, true, 1, M, C, K, 1.0, 0.0, rows, 0, w, 0, pre, 0);
    }
    Tensor pre_rows = pre_norm.reshape({g.N * P, C}), token_rows = tokens.reshape({g.N * P, C});
    be.layer_norm(pre_rows, ln_weight, ln_bias, eps, token_rows, mean, rstd);
  });
}

void embed_backward(CpuBackend& be, bool nhwc, const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                    const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight, const Tensor& mean,
                    const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias, Tensor& dln_weight,
                    Tensor& dln_bias) {
  visit_float(x.dtype(), "conv_embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    const ConvGeom g = embedding_geom(x, nhwc, weight, a);
    const int64_t P = g.P(), K = g.K(), C = g.Cout, chunk = embedding_chunk(g), pixels = g.N * P;
    const bool conv_grads = dx.defined() || dweight.defined() || dbias.defined();
    Tensor dpre = conv_grads ? Tensor::empty({pixels, C}, x.dtype()) : Tensor();
    be.layer_norm_backward(dtokens.reshape({pixels, C}), pre_norm.reshape({pixels, C}), ln_weight, mean, rstd, dpre,
                           dln_weight, dln_bias);
    if (!conv_grads) return;
    const T* pg = dpre.data<T>();
    if (dbias.defined()) {
      const std::vector<double> sums = tessera::column_sums(pg, pixels, C);
      for (int64_t c = 0; c < C; ++c) dbias.data<T>()[c] = T(sums[size_t(c)]);
    }
    if (!dx.defined() && !dweight.defined()) return;
    const Tensor w = dx.defined() ? weight_in_row_order<T>(g, nhwc, weight) : Tensor();
    // dweight in the rows' column order: dweight itself for NCHW, permuted back at the end for channels-last.
    Tensor dw = dweight.defined() && nhwc ? Tensor::empty(dweight.shape(), dweight.dtype()) : dweight;
    Tensor rows = Tensor::empty({chunk * P, K}, x.dtype());
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t n1 = std::min(g.N, n0 + chunk), M = (n1 - n0) * P;
      const Tensor dpre_chunk = window(dpre, n0 * P * C, {M * C});
      if (dw.defined()) {  // dw [C, K] (+)= dpreᵀ [C, M] · rows [M, K]
        im2row(g, nhwc, x.data<T>(), n0, n1, rows.data<T>());
        run_gemm(true, false, 1, C, K, M, 1.0, n0 == 0 ? 0.0 : 1.0, dpre_chunk, 0, rows, 0, dw, 0);
      }
      if (dx.defined()) {  // drows [M, K] = dpre [M, C] · w [C, K]; rows is free again
        run_gemm(false, false, 1, M, K, C, 1.0, 0.0, dpre_chunk, 0, w, 0, rows, 0);
        row2im(g, nhwc, rows.data<T>(), n0, n1, dx.data<T>());
      }
    }
    if (dw.defined() && nhwc) permute_weight(g, dw.data<T>(), dweight.data<T>(), false);
  });
}

}  // namespace

void CpuBackend::conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                                const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens,
                                Tensor& pre_norm, Tensor& mean, Tensor& rstd) {
  embed(*this, false, x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
}

void CpuBackend::conv_embedding_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a,
                                     const Tensor& ln_weight, const Tensor& ln_bias, double eps, Tensor& tokens,
                                     Tensor& pre_norm, Tensor& mean, Tensor& rstd) {
  embed(*this, true, x, weight, bias, a, ln_weight, ln_bias, eps, tokens, pre_norm, mean, rstd);
}

void CpuBackend::conv_embedding_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                                         const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight,
                                         const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                         Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias) {
  embed_backward(*this, false, dtokens, x, weight, a, pre_norm, ln_weight, mean, rstd, dx, dweight, dbias,
                 dln_weight, dln_bias);
}

void CpuBackend::conv_embedding_nhwc_backward(const Tensor& dtokens, const Tensor& x, const Tensor& weight,
                                              const Conv2dArgs& a, const Tensor& pre_norm, const Tensor& ln_weight,
                                              const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                              Tensor& dbias, Tensor& dln_weight, Tensor& dln_bias) {
  embed_backward(*this, true, dtokens, x, weight, a, pre_norm, ln_weight, mean, rstd, dx, dweight, dbias,
                 dln_weight, dln_bias);
}

// ================================================================ batch norm
void CpuBackend::batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean,
                            Tensor& invstd, double eps, bool training, Tensor& y) {
  visit_float(x.dtype(), "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / std::max<int64_t>(N * C, 1);
    const double M = double(N * HW);
    const T *px = x.data<T>(), *pw = data_or_null<T>(weight), *pb = data_or_null<T>(bias);
    T* py = y.data<T>();
    Stat sm(mean, "batch_norm"), si(invstd, "batch_norm");
    parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double mu, is;
        if (training) {  // batch mean and biased variance over (N, H, W), two passes
          double s = 0, v = 0;
          for (int64_t n = 0; n < N; ++n) {
            const T* xc = px + (n * C + c) * HW;
            for (int64_t p = 0; p < HW; ++p) s += double(xc[p]);
          }
          mu = s / M;
          for (int64_t n = 0; n < N; ++n) {
            const T* xc = px + (n * C + c) * HW;
            for (int64_t p = 0; p < HW; ++p) { double d = double(xc[p]) - mu; v += d * d; }
          }
          is = 1.0 / std::sqrt(v / M + eps);
          sm.set(c, mu);
          si.set(c, is);
        } else {
          mu = sm.get(c);
          is = si.get(c);
        }
        // y = x·scale + shift with scale = w·invstd, shift = b − μ·scale
        const double scale = (pw ? double(pw[c]) : 1.0) * is;
        const double shift = (pb ? double(pb[c]) : 0.0) - mu * scale;
        for (int64_t n = 0; n < N; ++n) {
          const T* xc = px + (n * C + c) * HW;
          T* yc = py + (n * C + c) * HW;
          for (int64_t p = 0; p < HW; ++p) yc[p] = T(double(xc[p]) * scale + shift);
        }
      }
    });
  });
}

void CpuBackend::batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                     const Tensor& mean, const Tensor& invstd, bool training, Tensor& dx,
                                     Tensor& dweight, Tensor& dbias) {
  visit_float(x.dtype(), "batch_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / std::max<int64_t>(N * C, 1);
    const double M = double(N * HW);
    const T *px = x.data<T>(), *pg = dy.data<T>(), *pw = data_or_null<T>(weight);
    T *pdx = mut_or_null<T>(dx), *pdw = mut_or_null<T>(dweight), *pdb = mut_or_null<T>(dbias);
    Stat sm(mean, "batch_norm_backward"), si(invstd, "batch_norm_backward");
    parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const double mu = sm.get(c), is = si.get(c), w = pw ? double(pw[c]) : 1.0;
        double sg = 0, sgx = 0;  // Σ dy and Σ dy·x̂ over (N, H, W)
        for (int64_t n = 0; n < N; ++n) {
          const T *xc = px + (n * C + c) * HW, *gc = pg + (n * C + c) * HW;
          for (int64_t p = 0; p < HW; ++p) {
            sg += double(gc[p]);
            sgx += double(gc[p]) * (double(xc[p]) - mu) * is;
          }
        }
        if (pdw) pdw[c] = T(sgx);
        if (pdb) pdb[c] = T(sg);
        if (!pdx) continue;
        // Train: μ and σ depend on x, giving dx = w·invstd·(dy − mean(dy) − x̂·mean(dy⊙x̂)).
        // Eval: the statistics are constants, dx = w·invstd·dy.
        const double a = training ? sg / M : 0.0, b = training ? sgx / M : 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const T *xc = px + (n * C + c) * HW, *gc = pg + (n * C + c) * HW;
          T* dc = pdx + (n * C + c) * HW;
          for (int64_t p = 0; p < HW; ++p)
            dc[p] = T(w * is * (double(gc[p]) - a - (double(xc[p]) - mu) * is * b));
        }
      }
    });
  });
}

// Batch norm on channels-last memory (Backend::batch_norm_nhwc): x is [rows, C] with the statistics per
// column (sum_over_rows); the normalisation runs row by row along the contiguous channels.

void CpuBackend::batch_norm_nhwc(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean,
                                 Tensor& invstd, double eps, bool training, Tensor& y) {
  visit_float(x.dtype(), "batch_norm_nhwc", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = x.size(-1), rows = x.numel() / std::max<int64_t>(C, 1);
    const T *px = x.data<T>(), *pw = data_or_null<T>(weight), *pb = data_or_null<T>(bias);
    T* py = y.data<T>();
    Stat sm(mean, "batch_norm_nhwc"), si(invstd, "batch_norm_nhwc");
    std::vector<double> mu(static_cast<size_t>(C)), is(static_cast<size_t>(C));
    if (training) {  // batch mean and biased variance over the rows, two passes
      mu = sum_over_rows(rows, C, [&](int64_t r, double* __restrict acc) {
        for (int64_t c = 0; c < C; ++c) acc[c] += double(px[r * C + c]);
      });
      for (double& m : mu) m /= double(rows);
      const std::vector<double> var = sum_over_rows(rows, C, [&](int64_t r, double* __restrict acc) {
        for (int64_t c = 0; c < C; ++c) { const double d = double(px[r * C + c]) - mu[size_t(c)]; acc[c] += d * d; }
      });
      for (int64_t c = 0; c < C; ++c) {
        is[size_t(c)] = 1.0 / std::sqrt(var[size_t(c)] / double(rows) + eps);
        sm.set(c, mu[size_t(c)]);
        si.set(c, is[size_t(c)]);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) mu[size_t(c)] = sm.get(c), is[size_t(c)] = si.get(c);
    }
    // y = x·scale + shift with scale = w·invstd, shift = b − μ·scale
    std::vector<double> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      scale[size_t(c)] = (pw ? double(pw[c]) : 1.0) * is[size_t(c)];
      shift[size_t(c)] = (pb ? double(pb[c]) : 0.0) - mu[size_t(c)] * scale[size_t(c)];
    }
    parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c) py[r * C + c] = T(double(px[r * C + c]) * scale[size_t(c)] + shift[size_t(c)]);
    });
  });
}

void CpuBackend::batch_norm_nhwc_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                          const Tensor& mean, const Tensor& invstd, bool training, Tensor& dx,
                                          Tensor& dweight, Tensor& dbias) {
  visit_float(x.dtype(), "batch_norm_nhwc_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t C = x.size(-1), rows = x.numel() / std::max<int64_t>(C, 1);
    const T *px = x.data<T>(), *pg = dy.data<T>(), *pw = data_or_null<T>(weight);
    T *pdx = mut_or_null<T>(dx), *pdw = mut_or_null<T>(dweight), *pdb = mut_or_null<T>(dbias);
    Stat sm(mean, "batch_norm_nhwc_backward"), si(invstd, "batch_norm_nhwc_backward");
    std::vector<double> mu(static_cast<size_t>(C)), is(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) mu[size_t(c)] = sm.get(c), is[size_t(c)] = si.get(c);
    // Σ dy and Σ dy·x̂ over the rows, side by side
    const std::vector<double> s = sum_over_rows(rows, 2 * C, [&](int64_t r, double* __restrict acc) {
      for (int64_t c = 0; c < C; ++c) {
        const double g = double(pg[r * C + c]);
        acc[c] += g;
        acc[C + c] += g * (double(px[r * C + c]) - mu[size_t(c)]) * is[size_t(c)];
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      if (pdw) pdw[c] = T(s[size_t(C + c)]);
      if (pdb) pdb[c] = T(s[size_t(c)]);
    }
    if (!pdx) return;
    // Train: dx = w·invstd·(dy − mean(dy) − x̂·mean(dy⊙x̂)); eval: the statistics are constants, dx = w·invstd·dy.
    std::vector<double> k(static_cast<size_t>(C)), a(static_cast<size_t>(C)), b(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      k[size_t(c)] = (pw ? double(pw[c]) : 1.0) * is[size_t(c)];
      a[size_t(c)] = training ? s[size_t(c)] / double(rows) : 0.0;
      b[size_t(c)] = training ? s[size_t(C + c)] / double(rows) : 0.0;
    }
    parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const size_t u = size_t(c);
          pdx[r * C + c] = T(k[u] * (double(pg[r * C + c]) - a[u] - (double(px[r * C + c]) - mu[u]) * is[u] * b[u]));
        }
    });
  });
}

// ================================================================ attention
namespace {

// Heads are processed in chunks whose score matrices [chunk, Tq, Tk] stay within ~4M elements; each chunk
// is one batched GEMM per product, so many small heads and few large ones both keep the GEMM busy.
int64_t attention_chunk(int64_t BH, int64_t Tq, int64_t Tk) {
  return std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(Tq * Tk, 1), 1, std::max<int64_t>(BH, 1));
}

// Runs `heads(h0, nb, buffers)` over all BH heads. With at least two heads per thread, each thread takes
// whole heads one at a time, with its own score buffers: a head's [Tq, Tk] scores are made, used and
// dropped while they sit in the core's cache, and the GEMMs inside (nested, so serial) need no hand-offs.
// Fewer heads than that (one image, one head): chunks of heads in turn, each GEMM using every thread.
template <typename Heads>
void for_heads(int64_t BH, int64_t Tq, int64_t Tk, DType dt, int n_buffers, const Heads& heads) {
  auto buffers = [&](int64_t nb) {
    std::vector<Tensor> b;
    for (int i = 0; i < n_buffers; ++i) b.push_back(Tensor::empty({nb, Tq, Tk}, dt));
    return b;
  };
  if (BH >= 2 * int64_t(num_threads())) {
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Tensor> b = buffers(1);
      for (int64_t h = b0; h < b1; ++h) heads(h, 1, b);
    });
    return;
  }
  const int64_t chunk = attention_chunk(BH, Tq, Tk);
  std::vector<Tensor> b = buffers(chunk);
  for (int64_t h0 = 0; h0 < BH; h0 += chunk) heads(h0, std::min(chunk, BH - h0), b);
}

// One row of scores in place: p = exp(s − max) / Σ; returns lse = max + log Σ. Float rows: the maximum
// over 16-lane vectors, then exp (16 float lanes) and the denominator in one pass, the sum in two 8-lane
// double vectors; the lanes are combined as trees (depth 4) and the tail added after them, an order fixed by
// n. Rows of 16-64 scores (a small model's heads) had spent most of their time in the serial parts: a
// 16-lane sum added up one lane at a time and a separate pass to sum. Double rows use std::exp.
template <typename T> double softmax_row(T* row, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    using cpu::f32x16, cpu::f64x8;
    constexpr int64_t L = cpu::kF32Lanes;
    const float lowest = -std::numeric_limits<float>::infinity();
    int64_t j = 0;
    f32x16 vmax = f32x16{} + lowest;
    for (; j + L <= n; j += L) {
      const f32x16 x = cpu::load16(row + j);
      vmax = x > vmax ? x : vmax;  // a NaN score is passed over, as std::max(m, NaN) does below
    }
    float t[L];
    std::memcpy(t, &vmax, sizeof t);
    for (int64_t w = L / 2; w >= 1; w /= 2)
      for (int64_t i = 0; i < w; ++i) t[i] = t[i + w] > t[i] ? t[i + w] : t[i];
    float m = t[0];
    for (; j < n; ++j) m = std::max(m, row[j]);
    f64x8 lo = {}, hi = {};
    for (j = 0; j + L <= n; j += L) {
      const f32x16 x = cpu::load16(row + j) - m;
      f32x16 e;
      for (int64_t l = 0; l < L; ++l) e[l] = cpu::exp_float(x[l]);
      cpu::store16(row + j, e);
      lo += cpu::widen_low8(e), hi += cpu::widen_high8(e);
    }
    double d[8];
    lo += hi;
    std::memcpy(d, &lo, sizeof d);
    for (int64_t w = 4; w >= 1; w /= 2)
      for (int64_t i = 0; i < w; ++i) d[i] += d[i + w];
    double s = d[0];
    for (; j < n; ++j) s += double(row[j] = cpu::exp_float(row[j] - m));
    const float inv = float(1.0 / s);
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
    return double(m) + std::log(s);
  } else {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
    double s = 0;
    for (int64_t j = 0; j < n; ++j) { row[j] = std::exp(row[j] - m); s += double(row[j]); }
    const T inv = T(1.0 / s);
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    return double(m) + std::log(s);
  }
}

// exp(x − l) in T, x and l in double: the backward's recomputed probabilities. For float, x − l is rounded
// to float first, as the forward's s − max is: the float exp (16 lanes) is what makes these loops cheap.
template <typename T> [[gnu::always_inline]] inline T exp_shifted(double x, double l) {
  if constexpr (std::is_same_v<T, float>) return cpu::exp_float(float(x - l));
  else return T(std::exp(x - l));
}

// Heads with few keys, row by row in float (a small model's attention: cvt-tiny's 64 × 16 and 17 × 5
// products, over 32 and 64): products this small spend most of a GEMM call in its set-up and epilogue. At
// 64 px, batch 32, its second stage's heads (16 keys) took 0.87 ms forward and 1.84 ms backward a call
// through the GEMMs and take 0.56-0.60 and 0.97-1.29 ms here; its third stage's (5 keys) are level; its
// first stage's (64 keys) are faster through the GEMMs (0.98 against 1.15 ms forward, 2.0 against 3.8
// backward, where dK and dV accumulate row by row in memory), hence at most 32 keys. Per head K and V are
// copied once into zero-padded panels (Kᵀ [D, 16·⌈Tk/16⌉], V [Tk, 16·⌈D/16⌉]); a row's scores are then D
// multiply-adds into ⌈Tk/16⌉ vectors and its output Tk multiply-adds into ⌈D/16⌉ vectors, all held in
// registers (accumulating in memory made every step wait on the previous one's store). Each sum runs in
// a fixed order (index order, or with fewer than 4 vectors round-robin over 4/C running sums added in
// order: weighted_rows) and scale multiplies a finished sum, as the GEMM's alpha does; the softmax and the
// backward's formulas are the GEMM route's.
constexpr int64_t kRowHeadsMaxKeys = 32, kRowHeadsMaxDim = 128, kLane = cpu::kF32Lanes;
using lanes = cpu::f32x16;
int64_t pad16(int64_t n) { return (n + kLane - 1) / kLane * kLane; }

// Where row t of head bh (bh = b·H + h) starts: head-major [B, H, T, D] memory (attention's), or tokens
// [B, T, H·D] (attention_tokens': the heads read and written in place).
struct HeadRows {
  int64_t H, T, D;
  bool tokens;
  int64_t base(int64_t bh) const { return tokens ? (bh / H) * T * H * D + (bh % H) * D : bh * T * D; }
  int64_t stride() const { return tokens ? H * D : D; }  // from one row of a head to the next
};

struct HeadPanels {  // one head's K and V in the padded layouts above
  int64_t Tk, D, tk_pad, d_pad;
  std::vector<float> kt, vp;
  HeadPanels(int64_t tk, int64_t d)
      : Tk(tk), D(d), tk_pad(pad16(tk)), d_pad(pad16(d)), kt(static_cast<size_t>(d * pad16(tk)), 0.f),
        vp(static_cast<size_t>(tk * pad16(d)), 0.f) {}
  void load(const float* k, const float* v, const HeadRows& rows, int64_t bh) {
    const int64_t b = rows.base(bh), st = rows.stride();
    for (int64_t t = 0; t < Tk; ++t)
      for (int64_t d = 0; d < D; ++d) kt[size_t(d * tk_pad + t)] = k[b + t * st + d];
    for (int64_t t = 0; t < Tk; ++t) std::copy(v + b + t * st, v + b + t * st + D, vp.data() + t * d_pad);
  }
};

// out[0 : 16·C] = Σ_{r < R} w[r]·x[r·ld : r·ld + 16·C], C vectors in registers. With fewer than 4 vectors
// the rows are dealt round-robin to S = 4/C running sums per vector, added in order at the end: one sum per
// vector would make each multiply-add wait on the one before (a 17 × 5 head's scores over 64 dims were a
// chain of 64, ~10 GFLOP/s).
template <int C> void weighted_rows(const float* w, const float* x, int64_t R, int64_t ld, float* out) {
  constexpr int S = C >= 4 ? 1 : 4 / C;
  lanes acc[S][C] = {};
  int64_t r = 0;
  for (; r + S <= R; r += S)
    for (int s = 0; s < S; ++s) {
      const lanes wr = lanes{} + w[r + s];
      for (int c = 0; c < C; ++c) acc[s][c] += wr * cpu::load16(x + (r + s) * ld + c * kLane);
    }
  for (; r < R; ++r) {
    const lanes wr = lanes{} + w[r];
    for (int c = 0; c < C; ++c) acc[0][c] += wr * cpu::load16(x + r * ld + c * kLane);
  }
  for (int s = 1; s < S; ++s)
    for (int c = 0; c < C; ++c) acc[0][c] += acc[s][c];
  std::memcpy(out, acc[0], sizeof acc[0]);
}
void weighted_rows(const float* w, const float* x, int64_t R, int64_t ld, int64_t vectors, float* out) {
  switch (vectors) {
    case 1: return weighted_rows<1>(w, x, R, ld, out);
    case 2: return weighted_rows<2>(w, x, R, ld, out);
    case 3: return weighted_rows<3>(w, x, R, ld, out);
    case 4: return weighted_rows<4>(w, x, R, ld, out);
    case 5: return weighted_rows<5>(w, x, R, ld, out);
    case 6: return weighted_rows<6>(w, x, R, ld, out);
    case 7: return weighted_rows<7>(w, x, R, ld, out);
    case 8: return weighted_rows<8>(w, x, R, ld, out);
    default: fail("attention: a row-by-row head of " + std::to_string(vectors) + " vectors");  // never dispatched
  }
}

// s[0 : tk_pad] = scale · a·Kᵀ for the Tk keys (the padding's entries are a·0, unscaled and never read)
void row_scores(const float* a, const HeadPanels& hp, const float* kt, float scale, float* s) {
  weighted_rows(a, kt, hp.D, hp.tk_pad, hp.tk_pad / kLane, s);
  for (int64_t j = 0; j < hp.Tk; ++j) s[j] *= scale;
}

// o[0:D] = alpha · Σ_j w[j]·x[j, :] for x in the padded layout [Tk, d_pad]; tmp holds d_pad floats.
void row_combine(const float* w, const HeadPanels& hp, const float* x, float alpha, float* tmp, float* o) {
  weighted_rows(w, x, hp.Tk, hp.d_pad, hp.d_pad / kLane, tmp);
  for (int64_t d = 0; d < hp.D; ++d) o[d] = alpha == 1.f ? tmp[d] : tmp[d] * alpha;
}

void row_heads_forward(const float* q, const float* k, const float* v, float scale, int64_t BH, int64_t Tq,
                       int64_t Tk, int64_t D, float* out, const Stat& sl, const HeadRows& qrows,
                       const HeadRows& krows) {
  constexpr int64_t kRows = 32;  // rows per task, so one head with many queries still uses every thread
  const int64_t blocks = (Tq + kRows - 1) / kRows;
  parallel_for(BH * blocks, 1, [&](int64_t t0, int64_t t1) {
    HeadPanels hp(Tk, D);
    std::vector<float> s(static_cast<size_t>(hp.tk_pad)), tmp(static_cast<size_t>(hp.d_pad));
    int64_t loaded = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / blocks, i0 = (t % blocks) * kRows, i1 = std::min(Tq, i0 + kRows);
      if (h != loaded) hp.load(k, v, krows, h);
      loaded = h;
      const int64_t qbase = qrows.base(h), qstride = qrows.stride();
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = h * Tq + i, at = qbase + i * qstride;
        row_scores(q + at, hp, hp.kt.data(), scale, s.data());
        sl.set(r, softmax_row(s.data(), Tk));
        row_combine(s.data(), hp, hp.vp.data(), 1.f, tmp.data(), out + at);
      }
    }
  });
}

// dK and dV sum over every query of a head, so a head is one task; their sums run over the queries in order.
void row_heads_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                        const Stat& sl, float scale, int64_t BH, int64_t Tq, int64_t Tk, int64_t D, float* dq,
                        float* dk, float* dv, const HeadRows& qrows, const HeadRows& krows) {
  parallel_for(BH, 1, [&](int64_t h0, int64_t h1) {
    HeadPanels hp(Tk, D);
    // Vᵀ in K's padded layout (for dP = dO·Vᵀ) and K in V's (for dQ = dS·K)
    HeadPanels swapped(Tk, D);
    std::vector<float> p(static_cast<size_t>(hp.tk_pad)), ds(static_cast<size_t>(hp.tk_pad)),
        tmp(static_cast<size_t>(hp.d_pad));
    for (int64_t h = h0; h < h1; ++h) {
      hp.load(k, v, krows, h);
      swapped.load(v, k, krows, h);
      const int64_t kbase = krows.base(h), ks = krows.stride(), qbase = qrows.base(h), qs = qrows.stride();
      for (int64_t j = 0; j < Tk; ++j) {
        if (dk) std::fill(dk + kbase + j * ks, dk + kbase + j * ks + D, 0.f);
        if (dv) std::fill(dv + kbase + j * ks, dv + kbase + j * ks + D, 0.f);
      }
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t r = h * Tq + i, at = qbase + i * qs;
        const float *qi = q + at, *gi = dout + at, *oi = out + at;
        const double l = sl.get(r);
        row_scores(qi, hp, hp.kt.data(), scale, p.data());  // P = exp(scale · q·kᵀ − lse)
        for (int64_t j = 0; j < Tk; ++j) p[size_t(j)] = cpu::exp_float(float(double(p[size_t(j)]) - l));
        // rowsum(dO ⊙ O) = Σ_j P_ij dP_ij, in 16 double lanes (one running sum was a chain of D adds)
        const double di = cpu::lane_sum(D, [&](int64_t d) { return double(gi[d]) * double(oi[d]); });
        row_scores(gi, hp, swapped.kt.data(), 1.f, ds.data());  // dP = dO·Vᵀ
        for (int64_t j = 0; j < Tk; ++j) ds[size_t(j)] = float(double(p[size_t(j)]) * (double(ds[size_t(j)]) - di));
        if (dq) row_combine(ds.data(), hp, swapped.vp.data(), scale, tmp.data(), dq + at);  // dQ = scale · dS K
        for (int64_t j = 0; j < Tk; ++j) {  // dV += Pᵀ dO, dK += dSᵀ Q (scaled at the end)
          const float pj = p[size_t(j)], dsj = ds[size_t(j)];
          float *dvj = dv ? dv + kbase + j * ks : nullptr, *dkj = dk ? dk + kbase + j * ks : nullptr;
          if (dvj)
            for (int64_t d = 0; d < D; ++d) dvj[d] += pj * gi[d];
          if (dkj)
            for (int64_t d = 0; d < D; ++d) dkj[d] += dsj * qi[d];
        }
      }
      if (dk)
        for (int64_t j = 0; j < Tk; ++j)
          for (int64_t d = 0; d < D; ++d) dk[kbase + j * ks + d] *= scale;
    }
  });
}

// Float heads past 32 keys, a block of query rows at a time: S = scale·Q·Kᵀ for kRows queries into a buffer
// that stays in the core's cache, their softmax, then out = P·V, with K and V packed once per head for all
// of its blocks (PackedB), the queries and the probabilities read in place. gemm_f32_packed forms the GEMM's
// sums in the GEMM's order, so the results are those of the head-at-a-time GEMM route this replaced (which
// packed both operands of every product and sent each head's scores out to memory and back: CvT-13's first
// stage has 3136 × 784 of them, 9.8 MB a head).
void blocked_heads_forward(const float* q, const float* k, const float* v, float scale, int64_t BH, int64_t Tq,
                           int64_t Tk, int64_t D, float* out, const Stat& sl, const HeadRows& qrows,
                           const HeadRows& krows) {
  // A block's scores: up to 2^16 floats (256 KiB), whole register tiles of the GEMM's rows, at least 64
  // rows. Fewer rows than fit would stream the packed K's panels for fewer rows each (ViT-B/16's 197 × 197
  // heads ran 3 % slower in blocks of 64 than whole).
  const int64_t kRows =
      std::min(Tq, std::max<int64_t>(64, (int64_t(1) << 16) / Tk / kGemmTileRows * kGemmTileRows));
  const int64_t blocks = (Tq + kRows - 1) / kRows;
  parallel_for(BH * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(static_cast<size_t>(kRows * Tk));  // kRows <= Tq
    PackedB kt, vp;
    int64_t loaded = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / blocks, i0 = (t % blocks) * kRows, rows = std::min(kRows, Tq - i0);
      if (h != loaded) {
        kt.pack(k + krows.base(h), krows.stride(), true, D, Tk);  // Kᵀ [D, Tk]
        vp.pack(v + krows.base(h), krows.stride(), false, Tk, D);
        loaded = h;
      }
      const int64_t at = qrows.base(h) + i0 * qrows.stride();
      gemm_f32_packed(q + at, qrows.stride(), false, kt, s.data(), Tk, rows, scale, 0.f);
      for (int64_t r = 0; r < rows; ++r) sl.set(h * Tq + i0 + r, softmax_row(s.data() + r * Tk, Tk));
      gemm_f32_packed(s.data(), Tk, false, vp, out + at, qrows.stride(), rows, 1.f, 0.f);
    }
  });
}

// The backward of those heads, a head per task (dK and dV sum over all of its queries), in blocks of
// kGemmDepthPanel (384) query rows: one depth panel each of the GEMM route's dV = Pᵀ·dO and
// dK = scale·dSᵀ·Q, so that every sum keeps that route's terms and order, and the results its bits (as in
// the forward); K, Kᵀ and Vᵀ packed once per head, a block's P and dS kept in cache between their products:
//   P = exp(scale·Q_b·Kᵀ − lse), dP = dO_b·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)),
//   dQ_b = scale·dS·K, dV += P_bᵀ·dO_b, dK += scale·dS_bᵀ·Q_b.
// With fewer than two heads a thread, the GEMM route instead (its products spread over the threads).
constexpr int64_t kBlockedBackwardRows = kGemmDepthPanel;
// The blocks mirror the GEMM route's depth panels, not its depth slices: heads whose dK and dV products
// (Tk × D over Tq queries) the GEMM splits (gemm_splits_depth: thousands of queries over a few keys) take the
// GEMM route on every thread count, so that which route runs never changes the bits.
bool blocked_backward_pays(int64_t BH, int64_t Tq, int64_t Tk, int64_t D) {
  return BH >= 2 * int64_t(num_threads()) && !gemm_splits_depth(Tk, D, Tq);
}

void blocked_heads_backward(const float* dout, const float* q, const float* k, const float* v, const float* out,
                            const Stat& sl, float scale, int64_t BH, int64_t Tq, int64_t Tk, int64_t D, float* dq,
                            float* dk, float* dv, const HeadRows& qrows, const HeadRows& krows) {
  constexpr int64_t kRows = kBlockedBackwardRows;
  parallel_for(BH, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> p(static_cast<size_t>(std::min(kRows, Tq) * Tk)), ds(p.size());
    PackedB kt, vt, kp, block;
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t kbase = krows.base(h), ks = krows.stride(), qs = qrows.stride();
      kt.pack(k + kbase, ks, true, D, Tk);             // Kᵀ [D, Tk], for the scores
      vt.pack(v + kbase, ks, true, D, Tk);             // Vᵀ, for dP
      if (dq) kp.pack(k + kbase, ks, false, Tk, D);    // K [Tk, D], for dQ
      for (int64_t i0 = 0; i0 < Tq; i0 += kRows) {
        const int64_t rows = std::min(kRows, Tq - i0), at = qrows.base(h) + i0 * qs;
        const float beta = i0 == 0 ? 0.f : 1.f;  // dK and dV: the first block stores, the others add
        gemm_f32_packed(q + at, qs, false, kt, p.data(), Tk, rows, scale, 0.f);
        gemm_f32_packed(dout + at, qs, false, vt, ds.data(), Tk, rows, 1.f, 0.f);
        for (int64_t r = 0; r < rows; ++r) {
          const double l = sl.get(h * Tq + i0 + r);
          const double di = cpu::dot_in_double(dout + at + r * qs, out + at + r * qs, D);  // rowsum(dO ⊙ O)
          float *prow = p.data() + r * Tk, *drow = ds.data() + r * Tk;
          for (int64_t j = 0; j < Tk; ++j) {
            prow[j] = exp_shifted<float>(double(prow[j]), l);
            drow[j] = float(double(prow[j]) * (double(drow[j]) - di));
          }
        }
        if (dq) gemm_f32_packed(ds.data(), Tk, false, kp, dq + at, qs, rows, scale, 0.f);
        if (dv) {
          block.pack(dout + at, qs, false, rows, D);
          gemm_f32_packed(p.data(), Tk, true, block, dv + kbase, ks, Tk, 1.f, beta);
        }
        if (dk) {
          block.pack(q + at, qs, false, rows, D);
          gemm_f32_packed(ds.data(), Tk, true, block, dk + kbase, ks, Tk, scale, beta);
        }
      }
    }
  });
}

}  // namespace

// bf16 heads: scores, probabilities and their gradients in fp32 (Compute<T>), products of bf16 operands
// (the probabilities and score gradients rounded once to bf16 for theirs), outputs rounded once.
void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out,
                           Tensor& lse) {
  visit_float_or_bf16(q.dtype(), "attention", [&](auto tag) {
    using C = Compute<decltype(tag)>;
    const int64_t BH = q.size(0) * q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
    Stat sl(lse, "attention");
    if constexpr (std::is_same_v<decltype(tag), float>) {
      if (Tk >= 1 && Tk <= kRowHeadsMaxKeys && D >= 1 && D <= kRowHeadsMaxDim)
        return row_heads_forward(q.data<float>(), k.data<float>(), v.data<float>(), float(scale), BH, Tq, Tk, D,
                                 out.data<float>(), sl, HeadRows{1, Tq, D, false}, HeadRows{1, Tk, D, false});
      if (Tq >= 1 && Tk >= 1 && D >= 1)
        return blocked_heads_forward(q.data<float>(), k.data<float>(), v.data<float>(), float(scale), BH, Tq, Tk,
                                     D, out.data<float>(), sl, HeadRows{1, Tq, D, false}, HeadRows{1, Tk, D, false});
    }
    for_heads(BH, Tq, Tk, dtype_of<C>::value, 1, [&](int64_t h0, int64_t nb, std::vector<Tensor>& buf) {
      Tensor& S = buf[0];
      // S = scale · Q Kᵀ
      run_gemm(false, true, nb, Tq, Tk, D, scale, 0.0, window(q, h0 * Tq * D, {nb * Tq * D}), Tq * D,
               window(k, h0 * Tk * D, {nb * Tk * D}), Tk * D, S, Tq * Tk);
      // P = exp(S − lse) row by row, lse = max + log Σ exp(S − max)
      C* ps = S.data<C>();
      parallel_for(nb * Tq, row_grain(Tk), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) sl.set(h0 * Tq + r, softmax_row(ps + r * Tk, Tk));
      });
      // out = P V
      run_gemm(false, false, nb, Tq, D, Tk, 1.0, 0.0, stored_as(S, q.dtype()), Tq * Tk,
               window(v, h0 * Tk * D, {nb * Tk * D}), Tk * D, window(out, h0 * Tq * D, {nb * Tq * D}), Tq * D);
    });
  });
}

void CpuBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, double scale, Tensor& dq,
                                    Tensor& dk, Tensor& dv) {
  visit_float_or_bf16(q.dtype(), "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    using C = Compute<T>;
    const int64_t BH = q.size(0) * q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
    Stat sl(lse, "attention_backward");
    if constexpr (std::is_same_v<T, float>) {
      const HeadRows qrows{1, Tq, D, false}, krows{1, Tk, D, false};
      if (Tk >= 1 && Tk <= kRowHeadsMaxKeys && D >= 1 && D <= kRowHeadsMaxDim)
        return row_heads_backward(dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(),
                                  out.data<float>(), sl, float(scale), BH, Tq, Tk, D, mut_or_null<float>(dq),
                                  mut_or_null<float>(dk), mut_or_null<float>(dv), qrows, krows);
      if (Tq >= 1 && Tk >= 1 && D >= 1 && blocked_backward_pays(BH, Tq, Tk, D))  // no queries: the route's zero dK, dV
        return blocked_heads_backward(dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(),
                                      out.data<float>(), sl, float(scale), BH, Tq, Tk, D, mut_or_null<float>(dq),
                                      mut_or_null<float>(dk), mut_or_null<float>(dv), qrows, krows);
    }
    for_heads(BH, Tq, Tk, dtype_of<C>::value, 2, [&](int64_t h0, int64_t nb, std::vector<Tensor>& buf) {
      Tensor &P = buf[0], &dS = buf[1];
      auto qw = [&](const Tensor& t) { return window(t, h0 * Tq * D, {nb * Tq * D}); };
      auto kw = [&](const Tensor& t) { return window(t, h0 * Tk * D, {nb * Tk * D}); };
      // Recompute P = exp(scale · Q Kᵀ − lse) instead of having saved it (Tq·Tk per head).
      run_gemm(false, true, nb, Tq, Tk, D, scale, 0.0, qw(q), Tq * D, kw(k), Tk * D, P, Tq * Tk);
      // dP = dO Vᵀ
      run_gemm(false, true, nb, Tq, Tk, D, 1.0, 0.0, qw(dout), Tq * D, kw(v), Tk * D, dS, Tq * Tk);
      const T *pdo = dout.data<T>() + h0 * Tq * D, *po = out.data<T>() + h0 * Tq * D;
      C *pp = P.data<C>(), *pds = dS.data<C>();
      parallel_for(nb * Tq, row_grain(Tk + D), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const double l = sl.get(h0 * Tq + r);
          double di = 0;  // rowsum(dO ⊙ O) = Σ_j P_ij dP_ij
          if constexpr (std::is_same_v<T, float>) di = cpu::dot_in_double(pdo + r * D, po + r * D, D);
          else
            for (int64_t d = 0; d < D; ++d) di += to_double(pdo[r * D + d]) * to_double(po[r * D + d]);
          C *prow = pp + r * Tk, *drow = pds + r * Tk;
          for (int64_t j = 0; j < Tk; ++j) {
            prow[j] = exp_shifted<C>(double(prow[j]), l);
            drow[j] = C(double(prow[j]) * (double(drow[j]) - di));  // dS = P ⊙ (dP − D_i)
          }
        }
      });
      if (dv.defined())  // dV = Pᵀ dO
        run_gemm(true, false, nb, Tk, D, Tq, 1.0, 0.0, stored_as(P, q.dtype()), Tq * Tk, qw(dout), Tq * D, kw(dv), Tk * D);
      const Tensor dSs = dq.defined() || dk.defined() ? stored_as(dS, q.dtype()) : dS;
      if (dq.defined())  // dQ = scale · dS K
        run_gemm(false, false, nb, Tq, D, Tk, scale, 0.0, dSs, Tq * Tk, kw(k), Tk * D, qw(dq), Tq * D);
      if (dk.defined())  // dK = scale · dSᵀ Q
        run_gemm(true, false, nb, Tk, D, Tq, scale, 0.0, dSs, Tq * Tk, qw(q), Tq * D, kw(dk), Tk * D);
    });
  });
}

// Token-major heads in place where the float kernels read rows through HeadRows: the forward always, the
// backward row by row (at most 32 keys: a small CvT's later stages) or in blocks (two heads a thread or
// more); otherwise the composite's copies around attention(_backward).
namespace {
bool row_heads_in_place(const Tensor& q, const Tensor& k, int64_t heads) {
  const int64_t D = q.size(2) / heads, Tk = k.size(1);
  return q.dtype() == DType::f32 && Tk >= 1 && Tk <= kRowHeadsMaxKeys && D >= 1 && D <= kRowHeadsMaxDim;
}
}  // namespace

void CpuBackend::attention_tokens(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale,
                                  Tensor& out, Tensor& lse) {
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), D = q.size(2) / heads;
  if (q.dtype() != DType::f32 || Tq < 1 || Tk < 1 || D < 1)
    return Backend::attention_tokens(q, k, v, heads, scale, out, lse);
  Stat sl(lse, "attention_tokens");
  const HeadRows qrows{heads, Tq, D, true}, krows{heads, Tk, D, true};
  if (row_heads_in_place(q, k, heads))
    return row_heads_forward(q.data<float>(), k.data<float>(), v.data<float>(), float(scale), B * heads, Tq, Tk,
                             D, out.data<float>(), sl, qrows, krows);
  blocked_heads_forward(q.data<float>(), k.data<float>(), v.data<float>(), float(scale), B * heads, Tq, Tk, D,
                        out.data<float>(), sl, qrows, krows);
}

void CpuBackend::attention_tokens_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& out, const Tensor& lse, int64_t heads, double scale,
                                           Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), D = q.size(2) / heads;
  const bool rows = row_heads_in_place(q, k, heads);
  const bool blocked = q.dtype() == DType::f32 && Tq >= 1 && Tk >= 1 && D >= 1 && blocked_backward_pays(B * heads, Tq, Tk, D);
  if (!rows && !blocked)
    return Backend::attention_tokens_backward(dout, q, k, v, out, lse, heads, scale, dq, dk, dv);
  Stat sl(lse, "attention_tokens_backward");
  const auto run = rows ? row_heads_backward : blocked_heads_backward;
  run(dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(), sl, float(scale),
      B * heads, Tq, Tk, D, mut_or_null<float>(dq), mut_or_null<float>(dk), mut_or_null<float>(dv),
      HeadRows{heads, Tq, D, true}, HeadRows{heads, Tk, D, true});
}

// ================================================================ cross-entropy
// torch.nn.functional.cross_entropy with reduction "mean" (aten/src/ATen/native/LossNLL.cpp,
// cross_entropy_loss_label_smoothing + nll_loss): with logp = log_softmax(logits), over non-ignored rows i,
//   W = Σ_i w[y_i],  nll = Σ_i −w[y_i]·logp[i, y_i],  smooth = Σ_i Σ_c −w[c]·logp[i, c]   (w ≡ 1 if none)
//   loss = (1 − ε)·nll / W + (ε / C)·smooth / W.
// When every target is ignored W = 0 and the loss is 0/0 = NaN, as in torch; the gradient is then zero.
namespace {

// Checks every target and returns W = Σ w[y_i] over the non-ignored rows.
template <typename T>
double check_targets(const int64_t* tg, int64_t N, int64_t C, const T* w, int64_t ignore_index) {
  double W = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = tg[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= C)
      fail("cross_entropy: target " + std::to_string(t) + " at index " + std::to_string(i) +
           " is out of range for " + std::to_string(C) + " classes (ignore_index is " +
           std::to_string(ignore_index) + ")");
    W += w ? double(w[t]) : 1.0;
  }
  return W;
}

}  // namespace

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight,
                               double label_smoothing, int64_t ignore_index, Tensor& loss) {
  visit_float(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = logits.size(0), C = logits.size(1);
    const T *px = logits.data<T>(), *pw = data_or_null<T>(weight);
    const int64_t* tg = target.data<int64_t>();
    const double W = check_targets(tg, N, C, pw, ignore_index);
    const double eps = label_smoothing;
    std::vector<double> nll(size_t(N), 0.0), smooth(size_t(N), 0.0);
    parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t t = tg[i];
        if (t == ignore_index) continue;
        const T* xr = px + i * C;
        double m = -std::numeric_limits<double>::infinity(), s = 0;
        for (int64_t c = 0; c < C; ++c) m = std::max(m, double(xr[c]));
        for (int64_t c = 0; c < C; ++c) s += std::exp(double(xr[c]) - m);
        const double lse = m + std::log(s);
        nll[size_t(i)] = -(pw ? double(pw[t]) : 1.0) * (double(xr[t]) - lse);
        if (eps > 0) {
          double sm = 0;
          for (int64_t c = 0; c < C; ++c) sm -= (pw ? double(pw[c]) : 1.0) * (double(xr[c]) - lse);
          smooth[size_t(i)] = sm;
        }
      }
    });
    // Serial sums in row order: the loss does not depend on the thread count.
    double a = 0, b = 0;
    for (int64_t i = 0; i < N; ++i) { a += nll[size_t(i)]; b += smooth[size_t(i)]; }
    double value = (1 - eps) * a / W;
    if (eps > 0) value += eps / double(C) * b / W;
    loss.data<T>()[0] = T(value);
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                                        double label_smoothing, int64_t ignore_index, const Tensor& dloss_tensor,
                                        Tensor& dlogits) {
  const double dloss = dloss_tensor.item();
  visit_float(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t N = logits.size(0), C = logits.size(1);
    const T *px = logits.data<T>(), *pw = data_or_null<T>(weight);
    const int64_t* tg = target.data<int64_t>();
    T* pd = dlogits.data<T>();
    const double W = check_targets(tg, N, C, pw, ignore_index);
    const double eps = label_smoothing, coef = dloss / W;
    double sw = double(C);  // Σ_c w_c
    if (pw) { sw = 0; for (int64_t c = 0; c < C; ++c) sw += double(pw[c]); }
    // With d(−logp[i,k])/dz[i,j] = p_j − δ_jk:
    //   dz[i,j] = dloss/W · ((1−ε)·w[y_i]·(p_j − δ_{j,y_i}) + (ε/C)·(Σ_c w_c · p_j − w_j)).
    parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        T* dr = pd + i * C;
        const int64_t t = tg[i];
        if (t == ignore_index) { std::fill(dr, dr + C, T(0)); continue; }
        const T* xr = px + i * C;
        double m = -std::numeric_limits<double>::infinity(), s = 0;
        for (int64_t c = 0; c < C; ++c) m = std::max(m, double(xr[c]));
        for (int64_t c = 0; c < C; ++c) s += std::exp(double(xr[c]) - m);
        const double lse = m + std::log(s), wy = pw ? double(pw[t]) : 1.0;
        for (int64_t c = 0; c < C; ++c) {
          const double p = std::exp(double(xr[c]) - lse);
          double g = (1 - eps) * wy * (p - (c == t ? 1.0 : 0.0));
          if (eps > 0) g += eps / double(C) * (sw * p - (pw ? double(pw[c]) : 1.0));
          dr[c] = T(coef * g);
        }
      }
    });
  });
}

}  // namespace tessera
