"""Policy formulas against plain-PyTorch references written here."""

import math

import pytest
import torch

from samplewt_ops.weights import GHM, LOSS_NAMES, OHEM, AdaptiveWeights, GradNormEMA, LossEMA, SelfPaced

S = 40


def _table_with_state(policy, seed=0, unseen=(3, 7, 8, 30)):
    g = torch.Generator().manual_seed(seed)
    t = AdaptiveWeights(S, policy)
    t.loss_ema.copy_(torch.rand(S, generator=g) * 3)
    t.grad_norm_ema.copy_(torch.rand(S, generator=g) * 2)
    t.seen_count.copy_(torch.randint(1, 5, (S,), generator=g))
    t.seen_count[list(unseen)] = 0
    t.loss_ema[list(unseen)] = 0
    t.grad_norm_ema[list(unseen)] = 0
    t.recompute_sums()  # the state was written directly
    return t


def _ratio_reference(stat, seen, power, lo, hi):
    stat = stat.double()
    seen_l = seen.tolist()
    vals = [float(v) for v, s in zip(stat, seen_l) if s]
    mean = sum(vals) / len(vals) if vals else 0.0
    raw = []
    for v in stat.tolist():
        r = v / mean if mean > 0 else 1.0
        raw.append(min(max(r**power if not (r == 0 and power < 0) else math.inf, lo), hi))
    return torch.tensor([r if s else 1.0 for r, s in zip(raw, seen_l)], dtype=torch.float64)


@pytest.mark.parametrize("cls, stat", [(LossEMA, "loss_ema"), (GradNormEMA, "grad_norm_ema")])
@pytest.mark.parametrize("power, lo, hi", [(1.0, 0.1, 10.0), (2.0, 0.5, 2.0), (0.5, 0.0, math.inf), (-1.0, 0.2, 5.0)])
def test_ratio_policies(cls, stat, power, lo, hi):
    t = _table_with_state(cls(power=power, min_weight=lo, max_weight=hi))
    w = t.weights
    assert w.dtype == torch.float32 and w.shape == (S,)
    ref = _ratio_reference(getattr(t, stat), t.seen_count > 0, power, lo, hi)
    torch.testing.assert_close(w.double(), ref, rtol=1e-5, atol=1e-6)
    seen = t.seen_count > 0
    assert torch.all(w[~seen] == 1)
    idx = torch.tensor([0, 3, 3, 39, 12])
    assert torch.equal(t.batch_weights(idx), w[idx])


def test_ratio_uses_its_statistic():
    a = _table_with_state(LossEMA()).weights
    b = _table_with_state(GradNormEMA()).weights
    assert not torch.allclose(a, b)


def test_ratio_degenerate_cases():
    t = AdaptiveWeights(5, LossEMA())
    assert torch.equal(t.weights, torch.ones(5))  # nothing seen
    t.seen_count[:3] = 1  # seen, zero losses: mean 0 -> uniform
    assert torch.equal(t.weights, torch.ones(5))


def test_ratio_clipping_without_renormalisation():
    t = AdaptiveWeights(4, LossEMA(min_weight=0.5, max_weight=2.0))
    t.seen_count.fill_(1)
    t.loss_ema.copy_(torch.tensor([0.0, 1.0, 1.0, 10.0]))  # mean 3 -> ratios 0, 1/3, 1/3, 10/3
    t.recompute_sums()
    torch.testing.assert_close(t.weights.double(), torch.tensor([0.5, 0.5, 0.5, 2.0], dtype=torch.float64))


def test_ratio_mean_follows_the_running_sums():
    # The mean comes from stat_sum, which each observation updates in O(batch).
    t = AdaptiveWeights(6, LossEMA(momentum=0.5, max_weight=100.0))
    t.observe(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), torch.ones(3))
    t.observe(torch.tensor([2, 4]), torch.tensor([5.0, 9.0]), torch.ones(2))
    ema = torch.tensor([1.0, 2.0, 4.0, 0.0, 9.0, 0.0])  # sample 2: 0.5*3 + 0.5*5
    assert torch.equal(t.loss_ema, ema)
    torch.testing.assert_close(t.stat_sum, torch.tensor([16.0, 4.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(t.weights, torch.tensor([0.25, 0.5, 1.0, 1.0, 2.25, 1.0]))


@pytest.mark.parametrize("soft", [False, True])
def test_self_paced(soft):
    t = _table_with_state(SelfPaced(1.5, growth=1.3, soft=soft))
    thr = 1.5
    for _ in range(3):
        ref = []
        for v, s in zip(t.loss_ema.double().tolist(), (t.seen_count > 0).tolist()):
            if not s:
                ref.append(1.0)
            elif soft:
                ref.append(max(0.0, 1.0 - v / thr))
            else:
                ref.append(1.0 if v < thr else 0.0)
        torch.testing.assert_close(t.weights.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=1e-6)
        idx = torch.tensor([1, 3, 5, 5])
        assert torch.equal(t.batch_weights(idx), t.weights[idx])
        t.step_epoch()
        thr *= 1.3
    assert int(t.epoch) == 3
    assert math.isclose(float(t.policy_state["threshold"]), thr, rel_tol=1e-12)


def test_self_paced_uses_last_loss_by_default():
    t = AdaptiveWeights(3, SelfPaced(1.0))
    i = torch.tensor([0, 1])
    t.observe(i, torch.tensor([5.0, 0.5]), torch.zeros(2))
    t.observe(i, torch.tensor([0.2, 3.0]), torch.zeros(2))  # momentum 0: last loss
    assert torch.equal(t.weights, torch.tensor([1.0, 0.0, 1.0]))


def _ohem_reference(loss, ratio, valid=None):
    n = loss.shape[0]
    k = math.ceil(round(ratio * n, 9))
    order = sorted(
        range(n), key=lambda i: -(loss[i].item() if valid is None or valid[i] else -math.inf)
    )
    w = torch.zeros(n)
    for i in order[:k]:
        w[i] = 1.0
    if valid is not None:
        w = w * valid.float()
    return w


@pytest.mark.parametrize("ratio, n", [(0.7, 10), (0.5, 7), (1.0, 5), (0.01, 9), (0.3, 64)])
def test_ohem_batch(ratio, n):
    g = torch.Generator().manual_seed(n)
    loss = torch.randperm(n * 3, generator=g)[:n].float() / 7  # distinct values
    t = AdaptiveWeights(100, OHEM(ratio))
    idx = torch.randint(0, 100, (n,), generator=g)
    w = t.batch_weights(idx, loss=loss)
    assert torch.equal(w, _ohem_reference(loss, ratio))
    assert int(w.sum()) == math.ceil(round(ratio * n, 9))


def test_ohem_valid_mask_and_history_weights():
    loss = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    valid = torch.tensor([False, True, True, True, True, True])
    t = AdaptiveWeights(10, OHEM(0.5))
    w = t.batch_weights(torch.arange(6), loss=loss, valid=valid)
    assert torch.equal(w, _ohem_reference(loss, 0.5, valid))
    assert torch.equal(w, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    # history summary: the hardest ceil(0.5 * 6) seen samples, unseen -> 1
    t.observe(torch.arange(6), loss, torch.zeros(6))
    assert torch.equal(t.weights, torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 1, 1, 1]))


def test_ohem_needs_loss():
    with pytest.raises(ValueError, match="loss"):
        AdaptiveWeights(4, OHEM(0.5)).batch_weights(torch.arange(2))


def _ghm_reference_run(batches, bins, momentum):
    """Loop-over-bins reference of GHM-C; returns the per-batch weights."""
    s = [0.0] * bins
    out = []
    for step, (g, valid) in enumerate(batches):
        gl = g.double().clamp(0, 1).tolist()
        vl = [True] * len(gl) if valid is None else valid.tolist()
        b = [min(int(math.floor(x * bins)), bins - 1) for x in gl]
        hist = [0.0] * bins
        for bi, v in zip(b, vl):
            if v:
                hist[bi] += 1
        s = hist if step == 0 else [momentum * a + (1 - momentum) * r for a, r in zip(s, hist)]
        n = sum(vl)
        out.append(torch.tensor([n / (bins * s[bi]) if v else 0.0 for bi, v in zip(b, vl)], dtype=torch.float64))
    return out, torch.tensor(s, dtype=torch.float64)


@pytest.mark.parametrize("bins, momentum", [(10, 0.75), (4, 0.0), (1, 0.5), (30, 0.9)])
def test_ghm_against_reference(bins, momentum):
    gen = torch.Generator().manual_seed(bins)
    batches = []
    for step in range(5):
        n = 16 + step
        g = torch.rand(n, generator=gen) ** 2  # skewed towards small g
        g[0], g[1] = 0.0, 1.0  # edges: g = 1 goes to the last bin
        valid = (torch.rand(n, generator=gen) > 0.2) if step % 2 else None
        if valid is not None:
            valid[2] = True
        batches.append((g, valid))
    ref_w, ref_s = _ghm_reference_run(batches, bins, momentum)
    t = AdaptiveWeights(50, GHM(bins=bins, momentum=momentum))
    for (g, valid), rw in zip(batches, ref_w):
        idx = torch.randint(0, 50, (g.shape[0],), generator=gen)
        loss = torch.rand(g.shape[0], generator=gen)
        w = t.batch_weights(idx, loss=loss, g=g, valid=valid)
        torch.testing.assert_close(w.double(), rw, rtol=1e-5, atol=1e-6)
        # weights are pure: asking twice gives the same, the EMA moves only in observe
        assert torch.equal(t.batch_weights(idx, loss=loss, g=g, valid=valid), w)
        t.observe(idx, loss, torch.rand(g.shape[0], generator=gen), g, valid=valid)
    torch.testing.assert_close(t.policy_state["bin_ema"].double(), ref_s, rtol=1e-5, atol=1e-6)


def test_ghm_uniform_density_gives_unit_weights():
    t = AdaptiveWeights(20, GHM(bins=5))
    g = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9] * 2)
    torch.testing.assert_close(t.batch_weights(torch.arange(10), g=g), torch.ones(10))


def test_ghm_uses_density_including_current_batch():
    # second batch falls entirely in a bin empty so far: with the updated EMA its
    # weight is finite, N / (M * (1 - momentum) * N)
    t = AdaptiveWeights(8, GHM(bins=2, momentum=0.75))
    t.observe(torch.arange(4), torch.zeros(4), torch.zeros(4), torch.full((4,), 0.1))
    w = t.batch_weights(torch.arange(4), g=torch.full((4,), 0.9))
    torch.testing.assert_close(w, torch.full((4,), 4 / (2 * 0.25 * 4)))


def test_ghm_needs_g_and_history_weights():
    t = AdaptiveWeights(6, GHM(bins=2, momentum=0.5, history_momentum=0.0))
    with pytest.raises(ValueError, match="g"):
        t.batch_weights(torch.arange(2), loss=torch.ones(2))
    with pytest.raises(ValueError, match="g"):
        t.observe(torch.arange(2), torch.ones(2), torch.ones(2))
    t.observe(torch.arange(4), torch.zeros(4), torch.zeros(4), torch.tensor([0.1, 0.2, 0.3, 0.8]))
    # bin EMA = [3, 1] -> total 4; seen samples: 4 / (2 * S[bin(g_i)]); unseen 1
    torch.testing.assert_close(t.weights, torch.tensor([4 / 6, 4 / 6, 4 / 6, 2.0, 1.0, 1.0]))


def test_supports_and_check_loss():
    for p in (LossEMA(), GradNormEMA(), SelfPaced(1.0), OHEM(0.5)):
        assert all(p.supports(n) for n in LOSS_NAMES)
    ghm = GHM()
    assert {n for n in LOSS_NAMES if ghm.supports(n)} == {
        "cross_entropy",
        "sigmoid_focal_loss",
        "binary_cross_entropy_with_logits",
    }
    t = AdaptiveWeights(3, ghm)
    t.check_loss("cross_entropy")
    for bad in ("mse_loss", "l1_loss", "huber_loss", "focal_loss"):
        with pytest.raises(ValueError, match=rf"GHM.*{bad}"):
            t.check_loss(bad)
    with pytest.raises(ValueError, match="unknown loss"):
        t.check_loss("nll")


def test_per_batch_flags():
    assert not LossEMA().per_batch and not GradNormEMA().per_batch and not SelfPaced(1.0).per_batch
    assert OHEM(0.5).per_batch and GHM().per_batch


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LossEMA(momentum=1.0), "momentum"),
        (lambda: LossEMA(momentum=-0.1), "momentum"),
        (lambda: GradNormEMA(min_weight=2.0, max_weight=1.0), "max_weight"),
        (lambda: LossEMA(min_weight=-1.0), "min_weight"),
        (lambda: LossEMA(power=float("nan")), "power"),
        (lambda: SelfPaced(0.0), "threshold"),
        (lambda: SelfPaced(1.0, growth=0.0), "growth"),
        (lambda: OHEM(0.0), "keep_ratio"),
        (lambda: OHEM(1.5), "keep_ratio"),
        (lambda: GHM(bins=0), "bins"),
        (lambda: GHM(momentum=1.0), "momentum"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_policy_repr_and_equality():
    assert LossEMA(power=2.0) == LossEMA(power=2.0) and LossEMA() != GradNormEMA()
    assert "keep_ratio=0.25" in repr(OHEM(0.25))
