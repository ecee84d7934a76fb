"""The public functions (compiled kernels) against the pure-PyTorch reference,
loss by loss, and at the edges of layouts, sizes and values.

``samplewt_ops.<fn>`` must agree with ``samplewt_ops.reference.<fn>`` in value
and in the gradient with respect to ``input``, within the tolerances of
functional_checks.py (the reference in float64, rounded once).

Gradients are only checked with respect to ``input``: the compiled ops
differentiate the loss with respect to the logits/predictions only, so no
test asks for gradients of weight, pos_weight, alpha or sample_weight (the
reference, being plain autograd, has them; see test_reference.py).
"""

import pytest
import torch

import samplewt_ops as swo
from samplewt_ops import reference as ref
from functional_checks import (DTYPES, REDUCTIONS, SOFTMAX_SHAPES, TOL, assert_close, check_op, class_dim,
                               forward_backward, index_shape, index_target, sample_weight, to64)

pytestmark = pytest.mark.usefixtures("seeded")


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
