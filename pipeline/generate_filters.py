"""Quality filters and class targeting for `generate`, and the real data's class statistics.

A candidate mask is rejected for each reason it fails: `spurious` (too many pixels in tiny
same-class components, `pipeline.metrics.masks.spurious_pixel_rate`), `few_classes`, `histogram`
(total-variation distance between its class histogram and the real mean is too large) and
`target` (class targeting: rejection sampling on the presence of chosen classes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classes import ClassTable
from pipeline.config import ConfigError
from pipeline.metrics.masks import spurious_pixel_rate
from pipeline.shards import iter_split

REASONS = ("spurious", "few_classes", "histogram", "target")


@dataclass(frozen=True)
class FilterConfig:
    max_spurious_rate: float = field(
        default=0.05, metadata={"help": "reject masks with more spurious pixels (1 = off)"}
    )
    spurious_min_size: int = field(
        default=4, metadata={"help": "components smaller than this many pixels are spurious"}
    )
    min_classes: int = field(default=2, metadata={"help": "reject masks with fewer classes"})
    max_hist_distance: float = field(
        default=0.9,
        metadata={"help": "reject masks whose class histogram is farther (total variation) "
                  "from the real mean (1 = off)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not 0 < self.max_spurious_rate <= 1 or not 0 < self.max_hist_distance <= 1:
            raise ConfigError(
                "generate.filters.max_spurious_rate and max_hist_distance must be in (0, 1]"
            )
        if self.spurious_min_size < 1 or self.min_classes < 1:
            raise ConfigError("generate.filters.spurious_min_size and min_classes must be >= 1")


@dataclass(frozen=True)
class TargetConfig:
    classes: list[str] = field(
        default_factory=list, metadata={"help": "class names to favour (empty = no targeting)"}
    )
    min_fraction: float = field(
        default=0.0, metadata={"help": "a mask counts as containing them above this pixel share"}
    )
    reject: float = field(
        default=1.0, metadata={"help": "probability of rejecting a mask without them"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.min_fraction < 1 or not 0 <= self.reject <= 1:
            raise ConfigError(
                "generate.target.min_fraction must be in [0, 1) and generate.target.reject in [0, 1]"
            )


# ---- reference statistics of the real data -----------------------------------------------------
def real_class_frequency(data_dir: str | Path, table: ClassTable) -> np.ndarray:
    """Pixel share of each class among the non-void pixels of the real train split, float [C]."""
    stats = Path(data_dir) / "stats.json"
    counts = None
    if stats.is_file():
        counts = json.loads(stats.read_text()).get("pixel_counts", {}).get("train")
    if counts is None:  # older prepared data: count by streaming the masks
        c = np.zeros(256, np.int64)
        for s in iter_split(data_dir, "train"):
            c += np.bincount(s.mask.ravel(), minlength=256)
        counts = c[: table.num_classes]
    counts = np.asarray(counts[: table.num_classes], dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def real_class_presence(data_dir: str | Path, table: ClassTable) -> np.ndarray:
    """Fraction of real train masks containing each class, float [C] (streams the masks)."""
    hits, n = np.zeros(table.num_classes), 0
    for s in iter_split(data_dir, "train"):
        hits += np.bincount(s.mask.ravel(), minlength=256)[: table.num_classes] > 0
        n += 1
    return hits / max(n, 1)


# ---- filters -----------------------------------------------------------------------------------
def target_uniforms(seed: int, start: int, n: int) -> np.ndarray:
    """One uniform per candidate start..start+n-1, from (seed, candidate) only."""
    return np.array([np.random.default_rng([seed, start + b, 7]).random() for b in range(n)])


def class_counts(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 [N, H, W] → int64 [N, C] pixel count per class (void not counted)."""
    return np.stack([np.bincount(m.ravel(), minlength=256)[:num_classes] for m in masks])


def judge(
    masks: np.ndarray,
    f: FilterConfig,
    target: TargetConfig,
    real_freq: np.ndarray,
    target_ids: list[int],
    uniforms: np.ndarray,
) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """The reasons each mask fails (empty list = kept) and the features they were judged on.

    `uniforms` [N] in [0, 1) decide, per candidate, whether a mask without a target class is
    rejected (probability `target.reject`); they come from `target_uniforms`, so deterministic.
    """
    counts = class_counts(masks, len(real_freq))
    total = np.maximum(counts.sum(1, keepdims=True), 1)
    feats = {
        "spurious_rate": np.asarray(spurious_pixel_rate(masks, f.spurious_min_size), np.float64),
        "num_classes": (counts > 0).sum(1),
        "hist_distance": 0.5 * np.abs(counts / total - real_freq).sum(1),
        "target_fraction": counts[:, target_ids].sum(1) / (masks[0].size if len(masks) else 1),
    }
    has_target = feats["target_fraction"] > target.min_fraction
    failed = {
        "spurious": feats["spurious_rate"] > f.max_spurious_rate if f.max_spurious_rate < 1 else None,
        "few_classes": feats["num_classes"] < f.min_classes,
        "histogram": feats["hist_distance"] > f.max_hist_distance if f.max_hist_distance < 1 else None,
        "target": (~has_target & (uniforms < target.reject)) if target_ids else None,
    }  # fmt: skip
    reasons = [
        [r for r in REASONS if failed[r] is not None and failed[r][b]] for b in range(len(masks))
    ]
    return reasons, feats


def active_filters(f: FilterConfig, target: TargetConfig) -> list[str]:
    """The filters these settings switch on, in REASONS order (recorded in each sample's JSON)."""
    on = {
        "spurious": f.max_spurious_rate < 1,
        "few_classes": f.min_classes > 1,
        "histogram": f.max_hist_distance < 1,
        "target": bool(target.classes),
    }
    return [r for r in REASONS if on[r]]
