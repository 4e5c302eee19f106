"""Stage `train_images`: train the OASIS label-map → image generator on a prepared dataset.

Writes `OUT/checkpoint.pt` (model, EMA, discriminator, optimizers, step, images seen, RNG state,
config; a rerun resumes it when the settings match, is refused with the keys that differ
otherwise, and `--restart` trains from scratch), sample grids `OUT/samples/*.png` and
`OUT/grid.png` (label | real | synthesised images for several seeds), `metrics/train_images.json`
(FID and KID of the EMA and of the raw generator on the held-out split, speed, final losses) and
DVCLive curves against images seen. The defaults fit the 64x64 `shapes` data in about 3 CPU minutes; for real data use
e.g. `--set train_images.preset=paper --set train_images.g_ch=64 --set train_images.d_ch=64
--set train_images.total_images=2000000` on a GPU (the paper's sizes).

For a few hundred real images: `discriminator: pretrained` swaps OASIS's D for the same N+1
U-Net on a frozen (or fine-tuned) ImageNet EfficientNet-Lite0 encoder, and `diffaug: true`
augments every D input in both steps, the label map moved with the image (`models/diffaug.py`).

Under `torchrun --nproc_per_node N` the same loop runs data-parallel: each rank draws its
batch_size / N share of every global batch from its own seeded stream, G and D are wrapped in DDP
for the steps that update them, G's batch norm takes its statistics over the global batch, and
rank 0 alone writes and computes the FID.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.diffaug import POLICIES as DIFFAUG_POLICIES
from models.diffaug import Transform, draw_augmentation
from models.oasis import (
    PRESETS,
    UPSAMPLE_MODES,
    OASISGenerator,
    UNetDiscriminator,
    preset_widths,
)
from models.oasis_losses import discriminator_loss, generator_loss, labelmix, labelmix_loss
from models.oasis_pretrained import (
    DEFAULT_DECODER_CHANNELS,
    ENCODER_DEPTH,
    STRIDE,
    PretrainedUNetDiscriminator,
)
from pipeline import distributed
from pipeline import gan_training as gan
from pipeline.classes import ClassTable
from pipeline.config import section, to_dict
from pipeline.data import ShardIndex
from pipeline.device import autocast, use_channels_last
from pipeline.errors import ConfigError, DatasetError
from pipeline.io_utils import open_live, write_metrics
from pipeline.pretrained import encoder_state_dict
from pipeline.sampling import onehot, synthesize
from pipeline.shards import load_class_table, load_split, splits

SECTION = "train_images"
PRETRAINED_ENCODER = "efficientnet-lite0"  # the encoder with offline ImageNet weights
log = logging.getLogger(__name__)
# Settings a run may change and still resume its checkpoint: the budget, logging, evaluation,
# paths. Any other difference is an error (gan_training.resume).
MAY_DIFFER = (
    "total_images", "log_every_images", "checkpoint_every_images", "bn_refresh_batches",
    "fid_images", "grid_rows", "grid_seeds", "out", "metrics", "live_dir", "device",
)  # fmt: skip


@dataclass(frozen=True)
class TrainImagesConfig:
    data: str = field(default="data/prepared", metadata={"help": "prepared dataset folder"})
    out: str = field(default="data/images", metadata={"help": "checkpoint and sample grids"})
    preset: str = field(
        default="small", metadata={"help": f"network widths: {' | '.join(PRESETS)}"}
    )
    g_ch: int = field(default=8, metadata={"help": "generator base width (paper: 64)"})
    d_ch: int = field(default=16, metadata={"help": "discriminator base width (paper: 64)"})
    discriminator: str = field(
        default="oasis",
        metadata={
            "help": "oasis (the paper's residual U-Net, from scratch) | pretrained (a U-Net on "
            "an ImageNet EfficientNet-Lite0 encoder; H, W divisible by 32)"
        },
    )
    d_encoder: str = field(
        default="frozen",
        metadata={"help": "pretrained D's encoder: frozen | finetune (trained, lr_d x mult)"},
    )
    d_encoder_lr_mult: float = field(
        default=0.1, metadata={"help": "d_encoder finetune: encoder lr = lr_d x this"}
    )
    d_decoder_channels: tuple[int, ...] = field(
        default=DEFAULT_DECODER_CHANNELS,
        metadata={"help": "pretrained D's decoder widths, from 1/16 to full size (5)"},
    )
    d_spectral_norm: bool = field(
        default=True, metadata={"help": "pretrained D: spectral norm on the decoder convs"}
    )
    spade_hidden: int = field(default=32, metadata={"help": "SPADE hidden width (paper: 128)"})
    z_dim: int = field(default=64, metadata={"help": "3D noise channels; 0 = no noise"})
    spatial_noise: bool = field(
        default=False, metadata={"help": "a z per pixel instead of one z per image"}
    )
    g_upsample: str = field(
        default="nearest",
        metadata={"help": f"G's feature upsampling between blocks: {' | '.join(UPSAMPLE_MODES)}"},
    )
    labelmix_weight: float = field(default=10.0, metadata={"help": "LabelMix weight; 0 = off"})
    batch_size: int = 16
    total_images: int = field(
        default=8000, metadata={"help": "training length, in real images shown to D"}
    )
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)
    ema_halflife_images: int = field(default=2000, metadata={"help": "EMA half-life in images"})
    ema_rampup: float = field(
        default=0.1,
        metadata={"help": "EMA half-life at most this share of the images seen (EDM); 0 = off"},
    )
    bn_refresh_batches: int = field(
        default=16, metadata={"help": "batches to re-estimate the EMA's BN stats before sampling"}
    )
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    diffaug: bool = field(
        default=False,
        metadata={"help": "DiffAugment every D input (real, fake, LabelMix) in both steps"},
    )
    diffaug_policy: tuple[str, ...] = field(
        default=("translation", "cutout", "color"),
        metadata={"help": f"DiffAugment transforms, any of: {', '.join(DIFFAUG_POLICIES)}"},
    )
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast + channels-last if fast"})
    log_every_images: int = field(default=512, metadata={"help": "DVCLive point interval"})
    checkpoint_every_images: int = field(
        default=2000, metadata={"help": "checkpoint + sample grid every this many images; 0 = end"}
    )
    fid_images: int = field(
        default=500, metadata={"help": "held-out images for FID (0 = skip FID)"}
    )
    grid_rows: int = 6
    grid_seeds: int = 3
    metrics: str = "metrics/train_images.json"
    live_dir: str = "dvclive/train_images"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(
                f"train_images.preset {self.preset!r} is unknown; valid: {', '.join(PRESETS)}"
            )
        for key in ("g_ch", "d_ch", "spade_hidden", "batch_size", "total_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train_images.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size < 2:
            raise ConfigError("train_images.batch_size must be >= 2 (batch norm needs it)")
        nonnegative = (
            "z_dim", "labelmix_weight", "fid_images", "bn_refresh_batches", "ema_halflife_images",
            "ema_rampup", "log_every_images", "checkpoint_every_images",
        )  # fmt: skip
        for key in nonnegative:
            if getattr(self, key) < 0:
                raise ConfigError(f"train_images.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError("train_images.lr_g and lr_d must be > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train_images.betas must be in [0, 1), got {list(self.betas)}")
        self._check_choices()

    def _check_choices(self) -> None:
        choices = {
            "discriminator": ("oasis", "pretrained"),
            "d_encoder": ("frozen", "finetune"),
            "g_upsample": UPSAMPLE_MODES,
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(
                    f"train_images.{key} {getattr(self, key)!r} is unknown; valid: {', '.join(valid)}"
                )
        if self.d_encoder_lr_mult <= 0:
            raise ConfigError("train_images.d_encoder_lr_mult must be > 0")
        if len(self.d_decoder_channels) != ENCODER_DEPTH or min(self.d_decoder_channels) < 1:
            raise ConfigError(
                f"train_images.d_decoder_channels needs {ENCODER_DEPTH} widths >= 1, "
                f"got {list(self.d_decoder_channels)}"
            )
        unknown = sorted(set(self.diffaug_policy) - set(DIFFAUG_POLICIES))
        if unknown or (self.diffaug and not self.diffaug_policy):
            raise ConfigError(
                f"train_images.diffaug_policy {list(self.diffaug_policy)}: list one or more of "
                f"{', '.join(DIFFAUG_POLICIES)}"
            )


Config = TrainImagesConfig


# -----------------------------------------------------------------------------------------------
# networks, data and sample grids


def build_state(
    cfg: TrainImagesConfig, n_classes: int, size: tuple[int, int], device: torch.device
) -> gan.GanState:
    """G, its EMA copy, D and their optimisers; initial weights drawn from a private RNG (no
    global randomness). One CPU generator per rank then draws batches, flips, noise, DiffAugment
    transforms and LabelMix coins; rank 0's stream is the one a run alone draws."""
    (h, w), mem = size, _memory_format(device, cfg.bf16)
    g_widths, _ = preset_widths(cfg.preset, cfg.g_ch, cfg.d_ch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            G = OASISGenerator(
                n_classes, h, w, g_widths, cfg.z_dim, cfg.spade_hidden, cfg.spatial_noise,
                cfg.g_upsample,
            )  # fmt: skip
            D = build_discriminator(cfg, n_classes, (h, w))
        except ValueError as e:
            raise ConfigError(f"train_images: {e} (data {cfg.data} is {h}x{w})") from None
    G.to(device, memory_format=mem).train()
    D.to(device, memory_format=mem).train()
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Under torchrun G's (parameter-free) batch norm normalises over the global batch, as OASIS
    # trains with synchronised BN: G is then the same function as alone whatever the number of
    # processes, and its running stats, copied into the EMA, agree on every rank. The EMA keeps
    # plain BN: it is only refreshed and sampled locally.
    G = distributed.sync_batch_norm(G)
    return gan.GanState(
        G=G,
        ema=ema,
        D=D,
        opt_g=torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas)),
        opt_d=torch.optim.Adam(d_param_groups(D, cfg), lr=cfg.lr_d, betas=tuple(cfg.betas)),
        rng=torch.Generator().manual_seed(distributed.rank_seed(cfg.seed)),
    )


Discriminator = UNetDiscriminator | PretrainedUNetDiscriminator


def build_discriminator(
    cfg: TrainImagesConfig, n_classes: int, size: tuple[int, int]
) -> Discriminator:
    """OASIS's U-Net D, or the U-Net on a pretrained encoder (its ImageNet weights read here)."""
    h, w = size
    if cfg.discriminator == "oasis":
        widths = preset_widths(cfg.preset, cfg.g_ch, cfg.d_ch)[1]
        if h % 2 ** len(widths) or w % 2 ** len(widths):
            raise ValueError(
                f"image size must be divisible by 2^{len(widths)} for {len(widths)} "
                "discriminator levels; change the size or the preset"
            )
        return UNetDiscriminator(n_classes, widths)
    if h % STRIDE or w % STRIDE:
        raise ValueError(
            f"discriminator=pretrained needs H and W divisible by {STRIDE} (its encoder's "
            "stride): prepare the data at such a size (64x64, 96x128) or use discriminator=oasis"
        )
    return PretrainedUNetDiscriminator(
        n_classes,
        PRETRAINED_ENCODER,
        cfg.d_decoder_channels,
        encoder_state_dict(PRETRAINED_ENCODER, "imagenet", "set train_images.discriminator=oasis"),
        trainable_encoder=cfg.d_encoder == "finetune",
        spectral_norm=cfg.d_spectral_norm,
    )


def d_param_groups(D: Discriminator, cfg: TrainImagesConfig) -> list[dict]:
    """D's trained parameters; a fine-tuned pretrained encoder at lr_d x d_encoder_lr_mult, a
    frozen one not at all."""
    if not isinstance(D, PretrainedUNetDiscriminator):
        return [{"params": list(D.parameters())}]
    groups = [{"params": [p for n, p in D.named_parameters() if not n.startswith("encoder.")]}]
    if cfg.d_encoder == "finetune":
        lr = cfg.lr_d * cfg.d_encoder_lr_mult
        groups.append({"params": list(D.encoder.parameters()), "lr": lr})
    return groups


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No weight gradients for `module` inside; each parameter's own flag restored after (a
    frozen pretrained encoder stays frozen)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _memory_format(device: torch.device, bf16: bool) -> torch.memory_format:
    return torch.channels_last if use_channels_last(device, bf16) else torch.contiguous_format


@dataclass(frozen=True)
class Pairs:
    """A split's image/mask pairs: uint8 arrays as read, and the training tensors."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    masks: np.ndarray  # uint8 [N, H, W]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        real = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return real, torch.from_numpy(self.masks)  # [N, 3, H, W] in [-1, 1], [N, H, W]


def load_pairs(data_dir: Path, split: str) -> Pairs:
    images, masks, _ = load_split(data_dir, split)
    if images is None:
        raise DatasetError(
            f"{data_dir}/{split} has masks only; train_images needs image/mask pairs"
        )
    return Pairs(images, masks)


@torch.no_grad()
def refresh_batch_norm(
    generator: OASISGenerator,
    masks: ShardIndex,
    batches: int,
    batch_size: int,
    rng: torch.Generator,
    bf16: bool = True,
) -> None:
    """Re-estimate BN running stats of (EMA) weights: exact average over `batches` train-mode passes."""
    if batches == 0:
        return
    device = next(generator.parameters()).device
    channels_last = use_channels_last(device, bf16)

    def forward() -> None:
        idx = torch.randint(len(masks), (batch_size,), generator=rng)
        z = torch.randn(batch_size, *generator.noise_shape(), generator=rng).to(device)
        label = torch.from_numpy(masks.masks(idx.numpy())).to(device)
        with autocast(device, bf16):
            generator(onehot(label, generator.num_classes, channels_last), z)

    gan.recompute_batch_norm(generator, forward, batches)


def draw_batch(
    train: ShardIndex, batch: int, flip: bool, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random pairs (float images in [-1, 1], long masks) read from the shards, each
    flipped with probability 1/2."""
    idx = torch.randint(len(train), (batch,), generator=rng)
    real, mask = Pairs(*train.pairs(idx.numpy())).tensors()
    mask = mask.long()
    if flip:
        flipped = torch.rand(batch, generator=rng) < 0.5
        real[flipped], mask[flipped] = real[flipped].flip(-1), mask[flipped].flip(-1)
    return real, mask


def grid_pairs(val: Pairs | None, train: ShardIndex, rows: int) -> Pairs:
    """The rows of the sample grid, spread over the held-out split (else over train)."""
    if val is None:
        return Pairs(*train.pairs(grid_indices(len(train), rows)))
    idx = grid_indices(len(val.masks), rows)
    return Pairs(val.images[idx], val.masks[idx])


def grid_indices(n: int, rows: int) -> np.ndarray:
    """`rows` indices spread evenly over n samples: splits cut from videos (CamVid's val is one
    sequence) hold runs of near-identical frames, so the first rows would show one scene."""
    return np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))


def sample_grid(
    generator: OASISGenerator, pairs: Pairs, table: ClassTable, seeds: int
) -> np.ndarray:
    """Rows of: colourised label | real image | `seeds` synthesised images (seeds 0..k-1)."""
    rows = []
    fakes = synthesize(
        generator, pairs.masks, seed=0, n_per_mask=seeds, ignore_index=table.ignore_index
    )
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(table.colors)] = table.colors
    for m, real, fake in zip(pairs.masks, pairs.images, fakes, strict=True):
        tiles = [lut[m], real, *fake]
        rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0))) for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)


# -----------------------------------------------------------------------------------------------
# the stage


def train_images(
    cfg: TrainImagesConfig,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    metrics_path: str | Path | None = None,
    live_dir: str | Path | None = None,
    *,
    restart: bool = False,
    stop_after_images: int | None = None,
) -> dict[str, float]:
    """Train OASIS on `data_dir`'s train split; FID of the EMA generator on its val split.

    Resumes `OUT/checkpoint.pt` when its settings match (else an error naming the keys) unless
    `restart`; `stop_after_images` stops early with a checkpoint, as an interruption would.
    Under torchrun ranks > 0 return {} (rank 0 computes the FID and writes).
    """
    data_dir, out_dir = Path(data_dir or cfg.data), Path(out_dir or cfg.out)
    table = load_class_table(data_dir)
    n_classes, void = table.num_classes, table.ignore_index
    train = ShardIndex(data_dir, "train")  # read per batch: memory does not grow with the data
    if not train.has_images:
        raise DatasetError(f"{data_dir}/train has masks only; train_images needs image/mask pairs")
    val = load_pairs(data_dir, "val") if "val" in splits(data_dir) else None
    proc = distributed.init(cfg.device)
    device = proc.device
    cl, mem = use_channels_last(device, cfg.bf16), _memory_format(device, cfg.bf16)
    batch = distributed.per_rank_batch(cfg.batch_size, "train_images.batch_size")
    state = build_state(cfg, n_classes, train.shape(), device)
    G, D, rng = state.G, state.D, state.rng
    ckpt_path, config = out_dir / gan.GAN_CHECKPOINT, to_dict(cfg)
    resumed = gan.resume(
        ckpt_path, state, stage=SECTION, arch=G.arch(), config=config,
        may_differ=MAY_DIFFER, seed=cfg.seed, restart=restart,
    )  # fmt: skip
    # DDP wrappers: forward through G_ddp / D_ddp only in the step that updates that network, so
    # DDP averages exactly the gradients an optimiser uses (the same modules as G, D when alone).
    G_ddp, D_ddp = distributed.wrap(G, proc), distributed.wrap(D, proc)
    shown = grid_pairs(val, train, cfg.grid_rows)
    live = open_live(live_dir or cfg.live_dir, resumed, proc.main)

    def snapshot(finished: bool) -> None:
        # The refresh is deterministic and local, so every rank runs it and the EMA stays
        # identical everywhere; rank 0 writes the checkpoint and draws the grid.
        refresh_rng = torch.Generator().manual_seed(cfg.seed)
        refresh_batch_norm(
            state.ema, train, cfg.bn_refresh_batches, cfg.batch_size, refresh_rng, cfg.bf16
        )
        gan.save(ckpt_path, state, main=proc.main, arch=G.arch(), config=config,
                 finished=finished, ignore_index=void, discriminator_arch=D.arch())  # fmt: skip
        if proc.main:
            png = gan.png_bytes(sample_grid(state.ema, shown, table, cfg.grid_seeds))
            gan.write_grid(out_dir, png, state.images_seen, live)

    policy = cfg.diffaug_policy if cfg.diffaug else ()

    def augmentation() -> Transform:
        """A DiffAugment draw for this rank's batch from its stream (the identity when off)."""
        return draw_augmentation(policy, batch, train.shape(), rng, device)

    schedule = gan.Schedule.of(cfg, stop_after_images)
    losses = gan.LossWindow("loss_g", "loss_d", "loss_labelmix")
    show = progress and proc.main
    bar = gan.progress_bar(cfg.total_images, state.images_seen, "train_images", show)
    t_start, start_seen = time.perf_counter(), state.images_seen
    while state.images_seen < schedule.stop:
        # A batch of real pairs, flipped at random: this rank's share of the global batch.
        real, mask = draw_batch(train, batch, cfg.flip, rng)
        real, mask = real.to(device).contiguous(memory_format=mem), mask.to(device)
        label = onehot(mask, n_classes, cl)
        z = torch.randn(batch, *G.noise_shape(), generator=rng).to(device) if cfg.z_dim else None

        # Generator step: make D (frozen, unwrapped) segment the fakes as the label map's
        # classes; with DiffAugment D sees them (and the label map) augmented, as in its step.
        aug = augmentation()
        with frozen(D):
            with autocast(device, cfg.bf16):
                fake = G_ddp(label, z)
                loss_g = generator_loss(D(aug.image(fake)), aug.labels(mask, void), void)
            state.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            state.opt_g.step()

        # Discriminator step: N+1 segmentation of real and fake, plus LabelMix consistency.
        # One DiffAugment draw moves real, fake and label map alike, and LabelMix mixes the
        # augmented pair: D(mix) stays comparable pixel by pixel with D(real) and D(fake).
        # Three forwards through D_ddp, one backward: DDP averages D's gradients once.
        with torch.no_grad(), autocast(device, cfg.bf16):
            fake = G(label, z)
        aug = augmentation()
        real_a, fake_a, mask_a = aug.image(real), aug.image(fake), aug.labels(mask, void)
        with autocast(device, cfg.bf16):
            logits_real, logits_fake = D_ddp(real_a), D_ddp(fake_a)
        loss_d = discriminator_loss(logits_real, logits_fake, mask_a, void, aug.valid)
        loss_lm = torch.zeros((), device=device)
        if cfg.labelmix_weight > 0:
            mixed, mix = labelmix(real_a, fake_a, mask_a, n_classes, rng, void)
            with autocast(device, cfg.bf16):
                logits_mixed = D_ddp(mixed.contiguous(memory_format=mem))
            loss_lm = labelmix_loss(logits_mixed, logits_real, logits_fake, mix, aug.valid)
        state.opt_d.zero_grad(set_to_none=True)
        (loss_d + cfg.labelmix_weight * loss_lm).backward()
        state.opt_d.step()

        # Progress in real images shown to D (global), the EMA of G (half-life ramped up),
        # curves, and checkpoints with sample grids on schedule.
        schedule.after_step(
            state, losses, live, bar, snapshot, loss_g=loss_g, loss_d=loss_d, loss_labelmix=loss_lm
        )
    bar.close()
    seconds = time.perf_counter() - t_start
    snapshot(finished=state.images_seen >= cfg.total_images)
    distributed.check_replicas_agree(model=G.state_dict(), ema=state.ema.state_dict(),
                                     discriminator=D.state_dict())  # fmt: skip
    if not proc.main:
        return {}  # rank 0 alone computes the FID and writes; the others are done
    metrics = {
        "images_seen": float(state.images_seen),
        "resumed_at_images": float(start_seen),
        "train_images_per_s": round((state.images_seen - start_seen) / max(seconds, 1e-9), 3),
        **{k: round(v, 5) for k, v in losses.last.items()},
        **fid_metrics(cfg, {"": state.ema, "_raw": G}, val, void, device, progress),
    }
    if "fid" in metrics:
        live.log_metric("fid", metrics["fid"], plot=False)
    live.end()
    write_metrics(metrics_path or cfg.metrics, metrics)
    return metrics


def fid_metrics(
    cfg: TrainImagesConfig,
    generators: dict[str, OASISGenerator],
    val: Pairs | None,
    ignore_index: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    """FID and KID on (up to `fid_images` of) the held-out pairs for each generator, keys
    suffixed by its name ("" for the EMA, "_raw" for G: is the EMA ahead at this budget?);
    {} when off. The real images' Inception features are computed once."""
    if cfg.fid_images == 0 or val is None or len(val.images) < 2:
        return {}
    from pipeline.metrics.fid import fid_kid_from_features, inception_features

    n = min(cfg.fid_images, len(val.images))
    real = inception_features(val.images[:n], 64, device, progress=progress)
    metrics = {"fid_images": float(n)}
    for suffix, generator in generators.items():
        fakes = synthesize(
            generator, val.masks[:n], seed=cfg.seed, batch_size=32, bf16=cfg.bf16,
            ignore_index=ignore_index,
        )[:, 0]  # fmt: skip
        fake = inception_features(fakes, 64, device, progress=progress)
        scores = fid_kid_from_features(real, fake)
        metrics |= {
            f"{k}{suffix}": round(v, 6 if k.startswith("kid") else 4) for k, v in scores.items()
        }
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="prepared dataset (default: train_images.data)")
    parser.add_argument("--out", help="output folder (default: train_images.out)")
    gan.add_arguments(parser)  # --quiet, --restart


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, TrainImagesConfig)
    metrics = train_images(cfg, args.data, args.out, progress=not args.quiet, restart=args.restart)
    if metrics:  # rank 0 (or alone)
        log.info("%d images, FID %s", metrics["images_seen"], metrics.get("fid", "n/a"))
    return metrics
