"""z-loss and softcap of the materialised softmax losses (cross_entropy,
focal_loss), against formulas written here with plain torch ops, not with
samplewt_ops's reference: softcap * tanh(x / softcap) first, then
z_loss * w_y * lse**2 per row, weighted and reduced like the loss's own term."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import samplewt_ops
from samplewt_ops import reference

from samples import tol

compiled = pytest.mark.skipif(not samplewt_ops._loader.COMPILED, reason="extension not built")


def _capped(x, softcap):
    x = x.double()
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def torch_cross_entropy(x, y, weight, sw, eps, z_loss, softcap, reduction, ignore_index=-100):
    xc = _capped(x, softcap)
    cw = None if weight is None else weight.double()
    per = F.cross_entropy(xc, y, weight=cw, ignore_index=ignore_index, label_smoothing=eps,
                          reduction="none")
    valid = (y != ignore_index).double()
    cw_y = cw[y.clamp(0)] if cw is not None else torch.ones_like(valid)
    per = per + z_loss * cw_y * torch.logsumexp(xc, 1).square() * valid
    w = sw.double() if sw is not None else torch.ones_like(valid)
    if reduction == "none":
        return per * w
    if reduction == "sum":
        return (per * w).sum()
    return (per * w).sum() / (w * cw_y * valid).sum()


def torch_focal_loss(x, y, alpha, sw, gamma, z_loss, softcap, reduction, ignore_index=-100):
    xc = _capped(x, softcap)
    valid = y != ignore_index
    yy = y.clamp(0)
    logp = torch.log_softmax(xc, 1).gather(1, yy[:, None])[:, 0]
    a = alpha.double()[yy] if alpha is not None else torch.ones_like(logp)
    per = a * (-((1 - logp.exp()) ** gamma) * logp + z_loss * torch.logsumexp(xc, 1).square())
    per = per * valid.double()
    w = sw.double() if sw is not None else torch.ones_like(per)
    if reduction == "none":
        return per * w
    if reduction == "sum":
        return (per * w).sum()
    return (per * w).sum() / (w * valid.double()).sum()


def _case(dtype, n=37, c=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 6).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    y[5] = -100
    cw = (torch.rand(c, generator=g) + 0.2).to(dtype if dtype != torch.bfloat16 else torch.float32)
    sw = torch.rand(n, generator=g).to(dtype)
    return x, y, cw, sw


OPTIONS = [(0.01, None), (0.0, 3.0), (1e-3, 2.0), (0.1, 30.0)]


def _check(got, want, grad_got, grad_want, dtype):
    t = tol(dtype)
    torch.testing.assert_close(got.double(), want, **t)
    torch.testing.assert_close(grad_got.double(), grad_want, **t)


def _against_formula(x, dtype, ours, formula):
    """ours(leaf) and formula(float64 leaf): values and input gradients."""
    a = x.detach().clone().requires_grad_()
    got = ours(a)
    got.sum().backward()
    b = x.detach().double().clone().requires_grad_()
    want = formula(b)
    want.sum().backward()
    _check(got, want, a.grad, b.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss,softcap", OPTIONS)
@pytest.mark.parametrize("inplace_grad", [False, True])
def test_cross_entropy_matches_torch_formula(dtype, reduction, z_loss, softcap, inplace_grad):
    x, y, cw, sw = _case(dtype)
    for weight, w, eps in ((cw, sw, 0.1), (None, None, 0.0)):
        _against_formula(
            x, dtype,
            lambda a: samplewt_ops.cross_entropy(a * 1 if inplace_grad else a, y, weight=weight,
                                                 sample_weight=w, label_smoothing=eps,
                                                 reduction=reduction, z_loss=z_loss, softcap=softcap,
                                                 inplace_grad=inplace_grad),
            lambda b: torch_cross_entropy(b, y, weight, w, eps, z_loss, softcap, reduction))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss,softcap", OPTIONS)
def test_focal_loss_matches_torch_formula(dtype, reduction, z_loss, softcap):
    x, y, cw, sw = _case(dtype, seed=1)
    for alpha, w, gamma in ((cw, sw, 2.0), (None, None, 1.3)):
        _against_formula(
            x, dtype,
            lambda a: samplewt_ops.focal_loss(a, y, alpha=alpha, sample_weight=w, gamma=gamma,
                                              reduction=reduction, z_loss=z_loss, softcap=softcap),
            lambda b: torch_focal_loss(b, y, alpha, w, gamma, z_loss, softcap, reduction))


@pytest.mark.parametrize("fn", ["cross_entropy", "focal_loss"])
def test_reference_matches_torch_formula(fn):
    x, y, cw, sw = _case(torch.float64, seed=2)
    kw = dict(weight=cw, label_smoothing=0.1) if fn == "cross_entropy" else dict(alpha=cw, gamma=2.0)
    got = getattr(reference, fn)(x, y, sample_weight=sw, z_loss=0.02, softcap=4.0, **kw)
    if fn == "cross_entropy":
        want = torch_cross_entropy(x, y, cw, sw, 0.1, 0.02, 4.0, "mean")
    else:
        want = torch_focal_loss(x, y, cw, sw, 2.0, 0.02, 4.0, "mean")
    torch.testing.assert_close(got, want)


def test_probability_targets_take_the_plain_z_term():
    x, _, cw, sw = _case(torch.float64, seed=3)
    q = torch.softmax(torch.randn(x.shape, dtype=torch.float64), 1)
    got = samplewt_ops.cross_entropy(x, q, weight=cw, sample_weight=sw, z_loss=0.05, softcap=5.0,
                                     reduction="none")
    xc = 5.0 * torch.tanh(x / 5.0)
    want = (F.cross_entropy(xc, q, weight=cw.double(), reduction="none")
            + 0.05 * torch.logsumexp(xc, 1).square()) * sw
    torch.testing.assert_close(got, want)


def test_class_dimension_input_and_modules():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 4, 2), generator=g)
    flat_x, flat_y = x.movedim(1, -1).reshape(-1, 5), y.reshape(-1)
    got = samplewt_ops.cross_entropy(x, y, z_loss=0.01, softcap=2.5)
    torch.testing.assert_close(got, torch_cross_entropy(flat_x, flat_y, None, None, 0.0, 0.01, 2.5, "mean"))
    module = samplewt_ops.CrossEntropyLoss(z_loss=0.01, softcap=2.5)
    torch.testing.assert_close(module(x, y), got)
    focal = samplewt_ops.FocalLoss(gamma=2.0, z_loss=0.01, softcap=2.5)
    torch.testing.assert_close(focal(x, y), samplewt_ops.focal_loss(x, y, z_loss=0.01, softcap=2.5))


@pytest.mark.parametrize("fn", ["cross_entropy", "focal_loss"])
def test_gradcheck_float64(fn):
    x, y, cw, sw = _case(torch.float64, n=6, c=5, seed=5)
    x = x.requires_grad_()
    f = getattr(samplewt_ops, fn)
    assert torch.autograd.gradcheck(lambda t: f(t, y, sample_weight=sw, z_loss=0.03, softcap=4.0), (x,))


def test_defaults_are_torch_exactly():
    x, y, cw, sw = _case(torch.float32, seed=6)
    x = x.requires_grad_()
    got = samplewt_ops.cross_entropy(x, y, weight=cw, z_loss=0.0, softcap=None)
    (grad,) = torch.autograd.grad(got, x)
    want = F.cross_entropy(x, y, weight=cw)
    (grad_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, grad_want)


def test_large_logits_stay_finite():
    x = torch.tensor([[1e4, -1e4, 0.0], [3e3, 3e3, -5.0]], requires_grad=True)
    y = torch.tensor([1, 0])
    loss = samplewt_ops.cross_entropy(x, y, z_loss=1e-4, softcap=30.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    want = torch_cross_entropy(x.detach(), y, None, None, 0.0, 1e-4, 30.0, "mean")
    torch.testing.assert_close(loss.double(), want)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(z_loss=-0.1), ValueError, "z_loss"),
    (dict(z_loss=float("nan")), ValueError, "z_loss"),
    (dict(z_loss=float("inf")), ValueError, "z_loss"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("inf")), ValueError, "softcap"),
    (dict(softcap=True), TypeError, "softcap"),
    (dict(z_loss="1"), TypeError, "z_loss"),
])
@pytest.mark.parametrize("fn", ["cross_entropy", "focal_loss"])
def test_bad_values_name_the_argument(fn, kw, exc, match):
    x, y, _, _ = _case(torch.float32)
    with pytest.raises(exc, match=match):
        getattr(samplewt_ops, fn)(x, y, **kw)
    with pytest.raises(exc, match=match):
        getattr(reference, fn)(x, y, **kw)


@compiled
@pytest.mark.parametrize("kw,match", [(dict(z_loss=-1.0), "z_loss"), (dict(softcap=0.0), "softcap"),
                                      (dict(softcap=-2.0), "softcap")])
def test_op_checks_name_the_argument(kw, match):
    x, y, _, _ = _case(torch.float32)
    with pytest.raises(ValueError, match=match):
        torch.ops.samplewt_ops.cross_entropy(x, y, None, None, -100, 0.0, 1, True, False, **kw)
    with pytest.raises(ValueError, match=match):
        torch.ops.samplewt_ops.focal_loss_(x.clone(), y, None, None, 2.0, -100, 1, False, **kw)


@compiled
def test_torch_compile_fullgraph():
    x, y, cw, sw = _case(torch.float32, seed=7)

    def step(t):
        return samplewt_ops.cross_entropy(t, y, weight=cw, sample_weight=sw, z_loss=0.01, softcap=3.0)

    a = x.clone().requires_grad_()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(a)
    got.backward()
    b = x.clone().requires_grad_()
    want = step(b)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a.grad, b.grad)


@compiled
@pytest.mark.parametrize("policy", ["LossEMA", "GradNormEMA", "OHEM", "GHM"])
@pytest.mark.parametrize("fn", ["cross_entropy", "focal_loss"])
def test_table_matches_the_reference_path(monkeypatch, fn, policy):
    """A table's fused call with z-loss and softcap against the pure-PyTorch
    path (reference losses and the table's Python protocol): the statistics
    are those of the capped logits, z term included."""
    from samplewt_ops import functional
    from samplewt_ops._spec import SPECS
    from samplewt_ops.weights import GHM, OHEM, AdaptiveWeights, GradNormEMA, LossEMA

    make = {"LossEMA": lambda: LossEMA(momentum=0.7), "GradNormEMA": lambda: GradNormEMA(momentum=0.6),
            "OHEM": lambda: OHEM(keep_ratio=0.6), "GHM": lambda: GHM(bins=5)}[policy]
    if not make().supports(fn):
        pytest.skip(f"{policy} does not weight {fn}")
    x, y, cw, sw = _case(torch.float32, n=16, c=7, seed=8)
    idx = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(9))
    own = dict(z_loss=0.02, softcap=3.0, **({"weight": cw} if fn == "cross_entropy" else {"alpha": cw}))
    results = []
    for kernel in (True, False):
        table = AdaptiveWeights(40, make())
        out = []
        with monkeypatch.context() as m:
            if not kernel:
                m.setattr(functional, "_kernel", lambda input, target: False)
            for step in range(3):
                xs = (x * (1 + step)).requires_grad_()
                kw = dict(sample_weight=sw, table=table, indices=idx[step], reduction="mean")
                if kernel:
                    loss = getattr(samplewt_ops, fn)(xs, y, **kw, **own)
                else:
                    defaults = {k: p.default for k, p in
                                inspect.signature(SPECS[fn].reference).parameters.items()
                                if k not in ("input", "target", "sample_weight", "reduction")}
                    loss = functional._loss(SPECS[fn], xs, y, sw, "mean", table, idx[step], False,
                                            **dict(defaults, **own))
                loss.backward()
                out.append((loss.detach(), xs.grad))
        results.append((out, table))
    (fused, ta), (ref, tb) = results
    for (la, ga), (lb, gb) in zip(fused, ref):
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ta.ema, tb.ema, rtol=1e-5, atol=1e-6)
    assert torch.equal(ta.seen_count, tb.seen_count)
