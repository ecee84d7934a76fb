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
Every loss checks its arguments with ``samplewt_ops._validation``, in the
same order as the public losses, so a bad argument raises the same error
here as there.  Value checks (target class range, sample_weight sign and
finiteness) run on CPU tensors always and on other devices only in
validation mode (:func:`samplewt_ops.set_validation`, ``SAMPLEWT_VALIDATE=1``);
when one is skipped, an out-of-range target class makes that sample's loss
NaN instead of reading out of bounds.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validation
from ._validation import (
    broadcast_regression,
    check_class_input,
    check_class_target,
    check_class_weight,
    check_delta,
    check_elementwise_target,
    check_elementwise_weight,
    check_focal_alpha,
    check_gamma,
    check_ignore_index,
    check_input,
    check_label_smoothing,
    check_reduction,
    check_same_device,
    check_sample_weight,
    check_sigmoid_alpha,
    check_softcap,
    check_tensor,
    check_z_loss,
)

__all__ = [
    "cross_entropy",
    "focal_loss",
    "sigmoid_focal_loss",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "huber_loss",
]

# The validation helpers this module used to export; they live in
# samplewt_ops._validation now (set_validation also as samplewt_ops.set_validation).
_MOVED = frozenset({
    "REDUCTIONS", "FLOAT_DTYPES", "set_validation", "validation_enabled", "check_reduction",
    "check_tensor", "check_input", "check_same_device", "num_classes", "check_class_input",
    "is_prob_target", "check_index_target", "check_prob_target", "check_class_weight",
    "check_sample_weight", "check_label_smoothing", "check_ignore_index", "check_gamma",
    "check_delta", "check_focal_alpha", "check_sigmoid_alpha", "check_elementwise_target",
    "check_elementwise_weight",
})


def __getattr__(name: str):
    if name == "acc_dtype":
        _deprecated(name, "is private now")
        return _acc_dtype
    if name in _MOVED:
        _deprecated(name, "moved to samplewt_ops._validation")
        return getattr(_validation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _deprecated(name: str, why: str) -> None:
    warnings.warn(f"samplewt_ops.reference.{name} {why}; the reference holds only the losses",
                  DeprecationWarning, stacklevel=3)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def _masked(loss: Tensor, valid: Tensor, out_of_range: Tensor) -> Tensor:
    """``loss`` with 0 at ignored positions and NaN at out-of-range targets."""
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return torch.where(out_of_range, torch.full_like(loss, float("nan")), loss)


# ---------------------------------------------------------------------------
# Softmax losses


def _rows_start(input, target, reduction):
    """The checks before a softmax loss's scalar arguments: (reduction, C)."""
    reduction = check_reduction(reduction)
    n_classes = check_class_input(input)
    check_tensor(target, "target")
    return reduction, n_classes


def _rows_end(input, target, sample_weight, ignore_index, allow_prob):
    """The checks after a softmax loss's class tensors: (sample_weight,
    target, prob), a (1,) target of a (C,) input as the 0-d one it means."""
    sample_weight = check_sample_weight(sample_weight, input, unbatched=input.dim() == 1)
    prob = check_class_target(target, input, ignore_index=ignore_index, allow_prob=allow_prob)
    if not prob and _validation.unbatched_index_target(input, target):
        target = target.reshape(())
    return sample_weight, target, prob


def _log_softmax(input: Tensor, target: Tensor, softcap: Optional[float] = None,
                 z_loss: float = 0.0):
    """(accumulation dtype, log p over the class dimension, target, lse**2
    times z_loss or None), batched; the logits softcapped first when asked."""
    acc = _acc_dtype(input.dtype)
    x = input.to(acc)
    if input.dim() == 1:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    z = z_loss * torch.logsumexp(x, dim=1).square() if z_loss else None
    return acc, torch.log_softmax(x, dim=1), target, z


def _reduce_rows(loss: Tensor, count, sample_weight, reduction: str, input: Tensor) -> Tensor:
    out = _reduce(loss, count, sample_weight, reduction)
    if input.dim() == 1 and reduction == "none":
        out = out.squeeze(0)
    return out.to(input.dtype)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    sample_weight: Optional[Tensor] = None,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
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

    ``softcap`` (Gemma 2) first maps the logits to
    ``softcap * tanh(input / softcap)``; ``z_loss`` (PaLM) adds
    ``z_loss * cw[y_i] * lse_i**2`` to each ``l_i``, lse_i the log-sum-exp of
    its (capped) logits (``z_loss * lse_i**2`` for probability targets), so it
    is weighted and reduced like the cross-entropy term.

    ``sample_weight=None`` (and no z_loss or softcap) is exactly
    ``torch.nn.functional.cross_entropy``.

    Example::

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> y = torch.tensor([0, 2])
        >>> cross_entropy(x, y, sample_weight=torch.tensor([1.0, 3.0]))
        tensor(1.2060)
    """
    reduction, n_classes = _rows_start(input, target, reduction)
    eps = check_label_smoothing(label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    z_loss, softcap = check_z_loss(z_loss), check_softcap(softcap)
    check_same_device(input=input, target=target, weight=weight, sample_weight=sample_weight)
    weight = check_class_weight(weight, n_classes, "weight")
    sample_weight, target, prob = _rows_end(input, target, sample_weight, ignore_index,
                                            allow_prob=True)

    acc, logp, t, z = _log_softmax(input, target, softcap, z_loss)
    cw = cw_b = None
    if weight is not None:
        cw = weight.to(acc)
        cw_b = cw.reshape((1, n_classes) + (1,) * (logp.dim() - 2))

    if prob:
        q = t.to(acc)
        if eps > 0.0:
            q = q * (1.0 - eps) + eps / n_classes
        prod = logp * q
        if cw_b is not None:
            prod = prod * cw_b
        loss = -prod.sum(dim=1)
        if z is not None:
            loss = loss + z
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
        if z is not None:
            loss = loss + cw_y * z
        loss = _masked(loss, valid, out_of_range)
        count = torch.where(valid, cw_y, torch.zeros_like(loss))
    return _reduce_rows(loss, count, sample_weight, reduction, input)


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: Union[None, float, Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
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
    ``softcap`` and ``z_loss`` as in :func:`cross_entropy`, the z term
    weighted by ``alpha_{y_i}``.

    Example::

        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> y = torch.tensor([0, 2])
        >>> focal_loss(x, y, gamma=2.0, sample_weight=torch.tensor([1.0, 3.0]))
        tensor(0.7237)
    """
    reduction, n_classes = _rows_start(input, target, reduction)
    gamma = check_gamma(gamma)
    ignore_index = check_ignore_index(ignore_index)
    z_loss, softcap = check_z_loss(z_loss), check_softcap(softcap)
    check_same_device(input=input, target=target, alpha=alpha, sample_weight=sample_weight)
    alpha = check_focal_alpha(alpha, n_classes)
    sample_weight, target, _ = _rows_end(input, target, sample_weight, ignore_index,
                                         allow_prob=False)

    acc, logp, t, z = _log_softmax(input, target, softcap, z_loss)
    lp_y, safe, valid, out_of_range = _gather_targets(logp, t, ignore_index)
    one_minus_p = -torch.expm1(lp_y)
    loss = -_unit_pow(one_minus_p, gamma) * lp_y
    if z is not None:
        loss = loss + z
    if isinstance(alpha, Tensor):
        loss = loss * alpha.to(acc)[safe]
    elif alpha is not None:
        loss = loss * alpha
    return _reduce_rows(_masked(loss, valid, out_of_range), valid.to(acc), sample_weight, reduction,
                        input)


# ---------------------------------------------------------------------------
# Element-wise losses


def _elementwise_start(input, target, reduction, complex=False, op="") -> str:
    """The checks before a loss's scalar arguments."""
    reduction = check_reduction(reduction, op)
    check_input(input, "input", complex=complex)
    check_tensor(target, "target")
    return reduction


def _elementwise_end(input, target, sample_weight, broadcast=False, complex=False, **weights):
    """The checks after a loss's scalar arguments; returns sample_weight."""
    check_same_device(input=input, target=target, **weights, sample_weight=sample_weight)
    for name, weight in weights.items():
        check_elementwise_weight(weight, input, name=name, broadcast=broadcast)
    sample_weight = check_sample_weight(sample_weight, input)
    check_elementwise_target(target, input, complex=complex)
    return sample_weight


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    alpha: Optional[float] = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    sample_weight: Optional[Tensor] = None,
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
    reduction = _elementwise_start(input, target, reduction, op="sigmoid_focal_loss")
    gamma = check_gamma(gamma)
    alpha = check_sigmoid_alpha(alpha)
    sample_weight = _elementwise_end(input, target, sample_weight)
    acc = _acc_dtype(input.dtype)
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
    reduction: str = "mean",
    pos_weight: Optional[Tensor] = None,
    *,
    sample_weight: Optional[Tensor] = None,
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
    reduction = _elementwise_start(input, target, reduction)
    sample_weight = _elementwise_end(input, target, sample_weight, broadcast=True,
                                     weight=weight, pos_weight=pos_weight)
    acc = _acc_dtype(input.dtype)
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


def _regression(formula, input, target, weight, sample_weight, reduction, mean_over_weight,
                complex=False):
    """The element-wise `formula` of d = input - target, times weight; PyTorch's
    "mean" of mse and l1 with a weight divides by its sum (mean_over_weight).
    As torch's, a target of another shape is broadcast with input, and an
    integer one read in input's dtype."""
    input, target = broadcast_regression(input, target, complex=complex)
    sample_weight = _elementwise_end(input, target, sample_weight, complex=complex, weight=weight)
    acc, out = _acc_dtype(input.dtype), input.dtype
    if input.is_complex() or target.is_complex():  # l1_loss: |x - t| is real
        acc = torch.promote_types(torch.promote_types(input.dtype, target.dtype), torch.complex64)
        out = torch.promote_types(input.dtype, target.dtype).to_real()
    loss = formula(input.to(acc) - target.to(acc))
    count = None
    if weight is not None:
        w = weight.to(acc)
        loss = loss * w
        if mean_over_weight:
            count = w.expand_as(loss)
    return _reduce(loss, count, sample_weight, reduction).to(out)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean", weight: Optional[Tensor] = None,
             *, sample_weight: Optional[Tensor] = None) -> Tensor:
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
    reduction = _elementwise_start(input, target, reduction)
    return _regression(lambda d: d * d, input, target, weight, sample_weight, reduction, True)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean", weight: Optional[Tensor] = None,
            *, sample_weight: Optional[Tensor] = None) -> Tensor:
    r"""Absolute error ``l = v * |x - t|`` (``v`` = weight, input's shape).

    Reductions as :func:`mse_loss` ("mean" with weight divides by
    ``sum v``, as PyTorch).  With ``weight`` and sample weights ``w = (3, 1)``
    on ``x = [[1, 2], [3, 4]]``, ``t = 0``, ``v = [[1, 0], [1, 1]]``:
    ``(3 * 1 + 1 * 7) / (3 * 1 + 1 * 2) = 2``.

    Example::

        >>> x, v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> l1_loss(x, torch.zeros(2, 2), weight=v, sample_weight=torch.tensor([3.0, 1.0]))
        tensor(2.)
    """
    reduction = _elementwise_start(input, target, reduction, complex=True)
    return _regression(torch.abs, input, target, weight, sample_weight, reduction, True, complex=True)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Optional[Tensor] = None, *, sample_weight: Optional[Tensor] = None) -> Tensor:
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
    reduction = _elementwise_start(input, target, reduction)
    delta = check_delta(delta)

    def huber(d):
        ad = d.abs()
        return torch.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))

    # PyTorch's weighted "mean" divides by the element count.
    return _regression(huber, input, target, weight, sample_weight, reduction, False)
