"""Fused linear cross-entropy and linear focal loss (the logits never materialised).

``linear_cross_entropy(input, linear_weight, target, ...)`` is
``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` with the
same arguments, computed chunk by chunk over the rows (tokens): per chunk one
matmul into a chunk x V buffer, one fused row pass that writes the loss and
d(loss)/d(logits) into that buffer, and the matmuls that turn it into the
gradients of input, linear_weight and linear_bias. Peak extra memory is one
chunk x V buffer (plus O(N + V), and a float32 copy of linear_weight's
gradient for half/bfloat16), never N x V. The ops and their autograd are C++
(csrc/linear_loss.cpp); this module checks arguments, flattens (B, T, D)
inputs, registers the fake kernels; linear_modules.py holds the modules.

Two extras of large-vocabulary training:

- ``softcap``: the logits become ``softcap * tanh(logits / softcap)`` before
  anything else (Gemma 2). None is off.
- ``z_loss``: each token's loss gains ``z_loss * lse**2``, lse the log-sum-exp
  of its (softcapped) logits (PaLM), weighted and reduced like the
  cross-entropy term: the same sample weight, the target's class weight
  (``weight``; ``alpha`` for the focal loss) and the same mean denominator.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from . import _loader
from . import _validation as V

__all__ = ["linear_cross_entropy", "linear_focal_loss"]

_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


# ---------------------------------------------------------------------------
# Argument checks (the C++ op checks the same again)


def _check_tensor(value, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    return value


def _check_args(op, input, linear_weight, target, linear_bias, class_weight, cw_name,
                sample_weight, reduction, z_loss, softcap, chunk_size):
    _check_tensor(input, "input")
    _check_tensor(linear_weight, "linear_weight")
    _check_tensor(target, "target")
    if not input.dtype.is_floating_point:
        raise TypeError(f"{op}: input must be floating point, got {input.dtype}")
    if input.dim() not in (2, 3):
        raise ValueError(f"{op}: input must be (N, D) or (B, T, D), got shape {tuple(input.shape)}")
    if linear_weight.dim() != 2:
        raise ValueError(f"{op}: linear_weight must be (V, D), got shape {tuple(linear_weight.shape)}")
    d = input.shape[-1]
    if linear_weight.shape[1] != d:
        raise ValueError(f"{op}: linear_weight has D={linear_weight.shape[1]} columns but input has "
                         f"D={d} features (input {tuple(input.shape)}, linear_weight "
                         f"{tuple(linear_weight.shape)})")
    if linear_weight.dtype != input.dtype:
        raise TypeError(f"{op}: linear_weight must have input's dtype {input.dtype}, got {linear_weight.dtype}")
    v = linear_weight.shape[0]
    if linear_bias is not None:
        _check_tensor(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (v,):
            raise ValueError(f"{op}: linear_bias must have shape ({v},), got {tuple(linear_bias.shape)}")
        if linear_bias.dtype != input.dtype:
            raise TypeError(f"{op}: linear_bias must have input's dtype {input.dtype}, got {linear_bias.dtype}")
    if target.dim() >= 1 and target.shape[0] != input.shape[0]:
        raise ValueError(f"{op}: Expected input batch_size ({input.shape[0]}) to match target "
                         f"batch_size ({target.shape[0]}).")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise V.TypeRuntimeError(f"{op}: expected target dtype to be Long or Byte, but got "
                                 f"{V.scalar_type(target.dtype)}: target must hold class indices "
                                 f"(an integer tensor), got {target.dtype}")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"{op}: target must have shape {tuple(input.shape[:-1])} (input's without D), "
                         f"got {tuple(target.shape)}")
    if class_weight is not None:
        _check_tensor(class_weight, cw_name)
        if not class_weight.dtype.is_floating_point:
            raise TypeError(f"{op}: {cw_name} must be floating point, got {class_weight.dtype}")
        if tuple(class_weight.shape) != (v,):
            raise V.ValueRuntimeError(f"{op}: {cw_name} tensor should be defined either for all {v} "
                                      f"classes or no classes but got {cw_name} tensor of shape: "
                                      f"{list(class_weight.shape)}")
    if sample_weight is not None:
        _check_tensor(sample_weight, "sample_weight")
        if not sample_weight.dtype.is_floating_point:
            raise TypeError(f"{op}: sample_weight must be floating point, got {sample_weight.dtype}")
        if tuple(sample_weight.shape) != tuple(target.shape):
            raise ValueError(f"{op}: sample_weight must have target's shape {tuple(target.shape)}, "
                             f"got {tuple(sample_weight.shape)}")
    for name, t in (("linear_weight", linear_weight), ("target", target), ("linear_bias", linear_bias),
                    (cw_name, class_weight), ("sample_weight", sample_weight)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{op}: {name} must be on input's device {input.device}, got {t.device}")
    for name, t in ((cw_name, class_weight), ("sample_weight", sample_weight)):
        if t is not None and torch.is_grad_enabled() and t.requires_grad:
            raise ValueError(f"{op}: {name} is not differentiated; pass {name}.detach()")
    if not isinstance(reduction, str) or reduction not in _REDUCTION:
        raise ValueError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    z_loss, softcap = V.check_z_loss(z_loss), V.check_softcap(softcap)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"{op}: chunk_size must be an int or None, got {type(chunk_size).__name__}")
        if chunk_size <= 0:
            raise ValueError(f"{op}: chunk_size must be > 0, got {chunk_size}")
        chunk_size = int(chunk_size)
    return z_loss, softcap, chunk_size


def _check_values(op, target, ignore_index, v, class_weight, cw_name, sample_weight):
    """Target range and weight signs: on the CPU always, elsewhere with
    validation on (a device sync); never while tracing."""
    if not V.validation_enabled(target) or target.numel() == 0:
        return
    t = target.reshape(-1)
    bad = (t != ignore_index) & ((t < 0) | (t >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise IndexError(f"{op}: Target {int(t[i])} is out of bounds for {v} classes "
                         f"(the rows of linear_weight), at position {i} of target")
    for name, w in ((cw_name, class_weight), ("sample_weight", sample_weight)):
        if w is not None and w.numel() and not bool((torch.isfinite(w) & (w >= 0)).all()):
            raise ValueError(f"{op}: {name} must be non-negative and finite")


# ---------------------------------------------------------------------------
# The materialised form: the fallback where no kernel is built (and the
# definition the ops are tested against)


def materialised_loss(input, linear_weight, target, *, linear_bias=None, class_weight=None,
                      sample_weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      z_loss=0.0, softcap=None, focal=False, gamma=2.0) -> Tensor:
    """The loss computed from the full N x V logits, with samplewt_ops's own
    cross_entropy / focal_loss: what the fused ops equal."""
    from . import functional as F

    d, v = input.shape[-1], linear_weight.shape[0]
    out_shape = target.shape
    x, y = input.reshape(-1, d), target.reshape(-1).long()
    sw = None if sample_weight is None else sample_weight.reshape(-1)
    logits = torch.nn.functional.linear(x, linear_weight, linear_bias)
    if focal:
        rows = F.focal_loss(logits, y, alpha=class_weight, sample_weight=sw, gamma=gamma,
                            ignore_index=ignore_index, reduction="none", z_loss=z_loss,
                            softcap=softcap)
    else:
        rows = F.cross_entropy(logits, y, weight=class_weight, sample_weight=sw,
                               ignore_index=ignore_index, label_smoothing=label_smoothing,
                               reduction="none", z_loss=z_loss, softcap=softcap)
    valid = (y != ignore_index).to(rows.dtype)
    share = valid if sw is None else valid * sw.to(rows.dtype)
    if class_weight is not None and not focal:
        share = share * class_weight.to(rows.dtype)[y.clamp(0, v - 1)]
    if reduction == "none":
        return rows.reshape(out_shape)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / share.sum()


def _materialised_stats(focal, input, linear_weight, target, linear_bias, class_weight, ignore_index,
                        label_smoothing, gamma, z_loss, softcap) -> Tensor:
    """Per token, as the op's compute_stats gives them: the loss without
    sample weight, the norm of d(loss)/d(capped logits), 1 - p_y."""
    from . import functional as F

    with torch.no_grad():
        logits = torch.nn.functional.linear(input.reshape(-1, input.shape[-1]), linear_weight, linear_bias)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
    y = target.reshape(-1).long()
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        if focal:
            per = F.focal_loss(z, y, alpha=class_weight, gamma=gamma, ignore_index=ignore_index,
                               reduction="none", z_loss=z_loss)
        else:
            per = F.cross_entropy(z, y, weight=class_weight, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction="none", z_loss=z_loss)
        (g,) = torch.autograd.grad(per.sum(), z)
    p_y = torch.softmax(logits.float(), 1).gather(1, y.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
    ghm = torch.where(y != ignore_index, 1.0 - p_y, torch.zeros_like(p_y))
    return torch.stack((per.detach().float(), g.float().norm(dim=1), ghm), dim=1)


# ---------------------------------------------------------------------------
# The public functions


def _run(focal, input, linear_weight, target, linear_bias, class_weight, sample_weight, ignore_index,
         reduction, label_smoothing, gamma, z_loss, softcap, chunk_size, table=None, indices=None):
    op = "samplewt_ops.linear_focal_loss" if focal else "samplewt_ops.linear_cross_entropy"
    cw_name = "alpha" if focal else "weight"
    z_loss, softcap, chunk_size = _check_args(op, input, linear_weight, target, linear_bias,
                                              class_weight, cw_name, sample_weight, reduction, z_loss,
                                              softcap, chunk_size)
    ignore_index = V.check_ignore_index(ignore_index)
    if focal:
        gamma = V.check_gamma(gamma)
    else:
        label_smoothing = V.check_label_smoothing(label_smoothing)
    v = linear_weight.shape[0]
    _check_values(op, target, ignore_index, v, class_weight, cw_name, sample_weight)
    if table is not None or indices is not None:
        return _table_loss(focal, table, indices, input, linear_weight, target, linear_bias,
                           class_weight, sample_weight, ignore_index, reduction, label_smoothing,
                           gamma, z_loss, softcap, chunk_size)
    if not _loader.has_kernel(input.device) or V.transformed():
        return materialised_loss(input, linear_weight, target, linear_bias=linear_bias,
                                 class_weight=class_weight, sample_weight=sample_weight,
                                 ignore_index=ignore_index, reduction=reduction,
                                 label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                                 focal=focal, gamma=gamma)
    return _op_call(focal, input, linear_weight, target, linear_bias, class_weight, sample_weight,
                    ignore_index, reduction, label_smoothing, gamma, z_loss, softcap, chunk_size)[0]


def _op_call(focal, input, linear_weight, target, linear_bias, class_weight, sample_weight,
             ignore_index, reduction, label_smoothing, gamma, z_loss, softcap, chunk_size,
             compute_stats=False):
    """The compiled op on checked arguments: (loss, per-token statistics (N, 3) or None)."""
    if not _loader.has_kernel(input.device) or V.transformed():
        loss = materialised_loss(input, linear_weight, target, linear_bias=linear_bias,
                                 class_weight=class_weight, sample_weight=sample_weight,
                                 ignore_index=ignore_index, reduction=reduction,
                                 label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                                 focal=focal, gamma=gamma)
        stats = None
        if compute_stats:
            stats = _materialised_stats(focal, input, linear_weight, target, linear_bias, class_weight,
                                        ignore_index, label_smoothing, gamma, z_loss, softcap)
        return loss, stats
    x = input.reshape(-1, input.shape[-1])
    y = target.reshape(-1)
    if y.dtype not in (torch.int64, torch.int32):
        y = y.long()
    sw = None if sample_weight is None else sample_weight.reshape(-1)
    # The gradients autograd needs (a frozen head or input saves its matmul).
    mask = 0
    if torch.is_grad_enabled():
        mask = (int(input.requires_grad) | 2 * int(linear_weight.requires_grad)
                | 4 * int(linear_bias is not None and linear_bias.requires_grad))
    needs_grad = mask != 0
    red = _REDUCTION[reduction]
    if focal:
        out = torch.ops.samplewt_ops.linear_focal_loss(
            x, linear_weight, y, linear_bias, class_weight, sw, gamma, ignore_index, z_loss, softcap,
            red, chunk_size, needs_grad and red != 0, mask, None, compute_stats)
    else:
        out = torch.ops.samplewt_ops.linear_cross_entropy(
            x, linear_weight, y, linear_bias, class_weight, sw, ignore_index, label_smoothing, z_loss,
            softcap, red, chunk_size, needs_grad and red != 0, mask, None, compute_stats)
    loss = out[0].reshape(target.shape) if red == 0 else out[0]
    return loss, (out[4] if compute_stats else None)


def _table_loss(focal, table, indices, input, linear_weight, target, linear_bias, class_weight,
                sample_weight, ignore_index, reduction, label_smoothing, gamma, z_loss, softcap,
                chunk_size):
    """The loss with an adaptive weight table, by cross_entropy's protocol
    (weights/driver.py): the samples are input's first dimension (tokens of an
    (N, D) input, sequences of a (B, T, D) one, whose tokens' statistics are
    summed as cross_entropy sums an (N, C, d) input's positions). History
    policies weight the batch before the pass; OHEM and GHM weight it from
    the pass's own statistics (an unreduced pass, reduced here). The table
    sees the op's statistics: the loss without sample weight (z term
    included), the norm of d(loss)/d(logits) and 1 - p_y."""
    from .weights.driver import fold_positions

    name = "focal_loss" if focal else "cross_entropy"
    if table is None or indices is None:
        raise ValueError(f"samplewt_ops.linear_{name}: table and indices go together; got "
                         f"{'indices' if table is None else 'table'} alone")
    table.check_loss(name)
    batch = target.shape[0] if target.dim() > 0 else 1
    indices = table.check_indices(indices, batch, input.device)
    tokens = target.reshape(batch, -1)
    valid = tokens != ignore_index
    sample_valid = valid.any(1)

    def per_token(w):  # one weight per sample, as one per token
        return w.to(input.dtype if input.dtype == torch.float64 else torch.float32)[:, None].expand_as(tokens)

    def run(sw, red):
        return _op_call(focal, input, linear_weight, target, linear_bias, class_weight, sw,
                        ignore_index, red, label_smoothing, gamma, z_loss, softcap, chunk_size,
                        compute_stats=True)

    if not table.policy.per_batch:
        tw = per_token(table.batch_weights(indices, valid=sample_valid)).reshape(target.shape)
        sw = tw if sample_weight is None else tw * sample_weight.to(tw.dtype)
        loss, stats = run(sw, reduction)
        stats = fold_positions(stats, batch)
        table.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=sample_valid)
        return loss
    per, stats = run(sample_weight, "none")
    stats = fold_positions(stats, batch)
    bw = table.batch_weights(indices, loss=stats[:, 0], g=stats[:, 2], valid=sample_valid)
    table.observe(indices, stats[:, 0], stats[:, 1], stats[:, 2], valid=sample_valid)
    bw_tok = per_token(bw).reshape(target.shape)
    weighted = per * bw_tok.to(per.dtype)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    # The mean's denominator: each token's share (valid, times cw[y] for
    # cross-entropy) times its batch and sample weights.
    share = valid.reshape(target.shape).to(bw_tok.dtype) * bw_tok
    if sample_weight is not None:
        share = share * sample_weight.to(share.dtype)
    if class_weight is not None and not focal:
        y = target.long().clamp(0, linear_weight.shape[0] - 1)
        share = share * class_weight.to(share.dtype)[y]
    return weighted.sum() / share.sum().to(weighted.dtype)


def _check_options(op, options):
    """torch's LinearCrossEntropyOptions, or None (see linear_cross_entropy)."""
    options_type = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options is None or (options_type is not None and isinstance(options, options_type)):
        return
    raise TypeError(f"{op}: options must be None or a torch.nn.LinearCrossEntropyOptions, "
                    f"got {type(options).__name__}")


def _dispatch(focal, input, linear_weight, target, linear_bias, class_weight, sample_weight,
              ignore_index, reduction, label_smoothing, gamma, z_loss, softcap, chunk_size, table,
              indices):
    """torch's forms of the call (see linear_cross_entropy): class indices with
    a (V, D) head take the fused ops, an unbatched (D,) input as a batch of
    one; probability targets and K-dimensional heads the logits path."""
    op = "samplewt_ops.linear_focal_loss" if focal else "samplewt_ops.linear_cross_entropy"
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        _check_tensor(t, name)
    # torch takes (D,) and (N, D) inputs; a (B, T, D) one with a (B, T) target
    # (or one of the logits' shape) is this package's.
    tokens = (tuple(input.shape[:-1]), (*input.shape[:-1], *linear_weight.shape[:1]))
    if input.dim() not in (1, 2) and not (input.dim() == 3 and tuple(target.shape) in tokens):
        raise V.ValueRuntimeError(
            f"{op}: expected input with dimensionality 1 or 2, got {input.dim()} ((D,) or (N, D); "
            f"also (B, T, D) with a (B, T) target, got target shape {tuple(target.shape)})")
    if linear_weight.dim() < 2:
        raise V.ValueRuntimeError(f"{op}: expected linear_weight with dimensionality at least 2, got "
                                  f"{linear_weight.dim()} ((V, D) or (V, d_1, ..., d_K, D))")
    d, v = input.shape[-1], linear_weight.shape[0]
    if linear_weight.shape[-1] != d:
        raise V.ValueRuntimeError(f"{op}: expected equal input and linear_weight last dimensions "
                          f"(in_features), got {d} and {linear_weight.shape[-1]}, respectively "
                          f"(input has D={d} features, linear_weight D={linear_weight.shape[-1]})")
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None:
        _check_tensor(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (v, *out_features):
            raise V.ValueRuntimeError(f"{op}: expected linear_bias shape {(v, *out_features)}, "
                              f"got {tuple(linear_bias.shape)}")
    if out_features and input.dim() != 2:
        raise V.ValueRuntimeError(f"{op}: K-dimensional loss defined by linear_weight shape "
                          f"{tuple(linear_weight.shape)} requires batched input, (N, {d}), got "
                                  f"{'unbatched ' if input.dim() == 1 else ''}input with shape "
                                  f"{tuple(input.shape)}")
    # torch's test: a target of the logits' shape holds class probabilities.
    probabilities = tuple(target.shape) == (*input.shape[:-1], v, *out_features)
    if probabilities and ignore_index is not None:
        raise V.ValueRuntimeError(f"{op}: ignore_index cannot be specified when target contains "
                          f"probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    if out_features or probabilities:
        return _logits_loss(op, focal, probabilities, input, linear_weight, target, linear_bias,
                            class_weight, sample_weight, ignore_index, reduction, label_smoothing,
                            gamma, z_loss, softcap, table, indices)
    if input.dim() == 1:
        if target.dim() != 0:
            raise V.ValueRuntimeError(f"{op}: an unbatched input (D,) takes a 0-d target, got shape "
                              f"{tuple(target.shape)}")
        if sample_weight is not None:
            _check_tensor(sample_weight, "sample_weight")
            if sample_weight.dim() != 0:
                raise V.ValueRuntimeError(f"{op}: sample_weight must have target's shape (), got "
                                  f"{tuple(sample_weight.shape)}")
            sample_weight = sample_weight.reshape(1)
        if isinstance(indices, Tensor) and indices.dim() == 0:
            indices = indices.reshape(1)
        loss = _run(focal, input.unsqueeze(0), linear_weight, target.reshape(1), linear_bias,
                    class_weight, sample_weight, ignore_index, reduction, label_smoothing, gamma,
                    z_loss, softcap, chunk_size, table, indices)
        return loss.reshape(()) if reduction == "none" else loss
    return _run(focal, input, linear_weight, target, linear_bias, class_weight, sample_weight,
                ignore_index, reduction, label_smoothing, gamma, z_loss, softcap, chunk_size, table,
                indices)


def _logits_loss(op, focal, probabilities, input, linear_weight, target, linear_bias, class_weight,
                 sample_weight, ignore_index, reduction, label_smoothing, gamma, z_loss, softcap,
                 table, indices):
    """The forms the fused ops do not take, as torch's F.linear_cross_entropy
    computes them too: the logits (N, V, d_1..d_K) or (rows, V), then
    samplewt_ops.cross_entropy / focal_loss, sample_weight one per row."""
    from . import functional as F

    if not input.dtype.is_floating_point:
        raise TypeError(f"{op}: input must be floating point, got {input.dtype}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{op}: {name} must have input's dtype {input.dtype}, got {t.dtype}")
    if probabilities and focal:
        raise TypeError(f"{op}: target must hold class indices; got the logits' shape "
                        f"{tuple(target.shape)} (class probabilities)")
    d, v = input.shape[-1], linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    batch = tuple(input.shape[:-1])
    if sample_weight is not None:
        _check_tensor(sample_weight, "sample_weight")
        if tuple(sample_weight.shape) != batch:
            raise V.ValueRuntimeError(f"{op}: sample_weight must have one weight per row of input, shape "
                              f"{batch}, got {tuple(sample_weight.shape)}")
    if table is not None and input.dim() == 3:
        raise V.ValueRuntimeError(f"{op}: a table with a (B, T, D) input takes class indices, not "
                          f"probabilities")
    logits = torch.nn.functional.linear(
        input.reshape(-1, d), linear_weight.reshape(-1, d),
        None if linear_bias is None else linear_bias.reshape(-1))
    if out_features:
        logits, t = logits.reshape(input.shape[0], v, *out_features), target
        sw = sample_weight
    else:  # probabilities: one row of logits per row of input
        t = target.reshape(-1, v)
        sw = None if sample_weight is None else sample_weight.reshape(-1)
    kw = {} if table is None and indices is None else {"table": table, "indices": indices}
    if focal:
        loss = F.focal_loss(logits, t, gamma=gamma, alpha=class_weight, sample_weight=sw,
                            ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
                            softcap=softcap, **kw)
    else:
        loss = F.cross_entropy(logits, t, weight=class_weight, sample_weight=sw,
                               ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                               **kw)
    return loss.reshape(batch) if reduction == "none" and not out_features else loss


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                         sample_weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                         reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                         softcap: Optional[float] = None, chunk_size: Optional[int] = None,
                         table=None, indices: Optional[Tensor] = None, options=None) -> Tensor:
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` without the N x V logits.

    loss_i = sw_i * (logsumexp(z_i) - z_i[y_i]) with z_i = x_i W^T + b, reduced
    as :func:`samplewt_ops.cross_entropy` reduces it. The result equals
    ``samplewt_ops.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)``
    and, with ``sample_weight=None``, torch's ``F.linear_cross_entropy`` with
    the same arguments, in every form that one takes:

    - input (N, D), (D,) unbatched, or (B, T, D); linear_weight (V, D),
      linear_bias (V,), target class indices of input's shape without D;
    - class probabilities as target (input's shape without D, then V): torch's
      test, target.shape == the logits' shape; ``ignore_index`` must then stay None;
    - a K-dimensional loss: linear_weight (V, d_1..d_K, D), linear_bias
      (V, d_1..d_K), input (N, D), target (N, d_1..d_K) or (N, V, d_1..d_K).

    Class indices with a (V, D) head take the fused ops: one chunk x V buffer at a
    time, never N x V. Probability targets and K-dimensional heads compute the
    logits, as torch's own function does for them, and go through
    :func:`samplewt_ops.cross_entropy`.

    ``sample_weight`` has one weight per row of input (input's shape without
    D: per token). ``weight``, ``ignore_index`` (None: -100 for class
    indices), ``reduction`` and ``label_smoothing`` are those of
    :func:`samplewt_ops.cross_entropy`. ``softcap`` (> 0) caps the logits as
    ``softcap * tanh(logits / softcap)``; ``z_loss`` (>= 0) adds
    ``z_loss * logsumexp(logits)**2`` per token, weighted and reduced like the
    cross-entropy term. ``chunk_size`` rows are processed at a time (default:
    a chunk x V buffer of at most 32 MiB, a multiple of 64 rows where it
    holds that many). ``options`` is torch's ``LinearCrossEntropyOptions``
    (or None), accepted for drop-in use: it picks torch's chunking, and this
    function always chunks its own way. ``table`` (an
    :class:`~samplewt_ops.weights.AdaptiveWeights`) and ``indices`` weight the
    samples as in :func:`samplewt_ops.cross_entropy`: the samples are input's
    first dimension (tokens of (N, D), sequences of (B, T, D)), and the
    table's weights multiply ``sample_weight``.

    Example:
        >>> x = torch.randn(2, 16, 64, requires_grad=True)       # (B, T, D) hidden states
        >>> head = torch.randn(1000, 64, requires_grad=True)      # (V, D)
        >>> y = torch.randint(0, 1000, (2, 16))
        >>> loss = samplewt_ops.linear_cross_entropy(x, head, y, sample_weight=torch.rand(2, 16))
        >>> loss.backward()
    """
    _check_options("samplewt_ops.linear_cross_entropy", options)
    return _dispatch(False, input, linear_weight, target, linear_bias, weight, sample_weight,
                     ignore_index, reduction, label_smoothing, 0.0, z_loss, softcap, chunk_size,
                     table, indices)


def linear_focal_loss(input: Tensor, linear_weight: Tensor, target: Tensor, *, gamma: float = 2.0,
                      alpha=None, linear_bias: Optional[Tensor] = None,
                      sample_weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                      reduction: str = "mean", z_loss: float = 0.0, softcap: Optional[float] = None,
                      chunk_size: Optional[int] = None, table=None,
                      indices: Optional[Tensor] = None) -> Tensor:
    """Softmax focal loss of ``input @ linear_weight.T + linear_bias`` without the N x V logits.

    Equals ``samplewt_ops.focal_loss(F.linear(input, linear_weight, linear_bias), target,
    gamma=gamma, alpha=alpha, ...)``; ``alpha`` is None, a float or a (V,)
    tensor. Everything else as :func:`linear_cross_entropy` (z-loss weighted
    by ``alpha`` of the target class, like the focal term), the unbatched and
    K-dimensional forms included; the target holds class indices.

    Example:
        >>> x = torch.randn(32, 64, requires_grad=True)
        >>> head = torch.randn(1000, 64, requires_grad=True)
        >>> loss = samplewt_ops.linear_focal_loss(x, head, torch.randint(0, 1000, (32,)), gamma=2.0)
    """
    if alpha is not None and not isinstance(alpha, Tensor):
        alpha_value = V.check_real(alpha, "alpha", finite=True)
        _check_tensor(linear_weight, "linear_weight")
        if linear_weight.dim() >= 2:
            dtype = torch.float64 if linear_weight.dtype == torch.float64 else torch.float32
            alpha = torch.full((linear_weight.shape[0],), alpha_value, dtype=dtype,
                               device=linear_weight.device)
    return _dispatch(True, input, linear_weight, target, linear_bias, alpha, sample_weight,
                     ignore_index, reduction, 0.0, gamma, z_loss, softcap, chunk_size, table, indices)


# ---------------------------------------------------------------------------
# Fake kernels (torch.compile, opcheck): the structural checks and the shapes


def _fake(input, linear_weight, target, linear_bias, class_weight, sample_weight, *rest, **_kwargs):
    # rest: the op's scalars (gamma/ignore_index or ignore_index/label_smoothing,
    # z_loss, softcap), then reduction, chunk_size, compute_grad[, grad_mask,
    # grad_rows, compute_stats].
    reduction, chunk_size, compute_grad = rest[4], rest[5], rest[6]
    mask = rest[7] if len(rest) > 7 else _kwargs.get("grad_mask", 7)
    compute_stats = rest[9] if len(rest) > 9 else _kwargs.get("compute_stats", False)
    torch._check_value(input.dim() == 2, lambda: f"samplewt_ops: input must be 2-D, got {input.shape}")
    torch._check_value(linear_weight.dim() == 2 and linear_weight.shape[1] == input.shape[1],
                       lambda: f"samplewt_ops: linear_weight {linear_weight.shape} does not match "
                               f"input {input.shape}")
    torch._check_type(linear_weight.dtype == input.dtype,
                      lambda: "samplewt_ops: linear_weight must have input's dtype")
    n, v = input.shape[0], linear_weight.shape[0]
    torch._check_value(target.shape == (n,), lambda: f"samplewt_ops: target must have shape ({n},)")
    if linear_bias is not None:
        torch._check_value(linear_bias.shape == (v,), lambda: f"samplewt_ops: linear_bias must have shape ({v},)")
    if class_weight is not None:
        torch._check_value(class_weight.shape == (v,), lambda: f"samplewt_ops: weight must have shape ({v},)")
    if sample_weight is not None:
        torch._check_value(sample_weight.shape == (n,), lambda: f"samplewt_ops: sample_weight must have shape ({n},)")
    torch._check_value(reduction in (0, 1, 2), lambda: f"samplewt_ops: bad reduction {reduction}")
    torch._check_value(chunk_size is None or chunk_size > 0, lambda: "samplewt_ops: chunk_size must be > 0")
    loss = input.new_empty((n,) if reduction == 0 else ())
    torch._check_value(0 <= mask <= 7, lambda: f"samplewt_ops: grad_mask must be in [0, 7], got {mask}")
    mask = mask if compute_grad else 0
    grad_x = input.new_empty(input.shape) if mask & 1 else input.new_empty((0,))
    grad_w = linear_weight.new_empty(linear_weight.shape) if mask & 2 else input.new_empty((0,))
    grad_b = input.new_empty((v,)) if linear_bias is not None and mask & 4 else input.new_empty((0,))
    stats = input.new_empty((n, 3) if compute_stats else (0,), dtype=torch.float32)
    return loss, grad_x, grad_w, grad_b, stats


if _loader.COMPILED:
    for _name in ("linear_cross_entropy", "linear_focal_loss"):
        torch.library.register_fake(f"samplewt_ops::{_name}")(_fake)
