// Elementwise ops, reductions, matmul and the joining/indexing ops, each with its backward rule.
// Backward rules run under NoGradGuard (see autograd.cpp) and are written with these same ops, so they
// run on whatever device the tensors live on.
#include "engine/ops.h"

#include "engine/core/backend.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tessera {

namespace {

void check_same(const Tensor& a, const Tensor& b, const char* op) {
  TS_CHECK(a.defined() && b.defined(), std::string(op) + ": undefined tensor");
  TS_CHECK(a.device() == b.device(), std::string(op) + ": tensors on different devices: " + a.str() + " and " + b.str());
  TS_CHECK(a.dtype() == b.dtype(), std::string(op) + ": dtypes differ: " + a.str() + " and " + b.str() +
                                       " (convert one with .to(dtype))");
}

Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    TS_CHECK(da == db || da == 1 || db == 1,
             std::string(op) + ": shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor scalar_like(double v, const Tensor& like) { return Tensor::scalar(v, like.dtype(), like.device()); }

// Runs a binary kernel on a and b broadcast to a common shape; no autograd.
Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  check_same(a, b, name);
  Shape shape = broadcast_shape(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  Tensor ea = a.detach().expand(shape), eb = b.detach().expand(shape);
  backend(a.device()).binary(op, ea, eb, out);
  return out;
}

Tensor unary_raw(UnaryOp op, const Tensor& x, double alpha = 0, double beta = 0) {
  TS_CHECK(x.defined(), "unary op on an undefined tensor");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel()) backend(x.device()).unary(op, x.detach(), out, alpha, beta);
  return out;
}

using Grads = std::vector<Tensor>;

}  // namespace

// ---------------------------------------------------------------- binary
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Add, a, b, "add");
  return record("add", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return Grads{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Sub, a, b, "sub");
  return record("sub", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return Grads{sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

namespace {
// The backward of mul, div and pow in a 16-bit dtype runs in fp32 and rounds each gradient once: a gradient
// chains several products and, for an operand broadcast over the output, sums many terms, each of which
// would otherwise be rounded to 16 bits first (an error of u·Σ|terms|, however small the sum).
Tensor at_least_f32(const Tensor& t) { return dtype_size(t.dtype()) < 4 ? t.to(DType::f32) : t; }
}  // namespace

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Mul, a, b, "mul");
  Tensor ad = a.detach(), bd = b.detach();
  return record("mul", {a, b}, out, [ad, bd](const Tensor& g) {
    const Tensor G = at_least_f32(g), A = at_least_f32(ad), B = at_least_f32(bd);
    return Grads{sum_to(mul(G, B), ad.shape()).to(g.dtype()), sum_to(mul(G, A), bd.shape()).to(g.dtype())};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Div, a, b, "div");
  Tensor ad = a.detach(), bd = b.detach();
  return record("div", {a, b}, out, [ad, bd](const Tensor& g) {
    const Tensor G = at_least_f32(g), A = at_least_f32(ad), B = at_least_f32(bd);
    Tensor ga = div(G, B);
    return Grads{sum_to(ga, ad.shape()).to(g.dtype()), sum_to(neg(mul(ga, div(A, B))), bd.shape()).to(g.dtype())};
  });
}

Tensor maximum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Maximum, a, b, "maximum");
  Tensor ad = a.detach(), bd = b.detach();
  return record("maximum", {a, b}, out, [ad, bd](const Tensor& g) {
    Tensor to_a = binary_raw(BinaryOp::Ge, ad, bd, "maximum");
    Tensor ga = mul(g, to_a);
    return Grads{sum_to(ga, ad.shape()), sum_to(sub(g, ga), bd.shape())};
  });
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Pow, a, b, "pow");
  Tensor ad = a.detach(), bd = b.detach(), od = out.detach();
  return record("pow", {a, b}, out, [ad, bd, od](const Tensor& g) {
    const Tensor G = at_least_f32(g), A = at_least_f32(ad), B = at_least_f32(bd);
    const Tensor O = od.dtype() == A.dtype() ? od : pow(A, B);  // a 16-bit output recomputed, not its rounding
    Tensor ga = mul(G, mul(B, pow(A, sub(B, scalar_like(1, B)))));
    Tensor gb = mul(G, mul(O, log(A)));
    return Grads{sum_to(ga, ad.shape()).to(g.dtype()), sum_to(gb, bd.shape()).to(g.dtype())};
  });
}

Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::Eq, a, b, "eq"); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::Gt, a, b, "gt"); }

// ---------------------------------------------------------------- unary
Tensor affine(const Tensor& x, double alpha, double beta) {
  Tensor out = unary_raw(UnaryOp::Affine, x, alpha, beta);
  return record("affine", {x}, out, [alpha](const Tensor& g) { return Grads{affine(g, alpha, 0)}; });
}
Tensor add(const Tensor& a, double s) { return affine(a, 1, s); }
Tensor mul(const Tensor& a, double s) { return affine(a, s, 0); }
Tensor neg(const Tensor& x) { return affine(x, -1, 0); }

Tensor pow(const Tensor& x, double p) {
  Tensor out = unary_raw(UnaryOp::PowScalar, x, p);
  Tensor xd = x.detach();
  return record("pow", {x}, out, [xd, p](const Tensor& g) { return Grads{mul(g, mul(pow(xd, p - 1), p))}; });
}

Tensor exp(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Exp, x);
  Tensor od = out.detach();
  return record("exp", {x}, out, [od](const Tensor& g) { return Grads{mul(g, od)}; });
}

Tensor log(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Log, x);
  Tensor xd = x.detach();
  return record("log", {x}, out, [xd](const Tensor& g) { return Grads{div(g, xd)}; });
}

Tensor sqrt(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Sqrt, x);
  Tensor od = out.detach();
  return record("sqrt", {x}, out, [od](const Tensor& g) { return Grads{div(mul(g, 0.5), od)}; });
}

Tensor tanh(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Tanh, x);
  Tensor od = out.detach();
  return record("tanh", {x}, out, [od](const Tensor& g) {
    return Grads{mul(g, affine(mul(od, od), -1, 1))};  // 1 − tanh²
  });
}

Tensor erf(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Erf, x);
  Tensor xd = x.detach();
  return record("erf", {x}, out, [xd](const Tensor& g) {
    return Grads{mul(g, mul(exp(neg(mul(xd, xd))), 1.1283791670955126))};  // 2/√π · e^(−x²)
  });
}

Tensor abs(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Abs, x);
  Tensor xd = x.detach();
  return record("abs", {x}, out, [xd](const Tensor& g) {
    Tensor zero = scalar_like(0, xd);
    return Grads{mul(g, sub(gt(xd, zero), gt(zero, xd)))};  // sign(x), 0 at 0 like torch
  });
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  TS_CHECK(lo <= hi, "clamp: lo > hi");
  Tensor out = unary_raw(UnaryOp::Clamp, x, lo, hi);
  Tensor xd = x.detach();
  return record("clamp", {x}, out, [xd, lo, hi](const Tensor& g) {
    // Compared in at least fp32, as the forward compares: a bound rounded to bf16 (0.8 -> 0.80078125)
    // would let through an x the forward clamped.
    const Tensor xc = at_least_f32(xd);
    Tensor inside = mul(binary_raw(BinaryOp::Ge, xc, scalar_like(lo, xc), "clamp"),
                        binary_raw(BinaryOp::Ge, scalar_like(hi, xc), xc, "clamp"));
    return Grads{mul(g, inside.to(g.dtype()))};
  });
}

Tensor gelu(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::Gelu, x);
  Tensor xd = x.detach();
  return record("gelu", {x}, out, [xd](const Tensor& g) {
    return Grads{binary_raw(BinaryOp::GeluBackward, xd, g, "gelu_backward")};
  });
}

// ---------------------------------------------------------------- reductions
namespace {

struct Reduction {
  Tensor rows;         // x with reduced dims moved last, contiguous, viewed [outer, R]
  Shape kept_shape;    // output shape with keepdim
  Shape out_shape;     // output shape as requested
  std::vector<int64_t> perm;  // permutation applied to x
};

Reduction prepare_reduction(const Tensor& x, std::vector<int64_t> dims, bool keepdim, const char* op) {
  int64_t n = x.dim();
  if (dims.empty()) { dims.resize(size_t(n)); std::iota(dims.begin(), dims.end(), 0); }
  std::vector<bool> reduced(size_t(n), false);
  for (int64_t& d : dims) {
    d = wrap_dim(d, n, op);
    TS_CHECK(!reduced[size_t(d)], std::string(op) + ": dim " + std::to_string(d) + " repeated");
    reduced[size_t(d)] = true;
  }
  Reduction r;
  int64_t R = 1;
  for (int64_t d = 0; d < n; ++d) {
    if (reduced[size_t(d)]) { R *= x.size(d); r.kept_shape.push_back(1); continue; }
    r.perm.push_back(d);
    r.kept_shape.push_back(x.size(d));
    r.out_shape.push_back(x.size(d));
  }
  for (int64_t d = 0; d < n; ++d) if (reduced[size_t(d)]) r.perm.push_back(d);
  if (keepdim) r.out_shape = r.kept_shape;
  int64_t outer = R ? x.numel() / R : shape_numel(r.out_shape);
  Tensor xp = n ? x.detach().permute(r.perm) : x.detach();
  r.rows = xp.contiguous().reshape({outer, R});
  return r;
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Reduction r = prepare_reduction(x, dims, keepdim, "sum");
  Tensor out = Tensor::empty({r.rows.size(0)}, x.dtype(), x.device());
  if (out.numel()) backend(x.device()).reduce(ReduceOp::Sum, r.rows, out, nullptr);
  out = out.reshape(r.out_shape);
  return record("sum", {x}, out, [kept = r.kept_shape, full = x.shape()](const Tensor& g) {
    return Grads{g.reshape(kept).expand(full)};
  });
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Tensor s = sum(x, dims, keepdim);
  int64_t count = s.numel() ? x.numel() / s.numel() : 0;
  return mul(s, 1.0 / double(count));
}

namespace {
// Values and first-max indices (within the flattened reduced dims) of a max reduction.
std::pair<Tensor, Tensor> max_raw(const Reduction& r, const Tensor& x) {
  Tensor values = Tensor::empty({r.rows.size(0)}, x.dtype(), x.device());
  Tensor idx = Tensor::empty({r.rows.size(0)}, DType::i64, x.device());
  TS_CHECK(r.rows.size(1) > 0, "max: cannot reduce over an empty dimension of " + x.str());
  if (values.numel()) backend(x.device()).reduce(ReduceOp::Max, r.rows, values, &idx);
  return {values, idx};
}
}  // namespace

Tensor max(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Reduction r = prepare_reduction(x, dims, keepdim, "max");
  auto [values, idx] = max_raw(r, x);
  Tensor out = values.reshape(r.out_shape);
  std::vector<int64_t> inverse(r.perm.size());
  for (size_t i = 0; i < r.perm.size(); ++i) inverse[size_t(r.perm[i])] = int64_t(i);
  Shape permuted;
  for (int64_t d : r.perm) permuted.push_back(x.size(d));
  int64_t R = r.rows.size(1);
  DType dt = x.dtype();
  return record("max", {x}, out, [=, idx = idx](const Tensor& g) {  // (a structured binding is captured by name)
    // One-hot of the winning position in each reduced group, scaled by the group's gradient. Positions are
    // compared where they are exact integers (bf16 holds them only up to 256).
    const DType exact = R < (int64_t(1) << 24) ? DType::f32 : DType::f64;
    Tensor positions = Tensor::arange(R, exact, g.device()).reshape({1, R});
    Tensor onehot = eq(positions, idx.to(exact).reshape({-1, 1})).to(dt);
    Tensor gx = mul(onehot, g.contiguous().reshape({-1, 1}));
    return Grads{gx.reshape(permuted).permute(inverse)};
  });
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  Reduction r = prepare_reduction(x, {dim}, keepdim, "argmax");
  return max_raw(r, x).second.reshape(r.out_shape);
}

Tensor argmax(const Tensor& x) {
  Reduction r = prepare_reduction(x.reshape({-1}), {0}, false, "argmax");
  return max_raw(r, x).second.reshape({});
}

// ---------------------------------------------------------------- matmul
namespace {

// A matrix operand for GEMM without copying when it is row-major or a transposed row-major view.
struct GemmOperand { Tensor data; bool trans; };
GemmOperand as_gemm_operand(const Tensor& t) {
  if (t.is_contiguous()) return {t, false};
  Tensor tt = t.transpose(-1, -2);
  if (tt.is_contiguous()) return {tt, true};
  return {t.contiguous(), false};
}

Tensor matmul_raw(const Tensor& a, const Tensor& b) {
  check_same(a, b, "matmul");
  TS_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need 2+ dims: " + a.str() + ", " + b.str());
  int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  TS_CHECK(b.size(-2) == K, "matmul: inner dims differ: " + a.str() + " @ " + b.str());
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shape(ba, bb, "matmul");
  int64_t nb = shape_numel(batch);
  auto batched = [&](const Tensor& t, const Shape& own, int64_t rows, int64_t cols, int64_t& stride) {
    // One matrix shared by the whole batch: stride 0, no copy. Otherwise materialise the batch.
    if (shape_numel(own) == 1) { stride = 0; return as_gemm_operand(t.detach().reshape({rows, cols})); }
    Shape full = batch;
    full.push_back(rows);
    full.push_back(cols);
    GemmOperand op = as_gemm_operand(t.detach().expand(full).reshape({nb, rows, cols}));
    stride = rows * cols;
    return op;
  };
  GemmArgs g;
  GemmOperand A = batched(a, ba, M, K, g.stride_a), B = batched(b, bb, K, N, g.stride_b);
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  if (K == 0) { out.fill_(0); return out; }
  g.trans_a = A.trans; g.trans_b = B.trans;
  g.batch = nb; g.M = M; g.N = N; g.K = K;
  g.A = A.data; g.B = B.data; g.C = out;
  g.stride_c = M * N;
  backend(a.device()).gemm(g);
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  TS_CHECK(a.defined() && b.defined(), "matmul: undefined tensor");
  TS_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: 0-d operand");
  if (a.dim() == 1 && b.dim() == 1) return matmul(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  if (a.dim() == 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul(a, b.unsqueeze(-1)).squeeze(-1);
  Tensor out = matmul_raw(a, b);
  Tensor ad = a.detach(), bd = b.detach();
  return record("matmul", {a, b}, out, [ad, bd](const Tensor& g) {
    // A b that is the transpose of a contiguous matrix (a linear layer's Wᵀ) gets its gradient in that
    // layout, (gᵀ·a)ᵀ: the transpose's backward then hands W a contiguous gradient, which autograd adopts,
    // where aᵀ·g would have been copied across (a [192, 192] transpose a layer, 7 % of a small CvT's step at
    // batch 8). Same products and sums.
    const bool b_transposed = ad.dim() == 2 && bd.dim() == 2 && bd.size(0) > 1 && bd.size(1) > 1 &&
                              bd.strides()[0] == 1 && bd.strides()[1] == bd.size(0);
    Tensor db = b_transposed ? matmul_raw(g.transpose(-1, -2), ad).transpose(-1, -2)
                             : matmul_raw(ad.transpose(-1, -2), g);
    return Grads{sum_to(matmul_raw(g, bd.transpose(-1, -2)), ad.shape()), sum_to(db, bd.shape())};
  });
}

namespace {
// A linear layer's operands checked, the messages naming `op`: weight [out, in], x ending in in_features, a
// bias [out] (or none, where allowed). Returns x's rows (M, in) and the output's shape (x's with out last).
std::pair<Tensor, Shape> linear_rows(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                                     bool bias_required) {
  const std::string name(op);
  TS_CHECK(weight.dim() == 2, name + ": weight must be [out, in], got " + weight.str());
  TS_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
           name + ": input " + x.str() + " does not end in in_features " + std::to_string(weight.size(1)));
  TS_CHECK(bias.defined() ? bias.dim() == 1 && bias.size(0) == weight.size(0) : !bias_required,
           name + ": bias " + (bias.defined() ? bias.str() : std::string("undefined")) + " for " + weight.str());
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  return {x.reshape({-1, weight.size(1)}), out_shape};
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  const auto [x2, out_shape] = linear_rows("linear", x, weight, bias, false);  // x2: (M, in)
  TS_CHECK(!residual.defined() || residual.shape() == out_shape,
           "linear: residual " + (residual.defined() ? residual.str() : std::string()) + " for an output of " +
               shape_str(out_shape));
  if (!bias.defined() || x2.numel() == 0 || weight.numel() == 0) {
    Tensor y = matmul(x2, weight.transpose(0, 1)).reshape(out_shape);
    if (bias.defined()) y = add(y, bias);
    return residual.defined() ? add(y, residual) : y;
  }
  check_same(x2, weight, "linear");
  check_same(x2, bias, "linear");
  if (residual.defined()) check_same(x2, residual, "linear");
  // One backend call with the bias and the residual in it (Backend::linear); the backward as matmul's and
  // the adds': dx = g·W, dW = gᵀ·x (in W's own layout, so W adopts it), dbias = Σ_rows g, dresidual = g.
  const Tensor xc = x2.detach().contiguous(), wc = weight.detach().contiguous();
  const Tensor r2 = residual.defined() ? residual.reshape({x2.size(0), weight.size(0)}) : residual;
  Tensor y = Tensor::empty({x2.size(0), weight.size(0)}, x.dtype(), x.device());
  backend(x.device()).linear(xc, wc, bias.detach().contiguous(), r2.defined() ? r2.detach().contiguous() : r2, y);
  auto wants = [](const Tensor& t) { return t.defined() && t.requires_grad() && grad_enabled(); };
  const bool gx = wants(x2), gw = wants(weight), gb = wants(bias), gr = wants(r2);
  return record("linear", {x2, weight, bias, r2}, y, [xc, wc, gx, gw, gb, gr](const Tensor& g) {
           return Grads{gx ? matmul_raw(g, wc) : Tensor(), gw ? matmul_raw(g.transpose(0, 1), xc) : Tensor(),
                        gb ? sum_to(g, {wc.size(0)}) : Tensor(), gr ? g : Tensor()};
         })
      .reshape(out_shape);
}

Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const auto [x2, out_shape] = linear_rows("linear_gelu", x, weight, bias, true);  // x2: (M, in)
  if (x2.numel() == 0 || weight.numel() == 0) return bias_gelu(linear(x, weight), bias);
  check_same(x2, weight, "linear_gelu");
  check_same(x2, bias, "linear_gelu");
  // One backend call (Backend::linear_gelu); the product h = x·Wᵀ kept only for a backward, which is
  // bias_gelu's on h and then the linear layer's: dx = dh·W, dW = dhᵀ·x (in W's layout), dbias from the first.
  const Tensor xc = x2.detach().contiguous(), wc = weight.detach().contiguous(), bc = bias.detach().contiguous();
  auto wants = [](const Tensor& t) { return t.requires_grad() && grad_enabled(); };
  const bool gx = wants(x2), gw = wants(weight), gb = wants(bias);
  const int64_t M = x2.size(0), N = weight.size(0);
  Tensor h = gx || gw || gb ? Tensor::empty({M, N}, x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty({M, N}, x.dtype(), x.device());
  backend(x.device()).linear_gelu(xc, wc, bc, h, y);
  return record("linear_gelu", {x2, weight, bias}, y, [xc, wc, bc, h, gx, gw, gb](const Tensor& g) {
           const Tensor dy = g.detach().contiguous();
           Tensor dh = Tensor::empty(dy.shape(), dy.dtype(), dy.device()), db;
           if (gb) db = Tensor::empty({wc.size(0)}, dy.dtype(), dy.device());
           backend(dy.device()).bias_gelu_backward(dy, h, bc, dh, db);
           return Grads{gx ? matmul_raw(dh, wc) : Tensor(), gw ? matmul_raw(dh.transpose(0, 1), xc) : Tensor(), db};
         })
      .reshape(out_shape);
}

// ---------------------------------------------------------------- joining and indexing
Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  TS_CHECK(!xs.empty(), "concat: no tensors");
  const Tensor& first = xs[0];
  dim = wrap_dim(dim, first.dim(), "concat");
  Shape shape = first.shape();
  int64_t total = 0;
  for (const Tensor& x : xs) {
    check_same(first, x, "concat");
    TS_CHECK(x.dim() == first.dim(), "concat: ranks differ: " + first.str() + " and " + x.str());
    for (int64_t d = 0; d < x.dim(); ++d)
      TS_CHECK(d == dim || x.size(d) == first.size(d),
               "concat: " + first.str() + " and " + x.str() + " differ outside dim " + std::to_string(dim));
    total += x.size(dim);
  }
  shape[size_t(dim)] = total;
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    Tensor dst = out.slice(dim, at, at + x.size(dim));
    dst.copy_(x.detach());
    at += x.size(dim);
  }
  return record("concat", xs, out, [starts, dim, xs_sizes = [&] {
                  std::vector<int64_t> s;
                  for (const Tensor& x : xs) s.push_back(x.size(dim));
                  return s;
                }()](const Tensor& g) {
    Grads grads;
    for (size_t i = 0; i < starts.size(); ++i) grads.push_back(g.slice(dim, starts[i], starts[i] + xs_sizes[i]));
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) { TS_CHECK(s >= 0, "split: negative size"); total += s; }
  TS_CHECK(total == x.size(dim), "split: sizes add up to " + std::to_string(total) + ", dim " +
                                     std::to_string(dim) + " of " + x.str() + " has " + std::to_string(x.size(dim)));
  std::vector<Tensor> parts;
  int64_t at = 0;
  for (int64_t s : sizes) { parts.push_back(x.slice(dim, at, at + s)); at += s; }
  return parts;
}

std::vector<Tensor> split(const Tensor& x, int64_t chunk, int64_t dim) {
  TS_CHECK(chunk > 0, "split: chunk size must be positive");
  int64_t n = x.size(dim);
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n; at += chunk) sizes.push_back(std::min(chunk, n - at));
  return split(x, sizes, dim);
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  dim = wrap_dim(dim, x.dim(), "index_select");
  TS_CHECK(index.dim() == 1 && index.dtype() == DType::i64, "index_select: index must be a 1-d i64 tensor, got " + index.str());
  TS_CHECK(index.device() == x.device(), "index_select: index on " + std::string(device_name(index.device())) +
                                             ", input on " + device_name(x.device()));
  int64_t outer = 1, inner = 1, n = x.size(dim), m = index.numel();
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  Shape out_shape = x.shape();
  out_shape[size_t(dim)] = m;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor idx = index.contiguous();
  if (out.numel()) {
    Tensor src = x.detach().contiguous().reshape({outer, n, inner});
    Tensor dst = out.reshape({outer, m, inner});
    backend(x.device()).index_select(src, idx, dst);
  }
  return record("index_select", {x}, out, [=, in_shape = x.shape()](const Tensor& g) {
    Tensor gx = Tensor::zeros(in_shape, g.dtype(), g.device());
    if (g.numel()) {
      Tensor dst = gx.reshape({outer, n, inner});
      backend(g.device()).index_add(g.contiguous().reshape({outer, m, inner}), idx, dst);
    }
    return Grads{gx};
  });
}

// ================================================================ watching the graph
Tensor with_gradient_hook(const Tensor& x, std::function<void(const Tensor&)> hook) {
  TS_CHECK(x.defined() && hook, "with_gradient_hook: needs a defined tensor and a hook");
  if (!needs_grad({&x})) return x;
  return record("gradient_hook", {x}, x.detach(), [hook = std::move(hook)](const Tensor& g) {
    hook(g);
    return Grads{g};
  });
}

}  // namespace tessera
