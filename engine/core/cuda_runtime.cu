// engine/core/cuda.h on the CUDA runtime: device discovery, tessera's stream, the caching allocator, pinned
// host memory and copies.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "engine/core/cuda.h"
#include "engine/core/cuda_check.h"

namespace tessera {
namespace cuda {
namespace {

// ---------------------------------------------------------------- device discovery
struct DeviceInfo {
  bool ok = false;
  std::string status;  // the device, or why there is none
  int sm_count = 0;
};

std::string error_text(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
}

// Runs once. Without a driver (or without a GPU) the runtime reports an error here instead of crashing;
// that error is the status, and every later call that needs a device throws it.
DeviceInfo probe() {
  DeviceInfo info;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // the runtime keeps the last error; do not let it leak into later checks
    info.status = "no usable CUDA device: cudaGetDeviceCount failed: " + error_text(err);
    return info;
  }
  if (count < 1) {
    info.status = "no CUDA device: cudaGetDeviceCount found 0 devices";
    return info;
  }
  const int dev = 0;  // tessera uses one GPU: the first visible one (select with CUDA_VISIBLE_DEVICES)
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, dev);
  if (err == cudaSuccess) err = cudaSetDevice(dev);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    info.status = "CUDA device 0 is not usable: " + error_text(err);
    return info;
  }
  char text[512];
  std::snprintf(text, sizeof text, "%s, sm_%d%d, %.1f GiB, %d SMs", prop.name, prop.major, prop.minor,
                double(prop.totalGlobalMem) / double(1ull << 30), prop.multiProcessorCount);
  info.ok = true;
  info.status = text;
  info.sm_count = prop.multiProcessorCount;
  return info;
}

const DeviceInfo& device_info() {
  static const DeviceInfo info = probe();  // thread-safe one-time initialisation
  return info;
}

void require_device(const char* what) {
  if (!device_info().ok)
    throw std::runtime_error(std::string("cuda::") + what + ": CUDA is not available: " + device_info().status);
}

// ---------------------------------------------------------------- the stream
cudaStream_t tessera_stream() {
  // Non-blocking: it does not synchronise with the legacy default stream, so other libraries' work on
  // stream 0 cannot serialise tessera's kernels.
  static const cudaStream_t s = [] {
    require_device("current_stream");
    cudaStream_t created = nullptr;
    TS_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return s;
}

// ---------------------------------------------------------------- caching allocator
// Sizes are rounded up (512 B granularity up to 1 MiB, 2 MiB above), so the same tensor shapes, allocated
// again every training step, map to the same block sizes. A freed block goes to a free list keyed by size;
// an allocation takes the smallest cached block that is large enough, unless that block would waste too
// much (more than 2x for small requests, more than 25% for large), and otherwise calls cudaMalloc.
// Blocks are never split, so a block's size is fixed from cudaMalloc to cudaFree.
//
// Stream safety: every tessera kernel and copy runs on the one tessera stream, in issue order. A block
// freed on the host while a kernel still reads it can only be handed to a later allocation whose users
// are queued behind that kernel on the same stream, so reuse never races. (Work on another stream that
// touches tessera memory must synchronise with tessera's stream first.)
class CachingAllocator {
 public:
  void* allocate(size_t nbytes) {
    require_device("device_alloc");
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first <= max_reusable(size)) {
      void* p = it->second;
      size_t block = it->first;
      free_.erase(it);
      stats_.cached -= block;
      ++stats_.reuses;
      track_live(p, block);
      return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cache_locked();  // give the cached blocks back to the driver and retry once
      err = cudaMalloc(&p, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      (void)cudaGetLastError();
      throw std::runtime_error("CUDA out of memory: requested " + bytes_text(nbytes) + " (block of " +
                               bytes_text(size) + "); tessera holds " + bytes_text(stats_.in_use) +
                               " in use and " + bytes_text(stats_.cached) + " cached (cache was emptied); " +
                               "the device has " + bytes_text(free_bytes) + " free of " +
                               bytes_text(total_bytes));
    }
    if (err != cudaSuccess)
      throw std::runtime_error("cudaMalloc(" + std::to_string(size) + ") failed: " + error_text(err));
    ++stats_.mallocs;
    track_live(p, size);
    return p;
  }

  // Called from Storage destructors, so it must not throw: a pointer this allocator never handed out is a
  // memory-corruption bug, reported and aborted on the spot.
  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {
      std::fprintf(stderr, "tessera: cuda::device_free(%p): not a live block of the caching allocator\n", p);
      std::abort();
    }
    size_t block = it->second;
    live_.erase(it);
    stats_.in_use -= block;
    stats_.cached += block;
    free_.emplace(block, p);
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cache_locked();
  }

  static size_t round_size(size_t n) {
    constexpr size_t kSmallLimit = size_t(1) << 20, kSmallGrain = 512, kLargeGrain = size_t(2) << 20;
    if (n == 0) n = 1;
    size_t grain = n <= kSmallLimit ? kSmallGrain : kLargeGrain;
    return (n + grain - 1) / grain * grain;
  }

 private:
  static size_t max_reusable(size_t size) {
    return size <= (size_t(1) << 20) ? size * 2 : size + size / 4;
  }

  void track_live(void* p, size_t block) {
    live_.emplace(p, block);
    stats_.in_use += block;
    if (stats_.in_use > stats_.peak_in_use) stats_.peak_in_use = stats_.in_use;
  }

  void release_cache_locked() {
    if (free_.empty()) return;
    // Cached blocks are idle in stream order, but a kernel queued before their release may still run:
    // drain the stream before handing the memory back to the driver.
    TS_CUDA_CHECK(cudaStreamSynchronize(tessera_stream()));
    for (auto& [block, p] : free_) {
      TS_CUDA_CHECK(cudaFree(p));
      stats_.cached -= block;
    }
    free_.clear();
  }

  static std::string bytes_text(size_t n) {
    char text[64];
    if (n >= (size_t(1) << 30))
      std::snprintf(text, sizeof text, "%.2f GiB", double(n) / double(size_t(1) << 30));
    else if (n >= (size_t(1) << 20))
      std::snprintf(text, sizeof text, "%.2f MiB", double(n) / double(size_t(1) << 20));
    else
      std::snprintf(text, sizeof text, "%zu bytes", n);
    return text;
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;       // cached blocks, by size
  std::unordered_map<void*, size_t> live_;  // handed-out blocks -> their size
  AllocatorStats stats_;
};

// Never destroyed: tensors held in static storage are freed after static destructors have started, and
// their blocks must still find a live allocator (the driver reclaims everything at process exit).
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

// Frees must not throw (they run in destructors). At process exit the runtime may already be unloading;
// that is not worth a message. Anything else is.
void report_free_error(cudaError_t err, const char* what) {
  (void)cudaGetLastError();
  if (err != cudaErrorCudartUnloading)
    std::fprintf(stderr, "tessera: %s failed: %s\n", what, error_text(err).c_str());
}

void check_pinned(const void* host, const char* what) {
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, host);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("cuda::") + what + ": cannot query the host pointer: " + error_text(err));
  }
  if (attr.type != cudaMemoryTypeHost)
    throw std::runtime_error(std::string("cuda::") + what +
                             ": async=true needs page-locked host memory (cuda::pinned_alloc / "
                             "Tensor::pin_memory); this host buffer is pageable");
}

}  // namespace

bool built() { return true; }
bool available() { return device_info().ok; }
std::string status() { return device_info().status; }
int sm_count() { return device_info().ok ? device_info().sm_count : 1; }

void* device_alloc(size_t nbytes) { return allocator().allocate(nbytes); }
void device_free(void* ptr) { allocator().release(ptr); }
AllocatorStats allocator_stats() { return allocator().stats(); }
void empty_cache() {
  if (available()) allocator().empty_cache();
}

void* pinned_alloc(size_t nbytes) {
  require_device("pinned_alloc");
  void* p = nullptr;
  cudaError_t err = cudaMallocHost(&p, nbytes == 0 ? 1 : nbytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error("cuda::pinned_alloc(" + std::to_string(nbytes) + " bytes) failed: " + error_text(err));
  }
  return p;
}

void pinned_free(void* ptr) {
  if (!ptr) return;
  cudaError_t err = cudaFreeHost(ptr);
  if (err != cudaSuccess) report_free_error(err, "cudaFreeHost");
}

void copy_host_to_device(void* dst, const void* src, size_t nbytes, bool async) {
  require_device("copy_host_to_device");
  if (nbytes == 0) return;
  if (async) check_pinned(src, "copy_host_to_device");
  TS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, tessera_stream()));
  if (!async) TS_CUDA_CHECK(cudaStreamSynchronize(tessera_stream()));
}

void copy_device_to_host(void* dst, const void* src, size_t nbytes, bool async) {
  require_device("copy_device_to_host");
  if (nbytes == 0) return;
  if (async) check_pinned(dst, "copy_device_to_host");
  TS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, tessera_stream()));
  if (!async) TS_CUDA_CHECK(cudaStreamSynchronize(tessera_stream()));
}

void copy_device_to_device(void* dst, const void* src, size_t nbytes) {
  require_device("copy_device_to_device");
  if (nbytes == 0) return;
  TS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, tessera_stream()));
}

void* current_stream() { return tessera_stream(); }

void synchronize() {
  if (!available()) return;
  TS_CUDA_CHECK(cudaStreamSynchronize(tessera_stream()));
}

Event::Event() = default;

Event::~Event() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));  // never throws from a destructor
}

void Event::record() {
  if (!event_) {
    cudaEvent_t e = nullptr;
    TS_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));  // a marker, no timestamps
    event_ = e;
  }
  TS_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), tessera_stream()));
}

void Event::synchronize() {
  if (event_) TS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

}  // namespace cuda

}  // namespace tessera
