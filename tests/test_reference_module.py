"""The reference as a module: its validation switch and former names, meta
tensors, torch.compile (it is the fallback, so it must trace) and its
docstring examples. Its formulas are tested in test_reference.py."""

import doctest

import pytest
import torch

import samplewt_ops
from samplewt_ops import _validation
from samplewt_ops import reference as ref
from samplewt_ops._spec import SPECS
from samplewt_ops._validation import validation_enabled
from test_reference import assert_close, prob_target, run

SEED = 1234
pytestmark = pytest.mark.usefixtures("seeded")


# ---------------------------------------------------------------------------
# validation switches, torch.compile and the docstring examples


def test_validation_switches(monkeypatch):
    cpu = torch.zeros(1)
    meta = torch.zeros(1, device="meta")
    try:
        samplewt_ops.set_validation(False)
        assert validation_enabled(cpu)  # CPU always validates
        assert not validation_enabled(None)
        samplewt_ops.set_validation(True)
        assert validation_enabled(None)
        assert not validation_enabled(meta)  # no data to read
        samplewt_ops.set_validation(None)
        monkeypatch.setenv("SAMPLEWT_VALIDATE", "1")
        assert validation_enabled(None)
        monkeypatch.setenv("SAMPLEWT_VALIDATE", "0")
        assert not validation_enabled(None)
    finally:
        samplewt_ops.set_validation(None)


def test_reference_holds_only_the_losses():
    assert ref.__all__ == list(SPECS)
    assert all(getattr(ref, name) is SPECS[name].reference for name in SPECS)


@pytest.mark.parametrize("name", ["set_validation", "validation_enabled", "check_index_target",
                                  "num_classes", "REDUCTIONS"])
def test_moved_validation_names_warn_and_still_work(name):
    with pytest.warns(DeprecationWarning, match=rf"reference\.{name} moved to samplewt_ops\._validation"):
        moved = getattr(ref, name)
    assert moved is getattr(_validation, name)


def test_other_former_names():
    with pytest.warns(DeprecationWarning, match="private"):
        assert ref.acc_dtype(torch.float16) == torch.float32
    with pytest.raises(AttributeError, match="no_such_name"):
        ref.no_such_name


def test_meta_tensors_shape_inference():
    x = torch.empty(4, 5, device="meta")
    t = torch.empty(4, dtype=torch.long, device="meta")
    sw = torch.empty(4, device="meta")
    assert ref.cross_entropy(x, t, sample_weight=sw, reduction="none").shape == (4,)
    assert ref.focal_loss(x, t, reduction="mean").shape == ()
    assert ref.mse_loss(x, x, sample_weight=sw, reduction="none").shape == (4, 5)


_COMPILE_CASES = {
    "cross_entropy": lambda x, t, q, tt, sw: ref.cross_entropy(x, t, sample_weight=sw, label_smoothing=0.1),
    "cross_entropy_prob": lambda x, t, q, tt, sw: ref.cross_entropy(x, q, sample_weight=sw),
    "focal_loss": lambda x, t, q, tt, sw: ref.focal_loss(x, t, sample_weight=sw, alpha=0.5),
    "sigmoid_focal_loss": lambda x, t, q, tt, sw: ref.sigmoid_focal_loss(x, tt, sample_weight=sw, reduction="mean"),
    "bce": lambda x, t, q, tt, sw: ref.binary_cross_entropy_with_logits(x, tt, sample_weight=sw),
    "mse": lambda x, t, q, tt, sw: ref.mse_loss(x, tt, weight=tt, sample_weight=sw),
    "l1": lambda x, t, q, tt, sw: ref.l1_loss(x, tt, sample_weight=sw),
    "huber": lambda x, t, q, tt, sw: ref.huber_loss(x, tt, delta=0.5, sample_weight=sw),
}


@pytest.mark.parametrize("name", list(_COMPILE_CASES))
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_reference_compiles_fullgraph(name, dynamic):
    """The reference is the fallback, so it must trace without graph breaks,
    also with symbolic sizes and floats (dynamic=True)."""
    torch._dynamo.reset()
    fn = _COMPILE_CASES[name]
    compiled = torch.compile(fn, fullgraph=True, backend="eager", dynamic=dynamic)
    for n in (6, 9):
        x = torch.randn(n, 4)
        t = torch.tensor([0, 1, 2, 3, -100, 1, 0, 0, 3])[:n]
        q = prob_target((n, 4), 1)
        tt = torch.rand(n, 4)
        sw = torch.rand(n)
        eo, eg = run(lambda z: fn(z, t, q, tt, sw), x)
        co, cg = run(lambda z: compiled(z, t, q, tt, sw), x)
        assert_close(co, eo)
        assert_close(cg, eg)


def test_reference_compiles_with_symbolic_scalars():
    """dynamic=True turns Python float arguments into symbolic floats."""
    torch._dynamo.reset()
    def fn(x, t, ls, g, ii, d):
        return (ref.cross_entropy(x, t, label_smoothing=ls, ignore_index=ii)
                + ref.focal_loss(x, t, gamma=g, ignore_index=ii)
                + ref.sigmoid_focal_loss(x, x.sigmoid(), gamma=g, alpha=ls, reduction="mean")
                + ref.huber_loss(x, x.cos(), delta=d))

    compiled = torch.compile(fn, fullgraph=True, backend="eager", dynamic=True)
    x = torch.randn(5, 4)
    t = torch.tensor([0, 1, 2, 3, 1])
    for ls, g, ii, d in ((0.1, 2.0, 1, 0.5), (0.3, 0.5, 3, 2.0)):
        assert_close(compiled(x, t, ls, g, ii, d), fn(x, t, ls, g, ii, d))


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss"])
def test_compiled_reference_out_of_range_target_gives_nan(name):
    """Value checks are skipped while tracing; a bad class then poisons its loss."""
    torch._dynamo.reset()
    f = getattr(ref, name)
    fn = torch.compile(lambda x, t: f(x, t, reduction="none"), fullgraph=True, backend="eager")
    out = fn(torch.randn(3, 4), torch.tensor([0, 7, 1]))
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    with pytest.raises(IndexError, match="target"):  # eager on CPU: checked
        f(torch.randn(3, 4), torch.tensor([0, 7, 1]))


def test_docstring_examples():
    result = doctest.testmod(ref, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 7
    assert result.failed == 0
