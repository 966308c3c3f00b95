// The CPU backend's memory ops: fill, strided copy with dtype conversion, random.
#include <cmath>

#include "engine/core/philox.h"
#include "engine/core/parallel.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace tessera {

void CpuBackend::fill(Tensor& out, double value) {
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = from_double<T>(value);
    T* base = static_cast<T*>(out.storage()->data) + out.offset();
    for_each_row<1>(out.shape(), {&out.strides()}, [&](auto off, auto st, int64_t n) {
      for (int64_t i = 0; i < n; ++i) base[off[0] + i * st[0]] = v;
    });
  });
}

namespace {

// A copy that reads along one dim and writes along another (a transpose: tokens to an image and back, head
// splits): walked row by row, every read lands on a new cache line. When the output's last dim is
// contiguous and the source's is not, but some other dim q of the source is, the (q, last) plane goes in
// 32 × 32 tiles, which keep both the lines read and the lines written in L1. Returns false for other copies.
// w: the copy's coalesced walk, source first.
template <typename T> bool copy_transposed(const Walk<2>& w, const Tensor& src, Tensor& out) {
  const int64_t rank = int64_t(w.shape.size()), last = rank - 1;
  if (rank < 2 || w.strides[1][size_t(last)] != 1 || w.strides[0][size_t(last)] == 1) return false;
  int64_t q = -1;
  for (int64_t d = 0; d < last; ++d)
    if (w.strides[0][size_t(d)] == 1) q = d;
  if (q < 0) return false;
  constexpr int64_t kTile = 32;
  const int64_t nq = w.shape[size_t(q)], nl = w.shape[size_t(last)];
  const int64_t tq = (nq + kTile - 1) / kTile, tl = (nl + kTile - 1) / kTile, outer = shape_numel(w.shape) / (nq * nl);
  const int64_t src_l = w.strides[0][size_t(last)], out_q = w.strides[1][size_t(q)];
  const T* s = static_cast<const T*>(src.storage()->data) + src.offset();
  T* d = static_cast<T*>(out.storage()->data) + out.offset();
  parallel_for(outer * tq * tl, 8, [&](int64_t t0, int64_t t1) {  // 8 tiles (8K elements) or more a chunk
    for (int64_t t = t0; t < t1; ++t) {
      const std::array<int64_t, 2> off = outer_offsets(w, t / (tq * tl), q, last);
      const int64_t a0 = (t / tl % tq) * kTile, b0 = (t % tl) * kTile;
      const int64_t a1 = std::min(nq, a0 + kTile), b1 = std::min(nl, b0 + kTile);
      for (int64_t a = a0; a < a1; ++a) {
        const T* sa = s + off[0] + a;
        T* da = d + off[1] + a * out_q;
        for (int64_t b = b0; b < b1; ++b) da[b] = sa[b * src_l];
      }
    }
  });
  return true;
}

}  // namespace

namespace {

// bf16 <-> fp32 between contiguous tensors, in parallel: the conversions mixed precision makes at every
// cast and around every widened op (bf16.cpp). Returns false for other copies.
bool convert_bf16_contiguous(const Tensor& src, Tensor& out) {
  if (!src.is_contiguous() || !out.is_contiguous()) return false;
  auto convert = [&](const auto* s, auto* d, auto f) {
    parallel_for(out.numel(), 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) d[i] = f(s[i]);
    });
    return true;
  };
  // Lambdas, not the functions themselves: a function pointer may stay an indirect call per element.
  if (src.dtype() == DType::bf16 && out.dtype() == DType::f32)
    return convert(src.data<bf16_t>(), out.data<float>(), [](bf16_t v) { return bf16_to_float(v); });
  if (src.dtype() == DType::f32 && out.dtype() == DType::bf16)
    return convert(src.data<float>(), out.data<bf16_t>(), [](float v) { return float_to_bf16(v); });
  return false;
}

}  // namespace

void CpuBackend::copy(const Tensor& src, Tensor& out) {
  if (out.numel() == 0) return;  // nothing to copy; the tiled transpose would divide by an empty dim
  if (convert_bf16_contiguous(src, out)) return;
  const Walk<2> w = coalesce<2>(out.shape(), {&src.strides(), &out.strides()});
  if (src.dtype() == out.dtype()) {
    const bool done = visit_dtype(src.dtype(), [&](auto tag) { return copy_transposed<decltype(tag)>(w, src, out); });
    if (done) return;
  }
  visit_dtype(src.dtype(), [&](auto stag) {
    using S = decltype(stag);
    visit_dtype(out.dtype(), [&](auto dtag) {
      using D = decltype(dtag);
      const S* s = static_cast<const S*>(src.storage()->data) + src.offset();
      D* d = static_cast<D*>(out.storage()->data) + out.offset();
      for_each_row(w, [&](auto off, auto st, int64_t n) {
        if constexpr (std::is_same_v<S, D>) {
          if (st[0] == 1 && st[1] == 1) { std::memcpy(d + off[1], s + off[0], size_t(n) * sizeof(S)); return; }
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = s[off[0] + i * st[0]];
        } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, double>) {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = s[off[0] + i * st[0]];
        } else if constexpr (std::is_same_v<S, bf16_t> && std::is_same_v<D, float>) {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = bf16_to_float(s[off[0] + i * st[0]]);
        } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, bf16_t>) {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = float_to_bf16(s[off[0] + i * st[0]]);
        } else {
          for (int64_t i = 0; i < n; ++i) d[off[1] + i * st[1]] = from_double<D>(to_double(s[off[0] + i * st[0]]));
        }
      });
    });
  });
}

void CpuBackend::random(RandomKind kind, Tensor& out, double a, double b, uint64_t seed, uint64_t offset) {
  TS_CHECK(out.is_contiguous(), "random: output must be contiguous");
  visit_float(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    T* p = out.data<T>();
    parallel_for(out.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        uint64_t c = offset + uint64_t(i);
        double v = 0;
        switch (kind) {
          case RandomKind::Uniform: v = a + (b - a) * philox::uniform(seed, c); break;
          case RandomKind::Normal: v = a + b * philox::normal(seed, c); break;
          case RandomKind::TruncatedNormal: v = philox::truncated_normal(seed, c, a, b); break;
          case RandomKind::Bernoulli: v = philox::uniform(seed, c) < a ? 1.0 : 0.0; break;
        }
        p[i] = T(v);
      }
    });
  });
}

}  // namespace tessera
