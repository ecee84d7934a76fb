"""Static per-class weights computed from label frequencies."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .._validation import validation_enabled

__all__ = ["class_weights"]

_METHODS = ("inverse", "balanced", "effective")


def class_weights(
    targets: Union[torch.Tensor, Sequence[int]],
    num_classes: int,
    method: str = "inverse",
    beta: float = 0.999,
) -> torch.Tensor:
    r"""Per-class weights from the class counts of ``targets``.

    With :math:`N` the number of targets, :math:`K` = ``num_classes``,
    :math:`n_c` the number of targets equal to class :math:`c` and
    :math:`K_{present}` the number of classes with :math:`n_c > 0`:

    * ``"inverse"``:   :math:`w_c = N / n_c`
    * ``"balanced"``:  :math:`w_c = N / (K_{present}\,n_c)`, exactly
      scikit-learn's ``compute_class_weight("balanced", classes=<the classes
      present>, y=targets)``: the weights average to 1 over the samples,
      :math:`\frac1N \sum_i w_{y_i} = 1`, also when some classes never occur
    * ``"effective"``: the *effective number of samples* of Cui et al., CVPR 2019,
      "Class-Balanced Loss Based on Effective Number of Samples":
      :math:`w_c \propto (1-\beta) / (1-\beta^{n_c})`, normalised so that the
      weights sum to :math:`K` (as in the paper's code; absent classes count
      with weight 0, so the present classes' weights sum to :math:`K`)

    A class that does not occur (:math:`n_c = 0`) gets weight 0 in every method.

    The result can be passed as the ``weight`` argument of
    :func:`samplewt_ops.cross_entropy` or ``alpha`` of
    :func:`samplewt_ops.focal_loss`, and combines with any adaptive policy.

    Args:
        targets: integer class indices of any shape (a tensor or a sequence).
        num_classes: number of classes :math:`K` (> 0).
        method: ``"inverse"``, ``"balanced"`` or ``"effective"``.
        beta: :math:`\beta \in [0, 1)` for ``"effective"`` (ignored otherwise).

    Returns:
        A float32 tensor of shape ``(num_classes,)`` on the device of ``targets``.

    The counting is done on the device without a host synchronisation. The
    range check of ``targets`` is done on the CPU always and on an accelerator
    only in validation mode (``SAMPLEWT_VALIDATE=1``).

    Example::

        >>> cat, dog = 0, 1
        >>> class_weights(torch.tensor([cat, cat, dog, dog, dog]), 2)
        tensor([2.5000, 1.6667])

    Class 2 never occurs: "balanced" divides by the 3 classes present, not by
    ``num_classes`` = 4 (4 / (3 * 2), 4 / (3 * 1), 0, 4 / (3 * 1))::

        >>> class_weights([0, 0, 1, 3], 4, method="balanced")
        tensor([0.6667, 1.3333, 0.0000, 1.3333])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"class_weights: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes <= 0:
        raise ValueError(f"class_weights: num_classes must be > 0, got {num_classes}")
    if method not in _METHODS:
        raise ValueError(f"class_weights: unknown method {method!r}; expected one of {', '.join(map(repr, _METHODS))}")
    if method == "effective":
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0.0 <= float(beta) < 1.0):
            raise ValueError(f"class_weights: beta must be in [0, 1), got {beta!r}")
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
        if targets.numel() == 0:
            targets = targets.to(torch.int64)
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"class_weights: targets must be an integer tensor of class indices, got dtype {targets.dtype}")

    flat = targets.reshape(-1).to(torch.int64)
    check = flat.device.type == "cpu" or validation_enabled()
    if check and flat.numel() > 0 and not torch.compiler.is_compiling():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise IndexError(f"class_weights: targets contains class {bad}, outside [0, {num_classes - 1}]")

    # scatter_add_ with a static output size: no host sync (torch.bincount syncs on CUDA).
    counts = torch.zeros(num_classes, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    n_c = counts.to(torch.float64)
    present = counts > 0
    total = n_c.sum()

    if method == "inverse":
        w = total / n_c
    elif method == "balanced":
        # K_present, not num_classes: scikit-learn's "balanced" over the classes
        # that occur (stays a device tensor: no host sync).
        w = total / (present.sum().to(torch.float64) * n_c)
    else:
        raw = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(float(beta), dtype=torch.float64, device=flat.device), n_c))
        raw = torch.where(present, raw, torch.zeros_like(raw))
        s = raw.sum()
        w = raw * (num_classes / torch.where(s > 0, s, torch.ones_like(s)))
    w = torch.where(present, w, torch.zeros_like(w))
    return w.to(torch.float32)
