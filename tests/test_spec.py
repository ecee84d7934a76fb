"""The op spec (samplewt_ops._spec) against the compiled schemas, and what
is built from it: the keyword call, the fake kernels' checks, the modules
and the public names."""
import dataclasses
import inspect

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import samplewt_ops
from samplewt_ops import _loader, _ops, _spec, functional, modules
from samplewt_ops._spec import SCHEMA_ARGS, SPECS
from samplewt_ops.weights import LOSS_NAMES
from samples import ce_kwargs, elem_kwargs, row_kwargs, tail

compiled = pytest.mark.skipif(not _loader.COMPILED, reason="the compiled extension is not loaded")


def test_every_loss_has_its_function_module_and_name():
    assert functional.__all__ == list(SPECS)
    assert modules.__all__ == [spec.module for spec in SPECS.values()]
    assert LOSS_NAMES == frozenset(SPECS)
    for name, spec in SPECS.items():
        assert getattr(samplewt_ops, name) is getattr(functional, name)
        assert name in samplewt_ops.__all__ and spec.module in samplewt_ops.__all__
        assert getattr(samplewt_ops, spec.module)._fn is getattr(functional, name)
        assert spec.reference is getattr(samplewt_ops.reference, name)


@pytest.mark.parametrize("name", list(SPECS))
def test_public_function_is_made_from_its_spec(name):
    spec = SPECS[name]
    fn = getattr(samplewt_ops, name)
    ref = inspect.signature(spec.reference).parameters
    public = inspect.signature(fn).parameters
    extra = (["inplace_grad"] if spec.inplace else []) + ["table", "indices"]
    legacy = [p for p in spec.positional if p in _spec.LEGACY_REDUCTION]
    # The reference's arguments, torch's deprecated reduction ones among them
    # at spec.positional's places, then the extras.
    assert [p for p in public if p not in legacy] == list(ref) + extra
    by_position = [p for p, v in public.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert by_position == ["input", "target", *spec.positional]
    assert all(public[p].default == ref[p].default and public[p].kind == ref[p].kind for p in ref)
    assert all(public[p].default is None for p in legacy)
    assert all(public[p].kind is inspect.Parameter.KEYWORD_ONLY for p in extra)
    assert fn.__doc__ == spec.doc and "Example" in fn.__doc__ and fn.__name__ == name
    assert fn.__module__ == "samplewt_ops.functional"


@pytest.mark.parametrize("name", list(SPECS))
def test_public_function_refuses_unknown_keywords(name):
    fn = getattr(samplewt_ops, name)
    x = torch.randn(4, 3)
    t = torch.zeros(4, dtype=torch.long) if SPECS[name].rows else torch.rand(4, 3)
    with pytest.raises(TypeError, match=f"{name}\\(\\) got an unexpected keyword argument 'no_such'"):
        fn(x, t, no_such=1)
    with pytest.raises(TypeError, match="positional"):
        fn(x, t, *([None] * 8))


@pytest.mark.parametrize("name", list(SPECS))
def test_module_signature_is_the_functional_one(name):
    fn = inspect.signature(getattr(samplewt_ops, name)).parameters
    mod = inspect.signature(getattr(samplewt_ops, SPECS[name].module)).parameters
    assert list(mod) == [p for p in fn if p not in ("input", "target", "sample_weight", "indices")]
    assert all(mod[p] == fn[p] for p in mod)
    with pytest.raises(TypeError):
        getattr(samplewt_ops, SPECS[name].module)(no_such_argument=1)


@compiled
def test_every_spec_matches_its_schema():
    _spec.check_schemas()
    assert set(SCHEMA_ARGS) == set(SPECS) | {name + "_" for name, s in SPECS.items() if s.inplace}


@compiled
@pytest.mark.parametrize("change, message", [
    (dict(scalars={"gamma": None, "ignore_index": None}), "label_smoothing: absent in the spec, float in the schema"),
    (dict(tensors={}), r"weight: absent in the spec, Optional\[Tensor\] in the schema"),
    (dict(tensors={"weight": None, "extra": None}), r"extra: Optional\[Tensor\] in the spec, absent in the schema"),
    (dict(scalars={"ignore_index": None}, tensors={"weight": None, "label_smoothing": None}),
     r"label_smoothing: Optional\[Tensor\] in the spec, float in the schema"),
    (dict(inplace=False), "no op spec .* for cross_entropy_"),
])
def test_a_spec_that_differs_from_its_schema_fails_loudly(monkeypatch, change, message):
    wrong = dataclasses.replace(SPECS["cross_entropy"], **change)
    monkeypatch.setitem(SPECS, "cross_entropy", wrong)
    with pytest.raises(RuntimeError, match=message):
        _spec.check_schemas()
    monkeypatch.undo()
    _spec.check_schemas()


@pytest.mark.parametrize("change", [
    dict(family="rows"), dict(mean="median"), dict(tensors={"weight": None, "ignore_index": None}),
    dict(scalars={"reduction": None}), dict(to_op={"gamma": None}), dict(scalars={"label_smoothing": None}),
])
def test_an_inconsistent_spec_is_refused(change):
    with pytest.raises(ValueError, match="cross_entropy"):
        dataclasses.replace(SPECS["cross_entropy"], **change)


@compiled
def test_ops_are_called_by_keyword():
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    loss, grad, stats = _ops.call("cross_entropy", **ce_kwargs(x, y), **tail(1, True, True))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(x, y))
    assert grad.shape == x.shape and stats.shape == (4, 3)
    with pytest.raises(TypeError, match=r"missing arguments \['compute_stats'\], unexpected arguments \['extra'\]"):
        _ops.call("cross_entropy", **ce_kwargs(x, y), reduction=1, compute_grad=True, extra=1)


def _fake_call(name, **kwargs):
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return _ops.call(name, **fake)


@compiled
@pytest.mark.parametrize("variant", ["ce_index", "ce_prob", "focal"])
@pytest.mark.parametrize("reduction", [0, 1])
def test_fake_row_kernels_give_the_real_shapes(gen, variant, reduction):
    name, kw = row_kwargs(variant, 6, 5, torch.float32, gen)
    full = dict(kw, **tail(reduction, True, True))
    for fake, real in zip(_fake_call(name, **full), _ops.call(name, **full)):
        assert fake.shape == real.shape and fake.dtype == real.dtype


@compiled
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2), (7,)])
def test_fake_elementwise_kernels_give_the_real_shapes(gen, shape):
    for name, kw in elem_kwargs(shape, torch.float32, gen):
        for reduction in (0, 2):
            full = dict(kw, **tail(reduction, True, True))
            for fake, real in zip(_fake_call(name, **full), _ops.call(name, **full)):
                assert fake.shape == real.shape and fake.dtype == real.dtype


@compiled
@pytest.mark.parametrize("name, change, error, message", [
    ("cross_entropy", dict(target=torch.zeros(5, dtype=torch.long)), ValueError, "target must have shape"),
    ("cross_entropy", dict(target=torch.rand(6, 4)), ValueError, "target must have input's shape"),
    ("cross_entropy", dict(target=torch.zeros(6, dtype=torch.bool)), TypeError, "class indices"),
    ("cross_entropy", dict(weight=torch.rand(4)), ValueError, r"weight must have shape \(5,\)"),
    ("cross_entropy", dict(sample_weight=torch.rand(5)), ValueError, r"sample_weight must have shape \(6,\)"),
    ("cross_entropy", dict(input=torch.randn(6)), ValueError, r"input must be \(rows, classes\) or"),
    ("cross_entropy", dict(input=torch.randn(6, 5, 2)), ValueError, r"target must have shape \(6, 2\)"),
    ("cross_entropy", dict(reduction=3), ValueError, "reduction"),
    ("focal_loss", dict(target=torch.rand(6, 5)), TypeError, "focal_loss target must hold class indices"),
    ("focal_loss", dict(alpha=torch.rand(6)), ValueError, r"alpha must have shape \(5,\)"),
    ("mse_loss", dict(target=torch.rand(6, 4)), ValueError, "target must have input's shape"),
    ("mse_loss", dict(target=torch.zeros(6, 5, dtype=torch.long)), TypeError, "target must be floating"),
    ("mse_loss", dict(weight=torch.rand(2, 5)), ValueError, "weight of shape .* must broadcast"),
    ("binary_cross_entropy_with_logits", dict(pos_weight=torch.rand(4)), ValueError, "pos_weight"),
    ("huber_loss", dict(input=torch.randint(0, 2, (6, 5))), TypeError, "input must be floating"),
    ("huber_loss", dict(sample_weight=torch.ones(6, dtype=torch.long)), TypeError, "sample_weight"),
])
def test_fake_kernels_check_shapes_and_dtypes(name, change, error, message):
    gen = torch.Generator().manual_seed(0)
    cases = ([row_kwargs(v, 6, 5, torch.float32, gen) for v in ("ce_index", "focal")]
             + list(elem_kwargs((6, 5), torch.float32, gen)))
    kw = {**next(kw for n, kw in cases if n == name), **tail(1, True, True), **change}
    with pytest.raises(error, match=message):
        _fake_call(name, **kw)


@compiled
@pytest.mark.parametrize("fn", [samplewt_ops.cross_entropy, samplewt_ops.focal_loss])
def test_compiled_inplace_grad_matches_eager(fn):
    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5)
    x, y = torch.randn(4, 8), torch.randint(0, 5, (4,))

    def step(x):
        return fn(lin(x), y, sample_weight=torch.ones(4), inplace_grad=True)

    grads = []
    for f in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        lin.zero_grad()
        loss = f(x)
        loss.backward()
        grads.append((loss.detach(), lin.weight.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1])
