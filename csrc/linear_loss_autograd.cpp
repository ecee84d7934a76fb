// Autograd of samplewt_ops.linear_cross_entropy / linear_focal_loss
// (csrc/linear_loss.cpp), in C++ like the other losses' (autograd.cpp): the
// forward kernel has already written the gradients of input, linear_weight
// and linear_bias (only those autograd needs: grad_mask), so the backward
// node only scales them by grad_output. Reduction "none" has a grad_output
// per row, which the gradients of linear_weight and linear_bias sum over, so
// its backward runs the op again with grad_rows = grad_output.
//
// A leaf's AccumulateGrad adopts a gradient nobody else holds: with
// grad_output 1 the node hands its gradients over and keeps the call's
// arguments to recompute them for a second backward (retain_graph).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace samplewt {
namespace linear {
namespace {

using at::Tensor;

using torch::autograd::variable_list;
// Where the schemas (both alike) keep what autograd needs.
struct Layout {
  std::string name;
  size_t num_args = 0;
  int input = -1, weight = -1, bias = -1, reduction = -1, compute_grad = -1, grad_mask = -1,
      grad_rows = -1, compute_stats = -1;
  std::vector<int> other_tensors;  // never differentiated

  void bind(const c10::FunctionSchema& schema) {
    name = schema.operator_name().name;
    name = name.substr(name.find("::") + 2);
    const auto& args = schema.arguments();
    num_args = args.size();
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i].name();
      const int k = static_cast<int>(i);
      if (a == "input") input = k;
      else if (a == "linear_weight") weight = k;
      else if (a == "linear_bias") bias = k;
      else if (a == "reduction") reduction = k;
      else if (a == "compute_grad") compute_grad = k;
      else if (a == "grad_rows") grad_rows = k;
      else if (a == "grad_mask") grad_mask = k;
      else if (a == "compute_stats") compute_stats = k;
      else if (args[i].type()->kind() == c10::TypeKind::TensorType ||
               args[i].type()->isSubtypeOf(*c10::OptionalType::ofTensor())) {
        other_tensors.push_back(k);
      }
    }
    TORCH_CHECK(input >= 0 && weight >= 0 && bias >= 0 && reduction >= 0 && compute_grad >= 0 &&
                    grad_mask >= 0 && grad_rows >= 0 && compute_stats >= 0 &&
                    schema.returns().size() == 5,
                "samplewt_ops: ", name, "'s schema lacks the linear loss layout (linear_loss.cpp)");
  }
};

class LinearLossBackward final : public torch::autograd::Node {
 public:
  LinearLossBackward(const c10::OperatorHandle& op, const Layout& layout, bool reduction_none)
      : op_(op), layout_(layout), reduction_none_(reduction_none) {}

  std::string name() const override { return "samplewt_ops_" + layout_.name + "_Backward"; }

  variable_list apply(variable_list&& grads) override {
    check_not_double_backward(layout_.name, "the logits (F.linear) and samplewt_ops.reference." +
                                                std::string(layout_.name == "linear_focal_loss"
                                                                ? "focal_loss" : "cross_entropy"));
    variable_list out(3);
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    std::vector<Tensor> g;
    if (reduction_none_) {
      // Each row's gradient times its grad_output: a second pass over the chunks.
      g = recompute(grad_loss);
    } else {
      const bool one = is_one(grad_loss);
      bool own = false;  // g holds the only references: scale it in place
      if (saved_.empty()) {
        g = recompute(Tensor());
      } else if (one) {
        // Final as they are: handed over (a leaf's AccumulateGrad adopts
        // them); a second backward (retain_graph) recomputes them.
        g = std::move(saved_);
        saved_.clear();
      } else if (last_backward(grad_loss)) {
        g = std::move(saved_);
        saved_.clear();
        own = true;
      } else {
        g = saved_;
      }
      if (!one) {
        for (int i = 0; i < 3; ++i) {
          if (!wanted(i, g)) continue;
          if (own && sole_reference(g[i])) {
            scale_in_place(g[i], grad_loss, false);
          } else {
            g[i] = g[i] * grad_loss.to(g[i].scalar_type());
          }
        }
      }
    }
    for (int i = 0; i < 3; ++i) {
      if (should_compute_output(i) && wanted(i, g)) out[i] = g[i];
    }
    return out;
  }

  void release_variables() override {
    saved_.clear();
    args_.clear();
  }

  std::vector<Tensor> saved_;      // grad_input, grad_linear_weight, grad_linear_bias
  bool has_bias_ = false;
  std::vector<c10::IValue> args_;  // the call's arguments, to recompute
  int64_t mask_ = 7;               // the gradients autograd needs (grad_mask bits)
  int64_t input_version_ = 0, weight_version_ = 0;

 private:
  // Whether gradient i exists (without reading sizes, which may be symbolic).
  bool wanted(int i, const std::vector<Tensor>& g) const {
    return g[i].defined() && ((mask_ >> i) & 1) != 0 && (i < 2 || has_bias_);
  }

  std::vector<Tensor> recompute(const Tensor& grad_rows) {
    TORCH_CHECK(!args_.empty(), "samplewt_ops.", layout_.name,
                ": trying to backward through the graph a second time; pass "
                "retain_graph=True the first time");
    const Tensor& input = args_[layout_.input].toTensor();
    const Tensor& weight = args_[layout_.weight].toTensor();
    TORCH_CHECK(input._version() == input_version_ && weight._version() == weight_version_,
                "samplewt_ops.", layout_.name,
                ": input or linear_weight was modified in place after the forward pass, so "
                "the gradient cannot be recomputed");
    torch::jit::Stack stack(args_.begin(), args_.end());
    stack[layout_.compute_grad] = true;
    stack[layout_.grad_mask] = mask_;
    stack[layout_.compute_stats] = false;  // the forward gave them
    if (grad_rows.defined()) stack[layout_.grad_rows] = grad_rows.reshape({-1});
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      at::NoGradGuard no_grad;
      op_.callBoxed(stack);
    }
    return {stack[1].toTensor(), stack[2].toTensor(), stack[3].toTensor()};
  }

  c10::OperatorHandle op_;
  const Layout& layout_;
  bool reduction_none_;
};

class LinearLossAutograd final : public c10::OperatorKernel {
 public:
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                  torch::jit::Stack* stack) {
    std::call_once(bound_, [&] { layout_.bind(op.schema()); });
    const Layout& L = layout_;
    const size_t first = stack->size() - L.num_args;
    const auto arg = [&](int i) -> c10::IValue& { return (*stack)[first + i]; };
    const bool grad_mode = torch::autograd::GradMode::is_enabled();
    const Tensor input = arg(L.input).toTensor();
    const Tensor weight = arg(L.weight).toTensor();
    const Tensor bias = arg(L.bias).isTensor() ? arg(L.bias).toTensor() : Tensor();
    const bool need = grad_mode && (input.requires_grad() || weight.requires_grad() ||
                                    (bias.defined() && bias.requires_grad()));
    if (grad_mode) {
      for (int k : L.other_tensors) {
        const c10::IValue& v = arg(k);
        TORCH_CHECK(!v.isTensor() || !v.toTensor().requires_grad(), "samplewt_ops.", L.name,
                    " does not differentiate ", op.schema().arguments()[k].name(),
                    " (only input, linear_weight and linear_bias)");
      }
    }
    const bool none = arg(L.reduction).toInt() == 0;
    const bool asked = arg(L.compute_grad).toBool();
    const int64_t asked_mask = asked ? arg(L.grad_mask).toInt() : 0;
    const int64_t needed = (input.requires_grad() ? 1 : 0) | (weight.requires_grad() ? 2 : 0) |
                           (bias.defined() && bias.requires_grad() ? 4 : 0);
    decltype(make_node<LinearLossBackward>(op, layout_, none)) node;
    if (need) {
      node = make_node<LinearLossBackward>(op, layout_, none);
      node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
      node->args_.assign(stack->begin() + first, stack->end());
      node->input_version_ = input._version();
      node->weight_version_ = weight._version();
      node->has_bias_ = bias.defined();
      node->mask_ = needed;
      // "none" recomputes in backward, with grad_output per row; the others
      // compute the gradients now.
      if (!none) {
        arg(L.compute_grad) = true;
        arg(L.grad_mask) = asked_mask | needed;
      }
    }
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    }
    if (!node) return;
    const size_t out = stack->size() - 5;
    if (!none) {
      node->saved_ = {(*stack)[out + 1].toTensor(), (*stack)[out + 2].toTensor(),
                      (*stack)[out + 3].toTensor()};
      // The outputs as the caller asked for them (compute_grad, grad_mask).
      for (int i = 1; i < 4; ++i) {
        if ((asked_mask & (1 << (i - 1))) == 0) (*stack)[out + i] = at::empty({0}, input.options());
      }
    }
    Tensor loss = (*stack)[out].toTensor();
    torch::autograd::set_history(loss, NodePtr(node));
  }

 private:
  std::once_flag bound_;
  Layout layout_;
};

}  // namespace

TORCH_LIBRARY_IMPL(samplewt_ops, Autograd, m) {
  for (const char* name : {"linear_cross_entropy", "linear_focal_loss"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunctor(std::make_unique<LinearLossAutograd>()));
  }
}

}  // namespace linear
}  // namespace samplewt
