"""Stage `train_segmenter`: train a segmenter on real pairs only, or on real + synthetic pairs.

`--mode real` draws every batch from the real training split; `--mode real_synth` fills exactly
`synth_fraction` of the images seen with synthetic pairs (each batch holds the floor or ceiling of
batch_size x synth_fraction). `real_fraction` keeps a seeded subset of the real labels (nested:
the 10% subset lies inside the 25% one for the same seed) for the data-efficiency curve. The
model is scored on the real held-out split (test if the dataset has one, else val).

Every batch and its augmentation are a pure function of (seed, step), so a run resumed from its
checkpoint sees exactly the batches an uninterrupted run would have seen.

Under `torchrun --nproc_per_node N` every rank builds that same global batch and trains on its
strided share (every N-th sample), through DDP, with batch norm over the global batch; the
held-out score is computed on a shard per rank and summed; rank 0 alone writes.
"""

from __future__ import annotations

import argparse
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
from pipeline.predict import MODES, predict, run_name
from pipeline.pretrained import encoder_state_dict
from pipeline.shards import heldout_split, label_subset, load_class_table, load_split

SECTION = "train_segmenter"
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
    loss: Literal["ce", "dice_ce"] = field(
        default="ce", metadata={"help": "ce, or dice_ce (cross-entropy + Dice)"}
    )
    steps: int = field(default=150, metadata={"help": "optimizer steps (images = steps x batch)"})
    batch_size: int = 16
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW lr (warmup, cosine decay)"})
    weight_decay: float = 1e-4
    synth_fraction: float = field(
        default=0.5, metadata={"help": "share of images seen that are synthetic (real_synth)"}
    )
    synth_budget: int = field(
        default=0, metadata={"help": "synthetic pairs to draw from (seeded subset); 0 = all"}
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
    out: str = field(default="data/segmenter", metadata={"help": "runs go to OUT/RUN/model.pt"})
    metrics_dir: str = field(default="metrics/segmenter", metadata={"help": "RUN.json per run"})
    live_dir: str = field(default="dvclive/segmenter", metadata={"help": "DVCLive logs per run"})

    def __post_init__(self) -> None:
        k = SECTION
        if self.arch not in ARCHS:
            raise ConfigError(f"{k}.arch {self.arch!r} is unknown; valid: {sorted(ARCHS)}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"{k}.encoder {self.encoder!r} is unknown; valid: {sorted(ENCODERS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"{k}.steps and {k}.batch_size must be >= 1")
        if not 0 <= self.synth_fraction < 1:
            raise ConfigError(f"{k}.synth_fraction {self.synth_fraction} must be in [0, 1)")
        if self.synth_budget < 0:
            raise ConfigError(f"{k}.synth_budget must be >= 0 (0 = all)")
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


def _to_tensors(images: np.ndarray, masks: np.ndarray, device: torch.device):
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    return x, torch.from_numpy(masks).to(device).long()


def _lr(step: int, cfg: TrainSegmenterConfig) -> float:
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


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


# ---- the training loop ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """One run's data: the real labels kept, the synthetic pool (empty in mode real), both read
    from their shards per batch, and the real held-out split it is scored on (in memory)."""

    table: ClassTable
    real: IndexedPairs
    synth: IndexedPairs | None
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
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train one run into `out_dir/model.pt`; returns (and writes) its held-out metrics.

    Under torchrun: `cfg.batch_size` stays the global batch (each rank trains on its share), the
    seen counts are global, and ranks > 0 return {} (rank 0 writes). smp initialises its decoder
    and EfficientNet's stochastic depth draws from torch's global generator: the run seeds it
    inside `fork_rng`, so the caller's random state (a Prefect worker's, say) is left as it was.
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
            metrics_path=metrics_path, live_dir=live_dir, resume=resume, progress=progress,
        )  # fmt: skip


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
    device = proc.device
    distributed.per_rank_batch(cfg.batch_size, "train_segmenter.batch_size")  # equal shares
    data = load_run_data(cfg, real_dir, synth_dir, mode, frac, seed)
    table = data.table
    n_real, n_synth = len(data.real), len(data.synth or ())
    synth_fraction = cfg.synth_fraction if n_synth else 0.0

    # Model, optimizer; resume from an unfinished checkpoint of the same run.
    model, opt, channels_last = build_model(cfg, table.num_classes, device)
    meta = {
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "num_classes": table.num_classes,
        "class_names": table.names,
        "ignore_index": table.ignore_index,
        "mode": mode,
        "seed": seed,
        "real_fraction": frac,
        "train_config": to_dict(cfg),
    }
    ckpt_path = out_dir / "model.pt"
    start, seen = resume_run(ckpt_path, model, opt, meta, device) if opts["resume"] else (0, [0, 0])
    if start and proc.main:
        log.info("%s: resuming at step %d/%d", name, start, cfg.steps)
    # Forward and backward through ddp; `model` stays the unwrapped module. timm encoders keep
    # their classifier's conv_head and bn2, which smp's feature extractor never uses: DDP must
    # be told to expect parameters without gradients.
    ddp = distributed.wrap(model, proc, find_unused_parameters=True)
    live = open_live(opts["live_dir"] or Path(cfg.live_dir) / name, start > 0, proc.main)

    def heldout_scores() -> dict:
        # Each rank predicts its strided shard (all of it alone); the confusion matrices add up.
        shard = distributed.shard(range(len(data.h_masks)))
        pred = predict(model, data.h_images[shard])  # fp32, as `evaluate` scores it
        cm = confusion_matrix(pred, data.h_masks[shard], len(table.names), table.ignore_index)
        cm = distributed.all_reduce_sum(torch.from_numpy(cm)).numpy()
        return score_confusion(cm, table.names)

    def save(step: int, final: bool) -> None:
        state = {"model": model.state_dict(), "step": step, "seen": seen, "config": meta}
        if not final:  # the optimizer is only needed to resume; keep final files small
            state["optimizer"] = opt.state_dict()
        save_checkpoint(ckpt_path, state)

    t_train = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"segmenter {name}",
        disable=not opts["progress"] or not proc.main,
        leave=False,
    )
    for step in bar:
        # Batch: real and synthetic indices, then one augmentation draw, all seeded by step.
        ri, si = batch_indices(step, cfg.batch_size, synth_fraction, n_real, n_synth, seed)
        x, y = make_batch(cfg, data, ri, si, step, seed, proc)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        # Step: bf16 forward where fast, loss in fp32, cosine lr.
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        with autocast(device, cfg.bf16):
            logits = ddp(x)
        loss = segmentation_loss(logits, y, table.ignore_index, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen[0] += len(ri)
        seen[1] += len(si)

        # Logs (the loss averaged over ranks, the held-out score computed by all) and
        # checkpoints, written by rank 0.
        loss_value = distributed.all_reduce_mean({"loss": loss.item()})["loss"]
        eval_now = cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps
        miou = heldout_scores()["miou"] if eval_now else None
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if proc.main:
            live.log_metric("train/loss", loss_value)
            if miou is not None:
                live.log_metric("heldout/miou", miou)
            live.next_step()
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                save(step + 1, final=False)
    train_seconds = time.perf_counter() - t_train

    # Final: score on the real held-out split, write the weights-only model and the metrics.
    t_eval = time.perf_counter()
    scores = heldout_scores()
    eval_seconds = time.perf_counter() - t_eval
    distributed.check_replicas_agree(model=model.state_dict())
    if not proc.main:
        return {}
    live.log_metric("heldout/miou", scores["miou"])
    live.end()
    save(cfg.steps, final=True)
    trained = cfg.steps - start
    metrics = {
        **scores,
        "real_seen": float(seen[0]),
        "synth_seen": float(seen[1]),
        "n_real_train": float(n_real),
        "n_synth_pool": float(n_synth),
        "real_fraction": float(frac),
        "seed": float(seed),
        "steps": float(cfg.steps),
        "train_images_per_s": round(trained * cfg.batch_size / max(train_seconds, 1e-9), 2),
        "eval_images_per_s": round(len(data.h_masks) / max(eval_seconds, 1e-9), 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_metrics(metrics_path, metrics)
    return metrics


def make_batch(
    cfg: TrainSegmenterConfig,
    data: RunData,
    real_idx: np.ndarray,
    synth_idx: np.ndarray,
    step: int,
    seed: int,
    proc: distributed.DistInfo,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of global batch `step`: real then synthetic pairs, augmented."""
    x, y = _to_tensors(*data.real.get(real_idx), proc.device)
    if len(synth_idx):
        xs, ys = _to_tensors(*data.synth.get(synth_idx), proc.device)
        x, y = torch.cat([x, xs]), torch.cat([y, ys])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    # EfficientNet's stochastic depth draws from torch's global generator: seeding it per
    # step keeps a resumed run on the same path as an uninterrupted one (and per rank, so
    # ranks drop different paths; alone the seed is seed * 1_000_003 + step)
    torch.manual_seed((seed * 1_000_003 + step) * proc.world_size + proc.rank)
    x, y = augment(x, y, cfg.augment, gen, data.table.ignore_index)
    # Under torchrun every rank built the same global batch; each keeps every N-th sample
    # (real and synthetic alike, as the batch mixes them). Alone this keeps the whole batch.
    return x[proc.rank :: proc.world_size], y[proc.rank :: proc.world_size]


def build_model(
    cfg: TrainSegmenterConfig, num_classes: int, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, bool]:
    """The segmenter (offline ImageNet encoder weights), its optimizer, and whether it runs
    channels-last. Under torchrun batch norm takes its statistics over the global batch: a
    rank's share can be a handful of images, too few for BN, and the running stats then agree
    on every rank."""
    weights = encoder_state_dict(cfg.encoder, cfg.encoder_weights)
    model = build_segmenter(cfg.arch, cfg.encoder, num_classes, weights).to(device)
    model = distributed.sync_batch_norm(model)
    channels_last = use_channels_last(device, cfg.bf16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, opt, channels_last


def resume_run(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict, device: torch.device
) -> tuple[int, list[int]]:
    """(start step, [real, synthetic] images seen) of an unfinished checkpoint of the same run,
    loaded into `model` and `opt`; (0, [0, 0]) when there is none."""
    if not path.is_file():
        return 0, [0, 0]
    ckpt = load_checkpoint(path, device)
    same = {k: v for k, v in ckpt.get("config", {}).items() if k != "train_config"}
    if "optimizer" not in ckpt or same != {k: v for k, v in meta.items() if k != "train_config"}:
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
