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

namespace detail {
// torch >= 2.10 (or so) lets a tensor's Python wrapper keep a reference to it
// after Python dropped the wrapper; its slot then says the reference is the
// only one. Earlier versions have no such reference (nor the method).
template <class Slot>
auto python_holds_the_only_extra_ref(const Slot* slot, int) -> decltype(slot->has_unique_reference()) {
  return slot->has_unique_reference();
}
template <class Slot>
bool python_holds_the_only_extra_ref(const Slot*, long) {
  return false;
}
}  // namespace detail

// Whether the caller's reference is the only one to t and its memory: then t
// may be changed in place without anyone seeing it (as AccumulateGrad steals
// a gradient).
inline bool sole_reference(const at::Tensor& t) {
  if (!t.defined() || at::isTensorSubclassLike(t) || t.storage().use_count() != 1) return false;
  const size_t n = t.use_count();
  return n == 1 ||
         (n == 2 && detail::python_holds_the_only_extra_ref(t.unsafeGetTensorImpl()->pyobj_slot(), 0));
}

}  // namespace samplewt
