"""The sample-weight rule of the reference (samplewt_ops.reference), by hand:
"mean" divides by the sum of what PyTorch divides by, each sample's share
times its weight, and an integer sample weight k repeats a sample k times.
The rest of the reference is tested against PyTorch in test_reference.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from samplewt_ops import reference as ref
from test_reference import ELEMENTWISE, assert_close, index_target, prob_target, run, torchvision_sigmoid_focal

SEED = 1234
pytestmark = pytest.mark.usefixtures("seeded")


# ---------------------------------------------------------------------------
# the sample-weight rules


def test_sample_weight_mean_rule_cross_entropy_index_by_hand():
    """sum_i w_i l_i / sum_{i not ignored} w_i cw[y_i], positions of (N,C,d1,d2)
    each weighted by their sample's w."""
    N, C = 4, 5
    x = torch.randn(N, C, 2, 3, dtype=torch.float64)
    t = index_target((N, 2, 3), C, ignore_index=-100)
    cw = torch.rand(C, dtype=torch.float64) + 0.2
    w = torch.tensor([0.5, 2.0, 0.0, 1.25], dtype=torch.float64)
    for ls in (0.0, 0.25):
        per = F.cross_entropy(x, t, cw, reduction="none", label_smoothing=ls)  # (N,2,3)
        valid = t != -100
        cw_y = torch.where(valid, cw[t.clamp(min=0)], torch.zeros((), dtype=torch.float64))
        wb = w.view(N, 1, 1)
        expected_none = per * wb
        expected_mean = (per * wb).sum() / (cw_y * wb).sum()
        got_none = ref.cross_entropy(x, t, cw, sample_weight=w, reduction="none", label_smoothing=ls)
        got_sum = ref.cross_entropy(x, t, cw, sample_weight=w, reduction="sum", label_smoothing=ls)
        got_mean = ref.cross_entropy(x, t, cw, sample_weight=w, reduction="mean", label_smoothing=ls)
        assert_close(got_none, expected_none)
        assert_close(got_sum, expected_none.sum())
        assert_close(got_mean, expected_mean)
        # and it really differs from the unweighted mean
        assert not torch.allclose(got_mean, F.cross_entropy(x, t, cw, label_smoothing=ls))


def test_sample_weight_mean_rule_by_hand_loops():
    """The mean rule from scalar Python arithmetic, one sample at a time."""
    N, C = 5, 4
    x = torch.randn(N, C, dtype=torch.float64)
    t = torch.tensor([0, 3, -100, 1, 3])
    cw = [0.5, 1.0, 2.0, 1.5]
    w = [1.0, 0.25, 3.0, 2.0, 0.0]
    num = den = 0.0
    for i in range(N):
        if int(t[i]) == -100:
            continue
        lse = math.log(sum(math.exp(float(v)) for v in x[i]))
        li = cw[int(t[i])] * (lse - float(x[i, int(t[i])]))
        num += w[i] * li
        den += w[i] * cw[int(t[i])]
    got = ref.cross_entropy(x, t, torch.tensor(cw, dtype=torch.float64),
                            sample_weight=torch.tensor(w, dtype=torch.float64))
    assert got.item() == pytest.approx(num / den, rel=1e-12)

    # focal: sum w_i l_i / sum_{not ignored} w_i, alpha not in the denominator
    gamma, alpha = 1.5, 0.3
    num = den = 0.0
    for i in range(N):
        if int(t[i]) == -100:
            continue
        row = [math.exp(float(v)) for v in x[i]]
        p = row[int(t[i])] / sum(row)
        num += w[i] * (-alpha * (1 - p) ** gamma * math.log(p))
        den += w[i]
    got = ref.focal_loss(x, t, gamma=gamma, alpha=alpha, sample_weight=torch.tensor(w, dtype=torch.float64))
    assert got.item() == pytest.approx(num / den, rel=1e-12)


def test_sample_weight_mean_rule_prob_targets_by_hand():
    N, C = 4, 3
    x = torch.randn(N, C, 2, dtype=torch.float64)
    q = prob_target((N, C, 2), 1).double()
    w = torch.tensor([1.0, 0.0, 2.5, 0.5], dtype=torch.float64)
    per = F.cross_entropy(x, q, reduction="none", label_smoothing=0.1)  # (N,2)
    expected = (per * w.view(N, 1)).sum() / (w.sum() * 2)
    assert_close(ref.cross_entropy(x, q, sample_weight=w, label_smoothing=0.1), expected)


@pytest.mark.parametrize("name,use_weight", [
    (n, w) for n in ["mse", "l1", "huber", "bce", "sigmoid_focal"] for w in (False, True)
    if not (n == "sigmoid_focal" and w)  # sigmoid_focal_loss has no weight argument
])
def test_sample_weight_mean_rule_elementwise_by_hand(name, use_weight):
    N = 4
    x = torch.randn(N, 3, 2, dtype=torch.float64) * 2
    tgt = torch.rand(N, 3, 2, dtype=torch.float64)
    v = torch.rand(N, 3, 2, dtype=torch.float64) + 0.1 if use_weight else None
    w = torch.tensor([0.0, 1.5, 3.0, 0.25], dtype=torch.float64)
    wb = w.view(N, 1, 1)
    if name == "bce":
        per = F.binary_cross_entropy_with_logits(x, tgt, v, reduction="none")
        got = ref.binary_cross_entropy_with_logits(x, tgt, v, sample_weight=w)
        denom = w.sum() * 6
    elif name == "sigmoid_focal":
        per = torchvision_sigmoid_focal(x, tgt, 0.25, 2.0, "none")
        got = ref.sigmoid_focal_loss(x, tgt, sample_weight=w, reduction="mean")
        denom = w.sum() * 6
    else:
        ours, theirs = ELEMENTWISE[name]
        per = theirs(x, tgt, reduction="none", weight=v)
        got = ours(x, tgt, weight=v, sample_weight=w)
        if use_weight and name != "huber":
            denom = (v * wb).sum()  # PyTorch divides mse/l1 by weight.sum()
        else:
            denom = w.sum() * 6
    assert_close(got, (per * wb).sum() / denom)


def _repeat_case(name):
    """(ours(x, t, sample_weight), theirs(x, t)) for the repetition property."""
    N = 6
    cw = torch.rand(5, dtype=torch.float64) + 0.2
    if name == "ce_index":
        x = torch.randn(N, 5, 3, dtype=torch.float64)
        t = index_target((N, 3), 5, ignore_index=-100)
        return x, t, (lambda x, t, sw, red: ref.cross_entropy(x, t, cw, sample_weight=sw, reduction=red,
                                                              label_smoothing=0.1)), \
            (lambda x, t, red: F.cross_entropy(x, t, cw, reduction=red, label_smoothing=0.1))
    if name == "ce_prob":
        x = torch.randn(N, 5, dtype=torch.float64)
        t = prob_target((N, 5), 1).double()
        return x, t, (lambda x, t, sw, red: ref.cross_entropy(x, t, cw, sample_weight=sw, reduction=red)), \
            (lambda x, t, red: F.cross_entropy(x, t, cw, reduction=red))
    x = torch.randn(N, 4, dtype=torch.float64)
    t = torch.rand(N, 4, dtype=torch.float64)
    if name == "bce":
        pw = torch.rand(4, dtype=torch.float64) + 0.5
        return x, t, (lambda x, t, sw, red: ref.binary_cross_entropy_with_logits(
            x, t, pos_weight=pw, sample_weight=sw, reduction=red)), \
            (lambda x, t, red: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=red))
    if name == "sigmoid_focal":
        return x, t, (lambda x, t, sw, red: ref.sigmoid_focal_loss(x, t, sample_weight=sw, reduction=red)), \
            (lambda x, t, red: torchvision_sigmoid_focal(x, t, 0.25, 2.0, red))
    ours, theirs = ELEMENTWISE[name]
    return x, t, (lambda x, t, sw, red: ours(x, t, sample_weight=sw, reduction=red)), \
        (lambda x, t, red: theirs(x, t, reduction=red))


@pytest.mark.parametrize("name", ["ce_index", "ce_prob", "bce", "sigmoid_focal", "mse", "l1", "huber"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_integer_sample_weight_equals_repeating_samples(name, reduction):
    x, t, ours, theirs = _repeat_case(name)
    reps = torch.tensor([2, 0, 1, 3, 1, 2])
    sw = reps.to(torch.float64)
    got_o, got_g = run(lambda z: ours(z, t, sw, reduction), x)
    x_rep = x.repeat_interleave(reps, dim=0).detach().requires_grad_(True)
    exp = theirs(x_rep, t.repeat_interleave(reps, dim=0), reduction)
    (g_rep,) = torch.autograd.grad(exp, x_rep)
    # gradient of a repeated sample accumulates over its copies
    idx = torch.arange(x.shape[0]).repeat_interleave(reps)
    exp_g = torch.zeros_like(x).index_add_(0, idx, g_rep)
    assert_close(got_o, exp.detach())
    assert_close(got_g, exp_g)


def test_focal_sample_weight_equals_repeating_samples():
    x = torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, -100, 1, 2, 2])
    reps = torch.tensor([1, 3, 2, 0, 2, 1])
    alpha = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    got = ref.focal_loss(x, t, gamma=2.0, alpha=alpha, sample_weight=reps.double())
    exp = ref.focal_loss(x.repeat_interleave(reps, 0), t.repeat_interleave(reps, 0), gamma=2.0, alpha=alpha)
    assert_close(got, exp)


@pytest.mark.parametrize("shape_w", [(), (1,)])
def test_unbatched_sample_weight(shape_w):
    x = torch.randn(6, dtype=torch.float64)
    t = torch.tensor(4)
    w = torch.full(shape_w, 2.5, dtype=torch.float64)
    base = F.cross_entropy(x, t, reduction="none")
    assert ref.cross_entropy(x, t, sample_weight=w, reduction="none").shape == ()
    assert_close(ref.cross_entropy(x, t, sample_weight=w, reduction="none"), 2.5 * base)
    assert_close(ref.cross_entropy(x, t, sample_weight=w, reduction="sum"), 2.5 * base)
    assert_close(ref.cross_entropy(x, t, sample_weight=w, reduction="mean"), base)
    q = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    assert_close(ref.cross_entropy(x, q, sample_weight=w, reduction="sum"),
                 2.5 * F.cross_entropy(x, q, reduction="sum"))
    assert_close(ref.focal_loss(x, t, sample_weight=w, reduction="none", gamma=0.0), 2.5 * base)


def test_zero_dim_elementwise_input():
    x = torch.tensor(0.7, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    for w in (None, torch.tensor(3.0, dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)):
        s = 1.0 if w is None else 3.0
        assert_close(ref.mse_loss(x, t, sample_weight=w, reduction="sum"), s * F.mse_loss(x, t, reduction="sum"))
        assert_close(ref.mse_loss(x, t, sample_weight=w), F.mse_loss(x, t))
        out = ref.l1_loss(x, t, sample_weight=w, reduction="none")
        assert out.shape == ()
        assert_close(out, s * F.l1_loss(x, t, reduction="none"))
