r"""Weighting policies for :class:`samplewt_ops.AdaptiveWeights`.

A policy is a small configuration object: it holds its parameters and the
maths, while every tensor of state lives in the table (so a policy object can
be shared by several tables).  The table calls the policy; users only construct
one and pass it to ``AdaptiveWeights(num_samples, policy)``.

Every table keeps, per sample, an exponential moving average (EMA) of the
sample's loss and of the L2 norm of d(loss)/d(logits), and the number of times
the sample was seen.  With momentum :math:`m` and a batch observation
:math:`x` (the mean of the sample's occurrences in the batch, see
:meth:`AdaptiveWeights.observe`)

.. math:: \mathrm{ema} \leftarrow m\,\mathrm{ema} + (1-m)\,x,

and the first observation of a sample initialises its EMA to :math:`x`.

Two families of policies exist:

* history policies (``per_batch = False``: :class:`LossEMA`,
  :class:`GradNormEMA`, :class:`SelfPaced`, :class:`SmallLoss`) weight a batch from the state as it
  was *before* the batch (the weights never depend on the batch's own loss);
* per-batch policies (``per_batch = True``: :class:`OHEM`, :class:`GHM`)
  weight a batch from the batch's own per-sample losses or gradient
  magnitudes.  Their ``table.weights`` is a history-based summary (see each
  class), useful to drive a sampler.

Samples that were never seen get weight 1 under every policy.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Dict

import torch

from .._spec import SPECS
from .._validation import check_real

__all__ = [
    "LOSS_NAMES",
    "WeightPolicy",
    "LossEMA",
    "GradNormEMA",
    "SelfPaced",
    "OHEM",
    "GHM",
    "SmallLoss",
]

#: The loss names a policy may be asked about through ``policy.supports``.
LOSS_NAMES = frozenset(SPECS)


def _check_momentum(name: str, value, cls: str) -> float:
    return check_real(value, f"{cls}: {name}", lo=0.0, hi=1.0, hi_open=True, finite=True)


class WeightPolicy:
    """Base class of the policies (not used directly).

    Attributes:
        per_batch: whether a batch's weights depend on the batch's own losses
            (``True``) or only on the history kept in the table (``False``).
        history_momentum: momentum of the table's per-sample loss and
            gradient-norm EMAs.
    """

    per_batch: bool = False
    #: Losses the policy may be used with.
    supported_losses = LOSS_NAMES
    #: Whether the table also keeps a per-sample EMA of the gradient magnitude g.
    tracks_g: bool = False
    #: Names of policy tensors averaged over ranks by ``table.sync()``.
    sync_mean_state: tuple = ()
    #: Names of policy tensors reduced with max over ranks by ``table.sync()``.
    sync_max_state: tuple = ()
    history_momentum: float = 0.9

    # -- configuration -------------------------------------------------
    def supports(self, loss_name: str) -> bool:
        """Whether the policy can weight ``loss_name`` (one of ``LOSS_NAMES``)."""
        return loss_name in self.supported_losses

    def config(self) -> Dict[str, object]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.config().items()))))

    #: The policy's number for the loss ops (csrc/table_math.h, TablePolicy).
    op_code: int = 0

    def op_params(self) -> list:
        """The loss ops' ``policy_params``: the history momentum, then the policy's own."""
        return [float(self.history_momentum)]

    def op_threshold(self, table):
        """The loss ops' ``threshold`` tensor, or None."""
        return None

    # -- state ---------------------------------------------------------
    def init_state(self, num_samples: int, device: torch.device) -> Dict[str, torch.Tensor]:
        """The policy's tensors, created on ``device`` and owned by the table."""
        return {}

    # -- maths ---------------------------------------------------------
    def all_weights(self, table) -> torch.Tensor:  # pragma: no cover - overridden
        """Weight of every sample, shape ``(num_samples,)``, float32."""
        raise NotImplementedError

    def batch_weights(self, table, indices, loss=None, g=None, valid=None) -> torch.Tensor:
        """Weights ``(N,)`` of a batch; history policies gather ``all_weights``."""
        return self.all_weights(table).index_select(0, indices)

    def observe(self, table, indices, g, valid) -> None:
        """Update the policy's own state after a batch (the table's EMAs are updated by the table)."""

    def step_epoch(self, table) -> None:
        """Called by ``table.step_epoch()`` after the epoch counter was incremented."""


class _RatioPolicy(WeightPolicy):
    _statistic = "loss_ema"

    def __init__(self, momentum: float = 0.9, power: float = 1.0, min_weight: float = 0.1, max_weight: float = 10.0):
        cls = type(self).__name__
        self.momentum = _check_momentum("momentum", momentum, cls)
        self.power = check_real(power, f"{cls}: power", finite=True)
        self.min_weight = check_real(min_weight, f"{cls}: min_weight", lo=0.0, finite=True)
        self.max_weight = check_real(max_weight, f"{cls}: max_weight", lo=0.0)
        if self.max_weight < self.min_weight:
            raise ValueError(f"{cls}: max_weight ({max_weight}) must be >= min_weight ({min_weight})")

    @property
    def history_momentum(self) -> float:  # type: ignore[override]
        return self.momentum

    def config(self):
        return {"momentum": self.momentum, "power": self.power, "min_weight": self.min_weight, "max_weight": self.max_weight}

    op_code = 1

    def op_params(self):
        return [self.momentum, self.power, self.min_weight, self.max_weight]

    def _weights(self, table, stat, seen):
        # the mean over the seen samples, from the table's running sums
        sums = table.stat_sum
        j = 0 if self._statistic == "loss_ema" else 1
        mean = torch.where(sums[2] > 0, sums[j] / sums[2].clamp_min(1), torch.zeros_like(sums[2])).float()
        one = torch.ones_like(stat)
        # ratio to that mean (1 if the mean is 0)
        ratio = torch.where(mean > 0, stat / torch.where(mean > 0, mean, torch.ones_like(mean)), one)
        w = torch.pow(ratio, self.power).clamp(self.min_weight, self.max_weight)
        return torch.where(seen, w, one)

    def all_weights(self, table) -> torch.Tensor:
        return self._weights(table, getattr(table, self._statistic), table.seen_count > 0)

    def batch_weights(self, table, indices, loss=None, g=None, valid=None):
        # O(N): the batch's entries and the running sums.
        return self._weights(table, getattr(table, self._statistic).index_select(0, indices),
                             table.seen_count.index_select(0, indices) > 0)


class LossEMA(_RatioPolicy):
    r"""Importance by loss history.

    .. math::

        r_i = \frac{\mathrm{ema}^{\mathrm{loss}}_i}{\frac{1}{|S|}\sum_{j\in S}\mathrm{ema}^{\mathrm{loss}}_j},\qquad
        w_i = \operatorname{clip}(r_i^{\,p},\ w_{\min},\ w_{\max})\quad (i\in S),

    where :math:`S` is the set of samples seen at least once; unseen samples get
    :math:`w_i = 1`.  If the mean EMA is 0, every :math:`r_i = 1`.  The mean
    comes from running sums that every step updates for the samples it
    observes, so a step costs O(batch) whatever the table's size (the sums are
    recomputed exactly at ``step_epoch()``, ``sync()`` and on load).  The
    weights are not renormalised to average 1: ``reduction="mean"`` divides by
    the batch's weight sum anyway.

    Example::

        >>> table = AdaptiveWeights(len(dataset), LossEMA(power=1.0))
        >>> loss = cross_entropy(logits, y, table=table, indices=idx)

    Loss-based importance of this kind follows Loshchilov & Hutter, "Online
    Batch Selection for Faster Training of Neural Networks" (ICLR workshop 2016)
    and the loss-based scores discussed by Katharopoulos & Fleuret (ICML 2018).

    Args:
        momentum: EMA momentum :math:`m \in [0, 1)` of the table's loss and
            gradient-norm EMAs.
        power: exponent :math:`p` (0 gives uniform weights, negative values favour easy samples).
        min_weight, max_weight: clipping range :math:`[w_{\min}, w_{\max}]` of :math:`r_i^p`.

    """

    _statistic = "loss_ema"


class GradNormEMA(_RatioPolicy):
    r"""Importance by gradient-norm history.

    Same formula as :class:`LossEMA`, on the EMA of :math:`\lVert\partial
    \ell_i/\partial z_i\rVert_2`, the L2 norm of the gradient of the sample's
    loss with respect to its logits.  This norm is the (upper-bound) importance
    score of Katharopoulos & Fleuret, "Not All Samples Are Created Equal: Deep
    Learning with Importance Sampling" (ICML 2018).

    Args: as :class:`LossEMA`.
    """

    _statistic = "grad_norm_ema"
    op_code = 2


class SelfPaced(WeightPolicy):
    r"""Self-paced learning (Kumar, Packer & Koller, "Self-Paced Learning for
    Latent Variable Models", NeurIPS 2010).

    The statistic is the EMA of the sample's loss :math:`\ell_i`, with momentum
    ``momentum`` (default 0: the loss from the last batch that contained the
    sample).  With threshold :math:`\lambda`:

    * hard (``soft=False``): :math:`w_i = 1` if :math:`\ell_i < \lambda` else 0
      (the closed-form minimiser of the SPL objective over :math:`v_i\in\{0,1\}`);
    * soft (``soft=True``): :math:`w_i = \max(0,\ 1 - \ell_i/\lambda)` (the linear
      self-paced regulariser of Jiang et al., 2014).

    Unseen samples get weight 1 (every sample is tried once).  The weights of a
    batch come from its samples' history, before the batch.  At every
    ``table.step_epoch()`` the threshold is multiplied by ``growth``
    (:math:`\lambda \leftarrow \mu\lambda`), so harder samples enter as training
    proceeds.  The threshold is a float64 0-dim tensor in the table's state.

    Args:
        threshold: initial :math:`\lambda > 0`.
        growth: :math:`\mu > 0` per epoch (typically > 1).
        soft: linear instead of hard weights.
        momentum: momentum of the loss EMA that is thresholded, in [0, 1).
    """

    def __init__(self, threshold: float, growth: float = 1.1, soft: bool = False, momentum: float = 0.0):
        self.threshold = check_real(threshold, "SelfPaced: threshold", lo=0.0, lo_open=True, finite=True)
        self.growth = check_real(growth, "SelfPaced: growth", lo=0.0, lo_open=True, finite=True)
        if not isinstance(soft, bool):
            raise TypeError(f"SelfPaced: soft must be a bool, got {type(soft).__name__}")
        self.soft = soft
        self.momentum = _check_momentum("momentum", momentum, "SelfPaced")

    @property
    def history_momentum(self) -> float:  # type: ignore[override]
        return self.momentum

    def config(self):
        return {"threshold": self.threshold, "growth": self.growth, "soft": self.soft, "momentum": self.momentum}

    @property
    def op_code(self):
        return 4 if self.soft else 3

    def op_threshold(self, table):
        return table.policy_state["threshold"].reshape(1)

    def init_state(self, num_samples, device):
        return {"threshold": torch.tensor(self.threshold, dtype=torch.float64, device=device)}

    def _weights(self, loss, seen, thr):
        if self.soft:
            w = (1.0 - loss / thr.to(loss.dtype)).clamp_min(0.0)
        else:
            w = (loss < thr.to(loss.dtype)).to(loss.dtype)
        return torch.where(seen, w, torch.ones_like(w))

    def all_weights(self, table):
        return self._weights(table.loss_ema, table.seen_count > 0, table.policy_state["threshold"])

    def batch_weights(self, table, indices, loss=None, g=None, valid=None):
        # O(N): only the batch's entries are needed.
        return self._weights(
            table.loss_ema.index_select(0, indices),
            table.seen_count.index_select(0, indices) > 0,
            table.policy_state["threshold"],
        )

    def step_epoch(self, table):
        table.policy_state["threshold"].mul_(self.growth)


class OHEM(WeightPolicy):
    r"""Online hard example mining (Shrivastava, Gupta & Girshick, "Training
    Region-based Object Detectors with Online Hard Example Mining", CVPR 2016).

    Per batch of :math:`N` samples, the :math:`k = \lceil \rho N\rceil` samples
    with the largest unweighted loss get weight 1 and the others 0
    (:math:`\rho` = ``keep_ratio``).  :math:`k` depends only on the batch
    size, so the selection is one ``topk`` on the device with no host
    synchronisation.  Ties are broken by ``topk``.  Samples marked invalid (for
    example all-ignored rows) get weight 0.

    ``table.weights`` (for a sampler or inspection) applies the same rule to the
    loss EMAs of the seen samples: the :math:`\lceil\rho|S|\rceil` seen samples
    with the largest loss EMA get 1, the other seen samples 0, unseen samples 1.
    Computing it synchronises with the host (it is not on the training path).

    Args:
        keep_ratio: :math:`\rho \in (0, 1]`.
        history_momentum: momentum of the table's loss/gradient-norm EMAs.
    """

    per_batch = True

    def __init__(self, keep_ratio: float = 0.7, history_momentum: float = 0.9):
        self.keep_ratio = check_real(keep_ratio, "OHEM: keep_ratio", lo=0.0, hi=1.0, lo_open=True, finite=True)
        self.history_momentum = _check_momentum("history_momentum", history_momentum, "OHEM")
        # exact decimal fraction, so that ceil(0.7 * 10) is 7 and not 8
        frac = Fraction(repr(self.keep_ratio))
        self._num, self._den = frac.numerator, frac.denominator

    op_code = 5

    def op_params(self):
        return [self.history_momentum, float(self._num), float(self._den)]

    def config(self):
        return {"keep_ratio": self.keep_ratio, "history_momentum": self.history_momentum}

    def num_kept(self, n):
        """:math:`\\lceil \\rho n\\rceil` with exact arithmetic (works on symbolic sizes)."""
        return (self._num * n + self._den - 1) // self._den

    def _select(self, loss: torch.Tensor, k) -> torch.Tensor:
        w = torch.zeros_like(loss, dtype=torch.float32)
        top = torch.topk(loss, k, sorted=False).indices
        return w.index_fill_(0, top, 1.0)

    def batch_weights(self, table, indices, loss=None, g=None, valid=None):
        if loss is None:
            raise ValueError("OHEM weights depend on the batch: pass the per-sample unweighted losses as loss=")
        loss = loss.detach()
        if valid is not None:
            loss = torch.where(valid, loss, torch.full_like(loss, -math.inf))
        w = self._select(loss, self.num_kept(loss.shape[0]))
        if valid is not None:
            w = w * valid.to(w.dtype)
        return w

    def all_weights(self, table):
        seen = table.seen_count > 0
        n_seen = int(seen.sum())  # host sync: not on the training path
        score = torch.where(seen, table.loss_ema, torch.full_like(table.loss_ema, -math.inf))
        w = self._select(score, self.num_kept(n_seen))
        return torch.where(seen, w, torch.ones_like(w))


class GHM(WeightPolicy):
    r"""Gradient harmonizing mechanism, GHM-C (Li, Liu & Wang, "Gradient
    Harmonized Single-stage Detector", AAAI 2019).

    Each sample has a gradient magnitude :math:`g_i \in [0, 1]`
    (:math:`1 - p_y` for softmax cross-entropy, the mean of
    :math:`|\sigma(x) - t|` over the sample's elements for the sigmoid losses).
    :math:`[0, 1]` is cut into :math:`M` = ``bins`` equal bins (``g = 1`` falls in
    the last one).  With :math:`R_j` the number of the batch's valid samples in
    bin :math:`j`, the device keeps :math:`S_j \leftarrow \alpha S_j +
    (1-\alpha) R_j` (:math:`\alpha` = ``momentum``; the first batch sets
    :math:`S = R`), and, as in the paper (Sec. 3.2, with :math:`\epsilon = 1/M`),

    .. math::

        GD(g) = M\, S_{\mathrm{bin}(g)},\qquad w_i = \frac{N}{GD(g_i)},

    with :math:`N` the number of valid samples in the batch.  **The density
    includes the current batch**: the weights of a batch use the EMA *after*
    it absorbed the batch's own histogram, like the paper's algorithm (the
    table commits that update in ``observe``).  With a uniform gradient density
    every weight is 1.  The binning uses ``bucketize``-free arithmetic
    (``floor(g M)``) and ``index_add_``: no loop over bins, no host sync.

    Only ``cross_entropy`` and the sigmoid losses (``sigmoid_focal_loss``,
    ``binary_cross_entropy_with_logits``) are supported.

    The table also keeps a per-sample EMA of :math:`g` (momentum
    ``history_momentum``); ``table.weights`` is :math:`\sum_j S_j / (M
    S_{\mathrm{bin}(\bar g_i)})` for seen samples (1 if that bin is empty),
    1 for unseen ones.

    Args:
        bins: number of bins :math:`M \ge 1`.
        momentum: :math:`\alpha \in [0, 1)` of the bin-count EMA.
        history_momentum: momentum of the per-sample EMAs kept by the table.
    """

    per_batch = True
    tracks_g = True
    supported_losses = frozenset({"cross_entropy", "sigmoid_focal_loss", "binary_cross_entropy_with_logits"})
    sync_mean_state = ("bin_ema",)
    sync_max_state = ("bin_steps",)

    def __init__(self, bins: int = 10, momentum: float = 0.75, history_momentum: float = 0.9):
        if isinstance(bins, bool) or not isinstance(bins, int):
            raise TypeError(f"GHM: bins must be an int, got {type(bins).__name__}")
        if bins < 1:
            raise ValueError(f"GHM: bins must be >= 1, got {bins}")
        self.bins = bins
        self.momentum = _check_momentum("momentum", momentum, "GHM")
        self.history_momentum = _check_momentum("history_momentum", history_momentum, "GHM")

    op_code = 6

    def op_params(self):
        return [self.history_momentum, float(self.bins), self.momentum]

    def config(self):
        return {"bins": self.bins, "momentum": self.momentum, "history_momentum": self.history_momentum}

    def init_state(self, num_samples, device):
        # g_ema: the table's third EMA row, added by the table.
        return {
            "bin_ema": torch.zeros(self.bins, dtype=torch.float32, device=device),
            "bin_steps": torch.zeros((), dtype=torch.int64, device=device),
        }

    def bin_of(self, g: torch.Tensor) -> torch.Tensor:
        """Bin index of each g (NaN counts as 1, values are clamped to [0, 1])."""
        g = torch.nan_to_num(g.detach().to(torch.float32), nan=1.0).clamp(0.0, 1.0)
        return (g * self.bins).floor().to(torch.int64).clamp_(0, self.bins - 1)

    def _updated_density(self, table, b, valid_f):
        hist = torch.zeros(self.bins, dtype=torch.float32, device=b.device).index_add_(0, b, valid_f)
        s = table.policy_state["bin_ema"]
        blended = self.momentum * s + (1.0 - self.momentum) * hist
        return torch.where(table.policy_state["bin_steps"] > 0, blended, hist)

    @staticmethod
    def _valid_f(g, valid):
        if valid is None:
            return torch.ones(g.shape[0], dtype=torch.float32, device=g.device)
        return valid.to(torch.float32)

    def batch_weights(self, table, indices, loss=None, g=None, valid=None):
        if g is None:
            raise ValueError("GHM weights depend on the batch: pass the per-sample gradient magnitudes as g=")
        b = self.bin_of(g)
        valid_f = self._valid_f(g, valid)
        dens = self._updated_density(table, b, valid_f)
        n = valid_f.sum()
        d = dens.index_select(0, b) * self.bins
        w = n / torch.where(d > 0, d, torch.ones_like(d))
        return w * valid_f

    def observe(self, table, indices, g, valid):
        b = self.bin_of(g)
        dens = self._updated_density(table, b, self._valid_f(g, valid))
        table.policy_state["bin_ema"].copy_(dens)
        table.policy_state["bin_steps"].add_(1)

    def all_weights(self, table):
        s = table.policy_state["bin_ema"]
        seen = table.seen_count > 0
        d = s.index_select(0, self.bin_of(table.policy_state["g_ema"])) * self.bins
        w = s.sum() / torch.where(d > 0, d, torch.ones_like(d))
        return torch.where(seen & (d > 0), w, torch.ones_like(w))


class SmallLoss(WeightPolicy):
    r"""Small-loss selection against noisy labels, in the spirit of Co-teaching
    (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with
    Extremely Noisy Labels", NeurIPS 2018), with one network and the loss EMA
    as the ranking statistic.

    Networks fit clean labels before they memorise wrong ones, so a sample
    whose loss stays high is likely mislabelled.  After :math:`e` calls of
    ``table.step_epoch()`` (``table.epoch``) the forget rate is

    .. math:: f_e = \tau \cdot \min\!\left(1,\ \frac{e}{T_k}\right)

    (:math:`\tau` = ``forget_rate``, :math:`T_k` = ``ramp_epochs``; :math:`f_e
    = \tau` from the start when :math:`T_k = 0`).  With :math:`S` the samples
    seen at least once, the :math:`k_e = |S| - \lfloor f_e |S| \rfloor` seen
    samples with the smallest loss EMA get weight 1, the other seen samples
    ``min_weight``, unseen samples 1:

    .. math::

        w_i = \begin{cases} 1 & i \notin S \ \text{or}\ \operatorname{rank}_S(i) < k_e \\
                            w_{\min} & \text{otherwise,} \end{cases}

    where :math:`\operatorname{rank}_S(i)` is the 0-based position of sample
    :math:`i` when the seen samples are sorted by loss EMA, equal EMAs in
    dataset-index order (a NaN EMA ranks last).  :math:`\lfloor f_e |S|\rfloor`
    is computed exactly in integers, :math:`\tau` taken as the nearest fraction
    with a denominator of at most :math:`10^6` (0.2 is 1/5).

    A history policy (``per_batch = False``). The ranking runs once per epoch:
    ``table.step_epoch()`` ranks the seen samples (one ``argsort`` of
    ``num_samples`` values on the device, no host synchronisation) and fixes
    the cutoff, the (loss EMA, index) of the :math:`k_e`-th seen sample. Until
    the next ``step_epoch()``, a seen sample gets weight 1 when its (current)
    loss EMA and index are at most the cutoff, ``min_weight`` otherwise, so a
    step costs O(batch). Before the first ``step_epoch()`` every sample gets
    weight 1. ``table.weights`` applies the same cutoff to every sample. The
    cutoff is in ``policy_state`` (saved by ``state_dict``); every rank calls
    ``step_epoch()`` after ``sync()``.

    With ``min_weight = 0`` a batch can have all weights 0, where a weighted
    mean is 0/0: use ``reduction="sum"`` divided by the batch size, or a
    ``min_weight > 0``.

    Example::

        >>> policy = SmallLoss(forget_rate=0.2, ramp_epochs=10)
        >>> table = AdaptiveWeights(len(dataset), policy)
        >>> # epoch e: the 20% * min(1, e / 10) seen samples with the largest
        >>> # loss EMA get weight 0
        >>> loss = cross_entropy(logits, y, table=table, indices=idx, reduction="sum") / len(y)

    Args:
        forget_rate: final fraction :math:`\tau \in [0, 1)` of the seen samples
            that is down-weighted (Co-teaching sets it to the noise rate).
        ramp_epochs: :math:`T_k \ge 0`, epochs over which the rate grows linearly from 0.
        min_weight: weight :math:`w_{\min} \in [0, 1]` of the forgotten samples.
        momentum: momentum of the table's loss EMA, in [0, 1) (0: the loss of
            the last batch that contained the sample).
    """

    def __init__(self, forget_rate: float, ramp_epochs: int = 10, min_weight: float = 0.0, momentum: float = 0.9):
        self.forget_rate = check_real(forget_rate, "SmallLoss: forget_rate", lo=0.0, hi=1.0, hi_open=True, finite=True)
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int):
            raise TypeError(f"SmallLoss: ramp_epochs must be an int, got {type(ramp_epochs).__name__}")
        if ramp_epochs < 0:
            raise ValueError(f"SmallLoss: ramp_epochs must be >= 0, got {ramp_epochs}")
        self.ramp_epochs = ramp_epochs
        self.min_weight = check_real(min_weight, "SmallLoss: min_weight", lo=0.0, hi=1.0, finite=True)
        self.momentum = _check_momentum("momentum", momentum, "SmallLoss")
        frac = Fraction(repr(self.forget_rate)).limit_denominator(10**6)
        self._num, self._den = frac.numerator, frac.denominator

    @property
    def history_momentum(self) -> float:  # type: ignore[override]
        return self.momentum

    def config(self):
        return {
            "forget_rate": self.forget_rate,
            "ramp_epochs": self.ramp_epochs,
            "min_weight": self.min_weight,
            "momentum": self.momentum,
        }

    def num_forgotten(self, epoch, n_seen):
        r""":math:`\lfloor f_e\, n\rfloor` with integer arithmetic (ints or int64 tensors)."""
        if self.ramp_epochs == 0:
            return (self._num * n_seen) // self._den
        if isinstance(epoch, torch.Tensor):
            e = epoch.clamp(max=self.ramp_epochs)
        else:
            e = min(epoch, self.ramp_epochs)
        return (self._num * e * n_seen) // (self._den * self.ramp_epochs)

    op_code = 7

    def op_params(self):
        return [self.momentum, self.min_weight]

    def op_threshold(self, table):
        return table.policy_state["cutoff"]

    def init_state(self, num_samples, device):
        # (cutoff EMA, cutoff index): +inf keeps every sample.
        return {"cutoff": torch.full((2,), math.inf, dtype=torch.float64, device=device)}

    def step_epoch(self, table):
        self.update_cutoff(table)

    def update_cutoff(self, table) -> None:
        """Rank the seen samples once (O(num_samples), on the device, no host
        sync) and fix the cutoff of the epoch that starts."""
        ema = table.loss_ema
        seen = table.seen_count > 0
        n_seen = seen.sum()
        kept = n_seen - self.num_forgotten(table.epoch, n_seen)
        # order by (unseen, loss EMA with NaN as +inf, index): two stable sorts
        score = torch.nan_to_num(ema, nan=math.inf).double()
        order = torch.sort(score, stable=True).indices
        order = order.index_select(0, torch.sort((~seen).index_select(0, order).to(torch.uint8), stable=True).indices)
        last = order.index_select(0, (kept - 1).clamp(0, ema.shape[0] - 1).reshape(1))
        cut = torch.cat([score.index_select(0, last), last.double()])
        inf = torch.full_like(cut, math.inf)
        none = torch.full_like(cut, -math.inf)
        cut = torch.where(kept >= n_seen, inf, torch.where(kept > 0, cut, none))
        table.policy_state["cutoff"].copy_(cut)

    def _weights(self, table, ema, seen, index):
        cut = table.policy_state["cutoff"]
        score = torch.nan_to_num(ema, nan=math.inf).double()
        kept = (score < cut[0]) | ((score == cut[0]) & (index.double() <= cut[1]))
        w = torch.where(kept, torch.ones_like(ema), torch.full_like(ema, self.min_weight))
        return torch.where(seen, w, torch.ones_like(w))

    def all_weights(self, table):
        n = table.num_samples
        return self._weights(table, table.loss_ema, table.seen_count > 0,
                             torch.arange(n, device=table.device))

    def batch_weights(self, table, indices, loss=None, g=None, valid=None):
        return self._weights(table, table.loss_ema.index_select(0, indices),
                             table.seen_count.index_select(0, indices) > 0, indices)
