// GEMM on the GPU through cuBLAS (cublasGemmStridedBatchedEx).
//
// tessera's matrices are row-major, cuBLAS's column-major. A row-major M×N matrix with leading dimension N
// is, read column-major, its N×M transpose. So C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS
// gets B as its first operand and A as its second, m = N, n = M, and each operand's transpose flag is the
// caller's own (a row-major [K,N] B read column-major is already Bᵀ).
//
// Precision: f32 uses CUBLAS_COMPUTE_32F (true fp32) under MatmulPrecision::Highest and
// CUBLAS_COMPUTE_32F_FAST_TF32 (inputs rounded to tf32, 10 mantissa bits; fp32 accumulation) under High.
// bf16 and f16 use fp32 accumulation (CUBLAS_COMPUTE_32F), and the handle forbids reduced-precision
// (16-bit) split-K reductions. f64 uses CUBLAS_COMPUTE_64F.
#include <cublas_v2.h>

#include <climits>
#include <mutex>

#include "kernels/cuda/cuda_backend.h"

// Every cuBLAS call is checked: a failure throws naming the call, the file and line, and the status.
namespace tessera::cuda::detail {
inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cublas_status_name(s) + " (" + std::to_string(int(s)) + ")");
}

}  // namespace tessera::cuda::detail

#define TS_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                       \
    cublasStatus_t ts_st_ = (expr);                                                          \
    if (ts_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::tessera::cuda::detail::throw_cublas_error(ts_st_, #expr, __FILE__, __LINE__);        \
  } while (0)

namespace tessera {
namespace cuda {
namespace {

// One handle for the process, bound to tessera's stream. A cuBLAS handle must not be used by two host
// threads at once, so calls through it hold handle_mutex().
cublasHandle_t cublas_handle() {
  static const cublasHandle_t h = [] {
    cublasHandle_t created = nullptr;
    TS_CUBLAS_CHECK(cublasCreate(&created));
    TS_CUBLAS_CHECK(cublasSetStream(created, stream()));
    TS_CUBLAS_CHECK(cublasSetMathMode(
        created, cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    return created;
  }();
  return h;
}
std::mutex& handle_mutex() {
  static std::mutex m;
  return m;
}

// Checks that `batch` matrices of rows×cols elements, stride apart, fit in t's storage from t's offset.
void check_extent(const Tensor& t, const char* name, int64_t batch, int64_t rows, int64_t cols, int64_t stride) {
  check_on_cuda(t, "gemm", name);
  if (stride < 0) fail(std::string("gemm (cuda): negative batch stride for ") + name);
  const int64_t elems = int64_t(t.storage()->nbytes / dtype_size(t.dtype()));
  const int64_t need = t.offset() + (batch - 1) * stride + rows * cols;
  if (need > elems)
    fail(std::string("gemm (cuda): ") + name + " " + t.str() + " holds " + std::to_string(elems - t.offset()) +
         " elements from its offset, but " + std::to_string(batch) + " matrices of " + std::to_string(rows) +
         "x" + std::to_string(cols) + " with batch stride " + std::to_string(stride) + " need " +
         std::to_string(need - t.offset()));
}

int to_int(int64_t v, const char* what) {
  if (v > INT_MAX) fail(std::string("gemm (cuda): ") + what + " = " + std::to_string(v) + " exceeds cuBLAS's int range");
  return int(v);
}

}  // namespace
}  // namespace cuda

using namespace cuda;

void CudaBackend::gemm(const GemmArgs& g) {
  if (g.batch < 0 || g.M < 0 || g.N < 0 || g.K < 0)
    fail("gemm (cuda): negative size batch=" + std::to_string(g.batch) + " M=" + std::to_string(g.M) +
         " N=" + std::to_string(g.N) + " K=" + std::to_string(g.K));
  check_on_cuda(g.A, "gemm", "A");
  check_on_cuda(g.B, "gemm", "B");
  check_on_cuda(g.C, "gemm", "C");
  check_same_dtype(g.A, g.B, "gemm");
  check_same_dtype(g.A, g.C, "gemm");
  if (!is_floating(g.C.dtype()))
    fail(std::string("gemm (cuda) supports f32, f64, bf16 and f16, not ") + dtype_name(g.C.dtype()));
  if (g.batch == 0 || g.M == 0 || g.N == 0) return;
  check_extent(g.A, "A", g.batch, g.M, g.K, g.stride_a);
  check_extent(g.B, "B", g.batch, g.K, g.N, g.stride_b);
  check_extent(g.C, "C", g.batch, g.M, g.N, g.stride_c);
  if (g.batch > 1 && g.stride_c < g.M * g.N)
    fail("gemm (cuda): C's batch stride " + std::to_string(g.stride_c) + " makes the " +
         std::to_string(g.batch) + " output matrices of " + std::to_string(g.M) + "x" + std::to_string(g.N) +
         " overlap");

  if (g.K == 0) {
    // An empty product: C = beta·C (BLAS semantics), done here rather than relying on how cuBLAS treats
    // k = 0. One launch when the batch's matrices are back to back, else one per matrix.
    const bool packed = g.batch == 1 || g.stride_c == g.M * g.N;
    const int64_t pieces = packed ? 1 : g.batch, len = packed ? g.batch * g.M * g.N : g.M * g.N;
    for (int64_t b = 0; b < pieces; ++b) {
      Tensor c = Tensor::from_storage(g.C.storage(), {len}, g.C.dtype(), g.C.offset() + b * g.stride_c);
      if (g.beta == 0) fill(c, 0.0);  // beta = 0 never reads C (NaN in C does not propagate)
      else unary(UnaryOp::Affine, c, c, g.beta, 0.0);
    }
    return;
  }
  const int m = to_int(g.N, "N"), n = to_int(g.M, "M"), k = to_int(g.K, "K");
  const int batch = to_int(g.batch, "batch");
  // Leading dimensions of the stored (row-major) matrices.
  const int lda_b = std::max(1, g.trans_b ? k : m);  // cuBLAS's first operand is our B
  const int ldb_a = std::max(1, g.trans_a ? n : k);  // its second operand is our A
  const int ldc = std::max(1, m);
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;

  cudaDataType_t type;
  cublasComputeType_t compute;
  float alpha32 = float(g.alpha), beta32 = float(g.beta);
  double alpha64 = g.alpha, beta64 = g.beta;
  const void *alpha = &alpha32, *beta = &beta32;
  switch (g.C.dtype()) {
    case DType::f32:
      type = CUDA_R_32F;
      compute = matmul_precision() == MatmulPrecision::High ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::bf16: type = CUDA_R_16BF; compute = CUBLAS_COMPUTE_32F; break;
    case DType::f16: type = CUDA_R_16F; compute = CUBLAS_COMPUTE_32F; break;
    case DType::f64:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha = &alpha64;
      beta = &beta64;
      break;
    default: fail(std::string("gemm (cuda) supports f32, f64, bf16 and f16, not ") + dtype_name(g.C.dtype()));
  }

  std::lock_guard<std::mutex> lock(handle_mutex());
  cublasHandle_t h = cublas_handle();
  TS_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, op_first, op_second, m, n, k, alpha,
                                             g.B.raw_data(), type, lda_b, (long long)g.stride_b,
                                             g.A.raw_data(), type, ldb_a, (long long)g.stride_a, beta,
                                             g.C.raw_data(), type, ldc, (long long)g.stride_c, batch, compute,
                                             CUBLAS_GEMM_DEFAULT));
}

}  // namespace tessera
