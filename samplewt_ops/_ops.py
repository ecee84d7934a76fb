"""The compiled ops from Python: the keyword call and the fake kernels.

Everything here is built from the op spec (``_spec.SPECS``) and binds
arguments by name, in the order the compiled schema gives
(``_spec.SCHEMA_ARGS``), so no argument position is written down in Python.

Every functional op returns (loss, grad, stats), and an element-wise one also
target_grad: the forward kernel has already written d(loss)/d(input) (and,
when asked, d(loss)/d(target)), so backward, registered in C++
(csrc/autograd.cpp), only scales those saved gradients by grad_output. The
in-place `_` variants write the gradient into the logits themselves; their
C++ autograd hands that memory over as the gradient (the eager fast path), and
the checked path, which torch.compile traces, wraps them in InplaceGradLoss.
"""
from __future__ import annotations

import math

import torch

from . import _loader
from ._spec import SCHEMA_ARGS, SCHEMA_DEFAULTS, SPECS, OpSpec
from ._validation import tracing


def call(name: str, *, inplace: bool = False, **kwargs):
    """Runs the op `name` (its `_` variant if `inplace`) with every argument
    given by keyword (those with a schema default may be left out)."""
    qualname = name + "_" if inplace else name
    names = SCHEMA_ARGS[qualname]
    if len(kwargs) != len(names) or not kwargs.keys() >= set(names):
        kwargs = {**SCHEMA_DEFAULTS[qualname], **kwargs}
    if len(kwargs) != len(names) or not kwargs.keys() >= set(names):
        missing = [n for n in names if n not in kwargs]
        unexpected = [n for n in kwargs if n not in names]
        raise TypeError(f"samplewt_ops.{qualname}: missing arguments {missing}, "
                        f"unexpected arguments {unexpected}")
    return getattr(torch.ops.samplewt_ops, qualname)(*[kwargs[n] for n in names])


# ---------------------------------------------------------------------------
# Fake kernels: the checks of csrc/op_checks.h that need no data, and the
# output shapes.


def _check_fake_args(spec: OpSpec, a: dict) -> int:
    """Checks the arguments of a loss op; returns its number of samples."""
    x, t = a["input"], a["target"]
    torch._check_value(a["reduction"] in (0, 1, 2),
                       lambda: f"samplewt_ops: reduction must be 0, 1 or 2, got {a['reduction']}")
    torch._check_type(x.dtype.is_floating_point,
                      lambda: f"samplewt_ops: input must be floating point, got {x.dtype}")
    if spec.rows:
        # (rows, C), or (N, C, d1..dk): N * d1 * .. * dk rows (csrc/op_checks.h).
        torch._check_value(x.dim() >= 2, lambda: f"samplewt_ops: input must be (rows, classes) or "
                           f"(N, classes, d1, ..., dk), got {x.shape}")
        torch._check_value(x.dim() == 2 or not a.get("policy"), lambda: f"samplewt_ops: with a table, "
                           f"input must be 2-D (rows, classes), got {x.shape}")
        c = x.shape[1]
        index_shape = (x.shape[0],) + tuple(x.shape[2:])
        rows = math.prod(index_shape)
        if t.dtype.is_floating_point:
            torch._check_type(spec.prob_targets,
                              lambda: f"samplewt_ops: {spec.name} target must hold class indices")
            torch._check_value(t.shape == x.shape, lambda: f"samplewt_ops: target must have "
                               f"input's shape {x.shape}, got {t.shape}")
        else:
            torch._check_type(t.dtype in (torch.int64, torch.int32),
                              lambda: f"samplewt_ops: target must hold class indices, got {t.dtype}")
            torch._check_value(tuple(t.shape) == index_shape, lambda: f"samplewt_ops: target must "
                               f"have shape {index_shape}, got {t.shape}")
        for name in spec.tensors:
            w = a[name]
            torch._check_value(w is None or w.shape == (c,), lambda: f"samplewt_ops: {name} "
                               f"must have shape ({c},), got {w.shape}")
        samples = rows
    else:
        torch._check_type(t.dtype.is_floating_point,
                          lambda: f"samplewt_ops: target must be floating point, got {t.dtype}")
        torch._check_value(t.shape == x.shape, lambda: f"samplewt_ops: target must have "
                           f"input's shape {x.shape}, got {t.shape}")
        for name in spec.tensors:
            w = a[name]
            torch._check_value(w is None or _broadcasts(w.shape, x.shape), lambda: f"samplewt_ops: "
                               f"{name} of shape {w.shape} must broadcast to {x.shape}")
        samples = x.shape[0] if x.dim() > 0 else 1
    sw = a["sample_weight"]
    if sw is not None:
        torch._check_type(sw.dtype.is_floating_point,
                          lambda: f"samplewt_ops: sample_weight must be floating point, got {sw.dtype}")
        torch._check_value(sw.shape == (samples,), lambda: f"samplewt_ops: sample_weight must "
                           f"have shape ({samples},), got {sw.shape}")
    return samples


def _broadcasts(shape, to) -> bool:
    return len(shape) <= len(to) and all(s == 1 or s == d for s, d in zip(reversed(shape), reversed(to)))


def _fake(spec: OpSpec, inplace: bool):
    qualname = spec.name + "_" if inplace else spec.name
    names = SCHEMA_ARGS[qualname]

    def fake(*args, **kwargs):
        # torch leaves out trailing arguments that equal their defaults.
        a = {**SCHEMA_DEFAULTS[qualname], **dict(zip(names, args)), **kwargs}
        x = a["input"]
        samples = _check_fake_args(spec, a)
        if a["reduction"] == 0:
            loss = x.new_empty((samples,) if spec.rows else x.shape)
        else:
            loss = x.new_empty(())
        stats = x.new_empty((samples, 3) if a["compute_stats"] else (0,), dtype=torch.float32)
        if inplace:
            return loss, stats
        grad = x.new_empty(x.shape) if a["compute_grad"] else x.new_empty((0,))
        if spec.rows:
            return loss, grad, stats
        target_grad = x.new_empty(x.shape) if a["compute_target_grad"] else x.new_empty((0,))
        return loss, grad, stats, target_grad

    return fake


# ---------------------------------------------------------------------------
# Autograd


def _is_one(grad_loss: torch.Tensor) -> bool:
    # The usual grad_output of a mean/sum loss is 1: then the saved gradient
    # is final and needs no pass over it. Only checked where it costs no
    # device sync and no data-dependent trace.
    return (
        grad_loss.dim() == 0
        and grad_loss.device.type == "cpu"
        and not grad_loss.requires_grad
        and not tracing(grad_loss)
        and grad_loss.item() == 1.0
    )


def _register(spec: OpSpec) -> None:
    # Autograd is registered in C++ (csrc/autograd.cpp); the fake kernels here.
    torch.library.register_fake(f"samplewt_ops::{spec.name}")(_fake(spec, False))
    if spec.inplace:
        torch.library.register_fake(f"samplewt_ops::{spec.name}_")(_fake(spec, True))


class InplaceGradLoss(torch.autograd.Function):
    """Runs a `_` op, which leaves d(loss)/d(logits) in the logits' memory.

    Backward scales that buffer in place and returns it, so forward plus
    backward allocates no N x C buffer. The logits are consumed, and backward
    can run only once per forward. `args` holds the op's other arguments, by
    name.
    """

    @staticmethod
    def forward(ctx, input, name, args):
        loss, stats = call(name, inplace=True, input=input, **args)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input)
        ctx.consumed = False
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
        # A new alias of the logits' memory that nothing else holds: a leaf's
        # AccumulateGrad adopts it instead of copying N x C values.
        return grad.detach(), None, None


if _loader.COMPILED:
    for _spec_entry in SPECS.values():
        _register(_spec_entry)

    @torch.library.register_fake("samplewt_ops::table_zeros")
    def _table_zeros_fake(size, dtype):
        return torch.empty(size, dtype=dtype)
