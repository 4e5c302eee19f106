"""Stage `train_masks`: train the SemGAN mask generator (or the paper's RGB baseline) on the
label maps of a prepared dataset.

Writes `OUT/checkpoint.pt` (model, EMA, discriminator, optimizers, step, images seen, RNG state,
config; the latest state, so an interrupted run resumes where it stopped, and a run with other
settings is refused unless `--restart`), sample grids `OUT/grid.png` and `OUT/samples/*.png`,
`metrics/train_masks.json` (mask-quality metrics of EMA samples against the val masks) and
DVCLive curves against images seen. The generate stage loads and samples the checkpoint through
`pipeline.sampling`.

Under `torchrun --nproc_per_node N` the same loop runs data-parallel: each rank draws its
batch_size / N share of every global batch from its own seeded stream, G and D are wrapped in
DDP for the steps that update them, and rank 0 alone writes and evaluates.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from models.semgan import (
    MaskDiscriminator,
    MaskGenerator,
    d_logistic_loss,
    g_nonsaturating_loss,
    gumbel_softmax_st,
    noisy_one_hot,
    one_hot,
    r1_penalty,
)
from pipeline import distributed
from pipeline import gan_training as gan
from pipeline.classes import ClassTable
from pipeline.config import ConfigError, section, to_dict
from pipeline.data import ShardIndex
from pipeline.device import autocast, use_channels_last
from pipeline.errors import DatasetError
from pipeline.io_utils import open_live, write_metrics
from pipeline.metrics.masks import mask_quality
from pipeline.sampling import build_mask_generator, sample_masks_and_distance
from pipeline.shards import iter_split, load_class_table, splits

SECTION = "train_masks"
# Settings a run may change and still resume its checkpoint: the budget, logging, evaluation,
# paths. Any other difference is an error (gan_training.resume).
MAY_DIFFER = (
    "total_images", "log_every_images", "checkpoint_every_images", "bn_refresh_batches",
    "eval_samples", "min_component", "off_palette_threshold", "eval_fid",
    "out", "metrics", "live_dir", "device",
)  # fmt: skip


@dataclass(frozen=True)
class TrainMasksConfig:
    kind: Literal["semgan", "rgb"] = field(
        default="semgan",
        metadata={
            "help": "semgan (softmax over classes) | rgb (the paper's standard-GAN baseline)"
        },
    )
    data: str = field(default="data/prepared", metadata={"help": "prepared dataset folder"})
    out: str = field(default="data/masks", metadata={"help": "checkpoint and sample-grid folder"})
    metrics: str = "metrics/train_masks.json"
    live_dir: str = field(default="dvclive/train_masks", metadata={"help": "DVCLive folder"})
    total_images: int = field(
        default=8000, metadata={"help": "training length, in real maps shown to D"}
    )
    batch_size: int = field(default=16, metadata={"help": "maps per D and G step"})
    latent_dim: int = 128
    g_channels: int = field(default=128, metadata={"help": "G width at the lowest resolution"})
    g_norm: Literal["batch", "pixel"] = field(
        default="batch",
        metadata={"help": "G normalisation: batch (DCGAN; default) | pixel (PGGAN; collapses)"},
    )
    bn_refresh_batches: int = field(
        default=16, metadata={"help": "batches that re-estimate the EMA G's batch-norm stats"}
    )
    d_channels: int = field(default=16, metadata={"help": "D width at full resolution"})
    mbstd_group: int = field(
        default=4,
        metadata={
            "help": "D's minibatch-stddev group size (PGGAN; counters mode collapse); 0 = off"
        },
    )
    lr_g: float = 0.0005
    lr_d: float = 0.0005
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = field(
        default=1.0, metadata={"help": "R1 weight (Mescheder et al. 2018); 0 turns R1 off"}
    )
    r1_interval: int = field(
        default=4, metadata={"help": "apply R1 every N D steps (lazy, scaled by N)"}
    )
    gumbel: bool = field(
        default=False,
        metadata={"help": "D sees straight-through Gumbel-softmax one-hot fakes (SB-GAN)"},
    )
    gumbel_tau: float = 1.0
    real_noise: float = field(
        default=0.0, metadata={"help": "std of |noise| added to one-hot reals (0 = none)"}
    )
    ema_halflife_images: int = field(default=1000, metadata={"help": "EMA half-life in images"})
    ema_rampup: float = field(
        default=0.0,
        metadata={"help": "EMA half-life at most this share of the images seen (EDM); 0 = off"},
    )
    flip: bool = field(default=True, metadata={"help": "random horizontal flips of real maps"})
    checkpoint_every_images: int = field(
        default=4000, metadata={"help": "checkpoint + sample grid every this many images; 0 = end"}
    )
    log_every_images: int = field(default=500, metadata={"help": "DVCLive point interval"})
    eval_samples: int = field(default=256, metadata={"help": "EMA samples for final metrics"})
    min_component: int = field(
        default=16, metadata={"help": "components below this size count as spurious pixels"}
    )
    off_palette_threshold: float = field(
        default=32.0, metadata={"help": "rgb baseline: RGB distance (0..255) counted off-palette"}
    )
    eval_fid: bool = field(default=False, metadata={"help": "also compute FID (slow on CPU)"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    bf16: bool = field(
        default=False, metadata={"help": "bf16 autocast (measured slower on CPU for these nets)"}
    )

    def __post_init__(self) -> None:
        positive = (
            "total_images",
            "batch_size",
            "latent_dim",
            "g_channels",
            "d_channels",
            "lr_g",
            "lr_d",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"train_masks.{key} must be > 0, got {getattr(self, key)}")
        if self.r1_gamma < 0 or self.r1_interval < 1:
            raise ConfigError("train_masks.r1_gamma must be >= 0 and train_masks.r1_interval >= 1")
        if self.real_noise < 0 or self.gumbel_tau <= 0:
            raise ConfigError("train_masks.real_noise must be >= 0 and gumbel_tau > 0")
        if self.kind == "rgb" and (self.gumbel or self.real_noise):
            raise ConfigError(
                "train_masks.gumbel / real_noise apply to kind semgan only; unset them for rgb"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train_masks.betas {list(self.betas)} must lie in [0, 1)")
        for key in ("checkpoint_every_images", "log_every_images", "ema_halflife_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train_masks.{key} must be >= 0, got {getattr(self, key)}")
        if self.ema_rampup < 0:
            raise ConfigError(f"train_masks.ema_rampup must be >= 0, got {self.ema_rampup}")
        if self.mbstd_group < 0:
            raise ConfigError(f"train_masks.mbstd_group must be >= 0, got {self.mbstd_group}")
        if self.bn_refresh_batches < 1:
            raise ConfigError(
                f"train_masks.bn_refresh_batches must be >= 1, got {self.bn_refresh_batches}"
            )
        if self.eval_samples < 2 or self.min_component < 1:
            raise ConfigError("train_masks.eval_samples must be >= 2, min_component >= 1")


Config = TrainMasksConfig


# -----------------------------------------------------------------------------------------------
# data


def fill_void(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Give every void pixel (id >= num_classes) the class of the nearest labelled pixel.

    The generator draws a class at every pixel; leaving void in the reals would teach D that a
    map with holes is real, which G cannot produce.
    """
    out = masks.copy()
    for m in out:
        void = m >= num_classes
        if void.any() and not void.all():
            _, (iy, ix) = ndimage.distance_transform_edt(void, return_indices=True)
            m[void] = m[iy[void], ix[void]]
        elif void.all():
            m[:] = 0
    return out


def load_masks(data: str | Path, split: str) -> np.ndarray:
    """uint8 [N, H, W] masks of one split (images are not decoded into memory)."""
    masks = [s.mask for s in iter_split(data, split)]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise DatasetError(f"{data}/{split}: masks have different sizes {sorted(shapes)}")
    return np.stack(masks)


# -----------------------------------------------------------------------------------------------
# networks and sample grids


def build_arch(cfg: TrainMasksConfig, table: ClassTable, height: int, width: int) -> dict:
    """The checkpoint's `arch` entry: what `sampling.build_mask_generator` rebuilds G from."""
    return {
        "kind": cfg.kind,
        "num_classes": table.num_classes,
        "height": height,
        "width": width,
        "latent_dim": cfg.latent_dim,
        "g_channels": cfg.g_channels,
        "g_norm": cfg.g_norm,
        "d_channels": cfg.d_channels,
        "mbstd_group": cfg.mbstd_group,
        "colors": table.colors.tolist(),
    }


def build_state(
    cfg: TrainMasksConfig, arch: dict, device: torch.device, fmt: torch.memory_format
) -> gan.GanState:
    """G, its EMA copy, D and their optimisers, with seeded initial weights (the global RNG is
    left untouched). One CPU torch.Generator per rank then drives every random draw (batches,
    flips, latents, noise) and is checkpointed, so a resumed run continues exactly; rank 0's
    stream is the one a run alone draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            G = build_mask_generator(arch)
        except ValueError as e:
            raise DatasetError(f"{cfg.data}: {e}") from None
        d_in = arch["num_classes"] if cfg.kind == "semgan" else 3
        D = MaskDiscriminator(d_in, arch["height"], arch["width"], cfg.d_channels, cfg.mbstd_group)
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    ema = copy.deepcopy(G).eval().requires_grad_(False)  # plain BN: refreshed and sampled locally
    G = distributed.sync_batch_norm(G)  # one set of batch statistics over all ranks
    return gan.GanState(
        G=G,
        ema=ema,
        D=D,
        opt_g=torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas),
        opt_d=torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas),
        rng=torch.Generator().manual_seed(distributed.rank_seed(cfg.seed)),
    )


@torch.no_grad()
def refresh_batch_norm(generator: MaskGenerator, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate the BN running stats of (EMA) weights from `batches` train-mode passes on
    seeded latents (exact average), then leave G in eval mode."""
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)

    def forward() -> None:
        generator(torch.randn(batch_size, generator.latent_dim, generator=rng).to(device))

    gan.recompute_batch_norm(generator, forward, batches)


def grid_png(masks: np.ndarray, table: ClassTable, cols: int = 8) -> bytes:
    """Colourised masks tiled into one PNG, `cols` per row, 2-pixel white gaps."""
    rgb = table.colorize(masks)
    n, h, w, _ = rgb.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2, 3), 255, dtype=np.uint8)
    for i, im in enumerate(rgb):
        r, c = divmod(i, cols)
        canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    return gan.png_bytes(canvas)


class RealMaps:
    """What D sees: batches of real maps (one-hot, or colour-coded for the rgb baseline) and
    G's output as D sees it, all drawn from the run's random stream."""

    def __init__(self, cfg: TrainMasksConfig, real: ShardIndex, table: ClassTable, **where: Any):
        self.cfg, self.c = cfg, table.num_classes
        self.real = real  # read per batch: memory does not grow with the data
        self.device, self.fmt, self.rng, self.batch = (
            where["device"], where["fmt"], where["rng"], where["batch"]
        )  # fmt: skip
        colors = torch.from_numpy(table.colors).float().to(self.device)
        self.palette = colors / 127.5 - 1  # [C, 3] in [-1, 1]

    def real_batch(self) -> torch.Tensor:
        idx = torch.randint(len(self.real), (self.batch,), generator=self.rng)
        ids = torch.from_numpy(fill_void(self.real.masks(idx.numpy()), self.c)).long()
        if self.cfg.flip:
            flip = torch.rand(self.batch, generator=self.rng) < 0.5
            ids = torch.where(flip[:, None, None], ids.flip(-1), ids)
        ids = ids.to(self.device)
        if self.cfg.kind == "semgan":  # one-hot, optionally moved off the corners of the simplex
            x = noisy_one_hot(one_hot(ids, self.c), self.cfg.real_noise, self.rng)
        else:  # colour-coded map in [-1, 1], as the baseline draws it
            x = self.palette[ids].permute(0, 3, 1, 2)
        return x.contiguous(memory_format=self.fmt)

    def to_d(self, g_out: torch.Tensor) -> torch.Tensor:
        """What D sees of G's output: softmax, straight-through Gumbel one-hot, or RGB."""
        if self.cfg.kind != "semgan":
            return g_out.to(memory_format=self.fmt)
        if self.cfg.gumbel:
            x = gumbel_softmax_st(g_out, self.cfg.gumbel_tau, self.rng)
        else:
            x = F.softmax(g_out.float(), dim=1)
        return x.to(memory_format=self.fmt)

    def noise(self) -> torch.Tensor:
        return torch.randn(self.batch, self.cfg.latent_dim, generator=self.rng).to(self.device)


# -----------------------------------------------------------------------------------------------
# the training loop


def train_masks(
    cfg: TrainMasksConfig,
    *,
    restart: bool = False,
    progress: bool = True,
    stop_after_images: int | None = None,
) -> dict[str, float]:
    """Train, checkpoint, evaluate; returns the metrics written to `cfg.metrics`.

    Resumes `OUT/checkpoint.pt` when it was written with the same settings (an error naming the
    keys otherwise); `restart` trains from scratch. `stop_after_images` ends the run early, with
    a checkpoint, as an interruption would (the next call resumes from it).

    Under torchrun: `cfg.batch_size` stays the global batch (each rank trains on its share), the
    step and image counts are global, and ranks > 0 return {} (rank 0 evaluates and writes).
    """
    proc = distributed.init(cfg.device)
    device = proc.device
    batch = distributed.per_rank_batch(cfg.batch_size, "train_masks.batch_size")
    table = load_class_table(cfg.data)
    real = ShardIndex(cfg.data, "train")
    arch = build_arch(cfg, table, *real.shape())
    fmt = torch.channels_last if use_channels_last(device, cfg.bf16) else torch.contiguous_format
    state = build_state(cfg, arch, device, fmt)
    out, config = Path(cfg.out), to_dict(cfg)
    ckpt_path = out / gan.GAN_CHECKPOINT
    resumed = gan.resume(
        ckpt_path, state, stage=SECTION, arch=arch, config=config,
        may_differ=MAY_DIFFER, seed=cfg.seed, restart=restart,
    )  # fmt: skip
    G, D, rng = state.G, state.D, state.rng
    # DDP wrappers: forward through G_ddp / D_ddp only in the step that updates that network,
    # so DDP averages exactly the gradients an optimiser uses (the same modules when alone).
    G_ddp, D_ddp = distributed.wrap(G, proc), distributed.wrap(D, proc)
    maps = RealMaps(cfg, real, table, device=device, fmt=fmt, rng=rng, batch=batch)
    live = open_live(cfg.live_dir, resumed, proc.main)

    def snapshot(finished: bool) -> None:
        # Deterministic and local: every rank refreshes, so the EMA stays the same everywhere.
        refresh_batch_norm(state.ema, cfg.bn_refresh_batches, batch, cfg.seed)
        gan.save(ckpt_path, state, main=proc.main, arch=arch, config=config, finished=finished)
        if proc.main:
            grid, _ = sample_masks_and_distance(state.ema, 32, seed=cfg.seed, bf16=cfg.bf16)
            gan.write_grid(out, grid_png(grid, table), state.images_seen, live)

    schedule = gan.Schedule.of(cfg, stop_after_images)
    losses = gan.LossWindow("loss_d", "loss_g", "r1")
    desc = f"train_masks ({cfg.kind})"
    bar = gan.progress_bar(cfg.total_images, state.images_seen, desc, progress and proc.main)
    t0, seen0 = time.perf_counter(), state.images_seen
    while state.images_seen < schedule.stop:
        # D step: logistic loss on reals vs detached fakes, plus lazy R1 on reals. R1 takes the
        # gradient with respect to the inputs only, so DDP's hooks on D's parameters fire once,
        # in the backward of the whole loss, which averages the R1 term's gradients too.
        x_real = maps.real_batch()
        do_r1 = cfg.r1_gamma > 0 and state.step % cfg.r1_interval == 0
        x_real.requires_grad_(do_r1)
        with autocast(device, cfg.bf16):
            with torch.no_grad():
                x_fake = maps.to_d(G(maps.noise()))
            real_logits = D_ddp(x_real)
            fake_logits = D_ddp(x_fake)
            loss_d = d_logistic_loss(real_logits, fake_logits)
            if do_r1:  # gradient penalty kept in fp32 (r1_penalty casts)
                r1 = r1_penalty(real_logits, x_real)
                loss_d = loss_d + r1 * (cfg.r1_gamma / 2 * cfg.r1_interval)
                losses.add(r1=r1)
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        state.opt_d.step()

        # G step: non-saturating loss through D, frozen (its gradients would be discarded).
        D.requires_grad_(False)
        with autocast(device, cfg.bf16):
            loss_g = g_nonsaturating_loss(D(maps.to_d(G_ddp(maps.noise()))))
        state.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        state.opt_g.step()
        D.requires_grad_(True)

        # Progress in real images shown to D (over all ranks: the global batch), the EMA of G,
        # curves, and checkpoints with sample grids on schedule.
        schedule.after_step(state, losses, live, bar, snapshot, loss_d=loss_d, loss_g=loss_g)
    bar.close()
    seconds = time.perf_counter() - t0
    finished = state.images_seen >= cfg.total_images
    snapshot(finished=finished)
    distributed.check_replicas_agree(model=G.state_dict(), ema=state.ema.state_dict(),
                                     discriminator=D.state_dict())  # fmt: skip
    if not proc.main:
        return {}
    speed = (state.images_seen - seen0) / max(seconds, 1e-9)
    metrics = final_metrics(cfg, state, table, finished, speed, device)
    for k, v in metrics.items():
        live.summary[k] = v
    live.end()
    write_metrics(cfg.metrics, metrics)
    return metrics


def final_metrics(
    cfg: TrainMasksConfig,
    state: gan.GanState,
    table: ClassTable,
    finished: bool,
    speed: float,
    device: torch.device,
) -> dict[str, float]:
    """Mask-quality metrics of EMA samples against the held-out real masks (rank 0)."""
    eval_split = "val" if "val" in splits(cfg.data) else "train"
    real_eval = fill_void(load_masks(cfg.data, eval_split), table.num_classes)
    fake, dist = sample_masks_and_distance(
        state.ema, cfg.eval_samples, seed=cfg.seed + 1, bf16=cfg.bf16
    )
    return {
        "images_seen": float(state.images_seen),
        "steps": float(state.step),
        "finished": float(finished),
        "train_img_per_s": speed,
        **mask_quality(
            fake,
            real_eval,
            table,
            min_size=cfg.min_component,
            distance=dist,
            off_palette_threshold=cfg.off_palette_threshold,
            compute_fid=cfg.eval_fid,
            seed=cfg.seed,
            device=device,
        ),
    }


# -----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gan.add_arguments(parser)  # --quiet, --restart


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, TrainMasksConfig)
    return train_masks(cfg, restart=args.restart, progress=not args.quiet)
