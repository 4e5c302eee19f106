"""Quality filters and class targeting for `generate`, and the real data's class statistics.

A candidate mask is rejected for each reason it fails: `spurious` (too many pixels in tiny
same-class components, `pipeline.metrics.masks.spurious_pixel_rate`), `few_classes`, `histogram`
(total-variation distance between its class histogram and the real mean is too large),
`target` (class targeting: rejection sampling on the presence of chosen classes) and `balance`
(rejection sampling toward the real class frequencies: an exponential tilt of the mask
distribution fitted once on a pilot sample, see `fit_tilt`).
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

REASONS = ("spurious", "few_classes", "histogram", "target", "balance")


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


@dataclass(frozen=True)
class BalanceConfig:
    strength: float = field(
        default=0.0,
        metadata={
            "help": "0 = off; s aims the kept masks' mean class shares at (1 - s) x the "
            "generator's + s x the real ones (a mode-collapsed mask GAN under-draws rare "
            "classes; 1 may rest on a handful of masks, see balance_pilot_ess)"
        },
    )
    accept_rate: float = field(
        default=0.25,
        metadata={
            "help": "mean share of candidates the tilt keeps: lower fits the real "
            "frequencies closer but draws more candidates (see candidates_per_mask)"
        },
    )
    pilot: int = field(default=1024, metadata={"help": "masks sampled once to fit the tilt"})

    def __post_init__(self) -> None:
        if not 0 <= self.strength <= 1 or not 0 < self.accept_rate <= 1 or self.pilot < 16:
            raise ConfigError(
                "generate.balance: strength must be in [0, 1], accept_rate in (0, 1] and "
                "pilot >= 16"
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
def target_uniforms(seed: int, start: int, n: int, stream: int = 7) -> np.ndarray:
    """One uniform per candidate start..start+n-1, from (seed, candidate, stream) only; each
    random filter draws from its own stream (target 7, balance 11)."""
    return np.array([np.random.default_rng([seed, start + b, stream]).random() for b in range(n)])


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
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    feats = {
        "spurious_rate": np.asarray(spurious_pixel_rate(masks, f.spurious_min_size), np.float64),
        "num_classes": (counts > 0).sum(1),
        "shares": shares,
        "hist_distance": 0.5 * np.abs(shares - real_freq).sum(1),
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
        [r for r in REASONS if failed.get(r) is not None and failed[r][b]]
        for b in range(len(masks))
    ]
    return reasons, feats


def active_filters(
    f: FilterConfig, target: TargetConfig, balance: BalanceConfig | None = None
) -> list[str]:
    """The filters these settings switch on, in REASONS order (recorded in each sample's JSON)."""
    on = {
        "spurious": f.max_spurious_rate < 1,
        "few_classes": f.min_classes > 1,
        "histogram": f.max_hist_distance < 1,
        "target": bool(target.classes),
        "balance": balance is not None and balance.strength > 0,
    }
    return [r for r in REASONS if on[r]]


# ---- balance: an exponential tilt toward the real class frequencies ----------------------------
def fit_tilt(shares: np.ndarray, target: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """λ [C] of the weights w_m ∝ exp(λ · shares_m) under which the masks' weighted mean class
    shares equal `target`: the reweighting closest to the sample in KL divergence that matches
    them (the convex dual is minimised). The ridge keeps λ finite where no reweighting reaches
    the target (a class the sample lacks stays missing); the fit then comes as close as it can
    by resting on ever fewer masks."""
    from scipy.optimize import minimize

    def dual(lam: np.ndarray) -> tuple[float, np.ndarray]:
        a = shares @ lam
        top = a.max()
        w = np.exp(a - top)
        q = w @ shares / w.sum()
        value = top + np.log(w.mean()) - lam @ target + 0.5 * ridge * lam @ lam
        return float(value), q - target + ridge * lam

    return minimize(dual, np.zeros(len(target)), jac=True, method="L-BFGS-B").x


@dataclass(frozen=True)
class Tilt:
    """A fitted tilt: a mask with class shares f is kept with probability
    min(1, exp(λ · f - scale)); `scale` makes the pilot's mean acceptance `accept_rate`, so
    masks above it are all kept and the tilt is exact only below it."""

    lam: np.ndarray
    scale: float

    def accept(self, shares: np.ndarray) -> np.ndarray:
        return np.exp(np.minimum(shares @ self.lam - self.scale, 0.0))  # min(1, w / scale)

    @classmethod
    def fit(cls, shares: np.ndarray, real: np.ndarray, b: BalanceConfig) -> Tilt:
        """Fit on the pilot masks' shares [P, C] (those the other filters keep), aiming at the
        frequencies `strength` of the way from the pilot's mean to `real`."""
        lam = fit_tilt(shares, (1 - b.strength) * shares.mean(0) + b.strength * real)
        a = shares @ lam  # log-weights; bisect the log-scale for the mean acceptance
        lo, hi = a.min() - 1.0, a.max() - np.log(b.accept_rate) + 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            rate = np.exp(np.minimum(a - mid, 0.0)).mean()
            lo, hi = (mid, hi) if rate > b.accept_rate else (lo, mid)
        return cls(lam, float(hi))

    def summary(self, shares: np.ndarray, real: np.ndarray) -> dict[str, float]:
        """On the pilot: the class frequencies' distance to the real ones before and after the
        acceptance, its mean, and the effective number of masks the kept set rests on."""
        p = self.accept(shares)
        after = p @ shares / max(p.sum(), 1e-12)
        return {
            "pilot_freq_distance": round(float(0.5 * np.abs(shares.mean(0) - real).sum()), 4),
            "tilted_freq_distance": round(float(0.5 * np.abs(after - real).sum()), 4),
            "pilot_accept_rate": round(float(p.mean()), 4),
            "pilot_ess": round(float(p.sum() ** 2 / max((p**2).sum(), 1e-12)), 1),
        }
