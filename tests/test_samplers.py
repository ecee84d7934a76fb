import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from samplewt_ops.samplers import AdaptiveSampler, DistributedAdaptiveSampler
from samplewt_ops.weights import AdaptiveWeights, SelfPaced

# upper 1e-4 quantiles of the chi-square distribution (df -> critical value)
CHI2_CRIT = {4: 23.51, 5: 25.74, 19: 47.00}


def _chi2(observed, probs, n):
    expected = probs * n
    return float(((observed.double() - expected) ** 2 / expected).sum())


def test_with_replacement_follows_weights():
    w = torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0, 10.0])
    n = 60_000
    draws = torch.tensor(list(AdaptiveSampler(w, n, generator=torch.Generator().manual_seed(0))))
    assert draws.shape == (n,) and draws.dtype == torch.int64
    counts = torch.bincount(draws, minlength=6)
    assert counts[2] == 0  # zero weight never drawn
    nz = w > 0
    stat = _chi2(counts[nz], (w[nz] / w.sum()).double(), n)
    assert stat < CHI2_CRIT[4], stat


def test_chi2_detects_wrong_weights():
    # the same statistic rejects a sample that does not follow the weights (the test can fail)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    draws = torch.tensor(list(AdaptiveSampler(torch.ones(5), 60_000, generator=torch.Generator().manual_seed(0))))
    assert _chi2(torch.bincount(draws, minlength=5), (w / w.sum()).double(), 60_000) > CHI2_CRIT[4]


def test_many_categories_chi2():
    g = torch.Generator().manual_seed(5)
    w = torch.rand(20, generator=g) + 0.05
    n = 100_000
    draws = torch.tensor(list(AdaptiveSampler(w, n, generator=g)))
    stat = _chi2(torch.bincount(draws, minlength=20), (w / w.sum()).double(), n)
    assert stat < CHI2_CRIT[19], stat


def test_without_replacement_semantics():
    w = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0, 5.0])
    p = (w / w.sum()).double()
    g = torch.Generator().manual_seed(1)
    trials = 6000
    first = torch.zeros(6, dtype=torch.int64)
    pair = torch.zeros(6, 6, dtype=torch.int64)
    for _ in range(trials):
        d = list(AdaptiveSampler(w, 2, replacement=False, generator=g))
        assert d[0] != d[1] and 3 not in d
        first[d[0]] += 1
        pair[d[0], d[1]] += 1
    nz = w > 0
    assert _chi2(first[nz], p[nz], trials) < CHI2_CRIT[4]
    # second draw: P(j | i) = p_j / (1 - p_i), as successive draws from the remaining weights
    second = pair.sum(0).double()
    exp2 = torch.tensor(
        [sum(p[i] * p[j] / (1 - p[i]) for i in range(6) if i != j) for j in range(6)], dtype=torch.float64
    )
    assert _chi2(second[nz], exp2[nz], trials) < CHI2_CRIT[4]
    # all non-zero weights: a permutation of them
    perm = list(AdaptiveSampler(w, 5, replacement=False, generator=g))
    assert sorted(perm) == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="non-zero weights"):
        list(AdaptiveSampler(w, 6, replacement=False))


def test_deterministic_given_generator():
    w = torch.rand(1000)
    a = list(AdaptiveSampler(w, 50, generator=torch.Generator().manual_seed(3)))
    b = list(AdaptiveSampler(w, 50, generator=torch.Generator().manual_seed(3)))
    c = list(AdaptiveSampler(w, 50, generator=torch.Generator().manual_seed(4)))
    assert a == b and a != c
    a = list(AdaptiveSampler(w, 50, replacement=False, generator=torch.Generator().manual_seed(3)))
    assert a == list(AdaptiveSampler(w, 50, replacement=False, generator=torch.Generator().manual_seed(3)))


def test_thirty_million_samples():
    n = 30_000_000  # beyond torch.multinomial's 2**24 categories
    w = torch.ones(n, dtype=torch.float32)
    w[n // 2 :] = 3.0  # the upper half is 3x as likely: P(upper) = 0.75
    w[:1000] = 0.0
    k = 200_000
    draws = torch.tensor(list(AdaptiveSampler(w, k, generator=torch.Generator().manual_seed(0))))
    assert len(draws) == k and int(draws.min()) >= 1000 and int(draws.max()) < n
    assert int((draws >= 2**24).sum()) > 0
    frac = float((draws >= n // 2).double().mean())
    assert abs(frac - 0.75) < 0.005, frac  # ~ 5 standard deviations
    nr = torch.tensor(list(AdaptiveSampler(w, 20_000, replacement=False, generator=torch.Generator().manual_seed(1))))
    assert nr.unique().numel() == 20_000 and int(nr.min()) >= 1000 and int(nr.max()) < n
    assert abs(float((nr >= n // 2).double().mean()) - 0.75) < 0.02


def test_reads_table_live():
    table = AdaptiveWeights(8, SelfPaced(1.0))
    sampler = AdaptiveSampler(table, 400, generator=torch.Generator().manual_seed(0))
    assert set(sampler) == set(range(8))  # everything unseen: weight 1
    # samples 0..3 become too hard (loss above the threshold): weight 0 from now on
    table.observe(torch.arange(8), torch.tensor([5.0] * 4 + [0.1] * 4), torch.zeros(8))
    assert set(sampler) == {4, 5, 6, 7}


def test_dataloader_drop_in():
    ds = TensorDataset(torch.arange(10))
    sampler = AdaptiveSampler(torch.arange(10, dtype=torch.float32), 16, generator=torch.Generator().manual_seed(0))
    batches = [b[0] for b in DataLoader(ds, batch_size=4, sampler=sampler)]
    got = torch.cat(batches)
    assert len(got) == 16 and len(sampler) == 16 and 0 not in got.tolist()


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0, -0.5], "weights must be non-negative"),
        ([1.0, float("nan")], "weights must be finite"),
        ([1.0, float("inf")], "weights must be finite"),
        ([0.0, 0.0], "weights are all zero"),
        ([], "weights must not be empty"),
        ([[1.0, 2.0]], "weights must be 1-D"),
    ],
)
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSampler(torch.tensor(weights), 3)
    with pytest.raises(ValueError, match=match):
        DistributedAdaptiveSampler(torch.tensor(weights), num_replicas=2, rank=0)


def test_bad_weights_from_table_at_iteration():
    table = AdaptiveWeights(3, SelfPaced(1.0))
    sampler = AdaptiveSampler(table, 3)
    table.observe(torch.arange(3), torch.full((3,), float("nan")), torch.zeros(3), torch.zeros(3))
    table.observe(torch.arange(3), torch.full((3,), 9.0), torch.zeros(3))  # all above threshold -> all 0
    with pytest.raises(ValueError, match="all zero"):
        list(sampler)


@pytest.mark.parametrize("num_samples", [0, -1, 2.5, True, None])
def test_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        AdaptiveSampler(torch.ones(3), num_samples)
    if num_samples is not None:
        with pytest.raises(ValueError, match="num_samples"):
            DistributedAdaptiveSampler(torch.ones(3), num_replicas=2, rank=0, num_samples=num_samples)


def test_bad_replacement_and_rank():
    with pytest.raises(ValueError, match="replacement"):
        AdaptiveSampler(torch.ones(3), 2, replacement=1)
    with pytest.raises(ValueError, match="rank"):
        DistributedAdaptiveSampler(torch.ones(3), num_replicas=2, rank=2)
    with pytest.raises(RuntimeError, match="distributed"):
        DistributedAdaptiveSampler(torch.ones(3))


@pytest.mark.parametrize("total, replicas, drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (4, 4, True)])
@pytest.mark.parametrize("replacement", [True, False])
def test_distributed_split(total, replicas, drop_last, replacement):
    w = torch.arange(1.0, 13.0)
    shares = [
        DistributedAdaptiveSampler(
            w, replicas, r, num_samples=total, replacement=replacement, seed=7, drop_last=drop_last
        )
        for r in range(replicas)
    ]
    for s in shares:
        s.set_epoch(2)
    draws = [list(s) for s in shares]
    per = total // replicas if drop_last else math.ceil(total / replicas)
    assert all(len(d) == per == len(s) for d, s in zip(draws, shares))
    # one draw per epoch, seeded with seed + epoch, dealt round-robin
    full = list(AdaptiveSampler(w, total, replacement=replacement, generator=torch.Generator().manual_seed(9)))
    padded = (full * 2)[: per * replicas]
    for r, d in enumerate(draws):
        assert d == padded[r::replicas]
    if replacement is False and drop_last:
        merged = sum(draws, [])
        assert len(set(merged)) == len(merged)  # disjoint shares
    # another epoch gives another draw
    shares[0].set_epoch(3)
    assert list(shares[0]) != draws[0]
