"""Stage `export`: image+mask shards → COCO-Stuff JSON, COCO panoptic or Cityscapes folders.

Reads one split of a shard dataset (the synthetic one by default; a prepared one works too) and
writes, per format, a folder that the format's own tools read: pycocotools for COCO, the
cityscapesscripts evaluator for Cityscapes. Shards are converted in parallel, one task per shard;
ids are assigned in shard order afterwards, so the output does not depend on the worker count.
Image PNGs are copied byte for byte from the shards. Each output folder is built under a
temporary name and swapped in when complete: a failed export leaves the previous one intact.

Formats are entries of `FORMATS` (name → writer, output folder). The writers live in
`export_coco` / `export_cityscapes` and share `export_common`; this module imports them, never
the other way round.

    semsynth export                      # every format in export.formats
    semsynth export --format coco        # one format
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipeline.config import ConfigError, section
from pipeline.export_cityscapes import export_cityscapes
from pipeline.export_coco import export_coco
from pipeline.io_utils import write_metrics

SECTION = "export"
log = logging.getLogger(__name__)


# ---- the format registry: adding a format = one entry --------------------------------------
@dataclass(frozen=True)
class ExportFormat:
    """A writer, the folder it fills under export.out, and the config fields it takes by name."""

    # write(data_dir, out_dir, *, split, workers, progress, **options) → number of samples written
    write: Callable[..., int]
    folder: str  # OUT/<folder>; also the metrics prefix (`<folder>_samples`)
    options: tuple[str, ...] = ()  # format-specific ExportConfig fields, e.g. ("city",)


FORMATS: dict[str, ExportFormat] = {
    "coco": ExportFormat(export_coco, "coco"),
    "coco-panoptic": ExportFormat(partial(export_coco, panoptic=True), "coco_panoptic"),
    "cityscapes": ExportFormat(export_cityscapes, "cityscapes", options=("city",)),
}


def get_format(name: str) -> ExportFormat:
    """The registry entry for `name`; an unknown name is an error that lists the valid ones."""
    if name not in FORMATS:
        raise ConfigError(f"export format {name!r} is not one of {list(FORMATS)}")
    return FORMATS[name]


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = field(
        default=("coco", "cityscapes"),
        metadata={"help": f"formats to write: {' | '.join(FORMATS)} (--format picks one)"},
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


# ---- the stage -----------------------------------------------------------------------------
def export(
    cfg: ExportConfig,
    data_dir: Path | None = None,
    out_root: Path | None = None,
    formats: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Write each format to `out_root/<folder>`; returns the metrics (also written to cfg.metrics)."""
    data_dir = Path(data_dir or cfg.data)
    out_root = Path(out_root or cfg.out)
    # look every name up first: a typo in the last format should not cost the earlier exports
    entries = [get_format(name) for name in formats or cfg.formats]
    metrics: dict[str, float] = {}
    for fmt in entries:
        options = {name: getattr(cfg, name) for name in fmt.options}
        t0 = time.perf_counter()
        n = fmt.write(
            data_dir,
            out_root / fmt.folder,
            split=cfg.split,
            workers=cfg.workers,
            progress=progress,
            **options,
        )
        dt = time.perf_counter() - t0
        metrics[f"{fmt.folder}_samples"] = float(n)
        metrics[f"{fmt.folder}_seconds"] = round(dt, 3)
        metrics[f"{fmt.folder}_samples_per_s"] = round(n / dt, 2)
    write_metrics(cfg.metrics, metrics)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=list(FORMATS), help="write only this format")
    parser.add_argument("--data", help="shard dataset to export (default: export.data)")
    parser.add_argument("--out", help="output root (default: export.out)")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, ExportConfig)
    formats = (args.format,) if args.format else cfg.formats
    out_root = Path(args.out or cfg.out)
    metrics = export(cfg, args.data and Path(args.data), out_root, formats, not args.quiet)
    for fmt in formats:
        name = FORMATS[fmt].folder
        log.info(
            "exported %d samples as %s into %s (%s samples/s)",
            metrics[f"{name}_samples"], fmt, out_root / name, metrics[f"{name}_samples_per_s"],
        )  # fmt: skip
    return metrics
