"""The public losses of samplewt_ops.

Each function validates its arguments here, at the Python boundary, then runs
the fused compiled kernel for the input's device (loss and d(loss)/d(input) in
one pass over the logits), or the pure-PyTorch reference where no kernel was
built. With ``sample_weight=None`` every function equals its torch.nn (or
torchvision) counterpart.

Sample weights. ``sample_weight`` has shape (N,) along input's first
dimension, non-negative and finite; it multiplies each sample's loss.
``reduction="mean"`` divides by the sum of what PyTorch divides by, each
sample's share multiplied by its weight, so ``sample_weight=ones`` is exactly
PyTorch.

Adaptive weights. Every loss also takes ``weights=<AdaptiveWeights>`` and
``indices`` (the batch's dataset indices). The loss reads the batch's weights
from the table (the values from before this batch), multiplies them with any
explicit ``sample_weight``, and the same kernel pass returns the per-sample
loss, gradient norm and GHM magnitude that update the table.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from . import _loader, _ops, reference as ref
from .reference import (
    check_class_weight,
    check_delta,
    check_elementwise_target,
    check_elementwise_weight,
    check_focal_alpha,
    check_gamma,
    check_ignore_index,
    check_index_target,
    check_input,
    check_label_smoothing,
    check_prob_target,
    check_reduction,
    check_same_device,
    check_sample_weight,
    check_sigmoid_alpha,
    is_prob_target,
    num_classes,
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

_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


def _kernel(input) -> bool:
    # Anything but a tensor goes to the reference, whose checks name it.
    return isinstance(input, Tensor) and input.device.type in _loader.KERNEL_DEVICE_TYPES


def _values_checked_in_kernel(input: Tensor) -> bool:
    # The CPU kernels check target range and sample_weight values in their
    # O(N) pre-pass, raising the same errors; checking them here too would
    # cost extra passes. Elsewhere the Python checks (validation mode) stand.
    return input.device.type == "cpu" and _kernel(input)


def _needs_grad(input: Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


def _class_input(input) -> int:
    check_input(input, "input", min_dim=1)
    c = num_classes(input)
    if c < 1:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    return c


# ---------------------------------------------------------------------------
# Row (softmax) losses: fold (N, C, d1..dk) and (C,) into (rows, C)


class _Rows:
    """input folded to (rows, C), with the way back for per-row outputs."""

    def __init__(self, input: Tensor, target: Tensor, prob: bool, sample_weight: Optional[Tensor]):
        self.n = 1 if input.dim() == 1 else input.shape[0]
        self.out_shape = tuple(target.shape) if not prob else (
            () if input.dim() == 1 else (input.shape[0],) + tuple(input.shape[2:])
        )
        c = num_classes(input)
        if input.dim() == 1:
            self.x = input.unsqueeze(0)
            self.t = target.unsqueeze(0) if prob else target.reshape(1)
        elif input.dim() == 2:
            self.x, self.t = input, target
        else:
            # The class dimension moves last so that each row is contiguous.
            self.x = input.movedim(1, -1).reshape(-1, c)
            self.t = target.movedim(1, -1).reshape(-1, c) if prob else target.reshape(-1)
        self.positions = self.x.shape[0] // self.n if self.n else 1
        self.sample_weight = self.expand(sample_weight)

    def expand(self, per_sample: Optional[Tensor]) -> Optional[Tensor]:
        """A per-sample (N,) vector as one value per row."""
        if per_sample is None or self.positions == 1:
            return per_sample
        # expand + reshape, not repeat_interleave: no device sync on CUDA.
        return per_sample[:, None].expand(self.n, self.positions).reshape(-1)

    def unfold(self, per_row: Tensor) -> Tensor:
        return per_row.reshape(self.out_shape)

    def per_sample_stats(self, stats: Tensor) -> Tensor:
        """(rows, 3) statistics summed up per sample: loss, |grad|, mean g."""
        if self.positions == 1:
            return stats
        s = stats.view(self.n, self.positions, 3)
        return torch.stack(
            (s[..., 0].sum(1), s[..., 1].square().sum(1).sqrt(), s[..., 2].mean(1)), dim=1
        )


def _run_row_op(name: str, rows: _Rows, sample_weight, reduction: int, stats: bool,
                inplace: bool, args: tuple):
    """Calls the compiled row op; returns (loss, per-sample stats or None)."""
    op = getattr(torch.ops.samplewt_ops, name)
    sw = rows.expand(sample_weight)
    if inplace and _needs_grad(rows.x):
        inplace_op = getattr(torch.ops.samplewt_ops, name + "_")
        loss, st = _ops.InplaceGradLoss.apply(
            rows.x, inplace_op, rows.t, args[0], sw, *args[1:], reduction, stats
        )
    else:
        loss, _, st = op(rows.x, rows.t, args[0], sw, *args[1:], reduction, _needs_grad(rows.x), stats)
    if reduction == 0:
        loss = rows.unfold(loss)
    return loss, (rows.per_sample_stats(st) if stats else None)


# ---------------------------------------------------------------------------
# Adaptive weight tables


def _reference_stats(fn: Callable, input: Tensor, target: Tensor, softmax: bool, **kwargs) -> Tensor:
    """Per-sample (loss, |grad|, g) with plain autograd, for the reference path."""
    n = 1 if (softmax and input.dim() == 1) else input.shape[0]
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        per = fn(x, target, reduction="none", **kwargs)
        (g,) = torch.autograd.grad(per.sum(), x)
    loss = per.detach().float().reshape(n, -1).sum(1)
    if softmax:
        g_norm = g.float().reshape(n, -1).norm(dim=1)
        c = num_classes(input)
        logp = torch.log_softmax(input.detach().float(), dim=0 if input.dim() == 1 else 1)
        if is_prob_target(input, target):
            ghm = 0.5 * (logp.exp() - target.float()).abs().sum(0 if input.dim() == 1 else 1)
        else:
            t = target.long().clamp(0, c - 1)
            p_y = logp.unsqueeze(0).gather(1, t.reshape(1, -1)) if input.dim() == 1 else logp.gather(1, t.unsqueeze(1))
            ghm = 1.0 - p_y.exp().squeeze(1)
        ghm = ghm.reshape(n, -1).mean(1)
    else:
        g_norm = g.float().reshape(n, -1).norm(dim=1)
        ghm = (torch.sigmoid(input.detach().float()) - target.float()).abs().reshape(n, -1).mean(1)
    return torch.stack((loss, g_norm, ghm), dim=1)


def _adaptive(name: str, run: Callable, weights, indices, sample_weight, reduction: str,
              batch: int, device, share: Callable[[], Tensor], valid: Optional[Tensor] = None):
    """Drive `run(sample_weight, reduction, want_stats) -> (loss, stats)` with a table.

    History policies give their weights before the pass. Per-batch policies
    (OHEM, GHM) need this batch's losses: the pass runs unreduced, and their
    weights then scale each sample's loss and, through backward, its gradient.
    `valid` marks the samples that count (not wholly ignore_index); the others
    leave the table unchanged.
    """
    weights.check_loss(name)
    indices = weights.check_indices(indices, batch, device)
    if not weights.policy.per_batch:
        tw = weights.batch_weights(indices, valid=valid)
        sw = tw if sample_weight is None else tw * sample_weight.to(tw.dtype)
        loss, stats = run(sw.to(device), reduction, True)
        stats = stats.detach()
        weights.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=valid)
        return loss
    per, stats = run(sample_weight, "none", True)
    stats = stats.detach()
    bw = weights.batch_weights(indices, loss=stats[:, 0], g=stats[:, 2], valid=valid).to(per.dtype)
    weights.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=valid)
    bw_b = bw.reshape((batch,) + (1,) * (per.dim() - 1)) if per.dim() > 0 else bw.reshape(())
    weighted = per * bw_b
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    sw = torch.ones_like(bw) if sample_weight is None else sample_weight.to(bw.dtype)
    return total / (bw * sw * share().to(bw.dtype)).sum()


def _row_loss(name: str, input, target, prob: bool, class_weight, sample_weight, reduction: str,
              inplace_grad: bool, weights, indices, args: tuple, ref_fn: Callable, ref_kwargs: dict,
              ignore_index: int):
    use_kernel = _kernel(input)

    def run(sw, red, want_stats):
        if use_kernel:
            rows = _Rows(input, target, prob, None)
            return _run_row_op(name, rows, sw, _REDUCTION[red], want_stats, inplace_grad,
                               (class_weight,) + args)
        loss = ref_fn(input, target, sample_weight=sw, reduction=red, **ref_kwargs)
        stats = _reference_stats(ref_fn, input, target, True, **ref_kwargs) if want_stats else None
        return loss, stats

    if weights is None:
        return run(sample_weight, reduction, False)[0]
    batch = 1 if input.dim() == 1 else input.shape[0]

    def share() -> Tensor:
        # Per sample: what PyTorch's mean divides by (see module docstring).
        rows = _Rows(input, target, prob, None)
        if prob:
            return torch.full((batch,), float(rows.positions), device=input.device)
        valid = rows.t != ignore_index
        if name == "cross_entropy" and class_weight is not None:
            per_row = torch.where(valid, class_weight.float()[rows.t.clamp(0, rows.x.shape[1] - 1)], 0.0)
        else:
            per_row = valid.float()
        return per_row.view(batch, -1).sum(1)

    valid = None
    if not prob:
        valid = (target.reshape(batch, -1) != ignore_index).any(1)
    return _adaptive(name, run, weights, indices, sample_weight, reduction, batch, input.device, share,
                     valid)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    sample_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    inplace_grad: bool = False,
    weights=None,
    indices: Optional[Tensor] = None,
) -> Tensor:
    r"""Cross-entropy with class weights and per-sample weights.

    For class-index targets, with class weights :math:`cw`, label smoothing
    :math:`\varepsilon` and :math:`\log p = \mathrm{log\_softmax}(x)`:

    .. math::
        \ell_i = (1-\varepsilon)\, cw_{y_i} (-\log p_{i,y_i})
                 + \tfrac{\varepsilon}{C} \sum_c cw_c (-\log p_{i,c})

    and ``reduction="mean"`` gives :math:`\sum_i w_i \ell_i / \sum_i w_i cw_{y_i}`
    over the samples that are not ``ignore_index``. Class-probability targets
    (input's shape) give :math:`\ell_i = -\sum_c cw_c q'_{ic} \log p_{ic}` and a
    mean over :math:`\sum_i w_i`. Input may be (N, C), (N, C, d1..dk) or (C,).

    ``inplace_grad=True`` writes d(loss)/d(input) into ``input``'s own memory,
    so forward plus backward allocates no N x C buffer: the logits are
    consumed (overwritten) and backward may run only once.

    Example:
        >>> x = torch.randn(4, 10, requires_grad=True)
        >>> y = torch.tensor([1, 0, 9, 3])
        >>> loss = samplewt_ops.cross_entropy(x, y, sample_weight=torch.tensor([1., 2., 0., 1.]))
        >>> loss.backward()
    """
    if not _kernel(input) and weights is None:
        return ref.cross_entropy(input, target, weight, sample_weight=sample_weight,
                                 ignore_index=ignore_index, reduction=reduction,
                                 label_smoothing=label_smoothing)
    reduction = check_reduction(reduction)
    c = _class_input(input)
    check_same_device(input=input, target=target, weight=weight, sample_weight=sample_weight)
    ignore_index = check_ignore_index(ignore_index)
    label_smoothing = check_label_smoothing(label_smoothing)
    prob = is_prob_target(input, target)
    if prob:
        check_prob_target(target, input)
        if ignore_index >= 0:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability targets"
            )
    else:
        check_index_target(target, input, ignore_index=ignore_index,
                           check_values=not _values_checked_in_kernel(input))
    weight = check_class_weight(weight, c)
    sample_weight = check_sample_weight(sample_weight, input, unbatched=input.dim() == 1,
                                        check_values=not _values_checked_in_kernel(input))
    return _row_loss(
        "cross_entropy", input, target, prob, weight, sample_weight, reduction, inplace_grad,
        weights, indices, (ignore_index, label_smoothing), ref.cross_entropy,
        dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing),
        ignore_index,
    )


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha=None,
    sample_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    inplace_grad: bool = False,
    weights=None,
    indices: Optional[Tensor] = None,
) -> Tensor:
    r"""Softmax (multi-class) focal loss of Lin et al. 2017.

    .. math:: \ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^{\gamma} \log p_{i,y_i}

    ``alpha`` is None (1), a float for every class, or a tensor (C,).
    ``reduction="mean"`` gives :math:`\sum_i w_i \ell_i / \sum_i w_i` over the
    samples that are not ``ignore_index``. With gamma=0 and alpha=None this is
    cross_entropy. ``inplace_grad`` as in :func:`cross_entropy`.

    Example:
        >>> x = torch.randn(8, 5, requires_grad=True)
        >>> y = torch.randint(0, 5, (8,))
        >>> samplewt_ops.focal_loss(x, y, gamma=2.0, alpha=0.25).backward()
    """
    if not _kernel(input) and weights is None:
        return ref.focal_loss(input, target, gamma=gamma, alpha=alpha, sample_weight=sample_weight,
                              ignore_index=ignore_index, reduction=reduction)
    reduction = check_reduction(reduction)
    c = _class_input(input)
    check_same_device(input=input, target=target, sample_weight=sample_weight,
                      alpha=alpha if isinstance(alpha, Tensor) else None)
    ignore_index = check_ignore_index(ignore_index)
    gamma = check_gamma(gamma)
    check_index_target(target, input, ignore_index=ignore_index,
                       check_values=not _values_checked_in_kernel(input))
    alpha = check_focal_alpha(alpha, c)
    if alpha is not None and not isinstance(alpha, Tensor):
        alpha = torch.full((c,), alpha, dtype=torch.float32, device=input.device)
    sample_weight = check_sample_weight(sample_weight, input, unbatched=input.dim() == 1,
                                        check_values=not _values_checked_in_kernel(input))
    return _row_loss(
        "focal_loss", input, target, False, alpha, sample_weight, reduction, inplace_grad,
        weights, indices, (gamma, ignore_index), ref.focal_loss,
        dict(gamma=gamma, alpha=alpha, ignore_index=ignore_index), ignore_index,
    )


# ---------------------------------------------------------------------------
# Element-wise losses


def _elem_loss(name: str, input, target, sample_weight, reduction: str, weights, indices,
               before: tuple, after: tuple, ref_fn: Callable, ref_kwargs: dict, weight=None,
               mean_over_weight: bool = False):
    # The op's arguments are (input, target, *before, sample_weight, *after, ...).
    use_kernel = _kernel(input)
    op = getattr(torch.ops.samplewt_ops, name)

    def run(sw, red, want_stats):
        if use_kernel:
            loss, _, stats = op(input, target, *before, sw, *after, _REDUCTION[red],
                                _needs_grad(input), want_stats)
            return loss, (stats if want_stats else None)
        loss = ref_fn(input, target, sample_weight=sw, reduction=red, **ref_kwargs)
        stats = _reference_stats(ref_fn, input, target, False, **ref_kwargs) if want_stats else None
        return loss, stats

    if weights is None:
        return run(sample_weight, reduction, False)[0]
    batch = input.shape[0] if input.dim() > 0 else 1

    def share() -> Tensor:
        if mean_over_weight and weight is not None:
            return weight.float().reshape(batch, -1).sum(1)
        per = input.numel() // batch if batch else 0
        return torch.full((batch,), float(per), device=input.device)

    return _adaptive(name, run, weights, indices, sample_weight, reduction, batch, input.device, share)


def _elem_checks(input, target, sample_weight, reduction, **tensors):
    reduction = check_reduction(reduction)
    check_input(input, "input")
    check_same_device(input=input, target=target, sample_weight=sample_weight, **tensors)
    check_elementwise_target(target, input)
    sample_weight = check_sample_weight(sample_weight, input,
                                        check_values=not _values_checked_in_kernel(input))
    return reduction, sample_weight


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "none",
    weights=None,
    indices: Optional[Tensor] = None,
) -> Tensor:
    r"""Sigmoid focal loss, as torchvision.ops.sigmoid_focal_loss.

    With :math:`p = \sigma(x)`, :math:`p_t = p t + (1-p)(1-t)` and
    :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)`:

    .. math:: \ell = \alpha_t \, \mathrm{BCE}(x, t) \, (1 - p_t)^{\gamma}

    ``alpha < 0`` turns the balance term off. The default reduction is "none".

    Example:
        >>> x = torch.randn(16, 80, requires_grad=True)
        >>> t = (torch.rand(16, 80) < 0.1).float()
        >>> samplewt_ops.sigmoid_focal_loss(x, t, reduction="mean").backward()
    """
    if not _kernel(input) and weights is None:
        return ref.sigmoid_focal_loss(input, target, alpha=alpha, gamma=gamma,
                                      sample_weight=sample_weight, reduction=reduction)
    reduction, sample_weight = _elem_checks(input, target, sample_weight, reduction)
    gamma = check_gamma(gamma)
    a = check_sigmoid_alpha(alpha)
    a = -1.0 if a is None else a
    return _elem_loss("sigmoid_focal_loss", input, target, sample_weight, reduction, weights,
                      indices, (), (a, gamma), ref.sigmoid_focal_loss, dict(alpha=alpha, gamma=gamma))


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    pos_weight: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    reduction: str = "mean",
    weights=None,
    indices: Optional[Tensor] = None,
) -> Tensor:
    r"""BCE with logits and pos_weight, as F.binary_cross_entropy_with_logits.

    .. math:: \ell = w \left[(1-t)\,x + (1 + (pw - 1)\,t)\,\mathrm{softplus}(-x)\right]

    ``weight`` and ``pos_weight`` broadcast to input; the mean divides by the
    number of elements, each sample's count times its sample weight.

    Example:
        >>> x = torch.randn(32, 80, requires_grad=True)
        >>> t = (torch.rand(32, 80) < 0.1).float()
        >>> samplewt_ops.binary_cross_entropy_with_logits(x, t, pos_weight=torch.full((80,), 9.0))
    """
    if not _kernel(input) and weights is None:
        return ref.binary_cross_entropy_with_logits(input, target, weight, pos_weight=pos_weight,
                                                    sample_weight=sample_weight, reduction=reduction)
    reduction, sample_weight = _elem_checks(input, target, sample_weight, reduction,
                                            weight=weight, pos_weight=pos_weight)
    check_elementwise_weight(weight, input, name="weight", broadcast=True)
    check_elementwise_weight(pos_weight, input, name="pos_weight", broadcast=True)
    return _elem_loss("binary_cross_entropy_with_logits", input, target, sample_weight, reduction,
                      weights, indices, (weight, pos_weight), (), ref.binary_cross_entropy_with_logits,
                      dict(weight=weight, pos_weight=pos_weight))


def _regression(name, input, target, weight, sample_weight, reduction, weights, indices,
                extra: tuple, ref_kwargs: dict):
    ref_fn = getattr(ref, name)
    if not _kernel(input) and weights is None:
        return ref_fn(input, target, weight=weight, sample_weight=sample_weight, reduction=reduction,
                      **ref_kwargs)
    reduction, sample_weight = _elem_checks(input, target, sample_weight, reduction, weight=weight)
    check_elementwise_weight(weight, input, name="weight")
    # PyTorch's mse/l1 divide a weighted mean by sum(weight); huber by numel.
    return _elem_loss(name, input, target, sample_weight, reduction, weights, indices,
                      (weight,), extra, ref_fn, dict(weight=weight, **ref_kwargs), weight=weight,
                      mean_over_weight=name != "huber_loss")


def mse_loss(input: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
             sample_weight: Optional[Tensor] = None, reduction: str = "mean", weights=None,
             indices: Optional[Tensor] = None) -> Tensor:
    r"""Squared error :math:`\ell = weight\,(x - t)^2`, as F.mse_loss.

    The mean is :math:`\sum_i w_i \sum_j \ell_{ij} / \sum_i w_i D_i`, where
    :math:`D_i` is the element count of sample i, or :math:`\sum_j weight_{ij}`
    when ``weight`` is given (PyTorch's weighted mean).

    Example:
        >>> pred = torch.randn(100, 16, requires_grad=True)
        >>> samplewt_ops.mse_loss(pred, torch.randn(100, 16), sample_weight=torch.rand(100))
    """
    return _regression("mse_loss", input, target, weight, sample_weight, reduction, weights,
                       indices, (), {})


def l1_loss(input: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
            sample_weight: Optional[Tensor] = None, reduction: str = "mean", weights=None,
            indices: Optional[Tensor] = None) -> Tensor:
    r"""Absolute error :math:`\ell = weight\,|x - t|`, as F.l1_loss (mean as in :func:`mse_loss`).

    Example:
        >>> samplewt_ops.l1_loss(torch.randn(8, 3), torch.randn(8, 3), sample_weight=torch.rand(8))
    """
    return _regression("l1_loss", input, target, weight, sample_weight, reduction, weights,
                       indices, (), {})


def huber_loss(input: Tensor, target: Tensor, *, delta: float = 1.0,
               weight: Optional[Tensor] = None, sample_weight: Optional[Tensor] = None,
               reduction: str = "mean", weights=None, indices: Optional[Tensor] = None) -> Tensor:
    r"""Huber loss, as F.huber_loss.

    .. math:: \ell = weight \cdot \begin{cases} \tfrac12 d^2 & |d| < \delta \\
              \delta (|d| - \tfrac12 \delta) & \text{otherwise} \end{cases}, \quad d = x - t

    PyTorch's weighted mean divides by the element count, and so does this one.

    Example:
        >>> samplewt_ops.huber_loss(torch.randn(8, 3), torch.randn(8, 3), delta=0.5)
    """
    delta_v = check_delta(delta)
    return _regression("huber_loss", input, target, weight, sample_weight, reduction, weights,
                       indices, (delta_v,), dict(delta=delta))
