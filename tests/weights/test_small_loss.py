"""SmallLoss: the small-loss rule against hand computations and a plain-Python reference,
its forget-rate ramp, state_dict resumption and argument checks."""

import math

import pytest
import torch

import samplewt_ops
from samplewt_ops.weights import LOSS_NAMES, AdaptiveWeights, SmallLoss


def _table(policy, ema, seen):
    t = AdaptiveWeights(len(ema), policy)
    t.loss_ema.copy_(torch.tensor(ema, dtype=torch.float32))
    t.seen_count.copy_(torch.tensor(seen, dtype=torch.int64))
    # the state was written directly: sums and ranking as step_epoch() makes them
    t.recompute_sums()
    t.policy.update_cutoff(t)
    return t


def _reference(ema, seen, forget_rate, ramp, epoch, min_weight):
    """The docstring's rule, written with Python floats and sorted()."""
    f = forget_rate * (1.0 if ramp == 0 else min(1.0, epoch / ramp))
    seen_idx = [i for i, s in enumerate(seen) if s > 0]
    forgotten = math.floor(round(f * len(seen_idx), 9))
    key = lambda i: (math.isnan(ema[i]), ema[i] if not math.isnan(ema[i]) else 0.0, i)
    ranked = sorted(seen_idx, key=key)
    kept = set(ranked[: len(seen_idx) - forgotten])
    return [1.0 if (seen[i] == 0 or i in kept) else min_weight for i in range(len(ema))]


def test_hand_computation():
    # 8 samples, sample 6 unseen; forget_rate 0.5 reached after 2 epochs
    ema = [0.3, 2.0, 0.1, 1.5, 0.7, 0.9, 5.0, 1.2]
    seen = [1, 2, 1, 1, 3, 1, 0, 1]
    t = _table(SmallLoss(0.5, ramp_epochs=2, min_weight=0.1), ema, seen)
    # epoch 0: f = 0, all 1
    assert t.weights.tolist() == [1.0] * 8
    t.step_epoch()
    # epoch 1: f = 0.25, |S| = 7, floor(1.75) = 1 forgotten: the largest EMA among seen (sample 1, 2.0)
    torch.testing.assert_close(t.weights, torch.tensor([1, 0.1, 1, 1, 1, 1, 1, 1.0]))
    t.step_epoch()
    # epoch 2: f = 0.5, floor(3.5) = 3 forgotten: samples 1 (2.0), 3 (1.5), 7 (1.2); unseen 6 keeps 1
    torch.testing.assert_close(t.weights, torch.tensor([1, 0.1, 1, 0.1, 1, 1, 1, 0.1]))
    t.step_epoch()
    # past the ramp the rate stays at 0.5
    torch.testing.assert_close(t.weights, torch.tensor([1, 0.1, 1, 0.1, 1, 1, 1, 0.1]))


@pytest.mark.parametrize("forget_rate, ramp, min_weight", [(0.2, 3, 0.0), (0.45, 1, 0.25), (0.3, 0, 0.0), (0.9, 5, 0.5)])
def test_against_reference(forget_rate, ramp, min_weight):
    g = torch.Generator().manual_seed(3)
    n = 37
    ema = (torch.rand(n, generator=g) * 3).tolist()
    ema[4] = ema[9] = ema[20]  # ties: broken by index
    ema[11] = float("nan")  # ranks last among the seen samples
    seen = torch.randint(0, 3, (n,), generator=g).tolist()
    seen[11] = 1
    t = _table(SmallLoss(forget_rate, ramp_epochs=ramp, min_weight=min_weight), ema, seen)
    for epoch in range(ramp + 3):
        ref = torch.tensor(_reference(ema, seen, forget_rate, ramp, epoch, min_weight))
        assert torch.equal(t.weights, ref), epoch
        idx = torch.tensor([0, 11, 11, 36, 4, 9, 20])
        assert torch.equal(t.batch_weights(idx), ref[idx])
        t.step_epoch()


@pytest.mark.parametrize(
    "forget_rate, ramp, counts",
    [
        (0.4, 4, [0, 1, 2, 3, 4, 4, 4]),  # floor(0.4 * min(1, e/4) * 10)
        (0.3, 2, [0, 1, 3, 3, 3, 3, 3]),  # floor(1.5) = 1 at e = 1
        (0.25, 0, [2, 2, 2, 2, 2, 2, 2]),  # no ramp: floor(2.5) from the start
    ],
)
def test_ramp(forget_rate, ramp, counts):
    t = _table(SmallLoss(forget_rate, ramp_epochs=ramp), [float(i) for i in range(10)], [1] * 10)
    got = []
    for _ in counts:
        w = t.weights
        got.append(int((w == 0).sum()))
        # the forgotten samples are always the largest losses
        assert torch.equal(w, (torch.arange(10) < 10 - got[-1]).float())
        t.step_epoch()
    assert got == counts


def test_forgotten_count_is_exact():
    # 0.29 * 100 is 28.999999999999996 in floating point; the count must be 29
    p = SmallLoss(0.29, ramp_epochs=0)
    assert p.num_forgotten(0, 100) == 29
    assert int(p.num_forgotten(torch.tensor(0), torch.tensor(100))) == 29
    t = _table(p, [float(i) for i in range(100)], [1] * 100)
    assert int((t.weights == 0).sum()) == 29
    # within the ramp: 0.6 * 3/7 * 70 = 18 exactly
    q = SmallLoss(0.6, ramp_epochs=7)
    assert q.num_forgotten(3, 70) == 18 and int(q.num_forgotten(torch.tensor(3), torch.tensor(70))) == 18
    assert q.num_forgotten(50, 70) == 42


def test_unseen_samples_are_kept_and_not_counted():
    # |S| = 4 (two unseen with the largest stored EMAs): floor(0.5 * 4) = 2 forgotten among the seen
    t = _table(SmallLoss(0.5, ramp_epochs=0), [1.0, 9.0, 2.0, 3.0, 9.5, 4.0], [1, 0, 1, 1, 0, 1])
    assert t.weights.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert AdaptiveWeights(5, SmallLoss(0.5, ramp_epochs=0)).weights.tolist() == [1.0] * 5


def test_history_policy_through_the_loss():
    # weights come from the history before the batch; forgotten samples get no gradient
    table = AdaptiveWeights(4, SmallLoss(0.5, ramp_epochs=0, momentum=0.0))
    logits = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [4.0, 0, 0]])
    y = torch.tensor([0, 1, 2, 1])  # sample 3 is "mislabelled": the largest loss
    idx = torch.arange(4)
    samplewt_ops.cross_entropy(logits, y, table=table, indices=idx)  # first sight: all weights 1
    ref = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(table.loss_ema, ref)
    assert torch.equal(table.weights, torch.ones(4))  # the cutoff moves at step_epoch() only
    table.step_epoch()
    w = table.weights
    assert w[3] == 0 and int((w == 0).sum()) == 2
    x = logits.clone().requires_grad_(True)
    samplewt_ops.cross_entropy(x, y, table=table, indices=idx, reduction="sum").backward()
    zero = (x.grad.abs().sum(1) == 0).tolist()
    assert zero == (w == 0).tolist()


def test_batch_weights_trace_with_fullgraph():
    # on the training path: no graph break, no host sync, the epoch read from the table's tensor
    t = _table(SmallLoss(0.4, ramp_epochs=2), [0.5, 2.0, 1.0, 3.0, 0.2, 1.5, 0.0, 2.5], [1, 1, 1, 1, 1, 1, 0, 1])
    compiled = torch.compile(lambda table, idx: table.batch_weights(idx), fullgraph=True, backend="aot_eager")
    idx = torch.tensor([3, 1, 6, 7, 0])
    counts = []
    for _ in range(4):
        w = compiled(t, idx)
        assert torch.equal(w, t.batch_weights(idx))
        counts.append(int((w == 0).sum()))
        t.step_epoch()
    assert counts == [0, 1, 2, 2]  # floor(0.2 * 7) = 1: sample 3; floor(0.4 * 7) = 2: samples 3, 7


def _run(table, steps, start=0):
    g = torch.Generator().manual_seed(11)
    batches = [(torch.randint(0, 30, (8,), generator=g), torch.randn(8, 5, generator=g) * 2,
                torch.randint(0, 5, (8,), generator=g)) for _ in range(steps)]
    ws = []
    for k, (idx, x, y) in enumerate(batches):
        if k < start:
            continue
        ws.append(table.batch_weights(idx))
        samplewt_ops.cross_entropy(x, y, table=table, indices=idx)
        if k % 2 == 1:
            table.step_epoch()
    return ws


def test_state_dict_resume_is_exact():
    policy = SmallLoss(0.4, ramp_epochs=3, min_weight=0.05, momentum=0.7)
    full = AdaptiveWeights(30, policy)
    ws_full = _run(full, 12)
    half = AdaptiveWeights(30, policy)
    _run(half, 6)
    saved = half.state_dict()
    assert saved["policy"] == {"name": "SmallLoss", **policy.config()} and set(saved["policy_state"]) == {"cutoff"}
    assert int(saved["epoch"]) == 3
    resumed = AdaptiveWeights(30, SmallLoss(**policy.config()))
    resumed.load_state_dict(saved)
    ws_resumed = _run(resumed, 12, start=6)
    for a, b in zip(ws_full[6:], ws_resumed):
        assert torch.equal(a, b)
    assert torch.equal(full.weights, resumed.weights)
    assert any(bool((w < 1).any()) for w in ws_resumed)  # the forgetting was exercised
    with pytest.raises(ValueError, match="policy"):
        AdaptiveWeights(30, SmallLoss(0.3, ramp_epochs=3, min_weight=0.05, momentum=0.7)).load_state_dict(saved)


def test_cutoff_is_fixed_within_an_epoch():
    # A step only compares the batch's EMAs with the epoch's cutoff: O(batch).
    t = _table(SmallLoss(0.25, ramp_epochs=0), [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1])
    assert t.weights.tolist() == [1.0, 1.0, 1.0, 0.0]  # cutoff (3.0, index 2)
    t.loss_ema[0] = 3.5  # rises above the cutoff within the epoch
    t.loss_ema[3] = 0.5
    assert t.weights.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert t.batch_weights(torch.tensor([0, 3])).tolist() == [0.0, 1.0]
    t.step_epoch()  # new ranking: 0.5, 2, 3, 3.5 -> the largest (sample 0) forgotten
    assert t.weights.tolist() == [0.0, 1.0, 1.0, 1.0]
    t.loss_ema[1] = 9.0
    t.step_epoch()
    assert t.weights.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_old_state_dict_without_cutoff_or_sums_loads():
    t = _table(SmallLoss(0.25, ramp_epochs=0), [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1])
    saved = t.state_dict()
    del saved["policy_state"]["cutoff"], saved["stat_sum"]
    u = AdaptiveWeights(4, SmallLoss(0.25, ramp_epochs=0))
    u.load_state_dict(saved)
    assert torch.equal(u.weights, t.weights) and torch.equal(u.stat_sum, t.stat_sum)
    assert u.stat_sum.tolist() == [10.0, 0.0, 4.0]


def test_flags_and_config():
    p = SmallLoss(0.2)
    assert not p.per_batch and p.history_momentum == 0.9 and not p.tracks_g
    assert p.sync_mean_state == () and p.sync_max_state == ()
    assert all(p.supports(n) for n in LOSS_NAMES)
    assert p == SmallLoss(0.2, ramp_epochs=10) and p != SmallLoss(0.3)
    assert "forget_rate=0.2" in repr(p)
    assert samplewt_ops.SmallLoss is SmallLoss and "SmallLoss" in samplewt_ops.__all__


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"forget_rate": 1.0}, "forget_rate"),
        ({"forget_rate": -0.1}, "forget_rate"),
        ({"forget_rate": float("nan")}, "forget_rate"),
        ({"forget_rate": 0.2, "ramp_epochs": -1}, "ramp_epochs"),
        ({"forget_rate": 0.2, "min_weight": -0.5}, "min_weight"),
        ({"forget_rate": 0.2, "min_weight": 1.5}, "min_weight"),
        ({"forget_rate": 0.2, "momentum": 1.0}, "momentum"),
        ({"forget_rate": 0.2, "momentum": -0.2}, "momentum"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmallLoss(**kwargs)


@pytest.mark.parametrize("kwargs, match", [({"forget_rate": "0.2"}, "forget_rate"),
                                           ({"forget_rate": 0.2, "ramp_epochs": 2.0}, "ramp_epochs"),
                                           ({"forget_rate": 0.2, "ramp_epochs": True}, "ramp_epochs")])
def test_bad_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        SmallLoss(**kwargs)
