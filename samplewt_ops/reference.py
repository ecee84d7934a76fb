"""Pure-PyTorch reference implementation of every samplewt_ops loss.

This module is two things at once:

* the **specification** the compiled kernels are tested against, written
  directly from each loss's formula with plain torch operations, and
* the **fallback** that ``samplewt_ops`` uses when the compiled extension is
  missing (or ``SAMPLEWT_FORCE_REFERENCE=1``).

Everything here is differentiable with ordinary autograd, with respect to the
input *and* to every weight tensor (the compiled ops differentiate with
respect to ``input`` only).

Conventions shared by all losses
--------------------------------
* ``sample_weight=None`` reproduces the matching ``torch.nn.functional`` (or
  torchvision) function exactly.
* ``sample_weight`` has shape ``(N,)``: one non-negative, finite weight per
  sample along ``input``'s first dimension (for an unbatched cross-entropy
  input ``(C,)`` or a 0-dim element-wise input: shape ``()`` or ``(1,)``).  It
  multiplies each sample's loss.  ``reduction="mean"`` divides by the sum of
  what PyTorch divides by, each sample's share multiplied by its sample
  weight, so ``sample_weight=ones`` equals the unweighted PyTorch result.
* Half and bfloat16 inputs are computed in float32, float64 inputs in
  float64, everything else in float32; the result is cast back to the input
  dtype.

Validation
----------
The ``check_*`` functions at the top are public and reused by
``samplewt_ops.functional``.  Structural checks (types, shapes, devices,
scalar arguments) always run and never synchronise with a device.  Checks
that must read tensor *values* (target class range, sample_weight sign and
finiteness) run on CPU tensors always; on other devices they run only when
``SAMPLEWT_VALIDATE=1`` is set or :func:`set_validation` turned them on, since
they would force a device synchronisation.  They are also skipped while
``torch.compile`` traces and for fake/meta tensors.  When a value check is
skipped, an out-of-range target class makes that sample's loss NaN in this
reference instead of reading out of bounds.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    # losses
    "cross_entropy",
    "focal_loss",
    "sigmoid_focal_loss",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "huber_loss",
    # validation helpers
    "REDUCTIONS",
    "FLOAT_DTYPES",
    "set_validation",
    "validation_enabled",
    "acc_dtype",
    "check_reduction",
    "check_tensor",
    "check_input",
    "check_same_device",
    "num_classes",
    "check_class_input",
    "is_prob_target",
    "check_index_target",
    "check_prob_target",
    "check_class_weight",
    "check_sample_weight",
    "check_label_smoothing",
    "check_ignore_index",
    "check_gamma",
    "check_delta",
    "check_focal_alpha",
    "check_sigmoid_alpha",
    "check_elementwise_target",
    "check_elementwise_weight",
]

REDUCTIONS = ("none", "mean", "sum")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------
# Validation switches

_validation_override: Optional[bool] = None


def set_validation(enabled: Optional[bool]) -> None:
    """Turn value checks on accelerator tensors on (True) or off (False).

    ``None`` restores the default, which follows the ``SAMPLEWT_VALIDATE``
    environment variable (``1`` = on).  CPU tensors are always validated.
    """
    global _validation_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    _validation_override = enabled


def _tracing() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - very old torch
        return False


def _is_fake(t: Tensor) -> bool:
    if t.device.type == "meta":
        return True
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover
        return False
    return bool(is_fake(t))


def validation_enabled(tensor: Optional[Tensor] = None) -> bool:
    """Whether data-dependent (value) checks run for ``tensor``.

    True for CPU tensors, False while torch.compile traces or for fake/meta
    tensors; for other devices it follows :func:`set_validation`, then the
    ``SAMPLEWT_VALIDATE`` environment variable (off by default).
    """
    if _tracing():
        return False
    if tensor is not None:
        if _is_fake(tensor):
            return False
        if tensor.device.type == "cpu":
            return True
    if _validation_override is not None:
        return _validation_override
    return os.environ.get("SAMPLEWT_VALIDATE", "0").strip().lower() in ("1", "true", "yes", "on")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


# ---------------------------------------------------------------------------
# Structural checks (always run, never synchronise)


def check_reduction(reduction) -> str:
    """Return ``reduction`` if it is "none", "mean" or "sum"; else ValueError."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of 'none', 'mean' or 'sum', got {reduction!r}"
        )
    return reduction


def check_tensor(value, name: str, *, floating: Optional[bool] = None,
                 allow_none: bool = False) -> Optional[Tensor]:
    """Check that ``value`` is a tensor (or None when ``allow_none``).

    ``floating=True`` requires a float16/bfloat16/float32/float64 dtype,
    ``floating=False`` an integer (non-bool) dtype.  Raises TypeError naming
    ``name``.
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a torch.Tensor, got None")
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating is True and value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, float16 or "
            f"bfloat16), got dtype {value.dtype}"
        )
    if floating is False and (value.dtype.is_floating_point or value.dtype.is_complex
                              or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
    return value


def check_input(input, name: str = "input", *, min_dim: int = 0) -> Tensor:
    """Check the logits/prediction tensor: floating dtype, at least ``min_dim`` dims."""
    check_tensor(input, name, floating=True)
    if input.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {_shape(input)}"
        )
    return input


def check_same_device(**tensors) -> Optional[torch.device]:
    """Check that all given (non-None) tensors live on one device.

    Call as ``check_same_device(input=input, target=target, weight=weight)``;
    the keyword names appear in the error.  Returns the common device.
    Raises RuntimeError naming the two arguments that differ.
    """
    first_name, first_dev = None, None
    for name, t in tensors.items():
        if t is None or not isinstance(t, Tensor):
            continue
        if first_dev is None:
            first_name, first_dev = name, t.device
        elif t.device != first_dev:
            raise RuntimeError(
                f"expected all tensors on the same device, but {first_name} is on "
                f"{first_dev} and {name} is on {t.device}"
            )
    return first_dev


def num_classes(input: Tensor) -> int:
    """Number of classes of a softmax input: dim 0 of (C,), else dim 1."""
    return int(input.shape[0] if input.dim() == 1 else input.shape[1])


def check_class_input(input, name: str = "input") -> int:
    """Softmax input: floating, at least 1-D, at least one class; returns C."""
    check_input(input, name, min_dim=1)
    c = num_classes(input)
    if c < 1:
        raise ValueError(
            f"{name} must have at least one class (class dimension "
            f"{0 if input.dim() == 1 else 1}), got shape {_shape(input)}"
        )
    return c


def is_prob_target(input: Tensor, target: Tensor) -> bool:
    """True when ``target`` holds class probabilities, i.e. has input's shape.

    This is PyTorch's rule; the dtype is checked separately, so an integer
    target with input's shape is reported as a wrong dtype, not a wrong shape.
    """
    return _shape(target) == _shape(input)


def _index_target_shape(input: Tensor) -> tuple:
    if input.dim() == 1:
        return ()
    return (input.shape[0],) + tuple(input.shape[2:])


def check_index_target(target, input: Tensor, *, ignore_index: int = -100,
                       name: str = "target", input_name: str = "input",
                       check_values: bool = True) -> Tensor:
    """Check class-index targets for a softmax ``input`` of shape (N,C,d..) or (C,).

    Structure: an integer (non-bool) tensor of shape (N,d..) (or () for an
    unbatched (C,) input); a floating target raises TypeError.  Values (when
    :func:`validation_enabled`): each class in [0, C) or equal to
    ``ignore_index``, else IndexError.  Any integer dtype is accepted; it is
    converted to int64 by the losses.  ``check_values=False`` leaves the
    values to a caller that checks them itself (the compiled CPU kernels do).
    """
    check_tensor(target, name)
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise TypeError(
            f"{name} must hold integer class indices of shape "
            f"{_index_target_shape(input)} here, got a {target.dtype} tensor of shape "
            f"{_shape(target)} (class-probability targets must have {input_name}'s "
            f"shape {_shape(input)})"
        )
    if target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype torch.bool")
    expected = _index_target_shape(input)
    if _shape(target) != expected:
        raise ValueError(
            f"{name} has shape {_shape(target)} but {input_name} of shape "
            f"{_shape(input)} needs class-index targets of shape {expected}"
        )
    if check_values and target.numel() > 0 and validation_enabled(target):
        c = num_classes(input)
        t = target.detach()
        bad = (t != ignore_index) & ((t < 0) | (t >= c))
        if bool(bad.any()):
            value = int(t[bad].reshape(-1)[0])
            raise IndexError(
                f"{name} contains class index {value}, out of range [0, {c}) and not "
                f"ignore_index={ignore_index}"
            )
    return target


def check_prob_target(target, input: Tensor, *, name: str = "target",
                      input_name: str = "input") -> Tensor:
    """Check class-probability targets: floating, same shape as ``input``."""
    check_tensor(target, name)
    if _shape(target) != _shape(input):
        raise ValueError(
            f"{name} has shape {_shape(target)}; class-probability targets must have "
            f"{input_name}'s shape {_shape(input)}"
        )
    if target.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has {input_name}'s shape, so it is read as class probabilities and "
            f"must be floating point, got dtype {target.dtype} (class-index targets "
            f"have shape {_index_target_shape(input)})"
        )
    return target


def check_class_weight(weight, n_classes: int, name: str = "weight") -> Optional[Tensor]:
    """Check an optional per-class weight: floating tensor of shape (C,)."""
    if weight is None:
        return None
    check_tensor(weight, name, floating=True)
    if _shape(weight) != (n_classes,):
        raise ValueError(
            f"{name} must have shape ({n_classes},), one value per class, got "
            f"{_shape(weight)}"
        )
    return weight


def check_sample_weight(sample_weight, input: Tensor, *, unbatched: Optional[bool] = None,
                        name: str = "sample_weight",
                        input_name: str = "input",
                        check_values: bool = True) -> Optional[Tensor]:
    """Check ``sample_weight`` against ``input`` and return it as a 1-D tensor.

    Expected shape: ``(input.shape[0],)``; for an input without a batch
    dimension (``unbatched=True``, default: ``input.dim() == 0``) shape ``()`` or
    ``(1,)``, returned as ``(1,)``.  Must be floating point.  Values (when
    :func:`validation_enabled`): finite and non-negative, else ValueError.
    Returns None when ``sample_weight`` is None.
    """
    if sample_weight is None:
        return None
    check_tensor(sample_weight, name, floating=True)
    if unbatched is None:
        unbatched = input.dim() == 0
    if unbatched:
        if _shape(sample_weight) not in ((), (1,)):
            raise ValueError(
                f"{name} must have shape () or (1,) for an unbatched {input_name} of "
                f"shape {_shape(input)}, got {_shape(sample_weight)}"
            )
        sample_weight = sample_weight.reshape(1)
    else:
        n = int(input.shape[0])
        if _shape(sample_weight) != (n,):
            raise ValueError(
                f"{name} must have shape ({n},), one value per sample along "
                f"{input_name}'s first dimension (shape {_shape(input)}), got "
                f"{_shape(sample_weight)}"
            )
    if check_values and sample_weight.numel() > 0 and validation_enabled(sample_weight):
        w = sample_weight.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{name} must be finite, but it contains NaN or infinity")
        if bool((w < 0).any()):
            raise ValueError(
                f"{name} must be non-negative, but it contains {float(w.min())}"
            )
    return sample_weight


_SYM_NUMBERS = tuple(t for t in (getattr(torch, "SymFloat", None), getattr(torch, "SymInt", None)) if t)


def _check_real(value, name: str) -> float:
    """A real Python number (not bool, not NaN), returned as float.

    Written with comparisons only (no math.isnan) so that it also traces when
    torch.compile(dynamic=True) turns the number into a symbolic float.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real,) + _SYM_NUMBERS):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    return value


def _is_inf(value) -> bool:
    return value == math.inf or value == -math.inf


def check_label_smoothing(label_smoothing) -> float:
    """label_smoothing must be a real number in [0, 1]."""
    value = _check_real(label_smoothing, "label_smoothing")
    if not (0.0 <= value and value <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")
    return value


def check_ignore_index(ignore_index) -> int:
    """ignore_index must be a Python int (not bool)."""
    sym_int = getattr(torch, "SymInt", None)
    if sym_int is not None and isinstance(ignore_index, sym_int):
        return ignore_index
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return int(ignore_index)


def check_gamma(gamma) -> float:
    """gamma (focusing parameter) must be a finite real number >= 0."""
    value = _check_real(gamma, "gamma")
    if not value >= 0.0 or _is_inf(value):
        raise ValueError(f"gamma must be finite and >= 0, got {value}")
    return value


def check_delta(delta) -> float:
    """delta (Huber threshold) must be a finite real number > 0."""
    value = _check_real(delta, "delta")
    if not value > 0.0 or _is_inf(value):
        raise ValueError(f"delta must be finite and > 0, got {value}")
    return value


def check_focal_alpha(alpha, n_classes: int, name: str = "alpha"):
    """Softmax focal alpha: None, a finite real number, or a float tensor (C,)."""
    if alpha is None:
        return None
    if isinstance(alpha, Tensor):
        return check_class_weight(alpha, n_classes, name)
    value = _check_real(alpha, name)
    if _is_inf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_sigmoid_alpha(alpha, name: str = "alpha") -> Optional[float]:
    """Sigmoid focal alpha: a real number (< 0 disables it) or None (disabled)."""
    if alpha is None:
        return None
    value = _check_real(alpha, name)
    if _is_inf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_elementwise_target(target, input: Tensor, *, name: str = "target",
                             input_name: str = "input") -> Tensor:
    """Element-wise targets: floating point with exactly ``input``'s shape."""
    check_tensor(target, name)
    if target.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {target.dtype}"
        )
    if _shape(target) != _shape(input):
        raise ValueError(
            f"{name} must have {input_name}'s shape {_shape(input)}, got {_shape(target)}"
        )
    return target


def check_elementwise_weight(weight, input: Tensor, *, name: str = "weight",
                             broadcast: bool = False,
                             input_name: str = "input") -> Optional[Tensor]:
    """Element-wise ``weight``/``pos_weight``: floating point, and either exactly
    ``input``'s shape or (``broadcast=True``) broadcastable to it without
    changing ``input``'s shape."""
    if weight is None:
        return None
    check_tensor(weight, name, floating=True)
    if broadcast:
        ok = weight.dim() <= input.dim()
        if ok:
            for ws, xs in zip(reversed(weight.shape), reversed(input.shape)):
                if ws != xs and ws != 1:
                    ok = False
                    break
        if not ok:
            raise ValueError(
                f"{name} of shape {_shape(weight)} cannot be broadcast to {input_name}'s "
                f"shape {_shape(input)}"
            )
    elif _shape(weight) != _shape(input):
        raise ValueError(
            f"{name} must have {input_name}'s shape {_shape(input)}, got {_shape(weight)}"
        )
    return weight


# ---------------------------------------------------------------------------
# Shared pieces of the losses


def _unit_pow(b: Tensor, gamma: float) -> Tensor:
    """b ** gamma for b in [0, 1] with a finite gradient at b == 0.

    For 0 < gamma < 1 the derivative of b**gamma is infinite at 0; wherever
    that happens in the focal losses the other factor vanishes and the true
    gradient is 0, which the double ``where`` gives instead of NaN.
    """
    if gamma == 0.0:
        return torch.ones_like(b)
    if gamma >= 1.0:
        return b.pow(gamma)
    zero = b == 0
    safe = torch.where(zero, torch.ones_like(b), b)
    return torch.where(zero, torch.zeros_like(b), safe.pow(gamma))


def _per_sample_view(w: Tensor, ndim: int) -> Tensor:
    """(N,) -> (N, 1, ..., 1) with ``ndim`` dims (a 0-dim result for ndim 0)."""
    if ndim == 0:
        return w.reshape(())
    return w.reshape((w.shape[0],) + (1,) * (ndim - 1))


def _reduce(loss: Tensor, count: Optional[Tensor], sample_weight: Optional[Tensor],
            reduction: str, per_sample_count: Optional[float] = None) -> Tensor:
    """Apply sample weights and the reduction.

    ``loss`` has the sample dimension first (or is 0-dim).  ``count`` is what
    PyTorch divides by for each element under "mean" (same shape as loss); if
    None, every element counts 1.
    """
    if sample_weight is not None:
        w = _per_sample_view(sample_weight.to(loss.dtype), loss.dim())
        loss = loss * w
        if count is not None:
            count = count * w
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if count is not None:
        return total / count.sum()
    if sample_weight is None:
        return total / loss.numel()
    # every element counts 1: sum_i w_i * (elements per sample)
    per_sample = 1
    for s in loss.shape[1:]:
        per_sample *= int(s)
    return total / (sample_weight.to(loss.dtype).sum() * per_sample)


def _gather_targets(logp: Tensor, target: Tensor, ignore_index: int):
    """Return (log p_y, safe target, valid mask, out-of-range mask).

    ``logp`` is (N,C,d..), ``target`` (N,d..) integer.  Ignored and
    out-of-range positions read class 0 (their loss is replaced later).
    """
    c = logp.shape[1]
    t = target.long()
    valid = t != ignore_index
    in_range = (t >= 0) & (t < c)
    safe = torch.where(valid & in_range, t, torch.zeros_like(t))
    lp_y = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    return lp_y, safe, valid, valid & ~in_range


# ---------------------------------------------------------------------------
# Softmax losses


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    sample_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Cross-entropy over softmax(input), with optional per-sample weights.

    Index targets ``y`` (shape (N,d..), or () for an unbatched (C,) input),
    class weight ``cw`` (default 1), label smoothing ``eps``,
    ``log p = log_softmax(input, class dim)``::

        l_i = (1-eps) * cw[y_i] * (-log p_{i,y_i}) + eps/C * sum_c cw[c] * (-log p_{i,c})

    and ``l_i = 0`` where ``y_i == ignore_index``.  Probability targets ``q``
    (input's shape, floating)::

        q' = (1-eps) * q + eps/C;   l_i = -sum_c cw[c] * q'_{i,c} * log p_{i,c}

    With sample weights ``w`` (shape (N,); each position of an (N,C,d..)
    input takes its sample's weight), "none" gives ``w_i * l_i``, "sum" the sum
    of that, and "mean"::

        index targets: sum_i w_i l_i / sum_{i not ignored} w_i cw[y_i]
        prob. targets: sum_i w_i l_i / sum_i w_i

    ``sample_weight=None`` is exactly ``torch.nn.functional.cross_entropy``.

    Example::

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> y = torch.tensor([0, 2])
        >>> cross_entropy(x, y, sample_weight=torch.tensor([1.0, 3.0]))
        tensor(1.2060)
    """
    reduction = check_reduction(reduction)
    n_classes = check_class_input(input)
    check_tensor(target, "target")
    eps = check_label_smoothing(label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    check_same_device(input=input, target=target, weight=weight, sample_weight=sample_weight)
    weight = check_class_weight(weight, n_classes, "weight")
    unbatched = input.dim() == 1
    sample_weight = check_sample_weight(sample_weight, input, unbatched=unbatched)
    prob = is_prob_target(input, target)
    if prob:
        check_prob_target(target, input)
        if ignore_index >= 0:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability "
                f"targets (leave it negative)"
            )
    else:
        check_index_target(target, input, ignore_index=ignore_index)

    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    t = target
    if unbatched:
        x = x.unsqueeze(0)
        t = t.unsqueeze(0)
    logp = torch.log_softmax(x, dim=1)
    cw = cw_b = None
    if weight is not None:
        cw = weight.to(acc)
        cw_b = cw.reshape((1, n_classes) + (1,) * (x.dim() - 2))

    if prob:
        q = t.to(acc)
        if eps > 0.0:
            q = q * (1.0 - eps) + eps / n_classes
        prod = logp * q
        if cw_b is not None:
            prod = prod * cw_b
        loss = -prod.sum(dim=1)
        count = None  # PyTorch divides by the number of positions
    else:
        lp_y, safe, valid, out_of_range = _gather_targets(logp, t, ignore_index)
        if cw is not None:
            cw_y = cw[safe]
            loss = -cw_y * lp_y
        else:
            cw_y = torch.ones_like(lp_y)
            loss = -lp_y
        if eps > 0.0:
            smooth = -(logp * cw_b).sum(dim=1) if cw_b is not None else -logp.sum(dim=1)
            loss = (1.0 - eps) * loss + (eps / n_classes) * smooth
        zero = torch.zeros_like(loss)
        loss = torch.where(valid, loss, zero)
        loss = torch.where(out_of_range, torch.full_like(loss, float("nan")), loss)
        count = torch.where(valid, cw_y, zero)

    out = _reduce(loss, count, sample_weight, reduction)
    if unbatched and reduction == "none":
        out = out.squeeze(0)
    return out.to(input.dtype)


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: Union[None, float, Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Softmax (multi-class) focal loss of Lin et al. (2017).

    With ``p = softmax(input)`` over the class dimension and index targets
    ``y`` (no label smoothing, no probability targets)::

        l_i = -alpha_{y_i} * (1 - p_{i,y_i})**gamma * log p_{i,y_i}

    ``alpha`` is None (1 for every class), a float (the same for every class)
    or a tensor of shape (C,).  Ignored samples have ``l_i = 0``.  "mean" is
    ``sum_i w_i l_i / sum_{i not ignored} w_i`` (alpha is not in the
    denominator); without sample weights ``w_i = 1``.  ``gamma=0`` with
    ``alpha=None`` is exactly :func:`cross_entropy`.  ``1 - p`` is computed as
    ``-expm1(log p)`` so confident samples keep their precision.

    Example::

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> y = torch.tensor([0, 2])
        >>> focal_loss(x, y, gamma=2.0, sample_weight=torch.tensor([1.0, 3.0]))
        tensor(0.7237)
    """
    reduction = check_reduction(reduction)
    n_classes = check_class_input(input)
    check_tensor(target, "target")
    gamma = check_gamma(gamma)
    ignore_index = check_ignore_index(ignore_index)
    check_same_device(input=input, target=target,
                      alpha=alpha if isinstance(alpha, Tensor) else None,
                      sample_weight=sample_weight)
    alpha = check_focal_alpha(alpha, n_classes)
    unbatched = input.dim() == 1
    sample_weight = check_sample_weight(sample_weight, input, unbatched=unbatched)
    check_index_target(target, input, ignore_index=ignore_index)

    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    t = target
    if unbatched:
        x = x.unsqueeze(0)
        t = t.unsqueeze(0)
    logp = torch.log_softmax(x, dim=1)
    lp_y, safe, valid, out_of_range = _gather_targets(logp, t, ignore_index)
    one_minus_p = -torch.expm1(lp_y)
    loss = -_unit_pow(one_minus_p, gamma) * lp_y
    if isinstance(alpha, Tensor):
        loss = loss * alpha.to(acc)[safe]
    elif alpha is not None:
        loss = loss * alpha
    zero = torch.zeros_like(loss)
    loss = torch.where(valid, loss, zero)
    loss = torch.where(out_of_range, torch.full_like(loss, float("nan")), loss)
    count = valid.to(acc)

    out = _reduce(loss, count, sample_weight, reduction)
    if unbatched and reduction == "none":
        out = out.squeeze(0)
    return out.to(input.dtype)


# ---------------------------------------------------------------------------
# Element-wise losses


def _elementwise_prologue(fn_input, target, reduction, sample_weight, **weights):
    reduction = check_reduction(reduction)
    check_input(fn_input, "input")
    check_tensor(target, "target")
    check_same_device(input=fn_input, target=target, sample_weight=sample_weight, **weights)
    check_elementwise_target(target, fn_input)
    sample_weight = check_sample_weight(sample_weight, fn_input)
    return reduction, sample_weight


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: Optional[float] = 0.25,
    gamma: float = 2.0,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "none",
) -> Tensor:
    r"""Sigmoid (binary / multi-label) focal loss, as torchvision defines it.

    With ``p = sigmoid(x)``, targets ``t`` in [0, 1] of input's shape::

        ce   = BCE_with_logits(x, t)
        p_t  = p t + (1 - p)(1 - t)
        l    = ce * (1 - p_t)**gamma * (alpha t + (1 - alpha)(1 - t))

    where the alpha factor is dropped when ``alpha < 0`` (or None).  ``1 - p_t``
    is computed as ``t sigmoid(-x) + (1 - t) sigmoid(x)``, which equals it
    without cancellation.  The default reduction is "none" (as torchvision);
    "mean" with sample weights is ``sum_i w_i sum_j l_ij / (sum_i w_i * M)``
    with M elements per sample.

    Example::

        >>> x = torch.tensor([[3.0, -1.0], [0.5, 0.0]])
        >>> t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sigmoid_focal_loss(x, t, reduction="sum")
        tensor(0.3434)
    """
    reduction, sample_weight = _elementwise_prologue(input, target, reduction, sample_weight)
    gamma = check_gamma(gamma)
    alpha = check_sigmoid_alpha(alpha)
    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    t = target.to(acc)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)
    loss = ce * _unit_pow(one_minus_pt, gamma)
    if alpha is not None and alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return _reduce(loss, None, sample_weight, reduction).to(input.dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    pos_weight: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Binary cross-entropy on logits, with ``weight`` and ``pos_weight``.

    With ``pw`` = pos_weight (default 1) and ``v`` = weight (default 1), both
    broadcast to input's shape::

        l = v * ((1 - t) x - (1 + (pw - 1) t) log sigmoid(x))

    "mean" divides by the number of elements (PyTorch), with sample weights
    by ``sum_i w_i * M`` (M elements per sample).

    Example::

        >>> x = torch.tensor([[3.0, -1.0], [0.5, 0.0]])
        >>> t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> binary_cross_entropy_with_logits(x, t, sample_weight=torch.tensor([1.0, 0.0]))
        tensor(0.1809)
    """
    reduction, sample_weight = _elementwise_prologue(
        input, target, reduction, sample_weight, weight=weight, pos_weight=pos_weight)
    check_elementwise_weight(weight, input, name="weight", broadcast=True)
    check_elementwise_weight(pos_weight, input, name="pos_weight", broadcast=True)
    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    t = target.to(acc)
    log_sig = F.logsigmoid(x)
    if pos_weight is not None:
        lw = 1.0 + (pos_weight.to(acc) - 1.0) * t
        loss = (1.0 - t) * x - lw * log_sig
    else:
        loss = (1.0 - t) * x - log_sig
    if weight is not None:
        loss = loss * weight.to(acc)
    return _reduce(loss, None, sample_weight, reduction).to(input.dtype)


def _regression(kind, input, target, weight, sample_weight, reduction, delta=1.0):
    reduction, sample_weight = _elementwise_prologue(
        input, target, reduction, sample_weight, weight=weight)
    check_elementwise_weight(weight, input, name="weight", broadcast=False)
    acc = acc_dtype(input.dtype)
    d = input.to(acc) - target.to(acc)
    if kind == "mse":
        loss = d * d
    elif kind == "l1":
        loss = d.abs()
    else:
        ad = d.abs()
        loss = torch.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    count = None
    if weight is not None:
        w = weight.to(acc)
        loss = loss * w
        if kind != "huber":  # PyTorch: mse/l1 "mean" divides by weight.sum()
            count = w.expand_as(loss)
    return _reduce(loss, count, sample_weight, reduction).to(input.dtype)


def mse_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Mean squared error ``l = v * (x - t)**2`` (``v`` = weight, input's shape).

    "mean": ``sum l / numel`` without weight, ``sum l / sum v`` with weight
    (as PyTorch).  With sample weights ``w``:
    ``sum_i w_i sum_j l_ij / sum_i w_i D_i`` where ``D_i`` is the number of
    elements of sample i, or ``sum_j v_ij`` with weight.

    Example::

        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> t = torch.zeros(2, 2)
        >>> mse_loss(x, t, sample_weight=torch.tensor([3.0, 1.0]))
        tensor(5.)
    """
    return _regression("mse", input, target, weight, sample_weight, reduction)


def l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Absolute error ``l = v * |x - t|`` (``v`` = weight, input's shape).

    Reductions as :func:`mse_loss` ("mean" with weight divides by
    ``sum v``, as PyTorch).

    Example::

        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> t = torch.zeros(2, 2)
        >>> l1_loss(x, t, sample_weight=torch.tensor([3.0, 1.0]))
        tensor(2.)
    """
    return _regression("l1", input, target, weight, sample_weight, reduction)


def huber_loss(
    input: Tensor,
    target: Tensor,
    *,
    delta: float = 1.0,
    weight: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Huber loss with threshold ``delta`` > 0, ``d = x - t``::

        l = v * (0.5 d**2              if |d| < delta
                 delta (|d| - delta/2) otherwise)

    "mean" divides by the number of elements even with ``weight`` (as
    PyTorch); with sample weights by ``sum_i w_i * M`` (M elements per sample).

    Example::

        >>> x = torch.tensor([[0.5, 2.0], [3.0, 4.0]])
        >>> t = torch.zeros(2, 2)
        >>> huber_loss(x, t, sample_weight=torch.tensor([3.0, 1.0]))
        tensor(1.3594)
    """
    delta = check_delta(delta)
    return _regression("huber", input, target, weight, sample_weight, reduction, delta)
