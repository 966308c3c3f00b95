// <immintrin.h> for the CPU kernels that use x86 intrinsics (gemm.cpp, peak.cpp), on x86-64 only.
// GCC 12 reports the AVX-512 header's own placeholders (`__m512 __Y = __Y;` in _mm512_undefined_*) as used
// uninitialised wherever it inlines them (GCC bug 105593, mended in GCC 13); every intrinsic overwrites them.
// The warnings are placed at the header's lines, so silencing them around its inclusion is enough.
#pragma once
#if defined(__x86_64__)
#if defined(__GNUC__) && !defined(__clang__)  // clang has no -Wmaybe-uninitialized group and warns on it
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif
