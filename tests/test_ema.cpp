// WeightEma: the averaging formula with its warm-up against a float64 computation, integer buffers,
// validation, and the checkpoint round trip (bit-exact, resumable), on the CPU and (where a GPU is usable)
// on CUDA against the CPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/ema.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "tests/errors.h"
#include "tests/cuda_test_util.h"
#include "tests/temp_dir.h"

using namespace tessera;
using tessera::testing::contains;
using tessera::testing::error_of;
using tessera::testing::TempDir;

namespace {

// A small state dict: an f32 matrix, an f64 vector and an integer buffer, as a model with a batch norm has.
std::map<std::string, Tensor> make_state(uint64_t seed, Device device = Device::CPU) {
  Generator g(seed);
  return {{"w", g.uniform({4, 3}, -1, 1, DType::f32, device)},
          {"b", g.uniform({5}, -1, 1, DType::f64, device)},
          {"bn.num_batches_tracked", Tensor::scalar(double(seed), DType::i64).to(device)}};
}

// True when a and b hold the same bytes (same shape and dtype).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor x = a.to(Device::CPU).contiguous(), y = b.to(Device::CPU).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

bool same_average(const WeightEma& a, const WeightEma& b) {
  if (a.average().size() != b.average().size()) return false;
  for (const auto& [name, t] : a.average())
    if (!b.average().count(name) || !same_bits(t, b.average().at(name))) return false;
  return true;
}

}  // namespace

TEST_CASE("WeightEma follows d·ema + (1−d)·live with d = min(decay, (1+n)/(10+n)), computed in double") {
  // decay 0.5 meets the warm-up term (1+n)/(10+n) at n = 8: updates 0..7 use the warm-up, 8..11 the decay.
  const double decay = 0.5;
  const int steps = 12;
  auto state = make_state(1);
  state["w"].set_requires_grad(true);  // a parameter: the average must not join its autograd graph
  WeightEma ema(state, decay);
  CHECK_FALSE(ema.average().at("w").requires_grad());
  CHECK(ema.decay() == decay);
  CHECK(ema.updates() == 0);

  // The reference: every value as a double.
  std::map<std::string, std::vector<double>> ref;
  for (const auto& [name, t] : state) ref[name] = t.to_vector<double>();
  // The average is a copy: changing the source does not change it.
  state["w"].fill_(7);
  CHECK(ema.average().at("w").to_vector<double>() == ref["w"]);

  Generator g(99);
  for (int n = 0; n < steps; ++n) {
    const double d = std::min(decay, (1.0 + n) / (10.0 + n));
    CHECK(ema.next_decay() == d);
    // "w" arrives as a transposed view (not contiguous), as a live tensor may.
    std::map<std::string, Tensor> live = {
        {"w", g.uniform({3, 4}, -1, 1, DType::f32).transpose(0, 1)},
        {"b", g.uniform({5}, -1, 1, DType::f64)},
        {"bn.num_batches_tracked", Tensor::scalar(double(100 + n), DType::i64)}};
    ema.update(live);
    for (auto& [name, r] : ref) {
      const auto v = live.at(name).to_vector<double>();
      if (name == "bn.num_batches_tracked") {
        r = v;  // copied, not averaged
        continue;
      }
      for (size_t i = 0; i < r.size(); ++i) r[i] = d * r[i] + (1 - d) * v[i];
    }
  }
  CHECK(ema.updates() == steps);
  CHECK(ema.next_decay() == decay);

  // Tolerance: one update computes fl(fl(fl(d)·e) + fl(fl(1−d)·l)). Rounding d and 1 − d to the storage
  // type, the two products and the sum each add at most u·(their magnitude); with |e|, |l| <= 1 (the values
  // and every convex combination of them lie in [−1, 1]) and d + (1 − d) = 1 that is at most 3u per update,
  // and the error carried in is multiplied by d <= 1. After k updates: <= 3·k·u; 4·k·u leaves room for the
  // second-order terms. u = 2⁻²⁴ for f32, 2⁻⁵³ for f64.
  for (const auto& [name, r] : ref) {
    const Tensor& avg = ema.average().at(name);
    const auto got = avg.to_vector<double>();
    const double tol = avg.dtype() == DType::f32 ? 4.0 * steps * 0x1p-24 : 4.0 * steps * 0x1p-53;
    INFO(name);
    if (name == "bn.num_batches_tracked") {
      CHECK(avg.dtype() == DType::i64);
      CHECK(got == r);
      continue;
    }
    CHECK_VALUES(got, r, [&](size_t) { return tol; }, avg.shape(), name);
  }
}

TEST_CASE("WeightEma: decay 0 follows the live weights, and the first update uses d = 0.1") {
  auto state = make_state(2);
  WeightEma zero(state, 0.0);
  auto live = make_state(3);
  zero.update(live);
  for (const auto& [name, t] : live) CHECK(same_bits(zero.average().at(name), t));

  WeightEma first(state, 0.9999);
  CHECK(first.next_decay() == 0.1);
  first.update(live);
  const auto e = first.average().at("b").to_vector<double>();
  const auto s = state.at("b").to_vector<double>(), l = live.at("b").to_vector<double>();
  for (size_t i = 0; i < e.size(); ++i) CHECK(std::fabs(e[i] - (0.1 * s[i] + 0.9 * l[i])) <= 4 * 0x1p-53);
}

TEST_CASE("WeightEma refuses a decay outside 0 <= d < 1, 16-bit floats and mismatched live tensors") {
  auto state = make_state(4);
  for (double bad : {-0.1, 1.0, 1.5, std::nan("")}) {
    INFO(bad);
    CHECK_THROWS_AS(WeightEma(state, bad), std::invalid_argument);
    CHECK(contains(error_of([&] { WeightEma(state, bad); }), "decay"));
  }
  CHECK_NOTHROW(WeightEma(state, 0.0));

  auto half = state;
  half["h"] = Tensor::zeros({2}, DType::bf16);
  CHECK(contains(error_of([&] { WeightEma(half, 0.9); }), "'h'"));

  WeightEma ema(state, 0.9);
  auto live = make_state(5);
  live["w"] = Tensor::zeros({3, 4});
  const std::string err = error_of([&] { ema.update(live); });
  CHECK(contains(err, "'w'"));
  CHECK(contains(err, "f32[3, 4]"));
  CHECK(ema.updates() == 0);
  CHECK(same_bits(ema.average().at("b"), state.at("b")));  // nothing changed, not even the valid tensors

  live = make_state(5);
  live.erase("b");
  CHECK(contains(error_of([&] { ema.update(live); }), "'b'"));
  live = make_state(5);
  live["extra"] = Tensor::zeros({1});
  CHECK(contains(error_of([&] { ema.update(live); }), "'extra'"));
}

TEST_CASE("WeightEma save/load round-trips bit-exactly and resumes bit-identically") {
  TempDir dir("ema");
  const std::string path = dir / "ema.safetensors";
  const auto init = make_state(6);
  // Live weights of update k, the same in both runs.
  auto live_at = [](int k) { return make_state(1000 + uint64_t(k)); };
  const double decay = 0.95;  // warm-up for the first updates, the decay later: both cross the save

  WeightEma uninterrupted(init, decay);
  for (int k = 0; k < 30; ++k) {
    uninterrupted.update(live_at(k));
    if (k == 16) uninterrupted.save(path);
  }

  // A run that stops after 17 updates: a fresh average (another decay, so load must restore it) loads the file.
  WeightEma resumed(make_state(7), 0.5);
  resumed.load(path);
  CHECK(resumed.decay() == decay);
  CHECK(resumed.updates() == 17);
  {
    WeightEma at_save(init, decay);
    for (int k = 0; k <= 16; ++k) at_save.update(live_at(k));
    CHECK(same_average(resumed, at_save));
  }
  for (int k = 17; k < 30; ++k) resumed.update(live_at(k));
  CHECK(resumed.updates() == uninterrupted.updates());
  CHECK(same_average(resumed, uninterrupted));

  // The file is an ordinary weights file with the metadata.
  SafetensorsFile f(path);
  CHECK(f.metadata().at("ema_updates") == "17");
  CHECK(std::stod(f.metadata().at("ema_decay")) == decay);
  CHECK(f.metadata().at("format") == "pt");
}

TEST_CASE("WeightEma.load refuses a file that does not match, naming the file and the tensor") {
  TempDir dir("ema-bad");
  const auto state = make_state(8);
  WeightEma ema(state, 0.9);
  ema.update(make_state(9));
  const auto before = ema.average().at("w").to_vector<double>();

  auto check_refused = [&](const std::string& file, const std::string& tensor) {
    const std::string err = error_of([&] { ema.load(file); });
    INFO(err);
    CHECK(contains(err, file));
    CHECK(contains(err, tensor));
    CHECK(err.find('\n') == std::string::npos);
    CHECK(ema.updates() == 1);
    CHECK(ema.average().at("w").to_vector<double>() == before);
  };

  auto other = state;
  other["w"] = Tensor::zeros({3, 4});
  WeightEma(other, 0.9).save(dir / "shape.safetensors");
  check_refused(dir / "shape.safetensors", "'w'");

  other = state;
  other["b"] = Tensor::zeros({5}, DType::f32);
  WeightEma(other, 0.9).save(dir / "dtype.safetensors");
  check_refused(dir / "dtype.safetensors", "'b'");

  other = state;
  other.erase("b");
  WeightEma(other, 0.9).save(dir / "missing.safetensors");
  check_refused(dir / "missing.safetensors", "'b'");

  other = state;
  other["head.weight"] = Tensor::zeros({2});
  WeightEma(other, 0.9).save(dir / "extra.safetensors");
  check_refused(dir / "extra.safetensors", "'head.weight'");

  save_safetensors(dir / "plain.safetensors", state);  // weights without the average's metadata
  check_refused(dir / "plain.safetensors", "ema_decay");
}

TEST_CASE("WeightEma on CUDA stays on the device and equals the CPU average bit for bit") {
  SKIP_WITHOUT_GPU();
  // Both devices compute each update as fl(fl(d)·e) + fl(fl(1−d)·l) in the storage type with the same
  // operands, so the averages agree exactly.
  WeightEma cpu(make_state(10), 0.99), gpu(make_state(10, Device::CUDA), 0.99);
  for (int k = 0; k < 7; ++k) {
    cpu.update(make_state(20 + uint64_t(k)));
    gpu.update(make_state(20 + uint64_t(k), Device::CUDA));
  }
  for (const auto& [name, t] : gpu.average()) CHECK(t.device() == Device::CUDA);
  CHECK(same_average(cpu, gpu));
  TempDir dir("ema-cuda");
  gpu.save(dir / "ema.safetensors");
  WeightEma back(make_state(11, Device::CUDA), 0.5);
  back.load(dir / "ema.safetensors");
  CHECK(back.average().at("w").device() == Device::CUDA);
  CHECK(same_average(back, gpu));
}
