// The op registry: every differentiable op (engine/ops.h) and the optimizer passes (AdamW::step,
// clip_grad_norm) listed once, with the shapes to run it at, the dtypes each device supports, the call, and
// the tolerance rule its results are held to. tests/test_backend_ops.cpp checks every entry (finite-difference
// gradients; each backend against the CPU reference); bench/bench_ops.cpp times it at its model shapes.
//
// An entry's inputs are made in f64 on the CPU. To run a case in dtype dt on a device, every floating input
// is rounded to dt and copied to the device; the reference runs on the CPU in f64 on those very rounded
// values, so a comparison measures only the op's own error. Backward: out.backward(W) with a fixed random
// W (itself rounded to dt); the input gradients are compared like the output.
//
// Tolerances. An element passes when |got − ref| ≤ atol + rtol·|ref| + mag·M + s, with s the dtype's
// smallest subnormal step and M the "magnitude" of the element: for multilinear ops (sums, matmul, conv)
// the same computation run on |inputs| and |W|, i.e. Σ|terms| of the sum that made the element. Notation:
//   u   unit roundoff of the storage type (f64 2^-53, f32 2^-24, f16 2^-11, bf16 2^-8)
//   uc  unit roundoff the op computes and accumulates in (2^-24 for f32, bf16, f16; 2^-53 for f64)
//   uo  one rounding of a 16-bit result to storage (u for bf16/f16, 0 for f32/f64, whose last rounding is
//       within the uc terms)
//   γ_L (L + 2)·uc: a sum of L terms, in ANY order (sequential, tree, split across blocks), errs by at most
//       γ_L·Σ|terms| (Higham §4.2), +2 for the final scaling and store.
// Each bound carries a factor 2 of safety (4 for chained formulas, said where used). A wrong index, a lost
// term or a wrong rule is an O(1) relative error, orders of magnitude above every bound.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/backend.h"  // Conv2dArgs (a type only: no Backend method is called)
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/devices.h"  // MatmulPrecision
#include "tests/cuda_test_util.h"

namespace tessera::opreg {

using testing::compute_roundoff;
using testing::unit_roundoff;

// Where a case runs.
enum Tag : unsigned {
  kGrad = 1,   // float64 finite differences (small: the check evaluates the op 2·numel times)
  kCpu = 2,    // CPU f32 against CPU f64 (the compare machinery, on every machine)
  kCuda = 4,   // CUDA in every supported dtype against CPU f64
  kModel = 8,  // a CvT-13 / ViT-B/16 shape: timed by bench_ops
  kExact = 16, // integer-valued data: the result must equal the reference rounded to the output dtype
  kSmall = kGrad | kCpu | kCuda,
  kOdd = kCpu | kCuda,
};

struct Input {
  Tensor value;      // f64 (rounded to the dtype under test) or an integer tensor (used as is)
  bool grad = true;  // floating inputs only: whether the op is differentiated with respect to it
};
using Inputs = std::vector<Input>;
using Call = std::function<Tensor(const std::vector<Tensor>&)>;

struct Case {
  std::string name;
  unsigned tags = kSmall;
  std::function<Inputs(Generator&)> make;
  Call call;                // views of the inputs (transposed, sliced, expanded) and the op
  Call magnitude;           // multilinear entries, where the op on |inputs| is not Σ|terms| (sub: add)
  // Where the rounding of the inputs is amplified by the data (a normalisation of nearly equal values):
  // the factor, computed from the f64 inputs, that TolCtx::cond passes to the rule.
  std::function<double(const std::vector<Tensor>&)> condition;
  std::vector<double> len;  // reduction length of the output (len[0]) and of each input's gradient (len[1+i])
  double length(int which) const { return size_t(which) < len.size() ? len[size_t(which)] : (len.empty() ? 1 : len[0]); }
};

struct TolCtx {
  DType dt;        // dtype under test
  int which;       // 0: the forward output; 1 + i: the gradient of input i
  double L;        // the case's reduction length for this result
  double max_ref;  // max |ref| over the result (normwise bounds)
  double cond = 1; // the entry's condition factor of these inputs (Entry::condition), ≥ 1
  double u() const { return unit_roundoff(dt); }
  double uc() const { return compute_roundoff(dt); }
  double uo() const { return dt == DType::bf16 || dt == DType::f16 ? unit_roundoff(dt) : 0.0; }
  bool half() const { return dt == DType::bf16 || dt == DType::f16; }
  // Error budget of one library function (exp, log, erf, pow, ...) against the f64 reference: CUDA documents
  // ≤ 4 ulp (powf) and ≤ 2 ulp for the rest, one ulp ≤ 2u, the reference adds ≤ 2u → 16u for f32/f64. 16-bit:
  // that f32 result (16·2^-24) rounded once more to storage (u) → 2u + 16·uc.
  double fn() const { return half() ? 2 * u() + 16 * uc() : 16 * u(); }
  double gamma() const { return (L + 2) * uc(); }
};
struct Tol {
  double atol = 0, rtol = 0, mag = 0;
};
using TolRule = std::function<Tol(const TolCtx&)>;

struct Entry {
  std::string name;
  std::vector<DType> cuda_dtypes;  // the CPU runs f32 and f64 for every entry, and bf16 where this lists it
  bool differentiable = true;
  bool multilinear = false;  // the magnitude M is computed (see the top of the file)
  TolRule tol;
  std::vector<Case> cases;
};

inline const std::vector<DType> kAllFloat = {DType::f32, DType::f64, DType::bf16, DType::f16};
inline const std::vector<DType> kWide = {DType::f32, DType::f64};

// ---------------------------------------------------------------- building blocks
inline Tensor uni(Generator& g, const Shape& s, double lo, double hi) { return g.uniform(s, lo, hi, DType::f64); }
// Integer values in [lo, hi]: exact in every float type, and so are their sums below 2^8 (bf16) or 2^24.
inline Tensor integers(Generator& g, const Shape& s, int lo, int hi) {
  std::vector<double> v = g.uniform(s, 0, 1, DType::f64).to_vector<double>();
  for (double& x : v) x = std::floor(lo + (hi - lo + 1) * x);
  return Tensor::from(v, s, DType::f64);
}
// |x| in [lo, hi] with a random sign: away from a kink at 0.
inline Tensor signed_away(Generator& g, const Shape& s, double lo, double hi) {
  Tensor mag = uni(g, s, lo, hi), sign = integers(g, s, 0, 1);
  return mul(mag, affine(sign, 2, -1));
}
using View = std::function<Tensor(const Tensor&)>;
inline Tensor same(const Tensor& t) { return t; }
inline double numel_of(const Shape& s) { return double(shape_numel(s)); }

// A layout: the shape an input is made at and the view the op sees.
struct Layout {
  Shape base;
  View view;
  std::string name;
  unsigned tags = kSmall;
};
inline std::vector<Layout> unary_layouts() {
  return {
      {{1}, same, "[1]"},
      {{7}, same, "[7]"},
      {{33}, same, "[33]"},
      {{3, 5}, [](const Tensor& t) { return t.transpose(0, 1); }, "[3,5]ᵀ"},
      {{1023}, same, "[1023]", kOdd},
      {{4097}, same, "[4097]", kOdd},
      {{33, 65}, [](const Tensor& t) { return t.transpose(0, 1); }, "[33,65]ᵀ", kOdd},
      {{40, 100}, [](const Tensor& t) { return t.slice(1, 3, 97, 3); }, "[40,100][:, 3:97:3]", kOdd},
      {{5, 7, 9}, [](const Tensor& t) { return t.permute({2, 0, 1}).slice(0, 1, 9, 2); }, "[5,7,9] permuted+stepped"},
      {{2 * 197, 768}, same, "[394,768] (ViT-B/16 activations)", kCuda | kModel},
  };
}

// ---------------------------------------------------------------- elementwise
// cancel: s in atol = fn·s·max|x|, the error terms proportional to |x| rather than |y| (GELU's 1 + erf(x/√2)
// cancels for x < 0; alpha·x + beta may cancel). Gradients g·f'(x) use the same functions, one more product
// and (16-bit) the stored output they are computed from: 2·fn relative, plus the same cancellation
// normwise in max|g| (tanh's 1 − y², GELU' = Φ(x) + x·φ(x) near x ≈ −0.75).
inline Entry unary(const std::string& name, std::function<Tensor(const Tensor&)> f, double lo, double hi,
                   double cancel = 0, bool away_from_zero = false) {
  Entry e{name, kAllFloat, true, false, nullptr, {}};
  const double xmax = std::max(std::fabs(lo), std::fabs(hi));
  e.tol = [cancel, xmax](const TolCtx& c) {
    if (c.which == 0) return Tol{c.fn() * cancel * xmax, c.fn(), 0};
    // The cancellation is normwise in max|W| ≤ 1 (W uniform in [-1, 1]), not in the result, which it can
    // make small: tanh's 1 − y² from a bf16 y near ±1.
    return Tol{2 * c.fn() * (c.max_ref + cancel), 2 * c.fn(), 0};
  };
  for (const Layout& l : unary_layouts()) {
    Case k;
    k.name = l.name;
    k.tags = l.tags;
    k.make = [l, lo, hi, away_from_zero](Generator& g) {
      return Inputs{{away_from_zero ? signed_away(g, l.base, lo, hi) : uni(g, l.base, lo, hi)}};
    };
    k.call = [f, view = l.view](const std::vector<Tensor>& in) { return f(view(in[0])); };
    e.cases.push_back(k);
  }
  return e;
}

struct BinaryLayout {
  Shape a, b;
  View va, vb;
  std::string name;
  unsigned tags = kSmall;
};
inline std::vector<BinaryLayout> binary_layouts() {
  auto t01 = [](const Tensor& t) { return t.transpose(0, 1); };
  return {
      {{1}, {1}, same, same, "[1] . [1]"},
      {{7}, {7}, same, same, "[7] . [7]"},
      {{3, 5}, {3, 5}, same, same, "[3,5] . [3,5]"},
      {{3, 5}, {5}, same, same, "[3,5] . [5] (row broadcast)"},
      {{3, 1}, {1, 5}, same, same, "[3,1] . [1,5] (outer)"},
      {{2, 3, 5}, {3, 1}, same, same, "[2,3,5] . [3,1]"},
      {{}, {4}, same, same, "[] . [4] (scalar)"},
      {{5, 3}, {6, 5}, t01, [](const Tensor& t) { return t.slice(0, 0, 6, 2); }, "[5,3]ᵀ . [6,5][0:6:2]"},
      {{4097}, {4097}, same, same, "[4097] . [4097]", kOdd},
      {{4097}, {1}, same, same, "[4097] . [1] (scalar broadcast)", kOdd},
      {{33, 1023}, {1023}, same, same, "[33,1023] . [1023]", kOdd},
      {{33, 1}, {1, 65}, same, same, "[33,1] . [1,65]", kOdd},
      {{5, 1, 7}, {3, 7}, same, same, "[5,1,7] . [3,7]", kSmall},
      {{65, 33}, {33}, t01, [](const Tensor& t) { return t.unsqueeze(1); }, "[33,65]ᵀ . [33,1]", kOdd},
      {{40, 100}, {40, 100}, [](const Tensor& t) { return t.slice(1, 3, 97, 3); },
       [](const Tensor& t) { return t.slice(1, 1, 95, 3); }, "stepped . stepped", kOdd},
      {{2 * 197, 768}, {768}, same, same, "[394,768] . [768] (ViT-B/16 bias)", kCuda | kModel},
  };
}
inline Shape broadcast_shape(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())], db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}
// kind: 'a' add/sub (error u·(|a| + |b|): the magnitude of the sum), 'm' mul/div/pow (relative), 'x'
// maximum and the comparisons (exact). A broadcast operand's gradient sums `L` = numel(out)/numel(operand)
// values of W·∂: γ_L times their magnitude (add/sub), normwise for the others.
inline Entry binary(const std::string& name, Tensor (*f)(const Tensor&, const Tensor&), char kind, double alo,
                    double ahi, double blo, double bhi, bool differentiable = true) {
  Entry e{name, kAllFloat, differentiable, kind == 'a', nullptr, {}};
  e.tol = [kind](const TolCtx& c) {
    // Σ of ≤ L values |W| ≤ 1, rounded once more to a 16-bit gradient
    if (kind == 'x') return c.which == 0 ? Tol{} : Tol{2 * c.gamma() * c.L, c.uo(), 0};
    if (kind == 'a') return Tol{0, c.uo(), c.which == 0 ? 2 * c.fn() : 2 * c.gamma() + c.uo()};
    // mul, div, pow: a few correctly rounded (or ≤ 4 ulp) operations; the gradients chain 2–3 of them
    // (a/b² = (a/b)/b, a^b·log a) and sum over broadcast dims.
    if (c.which == 0) return Tol{0, c.fn(), 0};
    return Tol{(2 * c.gamma() + 4 * c.fn()) * c.max_ref, 4 * c.fn(), 0};
  };
  for (const BinaryLayout& l : binary_layouts()) {
    Case k;
    k.name = l.name;
    // maximum and the comparisons are exact on any data; off the finite-difference set (where ties would be
    // kinks) they get small integers, so ties happen and even the gradients must be exact.
    const bool ints = kind == 'x' && !(l.tags & kGrad);
    k.tags = l.tags | (ints ? unsigned(kExact) : 0u);
    const bool is_div = f == static_cast<Tensor (*)(const Tensor&, const Tensor&)>(div);
    k.make = [l, ints, alo, ahi, blo, bhi, is_div](Generator& g) {
      if (ints) return Inputs{{integers(g, l.a, -2, 2)}, {integers(g, l.b, -2, 2)}};  // ties happen
      Tensor b = is_div ? signed_away(g, l.b, blo, bhi) : uni(g, l.b, blo, bhi);          // divisors of both signs
      return Inputs{{uni(g, l.a, alo, ahi)}, {b}};
    };
    k.call = [f, l](const std::vector<Tensor>& in) { return f(l.va(in[0]), l.vb(in[1])); };
    k.magnitude = [l](const std::vector<Tensor>& in) { return add(l.va(in[0]), l.vb(in[1])); };  // |a| + |b|
    const double out_n = numel_of(broadcast_shape(l.va(Tensor::empty(l.a)).shape(), l.vb(Tensor::empty(l.b)).shape()));
    k.len = {1, out_n / std::max(1.0, numel_of(l.a)), out_n / std::max(1.0, numel_of(l.b))};
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- reductions
inline Entry reduction(const std::string& name, bool is_max) {
  Entry e{name, kAllFloat, true, !is_max, nullptr, {}};
  // sum/mean: γ_L·Σ|x| (M), then one rounding of a 16-bit result (mean: two, the sum's and the scaled
  // one's); the gradient broadcasts W (exact, or one multiply by 1/L for mean). max: exact, its gradient a
  // copy of W.
  const bool is_mean = name == "mean";
  e.tol = [is_max, is_mean](const TolCtx& c) {
    if (is_max) return Tol{};
    return c.which == 0 ? Tol{0, (is_mean ? 2 : 1) * c.uo(), 2 * c.gamma()} : Tol{0, 2 * c.u(), 0};
  };
  struct R { Shape s; std::vector<int64_t> dims; bool keep; View v; std::string name; unsigned tags; };
  auto perm = [](const Tensor& t) { return t.permute({1, 0, 2}); };
  const std::vector<R> rs = {
      {{3, 4, 5}, {}, false, perm, "[4,3,5] all", kSmall},
      {{3, 4, 5}, {0}, true, perm, "[4,3,5] dim 0 keepdim", kSmall},
      {{3, 4, 5}, {1}, false, same, "[3,4,5] dim 1", kSmall},
      {{3, 4, 5}, {2}, true, [](const Tensor& t) { return t.transpose(0, 2); }, "[5,4,3] dim 2 keepdim", kSmall},
      {{3, 4, 5}, {0, 2}, false, same, "[3,4,5] dims {0,2}", kSmall},
      {{3, 4, 5}, {-1, 0}, true, perm, "[4,3,5] dims {-1,0} keepdim", kSmall},
      {{1, 1}, {-1}, false, same, "[1,1] rows", kSmall},
      {{7, 1}, {-1}, false, same, "[7,1] rows", kSmall},
      {{1, 7}, {-1}, false, same, "[1,7] rows", kSmall},
      {{100, 2}, {-1}, false, same, "[100,2] rows", kOdd},
      {{4097, 3}, {-1}, false, same, "[4097,3] rows", kOdd},
      {{33, 33}, {-1}, false, same, "[33,33] rows", kOdd},
      {{64, 64}, {-1}, false, same, "[64,64] rows", kOdd},
      {{5, 1023}, {-1}, false, same, "[5,1023] rows", kOdd},
      {{77, 768}, {-1}, false, same, "[77,768] rows", kOdd},
      {{3, 4097}, {-1}, false, same, "[3,4097] rows", kOdd},
      {{1, 100000}, {-1}, false, same, "[1,100000] rows", kOdd},
      {{33, 65, 7}, {0, 2}, false, same, "[33,65,7] dims {0,2}", kOdd},
      {{3136 * 4, 64}, {-1}, false, same, "[12544,64] rows", kCuda},
      {{1000, 5000}, {-1}, false, same, "[1000,5000] rows", kCuda},
      {{600, 4500}, {-1}, false, same, "[600,4500] rows", kCuda},
      {{10, 70001}, {-1}, false, same, "[10,70001] rows", kCuda},
      {{2, 2000000}, {-1}, false, same, "[2,2000000] rows (split across blocks)", kCuda},
      {{2 * 197, 768}, {0}, false, same, "[394,768] over tokens (ViT-B/16 bias gradient)", kCuda | kModel},
  };
  std::vector<R> all;
  for (const R& r : rs) {
    all.push_back(r);
    if (r.tags & kGrad) all.push_back({r.s, r.dims, !r.keep, r.v, r.name + (r.keep ? " (no keepdim)" : " keepdim"), kGrad});
  }
  for (const R& r : all)
    for (bool exact : {false, true}) {
      if (exact && (r.tags & kGrad)) continue;  // the integer variant is for the device comparisons
      Case k;
      k.name = r.name + (exact ? " integers" : "");
      k.tags = exact ? (r.tags & ~kModel) | kExact : r.tags;
      k.make = [r, exact](Generator& g) { return Inputs{{exact ? integers(g, r.s, -8, 8) : uni(g, r.s, -1, 1)}}; };
      k.call = [r, is_max, name](const std::vector<Tensor>& in) {
        if (is_max) return max(r.v(in[0]), r.dims, r.keep);
        return name == "mean" ? mean(r.v(in[0]), r.dims, r.keep) : sum(r.v(in[0]), r.dims, r.keep);
      };
      Shape vs = r.v(Tensor::empty(r.s)).shape();
      double L = 1;
      if (r.dims.empty()) L = numel_of(vs);
      for (int64_t d : r.dims) L *= double(vs[size_t(d < 0 ? d + int64_t(vs.size()) : d)]);
      k.len = {L, 1};
      e.cases.push_back(k);
    }
  if (!is_max)  // mean is the sum's kernel and one scaling: its own entry keeps only the small cases
    std::erase_if(e.cases, [&](const Case& k) { return name == "mean" && !(k.tags & kGrad); });
  return e;
}

// argmax: integer output, compared exactly; not differentiable. Narrow integer data makes ties (and the
// first-index rule) common.
inline Entry argmax_entry() {
  Entry e{"argmax", kAllFloat, false, false, [](const TolCtx&) { return Tol{}; }, {}};
  for (Shape s : std::vector<Shape>{{1, 1}, {7, 1}, {3, 2}, {33, 33}, {5, 1023}, {4097, 3}, {3, 4097}}) {
    Case k;
    k.name = shape_str(s) + " rows";
    k.tags = kOdd | kExact;
    k.make = [s](Generator& g) { return Inputs{{integers(g, s, -8, 8), false}}; };
    k.call = [](const std::vector<Tensor>& in) { return argmax(in[0], -1); };
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- matmul / linear
// K-term dot products: γ_K·Σ|a||b| (M); a 16-bit output rounds once more (uo). dA sums N terms, dB sums
// M·batch terms; the gradient of an operand broadcast over the batch is a sum of per-matrix products, each
// rounded to a 16-bit type before the sum: uo·Σ|partials| ≤ uo·M more. f64 on CUDA, f32 everywhere: true
// fp32 products (MatmulPrecision::Highest, the default).
inline Tol gemm_tol(const TolCtx& c) { return Tol{0, c.uo(), 2 * c.gamma() + (c.which == 0 ? 0 : c.uo())}; }

inline Entry matmul_entry() {
  Entry e{"matmul", kAllFloat, true, true, gemm_tol, {}};
  struct M { Shape a, b; View va, vb; std::vector<double> len; std::string name; unsigned tags; };
  auto tl = [](const Tensor& t) { return t.transpose(-1, -2); };
  const std::vector<M> ms = {
      {{3, 4}, {4, 5}, same, same, {4, 5, 3}, "[3,4] @ [4,5]", kSmall},
      {{2, 3, 3, 4}, {3, 4, 2}, same, same, {4, 2, 6}, "[2,3,3,4] @ [3,4,2] (batch broadcast)", kSmall},
      {{2, 4, 3}, {4, 5}, tl, same, {4, 5, 6}, "[2,4,3]ᵀ @ [4,5]", kSmall},
      {{4}, {4, 3}, same, same, {4, 3, 1}, "[4] @ [4,3]", kSmall},
      {{1, 1}, {1, 1}, same, same, {1, 1, 1}, "[1,1] @ [1,1]", kSmall},
      {{7, 65}, {65, 33}, same, same, {65, 33, 7}, "[7,65] @ [65,33]", kOdd},
      {{65, 33}, {65, 7}, tl, same, {65, 7, 33}, "[65,33]ᵀ @ [65,7]", kOdd},
      {{64, 64}, {64, 64}, same, tl, {64, 64, 64}, "[64,64] @ [64,64]ᵀ", kOdd},
      {{7, 33}, {1023, 7}, tl, tl, {7, 1023, 33}, "[7,33]ᵀ @ [1023,7]ᵀ", kOdd},
      {{9, 6}, {7, 9}, tl, tl, {9, 7, 6}, "[9,6]ᵀ @ [7,9]ᵀ (small enough for the CPU's direct loops)", kSmall},
      {{3, 17, 64}, {3, 5, 64}, same, tl, {64, 5, 51}, "[3,17,64] @ [3,5,64]ᵀ (a small model's attention scores)", kSmall},
      {{3, 17, 23}, {3, 23, 19}, same, same, {23, 19, 51}, "[3,17,23] @ [3,23,19]", kOdd},
      {{2, 1, 7, 33}, {3, 5, 33}, same, tl, {33, 5, 21}, "[2,1,7,33] @ [3,33,5]ᵀ", kOdd},
      {{97, 300}, {300, 257}, same, same, {300, 257, 97}, "[97,300] @ [300,257]", kOdd},
      // Depth over one packed panel (the CPU's fp32 256, bf16 512), and deep with a single tile (depth slices).
      {{40, 700}, {700, 70}, same, same, {700, 70, 40}, "[40,700] @ [700,70] (depth over a panel)", kOdd},
      {{2100, 9}, {17, 2100}, tl, tl, {2100, 17, 9}, "[2100,9]ᵀ @ [17,2100]ᵀ (deep, one tile: depth slices)", kOdd},
      {{256, 1024}, {1024, 256}, same, same, {1024, 256, 256}, "[256,1024] @ [1024,256]", kCuda},
      {{2, 12, 197, 64}, {2, 12, 197, 64}, same, tl, {64, 197, 197 * 24}, "ViT-B/16 scores [2,12,197,64] @ kᵀ",
       kCuda | kModel},
  };
  for (const M& m : ms)
    for (bool exact : {false, true}) {
      if (exact && (m.tags & kModel)) continue;
      Case k;
      k.name = m.name + (exact ? " integers" : "");
      k.tags = exact ? (m.tags & ~kGrad) | kExact : m.tags;
      k.make = [m, exact](Generator& g) {
        // Integers in [-3, 3]: products ≤ 9 and sums ≤ 9·K < 2^24 are exact in fp32 accumulation.
        if (exact) return Inputs{{integers(g, m.a, -3, 3)}, {integers(g, m.b, -3, 3)}};
        return Inputs{{uni(g, m.a, -1, 1)}, {uni(g, m.b, -1, 1)}};
      };
      k.call = [m](const std::vector<Tensor>& in) { return matmul(m.va(in[0]), m.vb(in[1])); };
      k.len = m.len;
      e.cases.push_back(k);
    }
  return e;
}

// tf32 (MatmulPrecision::High, CUDA f32 only): inputs rounded to 10 mantissa bits (≤ 2^-10 each, 2·2^-10 per
// product) plus fp32 accumulation: (2·2^-10 + γ_K)·Σ|a||b|. Its own entry so the precision is set around
// the call; the CPU has one precision, so there the ordinary bound applies and is far inside this one.
inline Entry matmul_tf32_entry() {
  Entry e{"matmul_tf32", {DType::f32}, true, true, nullptr, {}};
  e.tol = [](const TolCtx& c) { return Tol{0, c.uo(), 2 * 0x1p-10 * 2 + 2 * c.gamma()}; };
  for (auto [M, K, N, tags] : std::vector<std::array<int64_t, 4>>{{3, 4, 5, kSmall}, {7, 65, 33, kOdd}, {256, 1024, 256, kCuda}}) {
    Case k;
    k.name = "[" + std::to_string(M) + "," + std::to_string(K) + "] @ [" + std::to_string(K) + "," + std::to_string(N) + "]";
    k.tags = unsigned(tags);
    k.make = [M, K, N](Generator& g) { return Inputs{{uni(g, {M, K}, -1, 1)}, {uni(g, {K, N}, -1, 1)}}; };
    k.call = [](const std::vector<Tensor>& in) {
      const MatmulPrecision saved = matmul_precision();
      set_matmul_precision(MatmulPrecision::High);
      Tensor y = matmul(in[0], in[1]);
      set_matmul_precision(saved);
      return y;
    };
    k.len = {double(K), double(N), double(M)};
    e.cases.push_back(k);
  }
  return e;
}

inline Entry linear_entry() {
  Entry e{"linear", kAllFloat, true, true, nullptr, {}};
  // x·Wᵀ + b: γ_{in+1}, and uo more where a device adds the bias after storing a 16-bit GEMM output.
  e.tol = [](const TolCtx& c) { return Tol{0, c.uo(), 2 * c.gamma() + 2 * c.uo()}; };
  struct Lc { Shape x, w; bool bias; View vx; std::string name; unsigned tags; };
  const std::vector<Lc> ls = {
      {{2, 3, 5}, {7, 5}, true, same, "[2,3,5] · [7,5]ᵀ + b", kSmall},
      {{5, 3}, {2, 5}, false, [](const Tensor& t) { return t.transpose(0, 1); }, "[5,3]ᵀ · [2,5]ᵀ", kSmall},
      {{33, 65}, {17, 65}, true, same, "[33,65] · [17,65]ᵀ + b", kOdd},
      // The CPU's bias in the GEMM: over several depth panels (added in the first only), and a deep product of
      // one tile (depth slices, added when they are summed); the cases above: the direct loops, edge tiles.
      {{40, 300}, {70, 300}, true, same, "[40,300] · [70,300]ᵀ + b (depth over a panel)", kOdd},
      {{9, 2100}, {17, 2100}, true, same, "[9,2100] · [17,2100]ᵀ + b (deep, one tile: depth slices)", kOdd},
      {{2 * 197, 768}, {3072, 768}, true, same, "ViT-B/16 MLP [394,768] · [3072,768]ᵀ", kCuda | kModel},
      {{3136, 64}, {256, 64}, true, same, "CvT-13 stage-1 MLP [3136,64] · [256,64]ᵀ", kCuda | kModel},
  };
  for (const Lc& l : ls) {
    Case k;
    k.name = l.name;
    k.tags = l.tags;
    k.make = [l](Generator& g) {
      Inputs in{{uni(g, l.x, -1, 1)}, {uni(g, l.w, -1, 1)}};
      if (l.bias) in.push_back({uni(g, {l.w[0]}, -1, 1)});
      return in;
    };
    k.call = [l](const std::vector<Tensor>& in) { return linear(l.vx(in[0]), in[1], l.bias ? in[2] : Tensor()); };
    const double rows = numel_of(l.x) / double(l.x.back());
    k.len = {double(l.w[1]) + 1, double(l.w[0]), rows, rows};
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- conv2d / batch norm
struct ConvShape {
  int64_t N, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, groups;
  Conv2dArgs args() const {
    Conv2dArgs a;
    a.stride_h = sh; a.stride_w = sw; a.pad_h = ph; a.pad_w = pw; a.groups = groups;
    return a;
  }
  int64_t Ho() const { return (H + 2 * ph - kh) / sh + 1; }
  int64_t Wo() const { return (W + 2 * pw - kw) / sw + 1; }
  std::string str() const {
    return "x [" + std::to_string(N) + "," + std::to_string(Cin) + "," + std::to_string(H) + "," + std::to_string(W) +
           "] Cout " + std::to_string(Cout) + " k " + std::to_string(kh) + "x" + std::to_string(kw) + " stride " +
           std::to_string(sh) + "," + std::to_string(sw) + " pad " + std::to_string(ph) + "," + std::to_string(pw) +
           " groups " + std::to_string(groups);
  }
};
inline Entry conv2d_entry() {
  Entry e{"conv2d", kAllFloat, true, true, nullptr, {}};
  // y: a K-term dot product + the bias (γ_{K+1}·|conv|(|x|,|w|,|b|)), + uo where a 16-bit GEMM output is
  // stored before the bias add. dx: ≤ Cout/g·kh·kw terms, + uo for dcol stored before the gather. dweight and
  // dbias: N·Ho·Wo terms, + uo per batch chunk.
  e.tol = [](const TolCtx& c) { return Tol{0, c.uo(), 2 * c.gamma() + 2 * c.uo()}; };
  std::vector<std::pair<ConvShape, unsigned>> cs = {
      // N Cin H W  Cout kh kw sh sw ph pw groups: the finite-difference set
      {{2, 3, 9, 7, 4, 3, 3, 2, 2, 1, 1, 1}, kSmall},  // plain, kernel 3 stride 2 padding 1
      {{2, 4, 9, 7, 6, 3, 3, 2, 2, 1, 1, 2}, kSmall},  // two groups
      {{2, 3, 9, 7, 3, 3, 3, 2, 2, 1, 1, 3}, kSmall},  // depthwise (CvT's q/k/v projections)
      {{2, 2, 9, 7, 4, 3, 2, 1, 2, 0, 1, 2}, kSmall},  // depthwise ×2, per-axis stride/padding
      {{2, 4, 5, 3, 5, 1, 1, 1, 1, 0, 0, 1}, kSmall},  // 1×1
      {{1, 3, 8, 6, 4, 2, 2, 2, 2, 0, 0, 1}, kSmall},  // non-overlapping patches
      {{1, 4, 6, 5, 4, 3, 3, 1, 1, 1, 1, 2}, kSmall},  // grouped, "same" padding
      {{1, 2, 4, 2, 2, 3, 3, 1, 3, 2, 2, 1}, kSmall},  // padding 2 > the 2-wide image: taps see only padding
      {{1, 2, 4, 2, 2, 3, 3, 1, 3, 2, 2, 2}, kSmall},
      // Depthwise, wide enough for the CPU's float register blocks (64, 32 and 16 channels) and a tail; then
      // channels in 16s, whose rows' interiors the CPU runs along the row (taps_along_row)
      {{2, 83, 9, 7, 83, 3, 3, 1, 1, 1, 1, 83}, kOdd},
      {{2, 35, 6, 5, 35, 3, 3, 2, 2, 1, 1, 35}, kOdd},
      {{2, 48, 9, 7, 48, 3, 3, 1, 1, 1, 1, 48}, kOdd},
      {{2, 32, 6, 5, 32, 3, 3, 2, 2, 1, 1, 32}, kOdd},
      // CvT-13 and ViT-B/16
      {{2, 3, 224, 224, 64, 7, 7, 4, 4, 2, 2, 1}, kCuda | kModel},       // stage-1 embedding
      {{2, 64, 56, 56, 192, 3, 3, 2, 2, 1, 1, 1}, kCuda | kModel},       // stage-2 embedding
      {{2, 192, 28, 28, 384, 3, 3, 2, 2, 1, 1, 1}, kCuda | kModel},      // stage-3 embedding
      {{2, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 64}, kCuda | kModel},       // depthwise q, stage 1
      {{2, 64, 56, 56, 64, 3, 3, 2, 2, 1, 1, 64}, kCuda | kModel},       // depthwise k/v, stage 1
      {{2, 384, 14, 14, 384, 3, 3, 1, 1, 1, 1, 384}, kCuda | kModel},    // stage 3
      {{2, 384, 14, 14, 384, 3, 3, 2, 2, 1, 1, 384}, kCuda | kModel},
      {{2, 3, 224, 224, 768, 16, 16, 16, 16, 0, 0, 1}, kCuda | kModel},  // ViT-B/16 patchify
  };
  // Odd sizes, kernels, strides, paddings and groupings (multiplier 2, grouped GEMM).
  for (int64_t hw : {1, 5, 17})
    for (int64_t k : {1, 2, 3})
      for (int64_t s : {1, 3})
        for (int64_t p : {0, 1}) {
          if (hw + 2 * p < k) continue;
          for (auto [cin, cout, groups] : {std::array<int64_t, 3>{1, 1, 1}, {3, 7, 1}, {7, 7, 7}, {3, 6, 3}, {6, 9, 3}})
            cs.push_back({{2, cin, hw, hw + 2, cout, k, k, s, s, p, p, groups}, kOdd});
        }
  int n = 0;
  for (const auto& [c, tags] : cs)
    for (bool bias : {true, false})
      for (bool nhwc : {true, false}) {
        // x as the NCHW view of an NHWC leaf: a non-contiguous input, which a depthwise conv (multiplier 1)
        // keeps channels-last (Backend::depthwise_conv2d_nhwc); those also run from a contiguous NCHW x.
        const bool depthwise = c.groups == c.Cin && c.Cout == c.Cin;
        if (!nhwc && !depthwise) continue;
        if (!bias && (tags & kOdd) == kOdd && (tags & kGrad) == 0 && (n++ & 1)) continue;  // odd sizes: alternate
        Case k;
        k.name = c.str() + (bias ? " bias" : "") + (depthwise ? (nhwc ? " channels-last" : " NCHW") : "");
        k.tags = tags;
        k.make = [c, bias, nhwc](Generator& g) {
          Inputs in{{nhwc ? uni(g, {c.N, c.H, c.W, c.Cin}, -1, 1) : uni(g, {c.N, c.Cin, c.H, c.W}, -1, 1)},
                    {uni(g, {c.Cout, c.Cin / c.groups, c.kh, c.kw}, -0.5, 0.5)}};
          if (bias) in.push_back({uni(g, {c.Cout}, -0.5, 0.5)});
          return in;
        };
        k.call = [c, bias, nhwc](const std::vector<Tensor>& in) {
          return conv2d(nhwc ? in[0].permute({0, 3, 1, 2}) : in[0], in[1], bias ? in[2] : Tensor(), c.args());
        };
        const double K = double(c.Cin / c.groups * c.kh * c.kw), P = double(c.N * c.Ho() * c.Wo());
        k.len = {K + 1, double(c.Cout / c.groups * c.kh * c.kw) + 1, P + 1, P + 1};
        e.cases.push_back(k);
      }
  // Only x, then only the weight requires grad (grouped, then depthwise): the kernels skip the gradients
  // nobody asked for.
  for (auto [c, only] : std::vector<std::pair<ConvShape, int>>{{{2, 4, 9, 7, 6, 3, 3, 2, 2, 1, 1, 2}, 0},
                                                              {{2, 4, 9, 7, 6, 3, 3, 2, 2, 1, 1, 2}, 1},
                                                              {{2, 3, 9, 7, 3, 3, 3, 2, 2, 1, 1, 3}, 1}}) {
    Case k;
    k.name = c.str() + (only == 0 ? " only x requires grad" : " only the weight requires grad");
    k.make = [c = c, only = only](Generator& g) {
      return Inputs{{uni(g, {c.N, c.Cin, c.H, c.W}, -1, 1), only == 0},
                    {uni(g, {c.Cout, c.Cin / c.groups, c.kh, c.kw}, -1, 1), only == 1}};
    };
    k.call = [c = c](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), c.args()); };
    k.len = {double(c.Cin / c.groups * 9), double(c.Cout / c.groups * 9), double(c.N * c.Ho() * c.Wo())};
    e.cases.push_back(k);
  }
  return e;
}

inline Entry batch_norm_entry() {
  Entry e{"batch_norm2d", kAllFloat, true, false, nullptr, {}};
  // Per channel, sums over M = N·H·W values (γ_M), then chained formulas: mean, variance, invstd, x̂, y =
  // x̂·w + b. Normwise in the result's size, factor 4 for the chain; 16-bit results round once more. The
  // inputs sit in [1, 3] (|mean| > std stresses the variance) so the bound scales with max|y| and the
  // rescaling by invstd ≈ √3. Backward: dx = w·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)), three M-term sums.
  // x − mean loses the leading digits of nearly equal values: x̂ errs by uc·|x|·invstd absolute, so the
  // bounds scale with cond = max over channels of max|x|·invstd (≈ 3 for spread-out data).
  e.tol = [](const TolCtx& c) {
    const double g = 4 * (c.L + 8) * c.uc();
    return Tol{(g + 4 * c.uo()) * std::max(c.max_ref, 1.0) * c.cond, 2 * c.uo(), 0};
  };
  struct B { Shape s; bool training, affine, noncontig; unsigned tags; };
  std::vector<B> bs = {{{3, 3, 2, 4}, true, true, true, kSmall}, {{3, 3, 2, 4}, false, true, true, kSmall},
                       {{2, 3, 3, 1}, true, false, false, kSmall}};
  for (Shape s : std::vector<Shape>{{1, 3, 1, 1}, {2, 5, 1, 1}, {1, 7, 3, 5}, {2, 4, 17, 17}, {3, 2, 33, 31}})
    for (bool training : {true, false})
      for (bool affine : {true, false})
        for (bool nhwc : {false, true})  // channels-last memory takes Backend::batch_norm_nhwc
          if (!(training && s[0] * s[2] * s[3] == 1)) bs.push_back({s, training, affine, nhwc, kOdd});
  for (Shape s : std::vector<Shape>{{2, 64, 56, 56}, {2, 384, 14, 14}})
    for (bool training : {true, false}) bs.push_back({s, training, true, false, kCuda | kModel});
  for (const B& b : bs) {
    Case k;
    k.name = shape_str(b.s) + (b.training ? " train" : " eval") + (b.affine ? " affine" : "") +
             (b.noncontig ? " (x an NCHW view of NHWC)" : "");
    k.tags = b.tags;
    const int64_t C = b.s[1];
    k.make = [b, C](Generator& g) {
      Shape xs = b.noncontig ? Shape{b.s[0], b.s[2], b.s[3], b.s[1]} : b.s;
      Inputs in{{uni(g, xs, 1, 3)}};
      if (b.affine) { in.push_back({uni(g, {C}, 0.5, 1.5)}); in.push_back({uni(g, {C}, -0.5, 0.5)}); }
      in.push_back({uni(g, {C}, 1.5, 2.5), false});  // running mean, variance (eval mode normalises with them)
      in.push_back({uni(g, {C}, 0.5, 2), false});
      return in;
    };
    k.call = [b](const std::vector<Tensor>& in) {
      Tensor x = b.noncontig ? in[0].permute({0, 3, 1, 2}) : in[0];
      const size_t r = b.affine ? 3 : 1;
      // Copies of the running statistics: every evaluation starts from the same state.
      return batch_norm2d(x, b.affine ? in[1] : Tensor(), b.affine ? in[2] : Tensor(), in[r].clone(),
                          in[r + 1].clone(), Tensor(), b.training);
    };
    k.condition = [b](const std::vector<Tensor>& in) {
      NoGradGuard ng;
      Tensor x = b.noncontig ? in[0].permute({0, 3, 1, 2}) : in[0];
      Tensor var = b.training ? mean(pow(sub(x, mean(x, {0, 2, 3}, true)), 2.0), {0, 2, 3}) : in[b.affine ? 4 : 2];
      return std::max(1.0, max(abs(x)).item() * max(pow(add(var, 1e-5), -0.5)).item());
    };
    k.len = {double(b.s[0] * b.s[2] * b.s[3])};
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- normalisation, softmax, GELU
// Row-wise normalisations over C values: the row sums (γ_C), then a chain of a few roundings; normwise in
// the result's size, factor 4 for the chain (mean, variance, rstd, x̂ before the affine). Backward dx =
// rstd·(g − mean(g) − x̂·mean(g·x̂)) and the parameter gradients summed over the rows: L = rows there.
inline Tol norm_tol(const TolCtx& c) {
  return Tol{(4 * (c.L + 8) * c.uc() + 4 * c.uo()) * std::max(c.max_ref, 1.0), 2 * c.uo(), 0};
}
inline Entry layer_norm_entry() {
  Entry e{"layer_norm", kAllFloat, true, false, norm_tol, {}};
  struct N { Shape x; bool w, b; double eps, offset; View v; std::string name; unsigned tags; };
  auto t01 = [](const Tensor& t) { return t.transpose(0, 1); };
  std::vector<N> ns = {
      {{3, 5, 7}, true, true, 1e-5, 0, t01, "[5,3,7] view of [3,5,7], w, b", kSmall},
      {{4, 5}, false, false, 1e-5, 0, same, "[4,5] no affine", kSmall},
  };
  for (int64_t C : {1, 7, 33, 1000, 1025, 4097})
    for (int64_t rows : {1, 3, 257})
      for (int affine = 0; affine < 3; ++affine)
        ns.push_back({{rows, C}, affine >= 1, affine == 2, affine == 1 ? 1e-6 : 1e-5, 0, same,
                      "[" + std::to_string(rows) + "," + std::to_string(C) + "]", kOdd});
  // Large |mean| against the spread, and a big eps.
  ns.push_back({{257, 768}, true, true, 1e-5, 50, same, "[257,768] offset 50", kOdd});
  ns.push_back({{3, 4097}, true, false, 1e-5, 50, same, "[3,4097] offset 50", kOdd});
  ns.push_back({{257, 192}, true, true, 0.5, 0, same, "[257,192] eps 0.5", kOdd});
  for (auto [rows, C] : {std::array<int64_t, 2>{2 * 3136, 64}, {2 * 784, 192}, {2 * 197, 384}, {2 * 197, 768}})
    ns.push_back({{rows, C}, true, true, 1e-5, 0, same, "[" + std::to_string(rows) + "," + std::to_string(C) + "] (model)",
                  kCuda | kModel});
  for (const N& n : ns) {
    Case k;
    k.name = n.name + (n.w ? " w" : "") + (n.b ? " b" : "") + " eps " + std::to_string(n.eps);
    k.tags = n.tags;
    const int64_t C = n.x.back();
    k.make = [n, C](Generator& g) {
      Inputs in{{uni(g, n.x, n.offset - 2, n.offset + 2)}};
      in.push_back({n.w ? uni(g, {C}, 0.5, 1.5) : Tensor()});
      in.push_back({n.b ? uni(g, {C}, -0.5, 0.5) : Tensor()});
      return in;
    };
    k.call = [n](const std::vector<Tensor>& in) { return layer_norm(n.v(in[0]), in[1], in[2], n.eps); };
    const double rows = numel_of(n.x) / double(C);
    k.len = {double(C), double(C), rows, rows};
    e.cases.push_back(k);
  }
  // Only the affine parameters require grad: dx is not needed and must not be required.
  Case k;
  k.name = "[4,5] only w, b require grad";
  k.make = [](Generator& g) { return Inputs{{uni(g, {4, 5}, -1, 1), false}, {uni(g, {5}, -1, 1)}, {uni(g, {5}, -1, 1)}}; };
  k.call = [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-5); };
  k.len = {5, 5, 4, 4};
  e.cases.push_back(k);
  return e;
}

// softmax: x − max (exact), exp (fn), the row sum (γ_C relative, all terms positive), one division: relative
// (γ_C + fn)·|y|. log_softmax: the same terms absolute, scaled by 1 + |y|. Backward y·(dy − Σ dy·y) and
// dy − exp(y)·Σdy: the row sum's γ_C and the stored y's rounding (uo, 16-bit) times the terms that
// cancel, bounded normwise; factor 4.
inline Entry softmax_entry(bool log) {
  Entry e{log ? "log_softmax" : "softmax", kAllFloat, true, false, nullptr, {}};
  e.tol = [log](const TolCtx& c) {
    const double k = 2 * (c.gamma() + c.fn());
    if (c.which == 0) return log ? Tol{k * (1 + c.max_ref), k, 0} : Tol{0, k + c.uo(), 0};
    return Tol{4 * (c.gamma() + c.fn() + c.uo()) * std::max(c.max_ref, 1.0) * (log ? 2 : 1), 2 * c.uo(), 0};
  };
  for (int64_t d : {1, -1, 0}) {  // the finite-difference set: [3,7,5] view of a [5,7,3] leaf, every dim
    Case k;
    k.name = "[3,7,5]ᵀ dim " + std::to_string(d);
    k.make = [](Generator& g) { return Inputs{{uni(g, {5, 7, 3}, -2, 2)}}; };
    k.call = [d, log](const std::vector<Tensor>& in) {
      Tensor x = in[0].transpose(0, 2);
      return log ? log_softmax(x, d) : softmax(x, d);
    };
    k.len = {double(Shape{3, 7, 5}[size_t(d < 0 ? d + 3 : d)])};
    e.cases.push_back(k);
  }
  for (int64_t C : {1, 7, 33, 64, 197, 1023, 1024, 1025, 4097})
    for (int64_t rows : {1, 5, 77}) {
      Case k;
      k.name = "[" + std::to_string(rows) + "," + std::to_string(C) + "]";
      k.tags = kOdd;
      k.make = [rows, C](Generator& g) { return Inputs{{uni(g, {rows, C}, -4, 4)}}; };
      k.call = [log](const std::vector<Tensor>& in) { return log ? log_softmax(in[0], -1) : softmax(in[0], -1); };
      k.len = {double(C)};
      e.cases.push_back(k);
    }
  Case m;
  m.name = "[33,7,5] dim 1";
  m.tags = kOdd;
  m.make = [](Generator& g) { return Inputs{{uni(g, {33, 7, 5}, -4, 4)}}; };
  m.call = [log](const std::vector<Tensor>& in) { return log ? log_softmax(in[0], 1) : softmax(in[0], 1); };
  m.len = {7};
  e.cases.push_back(m);
  Case v;
  v.name = "ViT-B/16 attention rows [2·12·197, 197]";
  v.tags = kCuda | kModel;
  v.make = [](Generator& g) { return Inputs{{uni(g, {2 * 12 * 197, 197}, -4, 4)}}; };
  v.call = [log](const std::vector<Tensor>& in) { return log ? log_softmax(in[0], -1) : softmax(in[0], -1); };
  v.len = {197};
  e.cases.push_back(v);
  return e;
}

// GELU(x + b): the sum, erf and exp each a few uc relative to |x| + |b| (GELU' ≤ 1.13, GELU'' ≤ 0.8), one
// store: 16·uc·(1 + |x| + |b|) + uo·|y|, with |x| ≤ 4 and |b| ≤ 1 → normwise 16·uc·6. dbias sums a column
// of `rows` rounded dx values: (rows·uc + u)·Σ|dx|, bounded by rows·max|dx|. The [300, 2] case's gradient
// check spans two of the CPU's row blocks (an f64 reference shares the blocks' code, the check does not).
inline Entry bias_gelu_entry() {
  Entry e{"bias_gelu", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    if (c.which != 2) return Tol{2 * 16 * c.uc() * 6 + c.uo(), 2 * c.fn(), 0};
    return Tol{2 * (c.L * c.uc() + c.u()) * c.L * std::max(c.max_ref / std::max(c.L, 1.0), 1.13), 2 * c.u(), 0};
  };
  for (auto [rows, C, tags] : std::vector<std::array<int64_t, 3>>{
           {1, 1, kSmall}, {6, 5, kSmall}, {3, 7, kSmall}, {300, 2, kSmall}, {257, 33, kOdd}, {64, 1025, kOdd}, {2 * 197, 3072, kCuda | kModel}}) {
    Case k;
    k.name = "[" + std::to_string(rows) + "," + std::to_string(C) + "]";
    k.tags = unsigned(tags);
    k.make = [rows = rows, C = C](Generator& g) { return Inputs{{uni(g, {rows, C}, -4, 4)}, {uni(g, {C}, -1, 1)}}; };
    k.call = [](const std::vector<Tensor>& in) { return bias_gelu(in[0], in[1]); };
    k.len = {1, 1, double(rows)};
    e.cases.push_back(k);
  }
  Case l;  // any leading dims
  l.name = "[2,3,5]";
  l.make = [](Generator& g) { return Inputs{{uni(g, {2, 3, 5}, -3, 3)}, {uni(g, {5}, -1, 1)}}; };
  l.call = [](const std::vector<Tensor>& in) { return bias_gelu(in[0], in[1]); };
  l.len = {1, 1, 6};
  e.cases.push_back(l);
  // A non-contiguous x that does not require grad: only the bias does.
  Case k;
  k.name = "[4,5] view of [5,4], only the bias requires grad";
  k.make = [](Generator& g) { return Inputs{{uni(g, {5, 4}, -2, 2), false}, {uni(g, {5}, -1, 1)}}; };
  k.call = [](const std::vector<Tensor>& in) { return bias_gelu(in[0].transpose(0, 1), in[1]); };
  k.len = {1, 1, 4};
  e.cases.push_back(k);
  return e;
}

// GELU(x·Wᵀ + b), the product rounded, then the sum with b, then GELU (|x|, |w|, |b| ≤ 1). The product's
// error, γ_K over Σ|terms| ≤ K, and the sum's rounding make t err by e_t = (K + 2)(K + 1)·uc (+ uo·(K + 1)
// twice for 16-bit storage); case.condition hands K + 1 to the rule as c.cond. Forward: GELU' ≤ 1.13 carries
// e_t, and bias_gelu's own 16·uc·(1 + |t|) and one store. Gradients: dh = dy·GELU'(t) errs by GELU'' ≤ 0.8
// times e_t, a function's error and a store; dx, dW, db each sum L of those (|w|, |x| ≤ 1) plus γ_L.
inline Entry linear_gelu_entry() {
  Entry e{"linear_gelu", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    const double K1 = c.cond, et = (K1 + 1) * K1 * c.uc() + 2 * c.uo() * K1;
    if (c.which == 0) return Tol{2 * (1.13 * et + 16 * c.uc() * (K1 + 1)), c.uo() + 2 * c.fn(), 0};
    const double L = std::max(c.L, 1.0);
    return Tol{2 * L * (0.8 * et + c.fn() + c.uo() + c.gamma()) * std::max(1.13, c.max_ref / L), 2 * c.u(), 0};
  };
  struct Lg { Shape x, w; std::string name; unsigned tags; };
  for (const Lg& l : std::vector<Lg>{
           {{2, 3, 5}, {7, 5}, "[2,3,5] · [7,5]ᵀ", kSmall},
           {{33, 65}, {17, 65}, "[33,65] · [17,65]ᵀ (edge tiles)", kOdd},
           // The CPU's fused epilogue: after the last of several depth panels, over many blocks of rows and
           // columns; and a deep product of one tile (depth slices).
           {{200, 300}, {300, 300}, "[200,300] · [300,300]ᵀ (blocks, depth over a panel)", kOdd},
           {{9, 2100}, {17, 2100}, "[9,2100] · [17,2100]ᵀ (deep, one tile: depth slices)", kOdd},
           {{2 * 197, 768}, {3072, 768}, "ViT-B/16 MLP [394,768] · [3072,768]ᵀ", kCuda | kModel}}) {
    Case k;
    k.name = l.name;
    k.tags = l.tags;
    k.make = [l](Generator& g) {
      return Inputs{{uni(g, l.x, -1, 1)}, {uni(g, l.w, -1, 1)}, {uni(g, {l.w[0]}, -1, 1)}};
    };
    k.call = [](const std::vector<Tensor>& in) { return linear_gelu(in[0], in[1], in[2]); };
    const double K = double(l.w[1]), rows = numel_of(l.x) / K;
    k.condition = [K](const std::vector<Tensor>&) { return K + 1; };
    k.len = {K, double(l.w[0]), rows, rows};
    e.cases.push_back(k);
  }
  Case f;  // a frozen layer: only x requires grad (the backward's dW and db not wanted), x a transposed view
  f.name = "[4,3]ᵀ · [6,4]ᵀ, only x requires grad";
  f.make = [](Generator& g) {
    return Inputs{{uni(g, {4, 3}, -1, 1)}, {uni(g, {6, 4}, -1, 1), false}, {uni(g, {6}, -1, 1), false}};
  };
  f.call = [](const std::vector<Tensor>& in) { return linear_gelu(in[0].transpose(0, 1), in[1], in[2]); };
  f.condition = [](const std::vector<Tensor>&) { return 5.0; };
  f.len = {4, 6};
  e.cases.push_back(f);
  return e;
}

// ---------------------------------------------------------------- conv token embedding
// conv2d (γ_{K+1} relative to |conv|) then the layer norm over C on the stored pre-norm values: with E the
// largest pre-norm error, |Δx̂| ≤ 2·E·rstd·(1 + |x̂|) and the norm's own sums (C + 8)·uc. Normwise in the
// tokens' size, factor 4; backward through the norm (C-term sums) and the conv backward (L terms).
inline Entry conv_embedding_entry() {
  Entry e{"conv_embedding", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    return Tol{(4 * (c.L + 8) * c.uc() + 8 * c.uo()) * std::max(c.max_ref, 1.0) * (c.which == 0 ? 1 : 2), 2 * c.uo(), 0};
  };
  // nhwc: x made as [N, H, W, Cin] and passed as its [N, Cin, H, W] view, as CvT's later stages pass their
  // tokens (Backend::conv_embedding_nhwc; the gradient comes back in that layout).
  struct Em { int64_t N, Cin, H, W, C, k, stride, pad; bool bias, affine; unsigned tags; bool nhwc = false; };
  std::vector<Em> es = {
      {2, 3, 17, 13, 5, 7, 4, 2, true, true, kSmall},  // CvT's first embedding in miniature
      {1, 4, 9, 9, 6, 3, 2, 1, true, true, kSmall},
      {2, 4, 9, 7, 6, 3, 2, 1, true, true, kSmall, true},  // a later stage's, from its tokens
      {2, 64, 56, 56, 192, 3, 2, 1, true, true, kOdd, true},
      {2, 3, 8, 12, 7, 4, 4, 0, true, true, kSmall},   // a patchify (k = stride)
      {2, 3, 224, 224, 64, 7, 4, 2, true, true, kCuda | kModel},
      {2, 64, 56, 56, 192, 3, 2, 1, true, true, kCuda | kModel},
      {2, 192, 28, 28, 384, 3, 2, 1, true, true, kCuda | kModel},
      {2, 3, 9, 9, 600, 3, 2, 1, true, true, kOdd},   // the 16-bit FMA path
      {2, 3, 9, 9, 1100, 3, 2, 1, true, true, kOdd},  // the composed fallback (C > 1024)
  };
  int seed = 0;
  for (auto [H, W] : {std::array<int64_t, 2>{5, 17}, {17, 5}, {17, 17}})
    for (int64_t kk : {1, 3, 4, 7})
      for (int64_t s : {1, 2, 4})
        for (int64_t p : {0, 2}) {
          if (std::min(H, W) + 2 * p < kk) continue;
          for (auto [cin, C] : {std::array<int64_t, 2>{1, 1}, {3, 7}, {5, 33}, {3, 64}, {5, 200}}) {
            ++seed;  // bias and affine alternate independently
            // Every edge of the tiling (CUDA) and of the im2row gather (CPU): kernels wider than the padded
            // row's remainder, strides past the kernel, no padding.
            // half of them (seed & 4: runs of four) from a channels-last x where it has channels to lay last
            es.push_back({2, cin, H, W, C, kk, s, p, (seed & 1) != 0, (seed & 2) != 0, kOdd, (seed & 4) != 0 && cin > 1});
          }
        }
  for (const Em& m : es) {
    Case k;
    k.name = "x [" + std::to_string(m.N) + "," + std::to_string(m.Cin) + "," + std::to_string(m.H) + "," +
             std::to_string(m.W) + "] C " + std::to_string(m.C) + " k " + std::to_string(m.k) + " stride " +
             std::to_string(m.stride) + " pad " + std::to_string(m.pad) + (m.bias ? " bias" : "") + (m.affine ? " affine" : "") +
             (m.nhwc ? " (NCHW view of NHWC)" : "");
    k.tags = m.tags;
    k.make = [m](Generator& g) {
      Inputs in{{m.nhwc ? uni(g, {m.N, m.H, m.W, m.Cin}, -1, 1) : uni(g, {m.N, m.Cin, m.H, m.W}, -1, 1)},
                {uni(g, {m.C, m.Cin, m.k, m.k}, -0.5, 0.5)}};
      in.push_back({m.bias ? uni(g, {m.C}, -0.5, 0.5) : Tensor()});
      in.push_back({m.affine ? uni(g, {m.C}, 0.5, 1.5) : Tensor()});
      in.push_back({m.affine ? uni(g, {m.C}, -0.5, 0.5) : Tensor()});
      return in;
    };
    k.call = [m](const std::vector<Tensor>& in) {
      return conv_embedding(m.nhwc ? in[0].permute({0, 3, 1, 2}) : in[0], in[1], in[2], m.stride, m.pad, in[3], in[4],
                            1e-5);
    };
    const int64_t Ho = (m.H + 2 * m.pad - m.k) / m.stride + 1, Wo = (m.W + 2 * m.pad - m.k) / m.stride + 1;
    const double K = double(m.Cin * m.k * m.k), T = double(m.N * Ho * Wo), C = double(m.C);
    k.len = {K + C, C * double(m.k * m.k) + C, T + C, T + C, T, T};
    e.cases.push_back(k);
  }
  // Only the norm's parameters require grad (a frozen convolution), and a non-contiguous image.
  Case k;
  k.name = "x [2,3,9,9] (NCHW view of NHWC) C 4 k 3 stride 2 pad 1, frozen conv";
  k.make = [](Generator& g) {
    return Inputs{{uni(g, {2, 9, 9, 3}, -1, 1), false}, {uni(g, {4, 3, 3, 3}, -1, 1), false},
                  {uni(g, {4}, 0.5, 1.5)}, {uni(g, {4}, -1, 1)}};
  };
  k.call = [](const std::vector<Tensor>& in) {
    return conv_embedding(in[0].permute({0, 3, 1, 2}), in[1], Tensor(), 2, 1, in[2], in[3], 1e-5);
  };
  k.len = {27 + 4, 1, 1, 50, 50};
  e.cases.push_back(k);
  return e;
}

// ---------------------------------------------------------------- attention
// From the fused kernel's analysis (|q|,|k|,|v| ≤ 1): scores err by |Δs| ≤ 2·D·uc·scale·D; a relative error
// ε of every p moves out = Σ p_j v_j / Σ p_j by ≤ 2ε·max|v|; the running sum and P·V add Tk terms (γ_Tk).
// 16-bit: P is rounded to storage before P·V (≤ u·max|v|, independent of Tk: the p_j/l are convex weights)
// and the output rounds once more. Backward, normwise: (8u + 2|Δs| + 4·T·uc)·max|g_ref| + u·|g_ref|, T the
// summed length — the factor 8 covers dS = P∘(dP − delta) (two rounded factors and the cancellation); an
// engineering bound, to be confirmed on a GPU.
struct Attn { int64_t B, H, Tq, Tk, D; };
inline Entry attention_entry() {
  Entry e{"scaled_dot_product_attention", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    const double D = c.L, ds = 2 * D * c.uc() * std::sqrt(D);  // scale = 1/√D or a case's own (≤ 1.5)
    if (c.which == 0) return Tol{2 * ds + 2 * 4096 * c.uc() + 2 * c.uo() + 4 * c.uc(), c.u(), 0};
    return Tol{(8 * std::max(c.uo(), c.dt == DType::f32 ? c.u() : 0.0) + 2 * ds + 4 * 4096 * c.uc() + 8 * c.uc()) *
                   std::max(c.max_ref, 1.0),  // |terms| ~ 1 even where they cancel to 0 (Tk = 1)
               c.u(), 0};
  };
  std::vector<std::pair<Attn, unsigned>> as = {
      {{1, 1, 3136, 784, 64}, kCuda},  // CvT-13 stage 1 (k/v strided by 2)
      {{1, 3, 784, 196, 64}, kCuda},   // stage 2
      {{2, 6, 197, 50, 64}, kCuda},    // stage 3
      {{2, 12, 197, 197, 64}, kCuda},  // ViT-B/16
      // The same at the training batch, 8, for bench_ops only: checked at batch 1-2 above, where the f64
      // reference takes a fraction of the time.
      {{8, 1, 3136, 784, 64}, kModel},
      {{8, 3, 784, 196, 64}, kModel},
      {{8, 6, 197, 50, 64}, kModel},
      {{8, 12, 197, 197, 64}, kModel},
  };
  for (int64_t D : {32, 64, 128})
    for (int64_t tq : {1, 7, 63, 65, 129})
      for (int64_t tk : {1, 7, 63, 65, 129}) as.push_back({{1, 2, tq, tk, D}, (tq + tk) % 3 == 0 ? kOdd : kCuda});
  for (int64_t D : {24, 100})  // the CPU's row-by-row heads: two score vectors, their 32-key limit, one past it
    for (int64_t tk : {17, 32, 33}) as.push_back({{2, 2, 65, tk, D}, kOdd});
  for (int64_t D : {16, 24, 48, 100})  // head dims between the kernel sizes: zero-padded
    for (int64_t tq : {1, 65, 129})
      for (int64_t tk : {1, 65, 129}) as.push_back({{2, 2, tq, tk, D}, kCuda});
  for (const auto& [a, tags] : as) {
    Case k;
    k.name = "B" + std::to_string(a.B) + " H" + std::to_string(a.H) + " " + std::to_string(a.Tq) + "x" +
             std::to_string(a.Tk) + " D" + std::to_string(a.D);
    k.tags = tags;
    k.make = [a](Generator& g) {
      return Inputs{{uni(g, {a.B, a.H, a.Tq, a.D}, -1, 1)}, {uni(g, {a.B, a.H, a.Tk, a.D}, -1, 1)},
                    {uni(g, {a.B, a.H, a.Tk, a.D}, -1, 1)}};
    };
    k.call = [a](const std::vector<Tensor>& in) {
      return scaled_dot_product_attention(in[0], in[1], in[2], 1.0 / std::sqrt(double(a.D)));
    };
    k.len = {double(a.D)};
    e.cases.push_back(k);
  }
  // The finite-difference set: q, k, v as non-contiguous head views of (B, T, H, D) leaves, Tq != Tk; three
  // leading dims with only q requiring grad.
  Case h;
  h.name = "(B,T,H,D) leaves as head views, 5x7 D3";
  h.make = [](Generator& g) {
    return Inputs{{uni(g, {2, 5, 2, 3}, -1, 1)}, {uni(g, {2, 7, 2, 3}, -1, 1)}, {uni(g, {2, 7, 2, 3}, -1, 1)}};
  };
  h.call = [](const std::vector<Tensor>& in) {
    return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2), 0.37);
  };
  h.len = {3};
  e.cases.push_back(h);
  Case q;
  q.name = "[2,1,2,3,3] x [2,1,2,4,3], only q requires grad";
  q.make = [](Generator& g) {
    return Inputs{{uni(g, {2, 1, 2, 3, 3}, -1, 1)}, {uni(g, {2, 1, 2, 4, 3}, -1, 1), false},
                  {uni(g, {2, 1, 2, 4, 3}, -1, 1), false}};
  };
  q.call = [](const std::vector<Tensor>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], 1.5); };
  q.len = {3};
  e.cases.push_back(q);
  return e;
}

// attention_tokens: the same computation on tokens (B, T, heads·D), held to attention's rule. The cases: one
// head (no split at all), heads the CPU reads in place (f32: row by row up to 32 keys, in blocks of query
// rows past that, whose backward is the composite's copies around the GEMM route), a tail of a vector in D,
// and k, v given as views (made plain).
inline Entry attention_tokens_entry() {
  Entry e = attention_entry();
  e.name = "attention_tokens";
  e.cases.clear();
  struct At { int64_t B, heads, Tq, Tk, D; unsigned tags; };
  for (const At& a : std::vector<At>{{2, 2, 5, 3, 3, kSmall}, {1, 1, 4, 6, 2, kSmall}, {2, 3, 17, 5, 64, kOdd},
                                     {2, 3, 64, 16, 32, kOdd}, {2, 1, 65, 33, 24, kOdd}, {2, 2, 9, 40, 20, kOdd},
                                     {3, 3, 7, 32, 17, kOdd}}) {
    Case k;
    k.name = "B" + std::to_string(a.B) + " heads " + std::to_string(a.heads) + " " + std::to_string(a.Tq) + "x" +
             std::to_string(a.Tk) + " D" + std::to_string(a.D);
    k.tags = a.tags;
    k.make = [a](Generator& g) {
      const int64_t C = a.heads * a.D;
      return Inputs{{uni(g, {a.B, a.Tq, C}, -1, 1)}, {uni(g, {a.B, a.Tk, C}, -1, 1)}, {uni(g, {a.B, a.Tk, C}, -1, 1)}};
    };
    k.call = [a](const std::vector<Tensor>& in) {
      return attention_tokens(in[0], in[1], in[2], a.heads, 1.0 / std::sqrt(double(a.D)));
    };
    k.len = {double(a.D)};
    e.cases.push_back(k);
  }
  Case v;  // k and v as transposed views of (B, C, Tk) leaves; only k and v require grad
  v.name = "k, v as views of (B, C, T) leaves, only they require grad";
  v.make = [](Generator& g) {
    return Inputs{{uni(g, {2, 4, 6}, -1, 1), false}, {uni(g, {2, 6, 3}, -1, 1)}, {uni(g, {2, 6, 3}, -1, 1)}};
  };
  v.call = [](const std::vector<Tensor>& in) {
    return attention_tokens(in[0], in[1].transpose(1, 2), in[2].transpose(1, 2), 2, 0.6);
  };
  v.len = {3};
  e.cases.push_back(v);
  return e;
}

// attention_probabilities: softmax of the f64/f32 scores (not differentiable; f32 for 16-bit inputs). Each
// p carries the scores' error (|Δs| relative) and the row sum's γ_Tk, relative.
inline Entry attention_probs_entry() {
  Entry e{"attention_probabilities", kAllFloat, false, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    const double uc = c.dt == DType::f64 ? 0x1p-53 : 0x1p-24;
    return Tol{0, 2 * 64.0 * uc * 64.0 * 0.125 * 2 + 2 * (c.L + 4) * uc, 0};
  };
  for (auto [a, tags] : std::vector<std::pair<Attn, unsigned>>{{{2, 3, 65, 50, 64}, kOdd}, {{1, 1, 7, 5, 3}, kOdd}}) {
    Case k;
    k.name = "B" + std::to_string(a.B) + " H" + std::to_string(a.H) + " " + std::to_string(a.Tq) + "x" + std::to_string(a.Tk);
    k.tags = tags;
    k.make = [a](Generator& g) {
      return Inputs{{uni(g, {a.B, a.H, a.Tq, a.D}, -1, 1), false}, {uni(g, {a.B, a.H, a.Tk, a.D}, -1, 1), false}};
    };
    k.call = [](const std::vector<Tensor>& in) { return attention_probabilities(in[0], in[1], 0.125); };
    k.len = {double(a.Tk)};
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- losses, dropout, joining
// cross_entropy: per row log-sum-exp (γ_C) and the weighted sums over N rows (γ_N), the final divisions:
// (γ_C + γ_N + 4·uc)·S with S = Σ|w|·(|x| + |lse| + 1)/W ≤ (|x|max + log C + 5)·max w / min w; factor 4.
// The gradient p − onehot, scaled by 1/W: the same terms per element, normwise.
struct CeCase { int64_t N, C; bool weighted; double eps; int ignore_every; };
inline Entry cross_entropy_entry() {
  Entry e{"cross_entropy", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) {
    const double S = (4 + std::log(std::max(c.L, 2.0)) + 5) * 10;  // |x| ≤ 4, weights in [0.2, 2]
    if (c.which == 0) return Tol{4 * ((c.L + 5) * c.uc() + 2048 * c.uc() + 4 * c.uc()) * S + c.uo() * c.max_ref, c.u(), 0};
    return Tol{4 * ((c.L + 8) * c.uc() + 2 * c.uo()) * std::max(c.max_ref, 1e-30) * S, 2 * c.uo(), 0};
  };
  std::vector<std::pair<CeCase, unsigned>> cs;
  // The finite-difference set: every option combination on [7,5]ᵀ logits (targets 1, 6, 0, 6, 3).
  for (auto [eps, weighted, ignore] : std::vector<std::tuple<double, bool, int>>{
           {0, false, -100}, {0.2, false, -100}, {0, true, -100}, {0, false, 6}, {0.2, true, 6}, {1.0, true, -100}}) {
    Case k;
    k.name = "[5,7] (transposed) eps " + std::to_string(eps) + (weighted ? " weighted" : "") + " ignore " + std::to_string(ignore);
    k.make = [weighted = weighted](Generator& g) {
      Inputs in{{uni(g, {7, 5}, -2, 2)}, {Tensor::from(std::vector<int64_t>{1, 6, 0, 6, 3}, {5}, DType::i64), false}};
      in.push_back({weighted ? uni(g, {7}, 0.2, 2) : Tensor(), false});
      return in;
    };
    k.call = [eps = eps, ignore = ignore](const std::vector<Tensor>& in) {
      CrossEntropyOptions o;
      o.label_smoothing = eps;
      o.weight = in[2];
      o.ignore_index = ignore;
      return cross_entropy(in[0].transpose(0, 1), in[1], o);
    };
    k.len = {7};
    e.cases.push_back(k);
  }
  for (int64_t C : {4, 1000})
    for (int64_t N : {1, 32, 257})
      for (bool weighted : {false, true})
        for (double eps : {0.0, 0.1})
          for (int ignore_every : {0, 5}) cs.push_back({{N, C, weighted, eps, ignore_every}, C == 4 ? kOdd : kCuda});
  cs.push_back({{3, 4, false, 0.1, 1}, kOdd});  // every row ignored: NaN loss (0/0, as torch), zero gradient
  cs.push_back({{256, 1000, false, 0.1, 0}, kCuda | kModel});  // an ImageNet batch's loss
  for (const auto& [c, tags] : cs) {
    Case k;
    k.name = "N " + std::to_string(c.N) + " C " + std::to_string(c.C) + (c.weighted ? " weighted" : "") + " eps " +
             std::to_string(c.eps) + " ignore every " + std::to_string(c.ignore_every);
    k.tags = tags;
    k.make = [c = c](Generator& g) {
      std::vector<double> u = g.uniform({c.N}, 0, 1, DType::f64).to_vector<double>();
      std::vector<int64_t> tv(size_t(c.N));
      for (int64_t i = 0; i < c.N; ++i)
        tv[size_t(i)] = c.ignore_every && i % c.ignore_every == 0 ? -100 : std::min<int64_t>(c.C - 1, int64_t(u[size_t(i)] * double(c.C)));
      Inputs in{{uni(g, {c.N, c.C}, -4, 4)}, {Tensor::from(tv, {c.N}, DType::i64), false}};
      in.push_back({c.weighted ? uni(g, {c.C}, 0.2, 2) : Tensor(), false});
      return in;
    };
    k.call = [c = c](const std::vector<Tensor>& in) {
      CrossEntropyOptions o;
      o.label_smoothing = c.eps;
      o.weight = in[2];
      return cross_entropy(in[0], in[1], o);
    };
    k.len = {double(c.C)};
    e.cases.push_back(k);
  }
  return e;
}

// dropout / drop_path with a fresh generator per call (one fixed mask on every evaluation and device: the
// devices draw the same Philox stream, and a Bernoulli draw is exact). y = x·s (+ r): the product with the
// scale rounded to the compute type and the sum, one store: 3·uc·(|x|·s + |r|) + uo·|y|, normwise.
inline Entry dropout_entry(bool path) {
  Entry e{path ? "drop_path" : "dropout", kAllFloat, true, false, nullptr, {}};
  e.tol = [](const TolCtx& c) { return Tol{2 * 3 * c.uc() * (4 / 0.6 + 2), c.uo() + 2 * c.uc(), 0}; };
  struct D { Shape x; bool residual; View v; std::string name; unsigned tags; };
  const std::vector<D> ds = path ? std::vector<D>{
      {{6, 3, 2}, false, same, "[6,3,2]", kSmall},
      {{6, 3, 2}, true, same, "[6,3,2] + residual (a [6,2,3] view)", kSmall},
      {{1, 1}, false, same, "[1,1]", kOdd},
      {{5, 1}, true, same, "[5,1] + residual", kOdd},
      {{3, 7, 5}, true, same, "[3,7,5] + residual", kOdd},
      {{64, 50, 192}, true, same, "[64,50,192] + residual (CvT-13 stage 2)", kCuda | kModel},
  } : std::vector<D>{
      {{5, 7}, false, [](const Tensor& t) { return t.transpose(0, 1); }, "[7,5] view of [5,7]", kSmall},
      {{4097}, false, same, "[4097]", kOdd},
      {{2 * 197, 768}, false, same, "[394,768]", kCuda | kModel},
  };
  for (const D& d : ds) {
    Case k;
    k.name = d.name;
    k.tags = d.tags;
    k.make = [d](Generator& g) {
      Inputs in{{uni(g, d.x, -4, 4)}};
      if (d.residual) in.push_back({uni(g, d.x.size() == 3 ? Shape{d.x[0], d.x[2], d.x[1]} : d.x, -2, 2)});
      return in;
    };
    k.call = [d, path](const std::vector<Tensor>& in) {
      Generator g(20);
      if (!path) return dropout(d.v(in[0]), 0.4, true, g);
      return drop_path(in[0], 0.4, true, g, d.residual ? (d.x.size() == 3 ? in[1].transpose(1, 2) : in[1]) : Tensor());
    };
    e.cases.push_back(k);
  }
  return e;
}

inline Entry joining_entry(const std::string& which) {
  Entry e{which, kAllFloat, true, false, [](const TolCtx& c) {
            // Copies are exact; gradients that meet at a repeated index or a reused input are summed (γ_L).
            return c.which == 0 ? Tol{} : Tol{2 * c.gamma() * std::max(c.max_ref, 1.0), c.uo(), 0};
          }, {}};
  Case k;
  if (which == "concat") {
    k.name = "[3,2], [3,4]ᵀ, [3,2] along dim 1";
    k.make = [](Generator& g) { return Inputs{{uni(g, {3, 2}, -1, 1)}, {uni(g, {4, 3}, -1, 1)}}; };
    k.call = [](const std::vector<Tensor>& in) { return concat({in[0], in[1].transpose(0, 1), in[0]}, 1); };
    k.len = {1, 2, 1};
  } else if (which == "split") {
    k.name = "[2,5] into 1, 3, 1 along dim 1, recombined";
    k.make = [](Generator& g) { return Inputs{{uni(g, {2, 5}, -1, 1)}}; };
    k.call = [](const std::vector<Tensor>& in) {
      auto p = split(in[0], std::vector<int64_t>{1, 3, 1}, 1);
      return add(mul(p[1], p[1]), concat({p[0], p[2], p[0]}, 1));
    };
    k.len = {1, 4};
    e.tol = [](const TolCtx& c) { return Tol{4 * c.fn() * std::max(c.max_ref, 1.0), 4 * c.fn(), 0}; };
  } else {
    k.name = "[4,3] view of [3,4], indices {2,0,2} along dim 1 (repeated: accumulates)";
    k.make = [](Generator& g) {
      return Inputs{{uni(g, {3, 4}, -1, 1)}, {Tensor::from(std::vector<int64_t>{2, 0, 2}, {3}, DType::i64), false}};
    };
    k.call = [](const std::vector<Tensor>& in) { return index_select(in[0].transpose(0, 1), 1, in[1]); };
    k.len = {1, 2};
  }
  e.cases.push_back(k);
  if (which == "index_select") {
    // Repeats and both ends, a non-contiguous source, dims 0 and 1, at odd sizes.
    for (int64_t dim : {0, 1}) {
      Case m;
      m.name = "[10,7] / [3,10,7] along dim " + std::to_string(dim) + ", 13 indices with repeats";
      m.tags = kOdd;
      m.make = [dim](Generator& g) {
        return Inputs{{uni(g, dim == 0 ? Shape{7, 10} : Shape{7, 10, 3}, -1, 1)},
                      {Tensor::from(std::vector<int64_t>{0, 9, 3, 3, 7, 0, 9, 1, 2, 3, 8, 5, 3}, {13}, DType::i64), false}};
      };
      m.call = [dim](const std::vector<Tensor>& in) {
        Tensor x = dim == 0 ? in[0].transpose(0, 1) : in[0].permute({2, 1, 0});
        return index_select(x, dim, in[1]);
      };
      m.len = {1, 4};
      e.cases.push_back(m);
    }
  }
  return e;
}

// ---------------------------------------------------------------- optimizer passes (no op-level form)
// AdamW::step, 5 steps with fresh gradients: each side computes each element in its parameter type (f32:
// fp32 arithmetic, as torch's; f64 the reference), about 10 roundings a step (decay, the two moments, the
// root, the divisions, the step, the subtraction), each ≤ uc of values ≤ max|value|, carried forward with a
// factor ≈ 1: |Δ| ≤ 2·steps·10·uc·max|value|. The result is the parameter and its two moments, one after
// the other; the bound is normwise over them.
inline Entry adamw_entry() {
  Entry e{"adamw_step", kWide, false, false, [](const TolCtx& c) { return Tol{2 * 5 * 10 * c.uc() * c.max_ref, 0, 0}; }, {}};
  // One step updates every parameter in one multi-tensor pass: sizes around the 64 Ki-element chunk and
  // more tensors than one launch carries (52), each with its own weight decay, exercise the packing.
  for (auto [count, tags] : std::vector<std::pair<int, unsigned>>{{3, kOdd}, {52, kCuda | kModel}}) {
    Case k;
    k.name = std::to_string(count) + " parameters × 5 steps";
    k.tags = tags;
    k.make = [count = count](Generator& g) {
      const int64_t sizes[] = {4097, 65536, 65537, 1, 200003, 70000};
      Inputs in;
      for (int i = 0; i < count; ++i) {
        const int64_t n = count <= 3 ? 7 + 13 * i : i < 6 ? sizes[i] : 3 + i;
        for (int s = 0; s < 6; ++s) in.push_back({g.normal({n}, 0, 1, DType::f64), false});  // param, 5 gradients
      }
      return in;
    };
    k.call = [](const std::vector<Tensor>& in) {
      std::vector<ParamGroup> groups;
      std::vector<Tensor> params;
      for (size_t i = 0; i < in.size(); i += 6) {
        params.push_back(in[i].detach().clone());
        groups.push_back({{{"p" + std::to_string(i / 6), params.back()}}, 0.01 * double(i / 6 % 5)});
      }
      AdamW opt(groups);
      for (size_t s = 1; s < 6; ++s) {
        for (size_t p = 0; p < params.size(); ++p) params[p].set_grad(in[p * 6 + s].detach().clone());
        opt.step();
      }
      std::vector<Tensor> parts;
      for (const auto& st : opt.states()) {
        parts.push_back(st.param.tensor);
        parts.push_back(st.exp_avg);
        parts.push_back(st.exp_avg_sq);
      }
      return concat(parts, 0);
    };
    e.cases.push_back(k);
  }
  return e;
}

// clip_grad_norm (the per-tensor sums of squares and the in-place scaling): the total norm is summed in f64
// from exact squares in either order (|Δ| ≤ 2·n·2^-53·Σx², far below every storage u); the scaling is one
// multiply in the compute type by the factor rounded to it, and one store: 2·uc·|x·f| + uo. The result
// holds every clipped gradient, then the total norm (rounded to the dtype).
inline Entry clip_grad_norm_entry() {
  Entry e{"clip_grad_norm", kAllFloat, false, false, [](const TolCtx& c) { return Tol{0, 2 * c.uc() + 2 * c.u(), 0}; }, {}};
  for (auto [count, tags] : std::vector<std::pair<int, unsigned>>{{3, kOdd}, {50, kCuda}}) {
    Case k;
    k.name = std::to_string(count) + " tensors, sizes 0, 1, 65535..65537, 300001, ...";
    k.tags = tags;
    k.make = [count = count](Generator& g) {
      const int64_t sizes[] = {0, 1, 65535, 65536, 65537, 300001};
      Inputs in;
      for (int i = 0; i < count; ++i) {
        const int64_t n = count <= 3 ? 7 + 13 * i : i < 6 ? sizes[i] : 7 + 13 * i;
        in.push_back({g.normal({n}, 0, 1, DType::f64), false});
      }
      return in;
    };
    k.call = [](const std::vector<Tensor>& in) {
      std::vector<Tensor> params;
      for (const Tensor& gi : in) {
        Tensor p = Tensor::zeros(gi.shape(), gi.dtype(), gi.device());
        p.set_grad(gi.detach().clone());
        params.push_back(p);
      }
      const double total = clip_grad_norm(params, 1.0);
      std::vector<Tensor> parts;
      for (const Tensor& p : params) parts.push_back(p.grad());
      parts.push_back(Tensor::full({1}, total, in[0].dtype(), in[0].device()));
      return concat(parts, 0);
    };
    e.cases.push_back(k);
  }
  return e;
}

// ---------------------------------------------------------------- the registry
inline const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = [] {
    std::vector<Entry> r;
    r.push_back(unary("neg", [](const Tensor& x) { return neg(x); }, -3, 3));
    r.push_back(unary("exp", [](const Tensor& x) { return exp(x); }, -3, 3));
    r.push_back(unary("log", [](const Tensor& x) { return log(x); }, 0.05, 4));
    r.push_back(unary("sqrt", [](const Tensor& x) { return sqrt(x); }, 0.05, 4));
    r.push_back(unary("tanh", [](const Tensor& x) { return tanh(x); }, -3, 3, 1));
    r.push_back(unary("erf", [](const Tensor& x) { return erf(x); }, -3, 3));
    r.push_back(unary("abs", [](const Tensor& x) { return abs(x); }, 0.1, 3, 0, true));
    r.push_back(unary("gelu", [](const Tensor& x) { return gelu(x); }, -4, 4, 1));
    r.push_back(unary("affine 1.7x-0.3", [](const Tensor& x) { return affine(x, 1.7, -0.3); }, -3, 3, 2));
    r.push_back(unary("affine -2.5x+1", [](const Tensor& x) { return affine(x, -2.5, 1); }, -1, 1, 3));
    r.push_back(unary("pow 2.5", [](const Tensor& x) { return pow(x, 2.5); }, 0.1, 3));
    r.push_back(unary("pow 3", [](const Tensor& x) { return pow(x, 3.0); }, -1, 1));
    r.push_back(unary("pow -1.5", [](const Tensor& x) { return pow(x, -1.5); }, 0.5, 2));
    r.push_back(unary("clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.8); }, -2, 2));
    r.push_back(binary("add", add, 'a', -2, 2, -2, 2));
    r.push_back(binary("sub", sub, 'a', -2, 2, -2, 2));
    r.push_back(binary("mul", mul, 'm', -2, 2, -2, 2));
    r.push_back(binary("div", div, 'm', -2, 2, 0.5, 2));
    r.push_back(binary("maximum", maximum, 'x', -2, 2, -2, 2));
    r.push_back(binary("pow", pow, 'm', 0.5, 2, -1, 1));
    r.push_back(binary("eq", eq, 'x', -2, 2, -2, 2, false));
    r.push_back(binary("gt", gt, 'x', -2, 2, -2, 2, false));
    r.push_back(reduction("sum", false));
    r.push_back(reduction("mean", false));
    r.push_back(reduction("max", true));
    r.push_back(argmax_entry());
    r.push_back(matmul_entry());
    r.push_back(matmul_tf32_entry());
    r.push_back(linear_entry());
    r.push_back(conv2d_entry());
    r.push_back(batch_norm_entry());
    r.push_back(layer_norm_entry());
    r.push_back(conv_embedding_entry());
    r.push_back(softmax_entry(false));
    r.push_back(softmax_entry(true));
    r.push_back(bias_gelu_entry());
    r.push_back(linear_gelu_entry());
    r.push_back(attention_entry());
    r.push_back(attention_tokens_entry());
    r.push_back(attention_probs_entry());
    r.push_back(cross_entropy_entry());
    r.push_back(dropout_entry(false));
    r.push_back(dropout_entry(true));
    r.push_back(joining_entry("concat"));
    r.push_back(joining_entry("split"));
    r.push_back(joining_entry("index_select"));
    r.push_back(adamw_entry());
    r.push_back(clip_grad_norm_entry());
    return r;
  }();
  return entries;
}

// ---------------------------------------------------------------- running a case
// The inputs of a case made in f64, rounded to dt, on `device`; floating inputs that the case
// differentiates are leaves requiring grad (when `grad`).
inline std::vector<Tensor> materialise(const Inputs& in, DType dt, Device device, bool grad) {
  std::vector<Tensor> out;
  for (const Input& i : in) {
    if (!i.value.defined()) { out.emplace_back(); continue; }
    Tensor t = is_floating(i.value.dtype()) ? i.value.to(dt) : i.value;
    t = t.to(device).detach();
    if (grad && i.grad && is_floating(t.dtype())) t.set_requires_grad(true);
    out.push_back(t);
  }
  return out;
}

}  // namespace tessera::opreg
