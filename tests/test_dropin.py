"""The drop-in promise, behaviour by behaviour, against torch: dtype
promotion, broadcasting (torch's, with its warning, for the regression
losses; refused, as torch refuses it, for the sigmoid losses), 0-dim and
empty inputs, non-contiguous and expanded tensors, no_grad and inference
mode, and the modules' attributes, repr and state_dict."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import samplewt_ops as so

FLOATS = [torch.float32, torch.float64, torch.bfloat16]


def _bce_target(shape, dtype):
    return torch.rand(shape).to(dtype)


# name -> (ours, torch's, target maker)
ELEMENTWISE = {
    "mse_loss": (so.mse_loss, F.mse_loss, lambda s, d: torch.randn(s).to(d)),
    "l1_loss": (so.l1_loss, F.l1_loss, lambda s, d: torch.randn(s).to(d)),
    "huber_loss": (so.huber_loss, F.huber_loss, lambda s, d: torch.randn(s).to(d)),
    "binary_cross_entropy_with_logits": (so.binary_cross_entropy_with_logits,
                                         F.binary_cross_entropy_with_logits, _bce_target),
}


def _close(a, b, low_precision=False):
    # low_precision: torch rounds an intermediate (its log_softmax, say) to
    # a bfloat16 input's dtype before promoting; this project does not.
    assert a.dtype == b.dtype and a.shape == b.shape
    tol = dict(rtol=2e-2, atol=2e-2) if a.dtype == torch.bfloat16 or low_precision else {}
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("target_dtype", FLOATS)
@pytest.mark.parametrize("input_dtype", FLOATS)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_dtype_promotion_is_torchs(name, input_dtype, target_dtype):
    ours, theirs, make_target = ELEMENTWISE[name]
    x = torch.randn(6, 5).to(input_dtype).requires_grad_()
    t = make_target((6, 5), target_dtype)
    x2 = x.detach().clone().requires_grad_()
    got, want = ours(x, t), theirs(x2, t)
    low = torch.bfloat16 in (input_dtype, target_dtype)
    _close(got, want, low)
    got.backward()
    assert x.grad.dtype == input_dtype
    try:
        want.backward()
    except RuntimeError as e:
        # torch's own backward of mixed dtypes fails in some versions ("Found
        # dtype Double but expected Float": huber_loss in 2.13, mse_loss until
        # pytorch#94086 was fixed); its gradient is d/dx of the same formula.
        assert input_dtype != target_dtype and "dtype" in str(e), e
        x2 = x.detach().clone().requires_grad_()
        theirs(x2, t.to(input_dtype)).backward()
    _close(x.grad, x2.grad, low)


@pytest.mark.parametrize("target_dtype", FLOATS)
@pytest.mark.parametrize("input_dtype", FLOATS)
def test_probability_target_promotion_is_torchs(input_dtype, target_dtype):
    x = torch.randn(6, 5).to(input_dtype)
    q = torch.softmax(torch.randn(6, 5), 1).to(target_dtype)
    _close(so.cross_entropy(x, q), F.cross_entropy(x, q), torch.bfloat16 in (input_dtype, target_dtype))


def test_sigmoid_focal_promotes_like_torchvisions_formula():
    x = torch.randn(6, 5)
    t = torch.rand(6, 5, dtype=torch.float64)
    assert so.sigmoid_focal_loss(x, t, reduction="mean").dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.int16])
def test_integer_class_targets(dtype):
    x = torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 2, 3])
    torch.testing.assert_close(so.cross_entropy(x, y.to(dtype)), F.cross_entropy(x, y))
    torch.testing.assert_close(so.focal_loss(x, y.to(dtype), gamma=0.0), F.cross_entropy(x, y))


REGRESSION = ("mse_loss", "l1_loss", "huber_loss")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shapes", [((4, 3), (3,)), ((4, 1), (4, 3)), ((4, 3), ()), ((3,), (4, 3)),
                                    ((2, 1, 3), (4, 1))])
@pytest.mark.parametrize("name", REGRESSION)
def test_regression_losses_broadcast_as_torchs(name, shapes, reduction):
    # torch broadcasts a target of another shape, with its warning; the loss
    # has the broadcast shape, and both gradients sum over what was broadcast.
    ours, theirs, _ = ELEMENTWISE[name]
    x, t = torch.randn(shapes[0], requires_grad=True), torch.randn(shapes[1], requires_grad=True)
    results = []
    for fn in (ours, theirs):
        xi, ti = x.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
        with pytest.warns(UserWarning) as record:
            out = fn(xi, ti, reduction=reduction)
        out.sum().backward()
        results.append((out, xi.grad, ti.grad, [str(w.message) for w in record]))
    (out, gx, gt, warned), (want, want_gx, want_gt, torch_warned) = results
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(gx, want_gx)
    torch.testing.assert_close(gt, want_gt)
    assert warned == torch_warned


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_losses_take_sample_weight_per_row_of_the_broadcast(name):
    ours = ELEMENTWISE[name][0]
    x, t, w = torch.randn(4, 3), torch.randn(3), torch.rand(4)
    with pytest.warns(UserWarning, match="Please ensure they have the same size"):
        got = ours(x, t, sample_weight=w, reduction="sum")
    torch.testing.assert_close(got, ours(x, t.expand(4, 3), sample_weight=w, reduction="sum"))


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_losses_refuse_what_torch_cannot_broadcast(name):
    ours, theirs, _ = ELEMENTWISE[name]
    x, t = torch.randn(4, 3), torch.randn(4)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError) as torch_error:
        theirs(x, t)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="target") as error:
        ours(x, t)
    assert isinstance(error.value, RuntimeError)
    assert str(error.value).startswith(str(torch_error.value))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_integer_targets_of_regression_losses_as_torchs(name, dtype):
    ours, theirs, _ = ELEMENTWISE[name]
    x, t = torch.randn(6, 5, requires_grad=True), torch.randint(0, 4, (6, 5)).to(dtype)
    got, want = ours(x, t), theirs(x, t)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "sigmoid_focal_loss"])
def test_sigmoid_losses_refuse_another_target_shape_as_torch(name):
    # F.binary_cross_entropy_with_logits (and so torchvision's focal loss) does not broadcast.
    x, t = torch.randn(4, 3), torch.rand(3)
    with pytest.raises(ValueError) as torch_error:
        F.binary_cross_entropy_with_logits(x, t)
    with pytest.raises(ValueError, match="target") as error:
        getattr(so, name)(x, t)
    assert str(error.value).startswith(str(torch_error.value))


def test_huber_delta_infinity_is_half_the_squared_error_as_torchs():
    x, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5) * 10
    got, want = so.huber_loss(x, t, delta=float("inf")), F.huber_loss(x, t, delta=float("inf"))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, 0.5 * F.mse_loss(x, t))
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_bce_weight_and_pos_weight_broadcast_as_torchs():
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    for w in (torch.rand(3), torch.rand(4, 1), torch.rand(1, 3), torch.rand(4, 3)):
        torch.testing.assert_close(so.binary_cross_entropy_with_logits(x, t, w, pos_weight=w),
                                   F.binary_cross_entropy_with_logits(x, t, w, pos_weight=w))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_zero_dim_and_empty(name, reduction):
    ours, theirs, make_target = ELEMENTWISE[name]
    for shape in ((), (0,), (0, 3), (3, 0)):
        x, t = torch.randn(shape), make_target(shape, torch.float32)
        torch.testing.assert_close(ours(x, t, reduction=reduction), theirs(x, t, reduction=reduction),
                                   equal_nan=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_zero_dim_and_empty(reduction):
    cases = [(torch.randn(4), torch.tensor(2)), (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
             (torch.zeros(2, 3, 0), torch.zeros(2, 0, dtype=torch.long)),
             (torch.randn(4), torch.softmax(torch.randn(4), 0))]
    for x, y in cases:
        torch.testing.assert_close(so.cross_entropy(x, y, reduction=reduction),
                                   F.cross_entropy(x, y, reduction=reduction), equal_nan=True)


def test_non_contiguous_and_expanded():
    y = torch.tensor([0, 2, 1, 1])
    for x in (torch.randn(3, 4).t(), torch.randn(1, 3).expand(4, 3), torch.randn(4, 6)[:, ::2],
              torch.randn(4, 3, 2).transpose(0, 2)[0].t()):
        x = x.detach().requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        got, want = so.cross_entropy(x, y), F.cross_entropy(x2, y)
        torch.testing.assert_close(got, want)
        got.backward()
        want.backward()
        torch.testing.assert_close(x.grad, x2.grad)
    t = torch.randn(6, 4)[::2]
    for x in (torch.randn(4, 3).t(), torch.randn(1, 4).expand(3, 4)):
        torch.testing.assert_close(so.mse_loss(x, t), F.mse_loss(x, t))
        torch.testing.assert_close(so.binary_cross_entropy_with_logits(x, t.sigmoid()),
                                   F.binary_cross_entropy_with_logits(x, t.sigmoid()))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode(mode):
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    t = torch.rand(8, 5, requires_grad=True)
    with ctx():
        for got, want in ((so.cross_entropy(x, y), F.cross_entropy(x, y)),
                          (so.mse_loss(x, t), F.mse_loss(x, t)),
                          (so.binary_cross_entropy_with_logits(x, t), F.binary_cross_entropy_with_logits(x, t))):
            torch.testing.assert_close(got, want)
            assert not got.requires_grad and got.grad_fn is None


def test_modules_attributes_repr_and_state_dict():
    cw = torch.rand(5)
    ours, theirs = so.CrossEntropyLoss(weight=cw, label_smoothing=0.1), torch.nn.CrossEntropyLoss(weight=cw, label_smoothing=0.1)
    for attr in ("reduction", "ignore_index", "label_smoothing"):
        assert getattr(ours, attr) == getattr(theirs, attr)
    assert torch.equal(ours.weight, theirs.weight)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}
    x, y = torch.randn(4, 5), torch.tensor([0, 4, 2, 1])
    ours.reduction = theirs.reduction = "none"  # a changed attribute changes the next call
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    assert repr(so.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(so.CrossEntropyLoss(reduction="sum")) == "CrossEntropyLoss(reduction='sum')"
    assert so.MSELoss().reduction == torch.nn.MSELoss().reduction
    assert so.HuberLoss(delta=0.5).delta == torch.nn.HuberLoss(delta=0.5).delta
    m = so.BCEWithLogitsLoss(pos_weight=torch.ones(3)).to(torch.float64)
    assert m.pos_weight.dtype == torch.float64 and m.weight is None


def test_module_reads_every_argument_at_call_time():
    # forward reads the instance's dicts directly: a replaced buffer, a
    # buffer turned into a Parameter, a changed scalar and a subclass's
    # property must all reach the call, as torch's modules read self.<name>.
    x, y = torch.randn(6, 5, requires_grad=True), torch.tensor([0, 4, 2, 1, 3, 3])
    ours = so.CrossEntropyLoss()
    torch.testing.assert_close(ours(x, y), F.cross_entropy(x, y))
    cw = torch.rand(5)
    ours.weight = cw
    ours.label_smoothing = 0.2
    torch.testing.assert_close(ours(x, y), F.cross_entropy(x, y, weight=cw, label_smoothing=0.2))
    ours.weight = torch.nn.Parameter(cw * 2)  # now in _parameters, no longer a buffer
    assert "weight" not in ours._buffers
    got = ours(x, y)
    torch.testing.assert_close(got, F.cross_entropy(x, y, weight=cw * 2, label_smoothing=0.2))

    class Scheduled(so.HuberLoss):
        @property
        def delta(self):
            return 0.25

        @delta.setter
        def delta(self, value):
            pass

    t = torch.randn(6, 5)
    torch.testing.assert_close(Scheduled()(x, t), F.huber_loss(x, t, delta=0.25))
    m = so.MSELoss(reduction="sum")
    torch.testing.assert_close(m(x, t), F.mse_loss(x, t, reduction="sum"))
    m.reduction = "none"
    torch.testing.assert_close(m(x, t), F.mse_loss(x, t, reduction="none"))


def _assert_bit_for_bit_at_edges(ours, theirs, edges, dtype):
    """ours(x, t, reduction) against theirs at the differences d = x - t in
    `edges` and over a spread (every vector width's full and partial vectors):
    torch's own loss and gradient values and NaNs, elementwise and under sum,
    and -0 where torch gives -0."""
    d = torch.cat([torch.tensor(edges, dtype=torch.float64),
                   torch.linspace(-3, 3, 1001, dtype=torch.float64)]).to(dtype)
    t = torch.linspace(-0.5, 0.5, d.numel(), dtype=dtype)
    x = (d + t).detach()
    x[: len(edges)] = d[: len(edges)]
    t = t.clone()
    t[: len(edges)] = 0.0
    for reduction in ("none", "sum"):
        mine = x.clone().requires_grad_()
        theirs_x = x.clone().requires_grad_()
        lm = ours(mine, t, reduction)
        lt = theirs(theirs_x, t, reduction)
        torch.testing.assert_close(lm, lt, rtol=0, atol=0, equal_nan=True)
        (gm,) = torch.autograd.grad(lm.sum(), mine)
        (gt,) = torch.autograd.grad(lt.sum(), theirs_x)
        torch.testing.assert_close(gm, gt, rtol=0, atol=0, equal_nan=True)
        # -0 stays -0 (a NaN's sign bit means nothing, and is not compared)
        num = ~torch.isnan(gt)
        assert torch.equal(torch.signbit(gm[num]), torch.signbit(gt[num]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("delta", [1.0, 0.25])
def test_huber_gradient_is_torchs_bit_for_bit_at_its_edges(dtype, delta):
    # |d| = delta exactly and on both sides of it, +-0, +-inf, NaN.
    edges = [delta, -delta, delta * (1 - 2 ** -20), -delta * (1 + 2 ** -20), 0.0, -0.0,
             float("inf"), -float("inf"), float("nan"), 1e-30, -1e30]
    _assert_bit_for_bit_at_edges(lambda x, t, r: so.huber_loss(x, t, delta=delta, reduction=r),
                                 lambda x, t, r: F.huber_loss(x, t, delta=delta, reduction=r),
                                 edges, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_gradient_is_torchs_bit_for_bit_at_its_edges(dtype):
    # sign(d): +-0, +-inf, NaN, the smallest denormals (a scaled sign must
    # not round them to 0) and the largest finite values.
    tiny = torch.finfo(dtype).tiny
    edges = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 2 ** -149, -(2 ** -149),
             tiny, -tiny, tiny / 3, 1e-30, -1e30, float(torch.finfo(dtype).max),
             -float(torch.finfo(dtype).max), 1.0, -1.0]
    _assert_bit_for_bit_at_edges(lambda x, t, r: so.l1_loss(x, t, reduction=r),
                                 lambda x, t, r: F.l1_loss(x, t, reduction=r), edges, dtype)


# torch's counterparts of the functions and modules, for their signatures.
TORCH_FUNCTIONS = {"cross_entropy": F.cross_entropy, **{k: v[1] for k, v in ELEMENTWISE.items()}}
TORCH_MODULES = {"CrossEntropyLoss": torch.nn.CrossEntropyLoss, "MSELoss": torch.nn.MSELoss,
                 "L1Loss": torch.nn.L1Loss, "HuberLoss": torch.nn.HuberLoss,
                 "BCEWithLogitsLoss": torch.nn.BCEWithLogitsLoss}


def _positional(fn, skip):
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("name", list(TORCH_FUNCTIONS))
def test_positional_arguments_are_torchs(name):
    """torch's positional parameters, in its order, with its defaults; ours
    may follow with more (never before)."""
    theirs = _positional(TORCH_FUNCTIONS[name], 2)
    assert _positional(getattr(so, name), 2)[:len(theirs)] == theirs
    ours_p, theirs_p = inspect.signature(getattr(so, name)).parameters, \
        inspect.signature(TORCH_FUNCTIONS[name]).parameters
    assert all(ours_p[p].default == theirs_p[p].default for p in theirs)


@pytest.mark.parametrize("name", list(TORCH_MODULES))
def test_module_positional_arguments_are_torchs(name):
    theirs = _positional(TORCH_MODULES[name].__init__, 1)
    assert _positional(getattr(so, name), 0)[:len(theirs)] == theirs


def test_sigmoid_focal_loss_positional_arguments_are_torchvisions():
    # torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none")
    assert _positional(so.sigmoid_focal_loss, 2) == ["alpha", "gamma", "reduction"]
    x, t = torch.randn(6, 4), torch.rand(6, 4)
    torch.testing.assert_close(so.sigmoid_focal_loss(x, t, 0.5, 1.0, "sum"),
                               so.sigmoid_focal_loss(x, t, alpha=0.5, gamma=1.0, reduction="sum"))


def _calls(x, t, y, w, c):
    """(name, positional arguments after input and target) as torch takes them."""
    return [
        ("cross_entropy", (x, y, w, None, 2, None, "sum", 0.1)),
        ("binary_cross_entropy_with_logits", (x, t, w[None], None, None, "sum", c)),
        ("mse_loss", (x, t, None, None, "sum")),
        ("l1_loss", (x, t, None, None, "none")),
        ("huber_loss", (x, t, "sum", 0.5)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_positional_calls_give_torchs_value(case):
    g = torch.Generator().manual_seed(case)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    t, y = torch.rand(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    w, c = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    name, args = _calls(x, t, y, w, c)[case]
    torch.testing.assert_close(getattr(so, name)(*args), TORCH_FUNCTIONS[name](*args))


@pytest.mark.parametrize("size_average,reduce", [(None, False), (True, None), (False, None),
                                                  (False, True), (True, False)])
@pytest.mark.parametrize("name", [n for n, f in TORCH_FUNCTIONS.items()
                                  if "size_average" in inspect.signature(f).parameters])
def test_deprecated_size_average_and_reduce_are_torchs(name, size_average, reduce):
    x = torch.randn(8, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (8,)) if name == "cross_entropy" else torch.rand(8, 5, dtype=torch.float64)
    kw = dict(size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning, match="deprecated"):
        got = getattr(so, name)(x, t, **kw, sample_weight=None)
    with pytest.warns(UserWarning):
        want = TORCH_FUNCTIONS[name](x, t, **kw)
    torch.testing.assert_close(got, want)
    module = next(m for m, cls in TORCH_MODULES.items() if getattr(so, m)._fn is getattr(so, name))
    with pytest.warns(UserWarning, match="deprecated"):
        ours = getattr(so, module)(**kw)
    with pytest.warns(UserWarning):
        theirs = TORCH_MODULES[module](**kw)
    assert ours.reduction == theirs.reduction and not hasattr(ours, "size_average")
    torch.testing.assert_close(ours(x, t), theirs(x, t))


def test_huber_loss_takes_no_deprecated_reduction_arguments():
    with pytest.raises(TypeError, match="size_average"):
        so.huber_loss(torch.randn(3), torch.randn(3), size_average=True)


_X = torch.randn(4, 3)
CLASS_TARGET_ERRORS = {
    "unbatched input, 1-D target of 3": (torch.randn(10), torch.tensor([1, 0, 1])),
    "2-D float target": (_X, torch.rand(4, 2)),
    "2-D index target": (_X, torch.zeros(4, 2, dtype=torch.long)),
    "batch sizes differ": (_X, torch.zeros(5, 2, dtype=torch.long)),
    "0-d target of a batch": (_X, torch.tensor(1)),
    "K-dim, target without d1": (torch.randn(4, 3, 5), torch.zeros(4, dtype=torch.long)),
    "K-dim, float target": (torch.randn(4, 3, 5), torch.zeros(4, 5)),
    "bool target": (_X, torch.zeros(4, dtype=torch.bool)),
    "int probabilities": (_X, torch.zeros(4, 3, dtype=torch.long)),
    "probabilities with ignore_index": (_X, torch.rand(4, 3), 1),
}


@pytest.mark.parametrize("case", list(CLASS_TARGET_ERRORS))
@pytest.mark.parametrize("fn", [so.cross_entropy, so.focal_loss])
def test_class_target_errors_are_torchs(fn, case):
    """F.cross_entropy's error type, its message first (then ours, naming
    the argument); focal_loss takes class indices as cross_entropy does."""
    x, t, *ignore = CLASS_TARGET_ERRORS[case]
    kw = {"ignore_index": ignore[0]} if ignore else {}
    if fn is so.focal_loss and t.shape == x.shape:
        pytest.skip("focal_loss takes no probabilities")
    with pytest.raises(Exception) as theirs:
        F.cross_entropy(x, t, **kw)
    with pytest.raises(type(theirs.value)) as ours:
        fn(x, t, **kw)
    assert str(ours.value).startswith(str(theirs.value).rstrip(".")), (str(ours.value), str(theirs.value))
    assert "target" in str(ours.value) or "ignore_index" in str(ours.value)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_unbatched_input_takes_a_target_of_one_as_torch(reduction):
    x, t = torch.randn(5, requires_grad=True), torch.tensor([3])
    got, want = so.cross_entropy(x, t, reduction=reduction), F.cross_entropy(x, t, reduction=reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    # torch's own backward of this form fails ("size mismatch"): its 0-d form's.
    want = F.cross_entropy(x, t.reshape(()), reduction=reduction)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])
    torch.testing.assert_close(so.reference.cross_entropy(x, t, reduction=reduction), want)


@pytest.mark.parametrize("fn", [so.sigmoid_focal_loss, so.reference.sigmoid_focal_loss])
def test_sigmoid_focal_bad_reduction_in_torchvisions_words(fn):
    # torchvision's own test matches "Invalid" (torchvision.ops.sigmoid_focal_loss).
    with pytest.raises(ValueError, match="Invalid Value for arg 'reduction'"):
        fn(torch.randn(4, 3), torch.rand(4, 3), 0.25, 2, "xyz")
