"""The public losses of samplewt_ops.

Each function checks its arguments here, at the Python boundary, then runs
the fused compiled kernel for the input's device (loss and d(loss)/d(input) in
one pass over the logits), or the pure-PyTorch reference where no kernel was
built. With ``sample_weight=None`` every function equals its torch.nn (or
torchvision) counterpart.

Sample weights. ``sample_weight`` has shape (N,) along input's first
dimension, non-negative and finite; it multiplies each sample's loss.
``reduction="mean"`` divides by the sum of what PyTorch divides by, each
sample's share multiplied by its weight, so ``sample_weight=ones`` is exactly
PyTorch.

Adaptive weights. Every loss also takes ``table=<AdaptiveWeights>`` and
``indices`` (the batch's dataset indices). The loss reads the batch's weights
from the table (the values from before this batch), multiplies them with any
explicit ``sample_weight``, and the same kernel pass returns the per-sample
loss, gradient norm and GHM magnitude that update the table. (``weights=`` is
the table's former keyword: still accepted, with a DeprecationWarning.)

Every loss is one entry of the op spec (``samplewt_ops._spec``), and its
function here is made from that entry: the signature of its reference (with
``table``, ``indices`` and, for the losses with an in-place variant,
``inplace_grad``), the entry's docstring, and one call into the shared path
:func:`_loss`.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from . import _loader, _ops
from ._spec import LEGACY_REDUCTION, SPECS
from ._validation import (check_loss_args, check_sample_weight, num_classes, same_shape, tracing,
                          transformed)
from .weights import driver

__all__ = list(SPECS)

_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


def _kernel(input, target) -> bool:
    """Whether the compiled kernel can run this call: it has no complex
    arithmetic, and under torch.func transforms only the reference's torch
    ops have batching rules and forward derivatives."""
    return (isinstance(input, Tensor) and input.device.type in _loader.KERNEL_DEVICE_TYPES
            and not input.is_complex() and not (isinstance(target, Tensor) and target.is_complex())
            and not transformed())


def _needs_grad(input: Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


# ---------------------------------------------------------------------------
# The arguments as the ops take them


class _Samples:
    """input and target as the op takes them, and the way back for its
    per-sample outputs: element-wise ops take them as they are."""

    def __init__(self, input: Tensor, target: Tensor):
        self.x, self.t = input, target

    def expand(self, per_sample: Optional[Tensor]) -> Optional[Tensor]:
        return per_sample

    def unfold(self, loss: Tensor) -> Tensor:
        return loss

    def per_sample_stats(self, stats: Tensor) -> Tensor:
        return stats


class _Rows(_Samples):
    """Row (softmax) ops: a (C,) input as one row; an (N, C, d1..dk) input
    as it is (the op reads N * d1 * .. * dk rows in place), or with a table,
    which takes (rows, C), folded to rows."""

    def __init__(self, input: Tensor, target: Tensor, prob: bool, fold: bool = False):
        if not prob and target.dtype not in (torch.int64, torch.int32):
            target = target.long()  # the kernels read int64 or int32 indices
        self.n = 1 if input.dim() == 1 else input.shape[0]
        self.out_shape = tuple(target.shape) if not prob else (
            () if input.dim() == 1 else (input.shape[0],) + tuple(input.shape[2:])
        )
        c = num_classes(input)
        if input.dim() == 1:
            self.x = input.unsqueeze(0)
            self.t = target.unsqueeze(0) if prob else target.reshape(1)
        elif input.dim() == 2 or not fold:
            self.x, self.t = input, target
        else:
            # The class dimension moves last so that each row is contiguous.
            self.x = input.movedim(1, -1).reshape(-1, c)
            self.t = target.movedim(1, -1).reshape(-1, c) if prob else target.reshape(-1)
        rows = math.prod(self.out_shape) if input.dim() > 1 else 1
        self.positions = rows // self.n if self.n else 1

    def expand(self, per_sample: Optional[Tensor]) -> Optional[Tensor]:
        """A per-sample (N,) vector as one value per row."""
        if per_sample is None or self.positions == 1:
            return per_sample
        # expand + reshape, not repeat_interleave: no device sync on CUDA.
        return per_sample[:, None].expand(self.n, self.positions).reshape(-1)

    def unfold(self, loss: Tensor) -> Tensor:
        return loss.reshape(self.out_shape)

    def per_sample_stats(self, stats: Tensor) -> Tensor:
        """(rows, 3) statistics summed up per sample: loss, |grad|, mean g."""
        return driver.fold_positions(stats, self.n)


def _run_kernel(call, op_args: dict, sample_weight, reduction: str, want_stats: bool, inplace_grad: bool):
    """Calls the compiled op; returns (loss, per-sample stats or None)."""
    spec = call.spec
    lay = (_Rows(call.input, call.target, call.prob, fold="indices" in op_args) if spec.rows
           else _Samples(call.input, call.target))
    args = dict(op_args, target=lay.t, sample_weight=lay.expand(sample_weight),
                reduction=_REDUCTION[reduction], compute_stats=want_stats)
    if inplace_grad and _needs_grad(lay.x):
        if type(lay.x) is Tensor and not tracing(lay.x):
            # Eager: the `_` op's C++ autograd (csrc/autograd.cpp), which scales
            # the consumed input on the device (CUDA: no pass when grad_output is 1).
            loss, stats = _ops.call(spec.name, inplace=True, input=lay.x, **args)
        else:
            loss, stats = _ops.InplaceGradLoss.apply(lay.x, spec.name, args)
    else:
        if not spec.rows:  # d/dtarget from the same pass, only when wanted
            args["compute_target_grad"] = _needs_grad(lay.t)
        out = _ops.call(spec.name, input=lay.x, compute_grad=_needs_grad(lay.x), **args)
        loss, stats = out[0], out[2]
    if reduction == "none":
        loss = lay.unfold(loss)
    return loss, (lay.per_sample_stats(stats) if want_stats else None)


def _differentiated(call) -> set:
    """The tensor arguments other than input that autograd must differentiate
    and the kernel does not: an element-wise kernel gives its target's
    gradient itself."""
    if not torch.is_grad_enabled():
        return set()
    tensors = {"target": call.target, "sample_weight": call.sample_weight,
               **{name: call.args[name] for name in call.spec.tensors}}
    if not call.spec.rows:
        del tensors["target"]
    return {name for name, t in tensors.items() if isinstance(t, Tensor) and t.requires_grad}


# Errors of a fast call: the checked path then runs, and raises its own error.
_OP_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def _plain_scalar(name: str, value) -> bool:
    # What the fast path takes without the scalar's Python check: the op's
    # C++ checks hold the ranges; the rest (bools, inf, NaN, other types) goes
    # through the check, which rejects it or converts it.
    if name == "ignore_index":
        return type(value) is int
    return (type(value) is float and math.isfinite(value)) or type(value) is int


@functools.lru_cache(maxsize=None)
def _fast_op(name: str):
    """The op's overload and its schema's argument names before the table's
    (which close the schema: ``indices``, then AdaptiveWeights.op_tail())."""
    from ._spec import SCHEMA_ARGS, TABLE_ARGS
    names = SCHEMA_ARGS[name]
    own = tuple(n for n in names if n not in TABLE_ARGS)
    # The table's arguments close the schema, as AdaptiveWeights.op_tail has them.
    assert names[len(own):] == tuple(TABLE_ARGS), name
    overload = getattr(torch.ops.samplewt_ops, name).default
    # OpOverload.__call__ only forwards to its C++ callable: one Python frame
    # (about 0.5 us of a 10 us forward) less per call.
    return getattr(overload, "_op", overload), own


def _fast_loss(spec, input, target, sample_weight, reduction, args: dict, table=None, indices=None,
               inplace_grad=False):
    """The loss of a plain CPU call straight from the compiled op, or None when
    the call needs the checked path (_loss). Plain: tensors of input's dtype
    and layout as the op takes them, nothing but input (and an element-wise
    target) requiring grad, and a table (if any) on the CPU with CPU indices.
    The op's own C++ checks and its O(N) value pre-pass check such a call
    (the table's indices too); on any error the checked path runs again and
    raises its documented error. inplace_grad (with input requiring grad):
    the `_` op."""
    # Every tensor on the CPU: a meta tensor among them would dispatch to the
    # fake kernel, which checks no devices.
    if transformed() or type(input) is not Tensor or not input.is_cpu or type(target) is not Tensor or not target.is_cpu:
        return None
    red = _REDUCTION.get(reduction) if type(reduction) is str else None
    if red is None or torch.compiler.is_compiling():
        return None
    dtype = input.dtype
    grad_mode = torch.is_grad_enabled()
    out_shape = None  # reduction "none" of (N, C, d1..dk): the per-row losses' shape
    if spec.rows:
        if target.dtype != torch.int64 and target.dtype != dtype:
            return None
        if grad_mode and target.requires_grad:
            return None
        if input.dim() != 2:
            # (N, C, d1..dk), which the op takes as it is (per-sample weights,
            # which the op takes per row, tables and in place take the checked path).
            if input.dim() < 3 or sample_weight is not None or table is not None or inplace_grad:
                return None
            out_shape = (input.shape[0],) + tuple(input.shape[2:])
    elif target.dtype != dtype:
        return None
    if sample_weight is not None and (type(sample_weight) is not Tensor or sample_weight.dtype != dtype
                                      or not sample_weight.is_cpu
                                      or (grad_mode and sample_weight.requires_grad)):
        return None
    values = {"input": input, "target": target, "sample_weight": sample_weight, "reduction": red,
              "compute_grad": grad_mode and input.requires_grad, "compute_stats": False}
    if not spec.rows:  # the row ops' schemas have no target gradient
        values["compute_target_grad"] = grad_mode and target.requires_grad
    to_op = spec.to_op
    for name, value in args.items():
        if name in spec.tensors:
            if type(value) is Tensor:
                if value.dtype != dtype or not value.is_cpu or (grad_mode and value.requires_grad):
                    return None
                # The op also takes a row broadcast over samples; these take none.
                if spec.tensors[name] is same_shape and value.shape != input.shape:
                    return None
            elif value is not None and name not in to_op:
                return None
        elif not _plain_scalar(name, value):
            try:
                value = spec.scalars[name](value)
            except _OP_ERRORS:
                return None
        values[name] = to_op[name](value, input) if name in to_op else value
    # inplace_grad: the `_` op, whose C++ autograd (csrc/autograd.cpp) hands the
    # consumed input's memory over as its gradient.
    in_place = inplace_grad and values["compute_grad"]
    op, names = _fast_op(spec.name + "_" if in_place else spec.name)
    try:
        if table is None:
            loss = op(*[values[n] for n in names])[0]
            return loss if out_shape is None or red != 0 else loss.reshape(out_shape)
        if (type(indices) is not Tensor or not indices.is_cpu or not table.ema.is_cpu
                or not table.policy.supports(spec.name)):
            return None
        return op(*[values[n] for n in names], indices, *table.op_tail())[0]
    except _OP_ERRORS:
        return None


def _loss(spec, input, target, sample_weight, reduction, table, indices,
          inplace_grad: bool, **args) -> Tensor:
    """Checks one call of the loss of `spec`, then runs the compiled kernel of
    input's device, or the reference; with a table, through weights.driver."""
    kernel = _kernel(input, target)
    # Value checks (target range, sample_weight sign) run once: in the CPU
    # kernel's O(N) pre-pass, in the reference, or here for other kernels.
    call = check_loss_args(spec, input, target, sample_weight, reduction, args,
                           check_values=kernel and input.device.type != "cpu")
    input, target = call.input, call.target  # the regression losses broadcast them
    if spec.result_dtype != "input" and target.dtype != input.dtype and target.dtype.is_floating_point:
        dtype = target.dtype if spec.result_dtype == "target" else torch.result_type(input, target)
        if dtype != input.dtype:
            input = input.to(dtype)
            call = call._replace(input=input)
    differentiated = _differentiated(call) if kernel else ()
    if kernel and differentiated - {"sample_weight"}:
        kernel = False  # the reference differentiates every argument
    if "sample_weight" in differentiated and input.device.type == "cpu":
        # The kernel, which checks sample_weight's values on the CPU, won't see it.
        check_sample_weight(call.sample_weight, input, unbatched=input.dim() == (1 if spec.rows else 0))
    if kernel:
        op_args = call.spec.op_args(call.args, input)

        def run(sw, red, want_stats):
            if "sample_weight" in differentiated:
                # The kernel's unreduced loss, reduced here: autograd then
                # differentiates sample_weight too, at O(N).
                per, stats = _run_kernel(call, op_args, None, "none", want_stats, inplace_grad)
                return driver.weighted_reduce(call, per, sw, red), stats
            return _run_kernel(call, op_args, sw, red, want_stats, inplace_grad)
    else:
        def run(sw, red, want_stats):
            loss = call.spec.reference(input, target, sample_weight=sw, reduction=red, **call.args)
            return loss, (driver.reference_stats(call) if want_stats else None)

    if table is None:
        return run(call.sample_weight, call.reduction, False)[0]
    if kernel and "sample_weight" not in differentiated:
        # One op call: the table's weights, the pass and the table's update.
        table.check_loss(spec.name)
        idx = table.check_indices(indices, spec.batch_size(input), input.device)
        return _run_kernel(call, dict(op_args, **table.op_args(idx)), call.sample_weight,
                           call.reduction, False, inplace_grad)[0]
    return driver.table_loss(call, run, table, indices)


# ---------------------------------------------------------------------------
# The losses: one public function per op spec entry


def _deprecated_table(extra: dict, owner: str, table_given: bool, stacklevel: int = 3):
    """The table passed by the deprecated name ``weights=`` (in `extra`, the
    call's keywords that the signature does not name)."""
    unknown = sorted(set(extra) - {"weights"})
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    if table_given:
        raise TypeError(f"{owner}() got both table= and weights=, the deprecated name of table=; "
                        "pass table= only")
    if not torch.compiler.is_compiling():
        warnings.warn(f"{owner}(weights=...) is deprecated: pass the adaptive weight table as table=",
                      DeprecationWarning, stacklevel=stacklevel)
    return extra["weights"]


def renamed_table(kwargs: dict, owner: str):
    """Pops the deprecated ``weights=`` from the keywords of a call of
    `owner` (with a DeprecationWarning) and returns it: the table."""
    return _deprecated_table({"weights": kwargs.pop("weights")}, owner, "table" in kwargs, stacklevel=4)


def _legacy_reduction(size_average=None, reduce=None) -> str:
    """torch's deprecated size_average / reduce as a reduction, with torch's
    own warning (torch.nn._reduction)."""
    return torch.nn._reduction.legacy_get_string(size_average, reduce)


def _torch_positional(spec, params: list) -> list:
    """The reference's parameters with torch's deprecated reduction arguments
    at the places spec.positional gives them (None: not given)."""
    if not any(name in LEGACY_REDUCTION for name in spec.positional):
        return params
    by_name = {p.name: p for p in params}
    legacy = {name: inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                      annotation="Optional[bool]")
              for name in spec.positional if name in LEGACY_REDUCTION}
    ordered = [*params[:2], *(legacy.get(name) or by_name[name] for name in spec.positional)]
    return ordered + [p for p in params[2:] if p.name not in spec.positional]


# Arguments that every loss takes, passed to _loss by position.
_COMMON = ("input", "target", "sample_weight", "reduction")


def _public_loss(spec) -> Callable:
    """The public function of `spec`: its reference's signature, plus
    ``inplace_grad`` (ops with a ``_`` variant), ``table`` and ``indices``,
    with the spec's docstring; its body is one call of :func:`_loss`.

    Written out as source, like dataclasses' methods, so that it has a real
    signature and binds its arguments at Python's speed.
    """
    ref = inspect.signature(spec.reference)
    kw = inspect.Parameter.KEYWORD_ONLY
    extra = [inspect.Parameter("table", kw, default=None),
             inspect.Parameter("indices", kw, default=None, annotation="Optional[Tensor]")]
    if spec.inplace:
        extra.insert(0, inspect.Parameter("inplace_grad", kw, default=False, annotation="bool"))
    params = [*_torch_positional(spec, list(ref.parameters.values())), *extra]
    legacy = [p.name for p in params if p.name in LEGACY_REDUCTION]
    defaults, text, star = {}, [], False
    for p in params:
        if p.kind is kw and not star:
            text.append("*")
            star = True
        if p.default is p.empty:
            text.append(p.name)
        else:
            defaults[p.name] = p.default
            text.append(f"{p.name}=_defaults[{p.name!r}]")
    own = ", ".join(f"{p.name}={p.name}" for p in ref.parameters.values() if p.name not in _COMMON)
    own_dict = ", ".join(f"{p.name!r}: {p.name}" for p in ref.parameters.values() if p.name not in _COMMON)
    plain = "not deprecated"
    to_reduction = (
        f"    if {' or '.join(f'{n} is not None' for n in legacy)}:\n"
        f"        reduction = _legacy_reduction({', '.join(legacy)})\n"
    ) if legacy else ""
    source = (
        f"def {spec.name}({', '.join(text)}, **deprecated):\n"
        + to_reduction +
        f"    if {plain} and _COMPILED:\n"
        f"        loss = _fast_loss(_spec, input, target, sample_weight, reduction, {{{own_dict}}}, "
        f"table, indices{', inplace_grad' if spec.inplace else ''})\n"
        f"        if loss is not None:\n"
        f"            return loss\n"
        f"    if deprecated:\n"
        f"        table = _deprecated_table(deprecated, {spec.name!r}, table is not None)\n"
        f"    return _loss(_spec, input, target, sample_weight, reduction, table, indices, "
        f"{'inplace_grad' if spec.inplace else 'False'}, {own})\n"
    )
    namespace = {"_defaults": defaults, "_spec": spec, "_loss": _loss, "_fast_loss": _fast_loss,
                 "_COMPILED": _loader.COMPILED, "_deprecated_table": _deprecated_table,
                 "_legacy_reduction": _legacy_reduction}
    exec(compile(source, f"<samplewt_ops.{spec.name}>", "exec"), namespace)
    fn = namespace[spec.name]
    fn.__module__ = __name__
    fn.__doc__ = spec.doc
    fn.__annotations__ = {**{p.name: p.annotation for p in params if p.annotation is not p.empty},
                          "return": "Tensor"}
    # The signature to show: without the catch-all for the deprecated name.
    fn.__signature__ = ref.replace(parameters=params)
    return fn


globals().update({name: _public_loss(spec) for name, spec in SPECS.items()})
