// The checkpoint loader: the fuzzer's bytes as the model.safetensors of a tiny CvT (the transformers-written
// fixture's config), loaded strictly (every name, shape and dtype checked) into the model.
#include <exception>

#include "models/model.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const tessera::models::ModelConfig config =
      tessera::models::load_config(TESSERA_SOURCE_DIR "/tests/fixtures/models/tiny-cvt/config.json");
  const std::string path = tessera::fuzz::write_input(data, size, "model.safetensors");
  try {
    tessera::models::load_model(config, path);
  } catch (const std::exception&) {
  }
  return 0;
}
