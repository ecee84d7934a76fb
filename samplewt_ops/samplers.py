r"""Weighted samplers that follow an :class:`~samplewt_ops.AdaptiveWeights` table live.

:class:`AdaptiveSampler` is a drop-in for
:class:`torch.utils.data.WeightedRandomSampler` without the :math:`2^{24}`
category limit of :func:`torch.multinomial`;
:class:`DistributedAdaptiveSampler` splits one weighted draw per epoch across
the ranks like :class:`torch.utils.data.DistributedSampler`.

Algorithms (on the CPU, float64, deterministic given the generator):

* with replacement: inverse-CDF sampling, ``searchsorted(cumsum(w), u * sum(w))``
  for uniform ``u``; a zero weight is never drawn;
* without replacement: the exponential-keys method of Efraimidis & Spirakis
  ("Weighted random sampling with a reservoir", IPL 2006): key
  :math:`k_i = E_i / w_i` with :math:`E_i \sim \mathrm{Exp}(1)`, and the draw
  is the ``num_samples`` smallest keys in increasing order, which has the same
  distribution as successive draws proportional to the remaining weights
  (the semantics of ``multinomial(..., replacement=False)``).
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import Sampler

from .weights.table import AdaptiveWeights

__all__ = ["AdaptiveSampler", "DistributedAdaptiveSampler"]

Source = Union[AdaptiveWeights, torch.Tensor, Sequence[float]]


def _check_source(source) -> None:
    if isinstance(source, AdaptiveWeights):
        return
    _weights_from(source)  # validates a static source eagerly


def _weights_from(source) -> torch.Tensor:
    """Current weights of ``source`` as a validated 1-D float64 CPU tensor."""
    if isinstance(source, AdaptiveWeights):
        w = source.weights
    elif isinstance(source, torch.Tensor):
        w = source
    else:
        try:
            w = torch.as_tensor(source, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"weights must be an AdaptiveWeights table, a tensor or a sequence of numbers, got {type(source).__name__}"
            ) from e
    if w.dtype == torch.bool or w.is_complex():
        raise TypeError(f"weights must be real numbers, got dtype {w.dtype}")
    w = w.detach().to("cpu", torch.float64)
    if w.dim() != 1:
        raise ValueError(f"weights must be 1-D, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError("weights must not be empty")
    lo, hi = (float(v) for v in torch.aminmax(w))  # one pass; NaN propagates
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("weights must be finite (found NaN or inf)")
    if lo < 0:
        raise ValueError(f"weights must be non-negative (found {lo})")
    if hi == 0:
        raise ValueError("weights are all zero: nothing to sample")
    return w


def _check_num_samples(num_samples, name: str = "num_samples") -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise ValueError(f"{name} should be a positive integer value, got {num_samples!r}")
    if num_samples <= 0:
        raise ValueError(f"{name} should be a positive integer value, got {num_samples}")
    return num_samples


def _weighted_draw(
    w: torch.Tensor, num_samples: int, replacement: bool, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """``num_samples`` indices drawn with probabilities ``w / w.sum()`` (int64)."""
    if replacement:
        cdf = torch.cumsum(w, 0)
        u = torch.rand(num_samples, dtype=torch.float64, generator=generator) * cdf[-1]
        idx = torch.searchsorted(cdf, u, right=True)
        # u * total may round up to total: fall back on the last index with positive
        # weight, the first position where the cdf reaches the total
        last = torch.searchsorted(cdf, cdf[-1:])
        return torch.minimum(idx, last)
    nnz = int((w > 0).sum())
    if num_samples > nnz:
        raise ValueError(
            f"num_samples ({num_samples}) is larger than the number of non-zero weights ({nnz}); "
            "sampling without replacement is impossible"
        )
    keys = torch.empty(w.shape[0], dtype=torch.float64).exponential_(generator=generator)
    # E / w; a zero weight gives inf (or NaN for 0 / 0), never among the smallest keys
    keys.div_(w).nan_to_num_(nan=math.inf, posinf=math.inf)
    return torch.topk(keys, num_samples, largest=False, sorted=True).indices


class AdaptiveSampler(Sampler[int]):
    r"""Samples dataset indices with probability proportional to weights.

    Drop-in for :class:`torch.utils.data.WeightedRandomSampler` that also
    works with more than :math:`2^{24}` samples and reads its weights live.

    Args:
        source: an :class:`~samplewt_ops.AdaptiveWeights` table (its
            ``weights`` are read at the start of every ``__iter__``, i.e. every
            epoch) or a fixed 1-D sequence/tensor of non-negative weights.
        num_samples: number of indices per epoch (> 0).
        replacement: draw with replacement (default) or not; without
            replacement ``num_samples`` must not exceed the number of non-zero
            weights.
        generator: ``torch.Generator`` used for the draw (the global RNG if None).

    Raises:
        ValueError: negative, NaN or infinite weights, all-zero or empty weights,
            ``num_samples <= 0``, or too few non-zero weights without replacement.
    """

    def __init__(self, source: Source, num_samples: int, replacement: bool = True, generator=None):
        _check_num_samples(num_samples)
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, got {replacement!r}")
        _check_source(source)
        self.source = source
        self.num_samples = num_samples
        self.replacement = replacement
        self.generator = generator

    @property
    def weights(self) -> torch.Tensor:
        """The current weights (float64, CPU)."""
        return _weights_from(self.source)

    def __iter__(self) -> Iterator[int]:
        idx = _weighted_draw(self.weights, self.num_samples, self.replacement, self.generator)
        yield from idx.tolist()

    def __len__(self) -> int:
        return self.num_samples


class DistributedAdaptiveSampler(Sampler[int]):
    r"""One weighted draw per epoch, split disjointly across the ranks.

    Every rank draws the same sequence of ``num_samples`` indices (default: the
    number of weights) with a generator seeded with ``seed + epoch``, so the
    ranks must hold the same weights (call ``table.sync()`` before a new
    epoch).  The sequence is then padded by repeating its beginning
    (``drop_last=False``) or truncated (``drop_last=True``) to a multiple of
    ``num_replicas``, as in :class:`torch.utils.data.DistributedSampler`, and
    rank ``r`` takes positions ``r, r + num_replicas, ...``.  Call
    :meth:`set_epoch` at the start of every epoch.

    Args:
        source: an :class:`~samplewt_ops.AdaptiveWeights` table or a 1-D weight tensor/sequence.
        num_replicas: number of ranks (default: the world size).
        rank: this rank (default: the current rank).
        num_samples: total number of draws per epoch over all ranks (default: number of weights).
        replacement: as in :class:`AdaptiveSampler`.
        seed: base seed, identical on all ranks.
        drop_last: truncate instead of pad.
    """

    def __init__(
        self,
        source: Source,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        num_samples: Optional[int] = None,
        replacement: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "DistributedAdaptiveSampler: pass num_replicas and rank, or initialise torch.distributed"
                )
            if num_replicas is None:
                num_replicas = dist.get_world_size()
            if rank is None:
                rank = dist.get_rank()
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas <= 0:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not (0 <= rank < num_replicas):
            raise ValueError(f"invalid rank {rank!r}, rank should be in the interval [0, {num_replicas - 1}]")
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, got {replacement!r}")
        _check_source(source)
        if num_samples is None:
            num_samples = len(source) if isinstance(source, AdaptiveWeights) else _weights_from(source).numel()
        _check_num_samples(num_samples)
        self.source = source
        self.num_replicas = num_replicas
        self.rank = rank
        self.total_draws = num_samples
        self.replacement = replacement
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = num_samples // num_replicas
        else:
            self.num_samples = -(-num_samples // num_replicas)
        if self.num_samples == 0:
            raise ValueError(
                f"num_samples ({num_samples}) is smaller than num_replicas ({num_replicas}) with drop_last=True"
            )
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; the draw of an epoch is seeded with ``seed + epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        idx = _weighted_draw(_weights_from(self.source), self.total_draws, self.replacement, g)
        if self.total_size > idx.numel():
            reps = -(-self.total_size // idx.numel())
            idx = idx.repeat(reps)
        idx = idx[: self.total_size]
        yield from idx[self.rank : self.total_size : self.num_replicas].tolist()

    def __len__(self) -> int:
        return self.num_samples
