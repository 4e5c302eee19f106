import os

import numpy as np
import pytest

from pipeline.classes import ClassInfo, ClassTable
from pipeline.shards import (
    Sample,
    ShardedWriter,
    ShardWriter,
    iter_shard,
    iter_split,
    list_shards,
    load_split,
)

TABLE = ClassTable((ClassInfo(0, "bg", (0, 0, 9)), ClassInfo(1, "fg", (9, 0, 0))))


def _samples(n, h=6, w=5):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Sample(
            key=f"k{i:03d}",
            mask=rng.integers(0, 2, (h, w), dtype=np.uint8),
            image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            meta={"i": i},
        )


def test_round_trip_in_order_across_shards(tmp_path):
    src = list(_samples(7))
    with ShardedWriter(tmp_path, "train", 3, TABLE) as w:
        for s in src:
            w.write(s)
    assert [p.name for p in list_shards(tmp_path, "train")] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    got = list(iter_split(tmp_path, "train"))
    assert [g.key for g in got] == [s.key for s in src]
    for g, s in zip(got, src, strict=True):
        assert (g.mask == s.mask).all() and (g.image == s.image).all() and g.meta == s.meta
    images, masks, keys = load_split(tmp_path, "train")
    assert images.shape == (7, 6, 5, 3) and masks.shape == (7, 6, 5) and len(keys) == 7


def test_same_samples_give_identical_bytes(tmp_path):
    for d in ("a", "b"):
        with ShardWriter(tmp_path / d / "s-000000.tar", TABLE) as w:
            for s in _samples(4):
                w.write(s)
    assert (tmp_path / "a/s-000000.tar").read_bytes() == (tmp_path / "b/s-000000.tar").read_bytes()


def test_crash_mid_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "train-000000.tar", TABLE) as w:
            w.write(next(_samples(1)))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_mask_only_samples(tmp_path):
    with ShardWriter(tmp_path / "m-000000.tar") as w:
        w.write(Sample("a", np.ones((3, 3), np.uint8)))
    (s,) = list(iter_shard(tmp_path / "m-000000.tar"))
    assert s.image is None and s.mask.sum() == 9


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    with ShardedWriter(tmp_path, "train", 2, TABLE) as w:
        for s in _samples(3):
            w.write(s)
    urls = [str(p) for p in list_shards(tmp_path, "train")]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [g["__key__"] for g in got] == ["k000", "k001", "k002"]
    assert {"image.png", "mask.png", "json"} <= set(got[0])


def test_corrupt_shard_is_a_clear_error(tmp_path):
    from pipeline.errors import DatasetError

    p = tmp_path / "train-000000.tar"
    with ShardWriter(p, TABLE) as w:
        for s in _samples(3):
            w.write(s)
    p.write_bytes(p.read_bytes()[:700])
    with pytest.raises(DatasetError, match="train-000000.tar"):
        list(iter_shard(p))
