// What the C++ autograd kernels of the losses (autograd.cpp, and the fused
// linear losses' linear_loss_autograd.cpp) share: making a node, and telling
// a grad_output of exactly 1, with which a saved gradient is final.
#pragma once

#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>

#include <memory>
#include <type_traits>
#include <utility>

namespace samplewt {

// torch 2.13 holds autograd nodes in c10::intrusive_ptr, earlier versions in
// std::shared_ptr.
using NodePtr = decltype(torch::autograd::Edge{}.function);

template <class T, class... Args>
auto make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

// With grad_output a plain CPU scalar 1 the saved gradient is final. Checked
// only where reading it costs no device sync and traces nothing.
inline bool is_one(const at::Tensor& g) {
  return g.dim() == 0 && g.is_cpu() && !g.requires_grad() && !at::isTensorSubclassLike(g) &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0 && g.item<double>() == 1.0;
}

}  // namespace samplewt
