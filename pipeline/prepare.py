"""Stage `prepare`: source dataset → validated, resized, split shards + classes.json + stats.

Reads any registered dataset (`shapes`, `paired_folders`, `cityscapes`, `coco_stuff`), fits every
pair to the working size (antialiased resize for images, nearest for masks; or keep aspect and
centre-crop), keeps the dataset's own splits (else draws them by seed) and writes shards. The output
folder is built under a temporary name and swapped in at the end: on any error nothing partial is
left and a previous good output is kept.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.config import ConfigError, section, to_dict
from pipeline.datasets import open_source
from pipeline.io_utils import atomic_output_dir, atomic_write_json, write_metrics
from pipeline.shards import Sample, ShardedWriter, encode_sample, label_subset

SECTION = "prepare"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str = field(
        default="shapes", metadata={"help": "shapes | paired_folders | cityscapes | coco_stuff"}
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "reader options (root, class_table, ...)"}
    )
    size: tuple[int, int] = field(default=(64, 64), metadata={"help": "working size [H, W]"})
    fit: Literal["resize", "crop"] = field(
        default="resize", metadata={"help": "resize (stretch) or crop (keep aspect)"}
    )
    val_fraction: float = field(
        default=0.2, metadata={"help": "val share for datasets without their own val split"}
    )
    split_seed: int = 0
    fraction: float = field(
        default=1.0, metadata={"help": "seeded share of each split to keep (quick runs)"}
    )
    train_fraction: float = field(
        default=1.0,
        metadata={
            "help": "seeded share of the train split to keep, val/test whole: a label-scarce run "
            "in which every stage, the GANs included, sees only these pairs"
        },
    )
    samples_per_shard: int = 256
    workers: int = field(
        default=2, metadata={"help": "decode/resize/encode processes (0 = inline)"}
    )
    out: str = "data/prepared"
    metrics: str = "metrics/prepare.json"

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 8 or w < 8:
            raise ConfigError(f"prepare.size {list(self.size)} is too small; use at least [8, 8]")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"prepare.val_fraction {self.val_fraction} must be in (0, 1)")
        for key in ("fraction", "train_fraction"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"prepare.{key} {getattr(self, key)} must be in (0, 1]")
        if self.samples_per_shard < 1 or self.workers < 0:
            raise ConfigError("prepare.samples_per_shard must be >= 1 and prepare.workers >= 0")


Config = PrepareConfig


def fit_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int], mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a pair to `size` (H, W): antialiased image resize, nearest for the mask."""
    h, w = mask.shape
    H, W = size
    if (h, w) == (H, W):
        return image, mask
    if mode == "crop":  # scale so the pair covers H x W, then take the centre
        s = max(H / h, W / w)
        rh, rw = max(H, round(h * s)), max(W, round(w * s))
    else:
        rh, rw = H, W
    img = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((rw, rh), Image.Resampling.NEAREST))
    top, left = (rh - H) // 2, (rw - W) // 2
    return img[top : top + H, left : left + W], msk[top : top + H, left : left + W]


def assign_splits(
    entries: dict[str | None, list],
    val_fraction: float,
    seed: int,
    fraction: float,
    train_fraction: float = 1.0,
) -> dict[str, list]:
    """Keep the dataset's own splits; draw train/val by seed where it has none (or no val).

    `fraction` thins every split; `train_fraction` only train, in nested subsets (the 10% lie
    inside the 25%), the same ones `train_segmenter`'s `real_fraction` draws for seed `seed`.
    """
    entries = dict(entries)
    rng = np.random.default_rng(seed)
    pool = entries.pop(None, None)
    if pool is None and "val" not in entries and "train" in entries:
        pool = entries.pop("train")
    if pool is not None:
        order = rng.permutation(len(pool))
        n_val = max(1, round(len(pool) * val_fraction)) if len(pool) > 1 else 0
        entries["val"] = [pool[i] for i in sorted(order[:n_val])]
        entries["train"] = [pool[i] for i in sorted(order[n_val:])]
    if fraction < 1:
        for s, items in entries.items():
            keep = sorted(rng.permutation(len(items))[: max(1, round(len(items) * fraction))])
            entries[s] = [items[i] for i in keep]
    if train_fraction < 1 and entries.get("train"):
        entries["train"] = [
            entries["train"][i] for i in label_subset(len(entries["train"]), train_fraction, seed)
        ]
    return {
        s: entries[s]
        for s in sorted(
            entries,
            key=lambda s: ("train", "val", "test").index(s) if s in ("train", "val", "test") else 9,
        )
    }


# Worker state: the source is inherited through fork (COCO indexes are big to pickle per task).
_W: dict[str, Any] = {}


def _init_worker(source: Any, size: tuple[int, int], fit: str) -> None:
    _W.update(source=source, size=size, fit=fit)


def _process(entry: Any) -> tuple[list[tuple[str, bytes]], np.ndarray]:
    src = _W["source"]
    key, image, mask = src.load(entry)
    image, mask = fit_pair(image, mask, _W["size"], _W["fit"])
    files = encode_sample(
        Sample(key=key.replace(".", "_"), mask=mask, image=image, meta={"source_key": key}),
        src.table,
    )
    return files, np.bincount(mask.reshape(-1), minlength=256)


def prepare(cfg: PrepareConfig, out: Path | None = None, progress: bool = True) -> dict[str, float]:
    """Run the stage; returns the metrics (also written to `cfg.metrics`)."""
    t0 = time.perf_counter()
    out = Path(out or cfg.out)
    source = open_source(cfg.dataset, cfg.options, tuple(cfg.size))
    table = source.table
    splits = assign_splits(
        source.entries(), cfg.val_fraction, cfg.split_seed, cfg.fraction, cfg.train_fraction
    )
    if not splits.get("train"):
        from pipeline.errors import DatasetError

        raise DatasetError(
            f"{cfg.dataset}: no training pairs after splitting; the dataset is empty or too small"
        )
    counts: dict[str, int] = {}
    pixels: dict[str, list[int]] = {}
    _init_worker(source, tuple(cfg.size), cfg.fit)
    pool = (
        mp.get_context("fork").Pool(cfg.workers, _init_worker, (source, tuple(cfg.size), cfg.fit))
        if cfg.workers
        else None
    )
    try:
        with atomic_output_dir(out) as tmp:
            for split, items in splits.items():
                hist = np.zeros(256, dtype=np.int64)
                results = pool.imap(_process, items, chunksize=4) if pool else map(_process, items)
                with ShardedWriter(tmp, split, cfg.samples_per_shard) as writer:
                    for files, h in tqdm(
                        results,
                        total=len(items),
                        desc=f"prepare {split}",
                        disable=not progress,
                        leave=False,
                    ):
                        writer.write_encoded(files)
                        hist += h
                counts[split] = len(items)
                pixels[split] = [int(v) for v in hist[: table.num_classes]] + [
                    int(hist[table.num_classes :].sum())
                ]
            table.save(tmp / "classes.json")
            atomic_write_json(
                tmp / "stats.json",
                {
                    "counts": counts,
                    "pixel_counts": pixels,
                    "pixel_counts_order": table.names + ["void"],
                    "size": list(cfg.size),
                    "config": to_dict(cfg),
                },
            )
    finally:
        if pool:
            pool.terminate()
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {f"n_{s}": float(n) for s, n in counts.items()}
    metrics.update(
        height=float(cfg.size[0]), width=float(cfg.size[1]), num_classes=float(table.num_classes)
    )
    train = np.array(pixels["train"], dtype=np.float64)
    for name, frac in zip(table.names + ["void"], train / train.sum(), strict=True):
        metrics[f"train_frac_{name}"] = round(float(frac), 6)
    metrics.update(seconds=round(seconds, 3), pairs_per_s=round(sum(counts.values()) / seconds, 2))
    write_metrics(cfg.metrics, metrics)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: prepare.out)")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, PrepareConfig)
    out = Path(args.out or cfg.out)
    metrics = prepare(cfg, out, progress=not args.quiet)
    splits = ", ".join(f"{k[2:]} {int(v)}" for k, v in metrics.items() if k.startswith("n_"))
    log.info(
        f"prepared {cfg.dataset} at {cfg.size[0]}x{cfg.size[1]} into {out}: {splits} pairs, "
        f"{int(metrics['num_classes'])} classes, {metrics['pairs_per_s']} pairs/s"
    )
    return metrics
