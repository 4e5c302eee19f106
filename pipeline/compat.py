"""Shims so cityscapesscripts keeps working across numpy and Pillow versions.

cityscapesscripts (2.2) calls `np.in1d`, deprecated in numpy 2.0 and removed in 2.4, and its own
tools save 32-bit mode-I PNGs, which Pillow 13 refuses (Pillow < 13 silently clipped them to 16
bits). We never write mode-I PNGs: 16-bit label images are written from uint16 arrays (mode
"I;16", the same bytes in every Pillow version) and read back as plain integer arrays whatever
mode Pillow opens them in. The evaluator is driven through `evaluate_cityscapes`, which installs
`np.in1d` only for the duration of the call and can swap in a project's own label table.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import DatasetError, SemsynthError


# ---- 16-bit PNGs (instanceIds) ----------------------------------------------------------------
def png16_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint16-range [H, W] ints → 16-bit greyscale PNG bytes (never a mode-I image)."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"expected a [H, W] array, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError("16-bit PNG values must be in 0..65535")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint16)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def read_png_ints(path: str | Path) -> np.ndarray:
    """Read a label PNG (L, P, I;16 or I: whatever this Pillow opens it as) as an int32 array."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DatasetError(f"{path}: PNG mode {img.mode} is not a label image")
        return np.array(img).astype(np.int32)


# ---- np.in1d ---------------------------------------------------------------------------------
def _in1d(ar1: Any, ar2: Any, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
    """numpy's old `in1d`: `isin` on the flattened input (what cityscapesscripts expects)."""
    return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert)


@contextlib.contextmanager
def numpy_in1d() -> Iterator[None]:
    """Make `np.in1d` exist (and not warn) for the duration of the block, then restore numpy."""
    missing = object()
    old = np.__dict__.get("in1d", missing)
    np.in1d = _in1d  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if old is missing:
            del np.in1d
        else:
            np.in1d = old  # type: ignore[attr-defined]


# ---- the Cityscapes evaluator ----------------------------------------------------------------
def cityscapes_labels(mapping: Sequence[dict[str, Any]]) -> list[Any]:
    """`labels.json` entries (name, id, trainId, color, ignoreInEval) → cityscapesscripts Labels."""
    from cityscapesscripts.helpers.labels import Label

    out = []
    for m in mapping:
        ignore = bool(m.get("ignoreInEval", False))
        out.append(
            Label(
                m["name"],
                int(m["id"]),
                int(m["trainId"]),
                m.get("category", "void" if ignore else "object"),
                int(m.get("categoryId", 0 if ignore else 1)),
                bool(m.get("hasInstances", False)),
                ignore,
                tuple(m["color"]),
            )
        )
    return out


@contextlib.contextmanager
def _labels_installed(module: Any, labels: list[Any] | None) -> Iterator[None]:
    if labels is None:
        yield
        return
    names = ("labels", "id2label", "name2label", "trainId2label", "category2labels")
    saved = {n: getattr(module, n) for n in names}
    cat: dict[str, list[Any]] = {}
    for lab in labels:
        cat.setdefault(lab.category, []).append(lab)
    module.labels = labels
    module.id2label = {lab.id: lab for lab in labels}
    module.name2label = {lab.name: lab for lab in labels}
    module.trainId2label = {lab.trainId: lab for lab in reversed(labels)}
    module.category2labels = cat
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(module, n, v)


def evaluate_cityscapes(
    predictions: Sequence[str | Path],
    ground_truths: Sequence[str | Path],
    labels_json: str | Path | None = None,
) -> dict[str, Any]:
    """Run cityscapesscripts' pixel-level evaluator on pairs of `*_labelIds.png` files.

    `labels_json` is an export's `labels.json` (our own class table as Cityscapes labels); None
    uses Cityscapes' own table. Returns {"miou", "per_class": {name: IoU}, "pixel_accuracy"...}.
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    labels = None
    if labels_json is not None:
        labels = cityscapes_labels(json.loads(Path(labels_json).read_text())["labels"])
    args = ev.CArgs()
    for k, v in vars(ev.args).items():
        setattr(args, k, v)
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, True
    args.evalPixelAccuracy = True  # exercises the in1d path
    args.colorized, args.bold, args.nocol = False, "", ""
    try:
        with numpy_in1d(), _labels_installed(ev, labels), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            result = ev.evaluateImgLists(
                [str(p) for p in predictions], [str(p) for p in ground_truths], args
            )
    except SystemExit:  # cityscapesscripts' printError exits; say which files were at fault
        raise SemsynthError(
            "cityscapesscripts could not evaluate the export (see its message above); "
            "check that every *_labelIds.png has a matching *_instanceIds.png and label table"
        ) from None
    scores = {k: float(v) for k, v in result["classScores"].items() if not math.isnan(v)}
    return {
        "miou": float(result["averageScoreClasses"]),  # the evaluator's own average
        "per_class": scores,
        "pixels": int(np.asarray(result["confMatrix"]).sum()),
    }
