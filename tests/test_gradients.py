"""Gradients of every tensor argument that torch differentiates (and of the
sample weights): float64 gradcheck of each loss in each differentiable
argument, and equality with torch's own gradients where torch has them."""
import pytest
import torch
import torch.nn.functional as F

import samplewt_ops as so

REDUCTIONS = ["mean", "sum", "none"]


def _f64(*shape, low=0.0, high=1.0, grad=True):
    return (torch.rand(*shape, dtype=torch.float64) * (high - low) + low).requires_grad_(grad)


def _sigmoid_focal_formula(x, t, alpha=0.25, gamma=2.0, reduction="none"):
    # torchvision.ops.sigmoid_focal_loss, written with torch ops.
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _reduce(loss, reduction):
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def test_bce_formula_is_torchs():
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, 4, dtype=torch.float64)
    w, pw = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) * 3
    x.requires_grad_()
    t.requires_grad_()
    want = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw)
    got = CASES["binary_cross_entropy_with_logits"][1](x, t, w, pw, "mean")
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, t)), torch.autograd.grad(want, (x, t))):
        torch.testing.assert_close(a, b)


# (loss, torch's counterpart or None, builder of the named tensor arguments)
def _cases():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n, c = 5, 4
    y = torch.randint(0, c, (n,), generator=g)
    return {
        "cross_entropy_prob": (
            lambda x, target, weight, reduction: so.cross_entropy(
                x, target, weight, reduction=reduction, label_smoothing=0.1),
            lambda x, target, weight, reduction: F.cross_entropy(
                x, target, weight, reduction=reduction, label_smoothing=0.1),
            lambda: {"x": _f64(n, c, low=-2, high=2),
                     "target": torch.softmax(torch.randn(n, c, dtype=torch.float64), 1).requires_grad_(),
                     "weight": _f64(c, low=0.5, high=1.5, grad=False)}),
        "cross_entropy_weight": (
            lambda x, weight, reduction: so.cross_entropy(x, y, weight, reduction=reduction),
            None,  # torch: "the derivative for 'weight' is not implemented"
            lambda: {"x": _f64(n, c, low=-2, high=2), "weight": _f64(c, low=0.5, high=1.5)}),
        "focal_loss_alpha": (
            lambda x, alpha, reduction: so.focal_loss(x, y, gamma=2.0, alpha=alpha, reduction=reduction),
            None,
            lambda: {"x": _f64(n, c, low=-2, high=2), "alpha": _f64(c, low=0.2, high=0.8)}),
        "sigmoid_focal_loss": (
            lambda x, target, reduction: so.sigmoid_focal_loss(x, target, reduction=reduction),
            lambda x, target, reduction: _sigmoid_focal_formula(x, target, reduction=reduction),
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c)}),
        "binary_cross_entropy_with_logits": (
            lambda x, target, weight, pos_weight, reduction: so.binary_cross_entropy_with_logits(
                x, target, weight, pos_weight=pos_weight, reduction=reduction),
            # torch differentiates target only (weight, pos_weight: "not differentiable"),
            # so its formula, written out, is the reference for all three.
            lambda x, target, weight, pos_weight, reduction: _reduce(
                weight * ((1 - target) * x + (1 + (pos_weight - 1) * target) * F.softplus(-x)),
                reduction),
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c),
                     "weight": _f64(c, low=0.5, high=1.5), "pos_weight": _f64(c, low=0.5, high=3)}),
        "mse_loss": (
            lambda x, target, reduction: so.mse_loss(x, target, reduction=reduction),
            lambda x, target, reduction: F.mse_loss(x, target, reduction=reduction),
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c, low=-2, high=2)}),
        "mse_loss_weight": (
            lambda x, target, weight, reduction: so.mse_loss(x, target, weight=weight, reduction=reduction),
            lambda x, target, weight, reduction: {
                "none": weight * (x - target) ** 2, "sum": (weight * (x - target) ** 2).sum(),
                "mean": (weight * (x - target) ** 2).sum() / weight.sum()}[reduction],
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c, low=-2, high=2),
                     "weight": _f64(n, c, low=0.5, high=1.5)}),
        "l1_loss": (
            lambda x, target, reduction: so.l1_loss(x, target, reduction=reduction),
            lambda x, target, reduction: F.l1_loss(x, target, reduction=reduction),
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c, low=-2, high=2)}),
        "huber_loss": (
            lambda x, target, reduction: so.huber_loss(x, target, delta=0.7, reduction=reduction),
            lambda x, target, reduction: F.huber_loss(x, target, delta=0.7, reduction=reduction),
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c, low=-2, high=2)}),
        "huber_loss_weight": (
            lambda x, target, weight, reduction: so.huber_loss(x, target, weight=weight, reduction=reduction),
            lambda x, target, weight, reduction: {
                "none": weight * F.huber_loss(x, target, reduction="none"),
                "sum": (weight * F.huber_loss(x, target, reduction="none")).sum(),
                "mean": (weight * F.huber_loss(x, target, reduction="none")).mean()}[reduction],
            lambda: {"x": _f64(n, c, low=-2, high=2), "target": _f64(n, c, low=-2, high=2),
                     "weight": _f64(n, c, low=0.5, high=1.5)}),
    }


CASES = _cases()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck_every_argument(case, reduction):
    ours, _, build = CASES[case]
    args = build()
    names = list(args)
    tensors = tuple(args[k] for k in names)

    def fn(*ts):
        return ours(*ts, reduction=reduction)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[1] is not None])
def test_gradients_equal_torch(case, reduction):
    ours, theirs, build = CASES[case]
    args = build()
    diff = [t for t in args.values() if t.requires_grad]
    out = ours(*args.values(), reduction=reduction)
    want = theirs(*args.values(), reduction=reduction)
    torch.testing.assert_close(out, want)
    cot = torch.rand_like(out)
    got = torch.autograd.grad(out, diff, cot)
    ref = torch.autograd.grad(want, diff, cot)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss",
                                  "binary_cross_entropy_with_logits", "mse_loss", "l1_loss",
                                  "huber_loss"])
def test_sample_weight_gradient(name, reduction):
    torch.manual_seed(1)
    n, c = 6, 3
    x = _f64(n, c, low=-2, high=2)
    if name in ("cross_entropy", "focal_loss"):
        t = torch.randint(0, c, (n,))
    else:
        t = _f64(n, c, grad=False)
    w = _f64(n, low=0.2, high=2.0)
    fn = getattr(so, name)
    assert torch.autograd.gradcheck(lambda x, w: fn(x, t, sample_weight=w, reduction=reduction), (x, w))
    # Against the pure-PyTorch reference, which is plain autograd.
    out = fn(x, t, sample_weight=w, reduction=reduction)
    ref = getattr(so.reference, name)(x, t, sample_weight=w, reduction=reduction)
    torch.testing.assert_close(out, ref)
    cot = torch.rand_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, w), cot), torch.autograd.grad(ref, (x, w), cot)):
        torch.testing.assert_close(a, b)


def test_sample_weight_gradient_mean_formula():
    # dL/dw_i = (l_i - L s_i) / sum_j w_j s_j, with s_i = cw[y_i] for class weights.
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    cw = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64, requires_grad=True)
    loss = so.cross_entropy(x, y, cw, sample_weight=w)
    (got,) = torch.autograd.grad(loss, w)
    per = F.cross_entropy(x, y, cw, reduction="none")
    s = cw[y]
    want = (per - loss.detach() * s) / (w.detach() * s).sum()
    torch.testing.assert_close(got, want)


def test_target_gradient_through_the_kernel_and_backward_examples():
    # The examples: mse target, and probability targets of cross_entropy.
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.5], requires_grad=True)
    so.mse_loss(x, t).backward()
    torch.testing.assert_close(t.grad, torch.tensor([-1 / 3, 4 / 3, -1 / 3]))
    z = torch.tensor([[1.0, -1.0]], requires_grad=True)
    q = torch.tensor([[0.2, 0.8]], requires_grad=True)
    so.cross_entropy(z, q).backward()
    torch.testing.assert_close(q.grad, torch.tensor([[0.1269, 2.1269]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
def test_regression_target_gradient_in_other_dtype(name):
    x = torch.randn(5, 3, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    getattr(so, name)(x, t).backward()
    assert t.grad.dtype == torch.float64
    x2, t2 = x.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    getattr(F, name)(x2, t2.float()).backward()
    torch.testing.assert_close(t.grad.float(), t2.grad.float())


ELEMENTWISE = ["sigmoid_focal_loss", "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "huber_loss"]


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_target_gradient_comes_from_the_fused_op(name):
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.rand(4, 3)
    w = torch.rand(4)
    fused = f"samplewt_ops_{name}_default"
    assert fused in getattr(so, name)(x, t, sample_weight=w).grad_fn.name()
    t.requires_grad_()
    assert fused in getattr(so, name)(x, t, sample_weight=w).grad_fn.name()
    # The target alone: the op writes d/dtarget and no d/dinput.
    x.requires_grad_(False)
    loss = getattr(so, name)(x, t, sample_weight=w, reduction="sum")
    assert fused in loss.grad_fn.name()
    (got,) = torch.autograd.grad(loss, t)
    tr = t.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(getattr(so.reference, name)(x, tr, sample_weight=w, reduction="sum"), tr)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_target_gradient_matches_reference(name, reduction, dtype):
    # Shapes with a vector tail; weights of every kind; each dtype's tolerance.
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(7, 37, generator=g) * 3).to(dtype).requires_grad_()
    t = torch.rand(7, 37, generator=g).to(dtype).requires_grad_()
    sw = torch.rand(7, generator=g)
    kwargs = {"sample_weight": sw, "reduction": reduction}
    if name == "binary_cross_entropy_with_logits":
        kwargs.update(weight=torch.rand(37, generator=g).to(dtype), pos_weight=torch.rand(37, generator=g).to(dtype) * 3)
    elif name == "sigmoid_focal_loss":
        kwargs.update(gamma=1.5, alpha=0.3)
    elif name != "huber_loss":
        kwargs.update(weight=torch.rand(7, 37, generator=g).to(dtype))
    out = getattr(so, name)(x, t, **kwargs)
    xr, tr = (v.detach().double().requires_grad_() for v in (x, t))
    ref_kwargs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ref = getattr(so.reference, name)(xr, tr, **ref_kwargs)
    cot = torch.rand(out.shape, generator=g)
    got = torch.autograd.grad(out, (x, t), cot.to(out.dtype))
    want = torch.autograd.grad(ref, (xr, tr), cot.double())
    tol = dict(atol=2e-2, rtol=2e-2) if dtype != torch.float32 else dict(atol=1e-5, rtol=1e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **tol)


def test_raw_op_refuses_a_target_gradient_it_did_not_compute():
    x = torch.randn(3, 2)
    t = torch.rand(3, 2, requires_grad=True)
    loss = torch.ops.samplewt_ops.mse_loss(x, t, None, None, 1, False, False)[0]
    with pytest.raises(RuntimeError, match="compute_target_grad"):
        loss.backward()
