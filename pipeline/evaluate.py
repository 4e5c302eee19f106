"""Stage `evaluate`: mIoU of real-only vs real + synthetic segmenters over seeds, and the gain.

Every trained run (`data/segmenter/{mode}-seed{N}/model.pt`) segments the real held-out split
(test when the dataset has one, else val). Runs of the same seed are paired: the gain of seed N is
mIoU(real_synth-seedN) - mIoU(real-seedN), and its 95% interval is a t-interval over seeds.
Also: per-class IoU, pixel accuracy, the images each mode saw (`real_images_seen_{mode}`,
`synth_images_seen_{mode}`, means over the seeds, as the runs' checkpoints record them; with
synth_policy add or pretrain the real counts of both modes are equal), the trust filter's
statistics of the real_synth runs (`trust_*`, means over the seeds), the data-efficiency curve (gain vs share of real labels,
from the `-frac` runs present), and, when an image generator checkpoint exists, OASIS's
protocol: mIoU of the real-only segmenters on images synthesised from the held-out masks,
divided by their mIoU on the real held-out images.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import ConfigError, section
from pipeline.device import pick_device
from pipeline.errors import DatasetError
from pipeline.io_utils import atomic_write_json, write_metrics
from pipeline.metrics.segmentation import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    mean_std_ci95,
    pixel_accuracy,
)
from pipeline.predict import MODES, load_segmenter, predict, run_name
from pipeline.sampling import load_image_generator, synthesize
from pipeline.shards import heldout_split, load_class_table, load_split

SECTION = "evaluate"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    real_dir: str = field(default="data/prepared", metadata={"help": "prepared real dataset"})
    split: str = field(default="auto", metadata={"help": "held-out split; auto = test, else val"})
    segmenter_dir: str = field(default="data/segmenter", metadata={"help": "train runs"})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "paired seeds; null = train_segmenter.seeds"}
    )
    curve_fractions: list[float] = field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
        metadata={"help": "real-label shares of the data-efficiency curve (runs present)"},
    )
    image_generator: str | None = field(
        default="data/images/checkpoint.pt",
        metadata={"help": "OASIS checkpoint for synth_miou_ratio; skipped if absent; null = off"},
    )
    synth_seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    metrics: str = "metrics/segmentation.json"
    plots_dir: str = field(
        default="metrics/segmentation_plots",
        metadata={"help": "per_class_iou.json and data_efficiency.json for `dvc plots`"},
    )

    def __post_init__(self) -> None:
        if self.seeds is not None and not self.seeds:
            raise ConfigError("evaluate.seeds must list at least one seed (or be null)")
        if any(not 0 < f <= 1 for f in self.curve_fractions):
            raise ConfigError("evaluate.curve_fractions must lie in (0, 1]")
        if self.batch_size < 1:
            raise ConfigError("evaluate.batch_size must be >= 1")


Config = EvaluateConfig


def _runs(seg_dir: Path, mode: str, seeds: list[int], fraction: float) -> dict[int, Path]:
    found = {s: seg_dir / run_name(mode, s, fraction) / "model.pt" for s in seeds}
    return {s: p for s, p in found.items() if p.is_file()}


def run_statistics(metas: list[dict], mode: str) -> dict[str, float]:
    """Means over runs of the images they saw (`real_images_seen_{mode}`, ...) and, for the
    real_synth runs, of their trust filter's `trust_*` statistics; runs from before these
    were recorded add nothing."""
    out: dict[str, float] = {}
    seen = [m["images_seen"] for m in metas if "images_seen" in m]
    if seen:
        for part in ("real", "synth"):
            out[f"{part}_images_seen_{mode}"] = float(np.mean([s[part] for s in seen]))
    trust = [m["trust"] for m in metas if m.get("trust")]
    for key in sorted({k for t in trust for k in t}):
        out[key] = float(np.mean([t[key] for t in trust if key in t]))
    return out


def evaluate(
    cfg: EvaluateConfig,
    real_dir: Path,
    segmenter_dir: Path,
    progress: bool = True,
) -> dict[str, float]:
    """Score every run on the real held-out split; write metrics and plots; return the metrics."""
    if cfg.seeds is None:
        raise ConfigError("evaluate.seeds is null: pass the seeds the segmenters were trained with")
    device = pick_device(cfg.device)
    table = load_class_table(real_dir)
    split = heldout_split(real_dir) if cfg.split == "auto" else cfg.split
    images, masks, _ = load_split(real_dir, split)
    if images is None:
        raise DatasetError(f"{real_dir}/{split} has no images to segment")
    names, ignore = table.names, table.ignore_index

    metas: dict[Path, dict] = {}  # what each run's checkpoint records about its training

    def cm_of(path: Path, imgs: np.ndarray) -> np.ndarray:
        model = load_segmenter(path, device)
        if model.num_classes != table.num_classes:
            raise DatasetError(
                f"{path} predicts {model.num_classes} classes, {real_dir} has {len(names)}"
            )
        metas[path] = model.meta
        return confusion_matrix(predict(model, imgs, cfg.batch_size), masks, len(names), ignore)

    # Main comparison: full real labels, every seed; the real-only runs are required.
    runs = {m: _runs(segmenter_dir, m, cfg.seeds, 1.0) for m in MODES}
    missing = sorted(set(cfg.seeds) - set(runs["real"]))
    if missing:
        raise DatasetError(
            f"{segmenter_dir}: no real-only run for seed(s) {missing}; run "
            f"`semsynth train-segmenter --mode real --seed N` (or `dvc repro`) first"
        )
    paired = [s for s in cfg.seeds if s in runs["real_synth"]]
    if len(paired) < len(cfg.seeds):
        log.warning(
            "real_synth runs for seeds %s of %s; the gain uses those (train the others with "
            "`semsynth train-segmenter --mode real_synth --seed N`)",
            paired, cfg.seeds,
        )  # fmt: skip
    todo = [(m, s, p) for m in MODES for s, p in runs[m].items()]
    cms: dict[tuple[str, int], np.ndarray] = {}
    for mode, seed, path in tqdm(todo, desc="evaluate", disable=not progress, leave=False):
        cms[mode, seed] = cm_of(path, images)

    metrics: dict[str, float] = {}
    per_mode_iou: dict[str, np.ndarray] = {}
    for mode in MODES:
        seeds = list(runs["real"]) if mode == "real" else paired
        if not seeds:
            log.warning("no real_synth runs (no synthetic data yet?); reporting real only")
            continue
        mious = [mean_iou(cms[mode, s]) for s in seeds]
        mean, std, _, _ = mean_std_ci95(mious)
        metrics[f"miou_{mode}"] = mean
        if len(seeds) > 1:
            metrics[f"miou_{mode}_std"] = std
        metrics[f"pixel_acc_{mode}"] = float(np.mean([pixel_accuracy(cms[mode, s]) for s in seeds]))
        iou = np.nanmean(np.stack([iou_per_class(cms[mode, s]) for s in seeds]), axis=0)
        per_mode_iou[mode] = iou
        for name, v in zip(names, iou, strict=True):
            if np.isfinite(v):
                metrics[f"iou_{mode}_{name}"] = float(v)
        metrics.update(run_statistics([metas[runs[mode][s]] for s in seeds], mode))
    if paired:
        gains = [mean_iou(cms["real_synth", s]) - mean_iou(cms["real", s]) for s in paired]
        mean, std, lo, hi = mean_std_ci95(gains)
        metrics["miou_gain"] = mean
        if len(paired) > 1:
            metrics.update(miou_gain_std=std, miou_gain_ci95_low=lo, miou_gain_ci95_high=hi)
    metrics["n_seeds"] = float(len(runs["real"]))
    metrics["n_heldout"] = float(len(masks))

    # OASIS's protocol: how well do real-trained segmenters read the synthesised images?
    gen_path = Path(cfg.image_generator) if cfg.image_generator else None
    if gen_path is not None and gen_path.is_file():
        generator = load_image_generator(gen_path, device)
        fake = synthesize(generator, masks, cfg.synth_seed, ignore_index=ignore)[:, 0]  # [N,H,W,3]
        synth_mious = [mean_iou(cm_of(p, fake)) for p in runs["real"].values()]
        metrics["miou_real_on_synth"] = float(np.mean(synth_mious))
        metrics["synth_miou_ratio"] = metrics["miou_real_on_synth"] / metrics["miou_real"]
    elif gen_path is not None:
        log.warning("no image generator at %s; synth_miou_ratio skipped", gen_path)

    # Data-efficiency curve: gain at each share of real labels, over the seeds present.
    curve = []
    for frac in sorted(cfg.curve_fractions):
        r = _runs(segmenter_dir, "real", cfg.seeds, frac)
        rs = _runs(segmenter_dir, "real_synth", cfg.seeds, frac)
        both = [s for s in cfg.seeds if s in r and s in rs]
        if not both:
            log.info("no paired runs at real_fraction %g; curve point skipped", frac)
            continue
        if frac >= 1:
            gains = [mean_iou(cms["real_synth", s]) - mean_iou(cms["real", s]) for s in both]
            mr = [mean_iou(cms["real", s]) for s in both]
        else:
            mr = [mean_iou(cm_of(r[s], images)) for s in both]
            gains = [mean_iou(cm_of(rs[s], images)) - m for s, m in zip(both, mr, strict=True)]
        point = {
            "real_fraction": frac,
            "miou_real": float(np.mean(mr)),
            "miou_real_synth": float(np.mean(mr) + np.mean(gains)),
            "miou_gain": float(np.mean(gains)),
            "n_seeds": len(both),
        }
        curve.append(point)
        if frac < 1:
            metrics[f"miou_gain_frac{frac * 100:g}"] = point["miou_gain"]

    plots = Path(cfg.plots_dir)
    rows = []
    for i, name in enumerate(names):
        row = {"class": name}
        for mode, iou in per_mode_iou.items():
            row[f"iou_{mode}"] = None if not np.isfinite(iou[i]) else float(iou[i])
        rows.append(row)
    atomic_write_json(plots / "per_class_iou.json", rows)
    atomic_write_json(plots / "data_efficiency.json", curve)
    write_metrics(cfg.metrics, metrics)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real-dir", help="prepared real dataset (default: evaluate.real_dir)")
    parser.add_argument("--segmenter-dir", help="train runs (default: evaluate.segmenter_dir)")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, EvaluateConfig)
    if cfg.seeds is None:  # the seeds the train_segmenter stages ran with
        seeds = params.get("train_segmenter", {}).get("seeds") or [0, 1, 2]
        cfg = dataclasses.replace(cfg, seeds=[int(s) for s in seeds])
    metrics = evaluate(
        cfg,
        Path(args.real_dir or cfg.real_dir),
        Path(args.segmenter_dir or cfg.segmenter_dir),
        progress=not args.quiet,
    )
    line = f"evaluate: mIoU real {metrics['miou_real']:.4f}"
    if "miou_gain" in metrics:
        line += f", real+synth {metrics['miou_real_synth']:.4f}, gain {metrics['miou_gain']:+.4f}"
    log.info(line)
    return metrics
