"""Metrics of generated label maps against real ones.

- `spurious_pixel_rate`: pixel exactness; share of pixels in tiny connected components.
- `off_palette_rate`: for colour-coded maps, share of pixels far from every class colour.
- `class_histogram`, `js_divergence`, `class_presence`: does the generator draw classes as often
  and as large as the data does?
- `sliced_wasserstein`: SWD on Laplacian-pyramid patches (Karras et al. 2018, appendix D).
- `ms_ssim`: multi-scale SSIM (Wang et al. 2003) between pairs of samples; lower = more diverse.
- `mask_quality`: all of the above (and FID of colourised maps) in one flat dict.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.classes import ClassTable

# -----------------------------------------------------------------------------------------------
# pixel exactness


def _check_masks(masks: np.ndarray, name: str = "masks") -> np.ndarray:
    masks = np.asarray(masks)
    if masks.dtype != np.uint8 or masks.ndim != 3:
        raise ValueError(f"{name}: expected uint8 [N, H, W], got {masks.dtype} {list(masks.shape)}")
    return masks


def spurious_pixel_rate(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Per mask, the fraction of pixels in 4-connected same-class components of < min_size pixels.

    4-connectivity (edge neighbours only): a diagonal chain of single pixels counts as spurious,
    which is what a downstream segmenter would see as noise. Every value (void included) forms
    its own components. Returns float64 [N].
    """
    masks = _check_masks(masks)
    n = len(masks)
    if n == 0:
        return np.zeros(0)
    if min_size <= 1:
        return np.zeros(n)
    # Label all masks at once: the structure connects pixels within a slice, never across masks.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    spurious = np.zeros(n, dtype=np.int64)
    for value in np.unique(masks):
        labels, count = ndimage.label(masks == value, structure=structure)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small = sizes < min_size
        small[0] = False  # background of this class's binary map
        hit = small[labels]  # [N, H, W] pixels in small components
        spurious += hit.reshape(n, -1).sum(1)
    return spurious / float(masks[0].size)


def off_palette_rate(distance: np.ndarray, threshold: float) -> np.ndarray:
    """Per map, the fraction of pixels whose colour was > threshold (0..255 RGB units) from the
    nearest class colour before quantisation. `distance` [N, H, W] → float64 [N]."""
    d = np.asarray(distance, dtype=np.float64)
    return (d > threshold).reshape(len(d), -1).mean(1)


# -----------------------------------------------------------------------------------------------
# class statistics


def class_histogram(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel share of each class (values >= num_classes, i.e. void, are left out). float64 [C]."""
    counts = np.bincount(_check_masks(masks).ravel(), minlength=256)[:num_classes]
    total = counts.sum()
    return counts / total if total else np.zeros(num_classes)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint supports)."""
    p = np.asarray(p, np.float64) / np.sum(p)
    q = np.asarray(q, np.float64) / np.sum(q)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0)


def class_presence(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of masks in which each class appears at all. float64 [C]."""
    masks = _check_masks(masks)
    present = np.zeros((len(masks), num_classes), dtype=bool)
    for c in range(num_classes):
        present[:, c] = (masks == c).reshape(len(masks), -1).any(1)
    return present.mean(0) if len(masks) else np.zeros(num_classes)


# -----------------------------------------------------------------------------------------------
# SWD (Karras et al. 2018): Laplacian pyramid, 7x7 patches, 128 per image per level

_GAUSS = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16


def _blur(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = torch.from_numpy(np.outer(_GAUSS, _GAUSS)).to(x)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)


def laplacian_pyramid(x: torch.Tensor, min_side: int = 16) -> list[torch.Tensor]:
    """[N, C, H, W] float → band-pass levels, finest first; the last is the low-pass residual."""
    levels = []
    while min(x.shape[-2:]) // 2 >= min_side:
        small = _blur(x)[..., ::2, ::2]
        up = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
        levels.append(x - up)
        x = small
    levels.append(x)
    return levels


def _patches(
    level: torch.Tensor, per_image: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    n, c, h, w = level.shape
    if h < size or w < size:
        raise ValueError(f"SWD level {h}x{w} is smaller than a {size}x{size} patch")
    ys = rng.integers(0, h - size + 1, (n, per_image))
    xs = rng.integers(0, w - size + 1, (n, per_image))
    dy, dx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rows = ys[..., None, None] + dy  # [N, P, s, s]
    cols = xs[..., None, None] + dx
    arr = level.numpy()
    idx = np.arange(n)[:, None, None, None]
    patches = arr.transpose(0, 2, 3, 1)[idx, rows, cols]  # [N, P, s, s, C]
    return patches.reshape(n * per_image, size * size * c)


def _normalise(desc: np.ndarray, channels: int) -> np.ndarray:
    # Per channel over all patches and positions, as Karras et al.'s finalize_descriptors.
    d = desc.reshape(len(desc), -1, channels)
    d = (d - d.mean((0, 1))) / (d.std((0, 1)) + 1e-8)
    return d.reshape(len(desc), -1)


def _sliced_distance(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, dirs: int) -> float:
    n = min(len(a), len(b))
    total = 0.0
    for _ in range(4):  # 4 repeats of `dirs` random directions
        proj = rng.standard_normal((a.shape[1], dirs)).astype(np.float32)
        proj /= np.linalg.norm(proj, axis=0, keepdims=True)
        pa = np.sort(a[:n] @ proj, axis=0)
        pb = np.sort(b[:n] @ proj, axis=0)
        total += float(np.abs(pa - pb).mean())
    return total / 4


def sliced_wasserstein(
    images_a: np.ndarray,
    images_b: np.ndarray,
    seed: int = 0,
    per_image: int = 128,
    patch: int = 7,
    dirs: int = 128,
) -> tuple[float, list[float]]:
    """SWD x 1e3 between two uint8 image sets [N, H, W, 3]: (mean over levels, per level).

    Each set's descriptors are normalised by their own per-channel mean and std, as in Karras
    et al. 2018, so SWD compares local structure, not global brightness.
    """
    rng = np.random.default_rng(seed)
    pyr = [laplacian_pyramid(_to_float(x)) for x in (images_a, images_b)]
    per_level = []
    for la, lb in zip(*pyr, strict=True):
        da = _normalise(_patches(la, per_image, patch, rng), la.shape[1])
        db = _normalise(_patches(lb, per_image, patch, rng), lb.shape[1])
        per_level.append(_sliced_distance(da, db, rng, dirs) * 1e3)
    return float(np.mean(per_level)), per_level


def _to_float(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()  # [N, 3, H, W]


# -----------------------------------------------------------------------------------------------
# MS-SSIM (Wang et al. 2003)

_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ssim_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Gaussian window 11 / sigma 1.5, shrunk with the image as in the ACGAN/PGGAN MS-SSIM code.
    size = min(11, *x.shape[-2:])
    sigma = 1.5 * size / 11
    g = torch.exp(-((torch.arange(size, dtype=x.dtype) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" borders
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return (lum * cs).mean((1, 2, 3)), cs.mean((1, 2, 3))


def ms_ssim(images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of uint8 images [N, H, W, 3] → float64 [N] in [0, 1].

    Uses as many of the 5 scales as the size allows (the coarsest at least 4 pixels a side);
    the weights of the used scales are renormalised.
    """
    x, y = _to_float(images_a), _to_float(images_b)
    scales = 1
    while scales < 5 and min(x.shape[-2:]) // 2**scales >= 4:
        scales += 1
    w = torch.tensor(_MS_WEIGHTS[:scales])
    w = w / w.sum()
    out = torch.ones(len(x))
    for s in range(scales):
        ssim, cs = _ssim_parts(x, y)
        out = out * (ssim.clamp_min(0) ** w[s] if s == scales - 1 else cs.clamp_min(0) ** w[s])
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out.double().numpy()


def pairwise_ms_ssim(images: np.ndarray, pairs: int = 200, seed: int = 0) -> float:
    """Mean MS-SSIM over random pairs of distinct samples (diversity; lower = more diverse)."""
    n = len(images)
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 samples")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # never i itself
    return float(ms_ssim(images[i], images[j]).mean())


# -----------------------------------------------------------------------------------------------
# everything at once


def mask_quality(
    fake: np.ndarray,
    real: np.ndarray,
    table: ClassTable,
    min_size: int,
    distance: np.ndarray | None = None,
    off_palette_threshold: float = 40.0,
    compute_fid: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Flat dict of every mask metric for generated `fake` vs `real` masks (uint8 [N, H, W])."""
    fake, real = _check_masks(fake, "fake"), _check_masks(real, "real")
    c = table.num_classes
    fake_rgb, real_rgb = table.colorize(fake), table.colorize(real)
    swd, levels = sliced_wasserstein(real_rgb, fake_rgb, seed=seed)
    p_fake, p_real = class_presence(fake, c), class_presence(real, c)
    out = {
        "spurious_rate": float(spurious_pixel_rate(fake, min_size).mean()),
        "spurious_rate_real": float(spurious_pixel_rate(real, min_size).mean()),
        "class_js": js_divergence(class_histogram(fake, c), class_histogram(real, c)),
        "presence_error": float(np.abs(p_fake - p_real).mean()),
        "swd": swd,
        **{f"swd_level{i}": v for i, v in enumerate(levels)},
        "ms_ssim": pairwise_ms_ssim(fake_rgb, seed=seed),
        "ms_ssim_real": pairwise_ms_ssim(real_rgb, seed=seed),
    }
    if distance is not None:
        out["off_palette_rate"] = float(off_palette_rate(distance, off_palette_threshold).mean())
    if compute_fid:
        from pipeline.metrics.fid import fid

        out["fid"] = fid(real_rgb, fake_rgb, device=device)
    return out
