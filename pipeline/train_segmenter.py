"""Stage `train_segmenter`: train a segmenter on real pairs only, or on real + synthetic pairs.

`--mode real` draws every batch from the real training split. `--mode real_synth` adds the
synthetic pairs by `synth_policy`:

- `replace`: exactly `synth_fraction` of the images seen are synthetic (each batch holds the floor
  or ceiling of batch_size x synth_fraction); the run sees fewer real images than the real-only run.
- `add`: every step holds the real-only run's batch (same pairs, same augmentation, same lr) plus
  `synth_batch_size` synthetic pairs; loss = CE(real) + synth_weight x CE(synthetic).
- `pretrain`: `pretrain_steps` steps on synthetic pairs only (own warmup and cosine), then exactly
  the real-only run's schedule, with a fresh optimizer, from those weights.

Under add and pretrain a real_synth run sees exactly the real images of the real-only run of the
same seed (`real_images_seen` in both runs' metrics). With `trust_filter`, the finished real-only
run of the same seed and real share scores the synthetic pool first (`pipeline.trust_filter`,
FreeMask): pixels it finds implausible become void, the least consistent images can be dropped;
the result is cached in the run folder (`trust.npz`) and recomputed identically when stale.

`real_fraction` keeps a seeded subset of the real labels (nested: the 10% subset lies inside the
25% one for the same seed) for the data-efficiency curve. The model is scored on the real
held-out split (test if the dataset has one, else val).

Every batch and its augmentation are a pure function of (seed, step), so a run resumed from its
checkpoint (also inside pretrain's synthetic phase) sees exactly the batches an uninterrupted run
would have seen.

Under `torchrun --nproc_per_node N` every rank builds that same global batch and trains on its
strided share (every N-th sample of the real and of the synthetic part), through DDP, with batch
norm over the global batch; the held-out score is computed on a shard per rank and summed; rank 0
alone writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from models.segmenter import ARCHS, ENCODERS, build_segmenter, segmentation_loss
from pipeline import distributed
from pipeline.augment import AugmentConfig, augment
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.classes import ClassTable
from pipeline.config import ConfigError, section, to_dict
from pipeline.data import IndexedPairs, ShardIndex
from pipeline.device import autocast, use_channels_last
from pipeline.errors import DatasetError
from pipeline.io_utils import open_live, write_metrics
from pipeline.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pipeline.predict import MODES, load_segmenter, predict, run_name
from pipeline.pretrained import encoder_state_dict
from pipeline.shards import heldout_split, label_subset, load_class_table, load_split
from pipeline.trust_filter import (
    Pairs,
    TrustedPairs,
    file_sha256,
    fingerprint,
    load_result,
    save_result,
    score_pool,
    trust_metrics,
)

SECTION = "train_segmenter"
TRUST_CACHE = "trust.npz"  # in the run folder, beside model.pt
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSegmenterConfig:
    arch: str = field(default="unet", metadata={"help": f"one of {sorted(ARCHS)}"})
    encoder: str = field(
        default="efficientnet-lite0", metadata={"help": f"one of {sorted(ENCODERS)}"}
    )
    encoder_weights: Literal["imagenet"] | None = field(
        default="imagenet", metadata={"help": "imagenet (offline package weights) or null"}
    )
    decoder_channels: list[int] = field(
        default_factory=lambda: [128, 64, 32, 16, 16],
        metadata={
            "help": "unet decoder widths, 1/16 -> full size (5 values); [] = smp's default "
            "[256, 128, 64, 32, 16] (about 1.5x slower per image on 2 CPU cores)"
        },
    )
    loss: Literal["ce", "dice_ce"] = field(
        default="ce", metadata={"help": "ce, or dice_ce (cross-entropy + Dice)"}
    )
    steps: int = field(default=150, metadata={"help": "optimizer steps (images = steps x batch)"})
    batch_size: int = 16
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW lr (warmup, cosine decay)"})
    weight_decay: float = 1e-4
    synth_policy: Literal["replace", "add", "pretrain"] = field(
        default="replace",
        metadata={
            "help": "how real_synth uses synthetic pairs: replace (synth_fraction of every batch; "
            "fewer real images than the real-only run), add (the real-only run's batch + "
            "synth_batch_size synthetic pairs per step), pretrain (pretrain_steps on synthetic "
            "pairs, then the real-only run's schedule)"
        },
    )
    synth_fraction: float = field(
        default=0.5, metadata={"help": "replace: share of images seen that are synthetic"}
    )
    synth_weight: float = field(
        default=1.0, metadata={"help": "add: loss = CE(real) + synth_weight x CE(synthetic)"}
    )
    synth_batch_size: int = field(
        default=0, metadata={"help": "add: synthetic pairs per step; 0 = batch_size"}
    )
    pretrain_steps: int = field(
        default=0,
        metadata={"help": "pretrain: synthetic-only steps (batch_size pairs each); 0 = steps"},
    )
    synth_budget: int = field(
        default=0, metadata={"help": "synthetic pairs to draw from (seeded subset); 0 = all"}
    )
    trust_filter: bool = field(
        default=False,
        metadata={
            "help": "real_synth: the finished real-only run of the same seed scores the "
            "synthetic pairs and their implausible pixels become void (FreeMask)"
        },
    )
    trust_tolerance: float = field(
        default=1.25,
        metadata={
            "help": "a synthetic pixel of class c becomes void when its loss exceeds "
            "trust_tolerance x the mean loss over the synthetic pixels of class c"
        },
    )
    trust_drop_fraction: float = field(
        default=0.0,
        metadata={"help": "share of synthetic images with the highest mean loss dropped; 0 = none"},
    )
    real_fraction: float = field(
        default=1.0, metadata={"help": "seeded share of real training labels kept"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "seeds of the DVC matrix"}
    )
    curve_fractions: list[float] = field(
        default_factory=lambda: [0.1, 0.25, 0.5],
        metadata={"help": "real_fraction values of the data-efficiency curve (DVC matrix)"},
    )
    curve_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "seeds of the curve's DVC matrix"}
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    eval_every: int = field(
        default=0, metadata={"help": "steps between held-out mIoU logs; 0 = at the end only"}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast where fast"})
    in_memory: bool = field(
        default=False,
        metadata={
            "help": "decode the training pairs into RAM up front instead of reading each batch "
            "from the shards (memory then grows with the data)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    real_dir: str = "data/prepared"
    synth_dir: str = "data/synthetic"
    out: str = field(
        default="data/segmenter",
        metadata={"help": "runs go to OUT/RUN/model.pt (the trust filter reads OUT/real-*)"},
    )
    metrics_dir: str = field(default="metrics/segmenter", metadata={"help": "RUN.json per run"})
    live_dir: str = field(default="dvclive/segmenter", metadata={"help": "DVCLive logs per run"})

    def __post_init__(self) -> None:
        k = SECTION
        if self.arch not in ARCHS:
            raise ConfigError(f"{k}.arch {self.arch!r} is unknown; valid: {sorted(ARCHS)}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"{k}.encoder {self.encoder!r} is unknown; valid: {sorted(ENCODERS)}")
        if self.decoder_channels and (
            self.arch != "unet" or len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1
        ):
            raise ConfigError(
                f"{k}.decoder_channels {self.decoder_channels} sets the unet decoder: five "
                f"widths >= 1, or [] for the arch's default (arch is {self.arch!r})"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"{k}.steps and {k}.batch_size must be >= 1")
        if not 0 <= self.synth_fraction < 1:
            raise ConfigError(f"{k}.synth_fraction {self.synth_fraction} must be in [0, 1)")
        if self.synth_budget < 0 or self.synth_batch_size < 0 or self.pretrain_steps < 0:
            raise ConfigError(f"{k}.synth_budget, synth_batch_size, pretrain_steps must be >= 0")
        if self.synth_weight <= 0:
            raise ConfigError(f"{k}.synth_weight {self.synth_weight} must be > 0")
        if self.synth_weight != 1 and self.synth_policy != "add":
            raise ConfigError(
                f"{k}.synth_weight weighs the synthetic loss of synth_policy add only; "
                f"set it to 1.0 for {self.synth_policy!r} (replace mixes by synth_fraction)"
            )
        if self.trust_tolerance <= 0 or not 0 <= self.trust_drop_fraction < 1:
            raise ConfigError(f"{k}.trust_tolerance must be > 0, trust_drop_fraction in [0, 1)")
        for f in [self.real_fraction, *self.curve_fractions]:
            if not 0 < f <= 1:
                raise ConfigError(f"{k}.real_fraction / curve_fractions {f} must be in (0, 1]")
        if self.lr <= 0 or self.checkpoint_every < 0 or self.eval_every < 0:
            raise ConfigError(f"{k}.lr must be > 0; checkpoint_every, eval_every >= 0")


Config = TrainSegmenterConfig


# ---- data: subsets, mixing, batches ---------------------------------------------------------


def synth_seen_after(step: int, batch_size: int, synth_fraction: float) -> int:
    """Synthetic images in the first `step` batches: the running total stays exact."""
    return round(step * batch_size * synth_fraction)


def stream(n: int, start: int, count: int, seed: int, salt: int) -> np.ndarray:
    """Items start..start+count-1 of an endless stream of seeded permutations of range(n)."""
    pos = np.arange(start, start + count)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(pos // n):
        perm = np.random.default_rng([seed, salt, int(epoch)]).permutation(n)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def batch_indices(
    step: int, batch_size: int, synth_fraction: float, n_real: int, n_synth: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(real indices, synthetic indices) of batch `step`; a pure function of its arguments."""
    s0 = synth_seen_after(step, batch_size, synth_fraction) if n_synth else 0
    s1 = synth_seen_after(step + 1, batch_size, synth_fraction) if n_synth else 0
    real = stream(n_real, step * batch_size - s0, batch_size - (s1 - s0), seed, 0)
    synth = stream(n_synth, s0, s1 - s0, seed, 1) if n_synth else np.zeros(0, np.int64)
    return real, synth


def real_indices(step: int, batch_size: int, n_real: int, seed: int) -> np.ndarray:
    """The real batch of step `step` of the real-only run (its stream, with no synthetic share)."""
    return stream(n_real, step * batch_size, batch_size, seed, 0)


def _to_tensors(images: np.ndarray, masks: np.ndarray, device: torch.device):
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    return x, torch.from_numpy(masks).to(device).long()


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Linear warmup over total/20 steps, then cosine decay to 0 at `total`."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _lr(step: int, cfg: TrainSegmenterConfig) -> float:
    return cosine_lr(step, cfg.steps, cfg.lr)


# ---- the schedule: what each step trains on ---------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: the real and synthetic pool positions, the lr, and the seeds of its
    randomness. `seed` drives the augmentation of the real part (of the whole batch when `joint`)
    and, with the rank, stochastic depth; `synth_seed` the synthetic part's augmentation when it
    is augmented apart. `joint`: one augmentation draw and one loss over the whole batch
    (replace, and the single-source steps of pretrain), as before synth_policy existed."""

    real: np.ndarray
    synth: np.ndarray
    lr: float
    seed: int
    synth_seed: int = 0
    joint: bool = True
    fresh_optimizer: bool = False  # pretrain's first real step starts like the real-only run


def _real_seed(seed: int, real_step: int) -> int:
    # the real-only run's per-step seed: every policy's real part reuses it at the same real step
    return seed * 1_000_003 + real_step


def _synth_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0])  # 32 bits


@dataclass(frozen=True)
class Schedule:
    """What every global step of a run trains on: `pretrain` synthetic-only steps (pretrain
    policy), then `cfg.steps` steps that draw their real pairs, real augmentation and lr exactly
    as the real-only run of the same seed does (add, pretrain; mode real itself is `replace`
    without a synthetic pool)."""

    cfg: TrainSegmenterConfig
    policy: str
    n_real: int
    n_synth: int
    seed: int

    @property
    def pretrain(self) -> int:
        if self.policy != "pretrain":
            return 0
        return self.cfg.pretrain_steps or self.cfg.steps

    @property
    def total(self) -> int:
        return self.pretrain + self.cfg.steps

    def plan(self, step: int) -> StepPlan:
        cfg, seed, none = self.cfg, self.seed, np.zeros(0, np.int64)
        if self.policy == "replace":
            frac = cfg.synth_fraction if self.n_synth else 0.0
            real, synth = batch_indices(step, cfg.batch_size, frac, self.n_real, self.n_synth, seed)
            return StepPlan(real, synth, _lr(step, cfg), _real_seed(seed, step))
        if step < self.pretrain:  # the synthetic phase: its own warmup and cosine decay
            synth = stream(self.n_synth, step * cfg.batch_size, cfg.batch_size, seed, 1)
            lr = cosine_lr(step, self.pretrain, cfg.lr)
            return StepPlan(none, synth, lr, _synth_seed(seed, step))
        r = step - self.pretrain  # the real-only run's step
        real = real_indices(r, cfg.batch_size, self.n_real, seed)
        if self.policy == "pretrain":
            return StepPlan(real, none, _lr(r, cfg), _real_seed(seed, r), fresh_optimizer=r == 0)
        sb = cfg.synth_batch_size or cfg.batch_size
        synth = stream(self.n_synth, step * sb, sb, seed, 1)
        return StepPlan(
            real, synth, _lr(r, cfg), _real_seed(seed, r), _synth_seed(seed, step), joint=False
        )


def schedule(
    cfg: TrainSegmenterConfig, mode: str, n_real: int, n_synth: int, seed: int
) -> Schedule:
    """The run's schedule: mode real trains like replace with no synthetic pool."""
    policy = cfg.synth_policy if mode == "real_synth" else "replace"
    return Schedule(cfg, policy, n_real, n_synth if mode == "real_synth" else 0, seed)


# ---- scores ---------------------------------------------------------------


def score(pred: np.ndarray, masks: np.ndarray, names: list[str], ignore_index: int) -> dict:
    """mIoU, pixel accuracy and `iou_<class>` (classes absent from both left out)."""
    return score_confusion(confusion_matrix(pred, masks, len(names), ignore_index), names)


def score_confusion(cm: np.ndarray, names: list[str]) -> dict:
    """`score` from a confusion matrix (e.g. one summed over ranks)."""
    out = {"miou": mean_iou(cm), "pixel_acc": pixel_accuracy(cm)}
    for name, v in zip(names, iou_per_class(cm), strict=True):
        if np.isfinite(v):
            out[f"iou_{name}"] = float(v)
    return out


# ---- the run's data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """One run's data: the real labels kept, the synthetic pool (empty in mode real; trust
    filtered when asked), both read from their shards per batch, and the real held-out split it
    is scored on (in memory)."""

    table: ClassTable
    real: IndexedPairs
    synth: Pairs | None
    h_images: np.ndarray
    h_masks: np.ndarray


def load_run_data(
    cfg: TrainSegmenterConfig,
    real_dir: Path,
    synth_dir: Path | None,
    mode: str,
    frac: float,
    seed: int,
) -> RunData:
    """The real labels kept (seeded subset) and the synthetic pool in real_synth mode (a seeded
    subset of `synth_budget` pairs), chosen from the shard indexes before any pixel is read."""
    table = load_class_table(real_dir)
    real = ShardIndex(real_dir, "train")
    if not real.has_images:
        raise DatasetError(f"{real_dir}: the train split has no images; re-run `semsynth prepare`")
    real_rows = IndexedPairs(real, label_subset(len(real), frac, seed), cfg.in_memory)
    synth = None
    if mode == "real_synth":
        if synth_dir is None or not (Path(synth_dir) / "classes.json").is_file():
            raise DatasetError(
                f"synthetic dataset {synth_dir} is missing: run `semsynth generate`, "
                "or train with --mode real"
            )
        if load_class_table(synth_dir).names != table.names:
            raise DatasetError(f"{synth_dir}/classes.json does not match {real_dir}/classes.json")
        pool = ShardIndex(synth_dir, "train")
        if not pool.has_images or pool.shape() != real.shape():
            raise DatasetError(
                f"{synth_dir}: synthetic pairs need images of the real size {real.shape()}"
            )
        pick = np.arange(len(pool))
        if cfg.synth_budget:
            pick = label_subset(len(pool), min(1.0, cfg.synth_budget / len(pool)), seed + 1)
        synth = IndexedPairs(pool, pick, cfg.in_memory)
    h_images, h_masks, _ = load_split(real_dir, heldout_split(real_dir))
    return RunData(table, real_rows, synth, h_images, h_masks)


def real_only_model(
    path: Path, seed: int, frac: float, table: ClassTable, device: torch.device
) -> torch.nn.Module:
    """The finished real-only run (same seed, same real share) that scores the synthetic pool;
    the error says what to run when it is missing, unfinished or another run."""
    again = f"semsynth train-segmenter --mode real --seed {seed}"
    again = f"`{again}{f' --real-fraction {frac:g}' if frac < 1 else ''}`"
    if not path.is_file():
        raise DatasetError(
            f"train_segmenter.trust_filter needs the real-only run of seed {seed}: {path} does "
            f"not exist; train it first with {again} (`dvc repro` orders it), pass --trust-model, "
            "or set train_segmenter.trust_filter=false"
        )
    ckpt = load_checkpoint(path)
    if "optimizer" in ckpt:
        raise DatasetError(
            f"{path} is an unfinished real-only run (step {ckpt.get('step')}): finish it with "
            f"{again} before its real_synth run filters"
        )
    want = {"mode": "real", "seed": seed, "real_fraction": frac, "class_names": table.names}
    got = {k: ckpt.get("config", {}).get(k) for k in want}
    if got != want:
        raise DatasetError(f"{path} is not the real-only run the filter needs: {got} != {want}")
    return load_segmenter(path, device)


def filter_synthetic(
    cfg: TrainSegmenterConfig,
    data: RunData,
    proc: distributed.DistInfo,
    out_dir: Path,
    seed: int,
    frac: float,
    *,
    trust_model: Path | None = None,
    reuse: bool = True,
    progress: bool = False,
) -> tuple[RunData, dict[str, float]]:
    """`data` with its synthetic pool trust filtered, and the filter's `trust_*` statistics.

    Computed by rank 0 once per run and cached in OUT/trust.npz under a fingerprint of its
    inputs (the real-only model's bytes, the pool, the settings); a stale or absent cache is
    recomputed, identically. The other ranks wait and read the file, so all train on the same
    pixels."""
    path = Path(trust_model or Path(cfg.out) / run_name("real", seed, frac) / "model.pt")
    model = real_only_model(path, seed, frac, data.table, proc.device)
    pool = data.synth
    fp = fingerprint(
        model=file_sha256(path),
        rows=pool.rows,
        shards=[[p.name, p.stat().st_size] for p in pool.index.paths],
        tolerance=cfg.trust_tolerance,
        drop=cfg.trust_drop_fraction,
        ignore=data.table.ignore_index,
    )
    cache = out_dir / TRUST_CACHE
    result = load_result(cache, fp) if reuse and proc.main else None
    if proc.main and result is None:
        result = score_pool(
            model, pool, data.table.num_classes, data.table.ignore_index,
            cfg.trust_tolerance, cfg.trust_drop_fraction, progress,
        )  # fmt: skip
        save_result(cache, result, fp)
    distributed.all_reduce_sum(torch.zeros(1))  # a collective: the other ranks wait for the file
    result = result or load_result(cache, fp)
    if result is None:
        raise DatasetError(f"{cache}: rank 0's trust-filter result is not readable here")
    trusted = TrustedPairs(pool, result, data.table.ignore_index)
    return dataclasses.replace(data, synth=trusted), trust_metrics(result, data.table.names)


# ---- the training loop ----------------------------------------------------------------------


def train_segmenter(
    cfg: TrainSegmenterConfig,
    real_dir: Path,
    synth_dir: Path | None,
    out_dir: Path,
    mode: str,
    seed: int,
    *,
    real_fraction: float | None = None,
    metrics_path: Path | None = None,
    live_dir: Path | None = None,
    trust_model: Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train one run into `out_dir/model.pt`; returns (and writes) its held-out metrics.

    `trust_model`: the real-only model.pt the trust filter scores with (default:
    cfg.out/real[-fracF]-seedN/model.pt). Under torchrun: `cfg.batch_size` stays the global
    batch (each rank trains on its share), the seen counts are global, and ranks > 0 return {}
    (rank 0 writes). smp initialises its decoder and EfficientNet's stochastic depth draws from
    torch's global generator: the run seeds it inside `fork_rng`, so the caller's random state (a
    Prefect worker's, say) is left as it was.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is unknown; valid: {list(MODES)}")
    proc = distributed.init(cfg.device)
    devices = [proc.device.index or 0] if proc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return _train(
            cfg, proc, real_dir, synth_dir, Path(out_dir), mode, seed,
            frac=cfg.real_fraction if real_fraction is None else real_fraction,
            metrics_path=metrics_path, live_dir=live_dir, trust_model=trust_model,
            resume=resume, progress=progress,
        )  # fmt: skip


@dataclass
class _Run:
    """The state one training run carries from step to step."""

    cfg: TrainSegmenterConfig
    proc: distributed.DistInfo
    data: RunData
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    ddp: torch.nn.Module
    channels_last: bool
    ckpt_path: Path
    meta: dict[str, Any]
    seen: list[int]  # [real, synthetic] images seen, global


def _run_meta(
    cfg: TrainSegmenterConfig, table: ClassTable, mode: str, seed: int, frac: float
) -> dict[str, Any]:
    meta = {
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "decoder_channels": list(cfg.decoder_channels),
        "num_classes": table.num_classes,
        "class_names": table.names,
        "ignore_index": table.ignore_index,
        "mode": mode,
        "seed": seed,
        "real_fraction": frac,
        "train_config": to_dict(cfg),
    }
    if mode == "real_synth":  # a checkpoint of another policy or filter is not resumed
        keys = ("synth_policy", "synth_weight", "synth_batch_size", "pretrain_steps")
        keys += ("trust_filter", "trust_tolerance", "trust_drop_fraction")
        meta["synth"] = {k: getattr(cfg, k) for k in keys}
    return meta


def _train(
    cfg: TrainSegmenterConfig,
    proc: distributed.DistInfo,
    real_dir: Path,
    synth_dir: Path | None,
    out_dir: Path,
    mode: str,
    seed: int,
    **opts: Any,
) -> dict[str, float]:
    t0 = time.perf_counter()
    frac = opts["frac"]
    name = run_name(mode, seed, frac)
    metrics_path = Path(opts["metrics_path"] or Path(cfg.metrics_dir) / f"{name}.json")
    distributed.per_rank_batch(cfg.batch_size, "train_segmenter.batch_size")  # equal shares
    if mode == "real_synth" and cfg.synth_policy == "add" and cfg.synth_batch_size:
        distributed.per_rank_batch(cfg.synth_batch_size, "train_segmenter.synth_batch_size")
    data = load_run_data(cfg, real_dir, synth_dir, mode, frac, seed)
    run, sched, trust, start = _start_run(cfg, proc, data, out_dir, mode, seed, opts)
    if start and proc.main:
        log.info("%s: resuming at step %d/%d", name, start, sched.total)
    data, seen, model = run.data, run.seen, run.model
    live = open_live(opts["live_dir"] or Path(cfg.live_dir) / name, start > 0, proc.main)

    t_train, seen_before = time.perf_counter(), sum(seen)
    _train_steps(run, sched, start, live, f"segmenter {name}", opts["progress"])
    train_seconds = time.perf_counter() - t_train

    # Final: score on the real held-out split, write the weights-only model and the metrics.
    t_eval = time.perf_counter()
    scores = _heldout_scores(run)
    eval_seconds = time.perf_counter() - t_eval
    distributed.check_replicas_agree(model=model.state_dict())
    if not proc.main:
        return {}
    live.log_metric("heldout/miou", scores["miou"])
    live.end()
    _save(run, sched.total, final=True, results={"trust": trust})
    metrics = {
        **scores,
        "real_seen": float(seen[0]),
        "synth_seen": float(seen[1]),
        "real_images_seen": float(seen[0]),
        "synth_images_seen": float(seen[1]),
        "n_real_train": float(len(data.real)),
        "n_synth_pool": float(len(data.synth or ())),
        "real_fraction": float(frac),
        "seed": float(seed),
        "steps": float(cfg.steps),
        "pretrain_steps": float(sched.pretrain),
        **trust,
        "train_images_per_s": round((sum(seen) - seen_before) / max(train_seconds, 1e-9), 2),
        "eval_images_per_s": round(len(data.h_masks) / max(eval_seconds, 1e-9), 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_metrics(metrics_path, metrics)
    return metrics


def _start_run(
    cfg: TrainSegmenterConfig,
    proc: distributed.DistInfo,
    data: RunData,
    out_dir: Path,
    mode: str,
    seed: int,
    opts: dict[str, Any],
) -> tuple[_Run, Schedule, dict[str, float], int]:
    """Model and optimizer (initialised first: loading the trust filter's model draws from
    torch's generator too), the synthetic pool trust filtered, the schedule, and the state of an
    unfinished checkpoint of the same run: (run, schedule, trust statistics, start step)."""
    model, opt, channels_last = build_model(cfg, data.table.num_classes, proc.device)
    trust: dict[str, float] = {}
    if mode == "real_synth" and cfg.trust_filter:
        data, trust = filter_synthetic(
            cfg, data, proc, out_dir, seed, opts["frac"], trust_model=opts["trust_model"],
            reuse=opts["resume"], progress=opts["progress"] and proc.main,
        )  # fmt: skip
    sched = schedule(cfg, mode, len(data.real), len(data.synth or ()), seed)
    meta = _run_meta(cfg, data.table, mode, seed, opts["frac"])
    ckpt_path = out_dir / "model.pt"
    start, seen = (0, [0, 0])
    if opts["resume"]:
        start, seen = resume_run(ckpt_path, model, opt, meta, proc.device)
    # Forward and backward through ddp; `model` stays the unwrapped module. timm encoders keep
    # their classifier's conv_head and bn2, which smp's feature extractor never uses: DDP must
    # be told to expect parameters without gradients.
    ddp = distributed.wrap(model, proc, find_unused_parameters=True)
    run = _Run(cfg, proc, data, model, opt, ddp, channels_last, ckpt_path, meta, seen)
    return run, sched, trust, start


def _train_steps(run: _Run, sched: Schedule, start: int, live: Any, desc: str, progress: bool):
    """Steps start..sched.total-1 with their logs (rank 0) and periodic checkpoints."""
    cfg, proc = run.cfg, run.proc
    bar = tqdm(
        range(start, sched.total), desc=desc, disable=not progress or not proc.main, leave=False
    )
    for step in bar:
        loss_value = train_step(run, sched.plan(step))
        # Logs (the loss averaged over ranks, the held-out score computed by all) and
        # checkpoints, written by rank 0.
        eval_now = cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < sched.total
        miou = _heldout_scores(run)["miou"] if eval_now else None
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if proc.main:
            live.log_metric("train/loss", loss_value)
            if miou is not None:
                live.log_metric("heldout/miou", miou)
            live.next_step()
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                _save(run, step + 1, final=False)


def train_step(run: _Run, plan: StepPlan) -> float:
    """One optimizer step on `plan`'s batch; returns the loss averaged over ranks."""
    cfg, table = run.cfg, run.data.table
    if plan.fresh_optimizer:
        run.opt = new_optimizer(run.model, cfg)
    x, y, n_real = make_batch(cfg, run.data, plan, run.proc)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    # Step: bf16 forward where fast, loss in fp32, the plan's lr.
    run.model.train()
    for g in run.opt.param_groups:
        g["lr"] = plan.lr
    with autocast(run.proc.device, cfg.bf16):
        logits = run.ddp(x)
    if n_real is None:  # one loss over the whole batch
        loss = _loss(logits, y, table.ignore_index, cfg.loss)
    else:  # add: the real batch's loss plus the weighted synthetic batch's
        loss = _loss(logits[:n_real], y[:n_real], table.ignore_index, cfg.loss)
        synth = _loss(logits[n_real:], y[n_real:], table.ignore_index, cfg.loss)
        loss = loss + cfg.synth_weight * synth
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.seen[0] += len(plan.real)
    run.seen[1] += len(plan.synth)
    return distributed.all_reduce_mean({"loss": loss.item()})["loss"]


def _loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int, kind: str) -> torch.Tensor:
    """segmentation_loss, 0 (with a graph) for a part without labelled pixels: a rank's share,
    or a trust-filtered synthetic batch, can be all void, where cross-entropy is 0/0."""
    if not bool((y != ignore_index).any()):
        return logits.float().sum() * 0
    return segmentation_loss(logits, y, ignore_index, kind)


def _heldout_scores(run: _Run) -> dict:
    # Each rank predicts its strided shard (all of it alone); the confusion matrices add up.
    data, table = run.data, run.data.table
    shard = distributed.shard(range(len(data.h_masks)))
    pred = predict(run.model, data.h_images[shard])  # fp32, as `evaluate` scores it
    cm = confusion_matrix(pred, data.h_masks[shard], len(table.names), table.ignore_index)
    cm = distributed.all_reduce_sum(torch.from_numpy(cm)).numpy()
    return score_confusion(cm, table.names)


def _save(run: _Run, step: int, final: bool, results: dict | None = None) -> None:
    """Checkpoint; the final one also records what the run saw (read by `evaluate`)."""
    meta = run.meta
    if final:
        meta = {**meta, "images_seen": {"real": run.seen[0], "synth": run.seen[1]}}
        meta.update({k: v for k, v in (results or {}).items() if v})
    state = {"model": run.model.state_dict(), "step": step, "seen": run.seen, "config": meta}
    if not final:  # the optimizer is only needed to resume; keep final files small
        state["optimizer"] = run.opt.state_dict()
    save_checkpoint(run.ckpt_path, state)


def make_batch(
    cfg: TrainSegmenterConfig, data: RunData, plan: StepPlan, proc: distributed.DistInfo
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """This rank's share of the step's global batch, augmented: (images, masks, how many of
    them are real, or None when one loss covers the whole batch)."""
    # EfficientNet's stochastic depth draws from torch's global generator: seeding it per
    # step keeps a resumed run on the same path as an uninterrupted one (and per rank, so
    # ranks drop different paths; alone the seed is plan.seed)
    torch.manual_seed(plan.seed * proc.world_size + proc.rank)
    if plan.joint:  # real then synthetic pairs, one augmentation draw over them all
        x, y = _to_tensors(*data.real.get(plan.real), proc.device)
        if len(plan.synth):
            xs, ys = _to_tensors(*data.synth.get(plan.synth), proc.device)
            x, y = torch.cat([x, xs]), torch.cat([y, ys])
        x, y = _augment(cfg, data, x, y, plan.seed)
        return _share(x, proc), _share(y, proc), None
    # add: the real part augmented exactly as the real-only run augments it; the synthetic
    # part by its own draw (the same augmentation settings)
    xr, yr = _augment(cfg, data, *_to_tensors(*data.real.get(plan.real), proc.device), plan.seed)
    xs, ys = _to_tensors(*data.synth.get(plan.synth), proc.device)
    xs, ys = _augment(cfg, data, xs, ys, plan.synth_seed)
    xr, yr, xs, ys = (_share(t, proc) for t in (xr, yr, xs, ys))
    return torch.cat([xr, xs]), torch.cat([yr, ys]), len(xr)


def _augment(cfg: TrainSegmenterConfig, data: RunData, x, y, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return augment(x, y, cfg.augment, gen, data.table.ignore_index)


def _share(t: torch.Tensor, proc: distributed.DistInfo) -> torch.Tensor:
    # Under torchrun every rank built the same global batch; each keeps every N-th sample.
    # Alone this keeps the whole batch.
    return t[proc.rank :: proc.world_size]


def new_optimizer(model: torch.nn.Module, cfg: TrainSegmenterConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_model(
    cfg: TrainSegmenterConfig, num_classes: int, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, bool]:
    """The segmenter (offline ImageNet encoder weights), its optimizer, and whether it runs
    channels-last. Under torchrun batch norm takes its statistics over the global batch: a
    rank's share can be a handful of images, too few for BN, and the running stats then agree
    on every rank."""
    weights = encoder_state_dict(cfg.encoder, cfg.encoder_weights)
    model = build_segmenter(cfg.arch, cfg.encoder, num_classes, weights, cfg.decoder_channels)
    model = distributed.sync_batch_norm(model.to(device))
    # fp32 on CPU gains ~10% from channels-last too (oneDNN's depthwise convs)
    channels_last = use_channels_last(device, cfg.bf16) or device.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, new_optimizer(model, cfg), channels_last


RESULT_KEYS = ("train_config", "images_seen", "trust")  # not part of a run's identity


def resume_run(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict, device: torch.device
) -> tuple[int, list[int]]:
    """(start step, [real, synthetic] images seen) of an unfinished checkpoint of the same run,
    loaded into `model` and `opt`; (0, [0, 0]) when there is none. The step counts pretrain's
    synthetic phase too: a run resumed inside it continues there."""
    if not path.is_file():
        return 0, [0, 0]
    ckpt = load_checkpoint(path, device)
    same = {k: v for k, v in ckpt.get("config", {}).items() if k not in RESULT_KEYS}
    if "optimizer" not in ckpt or same != {k: v for k, v in meta.items() if k not in RESULT_KEYS}:
        return 0, [0, 0]
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"]), list(ckpt["seen"])


# ---- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="real", help="training data")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, subset and batches")
    parser.add_argument(
        "--real-fraction", type=float, help="share of real labels (default: real_fraction)"
    )
    parser.add_argument("--real-dir", help="prepared real dataset (default: real_dir)")
    parser.add_argument("--synth-dir", help="synthetic dataset (default: synth_dir)")
    parser.add_argument("--out", help="run folder (default: OUT/RUN with RUN like real-seed0)")
    parser.add_argument(
        "--trust-model",
        help="with trust_filter: the finished real-only model.pt that scores the synthetic pairs "
        "(default: OUT/real-seedN/model.pt, the real-only run of the same seed and share)",
    )
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, TrainSegmenterConfig)
    frac = cfg.real_fraction if args.real_fraction is None else args.real_fraction
    if not 0 < frac <= 1:
        raise ConfigError(f"--real-fraction {frac} must be in (0, 1]")
    name = run_name(args.mode, args.seed, frac)
    out = Path(args.out or Path(cfg.out) / name)
    metrics = train_segmenter(
        cfg,
        Path(args.real_dir or cfg.real_dir),
        Path(args.synth_dir or cfg.synth_dir),
        out,
        args.mode,
        args.seed,
        real_fraction=frac,
        trust_model=Path(args.trust_model) if args.trust_model else None,
        resume=not args.restart,
        progress=not args.quiet,
    )
    if not metrics:  # ranks > 0 under torchrun: rank 0 reports
        return metrics
    log.info(
        f"segmenter {name}: held-out mIoU {metrics['miou']:.4f}, pixel acc "
        f"{metrics['pixel_acc']:.4f}; {int(metrics['real_seen'])} real + "
        f"{int(metrics['synth_seen'])} synthetic images seen; model in {out}/model.pt"
    )
    return metrics
