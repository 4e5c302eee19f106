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
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.segmenter import build_segmenter, segmentation_loss
from pipeline import distributed
from pipeline.augment import augment
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.classes import ClassTable
from pipeline.config import ConfigError, section, to_dict
from pipeline.device import autocast, channels_last_or_cpu
from pipeline.io_utils import open_live, write_metrics
from pipeline.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pipeline.predict import MODES, predict, run_name
from pipeline.pretrained import encoder_state_dict
from pipeline.segmenter_config import SECTION, TrainSegmenterConfig
from pipeline.segmenter_data import RunData, filter_synthetic, load_run_data
from pipeline.segmenter_schedule import Schedule, StepPlan, schedule

log = logging.getLogger(__name__)


Config = TrainSegmenterConfig


def _to_tensors(images: np.ndarray, masks: np.ndarray, device: torch.device):
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    return x, torch.from_numpy(masks).to(device).long()


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
    channels_last = channels_last_or_cpu(device, cfg.bf16)
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
