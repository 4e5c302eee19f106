"""What every exporter shares: the shard list, image+mask pairs, and the per-shard worker pool.

Lives apart from the `export` stage so the format writers (`export_coco`, `export_cityscapes`)
import it and the stage imports them: one direction, no cycle. Reading the tar itself is
`pipeline.shards.iter_raw_shard`.
"""

from __future__ import annotations

import io
import multiprocessing as mp
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.errors import DatasetError
from pipeline.shards import list_shards, splits


def decode_pair(path: Path, key: str, files: dict[str, bytes]) -> tuple[bytes, np.ndarray]:
    """(image PNG bytes as stored, uint8 [H, W] mask); both must be present."""
    if "image.png" not in files:
        raise DatasetError(
            f"{path}: sample {key!r} has no image; export needs image+mask pairs "
            "(generate with generate.images_per_mask >= 1)"
        )
    if "mask.png" not in files:
        raise DatasetError(
            f"{path}: sample {key!r} has no mask.png; re-run the stage that wrote it"
        )
    with Image.open(io.BytesIO(files["mask.png"])) as m:
        mask = np.array(m, dtype=np.uint8)
    return files["image.png"], mask


def shard_paths(data_dir: Path, split: str) -> list[Path]:
    """The split's shards in order; none is an error that lists the splits there are."""
    shards = list_shards(data_dir, split)
    if not shards:
        raise DatasetError(
            f"{data_dir}: no '{split}-*.tar' shards to export; available splits: "
            f"{splits(data_dir) or 'none'} (set export.data / export.split, or run `semsynth generate`)"
        )
    return shards


def run_shards(
    fn: Callable[[Any], Any], tasks: list[Any], workers: int, progress: bool, desc: str
) -> Iterable[Any]:
    """Apply `fn` to each shard task, in order, in `workers` processes (0 = inline)."""
    if workers and len(tasks) > 1:
        with mp.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            yield from tqdm(pool.imap(fn, tasks), total=len(tasks), desc=desc, disable=not progress)
    else:
        yield from tqdm(map(fn, tasks), total=len(tasks), desc=desc, disable=not progress)
