#include "engine/core/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/core/backend.h"
#include "engine/core/profile.h"

namespace tessera {

static thread_local bool g_grad_enabled = true;

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensor record(const char* name, std::vector<Tensor> inputs, Tensor output,
              std::function<std::vector<Tensor>(const Tensor&)> rule) {
  if (!needs_grad(inputs)) return output;
  auto node = std::make_shared<LambdaNode>();
  node->name = name;
  node->inputs = std::move(inputs);
  node->rule = std::move(rule);
  if (profile::Profiler* p = profile::Profiler::active()) node->profile_layer = p->current_layer();
  output.impl()->grad_fn = std::move(node);
  output.impl()->requires_grad = true;
  return output;
}

// The tape's own arithmetic runs straight on the device's backend: it is never recorded (backward rules
// run without grad), so it needs none of the ops layer's autograd.
Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  int64_t lead = grad.dim() - int64_t(shape.size());
  TS_CHECK(lead >= 0, "sum_to: cannot reduce " + grad.str() + " to " + shape_str(shape));
  // Summed dims that all lead (a bias's gradient) are the rows of a contiguous [R, outer]: the backend sums
  // its columns in place. Otherwise kept dims first, summed dims last, as rows [outer, R] for the backend's
  // row reduction.
  std::vector<int64_t> kept, summed;
  int64_t R = 1;
  for (int64_t i = 0; i < grad.dim(); ++i) {
    if (i < lead || (shape[size_t(i - lead)] == 1 && grad.shape()[size_t(i)] != 1)) {
      summed.push_back(i);
      R *= grad.shape()[size_t(i)];
    } else {
      kept.push_back(i);
    }
  }
  if (summed.empty()) return grad.reshape(shape);
  int64_t outer = R ? grad.numel() / R : shape_numel(shape);
  Tensor out = Tensor::empty({outer}, grad.dtype(), grad.device());
  if (!kept.empty() && summed.back() < kept.front() && grad.is_contiguous()) {  // leading dims (a bias)
    if (outer) backend(grad.device()).column_sums(grad.detach().reshape({R, outer}), out);
    return out.reshape(shape);
  }
  std::vector<int64_t> perm = kept;
  perm.insert(perm.end(), summed.begin(), summed.end());
  Tensor rows = grad.detach().permute(perm).contiguous().reshape({outer, R});
  if (outer) backend(grad.device()).reduce(ReduceOp::Sum, rows, out, nullptr);
  return out.reshape(shape);
}

namespace {
// sum = sum + g, the gradients of one tensor from two of its uses. Into sum's own memory when nothing else
// can see it (a gradient this backward made and holds alone, the usual case), otherwise into new memory:
// an add into fresh memory first reads that memory in (write-allocate), four streams where one in place
// moves three (CvT-13's first stage, [25088, 256]: 3.5 → 2.2 ms on two threads). Either way the same sums.
void accumulate_gradient(Tensor& sum, const Tensor& g) {
  TS_CHECK(sum.device() == g.device() && sum.dtype() == g.dtype(),
           "backward: gradients " + sum.str() + " and " + g.str() + " cannot be summed");
  Backend& be = backend(sum.device());
  if (sum.sole_owner() && sum.is_contiguous()) {
    if (sum.numel()) be.binary(BinaryOp::Add, sum, g, sum);
    return;
  }
  Tensor out = Tensor::empty(sum.shape(), sum.dtype(), sum.device());
  if (out.numel()) be.binary(BinaryOp::Add, sum, g, out);
  sum = out;
}
}  // namespace

void Tensor::backward(const Tensor& grad) const {
  TS_CHECK(requires_grad(), "backward: " + str() + " does not require grad");
  Tensor seed = grad;
  if (!seed.defined()) {
    TS_CHECK(numel() == 1, "backward: " + str() + " is not a scalar; pass its gradient");
    seed = Tensor::ones(shape(), dtype(), device());
  }
  TS_CHECK(seed.shape() == shape(), "backward: gradient " + seed.str() + " for " + str());
  NoGradGuard no_grad;
  profile::PhaseScope backward_phase(profile::Phase::Backward);

  auto accumulate_leaf = [](const Tensor& leaf, const Tensor& g) {
    TS_CHECK(g.shape() == leaf.shape(), "backward: gradient " + g.str() + " for leaf " + leaf.str());
    // A fresh gradient that nothing else holds (most parameters' own: a GEMM's or a reduction's output)
    // becomes the leaf's as it is; the copy below costs a call per parameter per step.
    // (The whole storage, so that a small gradient never keeps a larger dead buffer alive.)
    if (!leaf.grad().defined() && g.dtype() == leaf.dtype() && g.device() == leaf.device() && g.is_contiguous() &&
        g.offset() == 0 && g.storage()->nbytes == g.nbytes() && g.sole_owner()) {
      const_cast<Tensor&>(leaf).set_grad(g);
      return;
    }
    Tensor gg = g.dtype() == leaf.dtype() ? g : g.to(leaf.dtype());
    if (!leaf.grad().defined()) {
      // Own the memory: the gradient may alias a view of something the graph still uses.
      Tensor owned = Tensor::empty(leaf.shape(), leaf.dtype(), leaf.device());
      owned.copy_(gg);
      const_cast<Tensor&>(leaf).set_grad(owned);
    } else {
      Tensor acc = leaf.grad(), sum = acc;  // the leaf's own gradient, which others may hold: summed apart
      accumulate_gradient(sum, gg);
      acc.copy_(sum);
    }
  };
  if (is_leaf()) { accumulate_leaf(*this, seed); return; }

  // Topological order of the nodes reachable from this output (iterative DFS, post-order).
  // Holding shared_ptrs keeps every node alive while parents release their inputs.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{grad_fn(), 0}};
  seen.insert(grad_fn().get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    TS_CHECK(!node->released, std::string("backward: the graph through '") + node->name +
                                  "' was already freed by an earlier backward");
    if (next < node->inputs.size()) {
      const Tensor& in = node->inputs[next++];
      std::shared_ptr<Node> child = in.defined() ? in.grad_fn() : nullptr;
      if (child && seen.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }

  std::unordered_map<Node*, Tensor> grads;
  grads[grad_fn().get()] = seed;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = it->get();
    profile::LayerScope layer(node->profile_layer);  // backward time belongs to the layer that recorded it
    auto found = grads.find(node);
    if (found != grads.end()) {
      Tensor g = std::move(found->second);
      grads.erase(found);
      std::vector<Tensor> in_grads = node->backward(g);
      g = Tensor();  // a view's gradient (a transpose's) may share g's storage: let a leaf see it as sole owner
      TS_CHECK(in_grads.size() == node->inputs.size(),
               std::string("backward rule of '") + node->name + "' returned the wrong number of gradients");
      for (size_t i = 0; i < in_grads.size(); ++i) {
        const Tensor& in = node->inputs[i];
        const Tensor& gi = in_grads[i];
        if (!gi.defined() || !in.defined() || !in.requires_grad()) continue;
        TS_CHECK(gi.shape() == in.shape(), std::string("backward rule of '") + node->name + "' gave " +
                                               gi.str() + " for input " + in.str());
        if (in.is_leaf()) {
          accumulate_leaf(in, gi);
        } else {
          Tensor& slot = grads[in.grad_fn().get()];
          if (slot.defined()) accumulate_gradient(slot, gi);
          else slot = gi;
        }
      }
    }
    node->release();
  }
}

}  // namespace tessera
