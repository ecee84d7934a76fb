"""The registered ops themselves: opcheck on sample inputs, every CPU
instruction set against the reference, and the in-place gradient mode."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import samplewt_ops
from samplewt_ops import _loader, reference
from samplewt_ops._ops import call
from samples import ce_kwargs, elem_opcheck_samples, inplace_opcheck_samples, row_opcheck_samples, tail
from samples import spatial_inplace_opcheck_samples, spatial_row_opcheck_samples

pytestmark = pytest.mark.skipif(not _loader.has_kernel("cpu"), reason="no compiled CPU kernel")

OPS = torch.ops.samplewt_ops


def _opcheck_samples():
    if not _loader.has_kernel("cpu"):
        return []  # (the op's argument order comes from its compiled schema)
    return [*row_opcheck_samples(torch.Generator().manual_seed(0), (torch.float32, torch.float64, torch.bfloat16),
                                 ((5, 1), (7, 2), (9, 37), (3, 130))),
            *spatial_row_opcheck_samples(torch.Generator().manual_seed(3), (torch.float32, torch.bfloat16)),
            *elem_opcheck_samples(torch.Generator().manual_seed(1), (torch.float32, torch.float64),
                                  ((6, 5), (4, 3, 2), (7,)))]


@pytest.mark.parametrize("name,args", _opcheck_samples())
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name), args)


def test_opcheck_inplace_ops():
    for name, args in inplace_opcheck_samples(torch.randn(6, 11), torch.randint(0, 11, (6,)),
                                              torch.rand(6)):
        torch.library.opcheck(getattr(OPS, name), args, test_utils=("test_schema", "test_faketensor"))
    for name, args in spatial_inplace_opcheck_samples(torch.Generator().manual_seed(4)):
        torch.library.opcheck(getattr(OPS, name), args, test_utils=("test_schema", "test_faketensor"))


def test_no_grad_writes_no_gradient():
    x = torch.randn(4, 9)
    y = torch.randint(0, 9, (4,))
    loss, grad, stats = call("cross_entropy", **ce_kwargs(x, y), **tail(1, False, False))
    assert grad.numel() == 0 and stats.numel() == 0
    loss2, grad2, _ = call("cross_entropy", **ce_kwargs(x, y), **tail(1, True, False))
    assert grad2.shape == x.shape and torch.equal(loss, loss2)


def test_stats_are_per_sample_loss_and_gradient_norm():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (5,))
    sw = torch.rand(5, dtype=torch.float64)
    _, _, stats = call("cross_entropy", **ce_kwargs(x, y, sw), **tail(1, True, True))
    per = torch.nn.functional.cross_entropy(x, y, reduction="none")
    (g,) = torch.autograd.grad(per.sum(), x)
    torch.testing.assert_close(stats[:, 0], per.detach().float())
    torch.testing.assert_close(stats[:, 1], g.norm(dim=1).float())
    p_y = torch.softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(stats[:, 2], (1 - p_y).detach().float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [10, 1000])
def test_gradient_norm_is_accurate_when_the_target_is_nearly_certain(c, dtype):
    # 1 - p_y from 1.2e-4 down to 2e-6: the norm (about 1 - p_y) must not come
    # from a sum of squares near 1 corrected afterwards (which gave 0 in
    # float32). atol: the float32 exp's error of p_y near 1 (the old sum lost 1e-4).
    x = torch.zeros(3, c, dtype=torch.float64)
    x[:, 0] = torch.tensor([9.0, 11.0, 13.0]) + torch.tensor(float(c)).log()
    y = torch.zeros(3, dtype=torch.long)
    x = x.to(dtype)
    _, _, stats = call("cross_entropy", **ce_kwargs(x, y, None), **tail(1, True, True))
    xd = x.double().requires_grad_()
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(xd, y, reduction="sum"), xd)
    torch.testing.assert_close(stats[:, 1].double(), g.norm(dim=1), rtol=1e-3, atol=2e-6)


ISAS = ["DEFAULT", "AVX2", "AVX512"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("SAMPLEWT_CPU_ISA", request.param)
    got = OPS.cpu_isa()
    if got != request.param:
        pytest.skip(f"this CPU has no {request.param}")
    return got


@pytest.mark.parametrize("c", [1, 2, 15, 16, 17, 33, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_every_isa_matches_reference(isa, c, dtype):
    g = torch.Generator().manual_seed(c)
    x = (torch.randn(6, c, generator=g) * 3).to(dtype)
    y = torch.randint(0, c, (6,), generator=g)
    cw = torch.rand(c, generator=g) + 0.1
    sw = torch.rand(6, generator=g)
    t = torch.rand(6, c, generator=g).to(dtype)
    tol = dict(atol=1e-2, rtol=2e-2) if dtype in (torch.bfloat16, torch.float16) else {}
    for fn, target, kw in ((samplewt_ops.cross_entropy, y, dict(weight=cw, label_smoothing=0.1)),
                           (samplewt_ops.focal_loss, y, dict(gamma=1.5, alpha=cw)),
                           (samplewt_ops.sigmoid_focal_loss, t, dict(gamma=1.5, reduction="mean")),
                           (samplewt_ops.binary_cross_entropy_with_logits, t, dict(pos_weight=cw.to(dtype))),
                           (samplewt_ops.huber_loss, t, dict(delta=0.7))):
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        a = fn(xa, target, sample_weight=sw, **kw)
        b = getattr(reference, fn.__name__)(xb, target, sample_weight=sw, **kw)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(xa.grad, xb.grad, **tol)


@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inplace_grad_matches_default(fn, reduction):
    torch.manual_seed(0)
    base = torch.randn(12, 300) * 4
    y = torch.randint(0, 300, (12,))
    y[3] = -100
    sw = torch.rand(12)
    w = torch.nn.Linear(300, 300)
    grads = []
    for inplace in (False, True):
        w.zero_grad()
        logits = w(base)  # non-leaf, as in training
        loss = fn(logits, y, sample_weight=sw, reduction=reduction, inplace_grad=inplace)
        (loss.sum() if reduction == "none" else loss * 1.5).backward()
        grads.append(w.weight.grad.clone())
        if inplace:
            # The logits now hold the gradient, not the logits.
            assert not torch.allclose(logits.detach(), w(base).detach())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_inplace_grad_of_a_leaf_is_not_copied(fn, scale):
    # The gradient lives in the logits' memory, and the leaf's .grad is that
    # memory: no N x C copy by AccumulateGrad.
    torch.manual_seed(0)
    x = (torch.randn(6, 40) * 3).requires_grad_()
    y = torch.randint(0, 40, (6,))
    want = torch.autograd.grad(fn(x, y) * scale, x)[0]
    ptr = x.data_ptr()
    (fn(x, y, inplace_grad=True) * scale).backward()
    assert x.grad.data_ptr() == ptr
    torch.testing.assert_close(x.grad, want)


def test_inplace_grad_backward_runs_once():
    x = torch.randn(4, 10)
    lin = torch.nn.Linear(10, 10)
    loss = samplewt_ops.cross_entropy(lin(x), torch.randint(0, 10, (4,)), inplace_grad=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_leaf_gradient_is_handed_over_and_recomputed_for_a_second_backward():
    x = torch.randn(8, 50, requires_grad=True)
    y = torch.randint(0, 50, (8,))
    loss = samplewt_ops.cross_entropy(x, y)
    loss.backward(retain_graph=True)
    xr = x.detach().requires_grad_()
    torch.nn.functional.cross_entropy(xr, y).backward()
    torch.testing.assert_close(x.grad, xr.grad)
    loss.backward(retain_graph=True)  # recomputed, then accumulated into .grad
    torch.testing.assert_close(x.grad, 2 * xr.grad)
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def _op_call_with_grad_hook(x, y):
    """The row op called directly (autograd kernel included), its gradient
    buffer's address, and the gradients that reach x (by a hook)."""
    loss, grad, _ = call("cross_entropy", **ce_kwargs(x, y), **tail(1, True, False))
    seen = []
    x.register_hook(lambda g: seen.append(g.data_ptr()) or None)
    return loss, grad, seen


def test_saved_gradient_is_scaled_in_place_on_its_last_use():
    # grad_output 0.5 (say, a loss scaler): the last backward scales the
    # saved buffer itself rather than allocate a second one.
    torch.manual_seed(0)
    x = torch.randn(6, 30, requires_grad=True)
    y = torch.randint(0, 30, (6,))
    want = torch.autograd.grad(torch.nn.functional.cross_entropy(x, y) * 0.5, x)[0]
    loss, grad, seen = _op_call_with_grad_hook(x, y)
    ptr = grad.data_ptr()
    del grad  # the node holds the only reference now
    (loss * 0.5).backward()
    assert seen == [ptr]
    torch.testing.assert_close(x.grad, want)


def test_saved_gradient_is_copied_while_someone_else_holds_it():
    torch.manual_seed(0)
    x = torch.randn(6, 30, requires_grad=True)
    y = torch.randint(0, 30, (6,))
    loss, grad, seen = _op_call_with_grad_hook(x, y)
    before = grad.clone()
    (loss * 0.5).backward()
    assert seen != [grad.data_ptr()]
    torch.testing.assert_close(grad, before)  # the caller's tensor is untouched
    torch.testing.assert_close(x.grad, before * 0.5)


def test_retain_graph_with_non_leaf_input_backpropagates_twice():
    x = torch.randn(8, 50, requires_grad=True)
    y = torch.randint(0, 50, (8,))
    loss = samplewt_ops.cross_entropy(x * 1.0, y)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


# ---------------------------------------------------------------------------
# Vectorised paths: widths, huge rows, extreme values, strided rows.


@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
def test_very_large_class_count(fn):
    torch.manual_seed(0)
    c = 262144 + 5
    x = torch.randn(3, c, dtype=torch.float64) * 2
    y = torch.tensor([0, c - 1, 77])
    xa = x.float().requires_grad_()
    xb = x.clone().requires_grad_()
    a = fn(xa, y, sample_weight=torch.tensor([1.0, 0.5, 2.0]))
    b = getattr(reference, fn.__name__)(xb, y, sample_weight=torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64))
    a.backward()
    b.backward()
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss",
                                  "binary_cross_entropy_with_logits"])
def test_extreme_logits_stay_finite_and_match(name):
    x = torch.tensor([[1e4, -1e4, 0.0, 3.0, -2.0], [-1e4, -1e4, 1e4, 1e4, 0.0],
                      [5.0, 1e4, -1e4, 2.0, 1.0]], dtype=torch.float64)
    fn, ref = getattr(samplewt_ops, name), getattr(reference, name)
    if name in ("cross_entropy", "focal_loss"):
        t = torch.tensor([1, 2, 0])
        kw = {}
    else:
        t = torch.tensor([[1.0, 0, 1, 0, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 1]], dtype=torch.float64)
        kw = {"reduction": "mean"} if name == "sigmoid_focal_loss" else {}
    xa = x.float().requires_grad_()
    xb = x.clone().requires_grad_()
    a = fn(xa, t if t.dtype == torch.long else t.float(), **kw)
    b = ref(xb, t, **kw)
    a.backward()
    b.backward()
    assert torch.isfinite(a) and torch.isfinite(xa.grad).all()
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
def test_strided_rows_are_read_in_place(fn):
    torch.manual_seed(0)
    wide = torch.randn(9, 80)
    x = wide[:, 3:50]  # unit column stride, row stride 80
    y = torch.randint(0, 47, (9,))
    xa = x.clone().requires_grad_()
    loss = fn(x, y)
    torch.testing.assert_close(loss, getattr(reference, fn.__name__)(xa, y))
    xt = torch.randn(47, 9).t()  # column stride 9: copied, then the same
    torch.testing.assert_close(fn(xt, y), getattr(reference, fn.__name__)(xt, y))


def _folded(x):
    """(N, C, d1..dk) as (rows, C), and the way back for a gradient."""
    c = x.shape[1]
    moved = (x.shape[0],) + tuple(x.shape[2:]) + (c,)
    return x.movedim(1, -1).reshape(-1, c), lambda g: g.reshape(moved).movedim(-1, 1)


# Positions per sample that fill whole vectors (256), that leave blocks across
# two samples (17, 5), and rows enough for every thread; C folded on the CPU too (40).
@pytest.mark.parametrize("shape", [(8, 10, 16, 16), (4, 3, 17, 17), (3, 32, 5), (2, 40, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_spatial_rows_equal_their_folded_rows(isa, shape, dtype):
    # The op reads (N, C, d1..dk) as N * d1 * .. * dk rows in place; each row
    # is summed as the same row of the folded (rows, C) input is: bit-equal.
    g = torch.Generator().manual_seed(shape[-1])
    n, c = shape[0], shape[1]
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    y = torch.randint(0, c, (n,) + shape[2:], generator=g)
    y.view(-1)[::7] = -100
    q = torch.softmax(torch.randn(shape, generator=g), 1).to(dtype)
    cw = torch.rand(c, generator=g) + 0.1
    sw = torch.rand(y.numel(), generator=g)
    x2, back = _folded(x)
    for name, target, kw in (("cross_entropy", y, dict(weight=cw, sample_weight=sw, ignore_index=-100,
                                                       label_smoothing=0.1)),
                             ("cross_entropy", y, dict(weight=None, sample_weight=None, ignore_index=-100,
                                                       label_smoothing=0.0)),
                             ("cross_entropy", q, dict(weight=None, sample_weight=sw, ignore_index=-100,
                                                       label_smoothing=0.2)),
                             ("focal_loss", y, dict(alpha=cw, sample_weight=None, gamma=2.0, ignore_index=-100))):
        t2 = _folded(target)[0] if target.is_floating_point() else target.reshape(-1)
        for red in (0, 1, 2):
            loss, grad, stats = call(name, input=x, target=target, **kw, **tail(red, True, True))
            loss2, grad2, stats2 = call(name, input=x2, target=t2, **kw, **tail(red, True, True))
            assert grad.shape == x.shape and grad.is_contiguous()
            assert torch.equal(loss, loss2) and torch.equal(stats, stats2)
            assert torch.equal(grad, back(grad2))
        xi, xi2 = x.clone(), x2.clone()
        loss, stats = call(name, inplace=True, input=xi, target=target, **kw, reduction=0, compute_stats=True)
        loss2, _ = call(name, inplace=True, input=xi2, target=t2, **kw, reduction=0, compute_stats=True)
        assert torch.equal(loss, loss2) and torch.equal(xi, back(xi2))


def test_spatial_rows_of_a_strided_input():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 7).movedim(-1, 1)  # (3, 7, 6, 5), classes innermost: copied first
    y = torch.randint(0, 7, (3, 6, 5))
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    for fn in (samplewt_ops.cross_entropy, samplewt_ops.focal_loss):
        a = fn(xa, y, reduction="none")
        b = getattr(reference, fn.__name__)(xb, y, reduction="none")
        assert a.shape == (3, 6, 5)
        torch.testing.assert_close(a, b)
        a.sum().backward()
        b.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
    # In place on a strided input: the gradient goes back into its own layout.
    xi = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    samplewt_ops.cross_entropy(xi * 1.0, y, inplace_grad=True).backward()
    samplewt_ops.cross_entropy(xc, y).backward()
    torch.testing.assert_close(xi.grad, xc.grad)


def test_inplace_grad_on_strided_logits_matches_default():
    torch.manual_seed(0)
    for transpose in (False, True):
        base = torch.randn(40, 12) if transpose else torch.randn(12, 60)
        y = torch.randint(0, 40, (12,))
        grads = []
        for inplace in (False, True):
            leaf = base.clone().requires_grad_()
            logits = (leaf * 2.0).t() if transpose else (leaf * 2.0)[:, 5:45]
            samplewt_ops.cross_entropy(logits, y, inplace_grad=inplace).backward()
            grads.append(leaf.grad)
        torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_rows_accumulate_in_float():
    torch.manual_seed(0)
    x = torch.randn(4, 5000) * 4
    y = torch.randint(0, 5000, (4,))
    xb = x.bfloat16().requires_grad_()
    loss = samplewt_ops.cross_entropy(xb, y, reduction="sum")
    loss.backward()
    exact = torch.nn.functional.cross_entropy(xb.detach().double(), y, reduction="sum")
    assert loss.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), exact, rtol=8e-3, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 0.7, 4.2])
def test_sigmoid_focal_every_gamma_path(gamma):
    # Integers and half-integers take closed forms in focal_pow; others exp/log.
    torch.manual_seed(0)
    x = torch.randn(9, 33, dtype=torch.float64) * 4
    x[0, :3] = torch.tensor([40.0, -40.0, 0.0])
    t = (torch.rand(9, 33, dtype=torch.float64) < 0.3).double()
    xa = x.float().requires_grad_()
    xb = x.clone().requires_grad_()
    a = samplewt_ops.sigmoid_focal_loss(xa, t.float(), gamma=gamma, reduction="sum")
    b = reference.sigmoid_focal_loss(xb, t, gamma=gamma, reduction="sum")
    a.backward()
    b.backward()
    assert torch.isfinite(xa.grad).all()
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=1e-4, atol=1e-6)


def _table_opcheck_samples():
    if not _loader.has_kernel("cpu"):
        return []
    from samplewt_ops.weights import GHM, AdaptiveWeights, LossEMA, SmallLoss
    out = []
    gen = torch.Generator().manual_seed(2)
    for policy in (LossEMA(), GHM(bins=5), SmallLoss(0.3, ramp_epochs=0)):
        table = AdaptiveWeights(20, policy)
        samples = [*row_opcheck_samples(gen, (torch.float32,), ((6, 4),)),
                   *elem_opcheck_samples(gen, (torch.float32,), ((6, 3),))]
        for name, args in samples:
            if not policy.supports(name.rstrip("_")):
                continue
            kwargs = {**samplewt_ops._spec.SCHEMA_DEFAULTS[name],
                      **dict(zip(samplewt_ops._spec.SCHEMA_ARGS[name], args))}
            table_args = table.op_args(torch.randint(0, 20, (6,), generator=gen))
            out.append(pytest.param(name, {**kwargs, **table_args}, id=f"{name}-{policy.name}"))
    return out


@pytest.mark.parametrize("name,kwargs", _table_opcheck_samples())
def test_opcheck_with_a_table(name, kwargs):
    # The table's tensors are mutated arguments (Tensor(a!)) of the schema.
    names = samplewt_ops._spec.SCHEMA_ARGS[name]
    torch.library.opcheck(getattr(OPS, name), tuple(kwargs[n] for n in names))


def test_cpp_check_messages_are_formatted_in_full():
    # Numbers in a C++ check's message go through the C++ streams. With a
    # second, static libstdc++ inside the extension (a compiler wrapper's
    # -static-libstdc++, or a -B folder holding only libstdc++.a) they came out
    # truncated here and crashed on the GPU machines; setup.py links the shared one.
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"target must have shape \[2\], got \[5\]"):
        torch.ops.samplewt_ops.cross_entropy(x, torch.zeros(5, dtype=torch.long), None, None, -100,
                                             0.0, 1, True, False)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None
                    or shutil.which("readelf") is None, reason="needs Linux binutils")
def test_extension_uses_the_shared_libstdcxx():
    # The stronger form of the check above: no copy of libstdc++'s streams inside
    # the extension at all, whichever message a test happens to format.
    path = samplewt_ops._C.__file__
    needed = subprocess.run(["readelf", "-dW", path], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in needed, needed
    defined = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                             check=True).stdout
    own = [line for line in defined.splitlines() if "basic_ostream" in line and "_M_insert" in line]
    assert not own, f"{len(own)} libstdc++ stream symbols defined in {path}: {own[:3]}"


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("name", ["cross_entropy_", "focal_loss_"])
def test_inplace_op_autograd_hands_the_consumed_input_over(name, reduction):
    # The `_` ops' own autograd (csrc/autograd.cpp): the gradient is the input's
    # memory after the op, scaled by grad_output, adopted by a leaf, once.
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 11, (37,), generator=gen)
    sw = torch.rand(37, generator=gen, dtype=torch.float64)
    extra = dict(ignore_index=-100, label_smoothing=0.1) if name == "cross_entropy_" else \
        dict(gamma=2.0, ignore_index=-100)
    fn = samplewt_ops.cross_entropy if name == "cross_entropy_" else samplewt_ops.focal_loss
    red = ["none", "mean", "sum"][reduction]
    xr = x0.clone().requires_grad_()
    want = fn(xr, y, sample_weight=sw, reduction=red, **extra)
    cot = torch.rand(want.shape, generator=gen, dtype=torch.float64)
    (want_grad,) = torch.autograd.grad(want, xr, cot)

    x = x0.clone().requires_grad_()
    ptr = x.data_ptr()
    names = samplewt_ops._spec.SCHEMA_ARGS[name]
    kwargs = {**samplewt_ops._spec.SCHEMA_DEFAULTS[name], **extra, "input": x, "target": y,
              "sample_weight": sw, "reduction": reduction, "compute_stats": False}
    kwargs.setdefault("weight" if name == "cross_entropy_" else "alpha", None)
    loss = getattr(OPS, name)(*[kwargs[n] for n in names])[0]
    assert loss.grad_fn is not None and loss.grad_fn.name() == f"samplewt_ops_{name}Backward"
    torch.testing.assert_close(loss.detach(), want.detach())
    loss.backward(cot, retain_graph=True)
    torch.testing.assert_close(x.grad, want_grad)
    assert x.grad.data_ptr() == ptr, "the leaf must adopt the consumed input's memory"
    with pytest.raises(RuntimeError, match="backpropagated only once"):
        loss.backward(cot)


def test_inplace_op_refuses_other_arguments_requiring_grad():
    x = torch.randn(4, 3, requires_grad=True)
    q = torch.softmax(torch.randn(4, 3), 1).requires_grad_()
    names = samplewt_ops._spec.SCHEMA_ARGS["cross_entropy_"]
    kwargs = {**samplewt_ops._spec.SCHEMA_DEFAULTS["cross_entropy_"], "input": x * 1, "target": q,
              "weight": None, "sample_weight": None, "ignore_index": -100, "label_smoothing": 0.0,
              "reduction": 1, "compute_stats": False}
    with pytest.raises(RuntimeError, match="differentiates input only, but target requires grad"):
        OPS.cross_entropy_(*[kwargs[n] for n in names])


def test_large_gradient_buffers_are_reused_once_freed():
    # csrc/cpu/large_buffer.h: a freed N x C gradient goes back to a small
    # cache, and the next call of the same size takes it (pages already
    # mapped); a buffer still held is never handed out again.
    x = torch.randn(1 << 18, 16, requires_grad=True)
    t = torch.randn(1 << 18, 16)
    want = torch.autograd.grad(torch.nn.functional.mse_loss(x, t), x)[0]
    (g1,) = torch.autograd.grad(samplewt_ops.mse_loss(x, t), x)
    first = g1.data_ptr()
    del g1
    (g2,) = torch.autograd.grad(samplewt_ops.mse_loss(x, t), x)
    assert g2.data_ptr() == first
    (g3,) = torch.autograd.grad(samplewt_ops.mse_loss(x, t), x)
    assert g3.data_ptr() != g2.data_ptr()
    torch.testing.assert_close(g2, want, rtol=0, atol=0)
    torch.testing.assert_close(g3, want, rtol=0, atol=0)
    # A reused buffer is fully rewritten: another loss into the same block.
    del g2  # its block waits in the cache; empty_cache() frees it
    assert samplewt_ops.empty_cache() >= (1 << 18) * 16 * 4
    assert samplewt_ops.empty_cache() == 0
    del g3
    xr = x.detach().view(-1, 64).clone().requires_grad_()
    y = torch.randint(0, 64, (xr.shape[0],))
    (got,) = torch.autograd.grad(samplewt_ops.cross_entropy(xr, y), xr)
    want_ce = torch.autograd.grad(torch.nn.functional.cross_entropy(xr, y), xr)[0]
    torch.testing.assert_close(got, want_ce)


def test_buffers_without_the_cache_and_from_threads():
    code = (
        "import threading, torch, samplewt_ops\n"
        "x = torch.randn(1 << 18, 16); t = torch.randn(1 << 18, 16)\n"
        "xr = x.clone().requires_grad_()\n"
        "want = torch.autograd.grad(torch.nn.functional.mse_loss(xr, t), xr)[0]\n"
        "bad = []\n"
        "def work():\n"
        "    for _ in range(6):\n"
        "        xi = x.clone().requires_grad_()\n"
        "        g = torch.autograd.grad(samplewt_ops.mse_loss(xi, t), xi)[0]\n"
        "        bad.append(not torch.equal(g, want))\n"
        "ts = [threading.Thread(target=work) for _ in range(3)]\n"
        "[th.start() for th in ts]; [th.join() for th in ts]\n"
        "assert len(bad) == 18 and not any(bad), bad\n"
        "print('ok')\n")
    for cap in ("0", "512"):
        env = dict(os.environ, SAMPLEWT_CPU_BUFFER_CACHE_MB=cap)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_call_of_another_size_frees_the_cached_buffers_first():
    # The cache never adds to a call's peak memory: on a miss it is emptied
    # before the new buffer is allocated.
    samplewt_ops.empty_cache()
    x = torch.randn(1 << 18, 16, requires_grad=True)
    (g,) = torch.autograd.grad(samplewt_ops.l1_loss(x, torch.zeros_like(x)), x)
    del g
    z = torch.randn(1 << 17, 24, requires_grad=True)
    (h,) = torch.autograd.grad(samplewt_ops.l1_loss(z, torch.zeros_like(z)), z)
    assert samplewt_ops.empty_cache() == 0
    del h
    assert samplewt_ops.empty_cache() >= (1 << 17) * 24 * 4


@pytest.mark.parametrize("c", [10, 100, 129, 1000])
@pytest.mark.parametrize("variant", ["plain", "label_smoothing", "focal", "prob", "bfloat16"])
def test_cpu_row_results_do_not_depend_on_the_rows_around_them(variant, c):
    # The CPU row kernel takes short rows up to 16 at a time (their log-sum-exp
    # and exps as one vector call per block): a row's loss, gradient and
    # statistics must be the same, bit for bit, whichever block it falls in.
    gen = torch.Generator().manual_seed(c)
    dtype = torch.bfloat16 if variant == "bfloat16" else torch.float32
    x = (torch.randn(53, c, generator=gen) * 3).to(dtype)
    y = torch.randint(0, c, (53,), generator=gen)
    y[7] = -100
    name, kw = "cross_entropy", {}
    if variant == "label_smoothing":
        kw = dict(label_smoothing=0.1)
    elif variant == "focal":
        name, kw = "focal_loss", dict(gamma=2.0)
    elif variant == "prob":
        y = torch.softmax(torch.randn(53, c, generator=gen), 1)
    def run(lo):
        args = dict(input=x[lo:], target=y[lo:], sample_weight=None, ignore_index=-100,
                    reduction=0, compute_grad=True, compute_stats=True, **kw)
        if name == "cross_entropy":
            args.setdefault("label_smoothing", 0.0)
            args["weight"] = None
        else:
            args["alpha"] = None
        return call(name, **args)

    full = run(0)
    for lo in (1, 5, 16, 40):
        part = run(lo)
        for got, want in zip(part, full):
            assert torch.equal(got, want[lo:]), (variant, c, lo)


@pytest.mark.parametrize("c", [8, 40, 1000])
def test_softmax_terms_far_below_the_max_are_exact_zero_or_normal(c):
    # The kernels' exp for softmax terms: exp(x - m) to float precision while
    # it is a normal float, then exactly 0 (no denormal gradients, which would
    # slow every later op on them); -inf logits give 0 and NaN stays NaN.
    tail_logits = torch.tensor([0.0, -20.0, -80.0, -86.0, -86.4, -86.6, -87.0, -87.5, -90.0,
                                -104.0, -200.0, float("-inf")])
    x = torch.full((2, c), -300.0)
    x[:, : min(c, tail_logits.numel())] = tail_logits[:c]
    x[1, 3] = float("nan")
    x.requires_grad_(True)
    y = torch.tensor([0, 0])
    loss = samplewt_ops.cross_entropy(x, y, reduction="none")
    loss.sum().backward()
    g = x.grad[0]
    tiny = torch.finfo(torch.float32).tiny
    assert not ((g != 0) & (g.abs() < tiny)).any(), g
    want = torch.softmax(x[0].detach().double(), 0)
    kept = x[0].detach() >= -86.0
    kept[0] = False  # the target's p - 1 cancels
    torch.testing.assert_close(g[kept].double(), want[kept], rtol=1e-5, atol=0)
    assert (g[x[0].detach() < -87.4] == 0).all()
    assert torch.isnan(loss[1]) and not torch.isnan(loss[0])


@pytest.mark.parametrize("c", [33, 100, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_without_gradient_matches_torch_on_long_rows(c, dtype):
    # A forward without gradient reads a long row once (a running max per
    # lane, its sum rescaled when the max grows): rising rows rescale at
    # every vector, -inf and very negative logits add nothing, a row of -inf
    # and a row with NaN give NaN as torch does.
    gen = torch.Generator().manual_seed(c)
    x = torch.randn(8, c, generator=gen) * 4
    x[1] = torch.linspace(-50, 50, c)           # the max grows to the end
    x[2] = torch.linspace(50, -50, c)           # the max comes first
    x[3, ::3] = float("-inf")
    x[4] = x[4] - 1000.0                        # far from 0: exp(x - max) still exact
    x[5, c // 2] = 80.0                         # one dominant logit
    x[6] = float("-inf")
    x[7, c - 1] = float("nan")
    y = torch.randint(0, c, (8,), generator=gen)
    y[3] = 1  # a finite logit
    x = x.to(dtype)
    with torch.no_grad():
        got = samplewt_ops.cross_entropy(x, y, reduction="none")
        fwd_stats = call("cross_entropy", **ce_kwargs(x, y), **tail(0, False, True))[2]
    want = torch.nn.functional.cross_entropy(x.double(), y, reduction="none")
    finite = torch.isfinite(want)
    assert finite[:6].all() and not finite[6:].any()
    # bfloat16: the loss is rounded to bfloat16 (2^-8 relative), its statistics are float
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=4e-3, atol=0)
    torch.testing.assert_close(got[finite].double(), want[finite], **tol)
    assert torch.isnan(got[6:]).all()
    # The statistics' loss column: the same loss, in float.
    torch.testing.assert_close(fwd_stats[:6, 0].double(), want[:6], rtol=2e-6, atol=2e-6)


def test_stream_threshold_is_an_eighth_of_the_last_level_cache():
    # Below it an output stays in cache; at least 16 MiB where the cache is unknown.
    # (glibc's sysconf, which Python's os.sysconf does not name; getconf asks it)
    getconf = shutil.which("getconf")
    if getconf is None or not sys.platform.startswith("linux"):
        pytest.skip("no getconf to read the cache size with")
    out = subprocess.run([getconf, "LEVEL3_CACHE_SIZE"], capture_output=True, text=True).stdout.strip()
    llc = int(out) if out.lstrip("-").isdigit() else 0
    assert OPS.cpu_stream_bytes() == max(16 << 20, max(llc, 0) // 8)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("cols", [16, 20])
def test_large_outputs_streamed_equal_the_reference(name, cols):
    # Outputs of cpu_stream_bytes() and more are written with streaming stores
    # when every vector lies on a vector boundary (16 columns, flat), plainly
    # otherwise (20 columns): the same values as the reference either way, for
    # the input's and the target's gradient.
    gen = torch.Generator().manual_seed(cols)
    rows = OPS.cpu_stream_bytes() // (4 * cols) + 3
    x = torch.randn(rows, cols, generator=gen, requires_grad=True)
    t = torch.rand(rows, cols, generator=gen).requires_grad_(True)
    sw = torch.rand(rows, generator=gen)
    fn = getattr(samplewt_ops, name)
    got = torch.autograd.grad(fn(x, t, sample_weight=sw), (x, t))
    want = torch.autograd.grad(getattr(reference, name)(x, t, sample_weight=sw), (x, t))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [1024, 1000])
@pytest.mark.parametrize("name,smoothing", [("cross_entropy", 0.0), ("cross_entropy", 0.1),
                                            ("focal_loss", 0.0)], ids=["lean", "smoothed", "focal"])
def test_large_row_gradients_streamed_equal_the_reference(dtype, cols, name, smoothing):
    # A softmax gradient of cpu_stream_bytes() and more, in memory of its own,
    # is streamed where its rows are whole lines (1024 columns; 1000 columns
    # of float are not): the target's element is set inside its vector, and
    # ignored rows are zeros, as in the reference.
    gen = torch.Generator().manual_seed(cols)
    rows = OPS.cpu_stream_bytes() // (dtype.itemsize * cols) + 5
    x = torch.randn(rows, cols, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(0, cols, (rows,), generator=gen)
    y[:: 97] = -100
    y[1] = cols - 1
    y[2] = 0
    w = torch.rand(cols, generator=gen) + 0.5
    sw = torch.rand(rows, generator=gen)
    if name == "focal_loss":
        kwargs = {"gamma": 2.0, "alpha": w}
    else:
        kwargs = {"weight": w, "label_smoothing": smoothing}
    (got,) = torch.autograd.grad(getattr(samplewt_ops, name)(x, y, sample_weight=sw, **kwargs), x)
    (want,) = torch.autograd.grad(getattr(reference, name)(x.double(), y, sample_weight=sw.double(),
                                                           **{k: v.double() if torch.is_tensor(v) else v
                                                              for k, v in kwargs.items()}), x)
    assert got.dtype == dtype
    assert torch.equal(got[::97], torch.zeros_like(got[::97]))
    tol = dict(rtol=1e-5, atol=1e-11) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-9)
    torch.testing.assert_close(got.double(), want.double(), **tol)


def test_sigmoid_losses_agree_bit_for_bit_on_avx2_and_avx512(monkeypatch):
    # Both SIMD paths take exp(-|x|) and its log1p from the same tables and
    # polynomials (csrc/cpu/vec_ops.h), so a machine's choice of instruction
    # set does not change a BCE result.
    x = torch.cat([torch.linspace(-100, 100, 200001), torch.tensor([float("nan"), -float("inf")])])
    t = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    out = []
    for isa in ("AVX2", "AVX512"):
        monkeypatch.setenv("SAMPLEWT_CPU_ISA", isa)
        if OPS.cpu_isa() != isa:
            pytest.skip(f"this CPU has no {isa}")
        xr = x.clone().requires_grad_()
        loss = samplewt_ops.binary_cross_entropy_with_logits(xr, t, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), xr)
        focal = samplewt_ops.sigmoid_focal_loss(x, t, gamma=1.5)
        out.append([loss.detach(), g, focal])
    for a, b in zip(*out):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
