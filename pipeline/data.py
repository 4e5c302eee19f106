"""Training data from shards for your own models: images as float tensors, masks as class ids.

    from torch.utils.data import DataLoader
    from pipeline.data import ShardDataset, loader

    ds = ShardDataset(["data/prepared", "data/synthetic"], "train", shuffle=True, seed=0)
    for images, masks in loader(ds, batch_size=16, num_workers=2):
        ...  # images float [B, 3, H, W] in [0, 1]; masks long [B, H, W], void = ds.table.ignore_index

`ShardDataset` streams: memory does not grow with the dataset, only with the shuffle buffer.
Under `DataLoader(num_workers=W)` and DDP (R ranks) the R x W readers split every epoch by
sample: reader k takes the samples k, k + RW, k + 2RW, ... of the epoch's order, so nothing is
seen twice or lost and readers differ by at most one sample. Each reader still scans every
shard (it decodes only its own samples: PNG decoding, not reading, is the cost). Shuffling is
seeded by (seed, epoch, reader): a shard order per epoch, then a buffer. `loader(...,
start_batch=n)` continues an epoch after n batches exactly as the uninterrupted run would.
`SplitDataset` is the map-style alternative for a split that fits in memory.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from pipeline import distributed
from pipeline.classes import ClassTable
from pipeline.errors import DatasetError
from pipeline.shards import (
    Sample,
    decode_sample,
    iter_raw_shard,
    list_shards,
    load_class_table,
    load_split,
    shard_offsets,
)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3], uint8 [H, W] → float [3, H, W] in [0, 1], long [H, W] (class ids)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return x, torch.from_numpy(np.ascontiguousarray(mask)).long()


def shared_table(roots: Sequence[str | Path]) -> ClassTable:
    """The class table of every dataset in `roots`; they must agree (same classes, same void)."""
    tables = [load_class_table(r) for r in roots]
    for root, t in zip(roots[1:], tables[1:], strict=True):
        if (t.names, t.ignore_index) != (tables[0].names, tables[0].ignore_index):
            raise DatasetError(
                f"{root}/classes.json does not match {roots[0]}/classes.json; mix only datasets "
                "prepared with the same class table"
            )
    return tables[0]


class ShardDataset(IterableDataset):
    """Samples of one split of one or more shard datasets (prepared, synthetic or both)."""

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        split: str = "train",
        *,
        shuffle: bool = False,
        seed: int = 0,
        buffer_size: int = 512,
        transform: Transform | None = None,
        with_keys: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]
        if not self.roots:
            raise DatasetError("ShardDataset needs at least one dataset folder")
        self.table = shared_table(self.roots)
        self.shards = [p for r in self.roots for p in list_shards(r, split)]
        if not self.shards:
            raise DatasetError(f"no '{split}-*.tar' shards in {[str(r) for r in self.roots]}")
        self.shuffle, self.seed, self.buffer_size = shuffle, seed, buffer_size
        self.transform, self.with_keys = transform, with_keys
        # Ranks default to the running process group (torchrun); pass them to simulate one.
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        self.epoch, self.batch_size, self.start_batch = 0, 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Another shuffle per epoch (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        # DataLoader hands out its workers' batches in turn, starting with worker 0: after
        # `start_batch` batches, worker 0 must play the part of the worker that owns the next one.
        worker = ((info.id if info else 0) + self.start_batch) % workers
        reader, readers = self.rank * workers + worker, self.world_size * workers
        raw = ((p, k, f) for p in self._shard_order() for k, f in iter_raw_shard(p))
        mine: Iterable = itertools.islice(raw, reader, None, readers)
        if self.shuffle:
            mine = _buffered_shuffle(mine, self.buffer_size, self._rng(reader))
        # Of the first `start_batch` batches, worker w made those with index w, w + W, ...
        skip = len(range(worker, self.start_batch, workers)) * self.batch_size
        for path, key, files in itertools.islice(mine, skip, None):
            yield self._item(decode_sample(path, key, files))

    def _shard_order(self) -> list[Path]:
        if not self.shuffle:
            return list(self.shards)
        order = list(self.shards)
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def _rng(self, reader: int) -> random.Random:
        return random.Random(f"{self.seed}-{self.epoch}-{reader}")

    def _item(self, sample: Sample) -> tuple[torch.Tensor, ...]:
        if sample.image is None:
            raise DatasetError(f"sample {sample.key!r} has no image: a mask-only dataset")
        x, y = to_tensors(sample.image, sample.mask)
        if self.transform is not None:
            x, y = self.transform(x, y)
        return (x, y, sample.key) if self.with_keys else (x, y)


def _buffered_shuffle(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Yield `items` in a seeded random order using a buffer of `size` (webdataset's shuffle)."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def loader(
    dataset: ShardDataset, batch_size: int, num_workers: int = 0, start_batch: int = 0, **kw
) -> DataLoader:
    """A DataLoader over `dataset` that resumes an epoch after `start_batch` batches exactly."""
    dataset.batch_size, dataset.start_batch = batch_size, start_batch
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kw)


class ShardIndex(Dataset):
    """Random access to one split without loading it: an index of where each sample's PNGs lie in
    its shard (read from the tar headers only), decoded on demand. Memory grows with the number
    of samples by a few dozen bytes each, not with their pixels; the training stages draw their
    batches through it."""

    def __init__(self, root: str | Path, split: str = "train"):
        self.root, self.table = Path(root), load_class_table(root)
        self.entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        self.paths = list_shards(root, split)
        if not self.paths:
            raise DatasetError(
                f"{root}: no '{split}-*.tar' shards; re-run the stage that writes it"
            )
        for s, path in enumerate(self.paths):
            self.entries += [(s, key, where) for key, where in shard_offsets(path)]
        self.has_images = all("image.png" in w for _, _, w in self.entries)
        self._files: dict[int, object] = {}
        self._shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.sample(i)
        return to_tensors(sample.image, sample.mask)

    def sample(self, i: int, parts: Sequence[str] = ("image.png", "mask.png")) -> Sample:
        """Sample i with only `parts` of its files read and decoded (the mask at least)."""
        s, key, where = self.entries[i]
        f = self._files.get(s) or self._files.setdefault(s, open(self.paths[s], "rb"))  # noqa: SIM115
        files = {}
        for ext in {"mask.png", *parts} & where.keys():
            offset, size = where[ext]
            f.seek(offset)
            files[ext] = f.read(size)
        return decode_sample(self.paths[s], key, files)

    def masks(self, idx: Sequence[int]) -> np.ndarray:
        """uint8 [n, H, W] masks of samples `idx` (in that order, repeats allowed)."""
        return np.stack([self.sample(int(i), ("mask.png",)).mask for i in idx])

    def pairs(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [n, H, W, 3] and masks [n, H, W] of samples `idx`."""
        samples = [self.sample(int(i)) for i in idx]
        if any(s.image is None for s in samples):
            raise DatasetError(f"{self.root} has masks only: no images to train on")
        return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])

    def shape(self) -> tuple[int, int]:
        """(H, W) of the split's masks (all samples of a prepared split share it)."""
        if self._shape is None:  # read once: the training stages ask for it per empty batch too
            self._shape = self.sample(0, ("mask.png",)).mask.shape
        return self._shape

    def __getstate__(self) -> dict:  # DataLoader workers reopen the shards themselves
        return {**self.__dict__, "_files": {}}


class IndexedPairs:
    """Samples `rows` of a ShardIndex, drawn by position: decoded on demand (memory independent of
    the data), or all decoded up front with `in_memory` (the older path; memory grows with it)."""

    def __init__(self, index: ShardIndex, rows: Sequence[int], in_memory: bool = False):
        self.index, self.rows = index, np.asarray(rows, dtype=np.int64)
        self.arrays = index.pairs(self.rows) if in_memory else None

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [n, H, W, 3] and masks [n, H, W] at positions `idx`."""
        if self.arrays is not None:
            return self.arrays[0][idx], self.arrays[1][idx]
        if len(idx) == 0:
            h, w = self.index.shape()
            return np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w), np.uint8)
        return self.index.pairs(self.rows[idx])


class SplitDataset(Dataset):
    """Map-style: a whole split in memory (for splits that fit), with random access."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        images, self.masks, self.keys = load_split(root, split)
        if images is None:
            raise DatasetError(f"{root}/{split} has masks only: no images to train on")
        self.images, self.table, self.transform = images, load_class_table(root), transform

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = to_tensors(self.images[i], self.masks[i])
        return self.transform(x, y) if self.transform is not None else (x, y)
