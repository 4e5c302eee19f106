"""The public loader: class-id masks (not RGB colours), exact epochs across DataLoader workers and
DDP ranks, seeded shuffling, exact mid-epoch resume, and the plain webdataset recipe."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import ShardDataset, SplitDataset, loader
from pipeline.errors import DatasetError
from pipeline.shards import list_shards


def shard_masks(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    """key → the mask PNG's pixel values as stored (palette indices = class ids)."""
    out = {}
    for path in list_shards(root, split):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mask.png"):
                    png = Image.open(io.BytesIO(tar.extractfile(m).read()))
                    assert png.mode == "P"  # palette PNG: RGB decoding would return colours
                    out[m.name.split(".")[0]] = np.array(png)
    return out


def test_masks_are_the_class_ids_of_the_shard_pngs(tiny_shapes: Path) -> None:
    ids = shard_masks(tiny_shapes)
    ds = ShardDataset(tiny_shapes, "train", with_keys=True)
    seen = 0
    for image, mask, key in ds:
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        assert 0 <= image.min() and image.max() <= 1
        assert mask.dtype == torch.long and mask.shape == (32, 32)
        assert torch.equal(mask, torch.from_numpy(ids[key]).long()), key
        seen += 1
    assert seen == len(ids) == 48
    assert int(mask.max()) < ds.table.num_classes  # ids, never colour values like 255


def readers_keys(root: Path, ranks: int, workers: int, **kw) -> list[list[str]]:
    """Keys each rank's DataLoader yields in one epoch, ranks simulated in this process."""
    out = []
    for rank in range(ranks):
        ds = ShardDataset(root, "train", with_keys=True, rank=rank, world_size=ranks, **kw)
        keys = [k for _, _, batch_keys in loader(ds, 4, num_workers=workers) for k in batch_keys]
        out.append(keys)
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_workers_on_two_ranks_see_every_sample_once(tiny_shapes: Path, shuffle: bool) -> None:
    per_rank = readers_keys(tiny_shapes, ranks=2, workers=2, shuffle=shuffle, buffer_size=8)
    counts = Counter(k for keys in per_rank for k in keys)
    assert set(counts) == set(shard_masks(tiny_shapes)) and set(counts.values()) == {1}
    assert [len(k) for k in per_rank] == [24, 24]  # an even split: DDP steps stay in lockstep


def test_shuffle_is_seeded_per_epoch(tiny_shapes: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        ds = ShardDataset(tiny_shapes, "train", shuffle=True, seed=seed, with_keys=True)
        ds.set_epoch(epoch)
        return [k for _, _, k in ds]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(0, 0))


def test_a_run_resumed_mid_epoch_sees_the_same_samples(tiny_shapes: Path) -> None:
    def batches(start: int) -> list[list[str]]:
        ds = ShardDataset(tiny_shapes, "train", shuffle=True, seed=3, with_keys=True)
        return [list(k) for _, _, k in loader(ds, 4, num_workers=2, start_batch=start)]

    full = batches(0)
    assert len(full) == 12
    assert batches(5) == full[5:] and batches(4) == full[4:]


def test_split_dataset_matches_the_stream(tiny_shapes: Path) -> None:
    ds = SplitDataset(tiny_shapes, "val")
    stream = list(ShardDataset(tiny_shapes, "val"))
    assert len(ds) == len(stream) == 16
    for i in (0, 7, 15):
        assert all(torch.equal(a, b) for a, b in zip(ds[i], stream[i], strict=True))


def test_mixing_datasets_needs_one_class_table(tiny_shapes: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "classes.json").write_text(
        '{"classes": [{"id": 0, "name": "sky", "color": [0, 0, 255]}], "ignore_index": 255}'
    )
    with pytest.raises(DatasetError, match="does not match"):
        ShardDataset([tiny_shapes, other])


def test_the_plain_webdataset_recipe_decodes_ids(tiny_shapes: Path) -> None:
    # What the README tells a webdataset user: decode the mask PNG as raw ids, not as RGB.
    import webdataset as wds

    ids = shard_masks(tiny_shapes)
    urls = [str(p) for p in list_shards(tiny_shapes, "train")]

    def mask_ids(data: bytes) -> np.ndarray:
        return np.array(Image.open(io.BytesIO(data)))  # palette indices = class ids

    ds = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode(wds.handle_extension("mask.png", mask_ids), "rgb8")
        .to_tuple("__key__", "image.png", "mask.png")
    )
    n = 0
    for key, image, mask in ds:
        assert image.shape == (32, 32, 3) and np.array_equal(mask, ids[key])
        n += 1
    assert n == 48
    # The natural call is the trap: "rgb8" alone turns the mask into colours.
    (_, naive), *_ = (
        wds.WebDataset(urls[:1], shardshuffle=False).decode("rgb8").to_tuple("__key__", "mask.png")
    )
    assert naive.shape == (32, 32, 3)


def test_the_readme_recipe_runs_as_written(tiny_shapes: Path, tmp_path: Path, monkeypatch) -> None:
    import re
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(
        r"<!-- recipe:start -->\n```python\n(.*?)```\n<!-- recipe:end -->", readme, re.S
    )
    assert code is not None and len(code[1].splitlines()) <= 16
    (tmp_path / "data").mkdir()
    shutil.copytree(tiny_shapes, tmp_path / "data" / "prepared")
    shutil.copytree(tiny_shapes, tmp_path / "data" / "synthetic")  # a stand-in: same layout
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code[1], "README recipe", "exec"), scope)
    assert scope["loss"].item() > 0 and scope["images"].shape[1:] == (3, 32, 32)


def test_shard_index_reads_samples_by_position_without_loading_the_split(tiny_shapes: Path) -> None:
    from torch.utils.data import DataLoader

    from pipeline.data import ShardIndex
    from pipeline.shards import load_split

    index = ShardIndex(tiny_shapes, "train")
    images, masks, keys = load_split(tiny_shapes, "train")
    assert len(index) == 48 and index.shape() == (32, 32) and index.has_images
    idx = np.array([47, 0, 16, 16, 31])  # across shards, repeats allowed
    got_images, got_masks = index.pairs(idx)
    assert np.array_equal(got_images, images[idx]) and np.array_equal(got_masks, masks[idx])
    assert np.array_equal(index.masks(idx), masks[idx])
    # map-style under DataLoader workers (each reopens the shards)
    batches = list(DataLoader(index, batch_size=16, num_workers=2))
    assert torch.equal(torch.cat([m for _, m in batches]), torch.from_numpy(masks).long())
