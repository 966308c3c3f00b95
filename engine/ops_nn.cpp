// The differentiable neural-network ops of engine/ops.h: validation, layout, the backend call, and the
// backward rule. Kernels receive detached, contiguous tensors (history-free: the op records its own node
// against the caller's tensors, whatever their strides), and rules capture only such detached tensors.
#include <cmath>
#include <string>

#include "engine/core/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/core/backend.h"

namespace tessera {

namespace {

// The kernels' view of an input: contiguous and without history. Undefined stays undefined.
Tensor plain(const Tensor& t) { return t.defined() ? t.detach().contiguous() : t; }

void check_float(const char* op, const char* what, const Tensor& t) {
  TS_CHECK(is_floating(t.dtype()), std::string(op) + ": " + what + " must be floating point, got " + t.str());
}

// `t` (if defined) must share `ref`'s dtype and device.
void check_like(const char* op, const char* what, const Tensor& t, const char* ref_name, const Tensor& ref) {
  if (!t.defined()) return;
  TS_CHECK(t.dtype() == ref.dtype() && t.device() == ref.device(),
           std::string(op) + ": " + what + " " + t.str() + " must have the dtype and device of " + ref_name +
               " " + ref.str());
}

// `t` (if defined) must be a vector of n elements.
void check_vec(const char* op, const char* what, const Tensor& t, int64_t n, const std::string& why) {
  if (!t.defined()) return;
  TS_CHECK(t.dim() == 1 && t.size(0) == n,
           std::string(op) + ": " + what + " must have shape [" + std::to_string(n) + "] (" + why + "), got " +
               t.str());
}

bool wants_grad(const Tensor& t) { return t.defined() && t.requires_grad() && grad_enabled(); }

// x [N, C, H, W] whose memory is [N, H, W, C] (any batch stride): a view of tokens [N, H·W, C] as an image,
// which is how CvT's projections see the token grid. Depthwise conv2d and batch_norm2d keep such an input
// channels-last (Backend::depthwise_conv2d_nhwc, batch_norm_nhwc) and return it so, so the chain tokens →
// conv → norm → tokens never transposes.
bool channels_last(const Tensor& x) {
  if (x.dim() != 4 || x.size(1) < 2) return false;
  const Shape& st = x.strides();
  return st[1] == 1 && (x.size(3) == 1 || st[3] == x.size(1)) && (x.size(2) == 1 || st[2] == x.size(3) * x.size(1));
}

// The kernels' view of a channels-last x: contiguous [N, H, W, C] (a copy only for a sparse batch stride).
Tensor plain_nhwc(const Tensor& x) { return plain(x.permute({0, 2, 3, 1})); }
// A contiguous [N, H, W, C] seen as [N, C, H, W].
Tensor as_nchw(const Tensor& nhwc) { return nhwc.defined() ? nhwc.permute({0, 3, 1, 2}) : nhwc; }

}  // namespace

// ================================================================ conv2d
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding,
              int64_t groups) {
  Conv2dArgs a;
  a.stride_h = a.stride_w = stride;
  a.pad_h = a.pad_w = padding;
  a.groups = groups;
  return conv2d(x, weight, bias, a);
}

namespace {

// Checks conv2d's arguments (naming `op` in errors) and returns the output size {Ho, Wo}.
std::pair<int64_t, int64_t> check_conv2d(const char* op_name, const Tensor& x, const Tensor& weight,
                                         const Tensor& bias, const Conv2dArgs& a) {
  const std::string opn = op_name;
  const char* op = op_name;
  TS_CHECK(x.defined() && weight.defined(), opn + ": x and weight must be defined");
  TS_CHECK(x.dim() == 4, opn + ": x must be [N, Cin, H, W], got " + x.str());
  TS_CHECK(weight.dim() == 4, opn + ": weight must be [Cout, Cin/groups, kh, kw], got " + weight.str());
  check_float(op, "x", x);
  check_like(op, "weight", weight, "x", x);
  check_like(op, "bias", bias, "x", x);
  TS_CHECK(a.stride_h >= 1 && a.stride_w >= 1 && a.pad_h >= 0 && a.pad_w >= 0 && a.groups >= 1,
           opn + ": need stride >= 1, padding >= 0, groups >= 1; got stride (" + std::to_string(a.stride_h) +
               ", " + std::to_string(a.stride_w) + "), padding (" + std::to_string(a.pad_h) + ", " +
               std::to_string(a.pad_w) + "), groups " + std::to_string(a.groups));
  const int64_t Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = weight.size(0), kh = weight.size(2), kw = weight.size(3), G = a.groups;
  const std::string shapes = " (x " + x.str() + ", weight " + weight.str() + ", groups " + std::to_string(G) + ")";
  TS_CHECK(Cin % G == 0 && Cout % G == 0,
           opn + ": input channels " + std::to_string(Cin) + " and output channels " + std::to_string(Cout) +
               " must both be divisible by groups" + shapes);
  TS_CHECK(weight.size(1) == Cin / G, opn + ": weight expects " + std::to_string(weight.size(1) * G) +
                                          " input channels, x has " + std::to_string(Cin) + shapes);
  TS_CHECK(kh >= 1 && kw >= 1, opn + ": empty kernel" + shapes);
  check_vec(op, "bias", bias, Cout, "one per output channel");
  TS_CHECK(H + 2 * a.pad_h >= kh && W + 2 * a.pad_w >= kw,
           opn + ": the " + std::to_string(kh) + "x" + std::to_string(kw) + " kernel is larger than the padded " +
               std::to_string(H + 2 * a.pad_h) + "x" + std::to_string(W + 2 * a.pad_w) + " input" + shapes);
  return {(H + 2 * a.pad_h - kh) / a.stride_h + 1, (W + 2 * a.pad_w - kw) / a.stride_w + 1};
}

}  // namespace

// A depthwise conv of a channels-last x stays channels-last (Backend::depthwise_conv2d_nhwc), as
// batch_norm2d does; every other conv runs on NCHW.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dArgs& a) {
  const auto [Ho, Wo] = check_conv2d("conv2d", x, weight, bias, a);
  const bool nhwc = a.groups == x.size(1) && weight.size(0) == x.size(1) && channels_last(x);
  Tensor xc = nhwc ? plain_nhwc(x) : plain(x), wc = plain(weight), bc = plain(bias);
  Tensor y = nhwc ? Tensor::empty({x.size(0), Ho, Wo, x.size(1)}, x.dtype(), x.device())
                  : Tensor::empty({x.size(0), weight.size(0), Ho, Wo}, x.dtype(), x.device());
  if (y.numel() > 0) {
    if (nhwc) backend(x.device()).depthwise_conv2d_nhwc(xc, wc, bc, a, y);
    else backend(x.device()).conv2d(xc, wc, bc, a, y);
  }
  const bool gx = wants_grad(x), gw = wants_grad(weight), gb = wants_grad(bias);
  return record("conv2d", {x, weight, bias}, nhwc ? as_nchw(y) : y, [xc, wc, a, gx, gw, gb, nhwc](const Tensor& g) {
    Tensor dy = nhwc ? plain_nhwc(g) : plain(g), dx, dw, db;
    if (gx) dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    if (gw) dw = Tensor::empty(wc.shape(), wc.dtype(), wc.device());
    if (gb) db = Tensor::empty({wc.size(0)}, wc.dtype(), wc.device());
    if (dy.numel() > 0) {
      Backend& be = backend(xc.device());
      if (nhwc) be.depthwise_conv2d_nhwc_backward(dy, xc, wc, a, dx, dw, db);
      else be.conv2d_backward(dy, xc, wc, a, dx, dw, db);
    } else {  // no output pixels: nothing flows back
      for (Tensor* t : {&dx, &dw, &db})
        if (t->defined()) t->fill_(0);
    }
    return std::vector<Tensor>{nhwc ? as_nchw(dx) : dx, dw, db};
  });
}

// ================================================================ batch norm
Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                    Tensor running_var, Tensor num_batches_tracked, bool training, double momentum,
                    double eps) {
  const char* op = "batch_norm2d";
  TS_CHECK(x.defined() && x.dim() == 4, "batch_norm2d: x must be [N, C, H, W], got " + x.str());
  check_float(op, "x", x);
  const int64_t N = x.size(0), C = x.size(1), n = N * x.size(2) * x.size(3);
  check_like(op, "weight", weight, "x", x);
  check_like(op, "bias", bias, "x", x);
  check_vec(op, "weight", weight, C, "one per channel of x " + x.str());
  check_vec(op, "bias", bias, C, "one per channel of x " + x.str());
  check_vec(op, "running_mean", running_mean, C, "one per channel of x " + x.str());
  check_vec(op, "running_var", running_var, C, "one per channel of x " + x.str());
  TS_CHECK(eps >= 0, "batch_norm2d: eps must be >= 0, got " + std::to_string(eps));
  if (num_batches_tracked.defined())
    TS_CHECK(num_batches_tracked.numel() == 1,
             "batch_norm2d: num_batches_tracked must be a scalar, got " + num_batches_tracked.str());
  const DType sdt = stat_dtype(x.dtype());
  Tensor mean, invstd;
  if (training) {
    // As torch: one value per channel has no variance to normalise by.
    TS_CHECK(n > 1, "batch_norm2d: training needs more than 1 value per channel, x is " + x.str());
    mean = Tensor::empty({C}, sdt, x.device());
    invstd = Tensor::empty({C}, sdt, x.device());
  } else {
    TS_CHECK(running_mean.defined() && running_var.defined(),
             "batch_norm2d: eval mode needs running_mean and running_var");
    NoGradGuard ng;
    // Copies (never aliases of the buffers): the backward must see the statistics of this call.
    mean = running_mean.detach().to(x.device()).to(sdt).clone();
    invstd = pow(add(running_var.detach().to(x.device()).to(sdt), eps), -0.5).contiguous();
  }

  const bool nhwc = channels_last(x);
  Tensor xc = nhwc ? plain_nhwc(x) : plain(x), wc = plain(weight), bc = plain(bias);
  Tensor y = Tensor::empty(xc.shape(), x.dtype(), x.device());
  if (x.numel() > 0) {
    if (nhwc) backend(x.device()).batch_norm_nhwc(xc, wc, bc, mean, invstd, eps, training, y);
    else backend(x.device()).batch_norm(xc, wc, bc, mean, invstd, eps, training, y);
  }

  if (training) {
    NoGradGuard ng;
    // running = (1 − m)·running + m·batch, with the UNBIASED variance n/(n−1)·var, as torch does. The kernel
    // hands back invstd = 1/√(var + eps), so var = invstd⁻² − eps: exact up to a few ulp of (var + eps) in
    // the statistics' dtype (f32 for f32 data), the order of the rounding of an fp32 buffer itself.
    if (running_mean.defined()) {
      Tensor bm = mean.to(running_mean.device()).to(running_mean.dtype());
      running_mean.copy_(add(mul(running_mean, 1.0 - momentum), mul(bm, momentum)));
    }
    if (running_var.defined()) {
      const double f = double(n) / double(n - 1);
      Tensor unbiased = affine(pow(invstd, -2.0), f, -eps * f);  // f·(invstd⁻² − eps)
      unbiased = unbiased.to(running_var.device()).to(running_var.dtype());
      running_var.copy_(add(mul(running_var, 1.0 - momentum), mul(unbiased, momentum)));
    }
    // A host round trip (one scalar) keeps the count exact in i64 whatever elementwise dtypes a backend has.
    if (num_batches_tracked.defined()) num_batches_tracked.fill_(num_batches_tracked.item() + 1);
  }

  const bool gx = wants_grad(x), gw = wants_grad(weight), gb = wants_grad(bias);
  return record("batch_norm2d", {x, weight, bias}, nhwc ? as_nchw(y) : y,
                [xc, wc, mean, invstd, training, gx, gw, gb, nhwc, C](const Tensor& g) {
                  Tensor dy = nhwc ? plain_nhwc(g) : plain(g), dx, dw, db;
                  if (gx) dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
                  if (gw) dw = Tensor::empty({C}, xc.dtype(), xc.device());
                  if (gb) db = Tensor::empty({C}, xc.dtype(), xc.device());
                  if (xc.numel() > 0) {
                    Backend& be = backend(xc.device());
                    if (nhwc) be.batch_norm_nhwc_backward(dy, xc, wc, mean, invstd, training, dx, dw, db);
                    else be.batch_norm_backward(dy, xc, wc, mean, invstd, training, dx, dw, db);
                  } else {
                    for (Tensor* t : {&dw, &db})
                      if (t->defined()) t->fill_(0);
                  }
                  return std::vector<Tensor>{nhwc ? as_nchw(dx) : dx, dw, db};
                });
}

// ================================================================ bias + GELU
Tensor bias_gelu(const Tensor& x, const Tensor& bias) {
  const char* op = "bias_gelu";
  TS_CHECK(x.defined() && x.dim() >= 1 && bias.defined(), "bias_gelu: x (..., C) and bias (C) must be defined");
  check_float(op, "x", x);
  check_like(op, "bias", bias, "x", x);
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  check_vec(op, "bias", bias, C, "the last dim of x " + x.str());
  Tensor xc = plain(x).reshape({rows, C}), bc = plain(bias);
  Tensor y = Tensor::empty({rows, C}, x.dtype(), x.device());
  if (y.numel() > 0) backend(x.device()).bias_gelu(xc, bc, y);
  const bool gx = wants_grad(x), gb = wants_grad(bias);
  const Shape shape = x.shape();
  return record(op, {x, bias}, y.reshape(shape), [xc, bc, gx, gb, rows, C, shape](const Tensor& g) {
    Tensor dy = plain(g).reshape({rows, C}), dx, db;
    if (gx) dx = Tensor::empty({rows, C}, xc.dtype(), xc.device());
    if (gb) db = Tensor::empty({C}, xc.dtype(), xc.device());
    if (rows > 0) backend(xc.device()).bias_gelu_backward(dy, xc, bc, dx, db);
    else if (db.defined()) db.fill_(0);
    return std::vector<Tensor>{gx ? dx.reshape(shape) : dx, db};
  });
}

// ================================================================ attention probabilities
Tensor attention_probabilities(const Tensor& q, const Tensor& k, double scale) {
  TS_CHECK(q.defined() && k.defined() && q.dim() >= 2 && k.dim() == q.dim() && q.size(-1) == k.size(-1),
           "attention_probabilities: q (..., Tq, D) and k (..., Tk, D) must agree, got " +
               (q.defined() ? q.str() : "undefined") + " and " + (k.defined() ? k.str() : "undefined"));
  NoGradGuard no_grad;
  // In f32 at least: probabilities of bf16 activations are for reading, not for another bf16 rounding.
  const DType dt = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  return softmax(mul(matmul(q.detach().to(dt), k.detach().to(dt).transpose(-1, -2)), scale), -1);
}

// ================================================================ conv token embedding
Tensor conv_embedding(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding,
                      const Tensor& ln_weight, const Tensor& ln_bias, double eps) {
  const char* op = "conv_embedding";
  Conv2dArgs a;
  a.stride_h = a.stride_w = stride;
  a.pad_h = a.pad_w = padding;
  const auto [Ho, Wo] = check_conv2d(op, x, weight, bias, a);
  const int64_t N = x.size(0), C = weight.size(0), P = Ho * Wo;
  check_like(op, "ln_weight", ln_weight, "x", x);
  check_like(op, "ln_bias", ln_bias, "x", x);
  check_vec(op, "ln_weight", ln_weight, C, "one per output channel");
  check_vec(op, "ln_bias", ln_bias, C, "one per output channel");
  TS_CHECK(eps >= 0, "conv_embedding: eps must be >= 0, got " + std::to_string(eps));
  // A channels-last x (the previous stage's tokens seen as an image) is embedded as it lies
  // (Backend::conv_embedding_nhwc), and its gradient comes back in that layout.
  const bool nhwc = channels_last(x);
  Tensor xc = nhwc ? plain_nhwc(x) : plain(x), wc = plain(weight), bc = plain(bias), lwc = plain(ln_weight),
         lbc = plain(ln_bias);
  Tensor tokens = Tensor::empty({N, P, C}, x.dtype(), x.device());
  Tensor pre = Tensor::empty({N, P, C}, x.dtype(), x.device());
  const DType sdt = stat_dtype(x.dtype());
  Tensor mean = Tensor::empty({N * P}, sdt, x.device()), rstd = Tensor::empty({N * P}, sdt, x.device());
  if (tokens.numel() > 0) {
    Backend& be = backend(x.device());
    if (nhwc) be.conv_embedding_nhwc(xc, wc, bc, a, lwc, lbc, eps, tokens, pre, mean, rstd);
    else be.conv_embedding(xc, wc, bc, a, lwc, lbc, eps, tokens, pre, mean, rstd);
  }
  const bool gx = wants_grad(x), gw = wants_grad(weight), gb = wants_grad(bias);
  const bool glw = wants_grad(ln_weight), glb = wants_grad(ln_bias);
  return record(op, {x, weight, bias, ln_weight, ln_bias}, tokens,
                [xc, wc, lwc, pre, mean, rstd, a, gx, gw, gb, glw, glb, C, nhwc](const Tensor& g) {
    Tensor dy = plain(g), dx, dw, db, dlw, dlb;
    auto make = [&](bool want, const Shape& shape) {
      return want ? Tensor::empty(shape, xc.dtype(), xc.device()) : Tensor();
    };
    dx = make(gx, xc.shape()), dw = make(gw, wc.shape()), db = make(gb, {C}), dlw = make(glw, {C}), dlb = make(glb, {C});
    if (dy.numel() > 0) {
      Backend& be = backend(xc.device());
      if (nhwc) be.conv_embedding_nhwc_backward(dy, xc, wc, a, pre, lwc, mean, rstd, dx, dw, db, dlw, dlb);
      else be.conv_embedding_backward(dy, xc, wc, a, pre, lwc, mean, rstd, dx, dw, db, dlw, dlb);
    } else {
      for (Tensor* t : {&dx, &dw, &db, &dlw, &dlb})
        if (t->defined()) t->fill_(0);
    }
    return std::vector<Tensor>{nhwc ? as_nchw(dx) : dx, dw, db, dlw, dlb};
  });
}

// ================================================================ layer norm
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  TS_CHECK(x.defined() && x.dim() >= 1, "layer_norm: x must have at least one dim, got " + x.str());
  check_float(op, "x", x);
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  check_like(op, "weight", weight, "x", x);
  check_like(op, "bias", bias, "x", x);
  check_vec(op, "weight", weight, C, "the last dim of x " + x.str());
  check_vec(op, "bias", bias, C, "the last dim of x " + x.str());
  TS_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got " + std::to_string(eps));
  Tensor xc = plain(x), wc = plain(weight), bc = plain(bias);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const DType sdt = stat_dtype(x.dtype());
  Tensor mean = Tensor::empty({rows}, sdt, x.device()), rstd = Tensor::empty({rows}, sdt, x.device());
  if (x.numel() > 0) backend(x.device()).layer_norm(xc, wc, bc, eps, y, mean, rstd);
  const bool gx = wants_grad(x), gw = wants_grad(weight), gb = wants_grad(bias);
  return record("layer_norm", {x, weight, bias}, y, [xc, wc, mean, rstd, gx, gw, gb, C](const Tensor& g) {
    Tensor dy = plain(g), dx, dw, db;
    if (gx) dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    if (gw) dw = Tensor::empty({C}, xc.dtype(), xc.device());
    if (gb) db = Tensor::empty({C}, xc.dtype(), xc.device());
    if (xc.numel() > 0) {
      backend(xc.device()).layer_norm_backward(dy, xc, wc, mean, rstd, dx, dw, db);
    } else {
      for (Tensor* t : {&dw, &db})
        if (t->defined()) t->fill_(0);
    }
    return std::vector<Tensor>{dx, dw, db};
  });
}

// ================================================================ softmax
namespace {

// Softmax over `dim`: that dim is moved last (transpose of the detached input, made contiguous) so the
// kernel sees [rows, C]; the result is moved back. The node is recorded against the caller's x.
Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  TS_CHECK(x.defined(), std::string(op) + ": x is undefined");
  check_float(op, "x", x);
  const int64_t d = wrap_dim(dim, x.dim(), op);
  const int64_t last = std::max<int64_t>(x.dim() - 1, 0);
  auto to_last = [d, last](const Tensor& t) { return (d == last ? t : t.transpose(d, last)).contiguous(); };
  auto from_last = [d, last](const Tensor& t) { return d == last ? t : t.transpose(d, last).contiguous(); };

  Tensor xt = to_last(x.detach());
  Tensor yt = Tensor::empty(xt.shape(), xt.dtype(), xt.device());
  if (xt.numel() > 0) backend(x.device()).softmax(xt, yt, log);
  Tensor y = from_last(yt);
  Tensor saved = yt.detach();  // never the returned tensor itself (it will hold this node)
  return record(op, {x}, y, [saved, log, to_last, from_last](const Tensor& g) {
    Tensor gt = to_last(g.detach()), dx = Tensor::empty(saved.shape(), saved.dtype(), saved.device());
    if (gt.numel() > 0) backend(saved.device()).softmax_backward(saved, gt, dx, log);
    return std::vector<Tensor>{from_last(dx)};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

// ================================================================ attention
namespace {
// q, k and v defined, floating, of one dtype and device; returns their shapes for error messages.
std::string checked_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  TS_CHECK(q.defined() && k.defined() && v.defined(), std::string(op) + ": q, k and v must be defined");
  check_float(op, "q", q);
  check_like(op, "k", k, "q", q);
  check_like(op, "v", v, "q", q);
  return " (q " + q.str() + ", k " + k.str() + ", v " + v.str() + ")";
}
}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const char* op = "scaled_dot_product_attention";
  const std::string shapes = checked_attention_inputs(op, q, k, v);
  TS_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim(),
           std::string(op) + ": q, k, v must be (..., T, D) of one rank >= 2" + shapes);
  const int64_t r = q.dim(), Tq = q.size(-2), Tk = k.size(-2), D = q.size(-1);
  for (int64_t i = 0; i < r - 2; ++i)
    TS_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i),
             std::string(op) + ": leading dims of q, k, v must match" + shapes);
  TS_CHECK(k.size(-1) == D && v.size(-1) == D,
           std::string(op) + ": q, k and v must share the last (head) dim" + shapes);
  TS_CHECK(v.size(-2) == Tk, std::string(op) + ": k and v must have the same number of keys" + shapes);
  TS_CHECK(Tk >= 1, std::string(op) + ": no keys to attend to" + shapes);
  // Leading dims become [B, H]: kept when there are exactly two, else flattened to [prod, 1].
  int64_t B = 1, H = 1;
  if (r == 4) { B = q.size(0); H = q.size(1); }
  else for (int64_t i = 0; i < r - 2; ++i) B *= q.size(i);
  Tensor qc = plain(q).reshape({B, H, Tq, D}), kc = plain(k).reshape({B, H, Tk, D}),
         vc = plain(v).reshape({B, H, Tk, D});
  Tensor out = Tensor::empty({B, H, Tq, D}, q.dtype(), q.device());
  Tensor lse = Tensor::empty({B, H, Tq}, stat_dtype(q.dtype()), q.device());
  if (out.numel() > 0) {
    backend(q.device()).attention(qc, kc, vc, scale, out, lse);
  } else if (lse.numel() > 0) {
    lse.fill_(0);
  }
  Tensor y = out.view(q.shape());
  Tensor saved_out = out.detach();
  const bool gq = wants_grad(q), gk = wants_grad(k), gv = wants_grad(v);
  const Shape qs = q.shape(), ks = k.shape(), vs = v.shape();
  return record(op, {q, k, v}, y,
                [qc, kc, vc, saved_out, lse, scale, gq, gk, gv, qs, ks, vs](const Tensor& g) {
                  Tensor dout = plain(g).reshape(qc.shape()), dq, dk, dv;
                  if (gq) dq = Tensor::empty(qc.shape(), qc.dtype(), qc.device());
                  if (gk) dk = Tensor::empty(kc.shape(), kc.dtype(), kc.device());
                  if (gv) dv = Tensor::empty(vc.shape(), vc.dtype(), vc.device());
                  if (qc.numel() > 0 || kc.numel() > 0) {
                    backend(qc.device()).attention_backward(dout, qc, kc, vc, saved_out, lse, scale, dq, dk, dv);
                  }
                  return std::vector<Tensor>{dq.defined() ? dq.view(qs) : dq, dk.defined() ? dk.view(ks) : dk,
                                             dv.defined() ? dv.view(vs) : dv};
                });
}

Tensor attention_tokens(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, double scale) {
  const char* op = "attention_tokens";
  const std::string shapes = checked_attention_inputs(op, q, k, v);
  TS_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, std::string(op) + ": q, k, v must be (B, T, C)" + shapes);
  const int64_t B = q.size(0), Tq = q.size(1), C = q.size(2), Tk = k.size(1);
  TS_CHECK(k.size(0) == B && v.size(0) == B && k.size(2) == C && v.size(2) == C && v.size(1) == Tk,
           std::string(op) + ": q, k, v must share B and C, k and v their T" + shapes);
  TS_CHECK(heads >= 1 && C % heads == 0,
           std::string(op) + ": " + std::to_string(C) + " channels do not split into " + std::to_string(heads) + " heads");
  TS_CHECK(Tk >= 1, std::string(op) + ": no keys to attend to" + shapes);
  const Tensor qc = plain(q), kc = plain(k), vc = plain(v);
  Tensor out = Tensor::empty({B, Tq, C}, q.dtype(), q.device());
  Tensor lse = Tensor::empty({B, heads, Tq}, stat_dtype(q.dtype()), q.device());
  if (out.numel() > 0) backend(q.device()).attention_tokens(qc, kc, vc, heads, scale, out, lse);
  else if (lse.numel() > 0) lse.fill_(0);
  const Tensor saved_out = out.detach();
  const bool gq = wants_grad(q), gk = wants_grad(k), gv = wants_grad(v);
  return record(op, {q, k, v}, out, [qc, kc, vc, saved_out, lse, heads, scale, gq, gk, gv](const Tensor& g) {
    Tensor dq = gq ? Tensor::empty(qc.shape(), qc.dtype(), qc.device()) : Tensor();
    Tensor dk = gk ? Tensor::empty(kc.shape(), kc.dtype(), kc.device()) : Tensor();
    Tensor dv = gv ? Tensor::empty(vc.shape(), vc.dtype(), vc.device()) : Tensor();
    if (qc.numel() > 0)
      backend(qc.device()).attention_tokens_backward(plain(g), qc, kc, vc, saved_out, lse, heads, scale, dq, dk, dv);
    else {  // no queries: nothing reaches k or v
      if (dk.defined()) dk.fill_(0);
      if (dv.defined()) dv.fill_(0);
    }
    return std::vector<Tensor>{dq, dk, dv};
  });
}

// ================================================================ dropout, drop path
namespace {

Tensor masked_scale(const Tensor& x, double p, bool training, Generator& gen, const Shape& mask_shape,
                    const char* op) {
  TS_CHECK(x.defined(), std::string(op) + ": x is undefined");
  TS_CHECK(p >= 0 && p <= 1, std::string(op) + ": p must be in [0, 1], got " + std::to_string(p));
  if (!training || p == 0) return x;
  check_float(op, "x", x);
  if (p == 1) return mul(x, 0.0);  // everything dropped; the gradient is zero too
  const double keep = 1 - p;
  Tensor mask;
  {
    NoGradGuard ng;
    mask = gen.bernoulli(mask_shape, keep, x.dtype(), x.device());  // 1 with probability keep, else 0
  }
  // x·mask is exact; the scale that makes E[y] = x is then applied in fp32 with one rounding (a mask
  // holding 1/keep in bf16 would round the scale itself: 1/0.6 -> 1.6640625).
  return mul(mul(x, mask), 1.0 / keep);
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  return masked_scale(x, p, training, gen, x.defined() ? x.shape() : Shape{}, "dropout");
}

Tensor drop_path(const Tensor& x, double p, bool training, Generator& gen, const Tensor& residual) {
  const char* op = "drop_path";
  TS_CHECK(x.defined() && x.dim() >= 1, "drop_path: x needs a batch dim, got " + (x.defined() ? x.str() : "undefined"));
  TS_CHECK(p >= 0 && p <= 1, "drop_path: p must be in [0, 1], got " + std::to_string(p));
  check_like(op, "residual", residual, "x", x);
  TS_CHECK(!residual.defined() || residual.shape() == x.shape(),
           "drop_path: residual " + residual.str() + " must have the shape of x " + x.str());
  if (!training || p == 0) return residual.defined() ? add(x, residual) : x;
  check_float(op, "x", x);
  const double keep = 1 - p;
  Tensor mask;  // [B]: 1 keeps the sample, 0 drops it (p = 1 drops all; the gradient is zero too)
  {
    NoGradGuard ng;
    mask = p == 1 ? Tensor::zeros({x.size(0)}, x.dtype(), x.device())
                  : gen.bernoulli({x.size(0)}, keep, x.dtype(), x.device());
  }
  const double scale = p == 1 ? 0.0 : 1.0 / keep;
  Tensor xc = plain(x), rc = plain(residual);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (y.numel() > 0) backend(x.device()).drop_path(xc, mask, scale, rc, y);
  const bool gx = wants_grad(x), gr = wants_grad(residual);
  return record(op, {x, residual}, y, [mask, scale, gx, gr](const Tensor& g) {
    Tensor dx;
    if (gx) {
      Tensor gc = plain(g);
      dx = Tensor::empty(gc.shape(), gc.dtype(), gc.device());
      if (dx.numel() > 0) backend(gc.device()).drop_path(gc, mask, scale, Tensor(), dx);
    }
    return std::vector<Tensor>{dx, gr ? g : Tensor()};  // d(residual) = dy: the add passes it through
  });
}

// ================================================================ cross-entropy
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opt) {
  const char* op = "cross_entropy";
  TS_CHECK(logits.defined() && target.defined(), "cross_entropy: logits and target must be defined");
  TS_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, C], got " + logits.str());
  check_float(op, "logits", logits);
  const int64_t N = logits.size(0), C = logits.size(1);
  TS_CHECK(target.dtype() == DType::i64 && target.dim() == 1 && target.size(0) == N,
           "cross_entropy: target must be i64 [" + std::to_string(N) + "] for logits " + logits.str() + ", got " +
               target.str());
  TS_CHECK(target.device() == logits.device(),
           "cross_entropy: target " + target.str() + " and logits " + logits.str() + " are on different devices");
  TS_CHECK(C >= 1, "cross_entropy: logits " + logits.str() + " have no classes");
  check_like(op, "weight", opt.weight, "logits", logits);
  check_vec(op, "weight", opt.weight, C, "one per class of logits " + logits.str());
  TS_CHECK(opt.label_smoothing >= 0 && opt.label_smoothing <= 1,
           "cross_entropy: label_smoothing must be in [0, 1], got " + std::to_string(opt.label_smoothing));
  // Gradients for the class weights are not implemented; refuse rather than silently drop them.
  TS_CHECK(!wants_grad(opt.weight), "cross_entropy: gradients with respect to the class weights are not "
                                    "supported; detach the weight");

  Tensor xc = plain(logits), tc = plain(target), wc = plain(opt.weight);
  Tensor loss = Tensor::empty({}, logits.dtype(), logits.device());
  const double eps = opt.label_smoothing;
  const int64_t ignore = opt.ignore_index;
  backend(logits.device()).cross_entropy(xc, tc, wc, eps, ignore, loss);
  return record(op, {logits}, loss, [xc, tc, wc, eps, ignore](const Tensor& g) {
    Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
    // The upstream gradient stays on the device (no item(): the backward never waits for the GPU).
    const Tensor dloss = plain(g).to(stat_dtype(xc.dtype())).contiguous();
    backend(xc.device()).cross_entropy_backward(xc, tc, wc, eps, ignore, dloss, dx);
    return std::vector<Tensor>{dx};
  });
}

}  // namespace tessera
