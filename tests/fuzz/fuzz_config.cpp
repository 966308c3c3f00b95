// config.json: parsed and range-checked (models/config.cpp) before any model is sized from it. A config
// that passes must also give a parameter estimate without overflow (the check before allocating).
#include <exception>

#include <nlohmann/json.hpp>

#include "models/config.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(tessera::fuzz::as_text(data, size), nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const tessera::models::ModelConfig c = tessera::models::parse_config(j, "config.json");
    tessera::models::validate(c, "config.json");
  } catch (const std::exception&) {
  }
  return 0;
}
