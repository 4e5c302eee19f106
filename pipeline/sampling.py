"""Sampling: checkpoint → model loaders and the seeded samplers that `generate` and `evaluate` use.

Training stages write checkpoints; this module reads them, so inference does not depend on the
training loops (editing a loop cannot break generation, and `dvc.yaml` reruns `generate` only when
the sampling code or a checkpoint changes). Three families, each deterministic:

- masks (SemGAN): sample i's latent depends on (seed, i) only, whatever the batching;
- images (OASIS): image (i, j) uses noise seeded by (seed, i, j) only;
- segmenter predictions: argmax class ids of a trained run's `model.pt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.oasis import OASISGenerator
from models.semgan import MaskGenerator
from pipeline.checkpoint import load_checkpoint
from pipeline.device import autocast, channels_last_or_cpu
from pipeline.errors import SemsynthError

# The checkpoint file both GAN stages write in their output folder.
GAN_CHECKPOINT = "checkpoint.pt"
DEFAULT_IGNORE_INDEX = 255


def _gan_checkpoint(path: str | Path, stage: str) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if "arch" not in ckpt or "ema" not in ckpt:
        raise SemsynthError(f"{path} is not a {stage} checkpoint (no 'arch' / 'ema' entries)")
    return ckpt


# -----------------------------------------------------------------------------------------------
# masks (SemGAN)


def build_mask_generator(arch: dict[str, Any]) -> MaskGenerator:
    """A SemGAN generator from the `arch` entry of a train_masks checkpoint."""
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


def load_mask_generator(path: str | Path, device: torch.device | str = "cpu") -> MaskGenerator:
    """The EMA generator of a train_masks checkpoint (weights-only load), in eval mode."""
    ckpt = _gan_checkpoint(path, "train_masks")
    g = build_mask_generator(ckpt["arch"])
    g.load_state_dict(ckpt["ema"])
    return g.to(device).eval().requires_grad_(False)


def latent(seed: int, index: int, dim: int) -> torch.Tensor:
    """Latent of sample `index`: depends on (seed, index) only, never on batching."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))
    return torch.randn(dim, generator=g)


@torch.no_grad()
def sample_masks_and_distance(
    generator: MaskGenerator,
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
    generator: MaskGenerator,
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


# -----------------------------------------------------------------------------------------------
# images (OASIS)


def onehot(masks: torch.Tensor, num_classes: int, channels_last: bool = False) -> torch.Tensor:
    """uint8/long masks [B, H, W] → float one-hot [B, C, H, W]; void pixels (any id >= C) are
    all zero."""
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


def check_masks(masks: np.ndarray, generator: OASISGenerator, ignore_index: int) -> None:
    """Masks must be [n, H, W] at the generator's size, holding class ids or `ignore_index`."""
    if masks.ndim != 3 or masks.shape[1:] != (generator.height, generator.width):
        raise ValueError(
            f"masks must be [n, {generator.height}, {generator.width}] for this generator, got "
            f"{list(masks.shape)}; prepare the data at the generator's size"
        )
    bad = masks[(masks >= generator.num_classes) & (masks != ignore_index)]
    if bad.size:
        raise ValueError(
            f"mask value {int(bad[0])} is not a class id (0..{generator.num_classes - 1}) nor "
            f"void ({ignore_index}); the masks and the generator come from different class tables"
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
    ignore_index: int | None = None,
) -> np.ndarray:
    """uint8 masks [n, H, W] → uint8 images [n, n_per_mask, H, W, 3], deterministic per seed.

    Image (i, j) uses noise seeded by (seed, start + i, j) only, so it does not depend on the batch
    size or on how a run is split into shards. Void pixels (`ignore_index`; by default the one of
    the generator's class table) get an all-zero one-hot vector.
    """
    if ignore_index is None:
        ignore_index = getattr(generator, "ignore_index", DEFAULT_IGNORE_INDEX)
    check_masks(masks, generator, ignore_index)
    device = next(generator.parameters()).device
    cl = channels_last_or_cpu(device, bf16)
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


def load_image_generator(path: str | Path, device: torch.device | str = "cpu") -> OASISGenerator:
    """The EMA generator of a `train_images` checkpoint, in eval mode, on `device`; its
    `ignore_index` is the void id of the class table it was trained with."""
    ckpt = _gan_checkpoint(path, "train_images")
    device = torch.device(device)
    generator = OASISGenerator(**ckpt["arch"])
    generator.load_state_dict(ckpt["ema"])
    generator.ignore_index = int(ckpt.get("ignore_index", DEFAULT_IGNORE_INDEX))
    generator.to(device).eval()
    if channels_last_or_cpu(device):  # the layout synthesize() feeds it
        generator.to(memory_format=torch.channels_last)
    return generator
