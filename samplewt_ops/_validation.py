"""Every argument check of samplewt_ops, and the validation switch.

The public losses (:mod:`samplewt_ops.functional`, driven by the op spec),
the reference (:mod:`samplewt_ops.reference`, which is also the fallback) and
the weight tables and policies (:mod:`samplewt_ops.weights`) all check their
arguments here, so that the same bad argument gets the same error, with the
same message, on every path.

Structural checks (types, shapes, devices, scalar arguments) always run and
never synchronise with a device.  Checks that must read tensor *values*
(target class range, sample_weight sign and finiteness) run on CPU tensors
always; on other devices they run only when ``SAMPLEWT_VALIDATE=1`` is set or
:func:`set_validation` turned them on, since they would force a device
synchronisation.  They are also skipped while torch.compile (or make_fx)
traces and for fake/meta tensors.  When a value check is skipped, an
out-of-range target class makes that sample's loss NaN in the reference
instead of reading out of bounds.
"""

from __future__ import annotations

import numbers
import os
import warnings
from typing import Any, NamedTuple, Optional

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

REDUCTIONS = ("none", "mean", "sum")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# Where torch's counterpart raises RuntimeError for a bad argument and this
# package's checks a ValueError or TypeError, the error is both, and its
# message starts with torch's words: code written against torch.nn catches it
# and matches it as before.
class ValueRuntimeError(ValueError, RuntimeError):
    """A bad value or shape: torch's RuntimeError for the same call."""


class TypeRuntimeError(TypeError, RuntimeError):
    """A bad dtype: torch's RuntimeError for the same call."""


# torch's names of the scalar types, as its messages spell them.
_SCALAR_TYPE = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
                torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
                torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool"}


def scalar_type(dtype: torch.dtype) -> str:
    return _SCALAR_TYPE.get(dtype, str(dtype).replace("torch.", ""))

# ---------------------------------------------------------------------------
# The validation switch

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


def transformed() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) runs or a
    forward-AD level (torch.autograd.forward_ad.dual_level) is open. The
    compiled ops have no batching rules and no forward derivatives, so such
    calls run the reference, whose torch ops have both."""
    return _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def tracing(tensor: Optional[Tensor] = None) -> bool:
    """Whether the values of ``tensor`` are out of reach: torch.compile or
    make_fx is tracing, a torch.func transform (vmap) wraps it, or ``tensor``
    is a fake or meta tensor."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return True
    if tensor is not None and (tensor.device.type == "meta" or is_fake(tensor)):
        return True
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None


def validation_enabled(tensor: Optional[Tensor] = None) -> bool:
    """Whether data-dependent (value) checks run for ``tensor``.

    True for CPU tensors, False while torch.compile traces or for fake/meta
    tensors; for other devices it follows :func:`set_validation`, then the
    ``SAMPLEWT_VALIDATE`` environment variable (off by default).
    """
    if tracing(tensor):
        return False
    if tensor is not None and tensor.device.type == "cpu":
        return True
    if _validation_override is not None:
        return _validation_override
    return os.environ.get("SAMPLEWT_VALIDATE", "0").strip().lower() in ("1", "true", "yes", "on")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


# ---------------------------------------------------------------------------
# Tensors: types, shapes, devices (always run, never synchronise)


def check_reduction(reduction, op: str = "") -> str:
    """Return ``reduction`` if it is "none", "mean" or "sum"; else ValueError
    in the words of ``op``'s counterpart: torchvision's for
    sigmoid_focal_loss, torch's for the others."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        if op == "sigmoid_focal_loss":
            raise ValueError(f"Invalid Value for arg 'reduction': '{reduction}'; supported "
                             f"reduction modes: 'none', 'mean', 'sum'")
        raise ValueError(
            f"{reduction} is not a valid value for reduction: it must be one of 'none', "
            f"'mean' or 'sum', got {reduction!r}"
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


def check_input(input, name: str = "input", *, min_dim: int = 0, complex: bool = False) -> Tensor:
    """Check the logits/prediction tensor: floating dtype (or complex, when
    ``complex``), at least ``min_dim`` dims."""
    takes_complex = complex and isinstance(input, Tensor) and input.is_complex()
    check_tensor(input, name, floating=None if takes_complex else True)
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
                f"Expected all tensors to be on the same device, but found at least two "
                f"devices, {first_dev} and {t.device}: {first_name} is on "
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


def unbatched_index_target(input: Tensor, target: Tensor) -> bool:
    """torch's other form of an unbatched target: (1,) for a (C,) input."""
    return input.dim() == 1 and _shape(target) == (1,)


def check_index_target(target, input: Tensor, *, ignore_index: int = -100,
                       name: str = "target", input_name: str = "input",
                       check_values: bool = True) -> Tensor:
    """Check class-index targets for a softmax ``input`` of shape (N,C,d..) or (C,).

    Structure, in torch's order: shape (N,d..) (() or (1,) for an unbatched
    (C,) input), else ValueError naming the batch sizes, or torch's
    RuntimeError for the other dimensions; then an integer (non-bool) dtype,
    else TypeError. Values (when :func:`validation_enabled`): each class in
    [0, C) or equal to ``ignore_index``, else IndexError. Any integer dtype is
    accepted; it is converted to int64 by the losses. ``check_values=False``
    leaves the values to a caller that checks them itself (the compiled CPU
    kernels do).
    """
    check_tensor(target, name)
    expected = _index_target_shape(input)
    if _shape(target) != expected and not unbatched_index_target(input, target):
        detail = (f"{name} has shape {_shape(target)} but {input_name} of shape "
                  f"{_shape(input)} needs class-index targets of shape {expected}")
        if input.dim() == 1 and target.dim() == 1:
            raise ValueError(f"For 1D {input_name}, 1D {name} must have size 1, but got {name} "
                             f"size: {target.shape[0]}. {detail}")
        if input.dim() >= 2 and (target.dim() == 0 or target.shape[0] != input.shape[0]):
            batch = target.shape[0] if target.dim() else 0
            raise ValueError(f"Expected {input_name} batch_size ({input.shape[0]}) to match "
                             f"{name} batch_size ({batch}). {detail}")
        if input.dim() <= 2:
            raise ValueRuntimeError(f"0D or 1D {name} tensor expected, multi-target not "
                                    f"supported: {detail}")
        raise ValueRuntimeError(f"Expected {name} size {list(expected)}, got "
                                f"{list(target.shape)}: {detail}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeRuntimeError(
            f"expected {name} dtype to be Long or Byte, but got {scalar_type(target.dtype)}: "
            f"{name} must hold integer class indices of shape {expected} here, got a "
            f"{target.dtype} tensor of shape {_shape(target)} (class-probability targets "
            f"must have {input_name}'s shape {_shape(input)})"
        )
    if check_values and target.numel() > 0 and validation_enabled(target):
        c = num_classes(input)
        t = target.detach()
        bad = (t != ignore_index) & ((t < 0) | (t >= c))
        if bool(bad.any()):
            value = int(t[bad].reshape(-1)[0])
            raise IndexError(
                f"Target {value} is out of bounds: {name} contains class index {value}, "
                f"out of range [0, {c}) and not ignore_index={ignore_index}"
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
        raise TypeRuntimeError(
            f"Expected floating point type for {name} with class probabilities, got "
            f"{scalar_type(target.dtype)}: "
            f"{name} has {input_name}'s shape, so it is read as class probabilities and "
            f"must be floating point, got dtype {target.dtype} (class-index targets "
            f"have shape {_index_target_shape(input)})"
        )
    return target


def check_class_target(target, input: Tensor, *, ignore_index: int, allow_prob: bool,
                       check_values: bool = True) -> bool:
    """Targets of a softmax loss; returns whether they are class probabilities.

    Probabilities (input's shape, when ``allow_prob``) take no ``ignore_index``
    (it must stay negative); anything else must be class indices.
    """
    if allow_prob and is_prob_target(input, target):
        check_prob_target(target, input)
        if ignore_index >= 0:
            raise ValueRuntimeError(
                f"ignore_index is not supported for floating point target: "
                f"ignore_index={ignore_index} is not supported with class-probability "
                f"targets (leave it negative)"
            )
        return True
    check_index_target(target, input, ignore_index=ignore_index, check_values=check_values)
    return False


def check_class_weight(weight, n_classes: int, name: str = "weight") -> Optional[Tensor]:
    """Check an optional per-class weight: floating tensor of shape (C,)."""
    if weight is None:
        return None
    check_tensor(weight, name, floating=True)
    if _shape(weight) != (n_classes,):
        raise ValueRuntimeError(
            f"{name} tensor should be defined either for all {n_classes} classes or no "
            f"classes but got {name} tensor of shape: {list(weight.shape)}: {name} must "
            f"have shape ({n_classes},), one value per class"
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


def check_elementwise_target(target, input: Tensor, *, name: str = "target",
                             input_name: str = "input", complex: bool = False) -> Tensor:
    """Element-wise targets: floating point with exactly ``input``'s shape
    (F.binary_cross_entropy_with_logits's rule, and its ValueError)."""
    check_tensor(target, name)
    if target.dtype not in FLOAT_DTYPES and not (complex and target.is_complex()):
        raise TypeRuntimeError(
            f"{name} must be a floating-point tensor, got dtype {target.dtype}"
        )
    if _shape(target) != _shape(input):
        raise ValueError(
            f"Target size ({target.size()}) must be the same as input size ({input.size()}): "
            f"{name} must have {input_name}'s shape {_shape(input)}, got {_shape(target)}"
        )
    return target


def broadcast_regression(input: Tensor, target, *, name: str = "target",
                         input_name: str = "input", complex: bool = False, stacklevel: int = 4):
    """The operands of a regression loss (mse, l1, huber) as torch's take
    them: an integer or bool ``target`` in ``input``'s dtype, and a target of
    another shape broadcast with ``input`` (the loss then has the broadcast
    shape), with torch's warning. Returns ``(input, target)``; shapes that do
    not broadcast raise torch's RuntimeError (also a ValueError)."""
    check_tensor(target, name)
    if target.dtype.is_complex and not complex:
        raise TypeRuntimeError(f"{name} must be a real tensor, got dtype {target.dtype}")
    if not (target.dtype.is_floating_point or target.dtype.is_complex):
        target = target.to(input.dtype)
    if _shape(target) != _shape(input):
        check_same_device(input=input, target=target)
        if not tracing(input):
            warnings.warn(
                f"Using a target size ({target.size()}) that is different to the input size "
                f"({input.size()}). This will likely lead to incorrect results due to "
                f"broadcasting. Please ensure they have the same size.", stacklevel=stacklevel)
        try:
            input, target = torch.broadcast_tensors(input, target)
        except RuntimeError as e:
            raise ValueRuntimeError(f"{e}: {name} of shape {_shape(target)} does not broadcast "
                                    f"with {input_name}'s shape {_shape(input)}") from None
    return input, target


def _broadcast_mismatch(a: Tensor, b: Tensor) -> str:
    """torch's words for shapes that do not broadcast: the first size of ``a``
    that differs from ``b``'s and is not 1, counting from the last."""
    ndim = max(a.dim(), b.dim())
    for k in range(1, ndim + 1):
        sa = a.shape[-k] if k <= a.dim() else 1
        sb = b.shape[-k] if k <= b.dim() else 1
        if sa != sb and sa != 1 and sb != 1:
            return (f"The size of tensor a ({sa}) must match the size of tensor b ({sb}) at "
                    f"non-singleton dimension {ndim - k}")
    return f"tensor a of shape {_shape(a)} does not broadcast to tensor b of shape {_shape(b)}"


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
            raise ValueRuntimeError(
                f"{_broadcast_mismatch(weight, input)}: {name} of shape {_shape(weight)} "
                f"cannot be broadcast to {input_name}'s shape {_shape(input)}"
            )
    elif _shape(weight) != _shape(input):
        raise ValueError(
            f"{name} must have {input_name}'s shape {_shape(input)}, got {_shape(weight)}"
        )
    return weight


# ---------------------------------------------------------------------------
# Python numbers


_SYM_NUMBERS = tuple(t for t in (getattr(torch, "SymFloat", None), getattr(torch, "SymInt", None)) if t)


def _is_inf(value) -> bool:
    return value == float("inf") or value == -float("inf")


def check_real(value, name: str, *, lo=None, hi=None, lo_open: bool = False,
               hi_open: bool = False, finite: bool = False):
    """A real Python number (not bool, not NaN), returned as float.

    ``finite=True`` also refuses infinities (and then reports NaN the same
    way); ``lo``/``hi`` bound it, open or closed.  Written with comparisons
    only (no math.isnan) so that it also traces when torch.compile
    (dynamic=True) turns the number into a symbolic float.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real,) + _SYM_NUMBERS):
        raise TypeError(f"{name} must be a float or int, got: {type(value)}")
    original = value
    if isinstance(value, numbers.Real):
        value = float(value)
    if finite and (value != value or _is_inf(value)):
        raise ValueError(f"{name} must be finite, got {original!r}")
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {original!r}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {original!r}")
    return value


def check_label_smoothing(label_smoothing) -> float:
    """label_smoothing must be a real number in [0, 1]."""
    value = check_real(label_smoothing, "label_smoothing")
    if not (0.0 <= value and value <= 1.0):
        raise ValueRuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {value}")
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
    value = check_real(gamma, "gamma")
    if not value >= 0.0 or _is_inf(value):
        raise ValueError(f"gamma must be finite and >= 0, got {value}")
    return value


def check_z_loss(z_loss) -> float:
    """z_loss (the coefficient of lse**2) must be a finite real number >= 0."""
    return check_real(z_loss, "z_loss", lo=0.0, finite=True)


def check_softcap(softcap) -> Optional[float]:
    """softcap must be None (off) or a finite real number > 0."""
    if softcap is None:
        return None
    return check_real(softcap, "softcap", lo=0.0, lo_open=True, finite=True)


def check_delta(delta) -> float:
    """delta (Huber threshold) must be a real number > 0 (infinity: the loss is
    d**2 / 2 everywhere), as F.huber_loss has it."""
    if isinstance(delta, numbers.Real) and not isinstance(delta, bool) and not delta > 0:
        raise ValueRuntimeError(f"huber_loss does not support non-positive values for delta. "
                                f"delta must be > 0, got {delta!r}")
    return check_real(delta, "delta")


def check_focal_alpha(alpha, n_classes: int, name: str = "alpha"):
    """Softmax focal alpha: None, a finite real number, or a float tensor (C,)."""
    if alpha is None:
        return None
    if isinstance(alpha, Tensor):
        return check_class_weight(alpha, n_classes, name)
    value = check_real(alpha, name)
    if _is_inf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_sigmoid_alpha(alpha, name: str = "alpha") -> Optional[float]:
    """Sigmoid focal alpha: a real number (< 0 disables it) or None (disabled)."""
    if alpha is None:
        return None
    value = check_real(alpha, name)
    if _is_inf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


# ---------------------------------------------------------------------------
# One loss call, driven by its op spec (samplewt_ops._spec)
#
# A spec's tensor arguments are checked by one of these, called as
# check(value, input, name); its scalar arguments by a check_* above, called
# as check(value).


def per_class(value, input: Tensor, name: str) -> Optional[Tensor]:
    """A class weight of a softmax loss: None or a float tensor (C,)."""
    return check_class_weight(value, num_classes(input), name)


def per_class_or_real(value, input: Tensor, name: str):
    """A class weight that may also be one number for every class."""
    return check_focal_alpha(value, num_classes(input), name)


def same_shape(value, input: Tensor, name: str) -> Optional[Tensor]:
    """An element-wise weight with exactly input's shape."""
    return check_elementwise_weight(value, input, name=name)


def broadcastable(value, input: Tensor, name: str) -> Optional[Tensor]:
    """An element-wise weight that broadcasts to input's shape."""
    return check_elementwise_weight(value, input, name=name, broadcast=True)


class LossCall(NamedTuple):
    """One call of a loss, checked: ``sample_weight`` as a 1-D tensor, ``args``
    the loss's own arguments (by name), ``prob`` whether the targets are class
    probabilities."""

    spec: Any
    input: Tensor
    target: Tensor
    sample_weight: Optional[Tensor]
    reduction: str
    args: dict
    prob: bool


def check_loss_args(spec, input, target, sample_weight, reduction, args: dict, *,
                    check_values: bool = True) -> LossCall:
    """Every check of one call of the loss ``spec``, in the reference's order."""
    reduction = check_reduction(reduction, spec.name)
    rows = spec.family == "row"
    if rows:
        check_class_input(input)
    else:
        check_input(input, "input", complex=spec.complex_input)
    if spec.broadcast:
        input, target = broadcast_regression(input, target, complex=spec.complex_input, stacklevel=5)
    check_tensor(target, "target")
    args = dict(args)
    for name, check in spec.scalars.items():
        args[name] = check(args[name])
    check_same_device(input=input, target=target, **{n: args[n] for n in spec.tensors},
                      sample_weight=sample_weight)
    for name, check in spec.tensors.items():
        args[name] = check(args[name], input, name)
    sample_weight = check_sample_weight(sample_weight, input,
                                        unbatched=input.dim() == (1 if rows else 0),
                                        check_values=check_values)
    prob = False
    if rows:
        prob = check_class_target(target, input, ignore_index=args["ignore_index"],
                                  allow_prob=spec.prob_targets, check_values=check_values)
        if not prob and unbatched_index_target(input, target):
            target = target.reshape(())
    else:
        check_elementwise_target(target, input, complex=spec.complex_input)
    return LossCall(spec, input, target, sample_weight, reduction, args, prob)
