// Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on one batch, batch mode: one λ and one CutMix box
// for the whole batch, each sample mixed with its partner in the flipped batch (partner[i] = n − 1 − i),
// so no extra permutation is drawn.
//
//   mixup:  x_i ← λ·x_i + (1 − λ)·x_partner(i)
//   CutMix: x_i's pixels inside the box ← x_partner(i)'s; λ ← 1 − box area / (H·W)
//   loss:   λ·CE(logits, y) + (1 − λ)·CE(logits, y[partner])
//
// λ ~ Beta(α, α). The box: cut ratio √(1 − λ), cut sizes ⌊H·ratio⌋ × ⌊W·ratio⌋, a centre
// uniform over the pixels, edges centre ∓ ⌊cut/2⌋ clipped to the image; λ is then corrected to the share of
// the image left outside the box. When both methods are on, CutMix is chosen with probability switch_prob,
// and a batch is mixed at all with probability `prob`.
//
// Randomness: every number is Philox (engine/core/philox.h) under a key derived from `seed` (so the mixing
// stream is not the augmentation's or the shuffle's), counter step·2³² + slot: slot 0 decides whether the
// batch is mixed, 1 the method, 2 and 3 the box centre (row, column), 4 onwards feed the Beta draw. A draw
// depends only on (seed, step), never on the draws before it: a resumed run mixes exactly as an
// uninterrupted one.
//
// Beta(α, α) = G₁ / (G₁ + G₂) with G₁, G₂ independent Gamma(α, 1), computed from log G₁ − log G₂ so that
// tiny Gammas neither underflow nor divide 0 by 0 (with α = 0.2 a draw is below 1e-30 with probability ~1e-6).
// Gamma(a, 1) for a >= 1: Marsaglia and Tsang's squeeze-and-reject method (a normal and a uniform per try,
// accepted more than 95% of the time). For a < 1: Gamma(a) = Gamma(a + 1)·U^(1/a) with U uniform in (0, 1],
// in logs: log Gamma(a + 1) + log(U)/a.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/ops.h"
#include "models/module.h"

namespace tessera {

struct MixConfig {
  double mixup_alpha = 0;   // Beta(α, α) for mixup; 0 = mixup off
  double cutmix_alpha = 0;  // Beta(α, α) for CutMix; 0 = CutMix off
  double prob = 1.0;        // chance that a batch is mixed at all
  double switch_prob = 0.5; // with both methods on: chance of CutMix rather than mixup
};

// Throws std::invalid_argument naming the field: alphas must be finite and >= 0, prob and switch_prob in
// [0, 1].
void validate(const MixConfig& cfg);
// Whether any method is on (an alpha > 0).
bool mix_enabled(const MixConfig& cfg);

struct MixDraw {
  bool applied = false;  // the batch is mixed (λ and the box below apply)
  bool cutmix = false;   // CutMix, else mixup
  double lambda = 1;     // weight of each sample's own image and label
  int top = 0, left = 0, height = 0, width = 0;  // CutMix's box (may be empty); zeros for mixup
  std::vector<int64_t> partner;  // partner[i] = n − 1 − i
};

// The draw for one batch of n images of H×W at training step `step` (< 2³²). Validates cfg as validate()
// does; n, H and W must be >= 1 (std::invalid_argument naming them otherwise).
MixDraw draw_mix(const MixConfig& cfg, int64_t n, int H, int W, uint64_t seed, uint64_t step);

// Mixes a host batch in place: images f32 [n, C, H, W] on the CPU, contiguous, n = partner.size(), the box
// inside H×W, partner pairing the samples (partner[partner[i]] == i). Mixup computes each pixel in double
// and rounds once to f32. Nothing happens when !draw.applied.
void apply_mix(Tensor& images, const MixDraw& draw);

// λ·CE(logits, labels) + (1 − λ)·CE(logits, labels[partner]) with `opt`'s label smoothing and class weights
// (cross_entropy, engine/ops.h): differentiable, on logits' device. labels: i64 [n] on any device; the
// partner labels are gathered there with index_select. Plain cross_entropy when !draw.applied or λ = 1.
// (Both terms average over the same labels in another order, so with class weights they share one
// normaliser and the sum is the loss against the mixed target.)
Tensor mixed_cross_entropy(const Tensor& logits, const Tensor& labels, const MixDraw& draw,
                           const CrossEntropyOptions& opt = {});

// MixStyle's draw for one batch of n (models/module.h mix_style): with probability `prob` the batch is
// mixed, each sample with a partner from a random permutation (Fisher–Yates) and λ_b ~ Beta(α, α) of its
// own; otherwise nothing (nullopt). Philox under a key of its own derived from `seed`, counter
// step·2³² + slot: slot 0 decides, slots 1 … n − 1 draw the permutation, the Beta draws use n onwards —
// so a draw depends only on (seed, step), like draw_mix's. prob in [0, 1], α > 0 and finite, n >= 1,
// step < 2³² (std::invalid_argument naming them otherwise).
std::optional<models::StyleMix> draw_style_mix(double prob, double alpha, int64_t n, uint64_t seed, uint64_t step);

}  // namespace tessera
