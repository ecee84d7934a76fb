"""The CUDA kernels: every op on CUDA against the CPU op and the reference,
opcheck, float64 gradcheck, the in-place gradient mode, no host-device sync
(sync debug mode "error", CUDA graph capture), validation mode, invalid
targets without validation, and indexing beyond 2^31 elements.

Skipped where there is no GPU or the extension was built without CUDA.
"""
import pytest
import torch

import samplewt_ops
from samplewt_ops import _loader, reference
from samplewt_ops._ops import call
from samples import assert_outputs_close as _assert_outputs_close
from samples import ce_kwargs, elem_kwargs, elem_opcheck_samples, inplace_opcheck_samples, row_kwargs
from samples import ROW_VARIANTS, row_opcheck_samples, strided_row_kwargs, tail, to_device
from samples import spatial_inplace_opcheck_samples, spatial_row_opcheck_samples
from samples import tol as _tol

HAS_CUDA = torch.cuda.is_available() and _loader.has_kernel("cuda")
pytestmark = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device and samplewt_ops built with CUDA kernels"
)

OPS = torch.ops.samplewt_ops
DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROW_OPS = ("cross_entropy", "focal_loss")

# (rows, classes): every kernel regime. Small C (1, 2, 4 or 32 lanes per
# row, one case with more row tiles than the grid), one block per row (one
# case with more rows than the grid), and rows split across blocks (few rows,
# up to 262144 classes).
ROW_SHAPES = [
    (5, 1), (7, 2), (33, 37), (64, 1000), (70000, 10),
    (600, 4000), (3000, 2048),
    (16, 32000), (3, 262144), (1, 262144),
]


@pytest.fixture(autouse=True)
def _validation_default():
    # Each test says what it wants; SAMPLEWT_VALIDATE of the environment must
    # not leak in, and no test leaks its choice out.
    samplewt_ops.set_validation(False)
    yield
    samplewt_ops.set_validation(None)


# ---------------------------------------------------------------------------
# Every op on CUDA against the CPU op


@pytest.mark.parametrize("n,c", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_row_ops_match_cpu(variant, n, c, dtype):
    gen = torch.Generator().manual_seed(n * 7 + c)
    name, kw = row_kwargs(variant, n, c, dtype, gen)
    for reduction in (0, 1, 2):
        full = dict(kw, **tail(reduction, True, True))
        _assert_outputs_close(call(name, **to_device(full, DEV)), call(name, **full), dtype)
    # Forward only: no gradient, no statistics.
    fwd = dict(kw, **tail(1, False, False))
    got = call(name, **to_device(fwd, DEV))
    assert got[1].numel() == 0 and got[2].numel() == 0
    _assert_outputs_close(got[:1], call(name, **fwd)[:1], dtype)


# Samples of every kernel regime: lanes per sample 1/4/32, more sample tiles
# than the grid, and samples chunked over blocks (one and several chunks).
ELEM_SHAPES = [(), (7,), (6, 5), (4, 3, 2), (1000, 80), (70000, 3), (3, 5000), (2, 100000)]


@pytest.mark.parametrize("shape", ELEM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops_match_cpu(shape, dtype):
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    for name, kw in elem_kwargs(shape, dtype, gen):
        for reduction in (0, 1, 2):
            full = dict(kw, **tail(reduction, True, True))
            _assert_outputs_close(call(name, **to_device(full, DEV)), call(name, **full), dtype)
        fwd = dict(kw, **tail(1, False, False))
        _assert_outputs_close(call(name, **to_device(fwd, DEV))[:1], call(name, **fwd)[:1], dtype)


@pytest.mark.parametrize("layout", ["transposed", "padded_aligned", "padded_unaligned", "offset"])
@pytest.mark.parametrize("c", [37, 1000, 4000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_ops_non_contiguous_and_misaligned(layout, c, dtype):
    n = 24
    gen = torch.Generator().manual_seed(c)
    x = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    if layout == "transposed":
        xd = x.t().contiguous().to(DEV).t()
    elif layout == "padded_aligned":
        xd = torch.zeros(n, c + 8, dtype=dtype, device=DEV)[:, :c]
        xd.copy_(x)
    elif layout == "padded_unaligned":
        xd = torch.zeros(n, c + 3, dtype=dtype, device=DEV)[:, :c]
        xd.copy_(x)
    else:  # the data pointer one element past a 16-byte boundary
        xd = torch.zeros(n * c + 1, dtype=dtype, device=DEV)[1:].view(n, c)
        xd.copy_(x)
    for name, rest in strided_row_kwargs(x, gen):
        full = dict(rest, **tail(1, True, True))
        got = call(name, input=xd, **to_device(full, DEV))
        want = call(name, input=x, **full)
        _assert_outputs_close(got, want, dtype)
        # In place: the gradient lands in the view's own memory.
        xi = xd.clone() if layout == "transposed" else xd
        saved = xd.clone()
        loss, stats = call(name, inplace=True, input=xi, **to_device(rest, DEV), reduction=1,
                           compute_stats=True)
        torch.testing.assert_close(xi.cpu(), want[1], **_tol(dtype))
        torch.testing.assert_close(loss.cpu(), want[0], **_tol(dtype))
        xd.copy_(saved)


def test_elementwise_non_contiguous():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 30, generator=gen)
    t = torch.rand(40, 30, generator=gen)
    w = torch.rand(40, 30, generator=gen)
    sw = torch.rand(40, generator=gen)
    xd, td, wd = (a.t().contiguous().to(DEV).t() for a in (x, t, w))
    for name, kw in (
        ("mse_loss", dict(weight=w, sample_weight=sw)),
        ("binary_cross_entropy_with_logits", dict(weight=w, pos_weight=None, sample_weight=sw)),
        ("huber_loss", dict(weight=None, sample_weight=sw, delta=0.5)),
    ):
        kw_d = dict(to_device(kw, DEV), weight=wd if kw["weight"] is not None else None)
        for reduction in (0, 1, 2):
            got = call(name, input=xd, target=td, **kw_d, **tail(reduction, True, True))
            want = call(name, input=x, target=t, **kw, **tail(reduction, True, True))
            _assert_outputs_close(got, want, torch.float32)


def test_cuda_kernels_are_deterministic():
    gen = torch.Generator().manual_seed(0)
    for n, c in ((300, 1000), (600, 4000), (8, 65536)):
        x = torch.randn(n, c, generator=gen).to(DEV)
        y = torch.randint(0, c, (n,), generator=gen).to(DEV)
        sw = torch.rand(n, generator=gen).to(DEV)
        a = call("cross_entropy", **ce_kwargs(x, y, sw, 0.1), **tail(1, True, True))
        b = call("cross_entropy", **ce_kwargs(x, y, sw, 0.1), **tail(1, True, True))
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def test_empty_batches_like_cpu():
    for reduction in (0, 1, 2):
        x = torch.empty(0, 5)
        y = torch.empty(0, dtype=torch.long)
        full = tail(reduction, True, True)
        got = call("cross_entropy", **ce_kwargs(x.to(DEV), y.to(DEV)), **full)
        want = call("cross_entropy", **ce_kwargs(x, y), **full)
        _assert_outputs_close(got, want, torch.float32)
        e = dict(input=torch.empty(0, 4), target=torch.empty(0, 4), weight=None, sample_weight=None)
        got = call("mse_loss", **to_device(e, DEV), **full)
        want = call("mse_loss", **e, **full)
        _assert_outputs_close(got, want, torch.float32)


def test_all_ignored_mean_is_nan_with_zero_gradient():
    x = torch.randn(6, 9, device=DEV)
    y = torch.full((6,), -100, device=DEV)
    loss, grad, _ = call("cross_entropy", **ce_kwargs(x, y), **tail(1, True, False))
    assert torch.isnan(loss).item()
    assert torch.count_nonzero(grad).item() == 0


# ---------------------------------------------------------------------------
# The public functions on CUDA against the reference


def _row_fn_case(variant, c, dtype, n, gen):
    x = (torch.randn(n, c, generator=gen) * 3).to(dtype).to(DEV)
    y = torch.randint(0, c, (n,), generator=gen).to(DEV)
    if n > 2:
        y[0] = -100
    cw = (torch.rand(c, generator=gen) + 0.1).to(DEV)
    sw = torch.rand(n, generator=gen).to(DEV)
    if variant == "ce_index":
        return "cross_entropy", x, y, dict(weight=cw, label_smoothing=0.1, sample_weight=sw)
    if variant == "ce_prob":
        q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(dtype).to(DEV)
        return "cross_entropy", x, q, dict(weight=cw, label_smoothing=0.2, sample_weight=sw)
    return "focal_loss", x, y, dict(gamma=2.0, alpha=cw, sample_weight=sw)


@pytest.mark.parametrize("n,c", [(7, 2), (64, 1000), (600, 4000), (16, 32000), (2, 262144)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["ce_index", "ce_prob", "focal"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_row_functions_match_reference(variant, n, c, dtype, reduction):
    gen = torch.Generator().manual_seed(c + n)
    name, x, t, kw = _row_fn_case(variant, c, dtype, n, gen)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    a = getattr(samplewt_ops, name)(xa, t, reduction=reduction, **kw)
    b = getattr(reference, name)(xb, t, reduction=reduction, **kw)
    (a.sum() if reduction == "none" else a).backward()
    (b.sum() if reduction == "none" else b).backward()
    torch.testing.assert_close(a, b, **_tol(dtype))
    torch.testing.assert_close(xa.grad, xb.grad, **_tol(dtype))


def test_row_functions_nd_and_unbatched_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 3, 5, device=DEV)
    y = torch.randint(0, 7, (4, 3, 5), device=DEV)
    sw = torch.rand(4, device=DEV)
    for fn in (samplewt_ops.cross_entropy, samplewt_ops.focal_loss):
        for reduction in ("none", "mean", "sum"):
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            a = fn(xa, y, sample_weight=sw, reduction=reduction)
            b = getattr(reference, fn.__name__)(xb, y, sample_weight=sw, reduction=reduction)
            torch.testing.assert_close(a, b)
            (a.sum()).backward()
            (b.sum()).backward()
            torch.testing.assert_close(xa.grad, xb.grad)
    v = torch.randn(11, device=DEV, requires_grad=True)
    a = samplewt_ops.cross_entropy(v, torch.tensor(3, device=DEV), sample_weight=torch.tensor(2.0, device=DEV))
    b = reference.cross_entropy(v.detach(), torch.tensor(3, device=DEV), sample_weight=torch.tensor(2.0, device=DEV))
    torch.testing.assert_close(a, b)


ELEM_FNS = [
    ("sigmoid_focal_loss", dict(alpha=0.25, gamma=2.0)),
    ("sigmoid_focal_loss", dict(alpha=-1.0, gamma=0.5)),
    ("binary_cross_entropy_with_logits", dict(pos_weight="row")),
    ("binary_cross_entropy_with_logits", dict(weight="full")),
    ("mse_loss", dict(weight="full")),
    ("mse_loss", dict()),
    ("l1_loss", dict(weight="full")),
    ("huber_loss", dict(delta=0.5, weight="full")),
]


@pytest.mark.parametrize("shape", [(7,), (16, 80), (3, 5000), (2, 100000)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(ELEM_FNS)))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_elementwise_functions_match_reference(case, shape, dtype, reduction):
    name, kw = ELEM_FNS[case]
    gen = torch.Generator().manual_seed(case + sum(shape))
    x = (torch.randn(shape, generator=gen) * 2).to(dtype).to(DEV)
    t = torch.rand(shape, generator=gen).to(dtype).to(DEV)
    sw = torch.rand(shape[0], generator=gen).to(DEV)
    kw = dict(kw)
    for key in ("weight", "pos_weight"):
        if kw.get(key) == "full":
            kw[key] = torch.rand(shape, generator=gen).to(dtype).to(DEV)
        elif kw.get(key) == "row":
            kw[key] = (torch.rand(shape[-1:], generator=gen) * 3).to(dtype).to(DEV)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    a = getattr(samplewt_ops, name)(xa, t, sample_weight=sw, reduction=reduction, **kw)
    b = getattr(reference, name)(xb, t, sample_weight=sw, reduction=reduction, **kw)
    (a.sum() if reduction == "none" else a).backward()
    (b.sum() if reduction == "none" else b).backward()
    torch.testing.assert_close(a, b, **_tol(dtype))
    torch.testing.assert_close(xa.grad, xb.grad, **_tol(dtype))


# ---------------------------------------------------------------------------
# opcheck and gradcheck


def _cuda_opcheck_samples():
    yield from row_opcheck_samples(torch.Generator().manual_seed(0), (torch.float32, torch.bfloat16),
                                   ((5, 1), (9, 37), (3, 1300), (4, 20000)), device=DEV, plain=False)
    yield from spatial_row_opcheck_samples(torch.Generator().manual_seed(3), (torch.float32,), device=DEV)
    yield from elem_opcheck_samples(torch.Generator().manual_seed(1), (torch.float32,),
                                    ((6, 5), (4, 3, 2), (7,), (2, 9000)), device=DEV)


@pytest.mark.parametrize("name,args", list(_cuda_opcheck_samples()) if HAS_CUDA else [])
def test_opcheck_cuda(name, args):
    torch.library.opcheck(getattr(OPS, name), args)


def test_opcheck_inplace_ops_cuda():
    x = torch.randn(6, 11, device=DEV)
    y = torch.randint(0, 11, (6,), device=DEV)
    sw = torch.rand(6, device=DEV)
    for name, args in inplace_opcheck_samples(x, y, sw):
        torch.library.opcheck(getattr(OPS, name), args, test_utils=("test_schema", "test_faketensor"))
    for name, args in spatial_inplace_opcheck_samples(torch.Generator().manual_seed(4), device=DEV):
        torch.library.opcheck(getattr(OPS, name), args, test_utils=("test_schema", "test_faketensor"))


def _gradcheck_cases():
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, device=DEV)
    y = torch.tensor([1, 0, 4, -100, 2], device=DEV)
    cw = torch.rand(5, **d) + 0.1
    sw = torch.rand(5, **d)
    q = torch.softmax(torch.randn(5, 5, **d), 1)
    t = torch.rand(5, 4, **d)
    w = torch.rand(5, 4, **d)
    pw = torch.rand(4, **d) * 3
    sw4 = torch.rand(5, **d)
    for red in ("mean", "none", "sum"):
        yield (5, 5), lambda x, r=red: samplewt_ops.cross_entropy(
            x, y, cw, sample_weight=sw, label_smoothing=0.1, reduction=r)
        yield (5, 5), lambda x, r=red: samplewt_ops.cross_entropy(
            x, q, cw, sample_weight=sw, label_smoothing=0.2, reduction=r)
        yield (5, 5), lambda x, r=red: samplewt_ops.focal_loss(
            x, y, gamma=2.0, alpha=cw, sample_weight=sw, reduction=r)
        yield (5, 4), lambda x, r=red: samplewt_ops.sigmoid_focal_loss(
            x, t, sample_weight=sw4, reduction=r)
        yield (5, 4), lambda x, r=red: samplewt_ops.binary_cross_entropy_with_logits(
            x, t, w, pos_weight=pw, sample_weight=sw4, reduction=r)
        yield (5, 4), lambda x, r=red: samplewt_ops.mse_loss(
            x, t, weight=w, sample_weight=sw4, reduction=r)
        yield (5, 4), lambda x, r=red: samplewt_ops.l1_loss(x, t, sample_weight=sw4, reduction=r)
        yield (5, 4), lambda x, r=red: samplewt_ops.huber_loss(
            x, t, delta=0.3, weight=w, sample_weight=sw4, reduction=r)


def test_gradcheck_float64_cuda():
    for shape, fn in _gradcheck_cases():
        x = torch.randn(shape, dtype=torch.float64, device=DEV, requires_grad=True)
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------
# inplace_grad


@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,c", [(12, 300), (600, 4000), (12, 32000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_grad_matches_default_cuda(fn, reduction, n, c, dtype):
    torch.manual_seed(0)
    base = torch.randn(n, 64, device=DEV, dtype=dtype)
    y = torch.randint(0, c, (n,), device=DEV)
    y[3] = -100
    sw = torch.rand(n, device=DEV)
    lin = torch.nn.Linear(64, c, device=DEV, dtype=dtype)
    grads, losses = [], []
    for inplace in (False, True):
        lin.zero_grad()
        logits = lin(base) * 4  # non-leaf, as in training
        loss = fn(logits, y, sample_weight=sw, reduction=reduction, inplace_grad=inplace)
        losses.append(loss.detach().clone())
        (loss.sum() if reduction == "none" else loss * 1.5).backward()
        grads.append(lin.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1], **_tol(dtype))
    torch.testing.assert_close(grads[0], grads[1], **_tol(dtype))


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "sigmoid_focal_loss", "mse_loss"])
@pytest.mark.parametrize("c", [128, 130])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_output", ["one", "scalar", "rows"])
@pytest.mark.parametrize("inplace", [False, True])
def test_backward_scales_by_grad_output_on_the_device(name, c, dtype, grad_output, inplace):
    # The backward's scaling kernel (grad_scale.cu): a grad_output of 1 is
    # skipped on the device, another scalar or one per row multiplies.
    if inplace and name not in ROW_OPS:
        pytest.skip("inplace_grad is a softmax-loss option")
    gen = torch.Generator().manual_seed(c)
    n = 300
    x = (torch.randn(n, c, generator=gen) * 2).to(dtype).to(DEV)
    if name in ROW_OPS:
        t = torch.randint(0, c, (n,), generator=gen).to(DEV)
    else:
        t = torch.rand(n, c, generator=gen).to(dtype).to(DEV)
    sw = torch.rand(n, generator=gen).to(DEV)
    reduction = "none" if grad_output == "rows" else "mean"
    g = {"one": torch.ones((), device=DEV, dtype=dtype),
         "scalar": torch.tensor(-2.5, device=DEV, dtype=dtype),
         "rows": (torch.randn(n, generator=gen) * 3).to(dtype).to(DEV)}[grad_output]
    if grad_output == "rows" and name not in ROW_OPS:
        g = (torch.randn(n, c, generator=gen) * 3).to(dtype).to(DEV)
    kw = dict(inplace_grad=True) if inplace else {}
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = getattr(samplewt_ops, name)(xa * 1.0 if inplace else xa, t, sample_weight=sw,
                                    reduction=reduction, **kw)
    b = getattr(reference, name)(xb, t, sample_weight=sw, reduction=reduction)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **_tol(dtype))


def test_linear_loss_backward_scales_by_grad_output_on_the_device():
    torch.manual_seed(0)
    h = torch.randn(64, 32, device=DEV)
    w = torch.randn(500, 32, device=DEV)
    y = torch.randint(0, 500, (64,), device=DEV)
    grads = []
    for fn in (samplewt_ops.linear_cross_entropy,
               lambda h, w, y: torch.nn.functional.cross_entropy(h @ w.t(), y)):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        fn(hh, ww, y).backward(torch.tensor(3.0, device=DEV))
        grads.append((hh.grad, ww.grad))
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------
# No host-device synchronisation


def _sync_free_cases():
    """(input, loss function, inplace) triples covering every op."""
    torch.manual_seed(0)
    n, c = 64, 1000
    x = torch.randn(n, c, device=DEV)
    y = torch.randint(0, c, (n,), device=DEV)
    y[0] = -100
    cw = torch.rand(c, device=DEV)
    sw = torch.rand(n, device=DEV)
    q = torch.softmax(torch.randn(n, c, device=DEV), 1)
    e = torch.randn(n, 80, device=DEV)
    t = (torch.rand(n, 80, device=DEV) < 0.2).float()
    w = torch.rand(n, 80, device=DEV)
    pw = torch.rand(80, device=DEV) * 3
    big = torch.randn(4, 65536, device=DEV)  # rows split across blocks
    yb = torch.randint(0, 65536, (4,), device=DEV)
    return [
        (x, lambda v: samplewt_ops.cross_entropy(v, y, cw, sample_weight=sw, label_smoothing=0.1), False),
        (x, lambda v: samplewt_ops.cross_entropy(v, y, sample_weight=sw, inplace_grad=True), True),
        (x, lambda v: samplewt_ops.cross_entropy(v, q, sample_weight=sw), False),
        (x, lambda v: samplewt_ops.focal_loss(v, y, gamma=2.0, alpha=0.25, sample_weight=sw), False),
        (x, lambda v: samplewt_ops.focal_loss(v, y, gamma=2.0, inplace_grad=True), True),
        (big, lambda v: samplewt_ops.cross_entropy(v, yb, sample_weight=sw[:4]), False),
        (e, lambda v: samplewt_ops.sigmoid_focal_loss(v, t, sample_weight=sw, reduction="mean"), False),
        (e, lambda v: samplewt_ops.binary_cross_entropy_with_logits(
            v, t, w, pos_weight=pw, sample_weight=sw), False),
        (e, lambda v: samplewt_ops.mse_loss(v, t, weight=w, sample_weight=sw), False),
        (e, lambda v: samplewt_ops.l1_loss(v, t, sample_weight=sw), False),
        (e, lambda v: samplewt_ops.huber_loss(v, t, delta=0.5, sample_weight=sw), False),
    ]


def _run_case(x, fn, inplace):
    leaf = x.clone().requires_grad_()
    # inplace_grad consumes its input, so it gets a non-leaf one.
    fn(leaf * 1.0 if inplace else leaf).backward()
    return leaf.grad


def test_forward_backward_without_sync():
    cases = _sync_free_cases()
    # Warm up outside the checked region (allocator, lazy init, module loads).
    for case in cases:
        _run_case(*case)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        grads = [_run_case(*case) for case in cases]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("which", ["cross_entropy", "focal_loss", "sigmoid_focal_loss", "mse_loss"])
def test_forward_backward_in_cuda_graph(which):
    torch.manual_seed(0)
    n, c = 48, 777
    if which in ROW_OPS:
        x = torch.randn(n, c, device=DEV, requires_grad=True)
        t = torch.randint(0, c, (n,), device=DEV)
        kw = dict(label_smoothing=0.1) if which == "cross_entropy" else dict(gamma=2.0)
    else:
        x = torch.randn(n, c, device=DEV, requires_grad=True)
        t = torch.rand(n, c, device=DEV)
        kw = dict(reduction="mean") if which == "sigmoid_focal_loss" else {}
    sw = torch.rand(n, device=DEV)
    fn = getattr(samplewt_ops, which)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            fn(x, t, sample_weight=sw, **kw).backward()
    torch.cuda.current_stream().wait_stream(side)

    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = fn(x, t, sample_weight=sw, **kw)
        static_loss.backward()

    # New data in the captured buffers, then replay.
    with torch.no_grad():
        x.copy_(torch.randn(n, c, device=DEV) * 2)
        t.copy_(torch.randint(0, c, (n,), device=DEV) if which in ROW_OPS else torch.rand(n, c, device=DEV))
        sw.copy_(torch.rand(n, device=DEV))
    graph.replay()
    torch.cuda.synchronize()

    xr = x.detach().clone().requires_grad_()
    want = getattr(reference, which)(xr, t, sample_weight=sw, **kw)
    want.backward()
    torch.testing.assert_close(static_loss, want.detach())
    torch.testing.assert_close(x.grad, xr.grad)


# ---------------------------------------------------------------------------
# Validation mode and invalid values


def _error(fn, *args, **kw):
    with pytest.raises((ValueError, IndexError, TypeError, RuntimeError)) as info:
        fn(*args, **kw)
    return info.type, str(info.value)


def test_validation_mode_raises_like_cpu():
    # The same exception type as on the CPU, naming the same argument. (The
    # CPU op checks values in its C++ pre-pass; on CUDA, validation mode
    # checks them in Python, so the wording may differ.)
    samplewt_ops.set_validation(True)
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 7, 2, -100, 3])
    y_neg = torch.tensor([0, 1, -3, 2, -100, 3])
    sw_bad = torch.tensor([1.0, -2.0, 1.0, 1.0, 1.0, 1.0])
    sw_nan = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    sw_inf = torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0, 1.0])
    y_ok = torch.tensor([0, 1, 4, 2, -100, 3])
    e = torch.randn(6, 3)
    cases = [
        (samplewt_ops.cross_entropy, (x, y), {}, "target"),
        (samplewt_ops.cross_entropy, (x, y_neg), {}, "target"),
        (samplewt_ops.focal_loss, (x, y), {}, "target"),
        (samplewt_ops.cross_entropy, (x, y_ok), dict(sample_weight=sw_bad), "sample_weight"),
        (samplewt_ops.focal_loss, (x, y_ok), dict(sample_weight=sw_nan), "sample_weight"),
        (samplewt_ops.mse_loss, (e, e), dict(sample_weight=sw_bad), "sample_weight"),
        (samplewt_ops.sigmoid_focal_loss, (e, e.sigmoid()), dict(sample_weight=sw_nan), "sample_weight"),
        (samplewt_ops.binary_cross_entropy_with_logits, (e, e.sigmoid()), dict(sample_weight=sw_inf),
         "sample_weight"),
    ]
    for fn, args, kw, arg in cases:
        cpu_type, cpu_msg = _error(fn, *args, **kw)
        cuda_type, cuda_msg = _error(fn, *(a.to(DEV) for a in args), **to_device(kw, DEV))
        assert cuda_type is cpu_type, (fn.__name__, cpu_msg, cuda_msg)
        assert arg in cpu_msg and arg in cuda_msg, (cpu_msg, cuda_msg)


def test_validation_off_by_default_costs_no_sync():
    # Without validation mode, invalid values reach the kernels unchecked.
    samplewt_ops.set_validation(False)
    x = torch.randn(6, 5, device=DEV)
    y = torch.tensor([0, 1, 7, 2, -100, 3], device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = samplewt_ops.cross_entropy(x, y, sample_weight=-torch.ones(6, device=DEV))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isnan(loss).item()


@pytest.mark.parametrize("n,c", [(9, 37), (600, 4000), (6, 65536)])
@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
def test_invalid_target_without_validation_is_nan_not_a_crash(fn, n, c):
    samplewt_ops.set_validation(False)
    torch.manual_seed(0)
    x = torch.randn(n, c, device=DEV)
    y = torch.randint(0, c, (n,), device=DEV)
    y[1] = c + 5
    y[2] = -7
    y[3] = -100
    sw = torch.rand(n, device=DEV)
    kw = dict(weight=torch.rand(c, device=DEV)) if fn is samplewt_ops.cross_entropy else {}
    per = fn(x, y, sample_weight=sw, reduction="none", **kw)
    torch.cuda.synchronize()
    assert torch.isnan(per[1]) and torch.isnan(per[2])
    assert per[3].item() == 0.0
    ok = torch.ones(n, dtype=torch.bool, device=DEV)
    ok[1:3] = False
    want = getattr(reference, fn.__name__)(x, y, sample_weight=sw, reduction="none", **kw)
    torch.testing.assert_close(per[ok], want[ok])
    # The mean is NaN; the invalid rows' gradient is zero, the others as in
    # the reference (whose denominator counts the invalid rows the same way).
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    loss = fn(xa, y, sample_weight=sw, **kw)
    loss.backward()
    ref = getattr(reference, fn.__name__)(xb, y, sample_weight=sw, **kw)
    ref.backward()
    torch.cuda.synchronize()
    assert torch.isnan(loss) and torch.isnan(ref)
    assert torch.count_nonzero(xa.grad[1:3]).item() == 0
    torch.testing.assert_close(xa.grad, xb.grad)
    # The device is still healthy.
    assert torch.isfinite((x * 2).sum()).item()


# ---------------------------------------------------------------------------
# More than 2^31 elements


def _big_memory_ok():
    return HAS_CUDA and torch.cuda.get_device_properties(0).total_memory >= 40e9


@pytest.mark.skipif(not _big_memory_ok(), reason="needs a GPU with >= 40 GB")
def test_big_index_bfloat16_beyond_2_pow_31():
    n, c = 18432, 131072  # n * c = 2.4e9 > 2^31
    torch.manual_seed(0)
    x = torch.randn(n, c, device=DEV, dtype=torch.bfloat16)
    y = torch.randint(0, c, (n,), device=DEV)
    sw = torch.rand(n, device=DEV)
    rows = [0, 1, 16383, 16384, 16385, n - 2, n - 1]  # row 16384 starts at 2^31

    # Float reference, in chunks of rows.
    per_row = torch.empty(n, device=DEV)
    for i in range(0, n, 1024):
        xf = x[i:i + 1024].float()
        per_row[i:i + 1024] = torch.logsumexp(xf, 1) - xf.gather(1, y[i:i + 1024, None]).squeeze(1)
    want_mean = (sw * per_row).sum() / sw.sum()
    xs = x[rows].float()
    want_rows = torch.softmax(xs, 1)
    want_rows[torch.arange(len(rows)), y[rows]] -= 1.0

    loss, grad, stats = call("cross_entropy", **ce_kwargs(x, y, sw), **tail(1, True, True))
    torch.testing.assert_close(loss.float(), want_mean, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(stats[:, 0], per_row, atol=2e-2, rtol=1e-2)
    scale = (sw[rows] / sw.sum())[:, None]
    torch.testing.assert_close(grad[rows].float() / scale, want_rows, atol=1e-3, rtol=2e-2)
    del grad

    loss_none, _, _ = call("cross_entropy", **ce_kwargs(x, y, sw), **tail(0, False, False))
    torch.testing.assert_close(loss_none.float(), (sw * per_row), atol=5e-2, rtol=1e-2)

    # In place: the gradient overwrites the logits.
    loss_i, _ = call("cross_entropy", inplace=True, **ce_kwargs(x, y, sw), reduction=1, compute_stats=False)
    torch.testing.assert_close(loss_i.float(), want_mean, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(x[rows].float() / scale, want_rows, atol=1e-3, rtol=2e-2)


# ---------------------------------------------------------------------------
# The adaptive table inside the op on CUDA: the same table as the CPU op, no
# host sync, capturable in a CUDA graph.


def _table_policies():
    from samplewt_ops.weights import GHM, OHEM, GradNormEMA, LossEMA, SelfPaced, SmallLoss
    return [LossEMA(momentum=0.7), GradNormEMA(), SelfPaced(1.5), SelfPaced(2.0, soft=True),
            OHEM(0.6), GHM(bins=6), SmallLoss(0.3, ramp_epochs=0)]


@pytest.mark.parametrize("policy", _table_policies(), ids=lambda p: repr(p))
@pytest.mark.parametrize("which", ["cross_entropy", "sigmoid_focal_loss"])
def test_table_step_matches_cpu_and_never_syncs(policy, which):
    from samplewt_ops.weights import AdaptiveWeights
    torch.manual_seed(1)
    n, c, size = 300, 17, 1000
    cpu_table = AdaptiveWeights(size, policy)
    dev_table = AdaptiveWeights(size, policy, device=DEV)
    fn = getattr(samplewt_ops, which)
    kw = dict(reduction="mean") if which == "sigmoid_focal_loss" else {}
    for step in range(4):
        x = torch.randn(n, c) * 2
        t = torch.randint(0, c, (n,)) if which in ROW_OPS else (torch.rand(n, c) < 0.3).float()
        idx = torch.randint(0, size, (n,))
        xc = x.clone().requires_grad_(True)
        fn(xc, t, table=cpu_table, indices=idx, **kw).backward()
        xd = x.to(DEV).requires_grad_(True)
        td, idxd = t.to(DEV), idx.to(DEV)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = fn(xd, td, table=dev_table, indices=idxd, **kw)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.testing.assert_close(xd.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dev_table.ema.cpu(), cpu_table.ema, rtol=1e-5, atol=1e-6)
        assert torch.equal(dev_table.seen_count.cpu(), cpu_table.seen_count)
        if step == 1:
            cpu_table.step_epoch()
            dev_table.step_epoch()


def test_table_step_in_cuda_graph():
    from samplewt_ops.weights import AdaptiveWeights, LossEMA
    torch.manual_seed(2)
    n, c, size = 64, 33, 500
    table = AdaptiveWeights(size, LossEMA(momentum=0.5), device=DEV)
    x = torch.randn(n, c, device=DEV, requires_grad=True)
    t = torch.randint(0, c, (n,), device=DEV)
    idx = torch.randperm(size, device=DEV)[:n]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            x.grad = None
            samplewt_ops.cross_entropy(x, t, table=table, indices=idx).backward()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = samplewt_ops.cross_entropy(x, t, table=table, indices=idx)
        static_loss.backward()
    before = table.seen_count.clone()
    graph.replay()
    torch.cuda.synchronize()
    # each replay is one step: the batch's samples are observed once more
    assert torch.equal(table.seen_count - before, torch.zeros_like(before).index_fill_(0, idx, 1))
    assert bool(torch.isfinite(static_loss))
