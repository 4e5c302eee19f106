"""Real training masks as layouts for `generate` (`generate.mask_source: real`, as FreeMask does).

Sample i takes real training mask `source_index(seed, i, n)`: the i-th item of an endless stream
of seeded permutations of the n real masks, so n_samples > n cycles through every mask before
repeating one. Its layout then varies a little: a random crop of `min_crop`..1 of each side (the
aspect kept), resized back with nearest neighbour (every value stays an original id or void),
and a horizontal flip with probability 1/2. All draws come from (seed, i) alone, so sample i is
the same whatever the shard layout, worker or batch that produces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import ConfigError
from pipeline.data import ShardIndex

_SOURCE_SALT, _LAYOUT_SALT = 0x5EA1, 0x1A70  # keep these streams apart from other seeded draws


@dataclass(frozen=True)
class RealMaskConfig:
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    min_crop: float = field(
        default=0.8,
        metadata={"help": "crop sides are min_crop..1 of the mask's (aspect kept); 1 = no crop"},
    )

    def __post_init__(self) -> None:
        if not 0 < self.min_crop <= 1:
            raise ConfigError(f"generate.real_masks.min_crop {self.min_crop} must be in (0, 1]")


def source_index(seed: int, index: int, n: int) -> int:
    """Which of the n real masks sample `index` starts from (a permutation per pass over them)."""
    epoch, pos = divmod(index, n)
    return int(np.random.default_rng([seed, _SOURCE_SALT, epoch]).permutation(n)[pos])


def vary_layout(
    mask: np.ndarray, seed: int, index: int, cfg: RealMaskConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop-and-resize (nearest) and flip of `mask` [H, W] drawn from (seed, index); returns the
    new mask and what was done (`crop`: [top, left, height, width], `flip`)."""
    rng = np.random.default_rng([seed, _LAYOUT_SALT, index])
    side, u_top, u_left, u_flip = rng.random(4)  # always four draws: settings never shift them
    h, w = mask.shape
    scale = cfg.min_crop + (1 - cfg.min_crop) * side
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1))
    # nearest neighbour: output pixel centre (i + 0.5) / h of the crop's height, floored
    rows = top + (2 * np.arange(h) + 1) * ch // (2 * h)
    cols = left + (2 * np.arange(w) + 1) * cw // (2 * w)
    flip = bool(cfg.flip and u_flip < 0.5)
    out = mask[np.ix_(rows, cols)]
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out), {"crop": [top, left, ch, cw], "flip": flip}


def draw_real_masks(
    source: ShardIndex, seed: int, indices: Sequence[int], cfg: RealMaskConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Masks uint8 [len(indices), H, W] of samples `indices`, and per sample its provenance:
    the real mask's position in the train split (`real_index`) and its `layout`."""
    picks = [source_index(seed, i, len(source)) for i in indices]
    masks, info = [], []
    for i, pick, real in zip(indices, picks, source.masks(picks), strict=True):
        mask, layout = vary_layout(real, seed, i, cfg)
        masks.append(mask)
        info.append({"real_index": pick, "layout": layout})
    return np.stack(masks), info
