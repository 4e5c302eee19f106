"""Stage `train_masks`: train the SemGAN mask generator (or the paper's RGB baseline) on the
label maps of a prepared dataset.

Writes `OUT/generator.pt` (model, EMA, discriminator, optimizers, step, RNG state, config; the
latest state, so an interrupted run resumes where it stopped), sample grids `OUT/samples*.png`,
`metrics/train_masks.json` (mask-quality metrics of EMA samples against the val masks) and
DVCLive curves. `load_mask_generator` and `sample_masks` are what the generate stage calls.

Under `torchrun --nproc_per_node N` the same loop runs data-parallel: each rank draws its
batch_size / N share of every global batch from its own seeded stream, G and D are wrapped in
DDP for the steps that update them, and rank 0 alone writes and evaluates.
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from models.semgan import (
    MaskDiscriminator,
    MaskGenerator,
    d_logistic_loss,
    ema_beta,
    g_nonsaturating_loss,
    gumbel_softmax_st,
    noisy_one_hot,
    one_hot,
    r1_penalty,
)
from pipeline import distributed
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.classes import ClassTable
from pipeline.config import ConfigError, section, to_dict
from pipeline.device import autocast, use_channels_last
from pipeline.errors import DatasetError, SemsynthError
from pipeline.io_utils import atomic_write_bytes, write_metrics
from pipeline.metrics.masks import mask_quality
from pipeline.shards import iter_split, load_class_table, splits

SECTION = "train_masks"
CHECKPOINT = "generator.pt"
# Architecture keys: a checkpoint can only resume (or load) with the same values.
ARCH_KEYS = ("kind", "latent_dim", "g_channels", "g_norm", "d_channels", "mbstd_group")


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
    kimg: float = field(
        default=8.0, metadata={"help": "training length in thousands of real images shown to D"}
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
    ema_kimg: float = field(default=1.0, metadata={"help": "EMA half-life in kimg"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips of real maps"})
    snapshot_kimg: float = field(
        default=4.0, metadata={"help": "checkpoint + sample grid every this many kimg"}
    )
    log_kimg: float = field(default=0.5, metadata={"help": "DVCLive point every this many kimg"})
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
    resume: bool = field(default=True, metadata={"help": "continue from OUT/generator.pt"})

    def __post_init__(self) -> None:
        positive = ("kimg", "batch_size", "latent_dim", "g_channels", "d_channels", "lr_g", "lr_d")
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
        if self.snapshot_kimg <= 0 or self.log_kimg <= 0 or self.ema_kimg < 0:
            raise ConfigError("train_masks.snapshot_kimg and log_kimg must be > 0, ema_kimg >= 0")
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
# models and sampling


def build_generator(arch: dict[str, Any]) -> MaskGenerator:
    colors = torch.tensor(arch["colors"], dtype=torch.uint8)
    return MaskGenerator(
        kind=arch["kind"],
        num_classes=arch["num_classes"],
        height=arch["height"],
        width=arch["width"],
        latent_dim=arch["latent_dim"],
        channels=arch["g_channels"],
        colors=colors,
        norm=arch.get("g_norm", "pixel"),  # checkpoints from before g_norm existed: pixel
    )


def load_mask_generator(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The EMA generator of a train_masks checkpoint (weights-only load), in eval mode."""
    ckpt = load_checkpoint(path)
    if "arch" not in ckpt or "ema" not in ckpt:
        raise SemsynthError(f"{path} is not a train_masks checkpoint (no 'arch' / 'ema' entries)")
    g = build_generator(ckpt["arch"])
    g.load_state_dict(ckpt["ema"])
    return g.to(device).eval().requires_grad_(False)


@torch.no_grad()
def refresh_batch_norm(generator: MaskGenerator, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate the BN running stats of (EMA) weights from `batches` train-mode passes on
    seeded latents (exact average), then leave G in eval mode.

    The EMA averages weights, not statistics: the stats G gathered while training belong to
    other weights, and samples drawn with them were visibly wrong (all background).
    """
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)

    def forward() -> None:
        generator(torch.randn(batch_size, generator.latent_dim, generator=rng).to(device))

    distributed.recompute_batch_norm(generator, forward, batches)


def latent(seed: int, index: int, dim: int) -> torch.Tensor:
    """Latent of sample `index`: depends on (seed, index) only, never on batching."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))
    return torch.randn(dim, generator=g)


@torch.no_grad()
def sample_masks_and_distance(
    generator: torch.nn.Module,
    n: int,
    seed: int,
    batch_size: int = 64,
    start: int = 0,
    *,
    bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Masks uint8 [n, H, W] of samples start..start+n-1, and for the rgb baseline the distance
    of each pixel's colour to its class colour before quantisation (float32 [n, H, W])."""
    device = next(generator.parameters()).device
    masks = np.empty((n, generator.height, generator.width), dtype=np.uint8)
    dist = np.empty(masks.shape, dtype=np.float32) if generator.kind == "rgb" else None
    for s in range(0, n, batch_size):
        idx = range(start + s, start + min(s + batch_size, n))
        z = torch.stack([latent(seed, i, generator.latent_dim) for i in idx]).to(device)
        with autocast(device, bf16):
            out = generator(z)
        ids, d = generator.to_ids(out)
        masks[s : s + len(idx)] = ids.cpu().numpy().astype(np.uint8)
        if dist is not None:
            dist[s : s + len(idx)] = d.cpu().numpy()
    return masks, dist


def sample_masks(
    generator: torch.nn.Module,
    n: int,
    seed: int,
    batch_size: int = 64,
    start: int = 0,
    *,
    bf16: bool = False,
) -> np.ndarray:
    """uint8 [n, H, W] class maps of samples start..start+n-1; deterministic for (seed, index).

    fp32 by default: bf16 kernels may round differently with the batch size, which flips the
    argmax of ~1 pixel in 1000 at near-ties; fp32 keeps sample i identical however it is batched.
    """
    return sample_masks_and_distance(generator, n, seed, batch_size, start, bf16=bf16)[0]


def grid_png(masks: np.ndarray, table: ClassTable, cols: int = 8) -> bytes:
    """Colourised masks tiled into one PNG, `cols` per row, 2-pixel white gaps."""
    rgb = table.colorize(masks)
    n, h, w, _ = rgb.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2, 3), 255, dtype=np.uint8)
    for i, im in enumerate(rgb):
        r, c = divmod(i, cols)
        canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


# -----------------------------------------------------------------------------------------------
# the training loop


def train_masks(
    cfg: TrainMasksConfig,
    *,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, float]:
    """Train, checkpoint, evaluate; returns the metrics written to `cfg.metrics`.

    `stop_after_steps` ends the run early after that many total steps, with a checkpoint, as an
    interruption would (the next call resumes from it).

    Under torchrun: `cfg.batch_size` stays the global batch (each rank trains on its share), the
    step and image counts are global, and ranks > 0 return {} (rank 0 evaluates and writes).
    """
    from dvclive import Live

    proc = distributed.init(cfg.device)
    device = proc.device
    batch = distributed.per_rank_batch(cfg.batch_size, "train_masks.batch_size")
    table = load_class_table(cfg.data)
    real = fill_void(load_masks(cfg.data, "train"), table.num_classes)
    eval_split = "val" if "val" in splits(cfg.data) else "train"
    real_eval = fill_void(load_masks(cfg.data, eval_split), table.num_classes)
    n_real, height, width = real.shape
    c = table.num_classes
    semgan = cfg.kind == "semgan"
    arch = {
        "kind": cfg.kind,
        "num_classes": c,
        "height": height,
        "width": width,
        "latent_dim": cfg.latent_dim,
        "g_channels": cfg.g_channels,
        "g_norm": cfg.g_norm,
        "d_channels": cfg.d_channels,
        "mbstd_group": cfg.mbstd_group,
        "colors": table.colors.tolist(),
    }

    # Networks, optimisers, EMA copy. One CPU torch.Generator per rank drives every random draw
    # (batches, flips, latents, noise), and is checkpointed, so a resumed run continues exactly.
    # Rank 0's stream is the one a run alone draws; other ranks draw from streams of their own.
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global state untouched
        torch.manual_seed(cfg.seed)
        try:
            G = build_generator(arch)
        except ValueError as e:
            raise DatasetError(f"{cfg.data}: {e}") from None
        D = MaskDiscriminator(c if semgan else 3, height, width, cfg.d_channels, cfg.mbstd_group)
    G = distributed.sync_batch_norm(G)  # one set of batch statistics over all ranks
    channels_last = use_channels_last(device, cfg.bf16)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    rng = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))
    step, images_seen = 0, 0

    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    resumed = cfg.resume and ckpt_path.is_file()
    if resumed:
        ckpt = load_checkpoint(ckpt_path)
        old = ckpt.get("arch", {})
        diff = [k for k in arch if old.get(k) != arch[k]]
        if diff:
            raise ConfigError(
                f"{ckpt_path} was trained with different {diff}; delete it, point "
                "train_masks.out elsewhere, or set train_masks.resume=false to start over"
            )
        G.load_state_dict(ckpt["model"])
        G_ema.load_state_dict(ckpt["ema"])
        D.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["optimizer"]["g"])
        opt_d.load_state_dict(ckpt["optimizer"]["d"])
        step, images_seen = int(ckpt["step"]), int(ckpt["images_seen"])
        exact = distributed.set_rng_state(rng, ckpt["rng"], cfg.seed, step)
        if not exact and proc.main:
            print(
                f"train_masks: {ckpt_path} was written by another number of processes; "
                "resuming with fresh random streams"
            )

    # DDP wrappers: forward through G_ddp / D_ddp only in the step that updates that network,
    # so DDP averages exactly the gradients an optimiser uses; G, D are the same modules unwrapped
    # (the same objects when alone).
    G_ddp, D_ddp = distributed.wrap(G, proc), distributed.wrap(D, proc)

    def save(final: bool) -> None:
        rng_states = distributed.rng_state(rng)  # every rank's stream: all ranks call this
        # Deterministic and local: every rank refreshes, so the EMA stays the same everywhere.
        refresh_batch_norm(G_ema, cfg.bn_refresh_batches, batch, cfg.seed)
        if not proc.main:
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": G.state_dict(),
                "ema": G_ema.state_dict(),
                "discriminator": D.state_dict(),
                "optimizer": {"g": opt_g.state_dict(), "d": opt_d.state_dict()},
                "step": step,
                "images_seen": images_seen,
                "rng": rng_states,
                "arch": arch,
                "config": to_dict(cfg),
                "finished": final,
            },
        )
        grid, _ = sample_masks_and_distance(G_ema, 32, seed=cfg.seed, bf16=cfg.bf16)
        png = grid_png(grid, table)
        atomic_write_bytes(out / "samples.png", png)
        atomic_write_bytes(out / "grids" / f"samples-{images_seen // 1000:06d}kimg.png", png)
        live.log_image("samples.png", Image.open(io.BytesIO(png)))

    real_t = torch.from_numpy(real).long()
    palette = torch.from_numpy(table.colors).float().to(device) / 127.5 - 1  # [C, 3] in [-1, 1]
    beta = ema_beta(cfg.batch_size, cfg.ema_kimg)
    total = int(cfg.kimg * 1000)
    next_log = images_seen + cfg.log_kimg * 1000
    next_snapshot = images_seen + cfg.snapshot_kimg * 1000

    def real_batch() -> torch.Tensor:
        ids = real_t[torch.randint(n_real, (batch,), generator=rng)]
        if cfg.flip:
            flip = torch.rand(batch, generator=rng) < 0.5
            ids = torch.where(flip[:, None, None], ids.flip(-1), ids)
        ids = ids.to(device)
        if semgan:  # one-hot, optionally moved off the corners of the simplex
            x = noisy_one_hot(one_hot(ids, c), cfg.real_noise, rng)
        else:  # colour-coded map in [-1, 1], as the baseline draws it
            x = palette[ids].permute(0, 3, 1, 2)
        return x.contiguous(memory_format=fmt)

    def to_d(g_out: torch.Tensor) -> torch.Tensor:
        """What D sees of G's output: softmax, straight-through Gumbel one-hot, or RGB."""
        if not semgan:
            return g_out
        if cfg.gumbel:
            return gumbel_softmax_st(g_out, cfg.gumbel_tau, rng)
        return F.softmax(g_out.float(), dim=1)

    def noise() -> torch.Tensor:
        return torch.randn(batch, cfg.latent_dim, generator=rng).to(device)

    live = (
        Live(dir=cfg.live_dir, save_dvc_exp=False, dvcyaml=None, resume=resumed)
        if proc.main
        else None
    )
    bar = tqdm(
        total=total, initial=min(images_seen, total), unit="img",
        disable=not progress or not proc.main, desc=f"train_masks ({cfg.kind})",
    )  # fmt: skip
    t0, seen0 = time.perf_counter(), images_seen
    log_d, log_g, log_r1 = [], [], []
    while images_seen < total and (stop_after_steps is None or step < stop_after_steps):
        # D step: logistic loss on reals vs detached fakes, plus lazy R1 on reals. R1 takes the
        # gradient with respect to the inputs only, so DDP's hooks on D's parameters fire once,
        # in the backward of the whole loss, which averages the R1 term's gradients too.
        x_real = real_batch()
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        x_real.requires_grad_(do_r1)
        with autocast(device, cfg.bf16):
            with torch.no_grad():
                x_fake = to_d(G(noise()))
            real_logits = D_ddp(x_real)
            fake_logits = D_ddp(x_fake.to(memory_format=fmt))
            loss_d = d_logistic_loss(real_logits, fake_logits)
            if do_r1:  # gradient penalty kept in fp32 (r1_penalty casts)
                r1 = r1_penalty(real_logits, x_real)
                loss_d = loss_d + r1 * (cfg.r1_gamma / 2 * cfg.r1_interval)
                log_r1.append(r1.item())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # G step: non-saturating loss through D, frozen (its gradients would be discarded).
        D.requires_grad_(False)
        with autocast(device, cfg.bf16):
            loss_g = g_nonsaturating_loss(D(to_d(G_ddp(noise())).to(memory_format=fmt)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)

        # EMA of G as a lerp; with no batch statistics in G there are no buffers to copy. G's
        # weights are the same on every rank after the step, so the EMA is too.
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                p_ema.lerp_(p, 1 - beta)

        # Progress counted in real images shown to D (over all ranks: the global batch).
        step += 1
        images_seen += cfg.batch_size
        bar.update(cfg.batch_size)
        log_d.append(loss_d.item())
        log_g.append(loss_g.item())
        if images_seen >= next_log:
            # Curves: each rank's window mean, averaged over ranks (same numbers everywhere).
            means = {"loss_d": float(np.mean(log_d)), "loss_g": float(np.mean(log_g))}
            if log_r1:
                means["r1"] = float(np.mean(log_r1))
            means = distributed.all_reduce_mean(means)
            if proc.main:
                live.step = step
                live.log_metric("kimg", images_seen / 1000)
                live.log_metric("loss_d", means["loss_d"])
                live.log_metric("loss_g", means["loss_g"])
                if "r1" in means:
                    live.log_metric("r1", means["r1"])
            bar.set_postfix(d=f"{means['loss_d']:.3f}", g=f"{means['loss_g']:.3f}")
            log_d, log_g, log_r1 = [], [], []
            next_log += cfg.log_kimg * 1000
        if images_seen >= next_snapshot:
            save(final=False)
            next_snapshot += cfg.snapshot_kimg * 1000
    bar.close()
    seconds = time.perf_counter() - t0
    finished = images_seen >= total
    save(final=finished)
    distributed.dump_rank_state(
        model=G.state_dict(), ema=G_ema.state_dict(), discriminator=D.state_dict()
    )
    if not proc.main:
        return {}

    # Metrics of EMA samples against the held-out real masks (rank 0 only; the others are done).
    fake, dist = sample_masks_and_distance(
        G_ema, cfg.eval_samples, seed=cfg.seed + 1, bf16=cfg.bf16
    )
    metrics = {
        "kimg": images_seen / 1000,
        "steps": float(step),
        "finished": float(finished),
        "train_img_per_s": (images_seen - seen0) / max(seconds, 1e-9),
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
    for k, v in metrics.items():
        live.summary[k] = v
    live.end()
    write_metrics(cfg.metrics, metrics)
    return metrics


# -----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, TrainMasksConfig)
    return train_masks(cfg, progress=not getattr(args, "quiet", False))
