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

Every loss is one entry of the op spec (``samplewt_ops._spec``); its function
here has one line, into the shared path :func:`_loss`.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _loader, _ops
from ._spec import SPECS
from ._validation import check_loss_args, num_classes
from .weights import driver

__all__ = list(SPECS)

_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


def _kernel(input) -> bool:
    return isinstance(input, Tensor) and input.device.type in _loader.KERNEL_DEVICE_TYPES


def _needs_grad(input: Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


def renamed_table(kwargs: dict, owner: str):
    """Pops the deprecated ``weights=`` from the keywords of a call of
    `owner` (with a DeprecationWarning) and returns it: the table."""
    if "table" in kwargs:
        raise TypeError(f"{owner}() got both table= and weights=, the deprecated name of table=; "
                        "pass table= only")
    if not torch.compiler.is_compiling():
        warnings.warn(f"{owner}(weights=...) is deprecated: pass the adaptive weight table as table=",
                      DeprecationWarning, stacklevel=3)
    return kwargs.pop("weights")


def _public(fn):
    """A public loss, which also takes its table by the deprecated name ``weights=``."""

    @functools.wraps(fn)
    def loss(*args, **kwargs):
        if "weights" in kwargs:
            kwargs["table"] = renamed_table(kwargs, fn.__name__)
        return fn(*args, **kwargs)

    return loss


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
    """Row (softmax) ops: (N, C, d1..dk) and (C,) inputs folded to (rows, C)."""

    def __init__(self, input: Tensor, target: Tensor, prob: bool):
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
        if self.positions == 1:
            return stats
        s = stats.view(self.n, self.positions, 3)
        return torch.stack(
            (s[..., 0].sum(1), s[..., 1].square().sum(1).sqrt(), s[..., 2].mean(1)), dim=1
        )


def _run_kernel(call, op_args: dict, sample_weight, reduction: str, want_stats: bool, inplace_grad: bool):
    """Calls the compiled op; returns (loss, per-sample stats or None)."""
    spec = call.spec
    lay = _Rows(call.input, call.target, call.prob) if spec.rows else _Samples(call.input, call.target)
    args = dict(op_args, target=lay.t, sample_weight=lay.expand(sample_weight),
                reduction=_REDUCTION[reduction], compute_stats=want_stats)
    if inplace_grad and _needs_grad(lay.x):
        loss, stats = _ops.InplaceGradLoss.apply(lay.x, spec.name, args)
    else:
        loss, _, stats = _ops.call(spec.name, input=lay.x, compute_grad=_needs_grad(lay.x), **args)
    if reduction == "none":
        loss = lay.unfold(loss)
    return loss, (lay.per_sample_stats(stats) if want_stats else None)


def _loss(name: str, input, target, sample_weight, reduction, table, indices,
          inplace_grad: bool = False, **args) -> Tensor:
    """Checks one call of the loss `name`, then runs the compiled kernel of
    input's device, or the reference; with a table, through weights.driver."""
    kernel = _kernel(input)
    # Value checks (target range, sample_weight sign) run once: in the CPU
    # kernel's O(N) pre-pass, in the reference, or here for other kernels.
    call = check_loss_args(SPECS[name], input, target, sample_weight, reduction, args,
                           check_values=kernel and input.device.type != "cpu")
    if kernel:
        op_args = call.spec.op_args(call.args, input)

        def run(sw, red, want_stats):
            return _run_kernel(call, op_args, sw, red, want_stats, inplace_grad)
    else:
        def run(sw, red, want_stats):
            loss = call.spec.reference(input, target, sample_weight=sw, reduction=red, **call.args)
            return loss, (driver.reference_stats(call) if want_stats else None)

    if table is None:
        return run(call.sample_weight, call.reduction, False)[0]
    return driver.table_loss(call, run, table, indices)


# ---------------------------------------------------------------------------
# The losses


@_public
def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                  sample_weight: Optional[Tensor] = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, inplace_grad: bool = False,
                  table=None, indices: Optional[Tensor] = None) -> Tensor:
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
    return _loss("cross_entropy", input, target, sample_weight, reduction, table, indices, inplace_grad,
                 weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)


@_public
def focal_loss(input: Tensor, target: Tensor, *, gamma: float = 2.0, alpha=None,
               sample_weight: Optional[Tensor] = None, ignore_index: int = -100,
               reduction: str = "mean", inplace_grad: bool = False, table=None,
               indices: Optional[Tensor] = None) -> Tensor:
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
    return _loss("focal_loss", input, target, sample_weight, reduction, table, indices, inplace_grad,
                 gamma=gamma, alpha=alpha, ignore_index=ignore_index)


@_public
def sigmoid_focal_loss(input: Tensor, target: Tensor, *, alpha: float = 0.25, gamma: float = 2.0,
                       sample_weight: Optional[Tensor] = None, reduction: str = "none", table=None,
                       indices: Optional[Tensor] = None) -> Tensor:
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
    return _loss("sigmoid_focal_loss", input, target, sample_weight, reduction, table, indices,
                 alpha=alpha, gamma=gamma)


@_public
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                                     pos_weight: Optional[Tensor] = None,
                                     sample_weight: Optional[Tensor] = None, reduction: str = "mean",
                                     table=None, indices: Optional[Tensor] = None) -> Tensor:
    r"""BCE with logits and pos_weight, as F.binary_cross_entropy_with_logits.

    .. math:: \ell = w \left[(1-t)\,x + (1 + (pw - 1)\,t)\,\mathrm{softplus}(-x)\right]

    ``weight`` and ``pos_weight`` broadcast to input; the mean divides by the
    number of elements, each sample's count times its sample weight.

    Example:
        >>> x = torch.randn(32, 80, requires_grad=True)
        >>> t = (torch.rand(32, 80) < 0.1).float()
        >>> samplewt_ops.binary_cross_entropy_with_logits(x, t, pos_weight=torch.full((80,), 9.0))
    """
    return _loss("binary_cross_entropy_with_logits", input, target, sample_weight, reduction, table,
                 indices, weight=weight, pos_weight=pos_weight)


@_public
def mse_loss(input: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
             sample_weight: Optional[Tensor] = None, reduction: str = "mean", table=None,
             indices: Optional[Tensor] = None) -> Tensor:
    r"""Squared error :math:`\ell = weight\,(x - t)^2`, as F.mse_loss.

    The mean is :math:`\sum_i w_i \sum_j \ell_{ij} / \sum_i w_i D_i`, where
    :math:`D_i` is the element count of sample i, or :math:`\sum_j weight_{ij}`
    when ``weight`` is given (PyTorch's weighted mean).

    Example:
        >>> pred = torch.randn(100, 16, requires_grad=True)
        >>> samplewt_ops.mse_loss(pred, torch.randn(100, 16), sample_weight=torch.rand(100))
    """
    return _loss("mse_loss", input, target, sample_weight, reduction, table, indices, weight=weight)


@_public
def l1_loss(input: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
            sample_weight: Optional[Tensor] = None, reduction: str = "mean", table=None,
            indices: Optional[Tensor] = None) -> Tensor:
    r"""Absolute error :math:`\ell = weight\,|x - t|`, as F.l1_loss (mean as in :func:`mse_loss`).

    Example:
        >>> samplewt_ops.l1_loss(torch.randn(8, 3), torch.randn(8, 3), sample_weight=torch.rand(8))
    """
    return _loss("l1_loss", input, target, sample_weight, reduction, table, indices, weight=weight)


@_public
def huber_loss(input: Tensor, target: Tensor, *, delta: float = 1.0,
               weight: Optional[Tensor] = None, sample_weight: Optional[Tensor] = None,
               reduction: str = "mean", table=None, indices: Optional[Tensor] = None) -> Tensor:
    r"""Huber loss, as F.huber_loss.

    .. math:: \ell = weight \cdot \begin{cases} \tfrac12 d^2 & |d| < \delta \\
              \delta (|d| - \tfrac12 \delta) & \text{otherwise} \end{cases}, \quad d = x - t

    PyTorch's weighted mean divides by the element count, and so does this one.

    Example:
        >>> samplewt_ops.huber_loss(torch.randn(8, 3), torch.randn(8, 3), delta=0.5)
    """
    return _loss("huber_loss", input, target, sample_weight, reduction, table, indices,
                 delta=delta, weight=weight)
