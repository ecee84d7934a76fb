"""Dataset helpers for the adaptive tables: a dataset that also yields each item's index."""

from __future__ import annotations

from typing import Any, List, Sequence

from torch.utils.data import Dataset, IterableDataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    r"""Wraps a map-style dataset so that each item also carries its dataset index.

    An :class:`~samplewt_ops.AdaptiveWeights` table is keyed by dataset index,
    so the training loop needs each sample's index next to its data to pass it
    as ``indices=``. ``IndexedDataset(dataset)[i]`` is:

    * ``(*dataset[i], i)`` when ``dataset[i]`` is a tuple (the usual
      ``(x, y)`` becomes ``(x, y, i)``; a namedtuple becomes a plain tuple);
    * ``(dataset[i], i)`` for any other item (a tensor, a dict, a list, ...).

    The index is a Python ``int``; a :class:`~torch.utils.data.DataLoader`
    collates it into an int64 tensor of the batch's indices, which works with
    every sampler, shuffling, :class:`~samplewt_ops.AdaptiveSampler` and
    :class:`~samplewt_ops.DistributedAdaptiveSampler` included.

    ``len()`` is the wrapped dataset's; other attributes (``targets``,
    ``classes``, ...) are read from the wrapped dataset, which stays available
    as ``.dataset``. A dataset with a batched ``__getitems__`` keeps it.

    Args:
        dataset: a map-style dataset (``__getitem__`` with integer indices
            and ``__len__``); an :class:`~torch.utils.data.IterableDataset`
            has no indices and is rejected.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.arange(6.0), torch.arange(6) % 2))
        >>> ds[4]
        (tensor(4.), tensor(0), 4)
        >>> x, y, idx = next(iter(DataLoader(ds, batch_size=3)))
        >>> idx
        tensor([0, 1, 2])
    """

    def __init__(self, dataset: Any):
        if isinstance(dataset, IterableDataset):
            raise TypeError("IndexedDataset: needs a map-style dataset; an IterableDataset has no indices")
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(f"IndexedDataset: dataset must support dataset[i], got {type(dataset).__name__}")
        self.dataset = dataset

    @staticmethod
    def _with_index(item: Any, index: int) -> tuple:
        return (*item, index) if isinstance(item, tuple) else (item, index)

    def __getitem__(self, index: int) -> tuple:
        return self._with_index(self.dataset[index], index)

    def __getitems__(self, indices: Sequence[int]) -> List[tuple]:
        # DataLoader's batched fetch: use the wrapped dataset's own when it has one.
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [self._with_index(item, i) for item, i in zip(items, indices)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper. Private and
        # special names are not forwarded (keeps pickling for worker processes
        # and protocol lookups on the wrapper itself).
        if name.startswith("_") or "dataset" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.__dict__["dataset"], name)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
