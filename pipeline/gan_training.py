"""What both GAN stages (`train_masks`, `train_images`) share around their G and D steps.

- `GanState`: the networks, optimisers, random stream and counters a run trains and checkpoints.
- Resume: a checkpoint in the output folder is continued when it was written with the same
  settings; settings that differ are an error naming the keys, unless the run restarts.
- `save`: an atomic checkpoint of {G, EMA, D, optimisers, step, images seen, RNG states, arch,
  config} in the same layout for both stages (`OUT/checkpoint.pt`).
- EMA by a half-life counted in images (optionally ramped up with the images seen, as EDM does),
  batch-norm re-estimation of the EMA weights, and windowed loss logging to DVCLive with the step
  = images seen.

The G step and the D step stay written out in order in each stage's own function.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from pipeline import distributed
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import ConfigError
from pipeline.io_utils import atomic_write_bytes
from pipeline.sampling import GAN_CHECKPOINT

log = logging.getLogger(__name__)

__all__ = [
    "GAN_CHECKPOINT",
    "GanState",
    "Schedule",
    "LossWindow",
    "add_arguments",
    "crossed",
    "ema_beta",
    "png_bytes",
    "progress_bar",
    "recompute_batch_norm",
    "resume",
    "save",
    "update_ema",
    "write_grid",
]


@dataclass
class GanState:
    """Everything a GAN run trains and checkpoints. `G` and `D` are the unwrapped modules."""

    G: nn.Module
    ema: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator  # this rank's stream: batches, flips, noise, coins
    step: int = 0
    images_seen: int = 0


# ---- resume and save --------------------------------------------------------------------------


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], may_differ: Iterable[str] = ()
) -> list[str]:
    """Keys whose values differ between two settings dicts, `may_differ` left out (sorted)."""
    skip = set(may_differ)
    keys = (set(saved) | set(current)) - skip
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def resume(
    path: Path,
    state: GanState,
    *,
    stage: str,
    arch: Mapping[str, Any],
    config: Mapping[str, Any],
    may_differ: Iterable[str],
    seed: int,
    restart: bool,
) -> bool:
    """Load `path` into `state` when it exists (True); start fresh when it does not or `restart`.

    The checkpoint must have been written with the same architecture and the same training
    settings; `may_differ` lists the keys that may change between runs (the budget, logging,
    evaluation, paths). Anything else is an error naming the keys.
    """
    if restart or not path.is_file():
        return False
    ckpt = load_checkpoint(path)
    diff = [f"arch.{k}" for k in changed_settings(ckpt.get("arch", {}), arch)]
    diff += [f"{stage}.{k}" for k in changed_settings(ckpt.get("config", {}), config, may_differ)]
    if diff or "optimizer" not in ckpt:
        what = ", ".join(diff) if diff else "no optimiser state"
        raise ConfigError(
            f"{path} was written with other settings ({what}); rerun with --restart to train "
            f"from scratch (it is replaced), or point {stage}.out elsewhere"
        )
    state.G.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.D.load_state_dict(ckpt["discriminator"])
    state.opt_g.load_state_dict(ckpt["optimizer"]["g"])
    state.opt_d.load_state_dict(ckpt["optimizer"]["d"])
    state.step, state.images_seen = int(ckpt["step"]), int(ckpt["images_seen"])
    if not distributed.set_rng_state(state.rng, ckpt["rng"], seed, state.images_seen):
        log.warning("%s was written by another number of processes; fresh random streams", path)
    return True


def save(
    path: Path,
    state: GanState,
    *,
    main: bool,
    arch: Mapping[str, Any],
    config: Mapping[str, Any],
    finished: bool,
    **extra: Any,
) -> None:
    """Write `state` to `path` atomically (rank 0). A collective: every rank must call it, since
    the checkpoint holds every rank's random stream."""
    rng_states = distributed.rng_state(state.rng)
    if not main:
        return
    save_checkpoint(
        path,
        {
            "model": state.G.state_dict(),
            "ema": state.ema.state_dict(),
            "discriminator": state.D.state_dict(),
            "optimizer": {"g": state.opt_g.state_dict(), "d": state.opt_d.state_dict()},
            "step": state.step,
            "images_seen": state.images_seen,
            "rng": rng_states,
            "arch": dict(arch),
            "config": dict(config),
            "finished": finished,
            **extra,
        },
    )


# ---- EMA and batch norm -----------------------------------------------------------------------


def ema_beta(batch_size: int, halflife_images: float, images_seen: int, rampup: float) -> float:
    """EMA decay per step of `batch_size` images for a half-life in images. With `rampup` > 0
    the half-life is at most `rampup * images_seen` (EDM), so a short run's EMA does not stay
    near the initial weights."""
    halflife = halflife_images
    if rampup > 0:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """EMA of the weights as a lerp; buffers (BN running stats, spectral-norm vectors) copied.
    The model's weights agree on every rank after a DDP step, so the EMA does too."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


@torch.no_grad()
def recompute_batch_norm(module: nn.Module, forward: Callable[[], object], batches: int) -> None:
    """Re-estimate every BatchNorm2d's running stats in `module` as the exact average over
    `batches` train-mode calls of `forward` (which runs `module` on one batch), then leave the
    module in eval mode with the training momentum restored.

    An EMA averages weights, not statistics: the stats gathered while training belong to other
    weights (SemGAN's EMA samples drawn with them were all background), so EMA generators need
    this before they sample.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    module.train()
    for _ in range(batches if norms else 0):
        forward()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.eval()


# ---- progress and logging ---------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When a GAN run logs, snapshots and stops, and its EMA, all counted in real images shown
    to D (global under torchrun). Built from a stage config's fields of the same names."""

    batch_size: int
    total_images: int
    stop: int  # total_images, or earlier when a run is stopped on purpose (as an interruption)
    log_every_images: int
    checkpoint_every_images: int
    ema_halflife_images: float
    ema_rampup: float

    @classmethod
    def of(cls, cfg: Any, stop_after_images: int | None = None) -> Schedule:
        stop = cfg.total_images if stop_after_images is None else stop_after_images
        return cls(
            batch_size=cfg.batch_size,
            total_images=cfg.total_images,
            stop=min(cfg.total_images, stop),
            log_every_images=cfg.log_every_images,
            checkpoint_every_images=cfg.checkpoint_every_images,
            ema_halflife_images=cfg.ema_halflife_images,
            ema_rampup=cfg.ema_rampup,
        )

    def after_step(
        self,
        state: GanState,
        losses: LossWindow,
        live: Any,
        bar: tqdm,
        snapshot: Callable[[bool], None],
        **step_losses: torch.Tensor,
    ) -> None:
        """Count the step's images, update the EMA of `state.G`, log the loss window and take a
        snapshot (checkpoint + grid) when their intervals are crossed."""
        state.step += 1
        state.images_seen += self.batch_size
        seen = state.images_seen
        beta = ema_beta(self.batch_size, self.ema_halflife_images, seen, self.ema_rampup)
        update_ema(state.ema, state.G, beta)
        bar.update(self.batch_size)
        losses.add(**step_losses)
        if crossed(seen, self.batch_size, self.log_every_images) or seen >= self.stop:
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.flush(live, seen).items()})
        if crossed(seen, self.batch_size, self.checkpoint_every_images) and seen < self.stop:
            snapshot(False)


def crossed(seen: int, batch: int, every: float) -> bool:
    """True when the last batch crossed a multiple of `every` images (0 = never)."""
    return every > 0 and seen // every != (seen - batch) // every


class LossWindow:
    """Sums losses over the steps since the last log; `flush` logs their means under `train/`
    with the DVCLive step = images seen (means over ranks: the same numbers everywhere). A loss
    computed on some steps only (lazy R1) is averaged over the steps that computed it."""

    def __init__(self, *names: str):
        self.names = names
        self.last: dict[str, float] = dict.fromkeys(names, 0.0)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = dict.fromkeys(self.names, 0.0)
        self.counts: dict[str, int] = dict.fromkeys(self.names, 0)

    def add(self, **losses: torch.Tensor | float) -> None:
        for k, v in losses.items():
            self.sums[k] += float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.counts[k] += 1

    def flush(self, live: Any, images_seen: int) -> dict[str, float]:
        """Log the window's means (a collective under torchrun) and start a new window."""
        means = {k: self.sums[k] / self.counts[k] for k in self.names if self.counts[k]}
        self.last = distributed.all_reduce_mean(means)
        if live is not None:
            live.step = images_seen
            for k, v in self.last.items():
                live.log_metric(f"train/{k}", v)
            live.next_step()
        self._reset()
        return self.last


def progress_bar(total: int, images_seen: int, desc: str, show: bool) -> tqdm:
    """A bar counting images shown to D, starting where a resumed run left off."""
    return tqdm(
        total=total, initial=min(images_seen, total), unit="img", desc=desc, disable=not show
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line flags both GAN stages take."""
    parser.add_argument(
        "--restart",
        action="store_true",
        help="train from scratch, replacing OUT/checkpoint.pt (default: resume it when it was "
        "written with the same settings, else stop with an error naming the keys that differ)",
    )


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_grid(out: Path, png: bytes, images_seen: int, live: Any) -> None:
    """A snapshot's sample grid: `OUT/samples/{images seen}.png`, `OUT/grid.png` (the latest),
    and DVCLive's image (rank 0)."""
    atomic_write_bytes(out / "samples" / f"{images_seen:08d}.png", png)
    atomic_write_bytes(out / "grid.png", png)
    live.log_image("grid.png", Image.open(io.BytesIO(png)))
