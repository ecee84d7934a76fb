"""nn.Module wrappers over samplewt_ops.functional.

Each constructor takes its functional's keyword arguments; forward takes
(input, target, sample_weight=None, indices=None). Tensor arguments (class
weight, alpha, pos_weight) are registered as buffers so that .to() moves them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F


class _WeightedLoss(nn.Module):
    _fn = None
    _buffers_kw: tuple = ()

    def __init__(self, **kwargs):
        super().__init__()
        self._kwargs = {}
        for key, value in kwargs.items():
            if key in self._buffers_kw and isinstance(value, Tensor):
                self.register_buffer(key, value)
            else:
                self._kwargs[key] = value

    def _all_kwargs(self) -> dict:
        kw = dict(self._kwargs)
        for key in self._buffers_kw:
            if key in self._buffers:
                kw[key] = self._buffers[key]
        return kw

    def forward(self, input: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None,
                indices: Optional[Tensor] = None) -> Tensor:
        kw = self._all_kwargs()
        if kw.get("weights") is not None or indices is not None:
            kw["indices"] = indices
        return type(self)._fn(input, target, sample_weight=sample_weight, **kw)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._kwargs.items() if v is not None)


class CrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.cross_entropy`.

    Example:
        >>> loss_fn = CrossEntropyLoss(weight=class_weights, label_smoothing=0.1)
        >>> loss = loss_fn(logits, labels, sample_weight=w)
    """

    _fn = staticmethod(F.cross_entropy)
    _buffers_kw = ("weight",)

    def __init__(self, weight: Optional[Tensor] = None, *, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, inplace_grad: bool = False,
                 weights=None):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, inplace_grad=inplace_grad, weights=weights)


class FocalLoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.focal_loss` (softmax focal loss)."""

    _fn = staticmethod(F.focal_loss)
    _buffers_kw = ("alpha",)

    def __init__(self, *, gamma: float = 2.0, alpha=None, ignore_index: int = -100,
                 reduction: str = "mean", inplace_grad: bool = False, weights=None):
        super().__init__(gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
                         inplace_grad=inplace_grad, weights=weights)


class SigmoidFocalLoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.sigmoid_focal_loss`."""

    _fn = staticmethod(F.sigmoid_focal_loss)

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none",
                 weights=None):
        super().__init__(alpha=alpha, gamma=gamma, reduction=reduction, weights=weights)


class BCEWithLogitsLoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.binary_cross_entropy_with_logits`."""

    _fn = staticmethod(F.binary_cross_entropy_with_logits)
    _buffers_kw = ("weight", "pos_weight")

    def __init__(self, weight: Optional[Tensor] = None, *, pos_weight: Optional[Tensor] = None,
                 reduction: str = "mean", weights=None):
        super().__init__(weight=weight, pos_weight=pos_weight, reduction=reduction, weights=weights)


class MSELoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.mse_loss`."""

    _fn = staticmethod(F.mse_loss)
    _buffers_kw = ("weight",)

    def __init__(self, *, weight: Optional[Tensor] = None, reduction: str = "mean", weights=None):
        super().__init__(weight=weight, reduction=reduction, weights=weights)


class L1Loss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.l1_loss`."""

    _fn = staticmethod(F.l1_loss)
    _buffers_kw = ("weight",)

    def __init__(self, *, weight: Optional[Tensor] = None, reduction: str = "mean", weights=None):
        super().__init__(weight=weight, reduction=reduction, weights=weights)


class HuberLoss(_WeightedLoss):
    """Module form of :func:`samplewt_ops.huber_loss`."""

    _fn = staticmethod(F.huber_loss)
    _buffers_kw = ("weight",)

    def __init__(self, *, delta: float = 1.0, weight: Optional[Tensor] = None,
                 reduction: str = "mean", weights=None):
        super().__init__(delta=delta, weight=weight, reduction=reduction, weights=weights)
