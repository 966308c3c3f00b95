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
#include "tests/cuda_test_util.h"

using namespace tessera;
using namespace tessera::models;

namespace {

// max |a − b| / max(1e-12, max |b|)
double relative_difference(const Tensor& a, const Tensor& b) {
  auto x = a.to(Device::CPU).to_vector<double>(), y = b.to(Device::CPU).to_vector<double>();
  REQUIRE(x.size() == y.size());
  double diff = 0, scale = 1e-12;
  for (size_t i = 0; i < x.size(); ++i) diff = std::max(diff, std::abs(x[i] - y[i])), scale = std::max(scale, std::abs(y[i]));
  return diff / scale;
}

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
  CHECK(relative_difference(logits_gpu, logits_cpu) < 1e-4);
  Tensor loss_cpu = cross_entropy(logits_cpu, labels), loss_gpu = cross_entropy(logits_gpu, labels.to(Device::CUDA));
  CHECK(std::abs(loss_gpu.item() - loss_cpu.item()) < 1e-4 * std::max(1.0, std::abs(loss_cpu.item())));
  loss_cpu.backward();
  loss_gpu.backward();
  const auto pc = cpu->parameters(), pg = gpu->parameters();
  REQUIRE(pc.size() == pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    INFO("gradient of " << pc[i].name);
    REQUIRE(pg[i].tensor.grad().defined());
    CHECK(relative_difference(pg[i].tensor.grad(), pc[i].tensor.grad()) < 1e-3);
  }
  const auto sc = cpu->state_dict(), sg = gpu->state_dict();
  for (const auto& [name, t] : sc)
    if (name.find("running_") != std::string::npos) {
      INFO(name);
      CHECK(relative_difference(sg.at(name), t) < 1e-4);
    }
}

// ‖a − b‖₂ / ‖b‖₂ over all elements (normwise: the measure rounding-error models predict).
double normwise_difference(const Tensor& a, const Tensor& b) {
  auto x = a.to(Device::CPU).to_vector<double>(), y = b.to(Device::CPU).to_vector<double>();
  REQUIRE(x.size() == y.size());
  double d = 0, n = 0;
  for (size_t i = 0; i < x.size(); ++i) d += (x[i] - y[i]) * (x[i] - y[i]), n += y[i] * y[i];
  return std::sqrt(d / std::max(n, 1e-300));
}

// One training step computed in bf16 (fp32 master weights, Model::set_compute_dtype) against the same step
// in fp32, on the GPU, same weights, inputs and batch (dropout and drop path off, so nothing random).
//
// Tolerance, derived from a rounding-error model. Each bf16 rounding of an activation (op outputs, matmul
// and attention inputs) makes an independent relative error of rms u/√3 with u = 2⁻⁸ (uniform over half
// an ulp on either side); products accumulate in fp32, negligible beside it. Layer norms keep every stage's
// conditioning near 1, so along a path of n roundings the errors add like a random walk: normwise relative
// error ≈ √n·u/√3. n counts the roundings on the deepest forward path, `roundings_per_layer` per
// transformer layer (CvT: q/k/v convolutions and their batch norms, projections, attention, output
// projection, residual, layer norm, two MLP linears, GELU, residual ≈ 14; ViT ≈ 11) plus the embeddings and
// head; the backward retraces the path, doubling n for the gradients. We allow 4× the predicted rms (a
// real bug, e.g. a wrong cast or a statistic kept in bf16, moves results by far more than 10%).
void check_bf16_step(const ModelConfig& config, int64_t size, int layers, int roundings_per_layer) {
  set_matmul_precision(MatmulPrecision::Highest);
  auto fp32 = make_model(config, 5);
  auto mixed = make_model(config);
  mixed->load_state_dict(fp32->state_dict(), "the fp32 model");
  fp32->to(Device::CUDA);
  mixed->to(Device::CUDA);
  mixed->set_compute_dtype(DType::bf16);

  Generator data(12);
  Tensor x = data.normal({4, 3, size, size}).to(Device::CUDA);
  Tensor labels = Tensor::from<int64_t>({0, 3, 1, 2}, {4}).to(Device::CUDA);
  Generator g1(9), g2(9);
  Tensor logits_ref = fp32->forward(x, /*training=*/true, g1);
  Tensor logits_bf16 = mixed->forward(x, /*training=*/true, g2);
  REQUIRE(logits_bf16.dtype() == DType::f32);  // cast back for the loss

  const double u_rms = std::ldexp(1.0, -8) / std::sqrt(3.0);
  const double n = double(layers * roundings_per_layer + 6);
  const double tol_forward = 4 * std::sqrt(n) * u_rms, tol_backward = 4 * std::sqrt(2 * n) * u_rms;
  const double logits_err = normwise_difference(logits_bf16, logits_ref);
  MESSAGE("bf16 vs fp32: logits " << logits_err << " (tolerance " << tol_forward << ")");
  CHECK(logits_err < tol_forward);
  Tensor loss_ref = cross_entropy(logits_ref, labels), loss_bf16 = cross_entropy(logits_bf16, labels);
  CHECK(std::abs(loss_bf16.item() - loss_ref.item()) < tol_forward * std::max(1.0, std::abs(loss_ref.item())));
  loss_ref.backward();
  loss_bf16.backward();

  // All gradients together, normwise; then each tensor with a non-negligible gradient must point the same
  // way (cosine ≥ 1 − tol²/2, i.e. an angle ≲ tol), which catches a single wrong tensor the global norm
  // would hide. Tensors whose gradient is zero in exact arithmetic (key biases) hold rounding noise only.
  const auto pr = fp32->parameters(), pb = mixed->parameters();
  REQUIRE(pr.size() == pb.size());
  std::vector<double> all_ref, all_bf16;
  double largest = 0;
  for (size_t i = 0; i < pr.size(); ++i) {
    REQUIRE(pb[i].tensor.grad().defined());
    CHECK(pb[i].tensor.grad().dtype() == DType::f32);  // gradients reach the fp32 masters
    for (double v : pr[i].tensor.grad().to(Device::CPU).to_vector<double>()) all_ref.push_back(v);
    for (double v : pb[i].tensor.grad().to(Device::CPU).to_vector<double>()) all_bf16.push_back(v);
    largest = std::max(largest, std::sqrt(sum(mul(pr[i].tensor.grad(), pr[i].tensor.grad())).item()));
  }
  const double grads_err = normwise_difference(Tensor::from(all_bf16, {int64_t(all_bf16.size())}, DType::f64),
                                               Tensor::from(all_ref, {int64_t(all_ref.size())}, DType::f64));
  MESSAGE("bf16 vs fp32: all gradients " << grads_err << " (tolerance " << tol_backward << ")");
  CHECK(grads_err < tol_backward);
  for (size_t i = 0; i < pr.size(); ++i) {
    const Tensor gr = pr[i].tensor.grad(), gb = pb[i].tensor.grad();
    const double norm_r = std::sqrt(sum(mul(gr, gr)).item()), norm_b = std::sqrt(sum(mul(gb, gb)).item());
    if (norm_r < 1e-3 * largest) continue;
    const double cosine = sum(mul(gr, gb)).item() / (norm_r * norm_b);
    INFO("gradient of " << pr[i].name << ": cosine " << cosine);
    CHECK(cosine >= 1 - tol_backward * tol_backward / 2);
  }
}

}  // namespace

TEST_CASE("cuda models: a bf16 training step of CvT and of ViT agrees with fp32") {
  SKIP_WITHOUT_GPU();
  ModelConfig c = preset_config("cvt-tiny");  // 7 layers, head sizes 32, 32, 64
  set_labels(c, default_labels(4));
  auto& cvt = std::get<CvtConfig>(c);
  cvt.drop_path_rate = {0, 0, 0};
  check_bf16_step(c, 64, 7, 14);
  VitConfig v;
  v.hidden_size = 128, v.num_attention_heads = 2, v.num_hidden_layers = 4, v.intermediate_size = 256;
  v.image_size = 32, v.patch_size = 8;
  v.id2label = default_labels(4);
  check_bf16_step(v, 32, 4, 11);
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
