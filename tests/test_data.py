import pickle
from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import samplewt_ops
from samplewt_ops import AdaptiveSampler, IndexedDataset


class _Squares(Dataset):
    """Non-tuple items (a 0-dim tensor) and an attribute to pass through."""

    classes = ["even", "odd"]

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(float(i * i))


class _Batched(_Squares):
    """A dataset with DataLoader's batched fetch, __getitems__."""

    def __init__(self, n):
        super().__init__(n)
        self.batched_calls = 0

    def __getitems__(self, indices):
        self.batched_calls += 1
        return [torch.tensor(float(i * i)) for i in indices]


def test_exported():
    assert samplewt_ops.IndexedDataset is IndexedDataset
    assert "IndexedDataset" in samplewt_ops.__all__


def test_tuple_items_get_the_index_appended():
    base = TensorDataset(torch.arange(5.0) * 10, torch.arange(5) % 2)
    ds = IndexedDataset(base)
    assert len(ds) == 5
    x, y, i = ds[3]
    assert i == 3 and isinstance(i, int)
    assert float(x) == 30.0 and int(y) == 1


def test_namedtuple_item_becomes_plain_tuple():
    Pair = namedtuple("Pair", "x y")
    ds = IndexedDataset([Pair(1, 2), Pair(3, 4)])
    assert ds[1] == (3, 4, 1) and type(ds[1]) is tuple


@pytest.mark.parametrize("item", [torch.tensor([1.0, 2.0]), {"x": 1}, [1, 2], "text", 7])
def test_non_tuple_items_become_pairs(item):
    ds = IndexedDataset([item, item])
    got, i = ds[1]
    assert i == 1 and got is item


def test_dataloader_tuple_items_yield_the_batch_indices():
    n = 10
    base = TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3)
    loader = DataLoader(IndexedDataset(base), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for x, y, idx in loader:
        assert idx.dtype == torch.int64
        torch.testing.assert_close(x[:, 0], idx.float())  # each row is its own index
        torch.testing.assert_close(y, idx % 3)
        seen += idx.tolist()
    assert sorted(seen) == list(range(n))


def test_dataloader_non_tuple_items():
    loader = DataLoader(IndexedDataset(_Squares(7)), batch_size=3)
    batches = list(loader)
    assert [len(idx) for _, idx in batches] == [3, 3, 1]
    for x, idx in batches:
        torch.testing.assert_close(x, (idx * idx).float())


def test_with_adaptive_sampler_and_table():
    n = 12
    base = TensorDataset(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)), torch.arange(n) % 3)
    table = samplewt_ops.AdaptiveWeights(n, samplewt_ops.LossEMA(momentum=0.5))
    sampler = AdaptiveSampler(table, num_samples=20, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(IndexedDataset(base), batch_size=5, sampler=sampler)
    drawn = []
    for x, y, idx in loader:
        torch.testing.assert_close(x, base.tensors[0][idx])
        torch.testing.assert_close(y, base.tensors[1][idx])
        samplewt_ops.cross_entropy(x, y, table=table, indices=idx)
        drawn += idx.tolist()
    assert len(drawn) == 20
    assert bool((table.seen_count > 0).any())
    assert int(table.seen_count.sum()) == 20  # every drawn index reached the table


def test_batched_fetch_is_kept():
    base = _Batched(6)
    loader = DataLoader(IndexedDataset(base), batch_size=4)
    (x0, i0), (x1, i1) = list(loader)
    assert base.batched_calls == 2
    torch.testing.assert_close(x0, (i0 * i0).float())
    assert i1.tolist() == [4, 5]


def test_attribute_pass_through_and_pickling():
    ds = IndexedDataset(_Squares(4))
    assert ds.classes == ["even", "odd"] and ds.n == 4
    assert isinstance(ds.dataset, _Squares)
    with pytest.raises(AttributeError):
        ds.missing
    with pytest.raises(AttributeError):
        ds._private  # private names are not forwarded
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers need
    assert clone[2] == (torch.tensor(4.0), 2)


def test_rejects_iterable_and_non_indexable():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(Stream())
    with pytest.raises(TypeError, match=r"dataset\[i\]"):
        IndexedDataset(42)
