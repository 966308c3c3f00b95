// trainer_state.json, which a resume reads: any JSON is refused with a message or read into a state whose
// values are in range.
#include <exception>

#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_input.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(tessera::fuzz::as_text(data, size), nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const tessera::train::TrainerState s = tessera::train::state_from_json(j, "trainer_state.json");
    if (s.epoch < 1 || s.best_epoch > s.epoch || s.metrics_bytes < 0) __builtin_trap();
  } catch (const std::exception&) {
  }
  return 0;
}
