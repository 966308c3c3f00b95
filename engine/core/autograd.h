// Reverse-mode autograd on a tape.
//
// Every differentiable op that sees an input requiring grad (and grad mode on) gives its output a Node:
// the inputs it differentiates with respect to, whatever it saved, and one backward rule. Tensor::backward
// orders the nodes topologically from the root, runs each rule once with the summed gradient of its
// output, and frees every node's saved tensors afterwards (a second backward through a freed graph is an
// error). Accumulation convention: a leaf that requires grad (a parameter) ADDS into its .grad (+=), so
// gradients accumulate across backward calls until zero_grad(); gradients of intermediate activations are
// summed inside one backward and never stored. Backward rules run in no-grad mode (no double backward).
#pragma once
#include <memory>
#include <vector>

#include "engine/core/tensor.h"

namespace tessera {

struct Node {
  std::vector<Tensor> inputs;  // the op's differentiable inputs, in the order backward() answers
  const char* name = "op";
  bool released = false;
  int32_t profile_layer = -1;  // the profiler's layer that recorded it (engine/core/profile.h), -1 for none
  virtual ~Node() = default;
  // Gradients for each entry of `inputs` (an undefined Tensor where none flows) given d(loss)/d(output).
  virtual std::vector<Tensor> backward(const Tensor& grad_output) = 0;
  // Drops saved tensors and inputs; called once backward has run through this node.
  virtual void release() { inputs.clear(); released = true; }
};

// A Node whose rule is a lambda; saved tensors are captured by value and freed with the lambda.
struct LambdaNode : Node {
  std::function<std::vector<Tensor>(const Tensor&)> rule;
  std::vector<Tensor> backward(const Tensor& g) override { return rule(g); }
  void release() override { rule = nullptr; Node::release(); }
};

bool grad_enabled();
// RAII: disables graph recording in its scope (inference, optimizer updates, backward rules).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;
 private:
  bool previous_;
};

// True when an op on `inputs` must be recorded.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Records `output` as produced by `rule` from `inputs` when any of them requires grad; returns output.
// Usage:  return record("mul", {a, b}, out, [a, b](const Tensor& g) { return {mul(g, b), mul(g, a)}; });
Tensor record(const char* name, std::vector<Tensor> inputs, Tensor output,
              std::function<std::vector<Tensor>(const Tensor&)> rule);

// Sums `grad` down to `shape` (undoing broadcasting): the backward of expand.
Tensor sum_to(const Tensor& grad, const Shape& shape);

}  // namespace tessera
