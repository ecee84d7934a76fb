"""The pure-PyTorch reference (samplewt_ops.reference) against PyTorch itself.

The reference is the specification the compiled kernels are tested against,
so here it is pinned to independent ground truth:

* ``torch.nn.functional`` for every argument PyTorch has (sample_weight=None
  and sample_weight=ones must both reproduce it),
* torchvision's ``sigmoid_focal_loss`` formula, written out inline below,
* the focal-loss formula written naively with softmax,
* the sample-weight "mean" rule, written by hand, and the equivalent
  statement that an integer sample weight k repeats a sample k times
  (test_reference_sample_weight.py).
"""

import pytest
import torch
import torch.nn.functional as F

from samplewt_ops import reference as ref

REDUCTIONS = ["none", "mean", "sum"]
SEED = 1234
pytestmark = pytest.mark.usefixtures("seeded")


# ---------------------------------------------------------------------------
# helpers


def assert_close(actual, expected, **kw):
    torch.testing.assert_close(actual, expected, equal_nan=True, **kw)


def run(fn, x, *args, grad_out=None, **kwargs):
    """Forward and d/dx of ``fn(x, *args, **kwargs)``; grad_out random for "none"."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    if grad_out is None:
        grad_out = torch.ones_like(out)
    (gx,) = torch.autograd.grad(out, x, grad_out, allow_unused=False)
    return out.detach(), gx


def compare_fwd_bwd(ours, theirs, x, dtype, **tol):
    """Run both callables on x and compare outputs and input gradients."""
    out_t = theirs(x.detach().clone().requires_grad_(True))
    g = torch.randn(out_t.shape, dtype=out_t.dtype)
    o1, g1 = run(ours, x, grad_out=g)
    o2, g2 = run(theirs, x, grad_out=g)
    assert o1.dtype == dtype and o1.shape == o2.shape
    assert g1.dtype == dtype
    assert_close(o1, o2, **tol)
    assert_close(g1, g2, **tol)


def index_target(shape, C, ignore_index=None, frac=0.25):
    t = torch.randint(0, C, shape)
    if ignore_index is not None and t.numel() > 1:
        mask = torch.rand(shape) < frac
        mask.view(-1)[0] = False  # keep at least one sample that counts
        t[mask] = ignore_index
    return t


def prob_target(shape, class_dim):
    return torch.softmax(torch.randn(shape) * 2, dim=class_dim)


# Softmax input shapes: (N,C), (N,C,d1), (N,C,d1,d2), unbatched (C,).
SOFTMAX_SHAPES = [(7, 5), (4, 5, 3), (3, 5, 2, 3), (5,)]


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def index_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


# The regression losses and their PyTorch counterparts.
ELEMENTWISE = {
    "mse": (ref.mse_loss, F.mse_loss),
    "l1": (ref.l1_loss, F.l1_loss),
    "huber": (ref.huber_loss, F.huber_loss),
}


# ---------------------------------------------------------------------------
# cross_entropy == F.cross_entropy


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sw", [None, "ones"])
def test_cross_entropy_index_matches_torch(shape, use_weight, ignore_index, label_smoothing,
                                           reduction, dtype, sw):
    C = shape[class_dim(shape)]
    x = torch.randn(shape, dtype=dtype) * 3
    t = index_target(index_shape(shape), C, ignore_index)
    if len(shape) == 1 and ignore_index == 2:
        t = torch.tensor(2)  # unbatched sample that is ignored
    w = torch.rand(C, dtype=dtype) + 0.1 if use_weight else None
    sample_weight = None if sw is None else torch.ones(1 if len(shape) == 1 else shape[0], dtype=dtype)
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    compare_fwd_bwd(
        lambda z: ref.cross_entropy(z, t, w, sample_weight=sample_weight, **kw),
        lambda z: F.cross_entropy(z, t, w, **kw),
        x, dtype)


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sw", [None, "ones"])
def test_cross_entropy_prob_matches_torch(shape, use_weight, label_smoothing, reduction, dtype, sw):
    cd = class_dim(shape)
    C = shape[cd]
    x = torch.randn(shape, dtype=dtype) * 3
    q = prob_target(shape, cd).to(dtype)
    w = torch.rand(C, dtype=dtype) + 0.1 if use_weight else None
    sample_weight = None if sw is None else torch.ones(1 if len(shape) == 1 else shape[0], dtype=dtype)
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    compare_fwd_bwd(
        lambda z: ref.cross_entropy(z, q, w, sample_weight=sample_weight, **kw),
        lambda z: F.cross_entropy(z, q, w, **kw),
        x, dtype)


def test_cross_entropy_one_class_and_two_classes():
    for C in (1, 2):
        x = torch.randn(6, C, dtype=torch.float64)
        t = torch.randint(0, C, (6,))
        for red in REDUCTIONS:
            compare_fwd_bwd(lambda z: ref.cross_entropy(z, t, reduction=red, label_smoothing=0.1),
                            lambda z: F.cross_entropy(z, t, reduction=red, label_smoothing=0.1),
                            x, torch.float64)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    x = torch.randn(4, 3)
    t = torch.full((4,), -100)
    for ls in (0.0, 0.1):
        out = ref.cross_entropy(x, t, label_smoothing=ls)
        assert torch.isnan(out)
        assert_close(out, F.cross_entropy(x, t, label_smoothing=ls))
        assert ref.cross_entropy(x, t, reduction="sum").item() == 0.0
    sw = torch.rand(4)
    assert torch.isnan(ref.cross_entropy(x, t, sample_weight=sw))


@pytest.mark.parametrize("tdtype", [torch.int32, torch.uint8, torch.int16])
def test_cross_entropy_accepts_other_integer_target_dtypes(tdtype):
    x = torch.randn(5, 4)
    t = torch.randint(0, 4, (5,))
    assert_close(ref.cross_entropy(x, t.to(tdtype)), F.cross_entropy(x, t))
    assert_close(ref.focal_loss(x, t.to(tdtype), gamma=0.0), F.cross_entropy(x, t))


def test_large_class_count_matches_torch():
    x = torch.randn(3, 70000) * 4
    t = torch.randint(0, 70000, (3,))
    w = torch.rand(70000) + 0.5
    compare_fwd_bwd(lambda z: ref.cross_entropy(z, t, w, label_smoothing=0.1),
                    lambda z: F.cross_entropy(z, t, w, label_smoothing=0.1),
                    x, torch.float32)


# ---------------------------------------------------------------------------
# focal_loss


def naive_focal(x, t, gamma, alpha, ignore_index, reduction):
    """-alpha_y (1-p_y)^gamma log p_y written with softmax directly (x: (N,C))."""
    p = torch.softmax(x, 1)
    valid = t != ignore_index
    ts = torch.where(valid, t, 0)
    p_y = p.gather(1, ts[:, None])[:, 0]
    a = 1.0 if alpha is None else (alpha[ts] if torch.is_tensor(alpha) else alpha)
    loss = -a * (1 - p_y) ** gamma * torch.log(p_y)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, "tensor"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_focal_matches_formula(gamma, alpha, reduction, ignore_index):
    x = torch.randn(9, 5, dtype=torch.float64) * 2
    t = index_target((9,), 5, ignore_index)
    a = torch.rand(5, dtype=torch.float64) if alpha == "tensor" else alpha
    compare_fwd_bwd(lambda z: ref.focal_loss(z, t, gamma=gamma, alpha=a, ignore_index=ignore_index,
                                             reduction=reduction),
                    lambda z: naive_focal(z, t, gamma, a, ignore_index, reduction),
                    x, torch.float64)


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_focal_gamma0_equals_cross_entropy(shape, reduction, dtype):
    C = shape[class_dim(shape)]
    x = torch.randn(shape, dtype=dtype) * 2
    t = index_target(index_shape(shape), C, -100) if len(shape) > 1 else torch.tensor(3)
    sw = None if len(shape) == 1 else torch.rand(shape[0], dtype=dtype)
    compare_fwd_bwd(lambda z: ref.focal_loss(z, t, gamma=0.0, sample_weight=sw, reduction=reduction),
                    lambda z: ref.cross_entropy(z, t, sample_weight=sw, reduction=reduction),
                    x, dtype)
    # and (no sample weight) equals PyTorch
    compare_fwd_bwd(lambda z: ref.focal_loss(z, t, gamma=0.0, reduction=reduction),
                    lambda z: F.cross_entropy(z, t, reduction=reduction),
                    x, dtype)


def test_focal_nd_matches_flattened():
    x = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    t = index_target((3, 2, 5), 4, -100)
    alpha = torch.rand(4, dtype=torch.float64)
    got = ref.focal_loss(x, t, gamma=2.0, alpha=alpha, reduction="none")
    flat_x = x.permute(0, 2, 3, 1).reshape(-1, 4)
    exp = naive_focal(flat_x, t.reshape(-1), 2.0, alpha, -100, "none").reshape(3, 2, 5)
    assert_close(got, exp)
    assert_close(ref.focal_loss(x, t, gamma=2.0, alpha=alpha),
                 naive_focal(flat_x, t.reshape(-1), 2.0, alpha, -100, "mean"))


def test_focal_down_weights_easy_examples():
    x = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    t = torch.tensor([0, 1])
    ce = F.cross_entropy(x, t, reduction="none")
    fl = ref.focal_loss(x, t, gamma=2.0, reduction="none")
    ratio = fl / ce
    assert ratio[0] < 1e-4 and ratio[1] > 0.3


# ---------------------------------------------------------------------------
# sigmoid_focal_loss == torchvision.ops.sigmoid_focal_loss (formula inline)


def torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 5), (6,), ()], ids=str)
@pytest.mark.parametrize("alpha", [0.25, -1.0, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_sigmoid_focal_matches_torchvision_formula(shape, alpha, gamma, reduction, soft):
    x = torch.randn(shape, dtype=torch.float64) * 3
    t = torch.rand(shape, dtype=torch.float64) if soft else (torch.rand(shape) < 0.3).double()
    compare_fwd_bwd(lambda z: ref.sigmoid_focal_loss(z, t, alpha=alpha, gamma=gamma, reduction=reduction),
                    lambda z: torchvision_sigmoid_focal(z, t, alpha, gamma, reduction),
                    x, torch.float64)


def test_sigmoid_focal_defaults_and_float32():
    x = torch.randn(16, 3) * 4
    t = (torch.rand(16, 3) < 0.5).float()
    out = ref.sigmoid_focal_loss(x, t)
    assert out.shape == (16, 3)  # default reduction "none"
    assert_close(out, torchvision_sigmoid_focal(x.double(), t.double()).float())
    ones = torch.ones(16)
    assert_close(ref.sigmoid_focal_loss(x, t, sample_weight=ones, reduction="mean"),
                 torchvision_sigmoid_focal(x.double(), t.double(), reduction="mean").float())
    # alpha=None also disables the balance term
    assert_close(ref.sigmoid_focal_loss(x, t, alpha=None), ref.sigmoid_focal_loss(x, t, alpha=-1.0))


# ---------------------------------------------------------------------------
# binary_cross_entropy_with_logits


@pytest.mark.parametrize("weight", [None, "full", "row", "col"])
@pytest.mark.parametrize("pos_weight", [None, "row", "full"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sw", [None, "ones"])
def test_bce_with_logits_matches_torch(weight, pos_weight, reduction, dtype, sw):
    N, C = 6, 4
    x = torch.randn(N, C, dtype=dtype) * 3
    t = torch.rand(N, C, dtype=dtype)
    shapes = {"full": (N, C), "row": (C,), "col": (N, 1)}
    w = None if weight is None else torch.rand(shapes[weight], dtype=dtype) + 0.1
    pw = None if pos_weight is None else torch.rand(shapes[pos_weight], dtype=dtype) * 3
    s = None if sw is None else torch.ones(N, dtype=dtype)
    compare_fwd_bwd(
        lambda z: ref.binary_cross_entropy_with_logits(z, t, w, pos_weight=pw, sample_weight=s,
                                                       reduction=reduction),
        lambda z: F.binary_cross_entropy_with_logits(z, t, w, pos_weight=pw, reduction=reduction),
        x, dtype)


def test_bce_nd_and_1d():
    for shape in [(3, 2, 4), (7,)]:
        x = torch.randn(shape, dtype=torch.float64)
        t = torch.rand(shape, dtype=torch.float64)
        pw = torch.rand(shape[-1], dtype=torch.float64) + 0.5
        compare_fwd_bwd(lambda z: ref.binary_cross_entropy_with_logits(z, t, pos_weight=pw),
                        lambda z: F.binary_cross_entropy_with_logits(z, t, pos_weight=pw),
                        x, torch.float64)


# ---------------------------------------------------------------------------
# mse / l1 / huber


@pytest.mark.parametrize("name", ["mse", "l1", "huber"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 5), (7,)], ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sw", [None, "ones"])
def test_regression_matches_torch(name, shape, use_weight, reduction, dtype, sw):
    ours, theirs = ELEMENTWISE[name]
    x = torch.randn(shape, dtype=dtype) * 2
    t = torch.randn(shape, dtype=dtype)
    w = torch.rand(shape, dtype=dtype) + 0.1 if use_weight else None
    s = None if sw is None else torch.ones(shape[0], dtype=dtype)
    compare_fwd_bwd(lambda z: ours(z, t, weight=w, sample_weight=s, reduction=reduction),
                    lambda z: theirs(z, t, weight=w, reduction=reduction),
                    x, dtype)


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huber_delta_matches_torch(delta, reduction):
    x = torch.randn(10, 3, dtype=torch.float64) * 3
    t = torch.randn(10, 3, dtype=torch.float64)
    w = torch.rand(10, 3, dtype=torch.float64)
    compare_fwd_bwd(lambda z: ref.huber_loss(z, t, delta=delta, weight=w, reduction=reduction),
                    lambda z: F.huber_loss(z, t, delta=delta, weight=w, reduction=reduction),
                    x, torch.float64)
    compare_fwd_bwd(lambda z: ref.huber_loss(z, t, delta=delta, reduction=reduction),
                    lambda z: F.huber_loss(z, t, delta=delta, reduction=reduction),
                    x, torch.float64)


# ---------------------------------------------------------------------------
# dtypes: float32 accumulation for half and bfloat16


LOWP = [torch.bfloat16, torch.float16]


def lowp_case(name, dtype):
    """(ours on low-precision x, exact float64 PyTorch on the same values)."""
    N, C = 32, 10
    x = (torch.randn(N, C) * 3).to(dtype)
    if name == "ce":
        t = index_target((N,), C, -100)
        w = torch.rand(C) + 0.5
        return x, (lambda z: ref.cross_entropy(z, t, w.to(dtype), label_smoothing=0.1)), \
            (lambda z: F.cross_entropy(z, t, w.to(dtype).double(), label_smoothing=0.1))
    if name == "ce_prob":
        q = prob_target((N, C), 1).to(dtype)
        return x, (lambda z: ref.cross_entropy(z, q, reduction="sum")), \
            (lambda z: F.cross_entropy(z, q.double(), reduction="sum"))
    if name == "focal":
        t = index_target((N,), C, -100)
        return x, (lambda z: ref.focal_loss(z, t, gamma=2.0, reduction="none")), \
            (lambda z: naive_focal(z, t, 2.0, None, -100, "none"))
    t = torch.rand(N, C).to(dtype)
    if name == "sigmoid_focal":
        return x, (lambda z: ref.sigmoid_focal_loss(z, t, reduction="mean")), \
            (lambda z: torchvision_sigmoid_focal(z, t.double(), reduction="mean"))
    if name == "bce":
        pw = (torch.rand(C) * 2).to(dtype)
        return x, (lambda z: ref.binary_cross_entropy_with_logits(z, t, pos_weight=pw)), \
            (lambda z: F.binary_cross_entropy_with_logits(z, t.double(), pos_weight=pw.double()))
    ours, theirs = ELEMENTWISE[name]
    return x, (lambda z: ours(z, t, reduction="none")), (lambda z: theirs(z, t.double(), reduction="none"))


@pytest.mark.parametrize("name", ["ce", "ce_prob", "focal", "sigmoid_focal", "bce", "mse", "l1", "huber"])
@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_low_precision_accumulates_in_float32(name, dtype):
    """Computed in float32 and rounded once: within one rounding of the exact value."""
    x, ours, exact = lowp_case(name, dtype)
    out, g = run(ours, x)
    assert out.dtype == dtype and g.dtype == dtype
    out_e, g_e = run(exact, x.double())
    # default assert_close tolerances for bf16 (rtol 1.6e-2) and fp16 (rtol 1e-3)
    # are one unit in the last place of those dtypes.
    assert_close(out, out_e.to(dtype))
    assert_close(g, g_e.to(dtype))


def test_float64_is_computed_in_float64():
    # a difference far below float32 resolution survives
    x = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)
    t = torch.tensor([0])
    a = ref.cross_entropy(x, t)
    b = ref.cross_entropy(x, torch.tensor([1]))
    assert a.dtype == torch.float64 and (a - b).item() == pytest.approx(1e-12, rel=1e-3)


# ---------------------------------------------------------------------------
# empty batches, NaN, extreme logits


EMPTY_CASES = {
    "ce_index": lambda R: (ref.cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), reduction=R),
                           F.cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), reduction=R)),
    "ce_index_nd": lambda R: (ref.cross_entropy(torch.randn(0, 4, 3), torch.zeros(0, 3, dtype=torch.long),
                                                reduction=R, label_smoothing=0.2),
                              F.cross_entropy(torch.randn(0, 4, 3), torch.zeros(0, 3, dtype=torch.long),
                                              reduction=R, label_smoothing=0.2)),
    "ce_prob": lambda R: (ref.cross_entropy(torch.randn(0, 4), torch.rand(0, 4), reduction=R),
                          F.cross_entropy(torch.randn(0, 4), torch.rand(0, 4), reduction=R)),
    "focal": lambda R: (ref.focal_loss(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), gamma=0.0, reduction=R),
                        F.cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), reduction=R)),
    "bce": lambda R: (ref.binary_cross_entropy_with_logits(torch.randn(0, 3), torch.rand(0, 3), reduction=R),
                      F.binary_cross_entropy_with_logits(torch.randn(0, 3), torch.rand(0, 3), reduction=R)),
    "sigmoid_focal": lambda R: (ref.sigmoid_focal_loss(torch.randn(0, 3), torch.rand(0, 3), reduction=R),
                                torchvision_sigmoid_focal(torch.randn(0, 3), torch.rand(0, 3), reduction=R)),
    "mse": lambda R: (ref.mse_loss(torch.randn(0, 3), torch.rand(0, 3), reduction=R),
                      F.mse_loss(torch.randn(0, 3), torch.rand(0, 3), reduction=R)),
    "l1_w": lambda R: (ref.l1_loss(torch.randn(0, 3), torch.rand(0, 3), weight=torch.rand(0, 3), reduction=R),
                       F.l1_loss(torch.randn(0, 3), torch.rand(0, 3), weight=torch.rand(0, 3), reduction=R)),
    "huber": lambda R: (ref.huber_loss(torch.randn(0, 3), torch.rand(0, 3), reduction=R),
                        F.huber_loss(torch.randn(0, 3), torch.rand(0, 3), reduction=R)),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_like_torch(case, reduction):
    got, exp = EMPTY_CASES[case](reduction)
    assert got.shape == exp.shape and got.dtype == exp.dtype
    assert_close(got, exp)
    if reduction == "mean":
        assert torch.isnan(got)
    if reduction == "sum":
        assert got.item() == 0.0


def test_empty_batch_with_sample_weight_and_backward():
    x = torch.randn(0, 5, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    sw = torch.ones(0)
    out = ref.cross_entropy(x, t, sample_weight=sw, reduction="sum")
    out.backward()
    assert out.item() == 0.0 and x.grad.shape == (0, 5)
    assert torch.isnan(ref.cross_entropy(x, t, sample_weight=sw))
    assert torch.isnan(ref.mse_loss(torch.randn(0, 2), torch.randn(0, 2), sample_weight=torch.ones(0)))


def test_nan_logits_propagate_like_torch():
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    t = torch.tensor([0, 1, 2, 1])
    for R in REDUCTIONS:
        got = ref.cross_entropy(x, t, reduction=R, label_smoothing=0.1)
        assert_close(got, F.cross_entropy(x, t, reduction=R, label_smoothing=0.1))
    per = ref.cross_entropy(x, t, reduction="none", sample_weight=torch.rand(4))
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2, 3]]).all()
    assert torch.isnan(ref.focal_loss(x, t, reduction="none")[1])
    assert torch.isnan(ref.focal_loss(x, t, gamma=0.5))
    y = torch.randn(4, 3)
    y[2, 0] = float("nan")
    tt = torch.rand(4, 3)
    for fn in (ref.binary_cross_entropy_with_logits, ref.mse_loss, ref.l1_loss, ref.huber_loss,
               ref.sigmoid_focal_loss):
        per = fn(y, tt, reduction="none")
        assert torch.isnan(per[2, 0]) and torch.isfinite(per[[0, 1, 3]]).all(), fn.__name__
        assert torch.isnan(fn(y, tt, reduction="mean", sample_weight=torch.rand(4))), fn.__name__
    assert_close(ref.binary_cross_entropy_with_logits(y, tt, reduction="none"),
                 F.binary_cross_entropy_with_logits(y, tt, reduction="none"))


def test_extreme_logits_finite_and_match_torch():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]])
    t = torch.tensor([0, 0, 1])
    for R in REDUCTIONS:
        compare_fwd_bwd(lambda z: ref.cross_entropy(z, t, reduction=R, label_smoothing=0.1),
                        lambda z: F.cross_entropy(z, t, reduction=R, label_smoothing=0.1),
                        x, torch.float32)
    # focal with 0 < gamma < 1: the gradient at p_y == 1 is 0, not NaN
    for gamma in (0.5, 1.0, 2.0):
        out, g = run(lambda z: ref.focal_loss(z, t, gamma=gamma, reduction="sum"), x)
        assert torch.isfinite(out) and torch.isfinite(g).all()
        assert_close(g[0], torch.zeros(3))
    y = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    tt = torch.tensor([[1.0, 0.0], [1.0, 0.5]])
    for gamma in (0.0, 0.5, 2.0):
        out, g = run(lambda z: ref.sigmoid_focal_loss(z, tt, gamma=gamma, reduction="sum"), y)
        assert torch.isfinite(out) and torch.isfinite(g).all()
        assert_close(g[0], torch.zeros(2))
    compare_fwd_bwd(lambda z: ref.binary_cross_entropy_with_logits(z, tt, reduction="none"),
                    lambda z: F.binary_cross_entropy_with_logits(z, tt, reduction="none"),
                    y, torch.float32)


# ---------------------------------------------------------------------------
# gradients with respect to everything (the reference is plain autograd)


def test_gradcheck_reference_all_arguments():
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, **d)
    cw = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    sw = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    t = torch.tensor([0, 3, -100, 1, 2])
    q = prob_target((5, 4), 1).double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, cw, sw: ref.cross_entropy(x, t, cw, sample_weight=sw, label_smoothing=0.2), (x, cw, sw))
    assert torch.autograd.gradcheck(
        lambda x, q, cw, sw: ref.cross_entropy(x, q, cw, sample_weight=sw, label_smoothing=0.2), (x, q, cw, sw))
    alpha = torch.rand(4, **d)
    assert torch.autograd.gradcheck(
        lambda x, a, sw: ref.focal_loss(x, t, gamma=1.5, alpha=a, sample_weight=sw), (x, alpha, sw))
    y = torch.randn(5, 3, **d)
    tt = torch.rand(5, 3, **d)
    v = (torch.rand(5, 3, dtype=torch.float64) + 0.5).requires_grad_()
    pw = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda y, tt, sw: ref.sigmoid_focal_loss(y, tt, sample_weight=sw, reduction="mean"), (y, tt, sw))
    assert torch.autograd.gradcheck(
        lambda y, tt, v, pw, sw: ref.binary_cross_entropy_with_logits(y, tt, v, pos_weight=pw, sample_weight=sw),
        (y, tt, v, pw, sw))
    for fn in (ref.mse_loss, ref.l1_loss, ref.huber_loss):
        assert torch.autograd.gradcheck(
            lambda y, tt, v, sw: fn(y, tt, weight=v, sample_weight=sw), (y, tt, v, sw))
