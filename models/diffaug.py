"""DiffAugment for a label-conditioned discriminator (Zhao et al. 2020, arXiv 2006.10738).

DiffAugment augments every image D sees, real and fake, in D's step and in G's step, with
transforms differentiable w.r.t. the image, so D cannot overfit a few hundred real images and G
still gets gradients. OASIS's D segments its input against a label map, so here one draw of the
geometric transforms per sample moves the image and its label map alike (labels by index, never
interpolated); pixels shifted in from outside or cut out become `ignore_index` in the label map
and False in `valid`, and no loss counts them (`models/oasis_losses.py`). Colour changes the
image only.

One `Transform` is drawn per step and applied to the real, fake and (through them) LabelMix images
of that step: LabelMix compares D(mix) with the mix of D(real) and D(fake) pixel by pixel, which
holds only if all three were moved the same way. All draws come from the caller's CPU
`torch.Generator`: a run is deterministic and resumes exactly. Images are [B, 3, H, W] in [-1, 1]
(0 = mid-grey, the fill); masks are long [B, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# DiffAugment's policies, applied in this order whatever order they are listed in
POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8  # shift by up to 1/8 of the size per axis (DiffAugment)
CUTOUT_RATIO = 1 / 2  # a square (rectangle on non-square images) of half the size


@dataclass(frozen=True)
class Transform:
    """One draw of DiffAugment parameters for a batch; an empty policy is the identity."""

    brightness: torch.Tensor | None = None  # [B, 1, 1, 1], added
    saturation: torch.Tensor | None = None  # [B, 1, 1, 1], scales the distance to the grey
    contrast: torch.Tensor | None = None  # [B, 1, 1, 1], scales the distance to the image mean
    source: torch.Tensor | None = None  # long [B, H, W]: flat index of the pixel each comes from
    valid: torch.Tensor | None = None  # bool [B, H, W]: False where shifted in or cut out

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """Colour, then the geometric transforms; shifted-in and cut-out pixels become 0."""
        if self.brightness is not None:
            x = x + self.brightness.to(x.dtype)
        if self.saturation is not None:
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * self.saturation.to(x.dtype) + grey
        if self.contrast is not None:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * self.contrast.to(x.dtype) + mean
        if self.valid is None:
            return x
        b, c, h, w = x.shape
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self.source is not None:
            idx = self.source.view(b, 1, h * w).expand(-1, c, -1)
            x = x.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)
        x = torch.where(self.valid[:, None], x, 0)
        # keep the caller's layout (channels-last where training uses it)
        return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)

    def labels(self, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """The same geometric transforms on the label map; pixels from nowhere are void."""
        if self.valid is None:
            return mask
        b, h, w = mask.shape
        if self.source is not None:
            mask = mask.reshape(b, h * w).gather(1, self.source.view(b, h * w)).view(b, h, w)
        return torch.where(self.valid, mask, ignore_index)


def draw_augmentation(
    policy: tuple[str, ...] | list[str],
    batch: int,
    size: tuple[int, int],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Transform:
    """Draw per-sample parameters of `policy` (a subset of POLICIES) from the CPU `generator`."""
    unknown = sorted(set(policy) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; valid: {', '.join(POLICIES)}")
    params: dict[str, torch.Tensor] = {}
    if "color" in policy:
        params.update(_draw_color(batch, generator))
    h, w = size
    source, valid = None, None
    if "translation" in policy:
        source, valid = _draw_translation(batch, h, w, generator)
    if "cutout" in policy:
        kept = _draw_cutout(batch, h, w, generator)
        valid = kept if valid is None else valid & kept
    if source is not None:
        params["source"] = source
    if valid is not None:
        params["valid"] = valid
    return Transform(**{k: v.to(device) for k, v in params.items()})


def _draw_color(batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """DiffAugment's ranges: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]."""
    r = torch.rand(3, batch, 1, 1, 1, generator=generator)
    return {"brightness": r[0] - 0.5, "saturation": r[1] * 2, "contrast": r[2] + 0.5}


def _draw_translation(
    batch: int, h: int, w: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer shifts in [-s, s] per axis, s = size / 8 rounded; (source index, valid) [B, H, W]."""
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = torch.randint(-sh, sh + 1, (batch, 1), generator=generator)
    dx = torch.randint(-sw, sw + 1, (batch, 1), generator=generator)
    ys, xs = torch.arange(h) - dy, torch.arange(w) - dx  # [B, H], [B, W]: where each comes from
    valid = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    source = ys.clamp(0, h - 1)[:, :, None] * w + xs.clamp(0, w - 1)[:, None, :]
    return source, valid


def _draw_cutout(batch: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Kept pixels [B, H, W]: False in a half-size box centred anywhere (clipped at the borders)."""
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (batch, 1), generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (batch, 1), generator=generator)
    y0, x0 = cy - ch // 2, cx - cw // 2
    ys, xs = torch.arange(h), torch.arange(w)
    rows = (ys >= y0) & (ys < y0 + ch)  # [B, H]
    cols = (xs >= x0) & (xs < x0 + cw)  # [B, W]
    return ~(rows[:, :, None] & cols[:, None, :])
