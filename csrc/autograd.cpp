// Autograd of the loss ops, in C++ (as torchvision's ops have it): one boxed
// kernel for every non-in-place loss op and both devices. The forward kernel
// has already written d(loss)/d(input) (`grad`) and, for element-wise ops
// asked for it, d(loss)/d(target) (`target_grad`), so the backward node only
// scales them by grad_output. Being C++, a call pays no Python frame for its
// autograd; backward's ops are plain aten ops, so torch.compile traces it.
//
// A leaf input's AccumulateGrad adopts a gradient that nobody else holds and
// copies it otherwise: so with grad_output 1 the node hands its buffer over
// and keeps the arguments (references) to recompute it for a second backward
// (retain_graph).
#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "op_schemas.h"

namespace samplewt {
namespace {

using at::Tensor;
using torch::autograd::variable_list;

// The op's name without the namespace.
std::string short_name(const c10::FunctionSchema& schema) {
  const std::string& full = schema.operator_name().name;
  return full.substr(full.find("::") + 2);
}

// Where an op's schema has the arguments and outputs autograd needs.
struct LossLayout {
  std::string name;
  size_t num_args = 0, num_returns = 0;
  int input = -1, target = -1, compute_grad = -1, compute_stats = -1, compute_target_grad = -1;
  int policy = -1;            // the table's policy (0: no table)
  int target_grad_out = -1;   // output index of target_grad, or -1 (row ops)
  std::vector<int> weights;   // the other tensor arguments: never differentiated here
  bool rows = false;          // row op: grad_output of reduction none is per row

  void bind(const c10::FunctionSchema& schema) {
    name = short_name(schema);
    const auto& args = schema.arguments();
    num_args = args.size();
    num_returns = schema.returns().size();
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i].name();
      const int k = static_cast<int>(i);
      if (a == "input") input = k;
      else if (a == "target") target = k;
      else if (a == "compute_grad") compute_grad = k;
      else if (a == "compute_stats") compute_stats = k;
      else if (a == "compute_target_grad") compute_target_grad = k;
      else if (a == "policy") policy = k;
      else if (args[i].type()->isSubtypeOf(*c10::OptionalType::ofTensor())) weights.push_back(k);
    }
    const auto& returns = schema.returns();
    for (size_t i = 0; i < returns.size(); ++i) {
      if (returns[i].name() == "target_grad") target_grad_out = static_cast<int>(i);
    }
    rows = target_grad_out < 0;
    TORCH_CHECK(input >= 0 && target >= 0 && compute_grad >= 0 && compute_stats >= 0 &&
                    returns.size() >= 3 && returns[1].name() == "grad",
                "samplewt_ops: ", name, "'s schema does not have the loss layout (autograd.cpp)");
  }
};

Tensor scaled(const Tensor& grad, const Tensor& grad_loss, bool rows) {
  if (grad_loss.dim() == 0) return is_one(grad_loss) ? grad : grad * grad_loss.to(grad.dtype());
  const Tensor g = grad_loss.to(grad.dtype());
  return rows ? grad * per_row_factor(g, grad) : grad * g;
}

class LossBackward final : public torch::autograd::Node {
 public:
  LossBackward(const c10::OperatorHandle& op, const LossLayout& layout)
      : op_(op), layout_(layout) {}

  std::string name() const override { return "samplewt_ops_" + layout_.name + "_defaultBackward"; }

  variable_list apply(variable_list&& grads) override {
    check_not_double_backward(layout_.name, "samplewt_ops.reference." + layout_.name);
    variable_list out(2);
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    if (should_compute_output(0)) {
      TORCH_CHECK(computed_grad_, "samplewt_ops.", layout_.name,
                  ": input requires grad, but the op ran with compute_grad=False");
      if (handover_ && is_one(grad_loss)) {
        out[0] = grad_.defined() ? std::move(grad_) : recompute_grad();
        grad_.reset();
      } else if (last_use_of_grad(grad_loss)) {
        // Nothing needs the saved gradient after this call: scale it in place
        // rather than allocate a second buffer of the input's size.
        Tensor g = grad_.defined() ? std::move(grad_) : recompute_grad();
        grad_.reset();
        out[0] = scale_in_place(g, grad_loss, layout_.rows);
      } else {
        out[0] = scaled(grad_.defined() ? grad_ : recompute_grad(), grad_loss, layout_.rows);
      }
    }
    if (should_compute_output(1)) {
      TORCH_CHECK(layout_.target_grad_out >= 0, "samplewt_ops.", layout_.name,
                  ": the op does not differentiate target; samplewt_ops.", layout_.name,
                  " (the function) does");
      TORCH_CHECK(computed_target_grad_, "samplewt_ops.", layout_.name,
                  ": target requires grad, but the op ran with compute_target_grad=False");
      out[1] = scaled(target_grad_, grad_loss, false).to(target_dtype_);
    }
    return out;
  }

  void release_variables() override {
    grad_.reset();
    target_grad_.reset();
    args_.clear();
  }

  Tensor grad_, target_grad_;
  std::vector<c10::IValue> args_;  // the call's arguments, kept to recompute grad_
  bool handover_ = false;
  int64_t input_version_ = 0;
  bool computed_grad_ = false, computed_target_grad_ = false;  // the call's flags
  at::ScalarType target_dtype_ = at::kFloat;

 private:
  Tensor recompute_grad() {
    TORCH_CHECK(!args_.empty(), "samplewt_ops.", layout_.name,
                ": trying to backward through the graph a second time; pass "
                "retain_graph=True the first time");
    const Tensor& input = args_[layout_.input].toTensor();
    TORCH_CHECK(input._version() == input_version_, "samplewt_ops.", layout_.name,
                ": input was modified in place after the forward pass, so its gradient "
                "cannot be recomputed for a second backward");
    torch::jit::Stack stack(args_.begin(), args_.end());
    stack[layout_.compute_grad] = true;
    stack[layout_.compute_stats] = false;
    if (layout_.compute_target_grad >= 0) stack[layout_.compute_target_grad] = false;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      at::NoGradGuard no_grad;
      op_.callBoxed(stack);
    }
    return stack[1].toTensor();
  }

  // This backward is the saved gradient's last use (the graph is freed after
  // it, and no one else holds the buffer), and scaling it in place is plain
  // eager work: no tracing, no double backward through grad_output.
  bool last_use_of_grad(const Tensor& grad_loss) const {
    if (!last_backward(grad_loss)) return false;
    if (!grad_.defined()) return !args_.empty();  // recomputed: a fresh buffer
    return sole_reference(grad_);
  }

  c10::OperatorHandle op_;
  const LossLayout& layout_;
};

class LossAutograd final : public c10::OperatorKernel {
 public:
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                  torch::jit::Stack* stack) {
    std::call_once(bound_, [&] { layout_.bind(op.schema()); });
    const LossLayout& L = layout_;
    const size_t first = stack->size() - L.num_args;
    const auto arg = [&](int i) -> const c10::IValue& { return (*stack)[first + i]; };
    const bool grad_mode = torch::autograd::GradMode::is_enabled();
    const Tensor input = arg(L.input).toTensor();
    const Tensor target = arg(L.target).toTensor();
    const bool need_input = grad_mode && input.requires_grad();
    const bool need_target = grad_mode && target.requires_grad();
    if (grad_mode) {
      for (int w : L.weights) {
        const c10::IValue& v = arg(w);
        TORCH_CHECK(!v.isTensor() || !v.toTensor().requires_grad(), "samplewt_ops.", L.name,
                    ": the op does not differentiate ", op.schema().arguments()[w].name(),
                    "; samplewt_ops.", L.name, " (the function) does");
      }
    }
    decltype(make_node<LossBackward>(op, layout_)) node;
    if (need_input || need_target) {
      node = make_node<LossBackward>(op, layout_);
      node->set_next_edges(torch::autograd::collect_next_edges(input, target));
      // A call with a table updates it: it is never run again to recompute.
      const bool table = L.policy >= 0 && arg(L.policy).toInt() != 0;
      node->handover_ =
          need_input && input.is_leaf() && !at::isTensorSubclassLike(input) && !table;
      if (node->handover_) {
        node->args_.assign(stack->begin() + first, stack->end());
        node->input_version_ = input._version();
      }
      node->computed_grad_ = arg(L.compute_grad).toBool();
      node->computed_target_grad_ = L.compute_target_grad >= 0 && arg(L.compute_target_grad).toBool();
      node->target_dtype_ = target.scalar_type();
    }
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    }
    if (!node) return;
    const size_t out = stack->size() - L.num_returns;
    Tensor loss = (*stack)[out].toTensor();
    node->grad_ = (*stack)[out + 1].toTensor();
    if (L.target_grad_out >= 0) node->target_grad_ = (*stack)[out + L.target_grad_out].toTensor();
    torch::autograd::set_history(loss, NodePtr(node));
  }

 private:
  std::once_flag bound_;
  LossLayout layout_;
};

// The in-place ops (cross_entropy_, focal_loss_) leave d(loss)/d(input) in
// the input's memory: the input is consumed, as inplace_grad=True documents.
// The node holds that memory and, in backward, scales it in place and hands
// it over as the input's gradient (a leaf's AccumulateGrad adopts it), once.
// The input keeps its own history: it is not rebased onto this node.
class InplaceLossBackward final : public torch::autograd::Node {
 public:
  explicit InplaceLossBackward(std::string name) : name_(std::move(name)) {}

  std::string name() const override { return "samplewt_ops_" + name_ + "Backward"; }

  variable_list apply(variable_list&& grads) override {
    // name_ is the `_` variant's
    check_not_double_backward(name_, "samplewt_ops.reference." + name_.substr(0, name_.size() - 1));
    variable_list out(1);
    TORCH_CHECK(!consumed_, "samplewt_ops: a loss computed with inplace_grad=True can be "
                "backpropagated only once (its gradient lives in the logits' memory)");
    consumed_ = true;
    Tensor grad = std::move(grad_);
    grad_.reset();
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined() || !should_compute_output(0)) return out;
    scale_in_place(grad, grad_loss, true);
    // A new alias of the memory that nothing else holds: stealable.
    out[0] = grad.detach();
    return out;
  }

  void release_variables() override { grad_.reset(); }

  Tensor grad_;  // the input, after the op: d(loss)/d(input)
  bool consumed_ = false;

 private:
  std::string name_;
};

class InplaceLossAutograd final : public c10::OperatorKernel {
 public:
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks,
                  torch::jit::Stack* stack) {
    std::call_once(bound_, [&] { bind(op.schema()); });
    const size_t first = stack->size() - num_args_;
    const Tensor input = (*stack)[first + input_].toTensor();
    const bool need = torch::autograd::GradMode::is_enabled() && input.requires_grad();
    decltype(make_node<InplaceLossBackward>(std::string())) node;
    if (need) {
      for (size_t i = 0; i < num_args_; ++i) {
        const c10::IValue& v = (*stack)[first + i];
        TORCH_CHECK(static_cast<int>(i) == input_ || !v.isTensor() || !v.toTensor().requires_grad(),
                    "samplewt_ops.", name_, ": the in-place op differentiates input only, but ",
                    op.schema().arguments()[i].name(), " requires grad; samplewt_ops.",
                    name_.substr(0, name_.size() - 1), " without inplace_grad differentiates it");
      }
      node = make_node<InplaceLossBackward>(name_);
      node->set_next_edges(torch::autograd::collect_next_edges(input));
    }
    {
      at::AutoDispatchBelowAutograd guard;
      op.redispatchBoxed(ks & c10::after_autograd_keyset, stack);
    }
    if (!node) return;
    node->grad_ = input;
    Tensor loss = (*stack)[stack->size() - num_returns_].toTensor();
    torch::autograd::set_history(loss, NodePtr(node));
  }

 private:
  void bind(const c10::FunctionSchema& schema) {
    name_ = short_name(schema);
    num_args_ = schema.arguments().size();
    num_returns_ = schema.returns().size();
    for (size_t i = 0; i < num_args_; ++i) {
      if (schema.arguments()[i].name() == "input") input_ = static_cast<int>(i);
    }
    TORCH_CHECK(input_ >= 0 && num_returns_ >= 1 && schema.returns()[0].name() == "loss",
                "samplewt_ops: ", name_, "'s schema does not have the in-place loss layout");
  }

  std::once_flag bound_;
  std::string name_;
  size_t num_args_ = 0, num_returns_ = 0;
  int input_ = -1;
};

// Every loss op: those with a compute_grad argument, and the in-place ones.
TORCH_LIBRARY_IMPL(samplewt_ops, Autograd, m) {
  for (const char* name : kLossOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunctor(std::make_unique<LossAutograd>()));
  }
  for (const char* name : kInplaceLossOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunctor(std::make_unique<InplaceLossAutograd>()));
  }
}

}  // namespace
}  // namespace samplewt
