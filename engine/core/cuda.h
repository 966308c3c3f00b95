// The CUDA runtime as the engine sees it: device discovery, the caching allocator, streams and copies.
// Implemented in engine/core/cuda_runtime.cu; a build without CUDA links engine/core/cuda_unavailable.cpp, where
// available() is false and everything else throws. With CUDA built in but no GPU (or no driver) present,
// available() is false and status() says why, so every binary still runs on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tessera::cuda {

bool built();      // compiled with the CUDA backend
bool available();  // built, and a usable device is present
std::string status();  // the device ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB") or why there is none
int sm_count();        // streaming multiprocessors of the device in use

// Caching allocator: freed blocks are kept for reuse (by size class) instead of cudaFree'd; a failed
// cudaMalloc empties the cache and retries once, then throws with the requested size and usage.
void* device_alloc(size_t nbytes);
void device_free(void* ptr);
struct AllocatorStats { size_t in_use = 0, cached = 0, peak_in_use = 0; uint64_t mallocs = 0, reuses = 0; };
AllocatorStats allocator_stats();
void empty_cache();

void* pinned_alloc(size_t nbytes);  // page-locked host memory
void pinned_free(void* ptr);

// Copies on the current stream. Host-involved copies return once the host buffer may be reused
// (they synchronise the stream) unless `async` is set, which requires pinned host memory.
void copy_host_to_device(void* dst, const void* src, size_t nbytes, bool async = false);
void copy_device_to_host(void* dst, const void* src, size_t nbytes, bool async = false);
void copy_device_to_device(void* dst, const void* src, size_t nbytes);

// The stream tessera launches on (a non-blocking stream created at first use), and its synchronisation.
void* current_stream();  // cudaStream_t
void synchronize();

// A point in tessera's stream: record() marks the work queued so far, synchronize() blocks the host until
// that work is done (not the work queued after it). Without CUDA both do nothing.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record();
  void synchronize();

 private:
  void* event_ = nullptr;  // cudaEvent_t, created on first record()
};

}  // namespace tessera::cuda
