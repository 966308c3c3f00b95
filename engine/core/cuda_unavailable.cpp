// The CUDA runtime API (engine/core/cuda.h) linked instead of cuda_runtime.cu when tessera is built without CUDA (TESSERA_CUDA=OFF, or no nvcc).
#include <stdexcept>

#include "engine/core/cuda.h"

namespace tessera {
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error("this tessera was built without CUDA (reconfigure with -DTESSERA_CUDA=ON)");
}
}  // namespace

namespace cuda {
bool built() { return false; }
bool available() { return false; }
std::string status() { return "built without CUDA"; }
int sm_count() { return 1; }
void* device_alloc(size_t) { no_cuda(); }
void device_free(void*) {}
AllocatorStats allocator_stats() { return {}; }
void empty_cache() {}
void* pinned_alloc(size_t) { no_cuda(); }
void pinned_free(void*) {}
void copy_host_to_device(void*, const void*, size_t, bool) { no_cuda(); }
void copy_device_to_host(void*, const void*, size_t, bool) { no_cuda(); }
void copy_device_to_device(void*, const void*, size_t) { no_cuda(); }
void* current_stream() { return nullptr; }
void synchronize() {}
Event::Event() = default;
Event::~Event() = default;
void Event::record() {}
void Event::synchronize() {}
}  // namespace cuda
}  // namespace tessera
