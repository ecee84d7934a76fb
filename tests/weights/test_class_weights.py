import math

import pytest
import torch

from samplewt_ops.weights import class_weights


def _reference(targets, num_classes, method, beta=0.999):
    """Plain-Python reference in float64."""
    t = [int(v) for v in torch.as_tensor(targets).reshape(-1)]
    n = len(t)
    counts = [t.count(c) for c in range(num_classes)]
    if method == "inverse":
        w = [n / k if k else 0.0 for k in counts]
    elif method == "balanced":
        present = sum(1 for k in counts if k)
        w = [n / (present * k) if k else 0.0 for k in counts]
    else:
        raw = [(1 - beta) / (1 - beta**k) if k else 0.0 for k in counts]
        s = sum(raw)
        w = [r * num_classes / s if s else 0.0 for r in raw]
    return torch.tensor(w, dtype=torch.float64)


def test_docstring_example():
    cat, dog = 0, 1
    w = class_weights(torch.tensor([cat, cat, dog, dog, dog]), 2)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([2.5, 5 / 3]))


@pytest.mark.parametrize("method", ["inverse", "balanced", "effective"])
@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999])
def test_against_reference(method, beta):
    g = torch.Generator().manual_seed(3)
    # long-tailed counts and one class that never occurs (class 6)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0])
    targets = torch.multinomial(probs, 500, replacement=True, generator=g).reshape(20, 25)
    w = class_weights(targets, 7, method=method, beta=beta)
    ref = _reference(targets, 7, method, beta)
    assert w.shape == (7,)
    torch.testing.assert_close(w.double(), ref, rtol=1e-6, atol=1e-7)
    assert w[6] == 0
    if method == "effective":
        assert math.isclose(float(w.sum()), 7.0, rel_tol=1e-5)
    if method == "balanced":
        # averages to 1 over the samples, although class 6 never occurs
        assert math.isclose(float(w[targets].double().mean()), 1.0, rel_tol=1e-5)


def test_balanced_with_an_absent_class_issue_example():
    # issue 11: class 2 never occurs; scikit-learn divides by the 3 classes present
    w = class_weights([0, 0, 1, 3], 4, method="balanced")
    torch.testing.assert_close(w, torch.tensor([2 / 3, 4 / 3, 0.0, 4 / 3]))
    assert math.isclose(float(w[torch.tensor([0, 0, 1, 3])].mean()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "y, num_classes",
    [
        ([0, 0, 1, 3], 4),  # the issue's example: class 2 absent
        ([0, 1, 2, 0, 1, 0], 3),  # every class present
        ([4, 4, 4], 6),  # a single class present
        ([5, 0, 5, 5, 2, 2, 9, 5], 12),  # absent classes in the middle and at the end
        (torch.tensor([[1, 1, 3], [3, 3, 3]], dtype=torch.int32), 5),  # 2-D, int32, class 0 absent
        (torch.multinomial(torch.tensor([0.5, 0.0, 0.3, 0.15, 0.0, 0.05]), 300, replacement=True,
                           generator=torch.Generator().manual_seed(11)), 6),
    ],
    ids=["issue-example", "all-present", "one-class", "gaps", "2d-int32", "long-tailed"],
)
def test_balanced_matches_sklearn(y, num_classes):
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    np = pytest.importorskip("numpy")
    y_np = torch.as_tensor(y).reshape(-1).numpy().astype(np.int64)
    present = np.unique(y_np)
    expected = torch.zeros(num_classes, dtype=torch.float64)
    expected[torch.from_numpy(present)] = torch.from_numpy(
        class_weight.compute_class_weight("balanced", classes=present, y=y_np).astype(np.float64)
    )
    w = class_weights(y, num_classes, method="balanced")
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=1e-7)


def test_effective_beta_zero_is_uniform_over_present_classes():
    w = class_weights([0, 0, 0, 2], 3, method="effective", beta=0.0)
    torch.testing.assert_close(w, torch.tensor([1.5, 0.0, 1.5]))


def test_list_input_and_int32():
    torch.testing.assert_close(class_weights([1, 1, 0], 2), torch.tensor([3.0, 1.5]))
    torch.testing.assert_close(class_weights(torch.tensor([1, 1, 0], dtype=torch.int32), 2), torch.tensor([3.0, 1.5]))


def test_empty_targets_give_zeros():
    assert torch.equal(class_weights(torch.empty(0, dtype=torch.int64), 3), torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(num_classes=-2), ValueError, "num_classes"),
        (dict(num_classes=2.0), TypeError, "num_classes"),
        (dict(num_classes=3, method="sqrt"), ValueError, "method"),
        (dict(num_classes=3, method="effective", beta=1.0), ValueError, "beta"),
        (dict(num_classes=3, method="effective", beta=-0.1), ValueError, "beta"),
        (dict(num_classes=2), IndexError, "targets"),  # class 2 out of range
    ],
)
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        class_weights(torch.tensor([0, 1, 2]), **kwargs)


def test_negative_and_float_targets():
    with pytest.raises(IndexError, match="targets"):
        class_weights(torch.tensor([0, -1]), 2)
    with pytest.raises(TypeError, match="targets"):
        class_weights(torch.tensor([0.0, 1.0]), 2)
