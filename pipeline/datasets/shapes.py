"""`shapes`: the embedded procedural dataset, after SemGAN's coloured-shapes experiment.

Each sample paints 3-8 shapes of 6 classes over a textured background; later shapes occlude
earlier ones. Every region (each instance, and the background) gets a random texture (flat,
stripes, checker, blotches) between a base colour and a random second colour, a shading
gradient, and the whole image gets blur and noise. The base colour of a region is
`(1 - class_colour) * u + class_colour * c`: u uniform per region, c the class's colour in CLASSES.

The default, class_colour 0.8 (what `make demo` uses), is easy demo data: colour is a strong
class cue, but not a label. The base colours of the classes no longer overlap, yet pixel colours
do, through the textures' second colour, shading and noise: a per-pixel colour-only classifier
(a Gaussian per class, fitted on train) scores 58% held-out mIoU, and the demo's segmenter (U-Net,
100 steps x 32 images, about a CPU minute) 64-66%; what is left is shape, edges and occlusion.
class_colour 0 is the original, hard data (byte-identical to before the option existed): colour
independent of the class, so only shape tells it (colour-only 10% mIoU, a segmenter 22% after
240 steps x 32).
Sample i depends only on (seed, i), so any subset can be regenerated independently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.classes import ClassInfo, ClassTable

CLASSES = (
    ("background", (70, 70, 70)),
    ("disc", (230, 25, 75)),
    ("rectangle", (60, 180, 75)),
    ("triangle", (255, 225, 25)),
    ("ring", (0, 130, 200)),
    ("cross", (245, 130, 48)),
    ("ellipse", (145, 30, 180)),
)
TABLE = ClassTable(tuple(ClassInfo(i, n, c) for i, (n, c) in enumerate(CLASSES)), source="shapes")


@dataclass(frozen=True)
class ShapesOptions:
    n_train: int = 400
    n_val: int = 100
    seed: int = 0
    min_shapes: int = 3
    max_shapes: int = 8
    noise: float = 0.06  # std of the per-pixel Gaussian noise, in [0, 1] intensity units
    # Weight of the class's own colour (CLASSES) in each region's random base colour: 0 = colour
    # independent of the class (the original, hard data); 0 < w < 1 = a class-dependent bias.
    class_colour: float = 0.8

    def __post_init__(self) -> None:
        from pipeline.errors import ConfigError

        if self.n_train < 1 or self.n_val < 0:
            raise ConfigError("prepare.options.n_train must be >= 1 and n_val >= 0")
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ConfigError("prepare.options: need 1 <= min_shapes <= max_shapes")
        if not 0.0 <= self.class_colour < 1.0:
            raise ConfigError("prepare.options.class_colour must be in [0, 1)")


def _rotated(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float):
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    return c * dx + s * dy, -s * dx + c * dy


def _region(cls: int, yy, xx, cy, cx, r, theta, rng) -> np.ndarray:
    """Boolean [H, W] region of one shape of class `cls`, centred at (cy, cx) with scale r."""
    u, v = _rotated(yy, xx, cy, cx, theta)
    d2 = u**2 + v**2
    if cls == 1:  # disc
        return d2 < r**2
    if cls == 2:  # rectangle, aspect 1..2
        a = r * rng.uniform(0.8, 1.1)
        return (np.abs(u) < a) & (np.abs(v) < a * rng.uniform(0.5, 1.0))
    if cls == 3:  # equilateral triangle: inside three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= np.cos(a) * u + np.sin(a) * v < r * 0.6
        return inside
    if cls == 4:  # ring
        return (d2 < r**2) & (d2 > (r * rng.uniform(0.45, 0.65)) ** 2)
    if cls == 5:  # cross: two bars
        w = r * rng.uniform(0.25, 0.4)
        return ((np.abs(u) < r) & (np.abs(v) < w)) | ((np.abs(v) < r) & (np.abs(u) < w))
    if cls == 6:  # ellipse, eccentric enough not to be a disc
        b = r * rng.uniform(0.35, 0.55)
        return (u / r) ** 2 + (v / b) ** 2 < 1
    raise ValueError(cls)


def _texture(h: int, w: int, yy, xx, rng, cls: int, bias: float) -> np.ndarray:
    """Float [H, W, 3] in 0..1: a random colour with a random texture and a shading ramp.

    The base colour is uniform, pulled towards class `cls`'s colour by weight `bias`.
    """
    base = rng.uniform(0.1, 0.9, size=3)
    if bias:
        base = (1 - bias) * base + bias * np.asarray(CLASSES[cls][1]) / 255
    alt = np.clip(base + rng.normal(0, 0.25, size=3), 0, 1)
    kind = rng.integers(4)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(3, 10) * max(h, w) / 64
    if kind == 0:  # flat
        t = np.zeros((h, w))
    elif kind == 1:  # stripes
        t = (np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period) > 0).astype(
            float
        )
    elif kind == 2:  # checker
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(float)
    else:  # smooth blotches: a few random cosines
        t = sum(
            np.cos(
                rng.uniform(0.05, 0.3) * (xx * np.cos(a) + yy * np.sin(a)) * 64 / max(h, w)
                + rng.uniform(0, 6)
            )
            for a in rng.uniform(0, np.pi, size=3)
        )
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = base * (1 - t[..., None]) + alt * t[..., None]
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy) / max(h, w)
    shade = 1 + rng.uniform(-0.4, 0.4) * (ramp - ramp.mean())
    return np.clip(img * shade[..., None], 0, 1)


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 binomial blur: soft edges, so boundaries are not one-pixel colour steps."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    k = np.array([1, 2, 1], dtype=np.float64) / 4
    p = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return k[0] * p[:, :-2] + k[1] * p[:, 1:-1] + k[2] * p[:, 2:]


def render(
    index: int, seed: int, size: tuple[int, int], options: ShapesOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index` → (image uint8 [H, W, 3], mask uint8 [H, W])."""
    h, w = size
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    image = _texture(h, w, yy, xx, rng, 0, options.class_colour)
    mask = np.zeros((h, w), dtype=np.uint8)
    scale = min(h, w)
    for _ in range(rng.integers(options.min_shapes, options.max_shapes + 1)):
        cls = int(rng.integers(1, len(CLASSES)))
        r = scale * rng.uniform(0.1, 0.25)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        region = _region(cls, yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi), rng)
        mask[region] = cls
        image[region] = _texture(h, w, yy, xx, rng, cls, options.class_colour)[region]
    image = _blur(image) + rng.normal(0, options.noise, size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


class ShapesSource:
    """Reader for the procedural dataset: rendered directly at the working size."""

    name = "shapes"
    table = TABLE

    def __init__(self, options: ShapesOptions, size: tuple[int, int]):
        self.options = options
        self.size = size

    def entries(self) -> dict[str, list[int]]:
        # val indices follow train's so the two never share a sample
        o = self.options
        return {"train": list(range(o.n_train)), "val": list(range(o.n_train, o.n_train + o.n_val))}

    def load(self, entry: int) -> tuple[str, np.ndarray, np.ndarray]:
        image, mask = render(entry, self.options.seed, self.size, self.options)
        return f"shapes_{entry:07d}", image, mask

    def iter_all(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for split in self.entries().values():
            for e in split:
                yield self.load(e)
