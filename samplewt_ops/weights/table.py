r"""The per-sample weight table :class:`AdaptiveWeights`.

Protocol used by the losses (``table=table, indices=idx``)::

    idx = table.check_indices(indices, batch_size, input.device)
    table.check_loss("cross_entropy")
    if not table.policy.per_batch:
        w = table.batch_weights(idx)                  # before the loss: history only
    ... fused loss kernel -> per-sample loss, grad_norm, g ...
    if table.policy.per_batch:
        w = table.batch_weights(idx, loss=loss, g=g)  # from this batch's losses
    table.observe(idx, loss, grad_norm, g)            # update the history

Everything on that path is device-side tensor code without ``.item()``, host
copies or data-dependent Python branches, so a training step that uses a table
can be captured in a CUDA graph and traced by ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Dict

import torch

from .. import _loader
from .._validation import validation_enabled
from .policies import LOSS_NAMES, WeightPolicy

__all__ = ["AdaptiveWeights"]


def _norm_device(device) -> torch.device:
    d = torch.device(device) if device is not None else torch.device("cpu")
    if d.type != "cpu" and d.index is None:
        mod = getattr(torch, d.type, None)
        if mod is not None and hasattr(mod, "current_device") and getattr(mod, "is_available", lambda: False)():
            d = torch.device(d.type, mod.current_device())
    return d


def _state_zeros(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros for the table's per-sample state. On the CPU with the compiled
    kernels, a large table sits on transparent huge pages: a step touches a
    few entries per sample scattered over the whole table, and with 4 KiB
    pages nearly each of them missed the TLB."""
    if device.type == "cpu" and _loader.COMPILED:
        return torch.ops.samplewt_ops.table_zeros(list(shape), dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on `device`; a move to the CPU takes _state_zeros's memory."""
    if device.type == "cpu" and t.device.type != "cpu":
        return _state_zeros(t.shape, t.dtype, device).copy_(t)
    return t.to(device)


def _ema_zeros(num_samples: int, device: torch.device) -> torch.Tensor:
    """The per-sample EMAs as a (3, num_samples) float32 view of one 16-byte
    record per sample (its three EMAs and a pad). A step reads or writes all
    of a sample's EMAs, and on a large table each row of a (3, num_samples)
    layout was a cache line (and a TLB entry) of its own: GHM's update touched
    three lines per sample for its EMAs, the record one."""
    return _state_zeros((num_samples, 4), torch.float32, device)[:, :3].t()


def _ema_to_device(ema: torch.Tensor, device: torch.device) -> torch.Tensor:
    if _same_device(ema.device, device) and ema.stride() == (1, 4):
        return ema
    return _ema_zeros(ema.shape[1], device).copy_(ema)


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = _norm_device(a), _norm_device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class AdaptiveWeights:
    r"""Per-sample adaptive weights for a whole dataset, keyed by dataset index.

    Args:
        num_samples: size of the dataset (> 0).
        policy: a policy from :mod:`samplewt_ops.weights.policies`
            (:class:`LossEMA`, :class:`GradNormEMA`, :class:`SelfPaced`,
            :class:`OHEM`, :class:`GHM`, :class:`SmallLoss`).
        device: device of the state tensors (default CPU); must be the device of
            the losses that use the table.

    State (tensors on ``device``):

    * ``loss_ema`` (float32, ``(num_samples,)``): EMA of each sample's unweighted loss;
    * ``grad_norm_ema`` (float32): EMA of :math:`\lVert\partial\ell_i/\partial z_i\rVert_2`;
    * ``seen_count`` (int64): number of observations of each sample;
    * ``epoch`` (int64, 0-dim): number of ``step_epoch()`` calls;
    * ``policy_state``: the policy's tensors (``SelfPaced``: ``threshold``;
      ``GHM``: ``bin_ema``, ``bin_steps``, ``g_ema``).

    ``loss_ema``, ``grad_norm_ema`` and ``g_ema`` are the rows of ``ema``, a
    ``(3, num_samples)`` view of one 16-byte record per sample (strides
    ``(1, 4)``): a step touches each batch sample's EMAs together.

    **Update rule** (:meth:`observe`).  With momentum :math:`m` (the policy's
    ``history_momentum``), all occurrences of one index in a batch are averaged
    into a single observation :math:`\bar x` (mean over the occurrences,
    accumulated in float64 and rounded to float32), which is applied as one EMA
    step, :math:`e \leftarrow m e + (1-m)\bar x` in float32, or
    :math:`e \leftarrow \bar x` if the sample had never been seen.
    ``seen_count`` grows by the number of occurrences.  The result does not
    depend on the order of the samples within the batch; observing several
    batches concatenated counts as one step for every sample they contain.

    The weights of a batch (:meth:`batch_weights`) are taken before the batch's
    own update; repeated indices all get the same (history) weight.
    """

    def __init__(self, num_samples: int, policy: WeightPolicy, *, device=None):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"AdaptiveWeights: num_samples must be an int, got {type(num_samples).__name__}")
        if num_samples <= 0:
            raise ValueError(f"AdaptiveWeights: num_samples must be > 0, got {num_samples}")
        if not isinstance(policy, WeightPolicy):
            raise TypeError(
                "AdaptiveWeights: policy must be a policy object such as LossEMA(), GradNormEMA(), "
                f"SelfPaced(...), OHEM(...), GHM() or SmallLoss(...), got {type(policy).__name__}"
            )
        dev = _norm_device(device)
        self.num_samples = num_samples
        self.policy = policy
        # The per-sample EMAs, one row each (loss, gradient norm, GHM's g), so
        # that the loss ops take them as one tensor; loss_ema etc. are views.
        self.ema = _ema_zeros(num_samples, dev)
        self.seen_count = _state_zeros((num_samples,), torch.int64, dev)
        # Running sums over the seen samples: loss EMA, gradient-norm EMA, count.
        self.stat_sum = torch.zeros(3, dtype=torch.float64, device=dev)
        self.epoch = torch.zeros((), dtype=torch.int64, device=dev)
        self.policy_state: Dict[str, torch.Tensor] = policy.init_state(num_samples, dev)
        self._views()
        # seen_count at the last sync(): what changed since is seen_count - _synced_count
        self._synced_count = torch.zeros(num_samples, dtype=torch.int64, device=dev)

    def _views(self) -> None:
        self.loss_ema = self.ema[0]
        self.grad_norm_ema = self.ema[1]
        if self.policy.tracks_g:
            self.policy_state["g_ema"] = self.ema[2]

    def recompute_sums(self) -> None:
        """Recompute the running sums (``stat_sum``) from the whole table:
        O(num_samples), after a sync or a load; every step keeps them in O(batch)."""
        seen = self.seen_count > 0
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.stat_sum.copy_(torch.stack([
            torch.where(seen, self.loss_ema.double(), zero).sum(),
            torch.where(seen, self.grad_norm_ema.double(), zero).sum(),
            seen.sum().double()]))

    def op_args(self, indices: torch.Tensor) -> dict:
        """The loss ops' table arguments (csrc/op_schemas.h) for a batch of ``indices``."""
        base = self.__dict__.get("_op_base")
        if base is None:
            # The same tensors on every call (updated in place): built once per device.
            ps = self.policy_state
            base = self._op_base = {
                "table_ema": self.ema, "seen_count": self.seen_count, "stat_sum": self.stat_sum,
                "bin_ema": ps.get("bin_ema"), "bin_steps": ps.get("bin_steps"),
                "threshold": self.policy.op_threshold(self), "policy": self.policy.op_code,
                "policy_params": self.policy.op_params()}
        return {"indices": indices, **base}

    def op_tail(self) -> tuple:
        """The op arguments after ``indices`` (the schemas end with the table's
        arguments, ``indices`` first), in schema order: built once per device,
        as op_args's."""
        tail = self.__dict__.get("_op_tail")
        if tail is None:
            from .._spec import TABLE_ARGS
            base = self.op_args(None)
            tail = self._op_tail = tuple(base[name] for name in TABLE_ARGS if name != "indices")
        return tail

    # ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.loss_ema.device

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"AdaptiveWeights(num_samples={self.num_samples}, policy={self.policy!r}, device={self.device})"

    def _tensors(self) -> Dict[str, torch.Tensor]:
        return {
            "loss_ema": self.loss_ema,
            "grad_norm_ema": self.grad_norm_ema,
            "seen_count": self.seen_count,
            "stat_sum": self.stat_sum,
            "epoch": self.epoch,
            "synced_count": self._synced_count,
        }

    # ------------------------------------------------------------------ checks
    def check_indices(self, indices, batch_size: int, device=None) -> torch.Tensor:
        """Validate the dataset ``indices`` of a batch and return them as a 1-D int64 tensor.

        Checks: a tensor of dtype int64 or int32, 1-D (0-dim allowed when
        ``batch_size == 1``), ``batch_size`` long, on the table's device, and
        the loss ``device`` (the input's device) equal to the table's.  Values
        must lie in ``[0, num_samples)``: checked on the CPU always; on an
        accelerator only in validation mode (``SAMPLEWT_VALIDATE=1``), since
        that check synchronises with the host (during CUDA graph capture, and
        on the CPU under ``torch.compile``, it becomes a device-side assertion).
        """
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor of dataset indices, got {type(indices).__name__}")
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices must have dtype torch.int64 (or torch.int32), got {indices.dtype}")
        if indices.dim() == 0 and batch_size == 1:
            indices = indices.reshape(1)
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D with one dataset index per sample, got shape {tuple(indices.shape)}")
        if indices.shape[0] != batch_size:
            raise ValueError(f"indices has length {indices.shape[0]} but the batch has {batch_size} samples")
        if device is not None and not _same_device(device, self.device):
            raise ValueError(
                f"the AdaptiveWeights table is on {self.device} but the loss input is on {torch.device(device)}; "
                "move the table with table.to(device)"
            )
        if not _same_device(indices.device, self.device):
            raise ValueError(f"indices is on {indices.device} but the AdaptiveWeights table is on {self.device}")
        indices = indices.to(torch.int64)
        # (while tracing, the environment switch is not consulted: accelerators skip the check)
        if indices.device.type == "cpu" or (not torch.compiler.is_compiling() and validation_enabled()):
            self._check_range(indices)
        return indices

    def _check_range(self, indices: torch.Tensor) -> None:
        if indices.numel() == 0:
            return
        if _capturing():
            torch._assert_async(
                ((indices >= 0) & (indices < self.num_samples)).all(),
                f"indices out of range [0, {self.num_samples})",
            )
            return
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= self.num_samples:
            bad = lo if lo < 0 else hi
            raise IndexError(f"indices contains {bad}, outside the table's range [0, {self.num_samples - 1}]")

    def check_loss(self, loss_name: str) -> None:
        """Raise ``ValueError`` if the policy cannot weight ``loss_name``."""
        if loss_name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {loss_name!r}; known: {', '.join(sorted(LOSS_NAMES))}")
        if not self.policy.supports(loss_name):
            raise ValueError(
                f"policy {self.policy.name} does not support {loss_name}; it supports "
                f"{', '.join(sorted(self.policy.supported_losses))}"
            )

    def _vector(self, name: str, x, n: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one value per sample), got {tuple(x.shape)}")
        if not _same_device(x.device, self.device):
            raise ValueError(f"{name} is on {x.device} but the AdaptiveWeights table is on {self.device}")
        return x.detach()

    @staticmethod
    def _as_index(indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int64, torch.int32):
            raise TypeError("indices must be an int64 (or int32) tensor")
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
        return indices.to(torch.int64)

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> torch.Tensor:
        """Current weight of every sample, float32 ``(num_samples,)``, from the state."""
        return self.policy.all_weights(self).detach()

    def batch_weights(self, indices: torch.Tensor, loss=None, g=None, *, valid=None) -> torch.Tensor:
        """Weights ``(N,)`` (float32, detached) of the samples ``indices``.

        History policies (``policy.per_batch`` false) use the state only; call
        this before :meth:`observe`.  Per-batch policies need this batch's
        per-sample unweighted ``loss`` (OHEM) or gradient magnitude ``g`` (GHM).
        ``valid`` (bool ``(N,)``, optional) marks samples that take part (for
        example rows whose targets are all ``ignore_index`` do not); invalid
        samples get weight 0 from per-batch policies.
        """
        idx = self._as_index(indices)
        n = idx.shape[0]
        if loss is not None:
            loss = self._vector("loss", loss, n)
        if g is not None:
            g = self._vector("g", g, n)
        if valid is not None:
            valid = self._vector("valid", valid, n).to(torch.bool)
        return self.policy.batch_weights(self, idx, loss=loss, g=g, valid=valid).detach()

    # ------------------------------------------------------------------ update
    def observe(self, indices: torch.Tensor, loss, grad_norm, g=None, *, valid=None) -> None:
        r"""Record one batch: update the EMAs and counts of ``indices`` in place.

        Args:
            indices: dataset indices ``(N,)``.
            loss: each sample's unweighted loss ``(N,)``.
            grad_norm: L2 norm of d(loss_i)/d(logits_i) ``(N,)``.
            g: GHM gradient magnitude ``(N,)`` (required by :class:`GHM`, optional otherwise).
            valid: optional bool ``(N,)``; invalid samples are not observed.

        Repeated indices: see the class docstring (mean of the occurrences,
        one EMA step, count += occurrences).  Works with index-sorting and
        ``index_add_``; no Python loop and no host synchronisation.
        """
        idx = self._as_index(indices)
        n = idx.shape[0]
        cols = [self._vector("loss", loss, n), self._vector("grad_norm", grad_norm, n)]
        targets = [self.loss_ema, self.grad_norm_ema]
        if self.policy.tracks_g:
            if g is None:
                raise ValueError(f"policy {self.policy.name} needs the gradient magnitudes g in observe()")
            g = self._vector("g", g, n)
            cols.append(g.to(torch.float32).clamp(0.0, 1.0))
            targets.append(self.policy_state["g_ema"])
        obs = torch.stack([c.to(torch.float64) for c in cols], dim=1)  # (N, k)
        if valid is not None:
            valid = self._vector("valid", valid, n).to(torch.bool)
            obs = torch.where(valid.unsqueeze(1), obs, torch.zeros_like(obs))
            cnt = valid.to(torch.int64)
        else:
            cnt = torch.ones(n, dtype=torch.int64, device=idx.device)

        # group equal indices: sort (stable, so CPU accumulation follows batch order)
        sidx, perm = torch.sort(idx, stable=True)
        leader = torch.searchsorted(sidx, sidx)  # first position of each index in sorted order
        scnt = cnt.index_select(0, perm)
        sums = torch.zeros_like(obs).index_add_(0, leader, obs.index_select(0, perm))
        tot = torch.zeros_like(cnt).index_add_(0, leader, scnt).index_select(0, leader)  # (N,)
        mean = (sums.index_select(0, leader) / tot.clamp_min(1).unsqueeze(1).to(torch.float64)).to(torch.float32)

        m = float(self.policy.history_momentum)
        seen_before = self.seen_count.index_select(0, sidx) > 0
        observed = tot > 0
        # Each sample once (the first of its group) in the running sums.
        head = observed & (leader == torch.arange(n, device=idx.device))
        zero = torch.zeros((), dtype=torch.float64, device=idx.device)
        deltas = []
        for j, t in enumerate(targets):
            old = t.index_select(0, sidx)
            x = mean[:, j]
            new = torch.where(seen_before, m * old + (1.0 - m) * x, x)
            new = torch.where(observed, new, old)
            if j < 2:
                change = new.double() - torch.where(seen_before, old.double(), zero)
                deltas.append(torch.where(head, change, zero).sum())
            # duplicates write the same value, so the result is deterministic
            t.index_put_((sidx,), new)
        deltas.append((head & ~seen_before).sum().double())
        self.stat_sum.add_(torch.stack(deltas))
        self.seen_count.index_add_(0, sidx, scnt)
        self.policy.observe(self, idx, g, valid)

    def step_epoch(self) -> None:
        """End of an epoch: count it and let the policy react (SelfPaced grows its threshold)."""
        self.epoch.add_(1)
        self.recompute_sums()
        self.policy.step_epoch(self)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """A copy of the complete state (tensors cloned), for exact resumption."""
        return {
            "num_samples": self.num_samples,
            "policy": {"name": self.policy.name, **self.policy.config()},
            **{k: v.detach().clone() for k, v in self._tensors().items()},
            "policy_state": {k: v.detach().clone() for k, v in self.policy_state.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (values copied onto this table's device)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("num_samples") != self.num_samples:
            raise ValueError(
                f"state_dict is for {state_dict.get('num_samples')} samples, this table has {self.num_samples}"
            )
        pol = {"name": self.policy.name, **self.policy.config()}
        if state_dict.get("policy") != pol:
            raise ValueError(f"state_dict was saved with policy {state_dict.get('policy')}, this table uses {pol}")
        # Saves from before the running sums (and SmallLoss's cutoff) get them recomputed.
        recompute = "stat_sum" not in state_dict
        pairs = [(k, v) for k, v in self._tensors().items() if not (recompute and k == "stat_sum")]
        ps = dict(state_dict.get("policy_state", {}))
        missing_cutoff = "cutoff" in self.policy_state and "cutoff" not in ps
        if missing_cutoff:
            ps["cutoff"] = self.policy_state["cutoff"]
        if set(ps) != set(self.policy_state):
            raise ValueError(f"state_dict policy_state has keys {sorted(ps)}, expected {sorted(self.policy_state)}")
        pairs += [(f"policy_state.{k}", v) for k, v in self.policy_state.items()]
        srcs = []
        for name, dst in pairs:
            src = ps[name.split(".", 1)[1]] if name.startswith("policy_state.") else state_dict.get(name)
            if not isinstance(src, torch.Tensor) or src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(
                    f"state_dict entry {name!r} must be a {dst.dtype} tensor of shape {tuple(dst.shape)}, got "
                    + (f"{src.dtype} {tuple(src.shape)}" if isinstance(src, torch.Tensor) else type(src).__name__)
                )
            srcs.append(src)
        for (_, dst), src in zip(pairs, srcs):
            dst.copy_(src)
        if recompute:
            self.recompute_sums()
        if missing_cutoff:
            self.policy.update_cutoff(self)

    def to(self, device) -> "AdaptiveWeights":
        """Move the state to ``device`` (in place); returns ``self``."""
        dev = _norm_device(device)
        self.ema = _ema_to_device(self.ema, dev)
        self.stat_sum = self.stat_sum.to(dev)
        self.seen_count = _to_device(self.seen_count, dev)
        self.epoch = self.epoch.to(dev)
        self._synced_count = self._synced_count.to(dev)
        self.policy_state = {k: v.to(dev) for k, v in self.policy_state.items() if k != "g_ema"}
        self._views()
        self._op_base = self._op_tail = None
        return self

    # ------------------------------------------------------------------ distributed
    def sync(self, group=None) -> None:
        r"""Merge the updates of every rank so that all ranks hold the same table.

        Each rank sends only the samples it observed since the previous sync
        (their index, how many observations, and their EMA values), with two
        ``all_gather`` calls (sizes, then the padded entries); the small
        policy-global tensors (GHM's bin EMA) are ``all_reduce``\ d.

        Merge rule, per sample observed since the last sync:

        * ``seen_count`` = value at the last sync + the sum of every rank's new observations;
        * observed by one rank only: that rank's EMA values, bit for bit;
        * observed by several ranks: the average of their EMA values weighted by
          their numbers of observations (float64, rounded to float32).

        Policy state: GHM's ``bin_ema`` is averaged over ranks (it stays in
        units of one rank's batch) and ``bin_steps`` takes the maximum.
        ``epoch`` and SelfPaced's threshold are not communicated: every rank
        calls ``step_epoch()``.

        Equivalence with one process: if all ranks held the same table at the
        previous sync and each sample was observed by at most one rank since
        (e.g. ranks fed by :class:`DistributedAdaptiveSampler` with
        ``replacement=False``), the per-sample state after ``sync()`` equals,
        bit for bit, that of one process that observed, step by step, rank 0's
        batch, then rank 1's, and so on.  If ranks overlap, the result equals
        (up to rounding) one process observing per step the concatenation of
        all ranks' batches when ``sync()`` is called after every step, and is
        an approximation otherwise.  GHM's bin EMA equals one process whose bin
        EMA is driven, step by step, by the mean of the ranks' batch histograms
        (up to rounding), when ranks step in lockstep.

        Not on the training path (it synchronises with the host); call it at
        the end of an epoch, before reading ``weights`` for a sampler.  A no-op
        (apart from resetting the change tracking) when torch.distributed is
        not initialised or has a single rank.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            self._synced_count.copy_(self.seen_count)
            self.recompute_sums()
            return
        world = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        comm = self.device if ("nccl" in backend and self.device.type == "cuda") else torch.device("cpu")

        emas = [self.loss_ema, self.grad_norm_ema]
        if self.policy.tracks_g:
            emas.append(self.policy_state["g_ema"])

        delta = self.seen_count - self._synced_count
        changed = torch.nonzero(delta, as_tuple=False).reshape(-1)
        n = changed.numel()
        sizes = [torch.zeros(1, dtype=torch.int64, device=comm) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=comm), group=group)
        sizes = [int(s) for s in sizes]
        max_n = max(sizes)
        if max_n > 0:
            ints = torch.zeros(2, max_n, dtype=torch.int64, device=comm)
            ints[0, :n] = changed.to(comm)
            ints[1, :n] = delta.index_select(0, changed).to(comm)
            flts = torch.zeros(len(emas), max_n, dtype=torch.float32, device=comm)
            for j, t in enumerate(emas):
                flts[j, :n] = t.index_select(0, changed).to(comm)
            all_ints = [torch.empty_like(ints) for _ in range(world)]
            all_flts = [torch.empty_like(flts) for _ in range(world)]
            dist.all_gather(all_ints, ints, group=group)
            dist.all_gather(all_flts, flts, group=group)
            gi = torch.cat([a[:, :s] for a, s in zip(all_ints, sizes)], dim=1).to(self.device)
            gf = torch.cat([a[:, :s] for a, s in zip(all_flts, sizes)], dim=1).to(self.device)
            idx, cnt, vals = gi[0], gi[1], gf.t()  # (T,), (T,), (T, k)

            sidx, perm = torch.sort(idx, stable=True)
            leader = torch.searchsorted(sidx, sidx)
            scnt = cnt.index_select(0, perm)
            svals = vals.index_select(0, perm)
            nrank = torch.zeros_like(scnt).index_add_(0, leader, torch.ones_like(scnt)).index_select(0, leader)
            tot = torch.zeros_like(scnt).index_add_(0, leader, scnt).index_select(0, leader)
            wsum = torch.zeros(svals.shape, dtype=torch.float64, device=self.device).index_add_(
                0, leader, svals.to(torch.float64) * scnt.unsqueeze(1).to(torch.float64)
            )
            avg = (wsum.index_select(0, leader) / tot.unsqueeze(1).to(torch.float64)).to(torch.float32)
            merged = torch.where((nrank == 1).unsqueeze(1), svals, avg)
            for j, t in enumerate(emas):
                t.index_put_((sidx,), merged[:, j])
            self.seen_count.index_put_((sidx,), self._synced_count.index_select(0, sidx) + tot)

        for name in self.policy.sync_mean_state:
            t = self.policy_state[name]
            buf = t.to(comm, torch.float64)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            t.copy_((buf / world).to(t.dtype))
        for name in self.policy.sync_max_state:
            t = self.policy_state[name]
            buf = t.to(comm).clone()
            dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
            t.copy_(buf)
        self._synced_count.copy_(self.seen_count)
        self.recompute_sums()
