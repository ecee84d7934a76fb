"""samplewt_ops.linear_cross_entropy / linear_focal_loss (issue 13): the fused,
chunked loss of input @ linear_weight.T + linear_bias against the same loss
of the materialised logits, in value and in the gradients of input,
linear_weight and linear_bias; the ops themselves (opcheck, torch.compile),
their memory and their errors."""
import math

import pytest
import torch
import torch.nn.functional as TF

import samplewt_ops
from samplewt_ops import _loader
from samplewt_ops.linear import materialised_loss

OPS = torch.ops.samplewt_ops
compiled = pytest.mark.skipif(not _loader.has_kernel("cpu"), reason="no compiled CPU kernel")


# ---------------------------------------------------------------------------
# The expected loss, written out here from samplewt_ops.cross_entropy /
# focal_loss of the full logits (independent of the library's own fallback).


def expected(x, W, y, *, b=None, cw=None, sw=None, ignore_index=-100, reduction="mean", ls=0.0,
             z=0.0, cap=None, focal=False, gamma=2.0):
    d = x.shape[-1]
    shape = y.shape
    x2, y2 = x.reshape(-1, d), y.reshape(-1)
    sw2 = None if sw is None else sw.reshape(-1)
    logits = x2 @ W.T
    if b is not None:
        logits = logits + b
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    if focal:
        rows = samplewt_ops.focal_loss(logits, y2, alpha=cw, sample_weight=sw2, gamma=gamma,
                                       ignore_index=ignore_index, reduction="none")
    else:
        rows = samplewt_ops.cross_entropy(logits, y2, weight=cw, sample_weight=sw2, label_smoothing=ls,
                                          ignore_index=ignore_index, reduction="none")
    keep = (y2 != ignore_index).to(rows.dtype)
    w = keep if sw2 is None else keep * sw2
    cwy = torch.ones_like(w) if cw is None else cw.to(rows.dtype)[torch.where(y2 == ignore_index, 0, y2)]
    denom = (w if focal else w * cwy).sum()
    lse = torch.logsumexp(logits.to(torch.float64), 1).to(rows.dtype)
    rows = rows + z * w * cwy * lse * lse
    if reduction == "none":
        return rows.reshape(shape)
    return rows.sum() if reduction == "sum" else rows.sum() / denom


def make(n, d, v, dtype=torch.float64, *, seed=0, bias=True, cw=False, sw=False, ignore=False,
         shape=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*(shape or (n,)), d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    W = (torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d) * 2).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.5).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, tuple(shape or (n,)), generator=g)
    if ignore:
        y.view(-1)[::4] = -100
    c = (torch.rand(v, generator=g, dtype=torch.float64) + 0.2).to(dtype) if cw else None
    s = torch.rand(tuple(shape or (n,)), generator=g, dtype=torch.float64).to(dtype) if sw else None
    return x, W, b, y, c, s


def grads(loss, tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(loss.shape, generator=g, dtype=torch.float64).to(loss.device, loss.dtype)
    ts = [t for t in tensors if t is not None]
    return loss.detach(), torch.autograd.grad((loss * go).sum(), ts)


def assert_same(got, want, **tol):
    (l1, g1), (l2, g2) = got, want
    torch.testing.assert_close(l1, l2, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)


TIGHT = dict(atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------------------
# Values and gradients against the materialised loss (float64)


SHAPES = [  # n, d, v, chunk_size
    (37, 8, 29, 5),      # N not a multiple of the chunk
    (9, 4, 17, 1),       # chunk_size 1; V not a multiple of any vector width
    (16, 8, 33, 16),     # one chunk exactly
    (20, 3, 7, None),    # the default chunk (all rows)
    (5, 6, 1, 2),        # one class
]


@compiled
@pytest.mark.parametrize("n,d,v,chunk", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("focal", [False, True], ids=["ce", "focal"])
def test_shapes_match_materialised(n, d, v, chunk, reduction, focal):
    x, W, b, y, cw, sw = make(n, d, v, sw=True)
    kw = dict(linear_bias=b, sample_weight=sw, reduction=reduction, chunk_size=chunk)
    fn = samplewt_ops.linear_focal_loss if focal else samplewt_ops.linear_cross_entropy
    got = grads(fn(x, W, y, **kw), (x, W, b))
    want = grads(expected(x, W, y, b=b, sw=sw, reduction=reduction, focal=focal), (x, W, b))
    assert_same(got, want, **TIGHT)


OPTIONS = {
    "plain": dict(),
    "no_bias": dict(bias=False),
    "class_weight": dict(cw=True),
    "sample_weight": dict(sw=True),
    "ignore_index": dict(ignore=True, sw=True),
    "label_smoothing": dict(ls=0.1, cw=True, ignore=True),
    "softcap": dict(cap=1.5, sw=True),
    "z_loss": dict(z=1e-2, sw=True, cw=True, ignore=True),
    "all": dict(cap=2.0, z=0.05, sw=True, cw=True, ignore=True, ls=0.2),
}


@compiled
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_match_materialised(option, reduction):
    o = dict(OPTIONS[option])
    ls, z, cap = o.pop("ls", 0.0), o.pop("z", 0.0), o.pop("cap", None)
    x, W, b, y, cw, sw = make(23, 6, 19, **o)
    got = grads(samplewt_ops.linear_cross_entropy(
        x, W, y, linear_bias=b, weight=cw, sample_weight=sw, reduction=reduction, label_smoothing=ls,
        z_loss=z, softcap=cap, chunk_size=4), (x, W, b))
    want = grads(expected(x, W, y, b=b, cw=cw, sw=sw, reduction=reduction, ls=ls, z=z, cap=cap), (x, W, b))
    assert_same(got, want, **TIGHT)


@compiled
@pytest.mark.parametrize("option", ["plain", "class_weight", "ignore_index", "softcap", "z_loss", "all"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_focal_options_match_materialised(option, reduction):
    o = dict(OPTIONS[option])
    o.pop("ls", None)
    z, cap = o.pop("z", 0.0), o.pop("cap", None)
    x, W, b, y, alpha, sw = make(21, 5, 13, **o)
    got = grads(samplewt_ops.linear_focal_loss(
        x, W, y, gamma=1.5, alpha=alpha, linear_bias=b, sample_weight=sw, reduction=reduction,
        z_loss=z, softcap=cap, chunk_size=6), (x, W, b))
    want = grads(expected(x, W, y, b=b, cw=alpha, sw=sw, reduction=reduction, z=z, cap=cap, focal=True,
                          gamma=1.5), (x, W, b))
    assert_same(got, want, **TIGHT)


@compiled
def test_focal_float_alpha_and_gamma_zero_is_cross_entropy():
    x, W, b, y, _, sw = make(12, 4, 9, sw=True)
    got = samplewt_ops.linear_focal_loss(x, W, y, gamma=0.0, linear_bias=b, sample_weight=sw)
    want = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, sample_weight=sw)
    torch.testing.assert_close(got, want, **TIGHT)
    a = samplewt_ops.linear_focal_loss(x, W, y, alpha=0.25, linear_bias=b, reduction="sum")
    torch.testing.assert_close(a, 0.25 * samplewt_ops.linear_focal_loss(x, W, y, linear_bias=b, reduction="sum"),
                               **TIGHT)


@compiled
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_batch_time_input(reduction):
    x, W, b, y, cw, sw = make(0, 8, 31, shape=(3, 7), sw=True, cw=True, ignore=True)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, sample_weight=sw,
                                             reduction=reduction, z_loss=1e-3, chunk_size=4)
    if reduction == "none":
        assert loss.shape == (3, 7)
    got = grads(loss, (x, W, b))
    want = grads(expected(x, W, y, b=b, cw=cw, sw=sw, reduction=reduction, z=1e-3), (x, W, b))
    assert_same(got, want, **TIGHT)
    assert got[1][0].shape == x.shape


@compiled
def test_materialised_fallback_matches():
    # The reference path used where no kernel is built.
    x, W, b, y, cw, sw = make(14, 5, 11, sw=True, cw=True, ignore=True)
    for focal in (False, True):
        kw = dict(linear_bias=b, class_weight=cw, sample_weight=sw, z_loss=0.02, softcap=3.0, focal=focal)
        got = grads(materialised_loss(x, W, y, **kw), (x, W, b))
        want = grads(expected(x, W, y, b=b, cw=cw, sw=sw, z=0.02, cap=3.0, focal=focal), (x, W, b))
        assert_same(got, want, **TIGHT)


@compiled
def test_all_ignored_mean_is_nan_like_torch():
    x, W, b, y, _, _ = make(6, 4, 5)
    y.fill_(-100)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b)
    assert torch.isnan(loss) and torch.isnan(TF.cross_entropy(x @ W.T + b, y))
    loss.backward()
    assert torch.all(x.grad == 0) and torch.all(W.grad == 0)


# ---------------------------------------------------------------------------
# torch's F.linear_cross_entropy


@compiled
@pytest.mark.skipif(not hasattr(TF, "linear_cross_entropy"), reason="torch has no F.linear_cross_entropy")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", [{}, {"weight": True, "ignore": True, "label_smoothing": 0.1}])
def test_matches_torch_linear_cross_entropy(reduction, extra):
    x, W, b, y, cw, _ = make(19, 8, 23, dtype=torch.float32, cw=extra.get("weight", False),
                             ignore=extra.get("ignore", False))
    ls = extra.get("label_smoothing", 0.0)
    got = grads(samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, reduction=reduction,
                                                  label_smoothing=ls, chunk_size=6), (x, W, b))
    want = grads(TF.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, reduction=reduction,
                                         ignore_index=-100, label_smoothing=ls), (x, W, b))
    assert_same(got, want, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------
# dtypes


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dtypes(dtype, reduction):
    x, W, b, y, cw, sw = make(40, 16, 70, dtype=dtype, sw=True, cw=True, ignore=True)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, sample_weight=sw,
                                             reduction=reduction, z_loss=1e-3, softcap=5.0, chunk_size=16)
    assert loss.dtype == dtype
    got = grads(loss, (x, W, b))
    for t, g in zip((x, W, b), got[1]):
        assert g.dtype == dtype and g.shape == t.shape
    # The same (rounded) inputs, in float64.
    up = [t.detach().double().requires_grad_() for t in (x, W, b)]
    want = grads(expected(up[0], up[1], y, b=up[2], cw=cw.double(), sw=sw.double(), reduction=reduction,
                          z=1e-3, cap=5.0), up)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=3e-2)
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    for a, w in zip(got[1], want[1]):
        torch.testing.assert_close(a.double(), w, **tol)


@compiled
def test_bfloat16_weight_gradient_accumulates_in_float32():
    # Many chunks each adding a small contribution: a bfloat16 accumulator
    # would lose them; the float32 one does not.
    g = torch.Generator().manual_seed(3)
    n, d, v = 512, 4, 6
    x = torch.randn(n, d, generator=g).bfloat16().requires_grad_()
    W = torch.randn(v, d, generator=g).bfloat16().requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    samplewt_ops.linear_cross_entropy(x, W, y, reduction="sum", chunk_size=1).backward()
    Wd = W.detach().double().requires_grad_()
    TF.cross_entropy(x.detach().double() @ Wd.T, y, reduction="sum").backward()
    torch.testing.assert_close(W.grad.double(), Wd.grad, atol=0.05, rtol=1e-2)


# ---------------------------------------------------------------------------
# Autograd


@compiled
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("focal", [False, True], ids=["ce", "focal"])
def test_gradcheck_float64(reduction, focal):
    x, W, b, y, cw, sw = make(7, 3, 5, sw=True, cw=True, ignore=True)
    fn = samplewt_ops.linear_focal_loss if focal else samplewt_ops.linear_cross_entropy
    extra = dict(alpha=cw) if focal else dict(weight=cw, label_smoothing=0.1)
    f = lambda x, W, b: fn(x, W, y, linear_bias=b, sample_weight=sw, reduction=reduction, z_loss=0.01,
                           softcap=2.0, chunk_size=3, **extra)
    assert torch.autograd.gradcheck(f, (x, W, b))


@compiled
def test_grad_output_scales_and_second_backward_recomputes():
    x, W, b, y, _, sw = make(11, 4, 9, sw=True)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, sample_weight=sw, chunk_size=4)
    g1 = torch.autograd.grad(loss, (x, W, b), retain_graph=True)   # grad_output 1: handed over
    g2 = torch.autograd.grad(loss, (x, W, b), retain_graph=True)   # recomputed
    g3 = torch.autograd.grad(loss * 3, (x, W, b))
    for a, c, e in zip(g1, g2, g3):
        torch.testing.assert_close(a, c, **TIGHT)
        torch.testing.assert_close(e, 3 * a, **TIGHT)


@compiled
@pytest.mark.parametrize("needs", ["x", "W", "b", "xb", "Wb"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_only_some_arguments_require_grad(needs, reduction):
    x, W, b, y, _, sw = make(10, 4, 7, sw=True)
    for name, t in (("x", x), ("W", W), ("b", b)):
        t.requires_grad_(name in needs)
    want_from = [t for name, t in (("x", x), ("W", W), ("b", b)) if name in needs]
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, sample_weight=sw, reduction=reduction,
                                             chunk_size=3)
    got = grads(loss, want_from)
    want = grads(expected(x, W, y, b=b, sw=sw, reduction=reduction), want_from)
    assert_same(got, want, **TIGHT)


@compiled
def test_frozen_head_or_input_skips_its_matmul():
    x, W, b, y, _, _ = make(40, 4, 9, bias=False)
    call = lambda: samplewt_ops.linear_cross_entropy(x, W, y, chunk_size=10)
    W.requires_grad_(False)
    assert _matmuls(call) == 8   # logits and grad_input per chunk, no grad_linear_weight
    W.requires_grad_(True)
    x.requires_grad_(False)
    assert _matmuls(call) == 8   # logits and grad_linear_weight per chunk, no grad_input


def _matmuls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    return sum(names.count(k) for k in ("aten::mm", "aten::addmm", "aten::addmm_"))


@compiled
def test_no_grad_computes_no_gradient():
    x, W, b, y, _, _ = make(40, 4, 9, bias=False)
    call = lambda: samplewt_ops.linear_cross_entropy(x, W, y, chunk_size=10)
    with torch.no_grad():
        assert _matmuls(call) == 4  # one logits matmul per chunk, nothing else
    assert _matmuls(call) == 12     # plus grad_input and grad_linear_weight per chunk
    with torch.no_grad():
        out = OPS.linear_cross_entropy(x, W, y, None, None, None, -100, 0.0, 0.0, None, 1, 10, False)
    assert all(t.numel() == 0 for t in out[1:])


@compiled
def test_sample_weight_requiring_grad_is_refused():
    x, W, b, y, _, sw = make(5, 3, 4, sw=True)
    with pytest.raises(ValueError, match="sample_weight"):
        samplewt_ops.linear_cross_entropy(x, W, y, sample_weight=sw.requires_grad_())


# ---------------------------------------------------------------------------
# The ops: opcheck, torch.compile


def _op_samples():
    if not _loader.has_kernel("cpu"):
        return []
    out = []
    for dtype in (torch.float32, torch.float64):
        for red in (0, 1, 2):
            x, W, b, y, cw, sw = make(9, 4, 11, dtype=dtype, sw=True, cw=True, ignore=True, seed=red)
            out.append(("linear_cross_entropy",
                        (x, W, y, b, cw, sw, -100, 0.1, 1e-3, 3.0, red, 4, red != 0)))
            out.append(("linear_cross_entropy",
                        (x, W, y, None, None, None, -100, 0.0, 0.0, None, red, None, False)))
            out.append(("linear_focal_loss",
                        (x, W, y, b, cw, sw, 2.0, -100, 1e-3, None, red, 2, red != 0)))
            out.append(("linear_cross_entropy",
                        (x, W, y, b, cw, sw, -100, 0.0, 0.0, 2.0, red, 3, red != 0, 2)))
            out.append(("linear_cross_entropy",
                        (x, W, y, b, None, None, -100, 0.0, 0.0, None, red, 5, True, 5)))
    return out


@compiled
@pytest.mark.parametrize("name,args", _op_samples())
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name), args)


@compiled
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    torch._dynamo.reset()
    x, W, b, y, cw, sw = make(13, 6, 17, dtype=torch.float32, sw=True, cw=True, ignore=True)

    def f(x, W, b, y, sw):
        loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, sample_weight=sw,
                                                 reduction=reduction, z_loss=1e-3, softcap=4.0,
                                                 chunk_size=5)
        return loss.sum()

    got = grads(torch.compile(f, fullgraph=True)(x, W, b, y, sw), (x, W, b))
    want = grads(f(x, W, b, y, sw), (x, W, b))
    assert_same(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Memory: one chunk x V buffer, never N x V


def _peak_bytes(fn):
    """Peak of the CPU allocator's live bytes during fn, from the profiler's
    allocation events (what fn allocates and frees; earlier tensors excluded)."""
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@compiled
def test_peak_memory_is_one_chunk_not_n_by_v():
    n, d, v, chunk = 2048, 16, 4000, 64
    x, W, b, y, _, sw = make(n, d, v, dtype=torch.float32, sw=True)
    fp = 4
    grads_bytes = (n * d + v * d + v) * fp  # the gradients themselves
    small = 64 * 1024 + 16 * n              # O(N) vectors, scalars

    def fused(**kw):
        x.grad = W.grad = b.grad = None
        samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, sample_weight=sw, chunk_size=chunk,
                                          **kw).backward()

    def eager():
        x.grad = W.grad = b.grad = None
        TF.cross_entropy(TF.linear(x, W, b), y).backward()

    buf = chunk * v * fp
    assert _peak_bytes(eager) > n * v * fp          # the measurement sees an N x V buffer
    assert _peak_bytes(fused) < buf + grads_bytes + small
    assert OPS.linear_loss_last_chunk() == (chunk, chunk * v)
    # softcap and z-loss cost a few more chunk-sized temporaries, still no N x V.
    assert _peak_bytes(lambda: fused(z_loss=1e-4, softcap=10.0)) < 4 * buf + grads_bytes + small


@compiled
def test_default_chunk_is_about_32_mb():
    x, W, b, y, _, _ = make(3000, 2, 5000, dtype=torch.float32, bias=False)
    with torch.no_grad():
        samplewt_ops.linear_cross_entropy(x, W, y)
    rows, numel = OPS.linear_loss_last_chunk()
    assert rows == (32 << 20) // (5000 * 4) // 64 * 64 and numel * 4 <= 32 << 20  # 1664 rows
    with torch.no_grad():
        samplewt_ops.linear_cross_entropy(x, torch.randn(300000, 2), y)
    assert OPS.linear_loss_last_chunk()[0] == (32 << 20) // (300000 * 4)  # 27 rows: no rounding
    with torch.no_grad():
        samplewt_ops.linear_cross_entropy(x[:10], W, y[:10])
    assert OPS.linear_loss_last_chunk()[0] == 10  # never more rows than N


# ---------------------------------------------------------------------------
# Modules


@compiled
def test_modules_match_functions():
    x, W, b, y, cw, sw = make(12, 4, 9, sw=True, cw=True, ignore=True)
    m = samplewt_ops.LinearCrossEntropyLoss(weight=cw, label_smoothing=0.1, z_loss=1e-3, softcap=3.0,
                                            chunk_size=5)
    torch.testing.assert_close(
        m(x, W, y, sample_weight=sw, linear_bias=b),
        samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, weight=cw, sample_weight=sw,
                                          label_smoothing=0.1, z_loss=1e-3, softcap=3.0), **TIGHT)
    assert "weight" in dict(m.named_buffers())
    f = samplewt_ops.LinearFocalLoss(gamma=1.0, alpha=cw, reduction="sum")
    torch.testing.assert_close(f(x, W, y, sw), samplewt_ops.linear_focal_loss(
        x, W, y, gamma=1.0, alpha=cw, sample_weight=sw, reduction="sum"), **TIGHT)
    assert "z_loss=0.0" in repr(f)


# ---------------------------------------------------------------------------
# Bad input: Python errors, and the C++ checks of the op itself


def _bad_calls():
    x, W, b, y, cw, sw = make(6, 4, 5, bias=True, cw=True, sw=True)
    x, W, b = x.detach(), W.detach(), b.detach()
    f = samplewt_ops.linear_cross_entropy
    return [
        ("D", lambda: f(x, W[:, :3], y), ValueError, "D="),
        ("bias", lambda: f(x, W, y, linear_bias=b[:4]), ValueError, "linear_bias"),
        ("target_shape", lambda: f(x, W, y[:5]), ValueError, "target"),
        ("target_dtype", lambda: f(x, W, y.float()), TypeError, "target"),
        ("target_range", lambda: f(x, W, torch.tensor([0, 1, 2, 5, 0, 0])), IndexError, "out of bounds"),
        ("target_negative", lambda: f(x, W, torch.tensor([0, -3, 2, 1, 0, 0])), IndexError, "out of bounds"),
        ("sample_weight_neg", lambda: f(x, W, y, sample_weight=-sw), ValueError, "sample_weight"),
        ("sample_weight_shape", lambda: f(x, W, y, sample_weight=sw[:3]), ValueError, "sample_weight"),
        ("weight_neg", lambda: f(x, W, y, weight=-cw), ValueError, "weight"),
        ("weight_shape", lambda: f(x, W, y, weight=cw[:2]), ValueError, "weight"),
        ("chunk_zero", lambda: f(x, W, y, chunk_size=0), ValueError, "chunk_size"),
        ("chunk_neg", lambda: f(x, W, y, chunk_size=-2), ValueError, "chunk_size"),
        ("chunk_type", lambda: f(x, W, y, chunk_size=2.5), TypeError, "chunk_size"),
        ("softcap_zero", lambda: f(x, W, y, softcap=0.0), ValueError, "softcap"),
        ("softcap_neg", lambda: f(x, W, y, softcap=-1.0), ValueError, "softcap"),
        ("z_loss_neg", lambda: f(x, W, y, z_loss=-0.1), ValueError, "z_loss"),
        ("z_loss_nan", lambda: f(x, W, y, z_loss=float("nan")), ValueError, "z_loss"),
        ("reduction", lambda: f(x, W, y, reduction="avg"), ValueError, "reduction"),
        ("dtype", lambda: f(x, W.float(), y), TypeError, "linear_weight"),
        ("input_dim", lambda: f(x[None, None], W, y[None, None]), ValueError, "input"),
        ("input_0d", lambda: f(x[0, 0], W, y[0]), ValueError, "input"),
        ("weight_1d", lambda: f(x, W[0], y), RuntimeError, "linear_weight with dimensionality"),
        ("unbatched_target", lambda: f(x[0], W, y[:1]), ValueError, "0-d target"),
        ("k_dim_unbatched", lambda: f(x[0], W[:, None], y[0]), RuntimeError, "requires batched"),
        ("k_dim_bias", lambda: f(x, W[:, None], y[:, None], linear_bias=b), RuntimeError,
         "linear_bias shape"),
        ("probabilities_ignore_index",
         lambda: f(x, W, torch.softmax(x @ W.T, 1), ignore_index=-100), RuntimeError,
         "ignore_index cannot be specified"),
        ("focal_probabilities",
         lambda: samplewt_ops.linear_focal_loss(x, W, torch.softmax(x @ W.T, 1)), TypeError,
         "class indices"),
        ("options", lambda: f(x, W, y, options={"batch_chunk_size": 2}), TypeError, "options"),
        ("label_smoothing", lambda: f(x, W, y, label_smoothing=1.5), ValueError, "label_smoothing"),
        ("gamma", lambda: samplewt_ops.linear_focal_loss(x, W, y, gamma=-1.0), ValueError, "gamma"),
    ]


@compiled
@pytest.mark.parametrize("name,call,exc,match", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_input_python(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _bad_op_calls():
    x, W, b, y, cw, sw = make(6, 4, 5, bias=True, cw=True, sw=True)
    x, W, b = x.detach(), W.detach(), b.detach()

    def ce(**over):
        a = dict(input=x, linear_weight=W, target=y, linear_bias=b, weight=None, sample_weight=None,
                 ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, reduction=1,
                 chunk_size=None, compute_grad=False)
        a.update(over)
        return lambda: OPS.linear_cross_entropy(*a.values())

    return [
        ("D", ce(linear_weight=W[:, :3]), ValueError, "D=4"),
        ("bias", ce(linear_bias=b[:4]), ValueError, "linear_bias"),
        ("target_shape", ce(target=y[:5]), ValueError, "target"),
        ("target_range", ce(target=torch.tensor([0, 1, 2, 5, 0, 0])), IndexError, "out of bounds"),
        ("sample_weight_neg", ce(sample_weight=-sw), ValueError, "sample_weight"),
        ("weight_neg", ce(weight=-cw), ValueError, "weight"),
        ("chunk_zero", ce(chunk_size=0), ValueError, "chunk_size"),
        ("softcap_zero", ce(softcap=0.0), ValueError, "softcap"),
        ("z_loss_neg", ce(z_loss=-1.0), ValueError, "z_loss"),
        ("dtype", ce(linear_weight=W.float()), TypeError, "linear_weight"),
        ("reduction", ce(reduction=3), ValueError, "reduction"),
    ]


@compiled
@pytest.mark.parametrize("name,call,exc,match", _bad_op_calls(), ids=[c[0] for c in _bad_op_calls()])
def test_bad_input_op(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# Edge cases


@compiled
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_rows(reduction):
    x, W, b, y, _, _ = make(0, 4, 5)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, reduction=reduction)
    want = TF.cross_entropy(x @ W.T + b, y, reduction=reduction)
    torch.testing.assert_close(loss, want, equal_nan=True)
    loss.sum().backward()
    assert x.grad.shape == (0, 4) and torch.all(W.grad == 0) and torch.all(b.grad == 0)


@compiled
def test_strided_inputs_and_int32_target():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64).transpose(0, 1).requires_grad_()  # (6, 4, 3)
    W = torch.randn(3, 7, generator=g, dtype=torch.float64).t().requires_grad_()                 # (7, 3)
    y = torch.randint(0, 7, (6, 4), generator=g).int()
    got = grads(samplewt_ops.linear_cross_entropy(x, W, y, chunk_size=5, z_loss=0.1), (x, W))
    want = grads(expected(x, W, y.long(), z=0.1), (x, W))
    assert_same(got, want, **TIGHT)


@compiled
@pytest.mark.parametrize("cap", [None, 50.0])
def test_large_logits_stay_finite_with_z_loss(cap):
    # Logits of magnitude ~100: the lse of the z-loss must not overflow.
    x, W, b, y, _, _ = make(16, 4, 40, dtype=torch.float32)
    with torch.no_grad():
        W.mul_(60.0)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, z_loss=1e-3, softcap=cap, chunk_size=5)
    got = grads(loss, (x, W, b))
    up = [t.detach().double().requires_grad_() for t in (x, W, b)]
    want = grads(expected(up[0], up[1], y, b=up[2], z=1e-3, cap=cap), up)
    assert torch.isfinite(got[0]) and all(torch.isfinite(g).all() for g in got[1])
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-3, rtol=1e-5)
    for a, w in zip(got[1], want[1]):
        torch.testing.assert_close(a.double(), w, atol=1e-3, rtol=1e-4)


@compiled
def test_reduction_none_backward_twice_and_input_modified():
    x, W, b, y, _, sw = make(9, 3, 6, sw=True)
    loss = samplewt_ops.linear_cross_entropy(x, W, y, linear_bias=b, sample_weight=sw, reduction="none",
                                             chunk_size=4)
    go = torch.linspace(-1, 2, 9, dtype=torch.float64)   # signed grad_output per token
    g1 = torch.autograd.grad(loss, (x, W, b), go, retain_graph=True)
    g2 = torch.autograd.grad(loss, (x, W, b), go, retain_graph=True)
    want = torch.autograd.grad(expected(x, W, y, b=b, sw=sw, reduction="none"), (x, W, b), go)
    for a, c, e in zip(g1, g2, want):
        torch.testing.assert_close(a, c, **TIGHT)
        torch.testing.assert_close(a, e, **TIGHT)
    with torch.no_grad():
        W.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(loss, (x, W, b), go)


# ---------------------------------------------------------------------------
# CUDA (make gpu-check): the same device-generic op on the GPU

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _loader.has_kernel("cuda")),
                          reason="needs a CUDA device and samplewt_ops built with CUDA kernels")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_matches_materialised(dtype, reduction):
    x, W, b, y, cw, sw = make(300, 32, 1003, dtype=dtype, sw=True, cw=True, ignore=True)
    dev = [t.detach().cuda().requires_grad_() for t in (x, W, b)]
    loss = samplewt_ops.linear_cross_entropy(dev[0], dev[1], y.cuda(), linear_bias=dev[2], weight=cw.cuda(),
                                             sample_weight=sw.cuda(), reduction=reduction, z_loss=1e-3,
                                             softcap=20.0, chunk_size=64)
    got = grads(loss, dev)
    up = [t.detach().double().requires_grad_() for t in (x, W, b)]
    want = grads(expected(up[0], up[1], y, b=up[2], cw=cw.double(), sw=sw.double(), reduction=reduction,
                          z=1e-3, cap=20.0), up)
    tol = {torch.float64: TIGHT, torch.float32: dict(atol=1e-4, rtol=1e-3)}.get(dtype, dict(atol=3e-2, rtol=3e-2))
    torch.testing.assert_close(got[0].double().cpu(), want[0], **tol)
    for a, w in zip(got[1], want[1]):
        torch.testing.assert_close(a.double().cpu(), w, **tol)


@cuda
def test_cuda_peak_memory_is_one_chunk():
    n, d, v, chunk = 8192, 64, 32000, 256
    x, W, b, y, _, _ = make(n, d, v, dtype=torch.float32, bias=False)
    x, W, y = x.detach().cuda().requires_grad_(), W.detach().cuda().requires_grad_(), y.cuda()
    samplewt_ops.linear_cross_entropy(x, W, y, chunk_size=chunk).backward()  # warm
    x.grad = W.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    samplewt_ops.linear_cross_entropy(x, W, y, chunk_size=chunk).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 2 * chunk * v * 4 + 3 * (n * d + v * d) * 4 + (1 << 20)
    assert peak < n * v * 4 // 4
