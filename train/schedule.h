// Learning-rate schedules as Hugging Face transformers defines them (optimization.py):
//   constant  get_constant_schedule_with_warmup
//   linear    get_linear_schedule_with_warmup
//   cosine    get_cosine_schedule_with_warmup, num_cycles 0.5 (half a cosine from base_lr down to 0)
// All three ramp linearly from 0 during warmup: multiplier k / warmup for k < warmup.
#pragma once
#include <cstdint>
#include <string>

namespace tessera {

struct LrSchedule {
  enum class Kind { Constant, Linear, Cosine };
  Kind kind = Kind::Linear;
  double base_lr = 0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // The learning rate of the k-th optimizer step, k = 0, 1, ... (HF's lr_lambda(current_step) with
  // current_step = the number of scheduler.step() calls made before that optimizer step). Linear without
  // warmup gives base_lr·(N−k)/N. Steps past total_steps follow the same formulas as HF (linear stays at
  // 0; cosine continues along the cosine). Throws for k < 0 or an invalid schedule.
  double lr_at(int64_t step) const;
  // Throws naming the problem unless total_steps > 0, 0 <= warmup_steps <= total_steps, and base_lr is
  // finite and >= 0.
  void validate() const;

 private:
  double multiplier(int64_t step) const;
};

// "constant", "linear" or "cosine"; anything else throws, listing the accepted names.
LrSchedule::Kind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(LrSchedule::Kind kind);

}  // namespace tessera
