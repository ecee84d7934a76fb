"""samplewt_ops: fused sample-weighted and focal losses as PyTorch custom ops.

    >>> import samplewt_ops
    >>> loss = samplewt_ops.cross_entropy(logits, labels, class_w, sample_weight=w)

See README.md for the semantics of each weighting and the adaptive tables.
"""
from . import _loader, _ops  # noqa: F401  (loads and registers the kernels)
from . import reference
from ._loader import backend
from .functional import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    focal_loss,
    huber_loss,
    l1_loss,
    mse_loss,
    sigmoid_focal_loss,
)
from .modules import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    HuberLoss,
    L1Loss,
    MSELoss,
    SigmoidFocalLoss,
)
from .reference import set_validation
from .samplers import AdaptiveSampler, DistributedAdaptiveSampler
from .weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced, class_weights

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "focal_loss",
    "sigmoid_focal_loss",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "huber_loss",
    "CrossEntropyLoss",
    "FocalLoss",
    "SigmoidFocalLoss",
    "BCEWithLogitsLoss",
    "MSELoss",
    "L1Loss",
    "HuberLoss",
    "class_weights",
    "AdaptiveWeights",
    "LossEMA",
    "GradNormEMA",
    "SelfPaced",
    "OHEM",
    "GHM",
    "AdaptiveSampler",
    "DistributedAdaptiveSampler",
    "backend",
    "set_validation",
    "reference",
]
