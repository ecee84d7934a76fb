"""The public functions (compiled kernels) against the pure-PyTorch reference.

``samplewt_ops.<fn>`` must agree with ``samplewt_ops.reference.<fn>`` in value
and in the gradient with respect to ``input``.  The expected values come from
the reference evaluated in float64 on exactly the same values (the inputs and
every tensor argument are upcast losslessly), then cast to the tested dtype:
that is the exact answer rounded once, so the tolerances below measure the
kernels' own error:

* float64: rtol 1e-7 (torch.testing's float64 default),
* float32: rtol 1e-5, atol 1e-5 (float32 accumulation over a row of C logits),
* bfloat16: rtol 1.6e-2 (two roundings of 2**-8),
* float16: rtol 2e-3 (two roundings of 2**-10: the kernel may round the saved
  gradient to the input dtype before backward scales it by grad_output).

Gradients are only checked with respect to ``input``: the compiled ops
differentiate the loss with respect to the logits/predictions only, so no
test asks for gradients of weight, pos_weight, alpha or sample_weight (the
reference, being plain autograd, has them; see test_reference.py).
"""

import os
import shutil

import pytest
import torch

import samplewt_ops as swo
from samplewt_ops import reference as ref

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
}
SEED = 20240607
pytestmark = pytest.mark.usefixtures("seeded")


# ---------------------------------------------------------------------------
# helpers


def to64(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().double()
    return v


def assert_close(actual, expected, dtype, **override):
    tol = dict(TOL[dtype])
    tol.update(override)
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


def forward_backward(fn, x, args, kwargs, grad_out=None):
    xg = x.detach().clone().requires_grad_(True)
    out = fn(xg, *args, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=out.dtype) if out.dim() else torch.ones_like(out)
    (g,) = torch.autograd.grad(out, xg, grad_out)
    return out.detach(), g, grad_out


def check_op(name, x, *args, tol=None, **kwargs):
    """Compare samplewt_ops.<name> with reference.<name> (in float64), forward and d/dinput."""
    dtype = x.dtype
    out, g, go = forward_backward(getattr(swo, name), x, args, kwargs)
    exp, ge, _ = forward_backward(getattr(ref, name), to64(x),
                                  tuple(to64(a) for a in args),
                                  {k: to64(v) for k, v in kwargs.items()},
                                  grad_out=to64(go))
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert out.shape == exp.shape
    assert g.dtype == dtype and g.shape == x.shape
    tol = tol or {}
    assert_close(out, exp.to(dtype), dtype, **tol)
    assert_close(g, ge.to(dtype), dtype, **tol)
    return out, g


def index_target(shape, C, ignore_index=-100, frac=0.2):
    t = torch.randint(0, C, shape)
    if ignore_index is not None and t.numel() > 1:
        mask = torch.rand(shape) < frac
        mask.view(-1)[0] = False
        t[mask] = ignore_index
    return t


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def index_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def sample_weight(shape, dtype, kind):
    if kind is None:
        return None
    n = 1 if len(shape) == 1 else shape[0]
    w = torch.rand(n) * 2
    if n > 2:
        w[1] = 0.0  # a sample that does not count
    return w.to(dtype)


# (N,C) with C = 5, 1, 2, 37 (not a multiple of 16), (N,C,d1,d2), unbatched (C,)
SOFTMAX_SHAPES = [(8, 5), (6, 1), (6, 2), (5, 37), (3, 5, 4, 2), (9,)]


# ---------------------------------------------------------------------------
# cross_entropy


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("variant", ["plain", "ignore1", "ignore1+smooth"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_cross_entropy_index(shape, dtype, use_weight, variant, reduction, sw):
    C = shape[class_dim(shape)]
    ignore_index = 1 if "ignore1" in variant else -100
    ls = 0.2 if "smooth" in variant else 0.0
    x = (torch.randn(shape) * 3).to(dtype)
    t = index_target(index_shape(shape), C, ignore_index) if len(shape) > 1 else torch.tensor(C - 1)
    w = (torch.rand(C) + 0.2).to(dtype) if use_weight else None
    check_op("cross_entropy", x, t, w, sample_weight=sample_weight(shape, dtype, sw),
             ignore_index=ignore_index, reduction=reduction, label_smoothing=ls)


@pytest.mark.parametrize("shape", [(8, 5), (6, 2), (5, 37), (3, 5, 4, 2), (9,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_weight,ls", [(False, 0.0), (False, 0.2), (True, 0.2)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_cross_entropy_prob(shape, dtype, use_weight, ls, reduction, sw):
    cd = class_dim(shape)
    C = shape[cd]
    x = (torch.randn(shape) * 3).to(dtype)
    q = torch.softmax(torch.randn(shape) * 2, dim=cd).to(dtype)
    w = (torch.rand(C) + 0.2).to(dtype) if use_weight else None
    check_op("cross_entropy", x, q, w, sample_weight=sample_weight(shape, dtype, sw),
             reduction=reduction, label_smoothing=ls)


def test_cross_entropy_all_ignored_and_unbatched_ignored():
    x = torch.randn(5, 4)
    t = torch.full((5,), -100)
    for R in REDUCTIONS:
        check_op("cross_entropy", x, t, reduction=R)
        check_op("cross_entropy", x, t, sample_weight=torch.rand(5), reduction=R, label_smoothing=0.1)
    check_op("cross_entropy", torch.randn(6), torch.tensor(-100), reduction="none")
    assert torch.isnan(swo.cross_entropy(x, t))


def test_cross_entropy_target_equal_to_custom_ignore_index_out_of_range():
    x = torch.randn(6, 4)
    t = torch.tensor([0, 9, 3, 9, 1, 2])
    check_op("cross_entropy", x, t, ignore_index=9, label_smoothing=0.1)
    check_op("focal_loss", x, t, ignore_index=9)


# ---------------------------------------------------------------------------
# focal_loss


FOCAL_PARAMS = [(0.0, None), (0.5, 0.25), (1.0, "tensor"), (2.0, "tensor"), (3.5, 0.75)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma,alpha", FOCAL_PARAMS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_focal(shape, dtype, gamma, alpha, reduction, sw):
    C = shape[class_dim(shape)]
    x = (torch.randn(shape) * 3).to(dtype)
    t = index_target(index_shape(shape), C) if len(shape) > 1 else torch.tensor(0)
    a = (torch.rand(C)).to(dtype) if alpha == "tensor" else alpha
    check_op("focal_loss", x, t, gamma=gamma, alpha=a, sample_weight=sample_weight(shape, dtype, sw),
             reduction=reduction)


@pytest.mark.parametrize("ignore_index", [0, 3, -1])
def test_focal_custom_ignore_index(ignore_index):
    x = torch.randn(10, 4, dtype=torch.float64)
    t = index_target((10,), 4, ignore_index, frac=0.4)
    for R in REDUCTIONS:
        check_op("focal_loss", x, t, gamma=2.0, ignore_index=ignore_index, reduction=R,
                 sample_weight=torch.rand(10, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_focal_gamma0_equals_cross_entropy(dtype):
    x = torch.randn(4, 6, 3).to(dtype)
    t = index_target((4, 3), 6)
    sw = torch.rand(4).to(dtype)
    for R in REDUCTIONS:
        a, ga, go = forward_backward(swo.focal_loss, x, (t,), dict(gamma=0.0, sample_weight=sw, reduction=R))
        b, gb, _ = forward_backward(swo.cross_entropy, x, (t,), dict(sample_weight=sw, reduction=R), grad_out=go)
        assert_close(a, b, dtype)
        assert_close(ga, gb, dtype)


# ---------------------------------------------------------------------------
# element-wise losses


ELEM_SHAPES = [(8, 5), (3, 4, 5), (7,), ()]


def mixed_targets(shape, dtype):
    """Hard 0/1 targets in some places, soft ones elsewhere."""
    hard = (torch.rand(shape) < 0.4).float()
    soft = torch.rand(shape)
    return torch.where(torch.rand(shape) < 0.5, hard, soft).to(dtype)


def elem_sample_weight(shape, dtype, kind):
    if kind is None:
        return None
    n = shape[0] if len(shape) else 1
    w = torch.rand(n) * 2
    if n > 2:
        w[0] = 0.0
    w = w.to(dtype)
    return w if len(shape) else w.reshape(())


@pytest.mark.parametrize("shape", ELEM_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.75, 0.5)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_sigmoid_focal(shape, dtype, alpha, gamma, reduction, sw):
    x = (torch.randn(shape) * 3).to(dtype)
    t = mixed_targets(shape, dtype)
    check_op("sigmoid_focal_loss", x, t, alpha=alpha, gamma=gamma,
             sample_weight=elem_sample_weight(shape, dtype, sw), reduction=reduction)


def test_sigmoid_focal_default_reduction_is_none():
    x = torch.randn(5, 3)
    t = mixed_targets((5, 3), torch.float32)
    out = swo.sigmoid_focal_loss(x, t)
    assert out.shape == (5, 3)
    assert_close(out, ref.sigmoid_focal_loss(x.double(), t.double()).float(), torch.float32)


@pytest.mark.parametrize("weight,pos_weight", [(None, None), ("full", None), ("row", "row"), ("col", "full"),
                                               (None, "row")], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_bce_with_logits(weight, pos_weight, dtype, reduction, sw):
    N, C = 6, 4
    x = (torch.randn(N, C) * 3).to(dtype)
    t = mixed_targets((N, C), dtype)
    shapes = {"full": (N, C), "row": (C,), "col": (N, 1)}
    w = None if weight is None else (torch.rand(shapes[weight]) + 0.1).to(dtype)
    pw = None if pos_weight is None else (torch.rand(shapes[pos_weight]) * 3).to(dtype)
    check_op("binary_cross_entropy_with_logits", x, t, w, pos_weight=pw,
             sample_weight=elem_sample_weight((N, C), dtype, sw), reduction=reduction)


@pytest.mark.parametrize("shape", [(3, 2, 4), (7,), ()], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_other_shapes(shape, reduction):
    x = torch.randn(shape, dtype=torch.float64)
    t = mixed_targets(shape, torch.float64)
    pw = (torch.rand(shape[-1:]) + 0.5).double() if len(shape) else None
    check_op("binary_cross_entropy_with_logits", x, t, pos_weight=pw, reduction=reduction,
             sample_weight=elem_sample_weight(shape, torch.float64, "rand"))


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 5), ()], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sw", [None, "rand"], ids=["noSW", "SW"])
def test_regression(name, shape, dtype, use_weight, reduction, sw):
    x = (torch.randn(shape) * 2).to(dtype)
    t = torch.randn(shape).to(dtype)
    w = (torch.rand(shape) + 0.1).to(dtype) if use_weight else None
    check_op(name, x, t, weight=w, sample_weight=elem_sample_weight(shape, dtype, sw), reduction=reduction)


# Many samples whose length is a multiple of 16 (the kernel's flat span with
# sample weights, vector by vector) or not (sample by sample), over several
# blocks of 32768 elements whose boundaries fall inside samples.
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss", "binary_cross_entropy_with_logits",
                                  "sigmoid_focal_loss"])
@pytest.mark.parametrize("shape", [(5000, 16), (2100, 80), (1500, 40)], ids=str)
@pytest.mark.parametrize("use_weight", [False, True], ids=["noW", "W"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elementwise_many_samples_with_sample_weights(name, shape, use_weight, reduction):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    t = mixed_targets(shape, torch.float32) if name in ("binary_cross_entropy_with_logits",
                                                         "sigmoid_focal_loss") else torch.randn(shape)
    sw = elem_sample_weight(shape, torch.float32, "rand")
    kw = dict(sample_weight=sw, reduction=reduction)
    if use_weight and name != "sigmoid_focal_loss":
        kw["weight"] = torch.rand(shape) + 0.1
    check_op(name, x, t, **kw)
    # The same bits whatever the number of threads.
    got = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            xg = x.clone().requires_grad_()
            out = getattr(swo, name)(xg, t, **kw)
            (g,) = torch.autograd.grad(out.sum(), xg)
            got.append((out, g))
        finally:
            torch.set_num_threads(old)
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@pytest.mark.parametrize("delta", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_huber_delta(delta, dtype):
    x = (torch.randn(10, 6) * 3).to(dtype)
    t = torch.randn(10, 6).to(dtype)
    for R in REDUCTIONS:
        check_op("huber_loss", x, t, delta=delta, weight=torch.rand(10, 6).to(dtype),
                 sample_weight=torch.rand(10).to(dtype), reduction=R)


# ---------------------------------------------------------------------------
# layouts, sizes and values


def _noncontig_cases(dtype):
    base = torch.randn(9, 6).to(dtype)
    wide = torch.randn(6, 13).to(dtype)
    rows = torch.randn(12, 9).to(dtype)
    nchw = torch.randn(3, 4, 5, 2).to(dtype).contiguous(memory_format=torch.channels_last)
    return {
        "transposed": base.t(),        # (6, 9), column-major
        "sliced_rows": wide[:, :9],    # x[:, :C] of a wider tensor
        "strided_rows": rows[::2],     # every other row
        "channels_last": nchw,         # (N, C, d1, d2) with C innermost
    }


@pytest.mark.parametrize("case", ["transposed", "sliced_rows", "strided_rows", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_inputs(case, dtype):
    x = _noncontig_cases(dtype)[case]
    assert not x.is_contiguous()
    N, C = x.shape[0], x.shape[1]
    t = index_target(index_shape(tuple(x.shape)), C)
    t_nc = torch.stack([t, t], -1)[..., 0]  # same values, non-contiguous
    sw = torch.rand(2 * N)[::2].to(dtype)
    w = torch.rand(2 * C)[::2].to(dtype) + 0.1
    q = torch.softmax(torch.randn(x.shape), 1).to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
    for R in REDUCTIONS:
        out, g = check_op("cross_entropy", x, t_nc, w, sample_weight=sw, reduction=R, label_smoothing=0.1)
        out_c, g_c = check_op("cross_entropy", x.contiguous(), t, w.contiguous(),
                              sample_weight=sw.contiguous(), reduction=R, label_smoothing=0.1)
        if R != "none":
            assert_close(out, out_c, dtype)
        check_op("cross_entropy", x, q, sample_weight=sw, reduction=R)
        check_op("focal_loss", x, t_nc, gamma=2.0, alpha=w, sample_weight=sw, reduction=R)
        tt = mixed_targets(x.shape, dtype).transpose(0, 1).contiguous().transpose(0, 1)
        check_op("binary_cross_entropy_with_logits", x, tt, sample_weight=sw, reduction=R)
        check_op("sigmoid_focal_loss", x, tt, sample_weight=sw, reduction=R)
        for name in ("mse_loss", "l1_loss", "huber_loss"):
            check_op(name, x, tt, weight=torch.rand(x.shape).to(dtype).t().contiguous().t()
                     if x.dim() == 2 else None, sample_weight=sw, reduction=R)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_class_count(dtype):
    """C = 70000 (an LM vocabulary): the row does not fit one vector block."""
    N, C = 4, 70000
    x = (torch.randn(N, C) * 4).to(dtype)
    t = torch.tensor([0, C - 1, 12345, -100])
    w = (torch.rand(C) + 0.5).to(dtype)
    sw = torch.tensor([1.0, 0.5, 2.0, 1.0]).to(dtype)
    q = torch.softmax(torch.randn(N, C), 1).to(dtype)
    calls = [("cross_entropy", (t, w), dict(sample_weight=sw, reduction=R, label_smoothing=0.1))
             for R in ("none", "sum")]
    calls += [("focal_loss", (t,), dict(gamma=2.0, sample_weight=sw, reduction=R)) for R in ("none", "sum")]
    calls.append(("cross_entropy", (q,), dict(sample_weight=sw, reduction="mean")))
    for name, args, kwargs in calls:
        if dtype == torch.bfloat16:
            check_op(name, x, *args, tol=dict(atol=1e-7), **kwargs)
            continue
        # Per-class gradients are ~1/C here, far below float32's atol; compared
        # relatively, float32 arithmetic itself errs by ~1e-5 (torch's
        # F.cross_entropy does, on this machine or another). So each gradient
        # element's relative error must be no worse than that of the same
        # formula in torch ops at float32 (the reference), or 1e-5.
        check_op(name, x, *args, **kwargs)
        go = torch.randn(N) if kwargs["reduction"] == "none" else torch.tensor(1.0)
        g = forward_backward(getattr(swo, name), x, args, kwargs, go)[1]
        g32 = forward_backward(getattr(ref, name), x, args, kwargs, go)[1]
        g64 = forward_backward(getattr(ref, name), to64(x), tuple(to64(a) for a in args),
                               {k: to64(v) for k, v in kwargs.items()}, to64(go))[1]

        def rel_error(v):
            return ((v.double() - g64).abs() / (g64.abs() + 1e-9)).max().item()

        assert rel_error(g) <= max(1.5 * rel_error(g32), 1e-5), (name, kwargs, rel_error(g), rel_error(g32))


def _extreme(shape, dtype):
    x = torch.randn(shape)
    big = torch.rand(shape)
    x = torch.where(big < 0.3, torch.full(shape, 1e4), torch.where(big > 0.7, torch.full(shape, -1e4), x))
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_extreme_logits(dtype):
    """Logits of +-1e4: finite losses and gradients that match the reference.

    A row such as (1e4, 1e4, 0.3, ...) has lse = 1e4 + log 2, which the
    accumulation dtype can only hold to about one ulp of 1e4 (1e-3 in
    float32); log-probabilities, and so the probabilities' relative values,
    inherit that absolute error.  The tolerance adds 4 such ulps.
    """
    x = _extreme((10, 6), dtype)
    x[0] = torch.tensor([1e4, -1e4, -1e4, 0, 0, 0]).to(dtype)  # p_y == 1 exactly
    t = index_target((10,), 6)
    t[0] = 0
    q = torch.softmax(torch.randn(10, 6), 1).to(dtype)
    tt = mixed_targets((10, 6), dtype)
    acc_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    extra = 4 * acc_eps * 1e4
    tol = dict(rtol=TOL[dtype]["rtol"] + extra, atol=TOL[dtype]["atol"] + extra)
    for R in ("none", "mean"):
        out, g = check_op("cross_entropy", x, t, reduction=R, label_smoothing=0.1, tol=tol)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
        check_op("cross_entropy", x, q, reduction=R, tol=tol)
        for gamma in (0.5, 2.0):
            out, g = check_op("focal_loss", x, t, gamma=gamma, reduction=R, tol=tol)
            assert torch.isfinite(out).all() and torch.isfinite(g).all()
            out, g = check_op("sigmoid_focal_loss", x, tt, gamma=gamma, reduction=R, tol=tol)
            assert torch.isfinite(out).all() and torch.isfinite(g).all()
        out, g = check_op("binary_cross_entropy_with_logits", x, tt, reduction=R,
                          pos_weight=torch.full((6,), 2.0).to(dtype), tol=tol)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()


def test_nan_logits_propagate():
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    t = torch.tensor([0, 1, 2, 3, 0])
    tt = torch.rand(5, 4)
    for name, args in [("cross_entropy", (t,)), ("focal_loss", (t,)),
                       ("binary_cross_entropy_with_logits", (tt,)), ("sigmoid_focal_loss", (tt,)),
                       ("mse_loss", (tt,)), ("l1_loss", (tt,)), ("huber_loss", (tt,))]:
        fn = getattr(swo, name)
        per = fn(x, *args, reduction="none")
        exp = getattr(ref, name)(x, *args, reduction="none")
        torch.testing.assert_close(per, exp, equal_nan=True, rtol=1e-5, atol=1e-5)
        assert torch.isnan(per[2]).any(), name
        assert torch.isnan(fn(x, *args, reduction="mean", sample_weight=torch.rand(5))), name


@pytest.mark.parametrize("R", REDUCTIONS)
def test_empty_batch(R):
    for name, x, t in [("cross_entropy", torch.randn(0, 5), torch.zeros(0, dtype=torch.long)),
                       ("cross_entropy", torch.randn(0, 5, 3), torch.rand(0, 5, 3)),
                       ("focal_loss", torch.randn(0, 5), torch.zeros(0, dtype=torch.long)),
                       ("sigmoid_focal_loss", torch.randn(0, 5), torch.rand(0, 5)),
                       ("binary_cross_entropy_with_logits", torch.randn(0, 5), torch.rand(0, 5)),
                       ("mse_loss", torch.randn(0, 5), torch.rand(0, 5))]:
        for sw in (None, torch.ones(0)):
            out, g = check_op(name, x, t, reduction=R, sample_weight=sw)
            assert g.shape == x.shape


# ---------------------------------------------------------------------------
# autograd behaviour


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss",
                                  "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "huber_loss"])
def test_no_grad_and_inference_match(name):
    x = torch.randn(6, 5)
    t = torch.randint(0, 5, (6,)) if name in ("cross_entropy", "focal_loss") else torch.rand(6, 5)
    fn = getattr(swo, name)
    kw = dict(sample_weight=torch.rand(6), reduction="none")
    with_grad = fn(x.clone().requires_grad_(), t, **kw)
    plain = fn(x, t, **kw)
    with torch.no_grad():
        ng = fn(x.clone().requires_grad_(), t, **kw)
    with torch.inference_mode():
        inf = fn(x, t, **kw)
    assert plain.grad_fn is None and ng.grad_fn is None and with_grad.grad_fn is not None
    for other in (plain, ng, inf):
        assert_close(other, with_grad.detach(), torch.float32, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss",
                                  "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "huber_loss"])
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_backward_twice_and_grad_accumulation(name, scale):
    """Ordinary autograd semantics: backward twice with retain_graph accumulates
    the same gradient into a leaf's .grad (the saved gradient is not consumed)."""
    x = torch.randn(6, 5, requires_grad=True)
    t = torch.randint(0, 5, (6,)) if name in ("cross_entropy", "focal_loss") else torch.rand(6, 5)
    sw = torch.rand(6)
    out = getattr(swo, name)(x, t, sample_weight=sw, reduction="sum")
    out.backward(torch.tensor(scale), retain_graph=True)
    g1 = x.grad.clone()
    out.backward(torch.tensor(scale))
    assert_close(x.grad, 2 * g1, torch.float32)
    xr = x.detach().double().requires_grad_()
    getattr(ref, name)(xr, to64(t), sample_weight=sw.double(), reduction="sum").backward(torch.tensor(scale))
    assert_close(g1, xr.grad.float(), torch.float32)


def test_loss_in_larger_graph():
    """Input produced by an upstream op, loss combined with another term."""
    lin = torch.nn.Linear(7, 5).double()
    inp = torch.randn(8, 7, dtype=torch.float64)
    t = torch.randint(0, 5, (8,))
    sw = torch.rand(8, dtype=torch.float64)

    def total(fn):
        lin.zero_grad()
        logits = lin(inp)
        loss = fn(logits, t, sample_weight=sw) + 0.1 * logits.square().mean()
        loss.backward()
        return loss.detach(), lin.weight.grad.clone()

    a, ga = total(swo.cross_entropy)
    b, gb = total(ref.cross_entropy)
    assert_close(a, b, torch.float64)
    assert_close(ga, gb, torch.float64)


def _gradcheck_cases():
    d = torch.float64
    t = torch.tensor([0, 3, -100, 1, 2])
    sw = torch.rand(5, dtype=d) + 0.1
    cw = torch.rand(4, dtype=d) + 0.2
    q = torch.softmax(torch.randn(5, 4, dtype=d), 1)
    tt = torch.rand(5, 4, dtype=d)
    v = torch.rand(5, 4, dtype=d) + 0.1
    t_nd = torch.randint(0, 2, (5, 2))
    return {
        "cross_entropy": lambda x, R: swo.cross_entropy(x, t, cw, sample_weight=sw, label_smoothing=0.1, reduction=R),
        "cross_entropy_prob": lambda x, R: swo.cross_entropy(x, q, cw, sample_weight=sw, label_smoothing=0.1,
                                                             reduction=R),
        # (N, C, d) = (5, 2, 2)
        "cross_entropy_nd": lambda x, R: swo.cross_entropy(x.reshape(5, 2, 2), t_nd, sample_weight=sw,
                                                           label_smoothing=0.1, reduction=R),
        "focal_loss_nd": lambda x, R: swo.focal_loss(x.reshape(5, 2, 2), t_nd, sample_weight=sw, reduction=R),
        "cross_entropy_unbatched": lambda x, R: swo.cross_entropy(x.reshape(-1), torch.tensor(7),
                                                                  sample_weight=sw[:1], reduction=R),
        "focal_loss": lambda x, R: swo.focal_loss(x, t, gamma=1.5, alpha=cw, sample_weight=sw, reduction=R),
        "sigmoid_focal_loss": lambda x, R: swo.sigmoid_focal_loss(x, tt, sample_weight=sw, reduction=R),
        "binary_cross_entropy_with_logits": lambda x, R: swo.binary_cross_entropy_with_logits(
            x, tt, v, pos_weight=cw, sample_weight=sw, reduction=R),
        "mse_loss": lambda x, R: swo.mse_loss(x, tt, weight=v, sample_weight=sw, reduction=R),
        "l1_loss": lambda x, R: swo.l1_loss(x, tt, weight=v, sample_weight=sw, reduction=R),
        "huber_loss": lambda x, R: swo.huber_loss(x, tt, delta=0.7, weight=v, sample_weight=sw, reduction=R),
    }


@pytest.mark.parametrize("name", list(_gradcheck_cases()))
@pytest.mark.parametrize("R", ["none", "mean"])
def test_gradcheck_float64(name, R):
    fn = _gradcheck_cases()[name]
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: fn(z, R), (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------
# torch.compile


def _compile_available():
    try:
        import torch._dynamo  # noqa: F401
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"torch.compile unavailable: {exc}")
    if hasattr(torch._dynamo, "is_dynamo_supported") and not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")


def _compile_cases():
    x = torch.randn(6, 5)
    t = torch.tensor([0, 4, -100, 2, 1, 3])
    sw = torch.rand(6)
    cw = torch.rand(5) + 0.2
    tt = torch.rand(6, 5)
    q = torch.softmax(torch.randn(6, 5), 1)
    return x, {
        "cross_entropy": (lambda x, sw: swo.cross_entropy(x, t, cw, sample_weight=sw, label_smoothing=0.1), sw),
        "cross_entropy_prob": (lambda x, sw: swo.cross_entropy(x, q, sample_weight=sw), sw),
        "focal_loss": (lambda x, sw: swo.focal_loss(x, t, gamma=2.0, alpha=cw, sample_weight=sw), sw),
        "sigmoid_focal_loss": (lambda x, sw: swo.sigmoid_focal_loss(x, tt, sample_weight=sw, reduction="mean"), sw),
        "binary_cross_entropy_with_logits": (lambda x, sw: swo.binary_cross_entropy_with_logits(
            x, tt, pos_weight=cw, sample_weight=sw), sw),
        "mse_loss": (lambda x, sw: swo.mse_loss(x, tt, sample_weight=sw, reduction="none"), sw),
        "l1_loss": (lambda x, sw: swo.l1_loss(x, tt, weight=tt, sample_weight=sw), sw),
        "huber_loss": (lambda x, sw: swo.huber_loss(x, tt, delta=0.5, sample_weight=sw, reduction="sum"), sw),
    }


def _compare_compiled(fn, compiled, x, sw):
    eo, eg, go = forward_backward(fn, x, (sw,), {})
    co, cg, _ = forward_backward(compiled, x, (sw,), {}, grad_out=go)
    assert_close(co, eo, torch.float32)
    assert_close(cg, eg, torch.float32)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("name", list(_compile_cases()[1]))
def test_compile_fullgraph_matches_eager(name, backend):
    """fullgraph=True fails on any graph break; aot_eager also traces the fake
    kernels and the registered autograd formula."""
    _compile_available()
    torch._dynamo.reset()
    x, cases = _compile_cases()
    fn, sw = cases[name]
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    _compare_compiled(fn, compiled, x, sw)
    _compare_compiled(fn, compiled, x, None if name != "mse_loss" else sw)


def test_compile_dynamic_batch_aot_eager():
    _compile_available()
    torch._dynamo.reset()
    fn = lambda x, t, sw: swo.cross_entropy(x, t, sample_weight=sw)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (3, 7, 12):
        x = torch.randn(n, 5)
        t = torch.randint(0, 5, (n,))
        sw = torch.rand(n)
        eo, eg, _ = forward_backward(lambda z: fn(z, t, sw), x, (), {})
        co, cg, _ = forward_backward(lambda z: compiled(z, t, sw), x, (), {})
        assert_close(co, eo, torch.float32)
        assert_close(cg, eg, torch.float32)


def test_compile_inductor_one_case():
    _compile_available()
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None and shutil.which("c++") is None:
        pytest.skip("the inductor CPU backend needs a C++ compiler")
    torch._dynamo.reset()
    x, cases = _compile_cases()
    fn, sw = cases["cross_entropy"]
    compiled = torch.compile(fn, fullgraph=True)
    _compare_compiled(fn, compiled, x, sw)


# ---------------------------------------------------------------------------
# modules and backend()


def _module_cases():
    N, C = 6, 5
    x = torch.randn(N, C)
    t = torch.tensor([0, 4, -100, 2, 1, 3])
    cw = torch.rand(C) + 0.2
    tt = torch.rand(N, C)
    return x, [
        (swo.CrossEntropyLoss(weight=cw, ignore_index=-100, reduction="sum", label_smoothing=0.1),
         lambda x, sw: swo.cross_entropy(x, t, cw, ignore_index=-100, reduction="sum", label_smoothing=0.1,
                                         sample_weight=sw), t),
        (swo.CrossEntropyLoss(), lambda x, sw: swo.cross_entropy(x, t, sample_weight=sw), t),
        (swo.FocalLoss(gamma=1.5, alpha=cw, reduction="none"),
         lambda x, sw: swo.focal_loss(x, t, gamma=1.5, alpha=cw, reduction="none", sample_weight=sw), t),
        (swo.SigmoidFocalLoss(alpha=0.3, gamma=1.0, reduction="mean"),
         lambda x, sw: swo.sigmoid_focal_loss(x, tt, alpha=0.3, gamma=1.0, reduction="mean", sample_weight=sw), tt),
        (swo.SigmoidFocalLoss(), lambda x, sw: swo.sigmoid_focal_loss(x, tt, sample_weight=sw), tt),
        (swo.BCEWithLogitsLoss(weight=tt, pos_weight=cw),
         lambda x, sw: swo.binary_cross_entropy_with_logits(x, tt, tt, pos_weight=cw, sample_weight=sw), tt),
        (swo.MSELoss(weight=tt, reduction="mean"),
         lambda x, sw: swo.mse_loss(x, tt, weight=tt, sample_weight=sw), tt),
        (swo.L1Loss(reduction="sum"), lambda x, sw: swo.l1_loss(x, tt, reduction="sum", sample_weight=sw), tt),
        (swo.HuberLoss(delta=0.4), lambda x, sw: swo.huber_loss(x, tt, delta=0.4, sample_weight=sw), tt),
    ]


@pytest.mark.parametrize("i", range(9))
def test_modules_match_functionals(i):
    x, cases = _module_cases()
    module, fn, target = cases[i]
    assert isinstance(module, torch.nn.Module)
    for sw in (None, torch.rand(x.shape[0])):
        mo, mg, go = forward_backward(lambda z: module(z, target, sw), x, (), {})
        fo, fg, _ = forward_backward(lambda z: fn(z, sw), x, (), {}, grad_out=go)
        assert_close(mo, fo, torch.float32, rtol=0, atol=0)
        assert_close(mg, fg, torch.float32, rtol=0, atol=0)
    # sample_weight is also accepted as a keyword
    assert_close(module(x, target, sample_weight=torch.ones(x.shape[0])), fn(x, None), torch.float32)


def test_functional_namespace_is_the_same():
    import samplewt_ops.functional as fnl
    for name in ("cross_entropy", "focal_loss", "sigmoid_focal_loss", "binary_cross_entropy_with_logits",
                 "mse_loss", "l1_loss", "huber_loss"):
        assert getattr(swo, name) is getattr(fnl, name)


def test_compiled_backend_in_use():
    """Guards against every comparison above silently running the reference."""
    info = swo.backend()
    assert isinstance(info, dict) and isinstance(info["devices"], list)
    if os.environ.get("SAMPLEWT_FORCE_REFERENCE") == "1":
        assert info["implementation"] == "reference"
    else:
        assert info["implementation"] == "compiled", info
        assert "cpu" in info["devices"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sample_weight_dtype_may_differ_from_input(dtype):
    x = (torch.randn(8, 5) * 2).to(dtype)
    t = index_target((8,), 5)
    sw32 = torch.rand(8)
    check_op("cross_entropy", x, t, sample_weight=sw32)
    check_op("mse_loss", x, torch.randn(8, 5).to(dtype), sample_weight=sw32, reduction="none")


@pytest.mark.parametrize("shape", [(5000, 10), (3, 7), (40000,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "binary_cross_entropy_with_logits",
                                  "mse_loss", "l1_loss", "huber_loss"])
def test_elementwise_flat_spans(name, shape):
    """Short samples without sample weights run as flat spans split across
    tasks (not at sample boundaries): every reduction, with full weights."""
    x = torch.randn(shape) * 2
    t = torch.rand(shape)
    full = torch.rand(shape) + 0.5
    kwargs = {"binary_cross_entropy_with_logits": dict(weight=full, pos_weight=full * 2),
              "sigmoid_focal_loss": dict(gamma=1.5, alpha=0.3),
              "huber_loss": dict(delta=0.5)}.get(name, dict(weight=full))
    for R in ("none", "mean", "sum"):
        check_op(name, x, t, reduction=R, **kwargs)


def test_sigmoid_far_tail_within_two_ulp_and_zero_past_flt_min():
    # exp(-|x|) of the CPU kernels (csrc/cpu/loss_kernels_impl.h, exp_nonpos)
    # out to ln FLT_MIN: BCE's loss log1p(exp(-x)) and gradient -exp(-x) / (1 +
    # exp(-x)) at t = 1 against float64 (torch's own float64 gradient
    # cancels to 0 there). Past it both are 0, not denormal.
    x = torch.linspace(20, 87.3, 400001)
    xr = x.clone().requires_grad_()
    ours = swo.binary_cross_entropy_with_logits(xr, torch.ones_like(x), reduction="none")
    (g,) = torch.autograd.grad(ours.sum(), xr)
    e = torch.exp(-x.double())
    ulp = 2.0 ** -23
    assert ((ours.detach().double() - torch.log1p(e)).abs() / torch.log1p(e)).max() <= 2 * ulp
    q = e / (1 + e)
    assert ((g.double() + q).abs() / q).max() <= 2 * ulp
    far = torch.tensor([87.4, 100.0, 1e4, 3e38]).requires_grad_()
    loss = swo.binary_cross_entropy_with_logits(far, torch.ones(4), reduction="none")
    (g_far,) = torch.autograd.grad(loss.sum(), far)
    assert torch.equal(loss.detach(), torch.zeros(4)) and torch.equal(g_far, torch.zeros(4))


@pytest.mark.parametrize("t_value", [0.0, 1.0, 0.3])
def test_softplus_terms_stay_within_a_few_ulp_of_torch(t_value):
    # The CPU kernels' log1p(exp(-|x|)) is a short series (csrc/cpu/
    # loss_kernels_impl.h, log1p_unit), not Sleef's log1p: BCE with logits
    # against torch's float32 and float64 over a wide range of logits.
    x = torch.cat([torch.linspace(-30, 30, 200001), torch.logspace(-8, 1.5, 20000),
                   -torch.logspace(-8, 1.5, 20000)]).float()
    t = torch.full_like(x, t_value)
    xr = x.clone().requires_grad_()
    ours = swo.binary_cross_entropy_with_logits(xr, t, reduction="none")
    (g,) = torch.autograd.grad(ours.sum(), xr)
    x64 = x.double().requires_grad_()
    want = torch.nn.functional.binary_cross_entropy_with_logits(x64, t.double(), reduction="none")
    (g64,) = torch.autograd.grad(want.sum(), x64)
    ref32 = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    # Where torch's float32 is itself within 2 ulp of float64 (no cancellation
    # in the formula), ours is within 5.
    ulp = 2.0 ** -23
    good = (ref32.double() - want.detach()).abs() <= 2 * ulp * want.detach().abs()
    assert good.float().mean() > 0.5
    err = ((ours.detach().double() - want.detach()).abs() / want.detach().abs())[good]
    assert err.max() <= 5 * ulp, err.max()
    torch.testing.assert_close(ours.detach(), ref32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g64, rtol=1e-6, atol=1e-7)
