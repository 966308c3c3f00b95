// Tensor: a strided view of reference-counted storage, plus the autograd fields.
//
// A Tensor is a cheap handle (shared_ptr to TensorImpl). Views (reshape of contiguous data, permute,
// transpose, slice, expand, squeeze, unsqueeze) share storage and never copy; contiguous() copies only
// when needed. Autograd: a tensor that requires grad and was made by an op has a grad_fn; leaves
// accumulate their gradient into grad() (+=), see autograd.h.
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/dtype.h"

namespace tessera {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// Raw memory on one device. `release` frees it (allocator, munmap, ...).
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  std::function<void(void*)> release;
  ~Storage() { if (release && data) release(data); }
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
  // Page-locked host memory (fast, asynchronous host<->device copies). Plain memory without a GPU.
  static std::shared_ptr<Storage> allocate_pinned(size_t nbytes);
};

struct Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (contiguous) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::CPU);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::CPU);
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::CPU);
  static Tensor arange(int64_t n, DType dtype = DType::f32, Device device = Device::CPU);
  // Copies `values` (any arithmetic type) into a new CPU tensor of `dtype`.
  template <typename T>
  static Tensor from(const std::vector<T>& values, const Shape& shape, DType dtype = dtype_of<T>::value);
  // Wraps existing memory without copying; `storage` keeps it alive.
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype,
                             int64_t offset = 0);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;  // in elements
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  const std::shared_ptr<Storage>& storage() const;
  std::string str() const;  // "f32[2, 3] cpu"
  TensorImpl* impl() const { return impl_.get(); }
  // Whether this handle is the only one to its tensor and that tensor the only view of its storage: nothing
  // else can read or write the memory, so it may be adopted instead of copied.
  bool sole_owner() const;

  // Pointer to the first element (storage + offset). T must match dtype().
  template <typename T> T* data() const;
  void* raw_data() const;

  // ---- views: share storage; differentiable ----
  Tensor reshape(const Shape& shape) const;  // view when possible, else copies; one dim may be -1
  Tensor view(const Shape& shape) const;     // like reshape, but errors instead of copying
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // slice + squeeze
  Tensor expand(const Shape& shape) const;          // -1 keeps a size; new leading dims allowed
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;

  // ---- copies ----
  Tensor contiguous() const;             // differentiable
  Tensor clone() const;                  // differentiable, always copies
  Tensor to(DType dtype) const;          // differentiable for float -> float
  Tensor to(Device device) const;        // differentiable
  Tensor to(Device device, DType dtype) const { return to(device).to(dtype); }
  Tensor pin_memory() const;             // CPU tensor in page-locked memory
  void copy_(const Tensor& src);         // into this (any dtype/device/strides); not recorded
  void fill_(double value);              // not recorded

  // ---- values ----
  double item() const;  // one-element tensors, any dtype, any device
  template <typename T> std::vector<T> to_vector() const;  // converts from any dtype

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on = true);
  const Tensor& grad() const;  // undefined until a backward reaches this tensor
  void set_grad(const Tensor& g);
  void zero_grad();            // drops the gradient (next backward assigns instead of adding)
  const std::shared_ptr<Node>& grad_fn() const;
  bool is_leaf() const { return grad_fn() == nullptr; }
  Tensor detach() const;  // same storage, no history
  // Reverse-mode differentiation from this tensor: a scalar, or with `grad` of this tensor's shape.
  void backward(const Tensor& grad = Tensor()) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
};

template <typename T> T* Tensor::data() const {
  if (dtype() != dtype_of<T>::value)
    throw std::runtime_error(std::string("Tensor::data: tensor is ") + dtype_name(dtype()) + ", asked for " +
                             dtype_name(dtype_of<T>::value));
  return static_cast<T*>(raw_data());
}

// Thrown for user errors in shapes/dtypes/devices; the message names the op and the problem.
struct TensorError : std::runtime_error { using std::runtime_error::runtime_error; };
[[noreturn]] void fail(const std::string& message);
// Normalises a possibly negative dim against rank n, naming `op` in the error.
int64_t wrap_dim(int64_t dim, int64_t n, const char* op);
#define TS_CHECK(cond, msg) do { if (!(cond)) ::tessera::fail(msg); } while (0)

}  // namespace tessera
