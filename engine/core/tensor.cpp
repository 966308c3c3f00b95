#include "engine/core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <sstream>

#include "engine/core/autograd.h"
#include "engine/core/cuda.h"
#include "engine/core/backend.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tessera {

void fail(const std::string& message) { throw TensorError(message); }

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) { st[i] = acc; acc *= std::max<int64_t>(s[i], 1); }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t n, const char* op) {
  int64_t d = dim < 0 ? dim + n : dim;
  if (d < 0 || d >= std::max<int64_t>(n, 1))
    fail(std::string(op) + ": dim " + std::to_string(dim) + " out of range for a " + std::to_string(n) +
         "-d tensor");
  return d;
}

// ---------------------------------------------------------------- storage
// A step frees and re-allocates the same activations every time. glibc hands blocks above its mmap
// threshold fresh mappings (the threshold adapts, but only up to a block just freed) and returns a freed
// heap top to the system, so each step faulted in and zeroed much of its memory again: ViT-B/16 inference
// at batch 8 took 52 thousand page faults a step, 4-8 % of its time on a 2-core Xeon (bench/RESULTS.md).
// A fixed threshold at glibc's largest (32 MiB) and trimming only past 1 GiB keep freed blocks for reuse;
// the resident high-water mark did not grow (465-470 MiB before, 456-461 after, there).
static void keep_freed_host_memory() {
#if defined(__GLIBC__)
  static const bool once = [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return true;
  }();
  (void)once;
#endif
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->device = device;
  size_t n = std::max<size_t>(nbytes, 1);
  if (device == Device::CPU) {
    keep_freed_host_memory();
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
    s->data = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!s->data) fail("out of host memory allocating " + std::to_string(nbytes) + " bytes");
    s->release = [](void* p) { std::free(p); };
  } else {
    s->data = cuda::device_alloc(n);
    s->release = [](void* p) { cuda::device_free(p); };
  }
  return s;
}

std::shared_ptr<Storage> Storage::allocate_pinned(size_t nbytes) {
  if (!cuda::available()) return allocate(nbytes, Device::CPU);
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->data = cuda::pinned_alloc(std::max<size_t>(nbytes, 1));
  s->release = [](void* p) { cuda::pinned_free(p); };
  return s;
}

// ---------------------------------------------------------------- factories
static Tensor make(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dt) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dt;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) TS_CHECK(d >= 0, "empty: negative size in shape " + shape_str(shape));
  auto st = Storage::allocate(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  return make(std::move(st), shape, contiguous_strides(shape), 0, dtype);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1, dtype, device); }
Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> v(size_t(std::max<int64_t>(n, 0)));
  std::iota(v.begin(), v.end(), 0.0);
  return from(v, {int64_t(v.size())}, dtype).to(device);
}

template <typename T>
Tensor Tensor::from(const std::vector<T>& values, const Shape& shape, DType dtype) {
  TS_CHECK(int64_t(values.size()) == shape_numel(shape),
           "Tensor::from: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  Tensor t = empty(shape, dtype);
  visit_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    D* out = static_cast<D*>(t.raw_data());
    for (size_t i = 0; i < values.size(); ++i) out[i] = from_double<D>(double(values[i]));
  });
  return t;
}
template Tensor Tensor::from(const std::vector<float>&, const Shape&, DType);
template Tensor Tensor::from(const std::vector<double>&, const Shape&, DType);
template Tensor Tensor::from(const std::vector<int64_t>&, const Shape&, DType);
template Tensor Tensor::from(const std::vector<int32_t>&, const Shape&, DType);
template Tensor Tensor::from(const std::vector<uint8_t>&, const Shape&, DType);

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype, int64_t offset) {
  size_t need = (size_t(offset) + size_t(shape_numel(shape))) * dtype_size(dtype);
  TS_CHECK(need <= storage->nbytes, "from_storage: shape " + shape_str(shape) + " needs " +
                                        std::to_string(need) + " bytes, storage has " +
                                        std::to_string(storage->nbytes));
  return make(std::move(storage), shape, contiguous_strides(shape), offset, dtype);
}

// ---------------------------------------------------------------- metadata
const Shape& Tensor::shape() const { return impl_->shape; }
const Shape& Tensor::strides() const { return impl_->strides; }
int64_t Tensor::offset() const { return impl_->offset; }
int64_t Tensor::size(int64_t d) const { return impl_->shape[size_t(wrap_dim(d, dim(), "size"))]; }
int64_t Tensor::numel() const { return shape_numel(impl_->shape); }
DType Tensor::dtype() const { return impl_->dtype; }
Device Tensor::device() const { return impl_->storage->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { return impl_->storage; }
void* Tensor::raw_data() const {
  return static_cast<char*>(impl_->storage->data) + impl_->offset * int64_t(dtype_size(impl_->dtype));
}

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    int64_t s = impl_->shape[size_t(i)];
    if (s == 1) continue;  // the stride of a size-1 dim never matters
    if (impl_->strides[size_t(i)] != expected) return false;
    expected *= s;
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device_name(device());
}

// ---------------------------------------------------------------- views
// A view shares storage; its backward maps the gradient back to the base's shape.
static Tensor view_of(const Tensor& base, Shape shape, Shape strides, int64_t offset, const char* name,
                      std::function<std::vector<Tensor>(const Tensor&)> rule) {
  Tensor v = make(base.storage(), std::move(shape), std::move(strides), offset, base.dtype());
  return record(name, {base}, v, std::move(rule));
}

// Strides that let `shape` view this tensor's memory without copying, if any (torch's computeStride).
static bool view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape,
                         Shape& out) {
  out.assign(new_shape.size(), 0);
  // No elements, or one (a 0-d tensor): any strides address it.
  if (shape_numel(old_shape) == 0 || old_shape.empty()) { out = contiguous_strides(new_shape); return true; }
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[size_t(d)];
    if (d == 0 || (old_shape[size_t(d - 1)] != 1 &&
                   old_strides[size_t(d - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[size_t(view_d)] == 1)) {
        out[size_t(view_d)] = view_numel * chunk_base_stride;
        view_numel *= new_shape[size_t(view_d)];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) { chunk_base_stride = old_strides[size_t(d - 1)]; tensor_numel = 1; view_numel = 1; }
    }
  }
  return view_d == -1;
}

static Shape infer_shape(const Shape& shape, int64_t numel, const char* op) {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      TS_CHECK(infer < 0, std::string(op) + ": more than one -1 in " + shape_str(shape));
      infer = int64_t(i);
    } else {
      TS_CHECK(s[i] >= 0, std::string(op) + ": negative size in " + shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    TS_CHECK(known != 0 && numel % known == 0,
             std::string(op) + ": cannot infer -1 in " + shape_str(shape) + " for " + std::to_string(numel) +
                 " elements");
    s[size_t(infer)] = numel / known;
  }
  TS_CHECK(shape_numel(s) == numel, std::string(op) + ": shape " + shape_str(shape) + " does not hold " +
                                        std::to_string(numel) + " elements");
  return s;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), "view"), st;
  TS_CHECK(view_strides(this->shape(), strides(), s, st),
           "view: cannot view " + str() + " as " + shape_str(s) + " without copying; use reshape");
  Shape in_shape = this->shape();
  return view_of(*this, s, st, offset(), "view", [in_shape](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(in_shape)};
  });
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), "reshape"), st;
  if (view_strides(this->shape(), strides(), s, st)) return view(s);
  return contiguous().view(s);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  TS_CHECK(int64_t(dims.size()) == dim(), "permute: " + std::to_string(dims.size()) + " dims for " + str());
  Shape s(dims.size()), st(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    TS_CHECK(inverse[size_t(d)] < 0, "permute: repeated dim " + std::to_string(dims[i]));
    inverse[size_t(d)] = int64_t(i);
    s[i] = shape()[size_t(d)];
    st[i] = strides()[size_t(d)];
  }
  return view_of(*this, s, st, offset(), "permute",
                 [inverse](const Tensor& g) { return std::vector<Tensor>{g.permute(inverse)}; });
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  std::vector<int64_t> p(static_cast<size_t>(dim()));
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[size_t(wrap_dim(a, dim(), "transpose"))], p[size_t(wrap_dim(b, dim(), "transpose"))]);
  return permute(p);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  TS_CHECK(step > 0, "slice: step must be positive");
  int64_t n = shape()[size_t(d)];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape(), st = strides();
  s[size_t(d)] = (end - start + step - 1) / step;
  st[size_t(d)] *= step;
  Shape in_shape = shape();
  DType dt = dtype();
  Device dev = device();
  // The gradient: g in the slice, zeros around it, each element written once (zeros everywhere first and g
  // over them wrote the slice twice: CvT's cls-token split passes most of a stage's tokens through here).
  return view_of(*this, s, st, offset() + start * strides()[size_t(d)], "slice",
                 [=](const Tensor& g) {
                   Tensor full = Tensor::empty(in_shape, dt, dev);
                   if (step == 1) {
                     if (start > 0) full.slice(d, 0, start).fill_(0);
                     if (end < in_shape[size_t(d)]) full.slice(d, end, in_shape[size_t(d)]).fill_(0);
                   } else {
                     full.fill_(0);
                   }
                   full.slice(d, start, end, step).copy_(g);
                   return std::vector<Tensor>{full};
                 });
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  int64_t n = shape()[size_t(d)];
  TS_CHECK(index >= -n && index < n, "select: index " + std::to_string(index) + " out of range for " + str());
  if (index < 0) index += n;
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& shape) const {
  TS_CHECK(int64_t(shape.size()) >= dim(), "expand: " + shape_str(shape) + " has fewer dims than " + str());
  size_t lead = shape.size() - size_t(dim());
  Shape s(shape.size()), st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      TS_CHECK(shape[i] >= 0, "expand: -1 is not allowed for a new leading dim");
      s[i] = shape[i];
      continue;
    }
    int64_t have = this->shape()[i - lead], want = shape[i] == -1 ? have : shape[i];
    TS_CHECK(have == want || have == 1, "expand: cannot expand " + str() + " to " + shape_str(shape));
    s[i] = want;
    st[i] = have == want ? strides()[i - lead] : 0;
  }
  Shape in_shape = this->shape();
  return view_of(*this, s, st, offset(), "expand",
                 [in_shape](const Tensor& g) { return std::vector<Tensor>{sum_to(g, in_shape)}; });
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[size_t(d)] != 1) return *this;
  Shape s = shape(), st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Shape in_shape = shape();
  return view_of(*this, s, st, offset(), "squeeze",
                 [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape(), st = strides();
  int64_t stride = d < dim() ? strides()[size_t(d)] * shape()[size_t(d)] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, stride);
  Shape in_shape = shape();
  return view_of(*this, s, st, offset(), "unsqueeze",
                 [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  start = wrap_dim(start, dim(), "flatten");
  end = wrap_dim(end, dim(), "flatten");
  Shape s(shape().begin(), shape().begin() + start);
  int64_t n = 1;
  for (int64_t i = start; i <= end; ++i) n *= shape()[size_t(i)];
  s.push_back(n);
  s.insert(s.end(), shape().begin() + end + 1, shape().end());
  return reshape(s);
}

// ---------------------------------------------------------------- copies
void Tensor::copy_(const Tensor& src) {
  TS_CHECK(shape() == src.shape(), "copy_: shape " + src.str() + " into " + str());
  if (numel() == 0) return;
  if (src.device() == device()) {
    backend(device()).copy(src, *this);
    return;
  }
  // Across devices: make the source contiguous in the destination's dtype on its own device, move the
  // bytes, then lay them out into this tensor's strides on its device.
  Tensor packed = src.detach().to(dtype()).contiguous();
  Tensor landing = is_contiguous() ? *this : Tensor::empty(shape(), dtype(), device());
  if (device() == Device::CUDA)
    cuda::copy_host_to_device(landing.raw_data(), packed.raw_data(), nbytes());
  else
    cuda::copy_device_to_host(landing.raw_data(), packed.raw_data(), nbytes());
  if (landing.impl() != impl()) backend(device()).copy(landing, *this);
}

void Tensor::fill_(double value) {
  if (numel() > 0) backend(device()).fill(*this, value);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  out.copy_(detach());
  return record("clone", {*this}, out, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), dt, device());
  out.copy_(detach());
  if (!is_floating(dt) || !is_floating(dtype())) return out;
  DType from = dtype();
  return record("to_dtype", {*this}, out, [from](const Tensor& g) { return std::vector<Tensor>{g.to(from)}; });
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), dev);
  out.copy_(detach());
  Device from = device();
  return record("to_device", {*this}, out, [from](const Tensor& g) { return std::vector<Tensor>{g.to(from)}; });
}

Tensor Tensor::pin_memory() const {
  TS_CHECK(device() == Device::CPU, "pin_memory: " + str() + " is not on the CPU");
  Tensor out = make(Storage::allocate_pinned(nbytes()), shape(), contiguous_strides(shape()), 0, dtype());
  out.copy_(detach());
  return out;
}

// ---------------------------------------------------------------- values
template <typename T> std::vector<T> Tensor::to_vector() const {
  Tensor c = detach();
  if (device() != Device::CPU) c = c.to(Device::CPU);
  c = c.contiguous();
  std::vector<T> out(static_cast<size_t>(numel()));
  visit_dtype(dtype(), [&](auto tag) {
    using S = decltype(tag);
    const S* p = static_cast<const S*>(c.raw_data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = T(to_double(p[i]));
  });
  return out;
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

double Tensor::item() const {
  TS_CHECK(numel() == 1, "item: " + str() + " does not have exactly one element");
  return to_vector<double>()[0];
}

// ---------------------------------------------------------------- autograd fields
bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }
Tensor& Tensor::set_requires_grad(bool on) {
  TS_CHECK(!on || is_floating(dtype()), "set_requires_grad: only floating tensors can require grad, not " + str());
  TS_CHECK(is_leaf() || on, "set_requires_grad(false) on a non-leaf tensor; use detach()");
  impl_->requires_grad = on;
  return *this;
}
const Tensor& Tensor::grad() const { return impl_->grad; }
void Tensor::set_grad(const Tensor& g) {
  TS_CHECK(!g.defined() || g.shape() == shape(), "set_grad: gradient " + g.str() + " for " + str());
  impl_->grad = g;
}
void Tensor::zero_grad() { impl_->grad = Tensor(); }
bool Tensor::sole_owner() const { return impl_ && impl_.use_count() == 1 && impl_->storage.use_count() == 1; }
const std::shared_ptr<Node>& Tensor::grad_fn() const { return impl_->grad_fn; }
Tensor Tensor::detach() const {
  return make(impl_->storage, impl_->shape, impl_->strides, impl_->offset, impl_->dtype);
}

}  // namespace tessera
