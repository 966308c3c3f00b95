// A synthetic 4-class image set for trying the pipeline when the reference data is not at hand. It is NOT
// brain MRI: each class is a pattern (a bright disc, a ring, stripes, a checkerboard) on noise, at a random
// position and size, so any working model learns it quickly. Runs on it say so loudly.
#pragma once
#include <cstdint>
#include <string>

namespace tessera::train {

// Writes ROOT/Training/<class>/*.png (60 per class) and ROOT/Testing/<class>/*.png (15 per class), 96×96,
// deterministic for the seed. Leaves an existing ROOT/Training untouched (already made).
void make_synthetic_dataset(const std::string& root, uint64_t seed);

}  // namespace tessera::train
