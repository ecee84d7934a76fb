"""samplewt_ops: fused sample-weighted and focal losses as PyTorch custom ops.

    >>> import samplewt_ops
    >>> loss = samplewt_ops.cross_entropy(logits, labels, class_w, sample_weight=w)

See README.md for the semantics of each weighting and the adaptive tables.
The losses and their modules follow the op spec, ``samplewt_ops._spec.SPECS``.
"""
from . import _loader, _ops  # noqa: F401  (loads and registers the kernels)
from . import functional, modules, reference, weights
from ._loader import backend, empty_cache
from ._validation import set_validation
from .functional import *  # noqa: F401,F403  (one function per loss)
from .linear import linear_cross_entropy, linear_focal_loss
from .linear_modules import LinearCrossEntropyLoss, LinearFocalLoss
from .modules import *  # noqa: F401,F403  (one module per loss)
from .data import IndexedDataset
from .samplers import AdaptiveSampler, DistributedAdaptiveSampler
from .weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced, SmallLoss, class_weights

__version__ = "0.1.0"

__all__ = [
    *functional.__all__,
    *modules.__all__,
    "linear_cross_entropy",
    "linear_focal_loss",
    "LinearCrossEntropyLoss",
    "LinearFocalLoss",
    "class_weights",
    "AdaptiveWeights",
    *(name for name in weights.policies.__all__ if name not in ("LOSS_NAMES", "WeightPolicy")),
    "AdaptiveSampler",
    "DistributedAdaptiveSampler",
    "IndexedDataset",
    "backend",
    "empty_cache",
    "set_validation",
    "reference",
]
