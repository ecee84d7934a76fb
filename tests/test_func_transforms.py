"""torch.func transforms and forward-mode AD on every public loss.

The compiled ops have no batching rule and no forward derivative; under
torch.func.vmap / grad / jvp, or inside torch.autograd.forward_ad.dual_level,
the losses run the reference (plain torch ops). Each check here compares
against the compiled kernels outside any transform: a jvp's tangent with
the reverse-mode gradient, vmap's per-sample losses with reduction="none",
vmap(grad)'s per-sample gradients with the gradient of the summed loss.
Before, a jvp or a dual tensor silently got a zero tangent, and vmap raised.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import samplewt_ops as so
from samplewt_ops import _loader

pytestmark = pytest.mark.skipif(not _loader.has_kernel("cpu"), reason="no compiled CPU kernel")

N, C, D = 5, 4, 3


def _gen():
    return torch.Generator().manual_seed(0)


def _cases():
    """(name, loss(x, *rest, sample_weight), input x (N, ...), the rest, each with N rows)."""
    g = _gen()
    x = torch.randn(N, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    q = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    t = torch.rand(N, C, generator=g, dtype=torch.float64)
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    head = torch.randn(C, D, generator=g, dtype=torch.float64)
    return [
        ("cross_entropy", lambda a, b, **kw: so.cross_entropy(a, b, label_smoothing=0.1, **kw), x, y),
        ("cross_entropy probabilities", lambda a, b, **kw: so.cross_entropy(a, b, **kw), x, q),
        ("focal_loss", lambda a, b, **kw: so.focal_loss(a, b, gamma=2.0, **kw), x, y),
        ("sigmoid_focal_loss", lambda a, b, **kw: so.sigmoid_focal_loss(a, b, reduction="mean", **kw),
         x, t),
        ("binary_cross_entropy_with_logits",
         lambda a, b, **kw: so.binary_cross_entropy_with_logits(a, b, pos_weight=torch.full((C,), 2.0,
                                                                dtype=torch.float64), **kw), x, t),
        ("mse_loss", lambda a, b, **kw: so.mse_loss(a, b, **kw), x, t),
        ("l1_loss", lambda a, b, **kw: so.l1_loss(a, b, **kw), x, t),
        ("huber_loss", lambda a, b, **kw: so.huber_loss(a, b, delta=0.5, **kw), x, t),
        ("linear_cross_entropy", lambda a, b, **kw: so.linear_cross_entropy(a, head, b, **kw), h, y),
        ("linear_focal_loss", lambda a, b, **kw: so.linear_focal_loss(a, head, b, gamma=2.0, **kw), h, y),
    ]


CASES = {case[0]: case for case in _cases()}
NAMES = list(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_jvp_tangent_is_the_gradient_along_the_direction(name):
    _, loss, x, rest = CASES[name]
    v = torch.randn(x.shape, generator=_gen(), dtype=x.dtype)
    value, tangent = torch.func.jvp(lambda a: loss(a, rest), (x,), (v,))
    xr = x.clone().requires_grad_()
    want = loss(xr, rest)
    (grad,) = torch.autograd.grad(want, xr)
    torch.testing.assert_close(value, want.detach())
    torch.testing.assert_close(tangent, (grad * v).sum())


@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_dual_tensor_gets_its_tangent(name):
    _, loss, x, rest = CASES[name]
    v = torch.randn(x.shape, generator=_gen(), dtype=x.dtype)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(xr, rest), xr)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(loss(fwAD.make_dual(x, v), rest)).tangent
    assert tangent is not None, f"{name}: no tangent"
    torch.testing.assert_close(tangent, (grad * v).sum())


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_forward_and_backward_mode(name):
    _, loss, x, rest = CASES[name]
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss(a, rest), (xr,), check_forward_ad=True)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_per_sample_losses_and_gradients(name):
    _, loss, x, rest = CASES[name]
    per = torch.func.vmap(lambda a, b: loss(a.unsqueeze(0), b.unsqueeze(0)))(x, rest)
    # The kernels' own per-sample losses: each row as its own batch of one.
    want = torch.stack([loss(x[i:i + 1], rest[i:i + 1]) for i in range(N)])
    torch.testing.assert_close(per, want)
    grads = torch.func.vmap(torch.func.grad(lambda a, b: loss(a.unsqueeze(0), b.unsqueeze(0))))(x, rest)
    xr = x.clone().requires_grad_()
    total = sum(loss(xr[i:i + 1], rest[i:i + 1]) for i in range(N))
    (want_grads,) = torch.autograd.grad(total, xr)
    torch.testing.assert_close(grads, want_grads)


@pytest.mark.parametrize("name", ["cross_entropy", "mse_loss", "binary_cross_entropy_with_logits"])
def test_grad_of_sample_weighted_loss_matches_the_kernels(name):
    _, loss, x, rest = CASES[name]
    w = torch.rand(N, generator=_gen(), dtype=x.dtype)
    got = torch.func.grad(lambda a: loss(a, rest, sample_weight=w))(x)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(xr, rest, sample_weight=w), xr)
    torch.testing.assert_close(got, want)


def test_modules_under_vmap():
    criterion = so.CrossEntropyLoss(label_smoothing=0.1)
    _, _, x, y = CASES["cross_entropy"]
    per = torch.func.vmap(lambda a, b: criterion(a.unsqueeze(0), b.unsqueeze(0)))(x, y)
    torch.testing.assert_close(per, so.cross_entropy(x, y, label_smoothing=0.1, reduction="none"))


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_double_backward_raises_instead_of_dropping_second_order_terms(name, inplace):
    """The kernels' gradient is not differentiable: create_graph=True gets a
    clear error naming the reference, which double backward works with,
    rather than a gradient without a graph."""
    _, loss, x, rest = CASES[name]
    xr = x.clone().requires_grad_()
    if inplace:
        if name not in ("cross_entropy", "focal_loss"):
            pytest.skip("no inplace_grad")
        out = getattr(so, name)(xr * 1, rest, inplace_grad=True)
    else:
        out = loss(xr, rest)
    with pytest.raises(RuntimeError, match="create_graph=True.*reference"):
        torch.autograd.grad(out, xr, create_graph=True)


REFERENCES = {  # the cases' losses, with samplewt_ops.reference
    "cross_entropy": lambda a, b: so.reference.cross_entropy(a, b, label_smoothing=0.1),
    "mse_loss": so.reference.mse_loss,
    "huber_loss": lambda a, b: so.reference.huber_loss(a, b, delta=0.5),
    "sigmoid_focal_loss": lambda a, b: so.reference.sigmoid_focal_loss(a, b, reduction="mean"),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_double_backward_through_the_reference_or_torch_func(name):
    _, loss, x, rest = CASES[name]
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(REFERENCES[name](xr, rest), xr, create_graph=True)
    (hv,) = torch.autograd.grad(g.sum(), xr)
    hessian = torch.func.hessian(lambda a: loss(a, rest))(x)
    torch.testing.assert_close(hv, hessian.sum(dim=(0, 1)))
