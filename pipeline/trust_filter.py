"""Trust filtering of synthetic pairs (FreeMask, Yang et al., NeurIPS 2023).

A segmenter trained on the real labels reads every synthetic image; where it strongly disagrees
with the synthetic label, the image generator most likely did not draw that class there, and
training on the pixel would teach the wrong thing. Per pixel: the cross-entropy of the
segmenter's prediction on the synthetic image against the synthetic label. Per class c: the
threshold t_c = tolerance x (mean loss over all synthetic pixels labelled c). A pixel labelled c
whose loss exceeds t_c becomes void (`ignore_index`); a threshold per class keeps hard classes
(thin poles, small objects, whose loss is high everywhere) from being wiped out. Optionally the
`drop_fraction` of images with the highest mean per-pixel loss are left out whole.

FreeMask's released filter (preprocess/filter.py, margin 1.25) takes the class means over the
real training images instead; here they come from the synthetic pixels themselves (issue #18):
the real-only segmenter has fit its own training images, so their losses would set a far lower
bar, and the filter would then void whatever the generator draws less cleanly than a real photo.

Memory stays flat in the pool size: pass 1 sums the losses per class and per image, pass 2
recomputes the losses of the kept images and keeps only a bit per pixel (rejected or not).
Both passes run the model in eval mode, fp32, in fixed batches, so the result is a pure
function of (model, pool, tolerance, drop_fraction) and can be cached and recomputed alike.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.io_utils import atomic_write_bytes

SCORE_BATCH = 32  # fixed: the losses must not depend on a training batch size


class Pairs(Protocol):
    def __len__(self) -> int: ...
    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class TrustResult:
    """Which pool positions are kept, their rejected pixels (packed bits, one row per kept
    image), the per-class thresholds and the per-class pixel counts of the kept images."""

    keep: np.ndarray  # int64 [K] positions in the scored pool
    reject: np.ndarray  # uint8 [K, ceil(H*W / 8)], np.packbits of the rejected-pixel map
    shape: tuple[int, int]  # (H, W)
    thresholds: np.ndarray  # float64 [C]; inf for classes absent from the pool
    class_pixels: np.ndarray  # int64 [C] pixels labelled c in the kept images
    class_rejected: np.ndarray  # int64 [C] of those, turned void
    pool: int  # images scored


# ---- the rule, on given losses ----------------------------------------------------------------


def class_loss_sums(
    losses: np.ndarray, masks: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the losses, pixel count) per class over labelled pixels; void pixels left out."""
    valid = masks < num_classes
    ids = masks[valid].astype(np.int64)
    sums = np.bincount(ids, weights=losses[valid].astype(np.float64), minlength=num_classes)
    return sums[:num_classes], np.bincount(ids, minlength=num_classes)[:num_classes]


def class_thresholds(sums: np.ndarray, counts: np.ndarray, tolerance: float) -> np.ndarray:
    """tolerance x mean loss of each class; inf for a class with no pixels (never rejects)."""
    mean = np.divide(sums, counts, out=np.full(len(sums), np.inf), where=counts > 0)
    return tolerance * mean


def rejected_pixels(losses: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """bool [N, H, W]: labelled pixels whose loss exceeds their class's threshold."""
    num_classes = len(thresholds)
    valid = masks < num_classes
    limit = np.where(valid, thresholds[np.minimum(masks, num_classes - 1)], np.inf)
    return valid & (losses > limit)


def image_mean_losses(losses: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean loss over each image's labelled pixels, float64 [N] (0 for an all-void label)."""
    valid = masks < num_classes
    total = np.where(valid, losses, 0).reshape(len(masks), -1).sum(1, dtype=np.float64)
    return total / np.maximum(valid.reshape(len(masks), -1).sum(1), 1)


def dropped_images(mean_losses: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted positions of the round(fraction x N) least consistent images (highest mean loss;
    ties go to the later position, so the choice is deterministic). At least one image stays."""
    n = len(mean_losses)
    k = max(0, min(round(fraction * n), n - 1))
    order = np.lexsort((-np.arange(n), -mean_losses))  # by loss descending, then later first
    return np.sort(order[:k])


# ---- scoring a pool with a model --------------------------------------------------------------


@torch.no_grad()
def pixel_losses(
    model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, ignore_index: int
) -> np.ndarray:
    """Per-pixel cross-entropy, float32 [N, H, W], of the model's fp32 prediction on uint8
    images [N, H, W, 3] against masks [N, H, W]; 0 on void pixels (any id >= C)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    logits = model(x).float()  # [N, C, H, W]
    y = torch.from_numpy(masks).to(device).long()
    y = torch.where(y < logits.shape[1], y, torch.full_like(y, ignore_index))
    loss = F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="none")
    return loss.cpu().numpy()


def _batches(positions: np.ndarray) -> list[np.ndarray]:
    return [positions[i : i + SCORE_BATCH] for i in range(0, len(positions), SCORE_BATCH)]


def score_pool(
    model: torch.nn.Module,
    pairs: Pairs,
    num_classes: int,
    ignore_index: int,
    tolerance: float,
    drop_fraction: float,
    progress: bool = False,
) -> TrustResult:
    """Apply the rule to every pair of `pairs` with `model` (two passes; see the module doc)."""
    was_training = model.training
    model.eval()
    n = len(pairs)
    sums, counts, means = np.zeros(num_classes), np.zeros(num_classes, np.int64), np.zeros(n)
    bar = tqdm(total=2 * n, desc="trust filter", disable=not progress, leave=False)
    for pos in _batches(np.arange(n)):  # pass 1: class means, image means
        images, masks = pairs.get(pos)
        losses = pixel_losses(model, images, masks, ignore_index)
        s, c = class_loss_sums(losses, masks, num_classes)
        sums, counts = sums + s, counts + c
        means[pos] = image_mean_losses(losses, masks, num_classes)
        bar.update(len(pos))
    thresholds = class_thresholds(sums, counts, tolerance)
    keep = np.setdiff1d(np.arange(n), dropped_images(means, drop_fraction))
    reject, pixels, rejected, shape = [], np.zeros_like(counts), np.zeros_like(counts), (0, 0)
    for pos in _batches(keep):  # pass 2: the rejected pixels of the kept images
        images, masks = pairs.get(pos)
        rej = rejected_pixels(pixel_losses(model, images, masks, ignore_index), masks, thresholds)
        shape = masks.shape[1:]
        reject.append(np.packbits(rej.reshape(len(pos), -1), axis=1))
        pixels += np.bincount(masks[masks < num_classes], minlength=num_classes)[:num_classes]
        rejected += np.bincount(masks[rej], minlength=num_classes)[:num_classes]
        bar.update(len(pos))
    bar.close()
    model.train(was_training)
    return TrustResult(
        keep, np.concatenate(reject), shape, thresholds, pixels, rejected, pool=n
    )  # fmt: skip


class TrustedPairs:
    """The kept pairs of a scored pool, their rejected pixels void on every read (the
    `IndexedPairs` interface: `len`, `get(positions)`)."""

    def __init__(self, pairs: Pairs, result: TrustResult, ignore_index: int):
        self.pairs, self.result, self.ignore_index = pairs, result, ignore_index
        rows = getattr(pairs, "rows", None)
        self.rows = None if rows is None else np.asarray(rows)[result.keep]

    def __len__(self) -> int:
        return len(self.result.keep)

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [n, H, W, 3] and masks [n, H, W] (rejected pixels void) at `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        images, masks = self.pairs.get(self.result.keep[idx])
        h, w = self.result.shape
        bits = np.unpackbits(self.result.reject[idx], axis=1, count=h * w).astype(bool)
        masks = masks.copy()
        masks[bits.reshape(len(idx), h, w)] = self.ignore_index
        return images, masks


def trust_metrics(result: TrustResult, names: list[str]) -> dict[str, float]:
    """Flat `trust_*` statistics: images scored and dropped, the share of labelled pixels of
    the kept images turned void, overall and per class, and each class's loss threshold."""
    total = int(result.class_pixels.sum())
    out = {
        "trust_pool_images": float(result.pool),
        "trust_dropped_images": float(result.pool - len(result.keep)),
        "trust_ignored_share": float(result.class_rejected.sum() / max(total, 1)),
    }
    for c, name in enumerate(names):
        if result.class_pixels[c]:
            out[f"trust_ignored_share_{name}"] = float(
                result.class_rejected[c] / result.class_pixels[c]
            )
        if np.isfinite(result.thresholds[c]):
            out[f"trust_threshold_{name}"] = float(result.thresholds[c])
    return out


# ---- cache: the result beside the run, valid while its inputs are the same -------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(**inputs: object) -> str:
    """A short hash of what a result depends on (JSON-able values)."""
    blob = json.dumps(inputs, sort_keys=True, default=lambda v: np.asarray(v).tolist())
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_result(path: str | Path, result: TrustResult, fp: str) -> None:
    """Write `result` with its fingerprint as one compressed .npz, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf, keep=result.keep, reject=result.reject, shape=np.asarray(result.shape),
        thresholds=result.thresholds, class_pixels=result.class_pixels,
        class_rejected=result.class_rejected, pool=np.asarray(result.pool),
        fingerprint=np.asarray(fp),
    )  # fmt: skip
    atomic_write_bytes(path, buf.getvalue())


def load_result(path: str | Path, fp: str) -> TrustResult | None:
    """The cached result when `path` holds one with fingerprint `fp`, else None."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["fingerprint"]) != fp:
            return None
        return TrustResult(
            z["keep"], z["reject"], tuple(int(v) for v in z["shape"]), z["thresholds"],
            z["class_pixels"], z["class_rejected"], pool=int(z["pool"]),
        )  # fmt: skip
