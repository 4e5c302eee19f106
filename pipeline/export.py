"""Stage `export`: image+mask shards → COCO-Stuff JSON, COCO panoptic or Cityscapes folders.

Reads one split of a shard dataset (the synthetic one by default; a prepared one works too) and
writes, per format, a folder that the format's own tools read: pycocotools for COCO, the
cityscapesscripts evaluator for Cityscapes. Shards are converted in parallel, one task per shard;
ids are assigned in shard order afterwards, so the output does not depend on the worker count.
Image PNGs are copied byte for byte from the shards. Each output folder is built under a
temporary name and swapped in when complete: a failed export leaves the previous one intact.

    semsynth export                      # every format in export.formats
    semsynth export --format coco        # one format
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.config import ConfigError, section
from pipeline.errors import DatasetError
from pipeline.io_utils import write_metrics
from pipeline.shards import list_shards, splits

SECTION = "export"
FORMATS = ("coco", "coco-panoptic", "cityscapes")
FOLDERS = {"coco": "coco", "coco-panoptic": "coco_panoptic", "cityscapes": "cityscapes"}


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = field(
        default=("coco", "cityscapes"),
        metadata={
            "help": "formats to write: coco | coco-panoptic | cityscapes (--format picks one)"
        },
    )
    data: str = field(default="data/synthetic", metadata={"help": "shard dataset to export"})
    split: str = field(default="train", metadata={"help": "which split of it"})
    out: str = field(default="data/export", metadata={"help": "each format goes to OUT/<format>"})
    city: str = field(default="synth", metadata={"help": "Cityscapes city name in file names"})
    workers: int = field(default=2, metadata={"help": "processes converting shards (0 = inline)"})
    metrics: str = "metrics/export.json"

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(
                f"export.formats {list(self.formats)}: unknown {bad}; choose from {list(FORMATS)}"
            )
        if self.workers < 0:
            raise ConfigError(f"export.workers {self.workers} must be >= 0")
        if not self.city.isalnum():
            raise ConfigError(
                f"export.city {self.city!r} must be letters/digits (Cityscapes parses '_' in names)"
            )


Config = ExportConfig


# ---- reading shards raw --------------------------------------------------------------------
def iter_raw_shard(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {"image.png": bytes, "mask.png": bytes, "json": bytes}) without decoding."""
    path = Path(path)
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, ext = member.name.partition(".")
                if key is not None and k != key:
                    yield key, files
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(
            f"{path}: cannot read shard ({e}); re-run the stage that wrote it"
        ) from None
    if key is not None:
        yield key, files


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


def check_unique(keys: Iterable[str], data_dir: Path) -> None:
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            raise DatasetError(f"{data_dir}: sample key {k!r} appears twice; keys must be unique")
        seen.add(k)


# ---- the stage -----------------------------------------------------------------------------
def export(
    cfg: ExportConfig,
    data_dir: Path | None = None,
    out_root: Path | None = None,
    formats: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Write each format to `out_root/<format>`; returns the metrics (also written to cfg.metrics)."""
    from pipeline.export_cityscapes import export_cityscapes
    from pipeline.export_coco import export_coco

    data_dir = Path(data_dir or cfg.data)
    out_root = Path(out_root or cfg.out)
    formats = tuple(formats or cfg.formats)
    metrics: dict[str, float] = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"export format {fmt!r} is not one of {list(FORMATS)}")
        t0 = time.perf_counter()
        out = out_root / FOLDERS[fmt]
        if fmt == "cityscapes":
            n = export_cityscapes(data_dir, out, cfg.split, cfg.city, cfg.workers, progress)
        else:
            n = export_coco(data_dir, out, cfg.split, fmt == "coco-panoptic", cfg.workers, progress)
        dt = time.perf_counter() - t0
        name = FOLDERS[fmt]
        metrics[f"{name}_samples"] = float(n)
        metrics[f"{name}_seconds"] = round(dt, 3)
        metrics[f"{name}_samples_per_s"] = round(n / dt, 2)
    write_metrics(cfg.metrics, metrics)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, help="write only this format")
    parser.add_argument("--data", help="shard dataset to export (default: export.data)")
    parser.add_argument("--out", help="output root (default: export.out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, ExportConfig)
    formats = (args.format,) if args.format else cfg.formats
    out_root = Path(args.out or cfg.out)
    metrics = export(cfg, args.data and Path(args.data), out_root, formats, not args.quiet)
    for fmt in formats:
        name = FOLDERS[fmt]
        print(
            f"exported {int(metrics[f'{name}_samples'])} samples as {fmt} into {out_root / name} "
            f"({metrics[f'{name}_samples_per_s']} samples/s)"
        )
    return metrics
