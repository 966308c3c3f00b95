// A fixed pool of worker threads for the CPU backend. parallel_for splits [0, n) into contiguous chunks of
// at least `grain` items, at most `chunks_per_thread` per thread, and runs them on the pool and the calling
// thread; it returns when all are done. Nested calls run serially (no oversubscription).
// TESSERA_NUM_THREADS overrides the thread count.
#pragma once
#include <cstdint>
#include <functional>

namespace tessera {

int num_threads();
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn,
                  int chunks_per_thread = 4);

}  // namespace tessera
