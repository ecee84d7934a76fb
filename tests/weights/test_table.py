"""The table update against a reference loop, validation, state round-trip, torch.compile."""

import pytest
import torch

import samplewt_ops
from samplewt_ops import _validation
from samplewt_ops.weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced
from samplewt_ops.weights import table as table_mod


class RefTable:
    """Reference of the documented rule, one sample at a time in plain Python/PyTorch.

    All occurrences of an index in one batch are averaged (sum in float64 in
    batch order, divided by their count, rounded to float32) and applied as one
    EMA step in float32; a first observation sets the EMA; the count grows by the
    number of occurrences; invalid occurrences are skipped.
    """

    def __init__(self, n, momentum, track_g=False):
        self.m = momentum
        self.loss_ema = torch.zeros(n)
        self.grad_norm_ema = torch.zeros(n)
        self.g_ema = torch.zeros(n) if track_g else None
        self.seen_count = torch.zeros(n, dtype=torch.int64)

    def observe(self, idx, loss, grad_norm, g=None, valid=None):
        groups = {}
        for j, i in enumerate(idx.tolist()):
            if valid is None or bool(valid[j]):
                groups.setdefault(i, []).append(j)
        stats = [(self.loss_ema, loss), (self.grad_norm_ema, grad_norm)]
        if self.g_ema is not None:
            stats.append((self.g_ema, g.clamp(0, 1)))
        for i, js in groups.items():
            for ema, vals in stats:
                s = 0.0
                for j in js:
                    s += float(vals[j])
                x = torch.tensor(s / len(js), dtype=torch.float64).to(torch.float32)
                ema[i] = self.m * ema[i] + (1.0 - self.m) * x if self.seen_count[i] > 0 else x
            self.seen_count[i] += len(js)


def _batches(n_samples, steps, seed, batch=12, with_valid=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        idx = torch.randint(0, n_samples, (batch,), generator=g)
        idx[1] = idx[0]  # always some repeated indices
        idx[2] = idx[0]
        loss = torch.rand(batch, generator=g) * 4
        gn = torch.rand(batch, generator=g)
        gm = torch.rand(batch, generator=g) * 1.2 - 0.1  # a few values outside [0, 1]
        valid = (torch.rand(batch, generator=g) > 0.25) if (with_valid and s % 2) else None
        out.append((idx, loss, gn, gm, valid))
    return out


@pytest.mark.parametrize(
    "policy",
    [LossEMA(momentum=0.9), GradNormEMA(momentum=0.5), SelfPaced(1.0, momentum=0.3), OHEM(0.5), GHM(momentum=0.6)],
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("with_valid", [False, True])
def test_observe_matches_reference(policy, with_valid):
    n = 20
    t = AdaptiveWeights(n, policy)
    ref = RefTable(n, policy.history_momentum, track_g=policy.tracks_g)
    for idx, loss, gn, gm, valid in _batches(n, 8, seed=1, with_valid=with_valid):
        t.observe(idx, loss, gn, gm, valid=valid)
        ref.observe(idx, loss, gn, gm, valid=valid)
        assert torch.equal(t.seen_count, ref.seen_count)
        assert torch.equal(t.loss_ema, ref.loss_ema)
        assert torch.equal(t.grad_norm_ema, ref.grad_norm_ema)
        if policy.tracks_g:
            assert torch.equal(t.policy_state["g_ema"], ref.g_ema)


def test_repeated_indices_rule():
    m = 0.8
    t = AdaptiveWeights(5, LossEMA(momentum=m))
    # first batch: index 2 three times -> EMA initialised to the mean (not blended with 0)
    t.observe(torch.tensor([2, 2, 2, 4]), torch.tensor([1.0, 2.0, 6.0, 5.0]), torch.tensor([0.0, 0.0, 3.0, 1.0]))
    assert t.loss_ema[2] == 3.0 and t.grad_norm_ema[2] == 1.0 and t.loss_ema[4] == 5.0
    assert t.seen_count.tolist() == [0, 0, 3, 0, 1]
    # second batch: two occurrences -> one EMA step with their mean
    t.observe(torch.tensor([2, 0, 2]), torch.tensor([4.0, 1.0, 8.0]), torch.zeros(3))
    assert torch.equal(t.loss_ema[2], m * torch.tensor(3.0) + (1 - m) * torch.tensor(6.0))
    assert t.seen_count.tolist() == [1, 0, 5, 0, 1]


def test_observe_is_order_independent_and_batch_concatenation():
    a, b = AdaptiveWeights(30, LossEMA()), AdaptiveWeights(30, LossEMA())
    for idx, loss, gn, gm, _ in _batches(30, 5, seed=4):
        a.observe(idx, loss, gn)
        p = torch.randperm(idx.shape[0])
        b.observe(idx[p], loss[p], gn[p])
    assert torch.equal(a.loss_ema, b.loss_ema) and torch.equal(a.grad_norm_ema, b.grad_norm_ema)
    assert torch.equal(a.seen_count, b.seen_count)


def test_weights_are_from_before_the_update():
    t = AdaptiveWeights(4, LossEMA(momentum=0.5))
    t.observe(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4))
    before = t.weights.clone()
    idx = torch.tensor([0, 3])
    w = t.batch_weights(idx)
    assert torch.equal(w, before[idx])
    t.observe(idx, torch.tensor([100.0, 0.0]), torch.zeros(2))
    assert not torch.equal(t.weights, before)


def test_int32_and_scalar_indices():
    t = AdaptiveWeights(6, LossEMA())
    i32 = t.check_indices(torch.tensor([1, 5], dtype=torch.int32), 2, "cpu")
    assert i32.dtype == torch.int64
    t.observe(torch.tensor([1, 5], dtype=torch.int32), torch.ones(2), torch.ones(2))
    assert t.seen_count.tolist() == [0, 1, 0, 0, 0, 1]
    assert t.check_indices(torch.tensor(3), 1).shape == (1,)


@pytest.mark.parametrize(
    "indices, n, exc, match",
    [
        ([0.0, 1.0], 2, TypeError, "indices.*dtype"),
        (torch.tensor([0, 1], dtype=torch.int16), 2, TypeError, "indices"),
        (torch.tensor([[0, 1]]), 2, ValueError, "indices.*1-D"),
        (torch.tensor([0, 1, 2]), 2, ValueError, "indices has length 3"),
        (torch.tensor([0, 10]), 2, IndexError, "indices contains 10"),
        (torch.tensor([-1, 0]), 2, IndexError, "indices contains -1"),
        ([0, 1], 2, TypeError, "indices must be a torch.Tensor"),
    ],
)
def test_check_indices_errors(indices, n, exc, match):
    t = AdaptiveWeights(10, LossEMA())
    if isinstance(indices, list) and isinstance(indices[0], float):
        indices = torch.tensor(indices)
    with pytest.raises(exc, match=match):
        t.check_indices(indices, n, "cpu")


def test_table_on_another_device():
    t = AdaptiveWeights(10, LossEMA())
    with pytest.raises(ValueError, match="table is on cpu but the loss input is on meta"):
        t.check_indices(torch.tensor([0, 1]), 2, torch.device("meta"))
    with pytest.raises(ValueError, match="indices is on meta"):
        t.check_indices(torch.tensor([0, 1], device="meta"), 2, "cpu")
    with pytest.raises(ValueError, match="loss is on meta"):
        t.observe(torch.tensor([0, 1]), torch.ones(2, device="meta"), torch.ones(2))


def test_observe_shape_errors():
    t = AdaptiveWeights(10, LossEMA())
    with pytest.raises(ValueError, match=r"grad_norm must have shape \(2,\)"):
        t.observe(torch.tensor([0, 1]), torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="loss"):
        AdaptiveWeights(10, OHEM(0.5)).batch_weights(torch.tensor([0, 1]), loss=torch.ones(2, 1))


def test_validation_switch(monkeypatch):
    # One switch for the whole package, the table's included.
    assert table_mod.validation_enabled is _validation.validation_enabled
    monkeypatch.delenv("SAMPLEWT_VALIDATE", raising=False)
    assert not table_mod.validation_enabled()
    monkeypatch.setenv("SAMPLEWT_VALIDATE", "1")
    assert table_mod.validation_enabled()
    monkeypatch.setenv("SAMPLEWT_VALIDATE", "0")
    assert not table_mod.validation_enabled()


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_bad_num_samples(bad, exc):
    with pytest.raises(exc, match="num_samples"):
        AdaptiveWeights(bad, LossEMA())


def test_bad_policy():
    with pytest.raises(TypeError, match="policy"):
        AdaptiveWeights(3, "loss_ema")


def _step(table, idx, loss, gn, gm):
    if table.policy.per_batch:
        w = table.batch_weights(idx, loss=loss, g=gm)
    else:
        w = table.batch_weights(idx)
    table.observe(idx, loss, gn, gm)
    return w


@pytest.mark.parametrize(
    "policy",
    [LossEMA(), GradNormEMA(power=2.0), SelfPaced(1.5, growth=1.5, soft=True), OHEM(0.6), GHM(bins=5)],
    ids=lambda p: p.name,
)
def test_state_dict_resume_is_exact(policy):
    batches = _batches(25, 10, seed=7)
    full = AdaptiveWeights(25, policy)
    ws_full = []
    for k, b in enumerate(batches):
        ws_full.append(_step(full, *b[:4]))
        if k % 3 == 2:
            full.step_epoch()
        if k == 4:
            saved = full.state_dict()
    # the saved dict is a copy: later updates do not leak into it
    assert int(saved["seen_count"].sum()) == 5 * 12
    resumed = AdaptiveWeights(25, type(policy)(**policy.config()))
    resumed.load_state_dict(saved)
    for k, b in enumerate(batches[5:], start=5):
        assert torch.equal(_step(resumed, *b[:4]), ws_full[k])
        if k % 3 == 2:
            resumed.step_epoch()
    a, b = full.state_dict(), resumed.state_dict()
    for key in ("loss_ema", "grad_norm_ema", "seen_count", "epoch", "synced_count"):
        assert torch.equal(a[key], b[key]), key
    for key in a["policy_state"]:
        assert torch.equal(a["policy_state"][key], b["policy_state"][key]), key
    assert torch.equal(full.weights, resumed.weights)


def test_load_state_dict_errors():
    t = AdaptiveWeights(5, LossEMA())
    sd = t.state_dict()
    with pytest.raises(ValueError, match="5 samples"):
        AdaptiveWeights(6, LossEMA()).load_state_dict(sd)
    with pytest.raises(ValueError, match="policy"):
        AdaptiveWeights(5, LossEMA(power=2.0)).load_state_dict(sd)
    sd["loss_ema"] = sd["loss_ema"].double()
    with pytest.raises(ValueError, match="loss_ema"):
        t.load_state_dict(sd)


def test_to_and_sync_without_distributed():
    t = AdaptiveWeights(5, GHM())
    assert t.to("cpu") is t and t.device == torch.device("cpu")
    t.observe(torch.tensor([1, 1]), torch.ones(2), torch.ones(2), torch.full((2,), 0.5))
    before = t.state_dict()
    t.sync()  # not distributed: state unchanged
    after = t.state_dict()
    for key in ("loss_ema", "grad_norm_ema", "seen_count"):
        assert torch.equal(before[key], after[key])
    assert torch.equal(after["synced_count"], after["seen_count"])


# aot_eager: the same fullgraph tracing (Dynamo + AOTAutograd) as inductor, without
# the C++ code generation; test_inductor_table_step below runs inductor on the table ops.
@pytest.mark.parametrize("policy", [LossEMA(), GHM(bins=4)], ids=lambda p: p.name)
def test_compiled_training_step(policy, backend="aot_eager"):
    """The forward of a training step using a table traces with fullgraph=True (no graph
    breaks); backward runs through the compiled autograd graph."""
    torch.manual_seed(0)
    n, c = 40, 5
    model = torch.nn.Linear(8, c)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(table, idx, x, y):
        idx = table.check_indices(idx, x.shape[0], x.device)
        logits = model(x)
        logp = torch.log_softmax(logits, dim=1)
        loss = -logp.gather(1, y[:, None]).squeeze(1)
        p = logp.detach().exp()
        gn = (p - torch.nn.functional.one_hot(y, c).to(p.dtype)).norm(dim=1)
        gm = 1.0 - p.gather(1, y[:, None]).squeeze(1)
        if table.policy.per_batch:
            w = table.batch_weights(idx, loss=loss.detach(), g=gm)
        else:
            w = table.batch_weights(idx)
        table.observe(idx, loss.detach(), gn, gm)
        return (w * loss).sum() / w.sum().clamp_min(1e-12)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    t_c, t_e = AdaptiveWeights(n, policy), AdaptiveWeights(n, policy)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        idx = torch.randint(0, n, (16,), generator=g)
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, c, (16,), generator=g)
        model.zero_grad()
        a = compiled(t_c, idx, x, y)
        a.backward()
        grads_c = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        b = step(t_e, idx, x, y)
        b.backward()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for gc, p in zip(grads_c, model.parameters()):
            torch.testing.assert_close(gc, p.grad, rtol=1e-5, atol=1e-6)
        opt.step()
    assert torch.equal(t_c.seen_count, t_e.seen_count)
    torch.testing.assert_close(t_c.loss_ema, t_e.loss_ema, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_c.weights, t_e.weights, rtol=1e-5, atol=1e-6)
    # out-of-range indices are still caught inside the compiled step on the CPU
    with pytest.raises(RuntimeError):
        compiled(t_c, torch.full((16,), n), x, y)


def test_inductor_table_step():
    """batch_weights + observe compiled by inductor with fullgraph=True match eager."""

    def step(table, idx, loss, gn, gm):
        w = table.batch_weights(idx)
        table.observe(idx, loss, gn, gm)
        return w

    compiled = torch.compile(step, fullgraph=True)
    t_c, t_e = AdaptiveWeights(25, LossEMA()), AdaptiveWeights(25, LossEMA())
    for idx, loss, gn, gm, _ in _batches(25, 4, seed=11):
        torch.testing.assert_close(compiled(t_c, idx, loss, gn, gm), step(t_e, idx, loss, gn, gm))
        assert torch.equal(t_c.seen_count, t_e.seen_count)
        torch.testing.assert_close(t_c.loss_ema, t_e.loss_ema, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(t_c.grad_norm_ema, t_e.grad_norm_ema, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not samplewt_ops.backend()["implementation"] == "compiled", reason="compiled kernels only")
def test_large_cpu_table_state_on_huge_page_boundaries():
    # From 8 MiB up the CPU state sits on 2 MiB boundaries (advised as huge
    # pages); it is plain zeroed state all the same.
    t = AdaptiveWeights(2_000_000, GHM())
    for state, dtype in ((t.ema, torch.float32), (t.seen_count, torch.int64)):
        assert state.dtype == dtype
        assert state.data_ptr() % (2 << 20) == 0
        assert not state.any()
    assert t.seen_count.is_contiguous()
    assert t.ema.shape == (3, 2_000_000) and t.ema.stride() == (1, 4)  # one record per sample
    t.observe(torch.tensor([5, 1_999_999]), torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]),
              torch.tensor([0.1, 0.9]))
    u = AdaptiveWeights(2_000_000, GHM())
    u.load_state_dict(t.state_dict())
    assert torch.equal(u.ema, t.ema) and torch.equal(u.seen_count, t.seen_count)
    assert u.ema.data_ptr() % (2 << 20) == 0
    small = AdaptiveWeights(10, GHM())  # below 8 MiB: torch.zeros
    assert not small.ema.any() and small.ema.shape == (3, 10)
    with pytest.raises(ValueError, match="size must be non-negative"):
        torch.ops.samplewt_ops.table_zeros([3, -1], torch.float32)
