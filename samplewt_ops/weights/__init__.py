"""Sample weights: static class weights, the adaptive per-sample table and its policies."""

from . import policies
from .class_weights import class_weights
from .policies import GHM, LOSS_NAMES, OHEM, GradNormEMA, LossEMA, SelfPaced, SmallLoss, WeightPolicy
from .table import AdaptiveWeights

__all__ = ["class_weights", "AdaptiveWeights", *policies.__all__]
