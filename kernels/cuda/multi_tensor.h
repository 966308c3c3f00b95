// Multi-tensor launches: the host-side plan that packs many tensors (a model's parameters or gradients)
// into few kernel launches, used by the optimizer kernels (optim.cu). Plain host code, checked by CPU tests
// on machines without a GPU (tests/test_optim.cpp).
//
// One launch covers up to kMaxTensors tensors with up to kMaxBlocks blocks; block b works on chunk
// `block_chunk[b]` (kChunk elements) of tensor slot `block_slot[b]`. Everything a launch needs travels as a
// kernel argument (the pointers, sizes and per-block table), so no table is copied to the device and a
// launch can be captured in a CUDA graph as is. The limits keep the largest argument block (AdamW's: 4
// pointers + size + decay per tensor = 48 B; 5 B per block: 36·48 + 320·5 = 3328 B, plus shared scalars)
// under CUDA's 4 KiB kernel-parameter limit.
#pragma once
#include <cstdint>
#include <vector>

namespace tessera::cuda::multi_tensor {

constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;
// 64 Ki elements per block: 256 elements per thread at 256 threads, enough work per block to hide the
// launch of the next one, few enough blocks that a CvT-13 step (20 M parameters) is ~10 launches.
constexpr int64_t kChunk = int64_t(1) << 16;
static_assert(kMaxTensors <= 256, "block slots are stored in a byte");

struct Launch {
  std::vector<int> tensors;             // slot → index into the caller's list
  std::vector<uint8_t> block_slot;      // block → slot
  std::vector<int32_t> block_chunk;     // block → chunk of that slot's tensor
};

// Packs tensors of `sizes` elements into launches, in order: every (tensor, chunk) pair is covered by
// exactly one block. A tensor that does not fit in the current launch's block budget continues in the next
// (it then occupies a slot in both). Empty tensors get no block.
inline std::vector<Launch> plan_launches(const std::vector<int64_t>& sizes, int64_t chunk = kChunk,
                                         int max_tensors = kMaxTensors, int max_blocks = kMaxBlocks) {
  std::vector<Launch> launches;
  Launch cur;
  auto close = [&] {
    if (!cur.block_slot.empty()) launches.push_back(std::move(cur));
    cur = Launch{};
  };
  for (int t = 0; t < int(sizes.size()); ++t) {
    const int64_t chunks = (sizes[size_t(t)] + chunk - 1) / chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (int(cur.block_slot.size()) == max_blocks) close();
      if (cur.tensors.empty() || cur.tensors.back() != t) {
        if (int(cur.tensors.size()) == max_tensors) close();
        cur.tensors.push_back(t);
      }
      cur.block_slot.push_back(uint8_t(cur.tensors.size() - 1));
      cur.block_chunk.push_back(int32_t(c));
    }
  }
  close();
  return launches;
}

}  // namespace tessera::cuda::multi_tensor
