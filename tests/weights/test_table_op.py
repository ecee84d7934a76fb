"""The table inside the loss ops (csrc/table_step.h): one op call reads the
batch's weights from the table, runs the pass and updates the table, on the
CPU in C++ and on CUDA (here through the host emulation of its kernels).

The update must equal, bit for bit, the reference's ``observe`` fed with the
same per-sample statistics; the loss and gradient must equal the reference
protocol (weights before the batch for history policies, from the batch for
OHEM and GHM)."""

import inspect

import pytest
import torch

import samplewt_ops
from samplewt_ops import _ops, functional
from samplewt_ops._spec import SPECS
from samplewt_ops.weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced, SmallLoss

OPS = torch.ops.samplewt_ops
S = 50

POLICIES = {
    "LossEMA": lambda: LossEMA(momentum=0.7, power=1.5, min_weight=0.2, max_weight=4.0),
    "GradNormEMA": lambda: GradNormEMA(momentum=0.6),
    "SelfPaced": lambda: SelfPaced(1.2, soft=False, momentum=0.5),
    "SelfPacedSoft": lambda: SelfPaced(2.0, soft=True),
    "OHEM": lambda: OHEM(keep_ratio=0.6, history_momentum=0.8),
    "GHM": lambda: GHM(bins=7, momentum=0.75),
    "SmallLoss": lambda: SmallLoss(0.3, ramp_epochs=0, min_weight=0.1, momentum=0.8),
}


def _batches(name, steps, n, c, gen):
    out = []
    for _ in range(steps):
        idx = torch.randint(0, S, (n,), generator=gen)
        idx[1] = idx[0]  # a repeated index in every batch
        x = torch.randn(n, c, generator=gen) * 2
        if name in ("cross_entropy", "focal_loss"):
            t = torch.randint(0, c, (n,), generator=gen)
            t[2] = -100  # an ignored sample: not observed, weight 0 under per-batch policies
        elif name in ("mse_loss", "l1_loss", "huber_loss"):
            t = torch.randn(n, c, generator=gen)
        else:
            t = (torch.rand(n, c, generator=gen) < 0.4).float()
        out.append((idx, x, t))
    return out


def _pair(policy_name):
    a = AdaptiveWeights(S, POLICIES[policy_name]())
    b = AdaptiveWeights(S, POLICIES[policy_name]())
    return a, b


def _assert_same_table(a, b):
    assert torch.equal(a.ema, b.ema)  # bit for bit
    assert torch.equal(a.seen_count, b.seen_count)
    torch.testing.assert_close(a.stat_sum, b.stat_sum, rtol=1e-12, atol=1e-12)
    for k in a.policy_state:
        assert torch.equal(a.policy_state[k], b.policy_state[k]), k


def _reference_step(table, name, idx, x, t, stats):
    """The reference protocol (weights/driver.py) with the op's own statistics."""
    valid = (t != -100) if name in ("cross_entropy", "focal_loss") else None
    if table.policy.per_batch:
        w = table.batch_weights(idx, loss=stats[:, 0], g=stats[:, 2], valid=valid)
    else:
        w = table.batch_weights(idx, valid=valid)
    table.observe(idx, stats[:, 0], stats[:, 1], stats[:, 2], valid=valid)
    return w


def _losses():
    return sorted(SPECS)


def _defaults(name):
    params = inspect.signature(SPECS[name].reference).parameters
    return {k: p.default for k, p in params.items() if k not in ("input", "target", "sample_weight", "reduction")}


def _own_args(name, x):
    """The loss's own arguments at their defaults, as its op takes them."""
    return SPECS[name].op_args(_defaults(name), x)


def _reference_loss(name, x, t, sample_weight, table, indices, reduction):
    """The checked path with the pure-PyTorch reference (and the table's Python protocol)."""
    return functional._loss(SPECS[name], x, t, sample_weight, reduction, table, indices, False,
                            **_defaults(name))


def _stats(name, x, t):
    """The op's own per-sample statistics of a batch, without a table."""
    return _ops.call(name, input=x, target=t, sample_weight=None, reduction=0, compute_grad=False,
                     compute_stats=True, **_own_args(name, x))[2]


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("name", _losses())
def test_fused_update_equals_reference_observe(policy_name, name):
    a, b = _pair(policy_name)
    if not a.policy.supports(name):
        pytest.skip(f"{policy_name} does not weight {name}")
    gen = torch.Generator().manual_seed(hash((policy_name, name)) % 1000)
    fn = getattr(samplewt_ops, name)
    for step, (idx, x, t) in enumerate(_batches(name, 4, 12, 5, gen)):
        stats = _stats(name, x, t)
        w = _reference_step(b, name, idx, x, t, stats)
        xa = x.clone().requires_grad_(True)
        loss = fn(xa, t, table=a, indices=idx, reduction="sum")
        loss.backward()
        _assert_same_table(a, b)
        # The loss is the sum of the weighted per-sample losses.
        xb = x.clone().requires_grad_(True)
        per = fn(xb, t, reduction="none")
        per = per.reshape(per.shape[0], -1).sum(1) if per.dim() > 1 else per
        want = (per * w).sum()
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
        if step == 1:
            a.step_epoch()
            b.step_epoch()
            _assert_same_table(a, b)




@pytest.mark.parametrize("policy_name", ["LossEMA", "GHM", "OHEM"])
def test_the_op_takes_any_layout_of_table_ema(policy_name):
    """The table keeps one record of EMAs per sample (a strided (3, S) view);
    the op reads its strides, so that a contiguous (3, S) table_ema (or a
    transposed one) is updated to the same bits."""
    gen = torch.Generator().manual_seed(4)
    tables = [_pair(policy_name)[0] for _ in range(3)]
    assert tables[0].ema.stride() == (1, 4)
    layouts = [tables[0].ema, torch.zeros(3, S), torch.zeros(S, 3).t()]
    for idx, x, t in _batches("cross_entropy", 3, 12, 5, gen):
        grads = []
        for table, ema in zip(tables, layouts):
            args = {**table.op_args(idx), "table_ema": ema}
            out = OPS.cross_entropy(x, t, None, None, -100, 0.0, 1, True, False, **args)
            grads.append(out[1])
        for ema, g in zip(layouts[1:], grads[1:]):
            assert torch.equal(ema, layouts[0]) and torch.equal(g, grads[0])
    assert layouts[0].any()
    for table in tables[1:]:
        assert torch.equal(table.seen_count, tables[0].seen_count)
        assert torch.equal(table.stat_sum, tables[0].stat_sum)


@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_fused_update_groups_heavy_repeats(policy_name):
    """A batch of few samples repeated many times, interleaved, with some
    occurrences ignored (a sample's first, and every occurrence of one): the
    fused update groups them as the reference observe does, and leaves every
    count as the reference has it."""
    a, b = _pair(policy_name)
    gen = torch.Generator().manual_seed(11)
    idx = torch.tensor([3, 3, 0, 3, 7, 0, 3, 7, 9, 9, 3, 0, 41, 41, 7, 3])
    for step in range(3):
        x = torch.randn(idx.shape[0], 5, generator=gen) * 2
        t = torch.randint(0, 5, (idx.shape[0],), generator=gen)
        t[0] = -100  # sample 3's first occurrence
        t[8] = t[9] = -100  # every occurrence of sample 9
        if step == 2:
            t[2] = -100
        _reference_step(b, "cross_entropy", idx, x, t, _stats("cross_entropy", x, t))
        loss = samplewt_ops.cross_entropy(x.clone().requires_grad_(True), t, table=a, indices=idx,
                                          reduction="sum")
        loss.backward()
        _assert_same_table(a, b)
        assert a.seen_count[9] == 0 and a.seen_count[3] == 5 * (step + 1)
        a.step_epoch()
        b.step_epoch()


@pytest.mark.parametrize("reduction", ["mean", "none", "sum"])
@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "binary_cross_entropy_with_logits", "mse_loss"])
def test_fused_equals_the_reference_path(monkeypatch, policy_name, name, reduction):
    """The whole call (checked and fast paths) against the pure-PyTorch path."""
    a, b = _pair(policy_name)
    if not a.policy.supports(name):
        pytest.skip(f"{policy_name} does not weight {name}")
    gen = torch.Generator().manual_seed(7)
    fn = getattr(samplewt_ops, name)
    batches = _batches(name, 4, 10, 6, gen)
    sw = torch.rand(10, generator=gen) + 0.5
    fused, ref = [], []
    for table, out, kernel in ((a, fused, True), (b, ref, False)):
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(functional, "_kernel", lambda input, target: False)
            for k, (idx, x, t) in enumerate(batches):
                xk = x.clone().requires_grad_(True)
                kw = dict(sample_weight=sw if k % 2 else None, table=table,
                          indices=idx.to(torch.int32) if k == 3 else idx, reduction=reduction)
                loss = fn(xk, t, **kw) if kernel else _reference_loss(name, xk, t, **kw)
                loss.sum().backward()
                out.append((loss.detach(), xk.grad))
    for (la, ga), (lb, gb) in zip(fused, ref):
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.ema, b.ema, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.seen_count, b.seen_count)


@pytest.mark.parametrize("policy_name", ["LossEMA", "OHEM", "GHM", "SmallLoss"])
def test_spatial_cross_entropy_positions(monkeypatch, policy_name):
    # (N, C, d): several rows per sample; the table sees per-sample statistics.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 3, generator=gen)
    y = torch.randint(0, 4, (6, 3), generator=gen)
    y[0] = -100  # a wholly ignored sample
    idx = torch.tensor([5, 9, 5, 0, 1, 2])
    outs = []
    for kernel in (True, False):
        table = AdaptiveWeights(S, POLICIES[policy_name]())
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(functional, "_kernel", lambda input, target: False)
            for _ in range(3):
                xk = x.clone().requires_grad_(True)
                loss = _reference_loss("cross_entropy", xk, y, None, table, idx, "mean") if not kernel \
                    else samplewt_ops.cross_entropy(xk, y, table=table, indices=idx)
                loss.backward()
        outs.append((loss.detach(), xk.grad, table))
    (la, ga, ta), (lb, gb, tb) = outs
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(ga, gb)
    torch.testing.assert_close(ta.ema, tb.ema)
    # sample 5 twice per batch, once wholly ignored: observed once per step
    assert torch.equal(ta.seen_count, tb.seen_count) and int(ta.seen_count[5]) == 3


def test_one_op_call_mutates_the_table():
    # The schema declares the table's tensors written (Tensor(a!)), and the op writes them.
    schema = OPS.cross_entropy.default._schema
    written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    assert written == {"table_ema", "seen_count", "stat_sum", "bin_ema", "bin_steps"}
    table = AdaptiveWeights(S, GHM(bins=4))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    OPS.cross_entropy(x, y, None, None, -100, 0.0, 1, True, False, **table.op_args(torch.arange(5)))
    assert int(table.seen_count.sum()) == 5 and int(table.policy_state["bin_steps"]) == 1
    assert table.stat_sum[2].item() == 5.0


def test_op_checks_the_table_arguments():
    table = AdaptiveWeights(S, LossEMA())
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    args = table.op_args(torch.arange(5))
    call = lambda **kw: OPS.cross_entropy(x, y, None, None, -100, 0.0, 1, True, False, **{**args, **kw})  # noqa: E731
    with pytest.raises(IndexError, match="indices contains 50"):
        call(indices=torch.tensor([0, 1, 2, 3, 50]))
    with pytest.raises(ValueError, match="indices has length 4"):
        call(indices=torch.arange(4))
    with pytest.raises(TypeError, match="indices must be int64"):
        call(indices=torch.arange(5.0))
    with pytest.raises(TypeError, match="table_ema must be Float"):
        call(table_ema=args["table_ema"].double())
    with pytest.raises(ValueError, match="table_ema must not have overlapping entries"):
        call(table_ema=torch.zeros(1, S).expand(3, S))
    with pytest.raises(ValueError, match="seen_count must be contiguous"):
        call(seen_count=torch.zeros(2 * S, dtype=torch.int64)[::2])
    with pytest.raises(ValueError, match="seen_count must have shape"):
        call(seen_count=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="policy_params"):
        call(policy_params=[0.9])
    with pytest.raises(ValueError, match="policy must be in"):
        call(policy=99)
    with pytest.raises(ValueError, match="momentum"):
        call(policy_params=[1.5, 1.0, 0.1, 10.0])
    assert int(table.seen_count.sum()) == 0  # nothing was updated by a refused call


# ---------------------------------------------------------------------------
# The CUDA table steps (csrc/cuda/table_ops.h, table_update.cu) on the host
# emulation, against the CPU op: the same table, bit for bit.


@pytest.fixture(scope="module")
def emu():
    import cuda_emu

    m = cuda_emu.load()
    m.set_num_sms(2)
    return m


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss", "mse_loss"])
@pytest.mark.parametrize("n", [7, 300])  # one block, several blocks of the update kernel
def test_cuda_table_steps_on_the_emulation(emu, policy_name, name, n):
    """The emulated CUDA op with a table (a) against the reference protocol
    (b) fed with the statistics that the emulated op returns: the same table,
    bit for bit; the loss is the weighted sum of the op's own losses."""
    a, b = _pair(policy_name)
    if not a.policy.supports(name):
        pytest.skip(f"{policy_name} does not weight {name}")
    gen = torch.Generator().manual_seed(n)
    names = _ops.SCHEMA_ARGS[name]

    def emulated(**values):
        return getattr(emu, name)(*[values[k] if k in values else _ops.SCHEMA_DEFAULTS[name][k] for k in names])

    for step, (idx, x, t) in enumerate(_batches(name, 3, n, 5, gen)):
        own = _own_args(name, x)
        common = dict(input=x, target=t, sample_weight=None, compute_grad=True, compute_stats=True, **own)
        loss, grad, stats = emulated(reduction=2, **common, **a.op_args(idx))[:3]
        w = _reference_step(b, name, idx, x, t, stats)
        _assert_same_table(a, b)
        per, per_grad = emulated(reduction=0, **common)[:2]
        per_sample = per.reshape(n, -1).sum(1)
        torch.testing.assert_close(loss, (per_sample * w).sum(), rtol=1e-5, atol=1e-5)
        shape = (n,) + (1,) * (per_grad.dim() - 1)
        torch.testing.assert_close(grad, per_grad * w.view(shape), rtol=1e-5, atol=1e-6)
        if step == 1:
            a.step_epoch()
            b.step_epoch()


@pytest.mark.parametrize("policy_name", ["LossEMA", "OHEM", "GHM"])
@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss"])
def test_inplace_grad_with_a_table(policy_name, name):
    # The `_` ops take the table too: same loss, gradient and table as the default mode.
    a, b = _pair(policy_name)
    if not a.policy.supports(name):
        pytest.skip(f"{policy_name} does not weight {name}")
    fn = getattr(samplewt_ops, name)
    gen = torch.Generator().manual_seed(5)
    for idx, x, t in _batches(name, 3, 9, 4, gen):
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        l1 = fn(x1, t, table=a, indices=idx)
        l2 = fn(x2, t, table=b, indices=idx, inplace_grad=True)
        l1.backward()
        l2.backward()
        torch.testing.assert_close(l1, l2)
        torch.testing.assert_close(x1.grad, x2.grad)
        _assert_same_table(a, b)


def test_no_grad_still_updates_the_table():
    table = AdaptiveWeights(S, LossEMA())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        samplewt_ops.cross_entropy(x, y, table=table, indices=torch.arange(4))
    assert int(table.seen_count.sum()) == 4


@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 0.5, 0.55, 0.8, 1.0])
def test_ohem_keeps_the_reference_rows_with_ties_nan_and_ignored(monkeypatch, keep_ratio):
    # OHEM's selection in C++ (largest losses first, NaN above everything,
    # ignored samples last, ties by position), with the cut falling inside
    # groups of equal losses.
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(4, 5, generator=gen) * 3
    x = base[torch.randint(0, 4, (20,), generator=gen)].clone()  # equal rows: equal losses
    t = torch.randint(0, 5, (20,), generator=gen)
    t[:] = t[0]
    x[7, 2] = float("nan")
    t[[3, 12]] = -100
    x[15] = x[16] = 0.0  # equal logits: loss log(5), equal for both
    idx = torch.arange(20)
    out = []
    for kernel in (True, False):
        table = AdaptiveWeights(S, OHEM(keep_ratio=keep_ratio))
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(functional, "_kernel", lambda input, target: False)
            xk = x.clone().requires_grad_(True)
            kw = dict(sample_weight=None, table=table, indices=idx, reduction="none")
            loss = samplewt_ops.cross_entropy(xk, t, **kw) if kernel else \
                _reference_loss("cross_entropy", xk, t, **kw)
            out.append(loss.detach())
    # The reference breaks ties as topk does: the same kept losses, as values.
    kept = [o[o != 0] for o in out]
    torch.testing.assert_close(kept[0].sort().values, kept[1].sort().values, equal_nan=True)
    # The op's own rule: a stable descending order of the keys, the first k.
    plain = _stats("cross_entropy", x, t)[:, 0]
    key = torch.where(t == -100, float("-inf"), torch.nan_to_num(plain, nan=float("inf"), posinf=float("inf")))
    k = OHEM(keep_ratio=keep_ratio).num_kept(20)
    order = torch.sort(key, descending=True, stable=True).indices[:k]
    want = sorted(i for i in order.tolist() if t[i] != -100)
    assert (out[0] != 0).nonzero().flatten().tolist() == want


@pytest.mark.parametrize("n", [1, 2, 37, 256, 1000])
def test_ohem_selection_is_a_stable_top_k_on_random_batches(n):
    # The radix select against a stable sort, on batches whose losses share
    # their leading bytes (one exponent range) and have exact repeats.
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=gen)
    x[torch.randint(0, n, (n // 4,), generator=gen)] = x[0].clone()
    t = torch.randint(0, 6, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < 0.1] = -100
    plain = _stats("cross_entropy", x, t)[:, 0]
    key = torch.where(t == -100, float("-inf"), plain)
    for keep_ratio in (0.01, 0.25, 0.5, 0.7, 1.0):
        table = AdaptiveWeights(max(S, n), OHEM(keep_ratio=keep_ratio))
        loss = samplewt_ops.cross_entropy(x, t, table=table, indices=torch.arange(n), reduction="none")
        k = OHEM(keep_ratio=keep_ratio).num_kept(n)
        order = torch.sort(key, descending=True, stable=True).indices[:k]
        want = sorted(i for i in order.tolist() if t[i] != -100)
        assert (loss != 0).nonzero().flatten().tolist() == want, keep_ratio
