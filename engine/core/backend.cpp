// The registry behind backend(Device): filled by the kernels layer when its library loads.
#include "engine/core/backend.h"

#include <array>

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
  return get();
}

}  // namespace tessera
