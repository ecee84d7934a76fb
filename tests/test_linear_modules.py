"""samplewt_ops.linear_modules, and the forms of torch's F.linear_cross_entropy
that the fused ops do not take (unbatched input, class probabilities,
K-dimensional heads): each against its definition with sample weights, which
torch does not have; torch's own samples without them are in
test_torch_samples.py."""
import pytest
import torch
import torch.nn.functional as TF

import samplewt_ops
from samplewt_ops import _loader
from samplewt_ops.weights import AdaptiveWeights, LossEMA
from test_linear_table import _assert_tables_close

compiled = pytest.mark.skipif(not _loader.has_kernel("cpu"), reason="no compiled CPU kernel")
TIGHT = dict(atol=1e-10, rtol=1e-9)
f64 = torch.float64


def _data(n=6, d=5, v=7, out=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=f64, requires_grad=True)
    w = torch.randn(v, *out, d, generator=g, dtype=f64, requires_grad=True)
    b = torch.randn(v, *out, generator=g, dtype=f64, requires_grad=True)
    y = torch.randint(0, v, (n, *out), generator=g)
    sw = torch.rand(n, generator=g, dtype=f64)
    cw = torch.rand(v, generator=g, dtype=f64) + 0.5
    return x, w, b, y, sw, cw


def _grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


@compiled
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_k_dimensional_head_with_sample_weight(reduction):
    x, w, b, y, sw, cw = _data(out=(3, 2))
    y[0, 1, 0] = -100
    got = samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, weight=cw, sample_weight=sw,
                                            reduction=reduction, label_smoothing=0.1)
    logits = (x @ w.reshape(-1, 5).T + b.reshape(-1)).reshape(6, 7, 3, 2)
    want = samplewt_ops.cross_entropy(logits, y, cw, sample_weight=sw, reduction=reduction,
                                      label_smoothing=0.1)
    torch.testing.assert_close(got, want, **TIGHT)
    assert got.shape == ((6, 3, 2) if reduction == "none" else ())
    go = torch.rand_like(got)
    for a, c in zip(torch.autograd.grad(got, (x, w, b), go), torch.autograd.grad(want, (x, w, b), go)):
        torch.testing.assert_close(a, c, **TIGHT)
    # and torch's value where sample_weight is None
    torch.testing.assert_close(
        samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, weight=cw, reduction=reduction),
        TF.linear_cross_entropy(x, w, y, linear_bias=b, weight=cw, reduction=reduction), **TIGHT)


@compiled
@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_probability_targets_with_sample_weight(shape):
    x, w, b, _, _, cw = _data()
    x = x.detach().reshape(*shape, 5).requires_grad_()
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(*shape, 7, generator=g, dtype=f64), -1)
    sw = torch.rand(shape, generator=g, dtype=f64)
    got = samplewt_ops.linear_cross_entropy(x, w, p, linear_bias=b, weight=cw, sample_weight=sw,
                                            label_smoothing=0.2)
    want = samplewt_ops.cross_entropy((x @ w.T + b).reshape(-1, 7), p.reshape(-1, 7), cw,
                                      sample_weight=sw.reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(got, want, **TIGHT)
    for a, c in zip(_grads(got, x, w, b), _grads(want, x, w, b)):
        torch.testing.assert_close(a, c, **TIGHT)
    none = samplewt_ops.linear_cross_entropy(x, w, p, sample_weight=sw, reduction="none")
    assert none.shape == shape


@compiled
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_input_is_a_batch_of_one(reduction):
    x, w, b, y, sw, cw = _data()
    xi = x[2].detach().requires_grad_()
    got = samplewt_ops.linear_cross_entropy(xi, w, y[2], linear_bias=b, weight=cw,
                                            sample_weight=sw[2], reduction=reduction, z_loss=0.01)
    want = samplewt_ops.linear_cross_entropy(xi[None], w, y[2:3], linear_bias=b, weight=cw,
                                             sample_weight=sw[2:3], reduction=reduction, z_loss=0.01)
    assert got.shape == ()
    torch.testing.assert_close(got, want.reshape(()), **TIGHT)
    for a, c in zip(_grads(got, xi, w, b), _grads(want.sum(), xi, w, b)):
        torch.testing.assert_close(a, c, **TIGHT)
    focal = samplewt_ops.linear_focal_loss(xi, w, y[2], gamma=1.5, reduction=reduction)
    torch.testing.assert_close(focal, samplewt_ops.linear_focal_loss(
        xi[None], w, y[2:3], gamma=1.5, reduction=reduction).reshape(()), **TIGHT)


@compiled
def test_options_pick_torchs_chunking_and_change_nothing():
    x, w, b, y, sw, _ = _data()
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    torch.testing.assert_close(
        samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, sample_weight=sw, options=opts),
        samplewt_ops.linear_cross_entropy(x, w, y, linear_bias=b, sample_weight=sw), **TIGHT)


@compiled
@pytest.mark.parametrize("out_features,bias", [((), False), ((), True), ((2,), True)])
def test_module_owns_its_head_as_torchs_does(out_features, bias):
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(5, 7, out_features=out_features, bias=bias,
                                             dtype=f64, label_smoothing=0.1)
    torch.manual_seed(0)
    ours = samplewt_ops.LinearCrossEntropyLoss(5, 7, out_features=out_features, bias=bias,
                                               dtype=f64, label_smoothing=0.1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, t in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], t, rtol=0, atol=0)  # the same init
    x, *_ = _data()
    y = torch.randint(0, 7, (6, *out_features))
    torch.testing.assert_close(ours(x, y), theirs(x, y), **TIGHT)
    sw = torch.rand(6, dtype=f64)
    head = ours.linear.weight.reshape(7, *out_features, 5)
    bias_t = None if not bias else ours.linear.bias.reshape(7, *out_features)
    got = ours(x, y, sample_weight=sw)
    want = samplewt_ops.linear_cross_entropy(x, head, y, linear_bias=bias_t, sample_weight=sw,
                                             label_smoothing=0.1)
    torch.testing.assert_close(got, want, **TIGHT)
    got.backward()
    assert ours.linear.weight.grad is not None and ours.linear.weight.grad.abs().sum() > 0
    assert "in_features=5" in repr(ours) and "num_classes=7" in repr(ours)


@compiled
def test_own_head_module_takes_a_table():
    a, c = AdaptiveWeights(20, LossEMA()), AdaptiveWeights(20, LossEMA())
    torch.manual_seed(0)
    ours = samplewt_ops.LinearCrossEntropyLoss(5, 7, dtype=f64, table=a)
    x, _, _, y, _, _ = _data()
    idx = torch.arange(6) * 3
    got = ours(x, y, indices=idx)
    want = samplewt_ops.linear_cross_entropy(x, ours.linear.weight, y, table=c, indices=idx)
    torch.testing.assert_close(got, want, **TIGHT)
    _assert_tables_close(a, c)


@compiled
def test_linear_focal_module_owns_its_head():
    torch.manual_seed(0)
    m = samplewt_ops.LinearFocalLoss(5, 7, bias=True, dtype=f64, gamma=1.0, reduction="sum")
    x, _, _, y, sw, _ = _data()
    torch.testing.assert_close(
        m(x, y, sw), samplewt_ops.linear_focal_loss(x, m.linear.weight, y, linear_bias=m.linear.bias,
                                                    gamma=1.0, sample_weight=sw, reduction="sum"),
        **TIGHT)


@compiled
@pytest.mark.parametrize("out_features", [(), (2,)])
def test_own_head_module_compiles_without_graph_breaks(out_features):
    torch.manual_seed(0)
    m = samplewt_ops.LinearCrossEntropyLoss(5, 7, out_features=out_features, bias=True)
    x = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 7, (6, *out_features))
    sw = torch.rand(6)

    torch._dynamo.reset()
    compiled_loss = torch.compile(m, fullgraph=True)
    got, want = compiled_loss(x, y, sample_weight=sw), m(x, y, sample_weight=sw)
    torch.testing.assert_close(got, want)
    for a, c in zip(_grads(got, x, m.linear.weight), _grads(want, x, m.linear.weight)):
        torch.testing.assert_close(a, c)


def test_module_constructor_errors():
    with pytest.raises(TypeError, match="num_classes"):
        samplewt_ops.LinearCrossEntropyLoss(5)
    with pytest.raises(TypeError, match="in_features and num_classes"):
        samplewt_ops.LinearCrossEntropyLoss(bias=True)
    with pytest.raises(RuntimeError, match=r"expected weight shape to be \(7,\)"):
        samplewt_ops.LinearCrossEntropyLoss(5, 7, weight=torch.ones(3))
    with pytest.raises(TypeError, match="out_features"):
        samplewt_ops.LinearCrossEntropyLoss(5, 7, out_features=(0,))
    with pytest.raises(TypeError, match="options"):
        samplewt_ops.LinearCrossEntropyLoss(5, 7, options="chunked")
