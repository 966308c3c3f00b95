// cuDNN's fused attention (SDPA: O = softmax(scale·Q·Kᵀ)·V, and its backward) as a benchmark baseline,
// written against cuDNN's C backend API (cudnnBackend*) because the cudnn-frontend header library is not
// a dependency of this repository. Written for the cuDNN 9.19 headers; no mask, dropout or bias.
//
// cuDNN has no "attention" function: a caller describes an operation graph (tensors with unique ids,
// operations between them) and cuDNN's heuristics return the engines able to run it. The fused
// flash-attention engines are chosen by pattern matching on that graph, so the graphs below reproduce,
// node for node, what cudnn-frontend (include/cudnn_frontend/node/scaled_dot_product_flash_attention.h
// and softmax.h) emits for bf16 multi-head SDPA with an attention scale and fp32 softmax stats.
//
//   Forward, preferred (cuDNN >= 9.13.1): one CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR node, Q K V and
//     the scale in, O and Stats out. cudnn-frontend >= 1.14 emits this node (its "unified" SDPA node) for
//     this configuration instead of the composite graph.
//   Forward, fallback (any cuDNN 9), taken when the unified node is refused: the composite graph
//     S = Q·Kᵀ → S·scale → softmax as max / sub / exp / sum / div, Stats = max + log(sum) → O = P·V.
//   Backward, composite (cudnn-frontend uses no dedicated backward node with this cuDNN version):
//     P = exp(scale·Q·Kᵀ − Stats) recomputed from the forward's Stats, dV = Pᵀ·dO, dP = dO·Vᵀ,
//     dS = P∘(dP − rowsum(dO∘O))·scale, dK = dSᵀ·Q, dQ = dS·K (accumulated in fp32, then cast to bf16).
//
// Q, O, dO, dQ are contiguous [B, H, Tq, D] bf16, K, V, dK, dV contiguous [B, H, Tk, D] bf16; Stats is
// fp32 [B, H, Tq, 1], the natural-log log-sum-exp of each scaled score row (tessera's lse). Every
// intermediate is a virtual tensor cuDNN never materialises, except two that the backward engine needs
// in memory (rowsum(dO∘O) and the fp32 dQ accumulator), which CudnnSdpaBackward allocates.
//
// Anything cuDNN refuses (an operation, a graph, every engine on this GPU) throws std::runtime_error
// naming the step, cuDNN's status and its last error message.
#pragma once
#include <cudnn.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/cudnn_util.h"
#include "engine/core/cuda.h"
#include "engine/core/tensor.h"
#include "engine/core/cuda_check.h"

namespace tessera::bench {

namespace sdpa_detail {

using Dims = std::vector<int64_t>;

// Like TS_CUDNN_CHECK, but names the graph step rather than the expression (every step is the same few
// cudnnBackend* calls) and appends cuDNN's own explanation, which for a refused graph says what it refused.
inline void check(cudnnStatus_t st, const std::string& step) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  char detail[1024] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw std::runtime_error(step + " failed: " + cudnnGetErrorString(st) +
                           (detail[0] ? std::string(" (") + detail + ")" : std::string()));
}

// The operation graph and the execution plan still take the handle in cuDNN 9.19 (it names the device),
// though these attributes are marked deprecated in favour of a device-properties descriptor, which only
// matters for compiling without a device; cudnn-frontend sets them too.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
constexpr cudnnBackendAttributeName_t kGraphHandle = CUDNN_ATTR_OPERATIONGRAPH_HANDLE;
constexpr cudnnBackendAttributeName_t kPlanHandle = CUDNN_ATTR_EXECUTION_PLAN_HANDLE;
#pragma GCC diagnostic pop

// One owned backend descriptor; `what` names it in errors.
class Desc {
 public:
  Desc(cudnnBackendDescriptorType_t type, std::string what) : what_(std::move(what)) {
    check(cudnnBackendCreateDescriptor(type, &d_), "create " + what_);
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)), what_(std::move(o.what_)) {}
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc& operator=(Desc&&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  const std::string& what() const { return what_; }
  template <typename T>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T* values, int64_t n = 1) {
    check(cudnnBackendSetAttribute(d_, name, type, n, values),
          "set attribute " + std::to_string(int(name)) + " of " + what_);
    return *this;
  }
  Desc& set(cudnnBackendAttributeName_t name, const Desc& value) {
    const cudnnBackendDescriptor_t v = value.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, &v);
  }
  Desc& finalize() {
    check(cudnnBackendFinalize(d_), "finalize " + what_);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  std::string what_;
};

// A finalized execution plan and its workspace. Keeps every descriptor it was built from alive (tensors,
// operations, graph, engine config), as cudnn-frontend does, rather than rely on the plan copying them.
class Plan {
 public:
  Plan(std::deque<Desc> built_from, int64_t engine, int64_t workspace_bytes)
      : built_from_(std::move(built_from)), engine_(engine),
        workspace_(Tensor::empty({std::max<int64_t>(workspace_bytes, 1)}, DType::u8, Device::CUDA)) {}

  int64_t engine() const { return engine_; }  // cuDNN's global engine index, for the benchmark label

  // Runs the plan on tessera's stream (through the handle cudnn() binds to it). `bindings` maps every
  // non-virtual tensor uid to its device pointer, or for by-value scalars to a host pointer.
  void execute(const std::vector<std::pair<int64_t, void*>>& bindings) {
    std::vector<int64_t> uids;
    std::vector<void*> ptrs;
    for (const auto& [uid, ptr] : bindings) uids.push_back(uid), ptrs.push_back(ptr);
    void* ws = workspace_.raw_data();
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids.data(), int64_t(uids.size()))
        .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, ptrs.data(), int64_t(ptrs.size()))
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &ws)
        .finalize();
    check(cudnnBackendExecute(cudnn(), built_from_.back().get(), pack.get()), "execute " + built_from_.back().what());
  }

 private:
  std::deque<Desc> built_from_;  // the execution plan is the last
  int64_t engine_;
  Tensor workspace_;
};

// Builds one operation graph. Tensors are 4-D; non-virtual ones carry fixed uids (bound at execution),
// virtual ones get fresh uids from 1000 up.
class GraphBuilder {
 public:
  explicit GraphBuilder(std::string name) : name_(std::move(name)) {}

  const Desc& tensor(const std::string& what, int64_t uid, const Dims& dims, const Dims& strides, cudnnDataType_t type,
                     bool is_virtual = false) {
    Desc& t = own(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor " + what);
    const int64_t alignment = 16;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &type)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dims.data(), int64_t(dims.size()))
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, strides.data(), int64_t(strides.size()))
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &alignment)
        .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, &is_virtual);
    return t.finalize();
  }
  // An intermediate: fp32 unless the consuming engine wants otherwise.
  const Desc& virt(const std::string& what, const Dims& dims, const Dims& strides,
                   cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return tensor(what, next_virtual_uid_++, dims, strides, type, /*is_virtual=*/true);
  }
  // An fp32 scalar passed by value (a host pointer in the variant pack), broadcast over 4-D operands.
  const Desc& scalar(const std::string& what, int64_t uid) {
    Desc& t = own(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "scalar " + what);
    const cudnnDataType_t type = CUDNN_DATA_FLOAT;
    const Dims ones{1, 1, 1, 1};
    const int64_t alignment = 16;
    const bool by_value = true;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &type)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, ones.data(), 4)
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, ones.data(), 4)
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &alignment)
        .set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, &by_value);
    return t.finalize();
  }

  // c = a·b over the last two dims, batched over the first two; fp32 accumulation.
  void matmul(const std::string& what, const Desc& a, const Desc& b, const Desc& c) {
    Desc& mm = own(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor " + what);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    mm.set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &comp).finalize();
    add_op(own(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul " + what)
               .set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)
               .set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)
               .set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)
               .set(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm)
               .finalize());
  }
  // y = mode(x) or mode(x, b), broadcasting b; fp32 math.
  void pointwise(const std::string& what, cudnnPointwiseMode_t mode, const Desc& x, const Desc& y,
                 const Desc* b = nullptr) {
    Desc& pw = own(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor " + what);
    const cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, &mode)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, &prec)
        .finalize();
    Desc& op = own(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise " + what);
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw).set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) op.set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    add_op(op.set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y).finalize());
  }
  // y = reduce(x) over the dims where y has extent 1; fp32 math.
  void reduction(const std::string& what, cudnnReduceTensorOp_t op_type, const Desc& x, const Desc& y) {
    Desc& red = own(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor " + what);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    red.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &op_type)
        .set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &comp)
        .finalize();
    add_op(own(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction " + what)
               .set(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)
               .set(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)
               .set(CUDNN_ATTR_OPERATION_REDUCTION_DESC, red)
               .finalize());
  }
  // y is x seen through other dims / strides (used for transposes; no data moves).
  void reshape(const std::string& what, const Desc& x, const Desc& y) {
    add_op(own(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape " + what)
               .set(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x)
               .set(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y)
               .finalize());
  }
  // An operation the caller configured (and finalized) itself.
  Desc& own(cudnnBackendDescriptorType_t type, std::string what) { return owned_.emplace_back(type, std::move(what)); }
  void add_op(const Desc& op) { ops_.push_back(op.get()); }

  // Finalizes the graph, asks heuristics (mode A) for engine configs, and returns a plan from the first
  // config that finalizes: heuristics rank configs, but a ranked config can still be refused at this
  // step (a kernel this GPU or shape cannot take), and then the next one is tried.
  Plan build(cudnnHandle_t handle) && {
    cudnnHandle_t h = handle;
    Desc& graph = own(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, name_ + " operation graph");
    graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ops_.data(), int64_t(ops_.size()))
        .set(kGraphHandle, CUDNN_TYPE_HANDLE, &h)
        .finalize();
    Desc& heur = own(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, name_ + " heuristics (mode A)");
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode)
        .finalize();

    int64_t n = 0;
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                                   nullptr),
          "count " + heur.what() + " results");
    if (n == 0) throw std::runtime_error(heur.what() + ": no engine config for " + name_);
    std::deque<Desc> configs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < n; ++i)
      raw.push_back(configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "config " + std::to_string(i)).get());
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &n,
                                   raw.data()),
          "get " + heur.what() + " results");

    std::string refused;
    for (int64_t i = 0; i < n; ++i) {
      Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, name_ + " execution plan");
      plan.set(kPlanHandle, CUDNN_TYPE_HANDLE, &h).set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[size_t(i)]);
      const cudnnStatus_t st = cudnnBackendFinalize(plan.get());
      if (st != CUDNN_STATUS_SUCCESS) {
        refused += (refused.empty() ? "config " : "; config ") + std::to_string(i) + ": " + cudnnGetErrorString(st);
        continue;
      }
      int64_t workspace = 0, count = 0;
      check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count,
                                     &workspace),
            "get " + plan.what() + " workspace size");
      Desc& engine = own(CUDNN_BACKEND_ENGINE_DESCRIPTOR, name_ + " engine");
      cudnnBackendDescriptor_t engine_raw = engine.get();
      check(cudnnBackendGetAttribute(configs[size_t(i)].get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &engine_raw),
            "get engine of " + configs[size_t(i)].what());
      int64_t engine_index = -1;
      check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count,
                                     &engine_index),
            "get " + engine.what() + " index");
      for (Desc& c : configs) owned_.push_back(std::move(c));
      owned_.push_back(std::move(plan));
      return Plan(std::move(owned_), engine_index, workspace);
    }
    throw std::runtime_error(name_ + ": none of the " + std::to_string(n) +
                             " engine configs from heuristics finalized (" + refused + ")");
  }

 private:
  std::string name_;
  std::deque<Desc> owned_;  // deque: references handed out stay valid as it grows
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_uid_ = 1000;
};

// Uids of the tensors bound at execution.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kScale, kDO, kDQ, kDK, kDV, kRowSum, kDQAccum, kOne };

inline Dims contiguous(int64_t H, int64_t T, int64_t D) { return {H * T * D, T * D, D, 1}; }  // [B, H, T, D]
// The same memory as contiguous [B, H, T, D], described as [B, H, D, T]: the transpose the matmuls
// need (Kᵀ, Vᵀ), expressed as strides so nothing is copied.
inline Dims transposed(int64_t H, int64_t T, int64_t D) { return {H * T * D, T * D, 1, D}; }

}  // namespace sdpa_detail

struct SdpaShape {
  int64_t B, H, Tq, Tk, D;
};

// Training-mode forward: O and the softmax Stats the backward needs.
class CudnnSdpaForward {
 public:
  CudnnSdpaForward(const SdpaShape& s, float scale) : scale_(scale), plan_(build(s, route_)) {}

  // q, k, v: bf16 inputs; o: bf16 output; stats: fp32 [B, H, Tq] output.
  void execute(const void* q, const void* k, const void* v, void* o, void* stats) {
    using namespace sdpa_detail;
    plan_.execute({{kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)}, {kV, const_cast<void*>(v)},
                   {kO, o}, {kStats, stats}, {kScale, &scale_}});
  }
  // Which graph cuDNN accepted and the engine running it, e.g. "unified SDPA_FWD op, engine 8".
  std::string description() const { return route_ + ", engine " + std::to_string(plan_.engine()); }

 private:
  // Prefers the unified op; if cuDNN refuses it, says why in the route and builds the composite graph.
  static sdpa_detail::Plan build(const SdpaShape& s, std::string& route) {
    route = "composite graph";
#if CUDNN_VERSION >= 91301
    if (cudnnGetVersion() >= 91301) {
      try {
        sdpa_detail::Plan plan = build_unified(s);
        route = "unified SDPA_FWD op";
        return plan;
      } catch (const std::runtime_error& e) {
        route += std::string(" (unified SDPA_FWD op refused: ") + e.what() + ")";
      }
    }
#endif
    try {
      return build_composite(s);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(route + ": " + e.what());
    }
  }

#if CUDNN_VERSION >= 91301
  static sdpa_detail::Plan build_unified(const SdpaShape& s) {
    using namespace sdpa_detail;
    GraphBuilder g("SDPA forward (unified)");
    const Desc& q = g.tensor("Q", kQ, {s.B, s.H, s.Tq, s.D}, contiguous(s.H, s.Tq, s.D), CUDNN_DATA_BFLOAT16);
    const Desc& k = g.tensor("K", kK, {s.B, s.H, s.Tk, s.D}, contiguous(s.H, s.Tk, s.D), CUDNN_DATA_BFLOAT16);
    const Desc& v = g.tensor("V", kV, {s.B, s.H, s.Tk, s.D}, contiguous(s.H, s.Tk, s.D), CUDNN_DATA_BFLOAT16);
    const Desc& o = g.tensor("O", kO, {s.B, s.H, s.Tq, s.D}, contiguous(s.H, s.Tq, s.D), CUDNN_DATA_BFLOAT16);
    const Desc& stats = g.tensor("Stats", kStats, {s.B, s.H, s.Tq, 1}, {s.H * s.Tq, s.Tq, 1, 1}, CUDNN_DATA_FLOAT);
    const Desc& scale = g.scalar("attn scale", kScale);
    // O [B,H,Tq,D], Stats [B,H,Tq,1] = SDPA(Q [B,H,Tq,D], K [B,H,Tk,D], V [B,H,Tk,D], scale)
    g.add_op(g.own(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "SDPA_FWD op")
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, q)
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, k)
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, v)
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, o)
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, stats)
                 .set(CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, scale)
                 .finalize());
    return std::move(g).build(cudnn());
  }
#endif

  static sdpa_detail::Plan build_composite(const SdpaShape& s) {
    using namespace sdpa_detail;
    const int64_t B = s.B, H = s.H, Tq = s.Tq, Tk = s.Tk, D = s.D;
    const Dims score{B, H, Tq, Tk}, score_strides = contiguous(H, Tq, Tk);
    const Dims row{B, H, Tq, 1}, row_strides{H * Tq, Tq, 1, 1};
    GraphBuilder g("SDPA forward (composite)");
    const Desc& q = g.tensor("Q", kQ, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& kt = g.tensor("Kᵀ", kK, {B, H, D, Tk}, transposed(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& v = g.tensor("V", kV, {B, H, Tk, D}, contiguous(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& o = g.tensor("O", kO, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& stats = g.tensor("Stats", kStats, row, row_strides, CUDNN_DATA_FLOAT);
    const Desc& scale = g.scalar("attn scale", kScale);

    const Desc& s_raw = g.virt("S", score, score_strides);
    g.matmul("S = Q·Kᵀ", q, kt, s_raw);  // [B,H,Tq,D]·[B,H,D,Tk] → [B,H,Tq,Tk]
    const Desc& s_scaled = g.virt("S·scale", score, score_strides);
    g.pointwise("S·scale", CUDNN_POINTWISE_MUL, s_raw, s_scaled, &scale);  // [B,H,Tq,Tk]·[1,1,1,1]
    // softmax over the key axis, decomposed so the row max and sum give the Stats for the backward
    const Desc& m = g.virt("row max", row, row_strides);
    g.reduction("row max", CUDNN_REDUCE_TENSOR_MAX, s_scaled, m);  // [B,H,Tq,Tk] → [B,H,Tq,1]
    const Desc& centred = g.virt("S − max", score, score_strides);
    g.pointwise("S − max", CUDNN_POINTWISE_SUB, s_scaled, centred, &m);  // [B,H,Tq,Tk] − [B,H,Tq,1]
    const Desc& e = g.virt("exp", score, score_strides);
    g.pointwise("exp", CUDNN_POINTWISE_EXP, centred, e);  // [B,H,Tq,Tk]
    const Desc& sum = g.virt("row sum", row, row_strides);
    g.reduction("row sum", CUDNN_REDUCE_TENSOR_ADD, e, sum);  // [B,H,Tq,Tk] → [B,H,Tq,1]
    const Desc& log_sum = g.virt("log(row sum)", row, row_strides);
    g.pointwise("log(row sum)", CUDNN_POINTWISE_LOG, sum, log_sum);  // [B,H,Tq,1]
    g.pointwise("Stats = max + log(sum)", CUDNN_POINTWISE_ADD, m, stats, &log_sum);  // [B,H,Tq,1]
    // P is the second matmul's A operand; the engine takes it in the I/O type (bf16), as flash attention does
    const Desc& p = g.virt("P", score, score_strides, CUDNN_DATA_BFLOAT16);
    g.pointwise("P = exp / sum", CUDNN_POINTWISE_DIV, e, p, &sum);  // [B,H,Tq,Tk] / [B,H,Tq,1]
    g.matmul("O = P·V", p, v, o);  // [B,H,Tq,Tk]·[B,H,Tk,D] → [B,H,Tq,D]
    return std::move(g).build(cudnn());
  }

  float scale_;  // bound by host pointer at every execution
  std::string route_;
  sdpa_detail::Plan plan_;
};

// dQ, dK, dV from dO and the forward's Q, K, V, O and Stats (the graph recomputes P; nothing else is kept).
class CudnnSdpaBackward {
 public:
  CudnnSdpaBackward(const SdpaShape& s, float scale)
      : scale_(scale),
        row_sum_(Tensor::empty({s.B, s.H, s.Tq}, DType::f32, Device::CUDA)),
        dq_accum_(Tensor::empty({s.B, s.H, s.Tq, s.D}, DType::f32, Device::CUDA)),
        plan_(build(s)) {}

  void execute(const void* q, const void* k, const void* v, const void* o, const void* stats, const void* dout,
               void* dq, void* dk, void* dv) {
    using namespace sdpa_detail;
    // The engine accumulates dQ atomically into dq_accum_; cuDNN zeroes it itself from 9.6 on, before
    // that the caller had to (as cudnn-frontend did).
    if (cudnnGetVersion() < 90600)
      TS_CUDA_CHECK(cudaMemsetAsync(dq_accum_.raw_data(), 0, size_t(dq_accum_.numel()) * sizeof(float),
                                    static_cast<cudaStream_t>(cuda::current_stream())));
    plan_.execute({{kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)}, {kV, const_cast<void*>(v)},
                   {kO, const_cast<void*>(o)}, {kStats, const_cast<void*>(stats)}, {kDO, const_cast<void*>(dout)},
                   {kDQ, dq}, {kDK, dk}, {kDV, dv}, {kRowSum, row_sum_.raw_data()},
                   {kDQAccum, dq_accum_.raw_data()}, {kScale, &scale_}, {kOne, &one_}});
  }
  std::string description() const { return "composite graph, engine " + std::to_string(plan_.engine()); }

 private:
  static sdpa_detail::Plan build(const SdpaShape& s) {
    using namespace sdpa_detail;
    const int64_t B = s.B, H = s.H, Tq = s.Tq, Tk = s.Tk, D = s.D;
    const Dims score{B, H, Tq, Tk}, score_strides = contiguous(H, Tq, Tk);
    // [B,H,Tk,Tq] views of a [B,H,Tq,Tk] score tensor, for the matmuls that contract over Tq
    const Dims score_t{B, H, Tk, Tq}, score_t_strides = transposed(H, Tq, Tk);
    const Dims row{B, H, Tq, 1}, row_strides{H * Tq, Tq, 1, 1};
    GraphBuilder g("SDPA backward (composite)");
    const Desc& q = g.tensor("Q", kQ, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& kt = g.tensor("Kᵀ", kK, {B, H, D, Tk}, transposed(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& vt = g.tensor("Vᵀ", kV, {B, H, D, Tk}, transposed(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& o = g.tensor("O", kO, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& dout = g.tensor("dO", kDO, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& stats = g.tensor("Stats", kStats, row, row_strides, CUDNN_DATA_FLOAT);
    const Desc& dq = g.tensor("dQ", kDQ, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_BFLOAT16);
    const Desc& dk = g.tensor("dK", kDK, {B, H, Tk, D}, contiguous(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& dv = g.tensor("dV", kDV, {B, H, Tk, D}, contiguous(H, Tk, D), CUDNN_DATA_BFLOAT16);
    const Desc& row_sum = g.tensor("rowsum(dO∘O)", kRowSum, row, row_strides, CUDNN_DATA_FLOAT);
    const Desc& dq_accum = g.tensor("dQ accumulator", kDQAccum, {B, H, Tq, D}, contiguous(H, Tq, D), CUDNN_DATA_FLOAT);
    const Desc& scale = g.scalar("attn scale", kScale);
    const Desc& one = g.scalar("one", kOne);

    // rowsum(dO∘O): FlashAttention's D term, written to memory for the engine's dS pass. The strides of
    // the virtual product are the ones cudnn-frontend gives it; it is never materialised.
    const Desc& do_o = g.virt("dO∘O", {B, H, Tq, D}, {H * Tq * D, Tq * D, H * D, 1});
    g.pointwise("dO∘O", CUDNN_POINTWISE_MUL, dout, do_o, &o);  // [B,H,Tq,D]
    const Desc& do_o_sum = g.virt("sum(dO∘O)", row, row_strides);
    g.reduction("sum(dO∘O)", CUDNN_REDUCE_TENSOR_ADD, do_o, do_o_sum);  // [B,H,Tq,D] → [B,H,Tq,1]
    // ·1 is where a dropout graph multiplies by (1 − p); the engine's pattern includes the node
    g.pointwise("rowsum·1", CUDNN_POINTWISE_MUL, do_o_sum, row_sum, &one);  // [B,H,Tq,1]

    // P recomputed from Stats: exp(scale·Q·Kᵀ − lse)
    const Desc& s_raw = g.virt("S", score, score_strides);
    g.matmul("S = Q·Kᵀ", q, kt, s_raw);  // [B,H,Tq,D]·[B,H,D,Tk] → [B,H,Tq,Tk]
    const Desc& s_scaled = g.virt("S·scale", score, score_strides);
    g.pointwise("S·scale", CUDNN_POINTWISE_MUL, s_raw, s_scaled, &scale);  // [B,H,Tq,Tk]·[1,1,1,1]
    const Desc& centred = g.virt("S − Stats", score, score_strides);
    g.pointwise("S − Stats", CUDNN_POINTWISE_SUB, s_scaled, centred, &stats);  // [B,H,Tq,Tk] − [B,H,Tq,1]
    const Desc& p = g.virt("P", score, score_strides);
    g.pointwise("P = exp", CUDNN_POINTWISE_EXP, centred, p);  // [B,H,Tq,Tk]

    // dV = Pᵀ·dO
    const Desc& pt = g.virt("Pᵀ", score_t, score_t_strides, CUDNN_DATA_BFLOAT16);
    g.reshape("Pᵀ", p, pt);  // [B,H,Tq,Tk] seen as [B,H,Tk,Tq]
    g.matmul("dV = Pᵀ·dO", pt, dout, dv);  // [B,H,Tk,Tq]·[B,H,Tq,D] → [B,H,Tk,D]

    // dS = P∘(dO·Vᵀ − rowsum)·scale
    const Desc& dp = g.virt("dP", score, score_strides);
    g.matmul("dP = dO·Vᵀ", dout, vt, dp);  // [B,H,Tq,D]·[B,H,D,Tk] → [B,H,Tq,Tk]
    const Desc& dp_centred = g.virt("dP − rowsum", score, score_strides);
    g.pointwise("dP − rowsum", CUDNN_POINTWISE_SUB, dp, dp_centred, &row_sum);  // [B,H,Tq,Tk] − [B,H,Tq,1]
    const Desc& ds_unscaled = g.virt("P∘(dP − rowsum)", score, score_strides);
    g.pointwise("P∘(dP − rowsum)", CUDNN_POINTWISE_MUL, dp_centred, ds_unscaled, &p);  // [B,H,Tq,Tk]
    const Desc& ds = g.virt("dS", score, score_strides);
    g.pointwise("dS = ·scale", CUDNN_POINTWISE_MUL, ds_unscaled, ds, &scale);  // [B,H,Tq,Tk]·[1,1,1,1]

    // dK = dSᵀ·Q
    const Desc& dst = g.virt("dSᵀ", score_t, score_t_strides, CUDNN_DATA_BFLOAT16);
    g.reshape("dSᵀ", ds, dst);  // [B,H,Tq,Tk] seen as [B,H,Tk,Tq]
    g.matmul("dK = dSᵀ·Q", dst, q, dk);  // [B,H,Tk,Tq]·[B,H,Tq,D] → [B,H,Tk,D]

    // dQ = dS·K, accumulated in fp32 memory then cast. K is the Kᵀ input seen back as [B,H,Tk,D]; the
    // view is fp32 because cudnn-frontend leaves its type to the graph's intermediate type.
    const Desc& k = g.virt("K", {B, H, Tk, D}, contiguous(H, Tk, D));
    g.reshape("K", kt, k);  // [B,H,D,Tk] seen as [B,H,Tk,D]
    g.matmul("dQ = dS·K", ds, k, dq_accum);  // [B,H,Tq,Tk]·[B,H,Tk,D] → [B,H,Tq,D] fp32
    g.pointwise("dQ = bf16(accumulator)", CUDNN_POINTWISE_IDENTITY, dq_accum, dq);  // [B,H,Tq,D]
    return std::move(g).build(cudnn());
  }

  float scale_, one_ = 1.0f;  // by-value scalars, bound by host pointer at every execution
  Tensor row_sum_, dq_accum_;
  sdpa_detail::Plan plan_;
};

}  // namespace tessera::bench
