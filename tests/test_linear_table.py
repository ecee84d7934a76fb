"""Adaptive weight tables with the fused linear losses: the same protocol and
statistics as cross_entropy / focal_loss on the materialised logits (which
have their own table tests), for every policy, both losses, the three
reductions, (N, D) inputs (a sample per token) and (B, T, D) inputs (a sample
per sequence)."""
import pytest
import torch

import samplewt_ops
from samplewt_ops import _loader, linear
from samplewt_ops.weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced, SmallLoss

pytestmark = pytest.mark.skipif(not _loader.COMPILED, reason="extension not built")

S = 30
POLICIES = {
    "LossEMA": lambda: LossEMA(momentum=0.7, power=1.5, min_weight=0.2, max_weight=4.0),
    "GradNormEMA": lambda: GradNormEMA(momentum=0.6),
    "SelfPaced": lambda: SelfPaced(1.2, soft=False, momentum=0.5),
    "OHEM": lambda: OHEM(keep_ratio=0.6),
    "GHM": lambda: GHM(bins=7, momentum=0.75),
    "SmallLoss": lambda: SmallLoss(0.3, ramp_epochs=0, min_weight=0.1, momentum=0.8),
}


def _head(gen, d=8, v=13):
    w = (torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    return w, b


def _assert_tables_close(a, b):
    torch.testing.assert_close(a.ema, b.ema, rtol=1e-6, atol=1e-8)
    assert torch.equal(a.seen_count, b.seen_count)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_tokens_match_materialised_cross_entropy(policy, focal, reduction):
    name = "focal_loss" if focal else "cross_entropy"
    if not POLICIES[policy]().supports(name):
        pytest.skip(f"{policy} does not weight {name}")
    gen = torch.Generator().manual_seed(3)
    w, b = _head(gen)
    cw = torch.rand(13, generator=gen, dtype=torch.float64) + 0.5
    own = dict(alpha=cw, gamma=2.0) if focal else dict(weight=cw, label_smoothing=0.1)
    fused_fn = samplewt_ops.linear_focal_loss if focal else samplewt_ops.linear_cross_entropy
    mat_fn = samplewt_ops.focal_loss if focal else samplewt_ops.cross_entropy
    fused_t, mat_t = AdaptiveWeights(S, POLICIES[policy]()), AdaptiveWeights(S, POLICIES[policy]())
    for step in range(4):
        x = torch.randn(10, 8, generator=gen, dtype=torch.float64).requires_grad_()
        y = torch.randint(0, 13, (10,), generator=gen)
        y[4] = -100
        idx = torch.randint(0, S, (10,), generator=gen)
        sw = torch.rand(10, generator=gen, dtype=torch.float64) + 0.2
        got = fused_fn(x, w, y, linear_bias=b, sample_weight=sw, reduction=reduction, z_loss=0.01,
                       chunk_size=3, table=fused_t, indices=idx, **own)
        grads = torch.autograd.grad(got.sum(), (x, w, b))
        logits = torch.nn.functional.linear(x, w, b)
        want = mat_fn(logits, y, sample_weight=sw, reduction=reduction, z_loss=0.01, table=mat_t,
                      indices=idx, **own)
        grads_want = torch.autograd.grad(want.sum(), (x, w, b))
        torch.testing.assert_close(got, want)
        for g, gw in zip(grads, grads_want):
            torch.testing.assert_close(g, gw)
        _assert_tables_close(fused_t, mat_t)
        if step == 1:
            fused_t.step_epoch()
            mat_t.step_epoch()


@pytest.mark.parametrize("policy", ["LossEMA", "OHEM", "GHM"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_sequences_are_the_samples_of_a_3d_input(policy, reduction):
    gen = torch.Generator().manual_seed(5)
    w, b = _head(gen)
    fused_t, mat_t = AdaptiveWeights(S, POLICIES[policy]()), AdaptiveWeights(S, POLICIES[policy]())
    for _ in range(3):
        x = torch.randn(4, 6, 8, generator=gen, dtype=torch.float64).requires_grad_()
        y = torch.randint(0, 13, (4, 6), generator=gen)
        y[1, 2] = -100
        idx = torch.randperm(S, generator=gen)[:4]
        sw = torch.rand(4, generator=gen, dtype=torch.float64) + 0.2
        got = samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, softcap=4.0,
                                                sample_weight=sw[:, None].expand(4, 6),
                                                reduction=reduction, table=fused_t, indices=idx)
        gx = torch.autograd.grad(got.sum(), x)[0]
        logits = torch.nn.functional.linear(x, w, b).movedim(-1, 1)  # (B, V, T)
        want = samplewt_ops.cross_entropy(logits, y, sample_weight=sw, reduction=reduction, softcap=4.0,
                                          table=mat_t, indices=idx)
        gx_want = torch.autograd.grad(want.sum(), x)[0]
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(gx, gx_want)
        _assert_tables_close(fused_t, mat_t)


@pytest.mark.parametrize("policy", ["GradNormEMA", "OHEM"])
def test_materialised_fallback_matches_the_op(monkeypatch, policy):
    gen = torch.Generator().manual_seed(7)
    w, b = _head(gen)
    x = torch.randn(9, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 13, (9,), generator=gen)
    y[0] = -100
    idx = torch.arange(9) * 2
    tables, losses = [], []
    for kernel in (True, False):
        t = AdaptiveWeights(S, POLICIES[policy]())
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(_loader, "has_kernel", lambda device: False)
            for _ in range(2):
                losses.append(samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, z_loss=0.02,
                                                                softcap=3.0, table=t, indices=idx))
        tables.append(t)
    torch.testing.assert_close(losses[0], losses[2])
    torch.testing.assert_close(losses[1], losses[3])
    _assert_tables_close(*tables)


def test_module_takes_the_table_and_forward_the_indices():
    gen = torch.Generator().manual_seed(8)
    w, _ = _head(gen)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 13, (5,), generator=gen)
    a, b = AdaptiveWeights(S, LossEMA()), AdaptiveWeights(S, LossEMA())
    idx = torch.arange(5)
    module = samplewt_ops.LinearCrossEntropyLoss(table=a)
    torch.testing.assert_close(module(x, w, y, indices=idx),
                               samplewt_ops.linear_cross_entropy(x, w, y, table=b, indices=idx))
    _assert_tables_close(a, b)
    focal = samplewt_ops.LinearFocalLoss(gamma=1.0, table=AdaptiveWeights(S, LossEMA()))
    assert torch.isfinite(focal(x, w, y, indices=idx))


def test_table_and_indices_go_together():
    gen = torch.Generator().manual_seed(9)
    w, _ = _head(gen)
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.randint(0, 13, (5,))
    with pytest.raises(ValueError, match="indices"):
        samplewt_ops.linear_cross_entropy(x, w, y, table=AdaptiveWeights(S, LossEMA()))
    with pytest.raises(ValueError, match="table"):
        samplewt_ops.linear_cross_entropy(x, w, y, indices=torch.arange(5))
    with pytest.raises(IndexError):
        samplewt_ops.linear_cross_entropy(x, w, y, table=AdaptiveWeights(S, LossEMA()),
                                          indices=torch.arange(5) + S)
    with pytest.raises(ValueError, match="does not support"):
        samplewt_ops.linear_focal_loss(x, w, y, table=AdaptiveWeights(S, GHM()), indices=torch.arange(5))


def test_op_statistics_are_the_row_ops():
    gen = torch.Generator().manual_seed(10)
    w, b = _head(gen)
    x = torch.randn(7, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 13, (7,), generator=gen)
    y[3] = -100
    out = torch.ops.samplewt_ops.linear_cross_entropy(x, w, y, b, None, None, -100, 0.0, 0.01, 2.0, 0, 2,
                                                      False, 7, None, True)
    logits = torch.nn.functional.linear(x, w, b)
    want = torch.ops.samplewt_ops.cross_entropy(logits, y, None, None, -100, 0.0, 0, False, True,
                                                z_loss=0.01, softcap=2.0)[2]
    torch.testing.assert_close(out[4], want)
    fallback = linear._materialised_stats(False, x, w, y, b, None, -100, 0.0, 2.0, 0.01, 2.0)
    torch.testing.assert_close(fallback, want, rtol=1e-5, atol=1e-6)
