#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/core/tensor.h"

namespace tessera {

void LrSchedule::validate() const {
  TS_CHECK(total_steps > 0, "LrSchedule: total_steps " + std::to_string(total_steps) + " must be > 0");
  TS_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps,
           "LrSchedule: warmup_steps " + std::to_string(warmup_steps) + " must be in [0, total_steps = " +
               std::to_string(total_steps) + "]");
  TS_CHECK(std::isfinite(base_lr) && base_lr >= 0,
           "LrSchedule: base_lr " + std::to_string(base_lr) + " must be finite and >= 0");
}

double LrSchedule::lr_at(int64_t step) const {
  validate();
  TS_CHECK(step >= 0, "LrSchedule.lr_at: step " + std::to_string(step) + " must be >= 0");
  return base_lr * multiplier(step);
}

// HF's lr_lambda, kept separate so the product base_lr · lambda rounds exactly as HF's LambdaLR does.
// HF divides by max(1, ·) so that warmup 0 and warmup == total never divide by zero.
double LrSchedule::multiplier(int64_t step) const {
  if (step < warmup_steps) return double(step) / double(std::max<int64_t>(1, warmup_steps));
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (kind) {
    case Kind::Constant: return 1.0;
    case Kind::Linear: return std::max(0.0, double(total_steps - step) / span);
    case Kind::Cosine: {
      const double progress = double(step - warmup_steps) / span, num_cycles = 0.5;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
    }
  }
  fail("LrSchedule: invalid kind");
}

LrSchedule::Kind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return LrSchedule::Kind::Constant;
  if (name == "linear") return LrSchedule::Kind::Linear;
  if (name == "cosine") return LrSchedule::Kind::Cosine;
  fail("unknown learning-rate schedule '" + name + "' (expected constant, linear or cosine)");
}

const char* schedule_kind_name(LrSchedule::Kind kind) {
  switch (kind) {
    case LrSchedule::Kind::Constant: return "constant";
    case LrSchedule::Kind::Linear: return "linear";
    case LrSchedule::Kind::Cosine: return "cosine";
  }
  return "?";
}

}  // namespace tessera
