"""Dataset readers behind a registry: name → (options dataclass, source class).

A source has `table` (ClassTable), `entries()` → {split or None: [entry]} (None = no own splits),
and `load(entry)` → (key, image uint8 [H,W,3], mask uint8 [H,W] train ids). Listing checks the
layout and the pairing up front; `load` checks each file.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import build
from pipeline.datasets.cityscapes import CityscapesOptions, CityscapesSource
from pipeline.datasets.coco_stuff import CocoStuffOptions, CocoStuffSource
from pipeline.datasets.paired_folders import PairedFoldersOptions, PairedFoldersSource
from pipeline.datasets.shapes import ShapesOptions, ShapesSource
from pipeline.errors import ConfigError

READERS: dict[str, tuple[type, type]] = {
    "shapes": (ShapesOptions, ShapesSource),
    "paired_folders": (PairedFoldersOptions, PairedFoldersSource),
    "cityscapes": (CityscapesOptions, CityscapesSource),
    "coco_stuff": (CocoStuffOptions, CocoStuffSource),
}


def open_source(name: str, options: dict[str, Any] | None, size: tuple[int, int]) -> Any:
    """Build the named reader with strictly checked `prepare.options`."""
    if name not in READERS:
        raise ConfigError(
            f"prepare.dataset: unknown dataset {name!r}; valid names: {sorted(READERS)}"
        )
    opts_cls, source_cls = READERS[name]
    return source_cls(build(opts_cls, options or {}, "prepare.options"), size)
