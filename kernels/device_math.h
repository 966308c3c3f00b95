// The numeric contract every kernel shares, CPU and CUDA alike: what a storage type accumulates in and
// what dtype the per-row / per-channel statistics a kernel hands back (layer- and batch-norm mean, rstd,
// invstd; attention's lse; cross-entropy's dloss; reduction partials) are stored in. Plain C++ (g++ reads
// it); the CUDA kernels' device math built on it is kernels/cuda/device_math.cuh.
#pragma once
#include "engine/core/dtype.h"

namespace tessera {

// The type a kernel accumulates (and computes) in for a storage type: 16-bit floats in float, the others in
// themselves. Its DType is dtype_of<acc_t<T>>::value.
template <typename T> struct AccOf { using type = T; };
template <> struct AccOf<bf16_t> { using type = float; };
template <> struct AccOf<f16_t> { using type = float; };
template <typename T> using acc_t = typename AccOf<T>::type;

// The dtype of a floating tensor's statistics: f64 for f64 data, f32 for the others (the accumulation
// type's dtype: statistics are stored exactly as computed).
TS_HD DType stat_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace tessera
