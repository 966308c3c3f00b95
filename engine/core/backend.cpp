// The registry behind backend(Device), filled by the kernels layer when its library loads, and adamw's
// argument checks, which every backend runs before it updates anything.
#include "engine/core/backend.h"

#include <array>

#include "engine/core/profile.h"

namespace tessera {
namespace {
std::array<BackendGetter, 2>& getters() {
  static std::array<BackendGetter, 2> table{};  // indexed by Device
  return table;
}
}  // namespace

void register_backend(Device device, BackendGetter getter) { getters()[size_t(device)] = getter; }

Backend& backend(Device device) {
  BackendGetter get = getters()[size_t(device)];
  if (!get) fail(std::string("no backend for ") + device_name(device) + " is linked (link tessera_kernels)");
  return profile::timed(get());
}

void Backend::check_adamw(const std::vector<AdamWParam>& params, const AdamWStep& s) const {
  // bias corrections are 1 − β^t with t ≥ 1 and β in [0, 1): in (0, 1].
  TS_CHECK(s.bias_correction1 > 0 && s.bias_correction1 <= 1 && s.bias_correction2 > 0 && s.bias_correction2 <= 1,
           "adamw: bias corrections " + std::to_string(s.bias_correction1) + ", " +
               std::to_string(s.bias_correction2) + " must be in (0, 1]");
  for (size_t i = 0; i < params.size(); ++i) {
    const AdamWParam& e = params[i];
    const std::string who = "adamw (" + std::string(device_name(device())) + "): parameter " + std::to_string(i);
    for (const Tensor* t : {&e.param, &e.grad, &e.exp_avg, &e.exp_avg_sq}) {
      TS_CHECK(t->defined(), who + ": an operand is undefined");
      TS_CHECK(t->device() == device(), who + ": operand " + t->str() + " is on the wrong device");
      TS_CHECK(t->is_contiguous(), who + ": operand " + t->str() + " is not contiguous");
    }
    TS_CHECK(e.grad.shape() == e.param.shape() && e.exp_avg.shape() == e.param.shape() &&
                 e.exp_avg_sq.shape() == e.param.shape(),
             who + ": shapes differ: param " + e.param.str() + ", grad " + e.grad.str() + ", exp_avg " +
                 e.exp_avg.str() + ", exp_avg_sq " + e.exp_avg_sq.str());
    TS_CHECK(e.param.dtype() == DType::f32 || e.param.dtype() == DType::f64,
             who + ": param " + e.param.str() + " must be f32 or f64");
    TS_CHECK(e.exp_avg.dtype() == e.param.dtype() && e.exp_avg_sq.dtype() == e.param.dtype(),
             who + ": exp_avg " + e.exp_avg.str() + " and exp_avg_sq " + e.exp_avg_sq.str() +
                 " must have the dtype of param " + e.param.str());
    TS_CHECK(e.grad.dtype() == DType::f32 || e.grad.dtype() == DType::f64 || e.grad.dtype() == DType::bf16,
             who + ": gradient " + e.grad.str() + " must be f32, f64 or bf16");
  }
}

}  // namespace tessera
