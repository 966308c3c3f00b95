// One training step in bf16 (fp32 master weights) against the same step in fp32, for CvT and ViT, on a
// device: the model-level check of a device's bf16 path (test_models.cpp: CPU; test_cuda_models.cpp: CUDA).
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/ops.h"
#include "kernels/devices.h"
#include "models/model.h"

namespace tessera::testing {

using namespace tessera::models;

// ‖a − b‖₂ / ‖b‖₂ over all elements (normwise: the measure rounding-error models predict).
inline double normwise_difference(const Tensor& a, const Tensor& b) {
  auto x = a.to(Device::CPU).to_vector<double>(), y = b.to(Device::CPU).to_vector<double>();
  REQUIRE(x.size() == y.size());
  double d = 0, n = 0;
  for (size_t i = 0; i < x.size(); ++i) d += (x[i] - y[i]) * (x[i] - y[i]), n += y[i] * y[i];
  return std::sqrt(d / std::max(n, 1e-300));
}

// One training step computed in bf16 (fp32 master weights, Model::set_compute_dtype) against the same step
// in fp32, on `device`, same weights, inputs and batch (dropout and drop path off, so nothing random).
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
inline void check_bf16_step(const ModelConfig& config, int64_t size, int layers, int roundings_per_layer, Device device) {
  set_matmul_precision(MatmulPrecision::Highest);
  auto fp32 = make_model(config, 5);
  auto mixed = make_model(config);
  mixed->load_state_dict(fp32->state_dict(), "the fp32 model");
  fp32->to(device);
  mixed->to(device);
  mixed->set_compute_dtype(DType::bf16);

  Generator data(12);
  Tensor x = data.normal({4, 3, size, size}).to(device);
  Tensor labels = Tensor::from<int64_t>({0, 3, 1, 2}, {4}).to(device);
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

// CvT (the small preset: 7 layers, head sizes 32, 32, 64; drop path off) and a 4-layer ViT.
inline void check_bf16_steps(Device device) {
  ModelConfig c = preset_config("cvt-tiny");
  set_labels(c, default_labels(4));
  std::get<CvtConfig>(c).drop_path_rate = {0, 0, 0};
  check_bf16_step(c, 64, 7, 14, device);
  VitConfig v;
  v.hidden_size = 128, v.num_attention_heads = 2, v.num_hidden_layers = 4, v.intermediate_size = 256;
  v.image_size = 32, v.patch_size = 8;
  v.id2label = default_labels(4);
  check_bf16_step(v, 32, 4, 11, device);
}

}  // namespace tessera::testing
