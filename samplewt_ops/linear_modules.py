"""The modules of the fused linear losses (samplewt_ops.linear):
LinearCrossEntropyLoss, a drop-in for torch.nn.LinearCrossEntropyLoss, and
LinearFocalLoss. Each owns its head (torch's form) or takes it per call.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

from torch import Tensor, nn

from ._validation import ValueRuntimeError
from .linear import _check_options, linear_cross_entropy, linear_focal_loss

__all__ = ["LinearCrossEntropyLoss", "LinearFocalLoss"]


class _LinearLoss(nn.Module):
    """The two forms of the linear-loss modules.

    - Given ``in_features`` and ``num_classes`` (torch.nn.LinearCrossEntropyLoss's
      form), the module owns the head, ``self.linear`` (an nn.Linear with
      ``num_classes * prod(out_features)`` outputs), and runs
      ``forward(input, target, sample_weight=None, indices=None)``.
    - Without them, the head is an argument:
      ``forward(input, linear_weight, target, sample_weight=None, linear_bias=None, indices=None)``.
    """

    def _make_head(self, op, in_features, num_classes, out_features, bias, device, dtype,
                   class_weight, cw_name):
        self.num_classes, self.out_features = num_classes, tuple(out_features)
        if in_features is None and num_classes is None:
            if self.out_features or bias or device is not None or dtype is not None:
                raise TypeError(f"{op}: out_features, bias, device and dtype describe the module's "
                                f"own head; pass in_features and num_classes with them")
            self.linear = None
            return
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise TypeError(f"{op}: {name} must be a positive int, got {value!r}")
        if any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0
               for k in self.out_features):
            raise TypeError(f"{op}: out_features must be a tuple of positive ints, got {out_features!r}")
        if isinstance(class_weight, Tensor) and tuple(class_weight.shape) != (num_classes,):
            raise ValueRuntimeError(f"{op}: expected {cw_name} shape to be {(num_classes,)}, got "
                              f"{tuple(class_weight.shape)}")
        self.linear = nn.Linear(in_features, math.prod(self.out_features, start=num_classes),
                                bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, *args, **kwargs) -> Tensor:
        if self.linear is None:
            return self._forward_head(input, *args, **kwargs)
        return self._forward_own(input, *args, **kwargs)

    def _forward_own(self, input: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None,
                     indices: Optional[Tensor] = None) -> Tensor:
        head = (self.num_classes, *self.out_features)
        linear_weight = self.linear.weight.reshape(*head, self.linear.in_features)
        linear_bias = None if self.linear.bias is None else self.linear.bias.reshape(head)
        return self._forward_head(input, linear_weight, target, sample_weight, linear_bias, indices)

    def _forward_head(self, input: Tensor, linear_weight: Tensor, target: Tensor,
                      sample_weight: Optional[Tensor] = None, linear_bias: Optional[Tensor] = None,
                      indices: Optional[Tensor] = None) -> Tensor:
        kw = {} if self.table is None and indices is None else {"table": self.table, "indices": indices}
        return self._call(input, linear_weight, target, sample_weight=sample_weight,
                          linear_bias=linear_bias, **kw)

    def extra_repr(self) -> str:
        own = []
        if self.linear is not None:
            own = [f"in_features={self.linear.in_features}", f"num_classes={self.num_classes}",
                   f"out_features={self.out_features}", f"bias={self.linear.bias is not None}"]
        return ", ".join(own + [f"{k}={getattr(self, k)!r}" for k in self._scalars])


class LinearCrossEntropyLoss(_LinearLoss):
    """Module form of :func:`samplewt_ops.linear_cross_entropy`; a drop-in
    for ``torch.nn.LinearCrossEntropyLoss``.

    ``LinearCrossEntropyLoss(in_features, num_classes, out_features=(), bias=False, ...)``
    owns its head as torch's module does (``self.linear``, the same
    state_dict keys) and runs ``forward(input, target, sample_weight=None,
    indices=None)``. Without ``in_features`` and ``num_classes`` the head is
    passed in: ``forward(input, linear_weight, target, sample_weight=None,
    linear_bias=None, indices=None)``. ``weight`` is a buffer, ``table`` an
    adaptive weight table; the other keywords are linear_cross_entropy's.

    Example:
        >>> criterion = samplewt_ops.LinearCrossEntropyLoss(64, 1000)
        >>> loss = criterion(torch.randn(32, 64), torch.randint(0, 1000, (32,)),
        ...                  sample_weight=torch.rand(32))
    """

    _scalars = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "chunk_size")

    def __init__(self, in_features: Optional[int] = None, num_classes: Optional[int] = None, *,
                 out_features: tuple = (), bias: bool = False, device=None, dtype=None,
                 weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: Optional[float] = None, chunk_size: Optional[int] = None, table=None,
                 options=None):
        super().__init__()
        _check_options("samplewt_ops.LinearCrossEntropyLoss", options)
        # torch's module checks it here, the rest of its arguments per call.
        if isinstance(label_smoothing, numbers.Real) and not 0 <= label_smoothing <= 1:
            raise ValueRuntimeError(f"samplewt_ops.LinearCrossEntropyLoss: expected label_smoothing "
                                    f"to be in range [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self._make_head("samplewt_ops.LinearCrossEntropyLoss", in_features, num_classes,
                        out_features, bias, device, dtype, weight, "weight")
        self.table, self.options = table, options
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.chunk_size = z_loss, softcap, chunk_size

    def _call(self, input, linear_weight, target, **kw):
        return linear_cross_entropy(input, linear_weight, target, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, chunk_size=self.chunk_size,
                                    options=self.options, **kw)


class LinearFocalLoss(_LinearLoss):
    """Module form of :func:`samplewt_ops.linear_focal_loss`.

    The two forms of :class:`LinearCrossEntropyLoss`: with ``in_features`` and
    ``num_classes`` the module owns its head (``forward(input, target,
    sample_weight=None, indices=None)``); without, ``forward(input,
    linear_weight, target, sample_weight=None, linear_bias=None,
    indices=None)``. A tensor ``alpha`` is a buffer, ``table`` an adaptive
    weight table.

    Example:
        >>> criterion = samplewt_ops.LinearFocalLoss(64, 1000, gamma=2.0)
        >>> loss = criterion(torch.randn(32, 64), torch.randint(0, 1000, (32,)))
    """

    _scalars = ("gamma", "ignore_index", "reduction", "z_loss", "softcap", "chunk_size")

    def __init__(self, in_features: Optional[int] = None, num_classes: Optional[int] = None, *,
                 out_features: tuple = (), bias: bool = False, device=None, dtype=None,
                 gamma: float = 2.0, alpha=None, ignore_index: Optional[int] = None,
                 reduction: str = "mean", z_loss: float = 0.0, softcap: Optional[float] = None,
                 chunk_size: Optional[int] = None, table=None):
        super().__init__()
        if isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = alpha
        self._make_head("samplewt_ops.LinearFocalLoss", in_features, num_classes, out_features,
                        bias, device, dtype, alpha, "alpha")
        self.table = table
        self.gamma, self.ignore_index, self.reduction = gamma, ignore_index, reduction
        self.z_loss, self.softcap, self.chunk_size = z_loss, softcap, chunk_size

    def _call(self, input, linear_weight, target, **kw):
        return linear_focal_loss(input, linear_weight, target, gamma=self.gamma, alpha=self.alpha,
                                 ignore_index=self.ignore_index, reduction=self.reduction,
                                 z_loss=self.z_loss, softcap=self.softcap, chunk_size=self.chunk_size,
                                 **kw)
