"""Stage `train_images`: train the OASIS label-map → image generator on a prepared dataset.

Writes `data/images/` (checkpoint.pt with model / ema / discriminator / optimizer / step / config,
sample grids `samples/*.png` and `grid.png`: label | real | synthesised images for several seeds),
`metrics/train_images.json` (FID of the EMA generator on the held-out split, speed, final losses)
and DVCLive curves. A run resumes from `checkpoint.pt` in the output folder when its settings
match. The defaults fit the 64x64 `shapes` data in about 3 CPU minutes; for real data use e.g.
`--set train_images.preset=paper --set train_images.g_ch=64 --set train_images.d_ch=64
--set train_images.total_images=2000000` on a GPU (the paper's sizes).

Under `torchrun --nproc_per_node N` the same loop runs data-parallel: each rank draws its
batch_size / N share of every global batch from its own seeded stream, G and D are wrapped in DDP
for the steps that update them, G's batch norm takes its statistics over the global batch, and
rank 0 alone writes and computes the FID.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.oasis import PRESETS, OASISGenerator, UNetDiscriminator, preset_widths
from models.oasis_losses import discriminator_loss, generator_loss, labelmix, labelmix_loss
from pipeline import distributed
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import section, to_dict
from pipeline.device import autocast, use_channels_last
from pipeline.errors import ConfigError, DatasetError, SemsynthError
from pipeline.io_utils import atomic_write_bytes, write_metrics
from pipeline.shards import load_class_table, load_split

SECTION = "train_images"
IGNORE = 255


@dataclass(frozen=True)
class TrainImagesConfig:
    data: str = field(default="data/prepared", metadata={"help": "prepared dataset folder"})
    out: str = field(default="data/images", metadata={"help": "checkpoint and sample grids"})
    preset: str = field(
        default="small", metadata={"help": f"network widths: {' | '.join(PRESETS)}"}
    )
    g_ch: int = field(default=8, metadata={"help": "generator base width (paper: 64)"})
    d_ch: int = field(default=16, metadata={"help": "discriminator base width (paper: 64)"})
    spade_hidden: int = field(default=32, metadata={"help": "SPADE hidden width (paper: 128)"})
    z_dim: int = field(default=64, metadata={"help": "3D noise channels; 0 = no noise"})
    spatial_noise: bool = field(
        default=False, metadata={"help": "a z per pixel instead of one z per image"}
    )
    labelmix_weight: float = field(default=10.0, metadata={"help": "LabelMix weight; 0 = off"})
    batch_size: int = 16
    total_images: int = field(
        default=8000, metadata={"help": "training length, in real images shown to D"}
    )
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)
    ema_halflife_images: int = field(
        default=2000, metadata={"help": "EMA half-life in images (ramped up early on)"}
    )
    bn_refresh_batches: int = field(
        default=16, metadata={"help": "batches to re-estimate the EMA's BN stats before sampling"}
    )
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast + channels-last if fast"})
    log_every_images: int = 512
    sample_every_images: int = field(default=2000, metadata={"help": "sample grid interval"})
    checkpoint_every_images: int = 2000
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
        for key in ("z_dim", "labelmix_weight", "fid_images", "bn_refresh_batches"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train_images.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError("train_images.lr_g and lr_d must be > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train_images.betas must be in [0, 1), got {list(self.betas)}")


Config = TrainImagesConfig


# -----------------------------------------------------------------------------------------------
# tensors in, images out


def onehot(masks: torch.Tensor, num_classes: int, channels_last: bool = False) -> torch.Tensor:
    """uint8/long masks [B, H, W] → float one-hot [B, C, H, W]; void (255) pixels are all zero."""
    m = masks.long()
    out = F.one_hot(m.clamp(max=num_classes), num_classes + 1)[..., :num_classes]  # [B, H, W, C]
    out = out.permute(0, 3, 1, 2).float()  # [B, C, H, W]
    return out.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def check_masks(masks: np.ndarray, generator: OASISGenerator) -> None:
    if masks.ndim != 3 or masks.shape[1:] != (generator.height, generator.width):
        raise ValueError(
            f"masks must be [n, {generator.height}, {generator.width}] for this generator, got "
            f"{list(masks.shape)}; prepare the data at the generator's size"
        )
    bad = masks[(masks >= generator.num_classes) & (masks != IGNORE)]
    if bad.size:
        raise ValueError(
            f"mask value {int(bad[0])} is not a class id (0..{generator.num_classes - 1}) nor "
            f"void ({IGNORE}); the masks and the generator come from different class tables"
        )


def noise_seed(seed: int, index: int, copy: int) -> int:
    """Seed of the noise for (base seed, mask index, copy): independent of batching and sharding."""
    return int(np.random.SeedSequence([seed, index, copy]).generate_state(1, np.uint64)[0] >> 1)


def noise(generator: OASISGenerator, seed: int, index: int, copy: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(noise_seed(seed, index, copy))
    return torch.randn(generator.noise_shape(), generator=g)


@torch.no_grad()
def synthesize(
    generator: OASISGenerator,
    masks: np.ndarray,
    seed: int,
    n_per_mask: int = 1,
    batch_size: int = 16,
    start: int = 0,
    bf16: bool = True,
) -> np.ndarray:
    """uint8 masks [n, H, W] → uint8 images [n, n_per_mask, H, W, 3], deterministic per seed.

    Image (i, j) uses noise seeded by (seed, start + i, j) only, so it does not depend on the batch
    size or on how a run is split into shards. Void pixels get an all-zero one-hot vector.
    """
    check_masks(masks, generator)
    device = next(generator.parameters()).device
    cl = _synth_channels_last(device, bf16)
    n = len(masks)
    out = np.empty((n, n_per_mask, generator.height, generator.width, 3), dtype=np.uint8)
    pairs = [(i, j) for i in range(n) for j in range(n_per_mask)]
    was_training = generator.training
    generator.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        idx = torch.tensor([i for i, _ in chunk])
        m = torch.from_numpy(masks)[idx].to(device)
        z = None
        if generator.z_dim:
            z = torch.stack([noise(generator, seed, start + i, j) for i, j in chunk]).to(device)
        with autocast(device, bf16):
            img = generator(onehot(m, generator.num_classes, cl), z)
        out[idx.numpy(), [j for _, j in chunk]] = to_uint8(img)
    generator.train(was_training)
    return out


def _synth_channels_last(device: torch.device, bf16: bool = True) -> bool:
    """Layout for synthesis: channels-last wherever training uses it, and also for fp32 inference
    on CPU (~19% faster there, bench.images; fp32 training is faster in NCHW)."""
    return use_channels_last(device, bf16) or device.type == "cpu"


def load_image_generator(path: str | Path, device: torch.device | str = "cpu") -> OASISGenerator:
    """The EMA generator of a `train_images` checkpoint, in eval mode, on `device`."""
    ckpt = load_checkpoint(path)
    if "arch" not in ckpt or "ema" not in ckpt:
        raise SemsynthError(f"{path} is not a train_images checkpoint (no 'arch'/'ema' entries)")
    device = torch.device(device)
    generator = OASISGenerator(**ckpt["arch"])
    generator.load_state_dict(ckpt["ema"])
    generator.to(device).eval()
    if _synth_channels_last(device):  # the layout synthesize() feeds it
        generator.to(memory_format=torch.channels_last)
    return generator


@torch.no_grad()
def refresh_batch_norm(
    generator: OASISGenerator,
    masks: torch.Tensor,
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
        with autocast(device, bf16):
            generator(onehot(masks[idx].to(device), generator.num_classes, channels_last), z)

    distributed.recompute_batch_norm(generator, forward, batches)


def grid_indices(n: int, rows: int) -> np.ndarray:
    """`rows` indices spread evenly over n samples: splits cut from videos (CamVid's val is one
    sequence) hold runs of near-identical frames, so the first rows would show one scene."""
    return np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))


def sample_grid(
    generator: OASISGenerator, masks: np.ndarray, images: np.ndarray, colors: np.ndarray, seeds: int
) -> Image.Image:
    """Rows of: colourised label | real image | `seeds` synthesised images (seeds 0..k-1)."""
    rows = []
    fakes = synthesize(generator, masks, seed=0, n_per_mask=seeds)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = colors
    for m, real, fake in zip(masks, images, fakes, strict=True):
        tiles = [lut[m], real, *fake]
        rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0))) for t in tiles], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -----------------------------------------------------------------------------------------------
# the stage


def train_images(
    cfg: TrainImagesConfig,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    metrics_path: str | Path | None = None,
    live_dir: str | Path | None = None,
) -> dict[str, float]:
    """Train OASIS on `data_dir`'s train split; FID of the EMA generator on its val split.

    Under torchrun: `cfg.batch_size` stays the global batch (each rank trains on its share),
    image counts are global, and ranks > 0 return {} (rank 0 computes the FID and writes).
    """
    data_dir = Path(data_dir or cfg.data)
    out_dir = Path(out_dir or cfg.out)
    table = load_class_table(data_dir)
    images_np, masks_np, _ = load_split(data_dir, "train")
    if images_np is None:
        raise DatasetError(f"{data_dir}/train has masks only; train_images needs image/mask pairs")
    val_images, val_masks, _ = (
        load_split(data_dir, "val") if "val" in _splits(data_dir) else (None, None, None)
    )
    n_classes, (h, w) = table.num_classes, masks_np.shape[1:]
    proc = distributed.init(cfg.device)
    device = proc.device
    batch = distributed.per_rank_batch(cfg.batch_size, "train_images.batch_size")
    cl = use_channels_last(device, cfg.bf16)
    mem = torch.channels_last if cl else torch.contiguous_format

    # Networks and optimisers; initial weights drawn from a private RNG (no global randomness).
    g_widths, d_widths = preset_widths(cfg.preset, cfg.g_ch, cfg.d_ch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            G = OASISGenerator(
                n_classes, h, w, g_widths, cfg.z_dim, cfg.spade_hidden, cfg.spatial_noise
            )
            D = UNetDiscriminator(n_classes, d_widths)
            if h % 2 ** len(d_widths) or w % 2 ** len(d_widths):
                raise ValueError(
                    f"image size must be divisible by 2^{len(d_widths)} for "
                    f"{len(d_widths)} discriminator levels; change the size or the preset"
                )
        except ValueError as e:
            raise ConfigError(f"train_images: {e} (data {data_dir} is {h}x{w})") from None
    G.to(device, memory_format=mem).train()
    D.to(device, memory_format=mem).train()
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Under torchrun G's (parameter-free) batch norm normalises over the global batch, as OASIS
    # trains with synchronised BN: G is then the same function as alone whatever the number of
    # processes, and its running stats, copied into the EMA, agree on every rank. The EMA keeps
    # plain BN: it is only refreshed and sampled locally.
    G = distributed.sync_batch_norm(G)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
    # One CPU generator per rank draws batches, flips, noise and LabelMix coins; rank 0's stream
    # is the one a run alone draws. All streams are checkpointed.
    rng = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))
    images_seen = 0

    # Resume when the checkpoint was written by the same training settings (length, logging and
    # evaluation settings may differ).
    ckpt_path = out_dir / "checkpoint.pt"
    run_config = to_dict(cfg)
    same = lambda c: {k: v for k, v in c.items() if k not in _NOT_TRAINING}  # noqa: E731
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        if same(ckpt.get("config", {})) == same(run_config) and "optimizer" in ckpt:
            G.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            D.load_state_dict(ckpt["discriminator"])
            opt_g.load_state_dict(ckpt["optimizer"]["g"])
            opt_d.load_state_dict(ckpt["optimizer"]["d"])
            images_seen = int(ckpt["images_seen"])
            exact = distributed.set_rng_state(rng, ckpt["rng"], cfg.seed, images_seen)
            if proc.main:
                note = "" if exact else " (another number of processes: fresh random streams)"
                print(f"train_images: resuming from {ckpt_path} at {images_seen} images{note}")

    # DDP wrappers: forward through G_ddp / D_ddp only in the step that updates that network, so
    # DDP averages exactly the gradients an optimiser uses (the same modules as G, D when alone).
    G_ddp, D_ddp = distributed.wrap(G, proc), distributed.wrap(D, proc)

    real_all = (
        torch.from_numpy(images_np).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    )  # [N,3,H,W]
    masks_all = torch.from_numpy(masks_np)
    grid_source = (val_images, val_masks) if val_masks is not None else (images_np, masks_np)
    grid_idx = grid_indices(len(grid_source[1]), cfg.grid_rows)
    grid_real, grid_masks = grid_source[0][grid_idx], grid_source[1][grid_idx]

    from dvclive import Live

    live = None
    if proc.main:  # rank 0 alone writes curves, grids and checkpoints
        live = Live(
            dir=str(live_dir or cfg.live_dir),
            resume=images_seen > 0,
            save_dvc_exp=False,
            dvcyaml=None,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "samples").mkdir(exist_ok=True)

    def save(final: bool) -> None:
        rng_states = distributed.rng_state(rng)  # every rank's stream: all ranks call this
        if not proc.main:
            return
        state = {
            "model": G.state_dict(),
            "ema": ema.state_dict(),
            "discriminator": D.state_dict(),
            "optimizer": {"g": opt_g.state_dict(), "d": opt_d.state_dict()},
            "step": images_seen // cfg.batch_size,
            "images_seen": images_seen,
            "rng": rng_states,
            "arch": G.arch(),
            "config": run_config,
        }
        save_checkpoint(ckpt_path, state)

    def snapshot(name: str) -> None:
        # The refresh is deterministic and local, so every rank runs it and the EMA stays
        # identical everywhere; rank 0 draws and writes the grid.
        refresh_batch_norm(
            ema,
            masks_all,
            cfg.bn_refresh_batches,
            cfg.batch_size,
            torch.Generator().manual_seed(cfg.seed),
            cfg.bf16,
        )
        if not proc.main:
            return
        grid = sample_grid(ema, grid_masks, grid_real, table.colors, cfg.grid_seeds)
        atomic_write_bytes(out_dir / "samples" / f"{name}.png", _png_bytes(grid))
        live.log_image("grid.png", grid)

    sums = {"loss_g": 0.0, "loss_d": 0.0, "loss_labelmix": 0.0}
    last = dict(sums)
    window, t_start, start_seen = 0, time.perf_counter(), images_seen
    bar = tqdm(
        total=cfg.total_images,
        initial=images_seen,
        unit="img",
        desc="train_images",
        disable=not progress or not proc.main,
    )
    while images_seen < cfg.total_images:
        # A batch of real pairs, flipped at random: this rank's share of the global batch.
        idx = torch.randint(len(masks_all), (batch,), generator=rng)
        real, mask = real_all[idx], masks_all[idx].long()
        if cfg.flip:
            flip = torch.rand(batch, generator=rng) < 0.5
            real[flip], mask[flip] = real[flip].flip(-1), mask[flip].flip(-1)
        real = real.to(device).contiguous(memory_format=mem)
        mask = mask.to(device)
        label = onehot(mask, n_classes, cl)
        z = torch.randn(batch, *G.noise_shape(), generator=rng).to(device) if cfg.z_dim else None

        # Generator step: make D (frozen, unwrapped) segment the fakes as the label map's classes.
        D.requires_grad_(False)
        with autocast(device, cfg.bf16):
            fake = G_ddp(label, z)
            loss_g = generator_loss(D(fake), mask, IGNORE)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)

        # Discriminator step: N+1 segmentation of real and fake, plus LabelMix consistency.
        # Three forwards through D_ddp, one backward: DDP averages D's gradients once.
        with torch.no_grad(), autocast(device, cfg.bf16):
            fake = G(label, z)
        with autocast(device, cfg.bf16):
            logits_real, logits_fake = D_ddp(real), D_ddp(fake)
        loss_d = discriminator_loss(logits_real, logits_fake, mask, IGNORE)
        loss_lm = torch.zeros((), device=device)
        if cfg.labelmix_weight > 0:
            mixed, mix = labelmix(real, fake, mask, n_classes, rng, IGNORE)
            with autocast(device, cfg.bf16):
                logits_mixed = D_ddp(mixed.contiguous(memory_format=mem))
            loss_lm = labelmix_loss(logits_mixed, logits_real, logits_fake, mix)
        opt_d.zero_grad(set_to_none=True)
        (loss_d + cfg.labelmix_weight * loss_lm).backward()
        opt_d.step()

        # EMA of the generator weights as a lerp; half-life ramped up over the first images (EDM).
        # G's weights and buffers agree on every rank after the step, so the EMA does too.
        images_seen += cfg.batch_size
        halflife = min(cfg.ema_halflife_images, images_seen * 0.1)
        beta = 0.5 ** (cfg.batch_size / max(halflife, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), G.parameters(), strict=True):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(ema.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)

        # Bookkeeping: curves, sample grids, checkpoints.
        bar.update(cfg.batch_size)
        for k, v in (("loss_g", loss_g), ("loss_d", loss_d), ("loss_labelmix", loss_lm)):
            sums[k] += float(v.detach())
        window += 1
        if (
            _crossed(images_seen, cfg.batch_size, cfg.log_every_images)
            or images_seen >= cfg.total_images
        ):
            # Window means of each rank, averaged over ranks (the same numbers everywhere).
            last = distributed.all_reduce_mean({k: v / window for k, v in sums.items()})
            if proc.main:
                live.step = images_seen  # curves against images seen
                for k, v in last.items():
                    live.log_metric(f"train/{k}", v)
                live.next_step()
            sums, window = dict.fromkeys(sums, 0.0), 0
            bar.set_postfix(g=f"{last['loss_g']:.3f}", d=f"{last['loss_d']:.3f}")
        if _crossed(images_seen, cfg.batch_size, cfg.sample_every_images):
            snapshot(f"grid_{images_seen:08d}")
        if _crossed(images_seen, cfg.batch_size, cfg.checkpoint_every_images):
            save(final=False)
    bar.close()
    seconds = time.perf_counter() - t_start
    speed = (images_seen - start_seen) / seconds if images_seen > start_seen else 0.0

    # Final EMA generator: BN stats refreshed, checkpoint, grid, FID on the held-out split.
    snapshot("final")
    save(final=True)
    distributed.dump_rank_state(
        model=G.state_dict(), ema=ema.state_dict(), discriminator=D.state_dict()
    )
    if not proc.main:
        return {}  # rank 0 alone computes the FID and writes; the others are done
    grid_png = (out_dir / "samples" / "final.png").read_bytes()
    atomic_write_bytes(out_dir / "grid.png", grid_png)
    metrics = {
        "images_seen": float(images_seen),
        "resumed_at_images": float(start_seen),
        "train_images_per_s": round(speed, 3),
        **{k: round(v, 5) for k, v in last.items()},
    }
    if cfg.fid_images > 0 and val_images is not None and len(val_images) >= 2:
        from pipeline.metrics.fid import fid

        n = min(cfg.fid_images, len(val_images))
        fakes = synthesize(ema, val_masks[:n], seed=cfg.seed, batch_size=32, bf16=cfg.bf16)[:, 0]
        metrics["fid"] = round(fid(val_images[:n], fakes, device=device, progress=progress), 4)
        metrics["fid_images"] = float(n)
        live.log_metric("fid", metrics["fid"], plot=False)
    live.end()
    write_metrics(metrics_path or cfg.metrics, metrics)
    return metrics


_NOT_TRAINING = {
    "total_images",
    "log_every_images",
    "sample_every_images",
    "checkpoint_every_images",
    "fid_images",
    "grid_rows",
    "grid_seeds",
    "metrics",
    "live_dir",
    "out",
    "device",
}


def _crossed(seen: int, batch: int, every: int) -> bool:
    """True when the last batch crossed a multiple of `every` images (0 = never)."""
    return every > 0 and seen // every != (seen - batch) // every


def _splits(root: Path) -> list[str]:
    from pipeline.shards import splits

    return splits(root)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="prepared dataset (default: train_images.data)")
    parser.add_argument("--out", help="output folder (default: train_images.out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli(params: dict, args: argparse.Namespace) -> dict[str, float]:
    cfg = section(params, SECTION, TrainImagesConfig)
    metrics = train_images(cfg, args.data, args.out, progress=not args.quiet)
    if metrics:  # rank 0 (or alone)
        print(
            f"train_images: {int(metrics['images_seen'])} images, FID {metrics.get('fid', 'n/a')}"
        )
    return metrics
