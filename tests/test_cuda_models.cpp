// CvT and ViT on the GPU against the same models on the CPU (fp32): logits, loss, every parameter's
// gradient and the BatchNorm running statistics after one training-mode step, on small configs whose
// attention head sizes the CUDA attention kernel runs unpadded (32 and 64); and a bf16 step against fp32.
// Skips without a GPU.
//
// Tolerances. Both sides compute in fp32 (matmul precision Highest: no TF32) on the same inputs and the
// same Philox drop-path masks; they differ only in summation order (cuBLAS and the fused kernels reduce
// in other orders than the CPU's). Each reduction of length K then differs by at most ~K·u·Σ|terms|
// (u = 2^-24), typically √K·u; through a few dozen layers with K ≤ 1024 that stays below 1e-4 of a
// tensor's scale for the forward and 1e-3 for gradients (which go through twice as many reductions and
// through the softmax's sensitivity) — the same bounds the transformers fixtures use (test_models.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "kernels/devices.h"
#include "engine/ops.h"
#include "engine/core/backend.h"
#include "models/model.h"
#include "tests/bf16_step.h"
#include "tests/cuda_test_util.h"

using namespace tessera;
using namespace tessera::models;
using tessera::testing::normwise_difference;

namespace {


void check_model(const ModelConfig& config, int64_t size) {
  set_matmul_precision(MatmulPrecision::Highest);
  auto cpu = make_model(config, 5);
  auto gpu = make_model(config);
  gpu->load_state_dict(cpu->state_dict(), "the CPU model");
  gpu->to(Device::CUDA);
  CHECK(gpu->device() == Device::CUDA);

  Generator data(11);
  Tensor x = data.normal({3, 3, size, size});
  Tensor labels = Tensor::from<int64_t>({0, 3, 1}, {3});
  Generator g_cpu(9), g_gpu(9);  // the same drop-path masks on both devices (Philox streams agree)
  Tensor logits_cpu = cpu->forward(x, /*training=*/true, g_cpu);
  Tensor logits_gpu = gpu->forward(x.to(Device::CUDA), /*training=*/true, g_gpu);
  CHECK(normwise_difference(logits_gpu, logits_cpu) < 1e-4);
  Tensor loss_cpu = cross_entropy(logits_cpu, labels), loss_gpu = cross_entropy(logits_gpu, labels.to(Device::CUDA));
  CHECK(std::abs(loss_gpu.item() - loss_cpu.item()) < 1e-4 * std::max(1.0, std::abs(loss_cpu.item())));
  loss_cpu.backward();
  loss_gpu.backward();
  const auto pc = cpu->parameters(), pg = gpu->parameters();
  REQUIRE(pc.size() == pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    INFO("gradient of " << pc[i].name);
    REQUIRE(pg[i].tensor.grad().defined());
    CHECK(normwise_difference(pg[i].tensor.grad(), pc[i].tensor.grad()) < 1e-3);
  }
  const auto sc = cpu->state_dict(), sg = gpu->state_dict();
  for (const auto& [name, t] : sc)
    if (name.find("running_") != std::string::npos) {
      INFO(name);
      CHECK(normwise_difference(sg.at(name), t) < 1e-4);
    }
}

}  // namespace

TEST_CASE("cuda models: a bf16 training step of CvT and of ViT agrees with fp32") {
  SKIP_WITHOUT_GPU();
  tessera::testing::check_bf16_steps(Device::CUDA);
}

TEST_CASE("cuda models: CvT forward and backward match the CPU in fp32") {
  SKIP_WITHOUT_GPU();
  ModelConfig c = preset_config("cvt-tiny");  // head sizes 32, 32, 64
  set_labels(c, default_labels(4));
  check_model(c, 64);
}

TEST_CASE("cuda models: ViT forward and backward match the CPU in fp32") {
  SKIP_WITHOUT_GPU();
  VitConfig v;
  v.hidden_size = 128, v.num_attention_heads = 2, v.num_hidden_layers = 2, v.intermediate_size = 256;
  v.image_size = 32, v.patch_size = 8;
  v.id2label = default_labels(4);
  check_model(v, 32);
}

TEST_CASE("Module::to moves parameters and buffers in place and keeps the values") {
  // Runs everywhere: CPU to CPU is a no-op, and with a GPU a round trip must give the same bytes.
  ModelConfig c = preset_config("cvt-tiny");
  set_labels(c, default_labels(3));
  auto model = make_model(c, 2);
  const Tensor handle = model->parameters().front().tensor;  // shares the registered TensorImpl
  const auto before = handle.to_vector<float>();
  model->to(Device::CPU);
  CHECK(model->device() == Device::CPU);
  if (!cuda::available()) {
    MESSAGE("GPU round trip skipped: " << cuda::status());
    return;
  }
  model->to(Device::CUDA);
  CHECK(handle.device() == Device::CUDA);  // the old handle sees the move
  model->to(Device::CPU);
  CHECK(handle.to_vector<float>() == before);
}
