// What the C++ autograd kernels of the losses (autograd.cpp, and the fused
// linear losses' linear_loss_autograd.cpp) share: making a node, and telling
// a grad_output of exactly 1, with which a saved gradient is final.
#pragma once

#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/graph_task.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

// A grad_output that backward may read and use as plain eager data: no
// double backward through it, no tensor subclass, no dispatch mode tracing.
inline bool plain_grad_output(const at::Tensor& g) {
  return !g.requires_grad() && !at::isTensorSubclassLike(g) &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0;
}

// create_graph=True (double backward) asks for a gradient that is itself
// differentiable; the kernels' saved gradient is not, and handing it over
// would drop the second-order terms without a word. Traced backwards (a
// dispatch mode: torch.compile's fake tensors) are left alone.
// `reference` names what computes the loss with plain torch ops.
inline void check_not_double_backward(const std::string& name, const std::string& reference) {
  TORCH_CHECK(!torch::autograd::GradMode::is_enabled() ||
                  c10::impl::TorchDispatchModeTLS::stack_len() != 0,
              "samplewt_ops.", name, ": the gradient of this loss is not differentiable "
              "(backward with create_graph=True); for double backward compute it with ",
              reference, " (plain torch ops), or inside a torch.func transform, which runs "
              "the reference");
}

// With grad_output a plain CPU scalar 1 the saved gradient is final. Checked
// only where reading it costs no device sync and traces nothing.
inline bool is_one(const at::Tensor& g) {
  return g.dim() == 0 && g.is_cpu() && plain_grad_output(g) && g.item<double>() == 1.0;
}

// This backward is the last use of the node's saved gradients (the graph is
// freed after it) and scaling them in place is plain eager work.
inline bool last_backward(const at::Tensor& grad_output) {
  return !torch::autograd::get_current_graph_task_keep_graph() && plain_grad_output(grad_output);
}

#ifdef SAMPLEWT_WITH_CUDA
namespace cuda {
// grad *= grad_loss in place by a CUDA kernel that skips a grad_loss of 1 on
// the device (ops_cuda.cu); false where grad is not a CUDA tensor of a layout
// it takes.
bool scale_grad_(at::Tensor& grad, const at::Tensor& grad_loss, bool rows);
}  // namespace cuda
#endif

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

// A row op's unreduced grad_output (one value per row) as a factor of its
// (rows, C) or (N, C, d1..dk) gradient.
inline at::Tensor per_row_factor(const at::Tensor& grad_loss, const at::Tensor& grad) {
  if (grad.dim() <= 2) return grad_loss.unsqueeze(-1);
  std::vector<int64_t> shape = grad.sizes().vec();
  shape[1] = 1;
  return grad_loss.reshape(shape);
}

// grad *= grad_loss in place: grad_loss 0-dim, or with rows one value per
// row of grad. A plain CUDA grad is scaled by our kernel (ops_cuda.cu), which
// reads grad_loss on the device and leaves grad alone when it is 1; ATen's
// mul would take a strided pass over all of grad. Elsewhere ATen scales it.
inline at::Tensor& scale_in_place(at::Tensor& grad, const at::Tensor& grad_loss, bool rows) {
#ifdef SAMPLEWT_WITH_CUDA
  if (grad.is_cuda() && !at::isTensorSubclassLike(grad) && plain_grad_output(grad_loss) &&
      cuda::scale_grad_(grad, grad_loss, rows)) {
    return grad;
  }
#endif
  if (grad_loss.dim() == 0) {
    if (!is_one(grad_loss)) grad.mul_(grad_loss.to(grad.scalar_type()));
    return grad;
  }
  const at::Tensor g = grad_loss.to(grad.scalar_type());
  return rows ? grad.mul_(per_row_factor(g, grad)) : grad.mul_(g);
}

}  // namespace samplewt
