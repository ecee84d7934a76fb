"""The fast path of the public losses (plain CPU calls straight to the op):
taken where it should be, and bit-identical to the checked path, loss and
gradients; left for the checked path where a call needs it."""
import inspect

import pytest
import torch

import samplewt_ops
from samplewt_ops import functional as fn_mod
from samplewt_ops._spec import SPECS

pytestmark = pytest.mark.skipif(not samplewt_ops.backend()["implementation"] == "compiled",
                                reason="needs the compiled ops")


def _call(name, n=6, c=5, dtype=torch.float32, weighted=False):
    spec = SPECS[name]
    g = torch.Generator().manual_seed(len(name))
    x = (torch.randn(n, c, generator=g) * 2).to(dtype).requires_grad_()
    if spec.rows:
        t = torch.randint(0, c, (n,), generator=g)
    elif name in ("mse_loss", "l1_loss", "huber_loss"):
        t = torch.randn(n, c, generator=g).to(dtype)
    else:
        t = torch.rand(n, c, generator=g).to(dtype)
    args = {k: v.default for k, v in inspect.signature(spec.reference).parameters.items()
            if k not in ("input", "target", "sample_weight", "reduction")}
    if weighted:
        if "weight" in args:
            args["weight"] = torch.rand(c if spec.rows else (n, c), generator=g).to(dtype)
        if "alpha" in args:
            args["alpha"] = 0.3
        if "label_smoothing" in args:
            args["label_smoothing"] = 0.1
    sw = torch.rand(n, generator=g).to(dtype) if weighted else None
    return spec, x, t, sw, args


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(SPECS))
def test_fast_path_equals_checked_path(name, reduction, weighted):
    spec, x, t, sw, args = _call(name, weighted=weighted)
    fast = fn_mod._fast_loss(spec, x, t, sw, reduction, dict(args))
    assert fast is not None, "a plain call must take the fast path"
    checked = fn_mod._loss(spec, x, t, sw, reduction, None, None, False, **args)
    assert torch.equal(fast, checked)
    cot = torch.rand(fast.shape)
    (g_fast,) = torch.autograd.grad(fast, x, cot)
    (g_checked,) = torch.autograd.grad(checked, x, cot)
    assert torch.equal(g_fast, g_checked)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if not s.rows])
def test_zero_dim_takes_the_fast_path(name, reduction, weighted):
    # A 0-d input is one sample of one element (torch takes it; so do we).
    spec, x, t, sw, args = _call(name, n=1, c=1, weighted=weighted)
    x = x.detach().reshape(()).requires_grad_()
    t = t.reshape(())
    args = {k: (v.reshape(()) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    sw = sw.reshape(1) if sw is not None else None
    fast = fn_mod._fast_loss(spec, x, t, sw, reduction, dict(args))
    assert fast is not None, "a plain 0-d call must take the fast path"
    checked = fn_mod._loss(spec, x, t, sw, reduction, None, None, False, **args)
    assert fast.shape == checked.shape == ()
    assert torch.equal(fast, checked)
    (g_fast,) = torch.autograd.grad(fast, x)
    (g_checked,) = torch.autograd.grad(checked, x)
    assert torch.equal(g_fast, g_checked)


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.rows])
def test_spatial_takes_the_fast_path(name, reduction, prob):
    # (N, C, d1, d2): folded to rows in the fast path; the same loss and
    # gradient as the checked path, and the loss shape (N, d1, d2) unreduced.
    spec = SPECS[name]
    if prob and not spec.prob_targets:
        pytest.skip(f"{name} takes no probabilities")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 4, 2, generator=g).requires_grad_()
    t = (torch.rand(3, 5, 4, 2, generator=g).softmax(1) if prob
         else torch.randint(0, 5, (3, 4, 2), generator=g))
    args = {k: v.default for k, v in inspect.signature(spec.reference).parameters.items()
            if k not in ("input", "target", "sample_weight", "reduction")}
    fast = fn_mod._fast_loss(spec, x, t, None, reduction, dict(args))
    assert fast is not None, "a plain spatial call must take the fast path"
    checked = fn_mod._loss(spec, x, t, None, reduction, None, None, False, **args)
    assert fast.shape == checked.shape
    assert torch.equal(fast, checked)
    cot = torch.rand(fast.shape, generator=g)
    (g_fast,) = torch.autograd.grad(fast, x, cot)
    (g_checked,) = torch.autograd.grad(checked, x, cot)
    assert torch.equal(g_fast, g_checked)
    # A target of the right size but the wrong shape is the checked path's to reject.
    assert fn_mod._fast_loss(spec, x, t.reshape(3, -1) if not prob else t.reshape(3, 5, 8),
                             None, reduction, dict(args)) is None


def test_public_function_takes_the_fast_path():
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    loss = samplewt_ops.cross_entropy(x, y)
    assert loss.grad_fn.name() == "samplewt_ops_cross_entropy_defaultBackward"


@pytest.mark.parametrize("case", ["meta target", "other target dtype", "weight requires grad",
                                  "sample_weight requires grad", "bad reduction", "inf gamma",
                                  "float64 weight", "row weight for mse"])
def test_calls_that_need_the_checked_path(case):
    spec, x, t, sw, args = _call("binary_cross_entropy_with_logits")
    red = "mean"
    if case == "meta target":
        t = t.to("meta")
    elif case == "other target dtype":
        t = t.double()
    elif case == "weight requires grad":
        args["weight"] = torch.rand(5, requires_grad=True)
    elif case == "sample_weight requires grad":
        sw = torch.rand(6, requires_grad=True)
    elif case == "bad reduction":
        red = "avg"
    elif case == "inf gamma":
        spec, x, t, sw, args = _call("focal_loss")
        args["gamma"] = float("inf")
    elif case == "float64 weight":
        args["weight"] = torch.rand(5, dtype=torch.float64)
    elif case == "row weight for mse":
        spec, x, t, sw, args = _call("mse_loss")
        args["weight"] = torch.rand(5)
    assert fn_mod._fast_loss(spec, x, t, sw, red, args) is None


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.inplace])
def test_inplace_grad_fast_path_equals_checked_path(name, reduction, weighted):
    # inplace_grad=True takes the fast path too: the `_` op with its C++
    # autograd, as the checked path in eager (on CUDA too; only a traced call
    # runs it under the InplaceGradLoss Function): the same loss, and the
    # same gradient in the logits' memory.
    spec, x, t, sw, args = _call(name, weighted=weighted)
    got = []
    for fast in (True, False):
        xi = x.detach().clone().requires_grad_()
        logits = xi * 1  # a non-leaf, consumed by the op
        if fast:
            loss = fn_mod._fast_loss(spec, logits, t, sw, reduction, dict(args), inplace_grad=True)
            assert loss is not None, "a plain call must take the fast path"
        else:
            loss = fn_mod._loss(spec, logits, t, sw, reduction, None, None, True, **args)
        fns, seen = [loss.grad_fn], set()
        while fns:  # the in-place op's Function is in the graph (the checked path may view it)
            f = fns.pop()
            seen.add(f.name())
            fns += [n for n, _ in f.next_functions if n is not None]
        assert f"samplewt_ops_{name}_Backward" in seen and "InplaceGradLossBackward" not in seen, seen
        cot = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1))
        (g,) = torch.autograd.grad(loss, xi, cot)
        got.append((loss.detach(), g))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


def test_inplace_grad_bad_input_still_raises_the_checked_error():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="target"):
        samplewt_ops.cross_entropy(x * 1, torch.tensor([0, 1, 2]), inplace_grad=True)
