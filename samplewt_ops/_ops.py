"""Fake kernels and autograd for the compiled ops (schemas live in csrc/ops.cpp).

Every functional op returns (loss, grad, stats): the forward kernel has
already written d(loss)/d(input), so backward only scales that saved gradient
by grad_output. The in-place `_` variants write the gradient into the logits
themselves and are wrapped by InplaceGradLoss.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

from . import _loader

ROW_OPS = ("cross_entropy", "focal_loss")
ELEM_OPS = (
    "sigmoid_focal_loss",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "huber_loss",
)
# Position of `reduction`, `compute_grad` and `compute_stats` in each schema.
_SCHEMA_TAIL = {
    "cross_entropy": 6,
    "focal_loss": 6,
    "sigmoid_focal_loss": 5,
    "binary_cross_entropy_with_logits": 5,
    "mse_loss": 4,
    "l1_loss": 4,
    "huber_loss": 5,
}
_NUM_ARGS = {name: pos + 3 for name, pos in _SCHEMA_TAIL.items()}


def _tracing(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or is_fake(t):
        return True
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None


def _is_one(grad_loss: torch.Tensor) -> bool:
    # The usual grad_output of a mean/sum loss is 1: then the saved gradient
    # is final and needs no pass over it. Only checked where it costs no
    # device sync and no data-dependent trace.
    return (
        grad_loss.dim() == 0
        and grad_loss.device.type == "cpu"
        and not grad_loss.requires_grad
        and not _tracing(grad_loss)
        and grad_loss.item() == 1.0
    )


def _scale(grad: torch.Tensor, grad_loss: torch.Tensor, row_op: bool) -> torch.Tensor:
    if grad_loss.dim() == 0:
        return grad if _is_one(grad_loss) else grad * grad_loss.to(grad.dtype)
    if row_op:
        return grad * grad_loss.to(grad.dtype).unsqueeze(-1)
    return grad * grad_loss.to(grad.dtype)


def _register(name: str) -> None:
    qualname = f"samplewt_ops::{name}"
    tail = _SCHEMA_TAIL[name]
    row_op = name in ROW_OPS

    def fake(input, *args):
        reduction, compute_grad, compute_stats = args[tail - 1 : tail + 2]
        samples = input.shape[0] if input.dim() > 0 else 1
        if reduction == 0:
            loss = input.new_empty((input.shape[0],) if row_op else input.shape)
        else:
            loss = input.new_empty(())
        grad = input.new_empty(input.shape) if compute_grad else input.new_empty((0,))
        stats = input.new_empty((samples, 3) if compute_stats else (0,), dtype=torch.float32)
        return loss, grad, stats

    def setup_context(ctx, inputs, output):
        _, grad, stats = output
        ctx.mark_non_differentiable(grad, stats)
        # Otherwise autograd hands backward an N x C tensor of zeros as the
        # gradient of the unused `grad` output: a whole extra buffer.
        ctx.set_materialize_grads(False)
        # A leaf's AccumulateGrad adopts a gradient nobody else holds, and
        # copies it otherwise. So for leaves the buffer is held on ctx, where
        # backward can hand it over; the inputs are kept (by reference) so
        # that a second backward (retain_graph) can recompute it.
        ctx.handover = inputs[0].is_leaf and not _tracing(inputs[0])
        if ctx.handover:
            ctx.grad = grad
            ctx.inputs = inputs
            ctx.version = inputs[0]._version
        else:
            ctx.save_for_backward(grad)

    def backward(ctx, grad_loss, _grad_grad, _grad_stats):
        if ctx.handover:
            grad = ctx.grad
            if grad is None:
                grad = _recompute_grad(ctx)
            if grad_loss is not None and _is_one(grad_loss):
                ctx.grad = None
        else:
            (grad,) = ctx.saved_tensors
        grad_input = None
        if grad_loss is not None and ctx.needs_input_grad[0]:
            grad_input = _scale(grad, grad_loss, row_op)
        return (grad_input,) + (None,) * (_NUM_ARGS[name] - 1)

    def _recompute_grad(ctx):
        if ctx.inputs[0]._version != ctx.version:
            raise RuntimeError(
                f"samplewt_ops.{name}: input was modified in place after the forward pass, "
                "so its gradient cannot be recomputed for a second backward"
            )
        args = list(ctx.inputs)  # input first, so reduction sits at `tail`
        args[tail + 1] = True  # compute_grad
        args[tail + 2] = False  # compute_stats
        with torch.no_grad():
            return getattr(torch.ops.samplewt_ops, name)(*args)[1]

    torch.library.register_fake(qualname)(fake)
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def _register_inplace(name: str) -> None:
    tail = _SCHEMA_TAIL[name]

    def fake(input, *args):
        reduction, compute_stats = args[tail - 1], args[tail]
        loss = input.new_empty((input.shape[0],) if reduction == 0 else ())
        stats = input.new_empty((input.shape[0], 3) if compute_stats else (0,), dtype=torch.float32)
        return loss, stats

    torch.library.register_fake(f"samplewt_ops::{name}_")(fake)


class InplaceGradLoss(torch.autograd.Function):
    """Runs a `_` op, which leaves d(loss)/d(logits) in the logits' memory.

    Backward scales that buffer in place and returns it, so forward plus
    backward allocates no N x C buffer. The logits are consumed, and backward
    can run only once per forward.
    """

    @staticmethod
    def forward(ctx, input, op, *args):
        loss, stats = op(input, *args)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input)
        ctx.consumed = False
        ctx.num_args = len(args)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.consumed:
            raise RuntimeError(
                "samplewt_ops: a loss computed with inplace_grad=True can be "
                "backpropagated only once (its gradient lives in the logits' memory)"
            )
        ctx.consumed = True
        (grad,) = ctx.saved_tensors
        if grad_loss.dim() > 0:
            grad.mul_(grad_loss.to(grad.dtype).unsqueeze(-1))
        elif not _is_one(grad_loss):
            grad.mul_(grad_loss.to(grad.dtype))
        return (grad, None) + (None,) * ctx.num_args


if _loader.COMPILED:
    for _name in ROW_OPS + ELEM_OPS:
        _register(_name)
    for _name in ROW_OPS:
        _register_inplace(_name)
