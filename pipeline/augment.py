"""Training augmentation that keeps masks exact: flip, scale-crop, colour jitter (images only).

Geometry is one affine sampling grid per sample, shared by image and mask: the image is sampled
bilinearly, the mask with nearest neighbour, so every mask value is an original id (or void where
a zoom-out uncovers padding). Colour jitter never touches the mask. All randomness comes from the
caller's `torch.Generator`, so a batch is a pure function of (data, generator state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    scale: tuple[float, float] = field(
        default=(0.75, 1.5),
        metadata={"help": "zoom range [min, max] of the scale-crop; [1, 1] disables it"},
    )
    brightness: float = field(default=0.2, metadata={"help": "±factor range; 0 disables"})
    contrast: float = field(default=0.2, metadata={"help": "±factor range; 0 disables"})
    saturation: float = field(default=0.2, metadata={"help": "±factor range; 0 disables"})

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(
                f"train_segmenter.augment.scale {list(self.scale)} must be 0 < min <= max"
            )
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train_segmenter.augment.{name} must be in [0, 1)")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def geometric(
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip and scale-crop with one grid per sample. images [N,3,H,W] float, masks [N,H,W] int."""
    n = images.shape[0]
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if not cfg.hflip:
        flip = torch.ones(n)
    # zoom uniformly in log scale so zoom-in and zoom-out are equally likely around 1
    lo, hi = torch.tensor(cfg.scale).log().tolist()
    s = _uniform(n, lo, hi, generator).exp()
    # shift so the crop stays inside the image (zoom-in) or the image inside the view (zoom-out)
    reach = (1 - 1 / s).abs()
    tx, ty = (_uniform(n, -1, 1, generator) * reach), (_uniform(n, -1, 1, generator) * reach)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = flip / s, 1 / s
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [N, H, W, 2]
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # shift ids by one so zero padding marks uncovered pixels, which become void
    m = (masks.long() + 1).unsqueeze(1).to(images.dtype)  # [N, 1, H, W]
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = m.squeeze(1).round().long() - 1
    masks = torch.where(m < 0, torch.full_like(m, ignore_index), m)
    return images, masks


def colour_jitter(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Brightness, contrast and saturation factors per sample; images [N,3,H,W] in [0, 1]."""
    n = images.shape[0]
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator).view(n, 1, 1, 1)
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator).view(n, 1, 1, 1)
    sat = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator).view(n, 1, 1, 1)
    b, c, sat = (t.to(images.device, images.dtype) for t in (b, c, sat))
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    x = images * b
    gray = (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)  # [N, 1, H, W]
    x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
    gray = (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - gray) * sat + gray
    return x.clamp(0, 1)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometry on both, colour on images only. images float [N,3,H,W] in [0,1], masks [N,H,W]."""
    images, masks = geometric(images, masks, cfg, generator, ignore_index)
    return colour_jitter(images, cfg, generator), masks
