"""Losses driven by an AdaptiveWeights table (table=, indices=): the loss uses
the table's weights from before the batch, and the fused pass's per-sample
statistics update the table."""
import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

import samplewt_ops
from samplewt_ops import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced, reference
from samplewt_ops._spec import SPECS


def _softmax_case(n=12, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, torch.randint(0, c, (n,), generator=g)


def _manual_stats(x, y):
    """Per-sample loss, |d loss/d x| and 1-p_y, by autograd on F.cross_entropy."""
    xx = x.detach().double().requires_grad_()
    per = F.cross_entropy(xx, y, reduction="none")
    (g,) = torch.autograd.grad(per.sum(), xx)
    p_y = torch.softmax(xx, 1).gather(1, y[:, None]).squeeze(1)
    return per.detach().float(), g.norm(dim=1).float(), (1 - p_y).detach().float()


@pytest.mark.parametrize("policy", [LossEMA(momentum=0.5), GradNormEMA(momentum=0.5),
                                    SelfPaced(threshold=2.0, growth=1.5)])
def test_history_policy_uses_weights_from_before_the_batch(policy):
    x, y = _softmax_case()
    sw = torch.rand(12)
    idx = torch.tensor([3, 9, 1, 0, 7, 8, 2, 4, 5, 6, 11, 10])
    table = AdaptiveWeights(20, policy)
    # Warm the table so that weights differ from 1.
    samplewt_ops.cross_entropy(x * 0.5, y, table=table, indices=idx)
    shadow = copy.deepcopy(table)
    expected_w = shadow.batch_weights(idx)
    assert not torch.allclose(expected_w, torch.ones(12))

    xa = x.clone().requires_grad_()
    loss = samplewt_ops.cross_entropy(xa, y, sample_weight=sw, table=table, indices=idx)
    xb = x.clone().requires_grad_()
    ref_loss = reference.cross_entropy(xb, y, sample_weight=sw * expected_w)
    torch.testing.assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(xa.grad, xb.grad)

    # The table now holds what observing the kernel's statistics gives.
    shadow.observe(idx, *_manual_stats(x, y))
    torch.testing.assert_close(table.loss_ema, shadow.loss_ema, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(table.grad_norm_ema, shadow.grad_norm_ema, rtol=1e-5, atol=1e-6)
    assert torch.equal(table.seen_count, shadow.seen_count)


@pytest.mark.parametrize("policy", [OHEM(keep_ratio=0.5), GHM(bins=5, momentum=0.75)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_per_batch_policy_weights_this_batch(policy, reduction):
    x, y = _softmax_case(seed=1)
    sw = torch.rand(12) + 0.1
    idx = torch.arange(12)
    table = AdaptiveWeights(12, policy)
    shadow = copy.deepcopy(table)
    loss_i, gn, ghm_g = _manual_stats(x, y)
    bw = shadow.batch_weights(idx, loss=loss_i, g=ghm_g)

    xa = x.clone().requires_grad_()
    loss = samplewt_ops.cross_entropy(xa, y, sample_weight=sw, reduction=reduction,
                                      table=table, indices=idx)
    xb = x.clone().requires_grad_()
    per = reference.cross_entropy(xb, y, reduction="none") * sw * bw
    expected = {"none": per, "sum": per.sum(), "mean": per.sum() / (sw * bw).sum()}[reduction]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)


def test_ohem_keeps_only_the_hardest_samples():
    x, y = _softmax_case(n=10, seed=2)
    table = AdaptiveWeights(10, OHEM(keep_ratio=0.3))
    xa = x.clone().requires_grad_()
    samplewt_ops.cross_entropy(xa, y, reduction="sum", table=table, indices=torch.arange(10)).backward()
    hardest = F.cross_entropy(x, y, reduction="none").topk(3).indices
    nonzero_rows = xa.grad.abs().sum(1).nonzero().squeeze(1)
    assert sorted(nonzero_rows.tolist()) == sorted(hardest.tolist())


@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "binary_cross_entropy_with_logits", "mse_loss",
                                  "l1_loss", "huber_loss", "focal_loss"])
def test_every_loss_accepts_a_table(name):
    torch.manual_seed(0)
    fn = getattr(samplewt_ops, name)
    x = torch.randn(6, 5, requires_grad=True)
    t = torch.randint(0, 5, (6,)) if name == "focal_loss" else torch.rand(6, 5)
    table = AdaptiveWeights(6, LossEMA(momentum=0.0))
    kw = {"reduction": "mean"} if name == "sigmoid_focal_loss" else {}
    fn(x, t, table=table, indices=torch.arange(6), **kw).backward()
    # momentum 0: the EMA is the last per-sample loss.
    ref = getattr(reference, name)(x.detach(), t, reduction="none")
    per_sample = ref.reshape(6, -1).sum(1)
    torch.testing.assert_close(table.loss_ema, per_sample, rtol=1e-5, atol=1e-6)
    assert torch.equal(table.seen_count, torch.ones(6, dtype=table.seen_count.dtype))


def test_ignored_samples_leave_the_table_alone():
    x, y = _softmax_case(n=4, seed=3)
    y[2] = -100
    table = AdaptiveWeights(4, LossEMA())
    samplewt_ops.cross_entropy(x, y, table=table, indices=torch.arange(4))
    assert table.seen_count.tolist() == [1, 1, 0, 1]


def test_module_takes_the_table_in_its_constructor_and_indices_in_forward():
    x, y = _softmax_case()
    t1 = AdaptiveWeights(12, LossEMA())
    t2 = AdaptiveWeights(12, LossEMA())
    crit = samplewt_ops.CrossEntropyLoss(table=t1)
    a = crit(x, y, indices=torch.arange(12))
    b = samplewt_ops.cross_entropy(x, y, table=t2, indices=torch.arange(12))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(t1.loss_ema, t2.loss_ema)


def test_ghm_is_refused_for_regression_losses():
    table = AdaptiveWeights(4, GHM())
    with pytest.raises(ValueError, match="GHM"):
        samplewt_ops.mse_loss(torch.randn(4, 2), torch.randn(4, 2), table=table, indices=torch.arange(4))


def test_bad_indices_are_refused():
    x, y = _softmax_case(n=4)
    table = AdaptiveWeights(4, LossEMA())
    with pytest.raises((IndexError, ValueError), match="indices"):
        samplewt_ops.cross_entropy(x, y, table=table, indices=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(TypeError, match="indices"):
        samplewt_ops.cross_entropy(x, y, table=table, indices=torch.tensor([0.0, 1, 2, 3]))
    with pytest.raises(ValueError, match="indices"):
        samplewt_ops.cross_entropy(x, y, table=table, indices=torch.arange(3))


def test_compiled_training_step_with_a_table_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x = torch.randn(16, 8)
    y = torch.randint(0, 5, (16,))
    idx = torch.randperm(32)[:16]
    tables = [AdaptiveWeights(32, LossEMA(momentum=0.5)) for _ in range(2)]

    def step(table, x, y, idx):
        return samplewt_ops.cross_entropy(model(x), y, table=table, indices=idx)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(3):
        a = step(tables[0], x, y, idx)
        b = compiled(tables[1], x, y, idx)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a, model.weight)[0]
        gb = torch.autograd.grad(b, model.weight)[0]
        torch.testing.assert_close(ga, gb)
    torch.testing.assert_close(tables[0].loss_ema, tables[1].loss_ema)
    assert torch.equal(tables[0].seen_count, tables[1].seen_count)


# ---------------------------------------------------------------------------
# table= was called weights=: still accepted, with a DeprecationWarning


def _loss_case(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g)
    t = torch.randint(0, 5, (6,), generator=g) if SPECS[name].rows else torch.rand(6, 5, generator=g)
    return x, t


@pytest.mark.parametrize("name", list(SPECS))
def test_weights_keyword_warns_and_gives_the_same_as_table(name):
    fn = getattr(samplewt_ops, name)
    x, t = _loss_case(name)
    tables = [AdaptiveWeights(6, LossEMA(momentum=0.5)) for _ in range(2)]
    idx = torch.arange(6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = fn(xa, t, table=tables[0], indices=idx, reduction="sum")
    with pytest.warns(DeprecationWarning, match=rf"{name}\(weights=\.\.\.\) is deprecated.*table="):
        b = fn(xb, t, weights=tables[1], indices=idx, reduction="sum")
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(tables[0].loss_ema, tables[1].loss_ema)
    assert torch.equal(tables[0].seen_count, tables[1].seen_count)
    with pytest.raises(TypeError, match="both table= and weights="):
        fn(x, t, table=tables[0], weights=tables[1], indices=idx)


@pytest.mark.parametrize("name", list(SPECS))
def test_table_is_the_keyword_of_every_loss_and_module(name):
    params = inspect.signature(getattr(samplewt_ops, name)).parameters
    assert "table" in params and "weights" not in params
    module = getattr(samplewt_ops, SPECS[name].module)
    params = inspect.signature(module).parameters
    assert "table" in params and "weights" not in params


def test_module_weights_keyword_warns_and_gives_the_same_as_table():
    x, y = _softmax_case()
    tables = [AdaptiveWeights(12, LossEMA()) for _ in range(2)]
    a = samplewt_ops.CrossEntropyLoss(table=tables[0])(x, y, indices=torch.arange(12))
    with pytest.warns(DeprecationWarning, match=r"CrossEntropyLoss\(weights=\.\.\.\) is deprecated"):
        crit = samplewt_ops.CrossEntropyLoss(weights=tables[1])
    assert torch.equal(crit(x, y, indices=torch.arange(12)), a)
    assert torch.equal(tables[0].loss_ema, tables[1].loss_ema)
    assert "table=AdaptiveWeights" in repr(crit)
    with pytest.raises(TypeError, match="both table= and weights="):
        samplewt_ops.HuberLoss(table=tables[0], weights=tables[1])


def test_compiled_step_with_the_weights_keyword_matches_table():
    torch._dynamo.reset()
    x, y = _softmax_case()
    tables = [AdaptiveWeights(12, LossEMA(momentum=0.5)) for _ in range(2)]
    idx = torch.arange(12)

    def step(x, y, idx):
        return samplewt_ops.cross_entropy(x, y, weights=tables[1], indices=idx)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        a = samplewt_ops.cross_entropy(x, y, table=tables[0], indices=idx)
        torch.testing.assert_close(compiled(x, y, idx), a)
    torch.testing.assert_close(tables[0].loss_ema, tables[1].loss_ema)
