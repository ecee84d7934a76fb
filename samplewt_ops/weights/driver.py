"""A loss under an adaptive weight table: the driver between the public losses
(``table=``, ``indices=``) and :class:`AdaptiveWeights`.

The loss hands over ``run(sample_weight, reduction, want_stats) -> (loss,
stats)``, its compiled kernel or its reference; the driver takes the batch's
weights from the table, runs the pass and feeds its per-sample statistics
(loss, gradient norm, GHM magnitude) back. Everything loss-specific comes
from the loss's op spec (its family and mean rule).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._spec import MEAN_CLASS_WEIGHT, MEAN_NOT_IGNORED, MEAN_WEIGHT
from .._validation import LossCall, num_classes


def reference_stats(call: LossCall) -> Tensor:
    """Per-sample (loss, |grad|, g) of the reference, with plain autograd."""
    spec, input, target, args = call.spec, call.input, call.target, call.args
    n = spec.batch_size(input)
    if args.get("softcap") is not None:
        # The statistics of the capped logits, which the softmax sees (as the kernels have them).
        cap = args["softcap"]
        input = (cap * torch.tanh(input.detach() / cap)).to(input.dtype)
        args = dict(args, softcap=None)
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        per = spec.reference(x, target, reduction="none", **args)
        (g,) = torch.autograd.grad(per.sum(), x)
    loss = per.detach().float().reshape(n, -1).sum(1)
    g_norm = g.float().reshape(n, -1).norm(dim=1)
    if spec.rows:
        c = num_classes(input)
        logp = torch.log_softmax(input.detach().float(), dim=0 if input.dim() == 1 else 1)
        if call.prob:
            ghm = 0.5 * (logp.exp() - target.float()).abs().sum(0 if input.dim() == 1 else 1)
        else:
            t = target.long().clamp(0, c - 1)
            p_y = logp.unsqueeze(0).gather(1, t.reshape(1, -1)) if input.dim() == 1 else logp.gather(1, t.unsqueeze(1))
            ghm = 1.0 - p_y.exp().squeeze(1)
        ghm = ghm.reshape(n, -1).mean(1)
    else:
        ghm = (torch.sigmoid(input.detach().float()) - target.float()).abs().reshape(n, -1).mean(1)
    return torch.stack((loss, g_norm, ghm), dim=1)


def fold_positions(stats: Tensor, batch: int) -> Tensor:
    """(rows, 3) statistics of `batch` samples with rows // batch positions
    each, per sample: the losses summed, the gradient norms combined, g
    averaged (as cross_entropy folds an (N, C, d1..dk) input's positions)."""
    if stats.shape[0] == batch:
        return stats
    s = stats.reshape(batch, -1, 3)
    return torch.stack((s[..., 0].sum(1), s[..., 1].square().sum(1).sqrt(), s[..., 2].mean(1)), dim=1)


def _mean_share(call: LossCall, batch: int, dtype=torch.float32) -> Tensor:
    """Per sample: what the loss's reduction="mean" divides by (its mean rule)."""
    spec, input, args = call.spec, call.input, call.args
    weight = args.get("weight")
    if spec.mean in (MEAN_CLASS_WEIGHT, MEAN_NOT_IGNORED) and not call.prob:
        t = call.target.reshape(batch, -1)
        valid = t != args["ignore_index"]
        if spec.mean == MEAN_CLASS_WEIGHT and weight is not None:
            per = torch.where(valid, weight.to(dtype)[t.clamp(0, num_classes(input) - 1)], 0.0)
        else:
            per = valid.to(dtype)
        return per.sum(1)
    if spec.mean == MEAN_WEIGHT and weight is not None:
        return weight.to(dtype).reshape(batch, -1).sum(1)
    per = input.numel() // batch if batch else 0  # elements per sample
    if spec.rows:
        per //= num_classes(input)  # positions per sample
    return torch.full((batch,), float(per), dtype=dtype, device=input.device)


def weighted_reduce(call: LossCall, per: Tensor, w: Tensor, reduction: str,
                    mean_weight: Tensor = None) -> Tensor:
    """The unreduced loss `per` of `call` times the per-sample weights `w`,
    reduced: "mean" is sum_i w_i l_i / sum_i m_i s_i, with s_i the sample's
    share of the mean (its mean rule) and m = mean_weight (default w).
    Differentiable in `per` and in `w`."""
    batch = call.spec.batch_size(call.input)
    w_b = w.reshape((batch,) + (1,) * (per.dim() - 1)) if per.dim() > 0 else w.reshape(())
    weighted = per * w_b.to(per.dtype)
    if reduction != "mean":
        return weighted if reduction == "none" else weighted.sum()
    m = w if mean_weight is None else mean_weight
    share = _mean_share(call, batch, torch.float64 if m.dtype == torch.float64 else torch.float32)
    return weighted.sum() / (m * share.to(m.dtype)).sum()


def table_loss(call: LossCall, run: Callable, table, indices) -> Tensor:
    """Drive `run(sample_weight, reduction, want_stats) -> (loss, stats)` with a table.

    History policies give their weights before the pass. Per-batch policies
    (OHEM, GHM) need this batch's losses: the pass runs unreduced, and their
    weights then scale each sample's loss and, through backward, its gradient.
    Samples that do not count (wholly ignore_index) leave the table unchanged.
    """
    sample_weight, reduction = call.sample_weight, call.reduction
    table.check_loss(call.spec.name)
    batch = call.spec.batch_size(call.input)
    device = call.input.device
    indices = table.check_indices(indices, batch, device)
    valid = None
    if call.spec.rows and not call.prob:
        valid = (call.target.reshape(batch, -1) != call.args["ignore_index"]).any(1)
    if not table.policy.per_batch:
        tw = table.batch_weights(indices, valid=valid)
        sw = tw if sample_weight is None else tw * sample_weight.to(tw.dtype)
        loss, stats = run(sw.to(device), reduction, True)
        stats = stats.detach()
        table.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=valid)
        return loss
    per, stats = run(sample_weight, "none", True)
    stats = stats.detach()
    bw = table.batch_weights(indices, loss=stats[:, 0], g=stats[:, 2], valid=valid).to(per.dtype)
    table.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=valid)
    mean_weight = bw if sample_weight is None else bw * sample_weight.to(bw.dtype)
    return weighted_reduce(call, per, bw, reduction, mean_weight)
