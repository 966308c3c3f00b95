// The optimizer: AdamW with per-group weight decay, the Hugging Face Trainer's decay grouping, global-norm
// gradient clipping, and optimizer state save/load.
//
// AdamW is torch.optim.AdamW (decoupled weight decay, bias correction; the update itself is
// Backend::adamw, see engine/core/backend.h). As in torch, each parameter has its own step counter and moments
// (exp_avg, exp_avg_sq, same dtype and device as the parameter), and a parameter whose .grad is undefined at
// step() is skipped entirely: not decayed, moments and step counter unchanged.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace tessera {

// A parameter with the name it has in the checkpoint. `in_layer_norm` says the parameter belongs to a
// LayerNorm module: that is a property of the module, not of the name (CvT's
// "...convolution_embeddings.normalization" is a LayerNorm, "...convolution_projection.normalization" a
// BatchNorm), so the model says it.
struct NamedParameter {
  std::string name;
  Tensor tensor;
  bool in_layer_norm = false;
};

// A set of parameters sharing a weight decay; unset means AdamWOptions::weight_decay (torch's group
// defaults).
struct ParamGroup {
  std::vector<NamedParameter> params;
  std::optional<double> weight_decay;
};

// The Hugging Face Trainer's rule (Trainer.get_decay_parameter_names: parameters outside nn.LayerNorm
// modules whose name does not contain the substring "bias"): decay unless the parameter is in a LayerNorm
// or its name contains "bias". Everything else decays, cls tokens, position embeddings, the classifier
// weight and BatchNorm weights included. Note the substring test: any name containing "bias" is excluded.
bool trainer_applies_weight_decay(const NamedParameter& p);
// Two groups in the Trainer's order: {decaying parameters, weight_decay}, {the others, 0}. Either may be
// empty. Parameters keep their relative order.
std::vector<ParamGroup> trainer_param_groups(const std::vector<NamedParameter>& params, double weight_decay);

struct AdamWOptions {
  double lr = 1e-3;  // torch's default; the Trainer passes its own
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // for groups that do not set their own
};

class AdamW {
 public:
  // Per-parameter state. exp_avg/exp_avg_sq are allocated (zeros) at construction.
  struct ParamState {
    NamedParameter param;
    double weight_decay = 0;
    Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;  // optimizer steps this parameter has taken (it skips steps without a grad)
  };

  // Parameters must be defined, contiguous f32/f64 tensors with unique non-empty names, each given once.
  AdamW(const std::vector<ParamGroup>& groups, const AdamWOptions& options = {});
  // One group using options.weight_decay.
  AdamW(const std::vector<NamedParameter>& params, const AdamWOptions& options = {});

  // One update of every parameter that has a gradient (under NoGradGuard).
  void step();
  // Drops every parameter's gradient (torch's zero_grad(set_to_none=True)).
  void zero_grad();

  double lr() const { return options_.lr; }
  void set_lr(double lr);
  const AdamWOptions& options() const { return options_; }
  const std::vector<ParamState>& states() const { return states_; }
  std::vector<Tensor> parameters() const;

  // The state as named tensors (the moments are the optimizer's own tensors, not copies):
  //   "exp_avg.<name>", "exp_avg_sq.<name>"  the moments, the parameter's dtype and shape
  //   "step.<name>"                           i64 scalar, that parameter's step counter
  //   "weight_decay.<name>"                   f64 scalar, that parameter's weight decay
  //   "adamw.lr", "adamw.beta1", "adamw.beta2", "adamw.eps"   f64 scalars
  // Hyperparameters are f64 tensors (not file metadata) so the values round-trip exactly.
  std::map<std::string, Tensor> state_dict() const;
  // Restores everything state_dict() holds, hyperparameters included (as torch's load_state_dict does).
  // The key set must match exactly and every moment must have the parameter's shape and dtype; otherwise
  // throws one error listing the missing, unexpected and mismatched entries, and changes nothing.
  void load_state_dict(const std::map<std::string, Tensor>& state);

 private:
  void check_hyperparameters(const AdamWOptions& o, const char* where) const;
  AdamWOptions options_;
  std::vector<ParamState> states_;
};

// Writes the optimizer's state_dict() to a safetensors file (metadata format=tessera.adamw, version=1).
void save_optimizer(const AdamW& opt, const std::string& path);
// Reads a file written by save_optimizer into `opt` (validated as load_state_dict does).
void load_optimizer(AdamW& opt, const std::string& path);

// torch.nn.utils.clip_grad_norm_ (norm_type 2): total = ‖(‖g_1‖, …, ‖g_n‖)‖ over the parameters that have
// a gradient; when total > max_norm every gradient is multiplied in place by max_norm / (total + 1e-6).
// Returns the total norm before clipping (0 when no parameter has a gradient). Per-tensor sums of squares
// run on the tensors' device; their combination is in double on the host, with one device-to-host copy per
// device. A non-finite total throws when error_if_nonfinite, else (torch's default) it scales the
// gradients by NaN like torch does.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite = false);
// The same clipping without any device-to-host copy, for steps that must not wait for the GPU (a CUDA
// graph, an asynchronous training loop): returns the total norm as an f64 scalar tensor on the gradients'
// device (read it when convenient) and always multiplies the gradients by min(1, max_norm/(total + 1e-6))
// on the device. All gradients on one device. A non-finite total leaves non-finite gradients, as torch's
// default does.
Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm);

}  // namespace tessera
