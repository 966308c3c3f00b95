// The safetensors reader: the header (length, JSON, offsets, dtypes, shapes, metadata) is validated before
// any tensor is handed out; every tensor it then hands out must be readable to its last byte.
#include <exception>

#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tessera::fuzz::write_input(data, size, "model.safetensors");
  try {
    tessera::SafetensorsFile file(path);
    for (const auto& info : file.tensors()) {
      const tessera::Tensor t = file.get(info.name);
      volatile uint8_t sink = 0;
      const auto* bytes = static_cast<const uint8_t*>(t.raw_data());
      for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ bytes[i];
    }
  } catch (const std::exception&) {
  }
  return 0;
}
