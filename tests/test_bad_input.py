"""Bad input gets a clear Python error that names the offending argument.

Every case runs against both the reference (samplewt_ops.reference) and the
public package (samplewt_ops), so the compiled path validates exactly like the
specification.  Devices are mixed with the "meta" device, which needs no GPU.
"""

import re

import pytest
import torch
import torch.nn.functional as F

import samplewt_ops
from samplewt_ops import reference

ERRORS = (ValueError, TypeError, IndexError, RuntimeError)
pytestmark = pytest.mark.usefixtures("seeded")


@pytest.fixture(params=[reference, samplewt_ops], ids=["reference", "samplewt_ops"])
def impl(request):
    return request.param


def get(impl, name):
    return getattr(impl, name)  # a missing loss fails the test


def raises_naming(arg):
    # \b keeps "weight" from matching inside "sample_weight" or "pos_weight"
    return pytest.raises(ERRORS, match=rf"(?<![\w]){re.escape(arg)}(?![\w])")


N, C = 4, 3


def x_():
    return torch.randn(N, C)


def t_():
    return torch.tensor([0, 2, 1, 2])


def q_():
    return torch.softmax(torch.randn(N, C), 1)


def e_():
    return torch.rand(N, C)


META = "meta"

# (function, argument the error must name, call(fn))
CASES = [
    # ---- cross_entropy
    ("cross_entropy", "reduction", lambda f: f(x_(), t_(), reduction="avg")),
    ("cross_entropy", "reduction", lambda f: f(x_(), t_(), reduction=None)),
    ("cross_entropy", "input", lambda f: f(torch.randint(0, 3, (N, C)), t_())),
    ("cross_entropy", "input", lambda f: f([[0.1, 0.2]], torch.tensor([0]))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0, 1, 2]))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([[0], [1], [2], [0]]))),
    ("cross_entropy", "target", lambda f: f(torch.randn(N, C, 5), torch.zeros(N, 6, dtype=torch.long))),
    ("cross_entropy", "target", lambda f: f(torch.randn(C), torch.tensor([1, 2]))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0, 1, 3, 0]))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0, -1, 2, 0]))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0, 1, -100, 0]), ignore_index=1)),
    ("cross_entropy", "target", lambda f: f(torch.randn(N, C, 2), torch.tensor([[0, 1], [2, 5], [0, 0], [1, 1]]))),
    ("cross_entropy", "target", lambda f: f(torch.randn(C), torch.tensor(C))),
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0.0, 1.0, 2.0, 0.0]))),  # float indices
    ("cross_entropy", "target", lambda f: f(x_(), torch.ones(N, C, dtype=torch.long))),  # int probabilities
    ("cross_entropy", "target", lambda f: f(x_(), torch.tensor([0, 1, 1, 0], dtype=torch.bool))),
    ("cross_entropy", "weight", lambda f: f(x_(), t_(), torch.ones(C + 1))),
    ("cross_entropy", "weight", lambda f: f(x_(), t_(), torch.ones(1, C))),
    ("cross_entropy", "weight", lambda f: f(x_(), q_(), torch.ones(C - 1))),
    ("cross_entropy", "weight", lambda f: f(x_(), t_(), torch.ones(C, dtype=torch.long))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.ones(N + 1))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.ones(N, 1))),
    ("cross_entropy", "sample_weight", lambda f: f(torch.randn(N, C, 2), torch.zeros(N, 2, dtype=torch.long),
                                                   sample_weight=torch.ones(N, 2))),
    ("cross_entropy", "sample_weight", lambda f: f(torch.randn(C), torch.tensor(1), sample_weight=torch.ones(2))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.tensor([1.0, -0.5, 1.0, 1.0]))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.tensor([1.0, float("nan"), 1, 1]))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.tensor([1.0, float("inf"), 1, 1]))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), q_(), sample_weight=torch.tensor([1.0, 1, 1, -float("inf")]))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=[1.0, 1.0, 1.0, 1.0])),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.ones(N, dtype=torch.long))),
    ("cross_entropy", "label_smoothing", lambda f: f(x_(), t_(), label_smoothing=-0.1)),
    ("cross_entropy", "label_smoothing", lambda f: f(x_(), t_(), label_smoothing=1.5)),
    ("cross_entropy", "label_smoothing", lambda f: f(x_(), q_(), label_smoothing=float("nan"))),
    ("cross_entropy", "ignore_index", lambda f: f(x_(), q_(), ignore_index=1)),
    ("cross_entropy", "target", lambda f: f(x_(), t_().to(META))),
    ("cross_entropy", "weight", lambda f: f(x_(), t_(), torch.ones(C, device=META))),
    ("cross_entropy", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.ones(N, device=META))),
    ("cross_entropy", "target", lambda f: f(x_(), q_().to(META))),
    # ---- focal_loss
    ("focal_loss", "reduction", lambda f: f(x_(), t_(), reduction="mean ")),
    ("focal_loss", "gamma", lambda f: f(x_(), t_(), gamma=-0.5)),
    ("focal_loss", "gamma", lambda f: f(x_(), t_(), gamma=float("nan"))),
    ("focal_loss", "alpha", lambda f: f(x_(), t_(), alpha=torch.ones(C + 2))),
    ("focal_loss", "alpha", lambda f: f(x_(), t_(), alpha=torch.ones(C, device=META))),
    ("focal_loss", "target", lambda f: f(x_(), q_())),  # probability targets are not supported
    ("focal_loss", "target", lambda f: f(x_(), torch.tensor([0.0, 1.0, 2.0, 0.0]))),
    ("focal_loss", "target", lambda f: f(x_(), torch.tensor([0, 1, 2]))),
    ("focal_loss", "target", lambda f: f(x_(), torch.tensor([0, 1, 7, 0]))),
    ("focal_loss", "target", lambda f: f(x_(), t_().to(META))),
    ("focal_loss", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.ones(N - 1))),
    ("focal_loss", "sample_weight", lambda f: f(x_(), t_(), sample_weight=-torch.ones(N))),
    ("focal_loss", "sample_weight", lambda f: f(x_(), t_(), sample_weight=torch.full((N,), float("nan")))),
    # ---- sigmoid_focal_loss
    ("sigmoid_focal_loss", "reduction", lambda f: f(x_(), e_(), reduction="batchmean")),
    ("sigmoid_focal_loss", "gamma", lambda f: f(x_(), e_(), gamma=-1.0)),
    ("sigmoid_focal_loss", "target", lambda f: f(x_(), torch.rand(N, C + 1))),
    ("sigmoid_focal_loss", "target", lambda f: f(x_(), torch.rand(C))),
    ("sigmoid_focal_loss", "target", lambda f: f(x_(), torch.ones(N, C, dtype=torch.long))),
    ("sigmoid_focal_loss", "target", lambda f: f(x_(), e_().to(META))),
    ("sigmoid_focal_loss", "input", lambda f: f(torch.ones(N, C, dtype=torch.long), e_())),
    ("sigmoid_focal_loss", "sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.ones(C))),
    ("sigmoid_focal_loss", "sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.tensor([1.0, 1, -1, 1]))),
    ("sigmoid_focal_loss", "sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.ones(N, device=META))),
    # ---- binary_cross_entropy_with_logits
    ("binary_cross_entropy_with_logits", "reduction", lambda f: f(x_(), e_(), reduction="MEAN")),
    ("binary_cross_entropy_with_logits", "target", lambda f: f(x_(), torch.rand(N + 1, C))),
    ("binary_cross_entropy_with_logits", "target", lambda f: f(x_(), torch.ones(N, C, dtype=torch.long))),
    ("binary_cross_entropy_with_logits", "weight", lambda f: f(x_(), e_(), torch.rand(N + 1, C))),
    ("binary_cross_entropy_with_logits", "weight", lambda f: f(x_(), e_(), torch.rand(C + 1))),
    ("binary_cross_entropy_with_logits", "weight", lambda f: f(x_(), e_(), torch.rand(2, N, C))),
    ("binary_cross_entropy_with_logits", "weight", lambda f: f(x_(), e_(), torch.rand(C, device=META))),
    ("binary_cross_entropy_with_logits", "pos_weight", lambda f: f(x_(), e_(), pos_weight=torch.rand(C + 1))),
    ("binary_cross_entropy_with_logits", "pos_weight", lambda f: f(x_(), e_(), pos_weight=torch.rand(N))),
    ("binary_cross_entropy_with_logits", "pos_weight", lambda f: f(x_(), e_(), pos_weight=torch.rand(C, device=META))),
    ("binary_cross_entropy_with_logits", "sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.ones(N, C))),
    ("binary_cross_entropy_with_logits", "sample_weight",
     lambda f: f(x_(), e_(), sample_weight=torch.tensor([1.0, 1.0, float("inf"), 1.0]))),
    # ---- mse / l1 / huber (l1 takes complex tensors, as torch's)
    *[(name, "target", lambda f: f(x_(), torch.ones(N, C, dtype=torch.complex64)))
      for name in ("mse_loss", "huber_loss")],
    *[(name, "input", lambda f: f(torch.ones(N, C, dtype=torch.complex64), e_()))
      for name in ("mse_loss", "huber_loss")],
    *[(name, arg, call) for name in ("mse_loss", "l1_loss", "huber_loss") for arg, call in [
        ("reduction", lambda f: f(x_(), e_(), reduction="elementwise_mean")),
        ("target", lambda f: f(x_(), torch.rand(N, C + 1))),
        ("target", lambda f: f(x_(), torch.rand(N + 1, C))),  # does not broadcast
        ("target", lambda f: f(x_(), e_().to(META))),
        ("input", lambda f: f(torch.ones(N, C, dtype=torch.long), e_())),
        ("weight", lambda f: f(x_(), e_(), weight=torch.rand(C))),
        ("weight", lambda f: f(x_(), e_(), weight=torch.rand(N, C + 1))),
        ("weight", lambda f: f(x_(), e_(), weight=torch.rand(N, C, device=META))),
        ("sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.ones(N + 2))),
        ("sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.tensor([0.0, 0.0, -1e-3, 0.0]))),
        ("sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.tensor([float("nan")] * N))),
        ("sample_weight", lambda f: f(x_(), e_(), sample_weight=torch.ones(N, device=META))),
    ]],
    ("huber_loss", "delta", lambda f: f(x_(), e_(), delta=0.0)),
    ("huber_loss", "delta", lambda f: f(x_(), e_(), delta=-1.0)),
]


def _case_id(case):
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_argument(impl, case):
    name, arg, call = case
    fn = get(impl, name)
    with raises_naming(arg):
        call(fn)


@pytest.mark.parametrize("name,call", [
    ("cross_entropy", lambda f: f(x_(), t_(), sample_weight=torch.zeros(N), reduction="sum")),  # zeros are allowed
    ("cross_entropy", lambda f: f(x_(), torch.tensor([0, 1, 1, 1]), ignore_index=1)),  # ignored valid class
    ("cross_entropy", lambda f: f(x_(), torch.tensor([0, 1, 5, 1]), ignore_index=5)),  # ignored >= C
    ("cross_entropy", lambda f: f(x_(), q_(), label_smoothing=1.0)),
    ("cross_entropy", lambda f: f(x_(), t_(), label_smoothing=0)),
    ("focal_loss", lambda f: f(x_(), torch.tensor([0, -7, 1, 1]), ignore_index=-7, gamma=0)),
    ("sigmoid_focal_loss", lambda f: f(x_(), e_(), alpha=-1.0, gamma=0.0)),
    ("binary_cross_entropy_with_logits", lambda f: f(x_(), e_(), torch.rand(N, 1), pos_weight=torch.rand(C))),
    ("huber_loss", lambda f: f(x_(), e_(), delta=1e-6)),
])
def test_edge_values_that_are_valid(impl, name, call):
    out = call(get(impl, name))
    assert torch.isfinite(out).all()


def test_validation_is_not_fooled_by_requires_grad(impl):
    f = get(impl, "cross_entropy")
    x = x_().requires_grad_()
    with raises_naming("target"):
        f(x, torch.tensor([0, 1, 3, 0]))
    with raises_naming("sample_weight"):
        f(x, t_(), sample_weight=torch.tensor([1.0, -1.0, 1.0, 1.0], requires_grad=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_mismatch_and_opt_in_validation(impl):
    f = get(impl, "cross_entropy")
    with raises_naming("target"):
        f(x_(), t_().cuda())
    with raises_naming("sample_weight"):
        f(x_().cuda(), t_().cuda(), sample_weight=torch.ones(N))
    try:
        samplewt_ops.set_validation(True)
        with raises_naming("target"):
            f(x_().cuda(), torch.tensor([0, 1, 3, 0], device="cuda"))
        with raises_naming("sample_weight"):
            f(x_().cuda(), t_().cuda(), sample_weight=-torch.ones(N, device="cuda"))
    finally:
        samplewt_ops.set_validation(None)


# ---------------------------------------------------------------------------
# empty batches behave as PyTorch (not an error)


EMPTY = [
    ("cross_entropy", lambda f, R, sw: f(torch.randn(0, C), torch.zeros(0, dtype=torch.long), reduction=R,
                                         sample_weight=sw),
     lambda R: F.cross_entropy(torch.randn(0, C), torch.zeros(0, dtype=torch.long), reduction=R)),
    ("cross_entropy", lambda f, R, sw: f(torch.randn(0, C, 2), torch.rand(0, C, 2), reduction=R, sample_weight=sw),
     lambda R: F.cross_entropy(torch.randn(0, C, 2), torch.rand(0, C, 2), reduction=R)),
    ("focal_loss", lambda f, R, sw: f(torch.randn(0, C), torch.zeros(0, dtype=torch.long), reduction=R,
                                      sample_weight=sw),
     lambda R: F.cross_entropy(torch.randn(0, C), torch.zeros(0, dtype=torch.long), reduction=R)),
    ("binary_cross_entropy_with_logits",
     lambda f, R, sw: f(torch.randn(0, C), torch.rand(0, C), reduction=R, sample_weight=sw),
     lambda R: F.binary_cross_entropy_with_logits(torch.randn(0, C), torch.rand(0, C), reduction=R)),
    ("sigmoid_focal_loss", lambda f, R, sw: f(torch.randn(0, C), torch.rand(0, C), reduction=R, sample_weight=sw),
     lambda R: F.binary_cross_entropy_with_logits(torch.randn(0, C), torch.rand(0, C), reduction=R)),
    ("mse_loss", lambda f, R, sw: f(torch.randn(0, C), torch.rand(0, C), reduction=R, sample_weight=sw),
     lambda R: F.mse_loss(torch.randn(0, C), torch.rand(0, C), reduction=R)),
    ("l1_loss", lambda f, R, sw: f(torch.randn(0, C), torch.rand(0, C), reduction=R, sample_weight=sw),
     lambda R: F.l1_loss(torch.randn(0, C), torch.rand(0, C), reduction=R)),
    ("huber_loss", lambda f, R, sw: f(torch.randn(0, C), torch.rand(0, C), reduction=R, sample_weight=sw),
     lambda R: F.huber_loss(torch.randn(0, C), torch.rand(0, C), reduction=R)),
]


@pytest.mark.parametrize("case", EMPTY, ids=[f"{i}-{c[0]}" for i, c in enumerate(EMPTY)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_sw", [False, True], ids=["noSW", "SW"])
def test_empty_batch_behaves_as_torch(impl, case, reduction, with_sw):
    name, ours, theirs = case
    fn = get(impl, name)
    sw = torch.ones(0) if with_sw else None
    got = ours(fn, reduction, sw)
    exp = theirs(reduction)
    assert got.shape == exp.shape and got.dtype == exp.dtype
    torch.testing.assert_close(got, exp, equal_nan=True)
    if reduction == "mean":
        assert torch.isnan(got)
    elif reduction == "sum":
        assert got.item() == 0.0


def test_empty_batch_backward(impl):
    f = get(impl, "cross_entropy")
    x = torch.randn(0, C, requires_grad=True)
    f(x, torch.zeros(0, dtype=torch.long), reduction="sum").backward()
    assert x.grad is not None and x.grad.shape == (0, C)


@pytest.mark.parametrize("bad", [float("nan"), -1e-30, float("inf")])
@pytest.mark.parametrize("pos", [0, 3, 16385, 40001, 40002])
def test_elementwise_bad_sample_weight_anywhere_in_a_large_batch(bad, pos):
    # The CPU pre-pass checks the weights in groups of four and a tail, in
    # blocks of 16384 samples run in parallel: a bad value anywhere raises.
    x = torch.randn(40003, 16)
    sw = torch.rand(40003)
    sw[pos] = bad
    with pytest.raises(ValueError, match="sample_weight"):
        samplewt_ops.mse_loss(x, torch.zeros_like(x), sample_weight=sw)
