"""Reading source images and labels with the checks every reader shares.

Conversions are made only where they cannot change meaning (grayscale or palette image → RGB,
RGBA with an opaque alpha → RGB, 16-bit label whose values fit in 8 bits → uint8); anything else
is refused with the file named and the fix spelled out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.classes import ClassTable
from pipeline.errors import DatasetError


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated or corrupt file fails here, not later
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{path}: cannot decode image ({e}); the file is corrupt or not an image"
        ) from None


def read_image(path: Path) -> np.ndarray:
    """→ uint8 RGB [H, W, 3]."""
    img = _open(path)
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "P", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA"):
        return _drop_alpha(img, path)
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DatasetError(
            f"{path}: {mode} (16/32-bit) images are not supported: the scaling to 8 bits is "
            "ambiguous; convert the image to 8-bit RGB first"
        )
    raise DatasetError(f"{path}: unsupported image mode {mode}; convert it to 8-bit RGB")


def _drop_alpha(img: Image.Image, path: Path) -> np.ndarray:
    alpha = np.asarray(img.getchannel("A"))
    if alpha.min() < 255:
        raise DatasetError(
            f"{path}: image has transparent pixels (mode {img.mode}); flatten it onto a background "
            "first, since what lies under transparency is undefined"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_label(
    path: Path,
    table: ClassTable,
    label_format: str = "auto",
    void_values: tuple[int, ...] = (),
) -> np.ndarray:
    """→ uint8 train ids [H, W] with `table.ignore_index` for void.

    `label_format`: "ids" (pixel value = class id), "rgb" (colour-coded through the table) or
    "auto" (L/P/16-bit → ids, RGB → colours). Values outside the table (other than `void_values`
    and `ignore_index`) are an error naming the values.
    """
    img = _open(path)
    mode = img.mode
    if label_format not in ("auto", "ids", "rgb"):
        raise DatasetError(f"label_format must be auto, ids or rgb, got {label_format!r}")
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise DatasetError(f"{path}: label has transparent pixels; labels must be opaque")
        img = img.convert("RGB" if mode == "RGBA" else "L" if mode == "LA" else "P")
        mode = img.mode
    if mode == "RGB":
        rgb = np.asarray(img, dtype=np.uint8)
        if label_format == "ids" or (
            label_format == "auto" and _is_gray(rgb) and not _all_table_colours(rgb, table)
        ):
            if not _is_gray(rgb):
                raise DatasetError(
                    f"{path}: label is a colour image but label_format is 'ids'; set label_format: rgb "
                    "to decode colours through the class table"
                )
            raw = rgb[..., 0].astype(np.int64)
        else:
            return table.decolorize(rgb, source=str(path))
    elif mode in ("L", "P"):
        if label_format == "rgb":
            if mode == "P":
                return table.decolorize(np.asarray(img.convert("RGB")), source=str(path))
            raise DatasetError(
                f"{path}: label is single-channel but label_format is 'rgb'; use ids"
            )
        raw = np.asarray(img, dtype=np.int64)
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        raw = np.asarray(img, dtype=np.int64)
        if raw.max(initial=0) > 255:
            raise DatasetError(
                f"{path}: 16/32-bit label has values up to {raw.max()}, more than 8-bit train ids allow; "
                "remap it to ids 0..C-1"
            )
    else:
        raise DatasetError(
            f"{path}: unsupported label mode {mode}; use an 8-bit id PNG or RGB colours"
        )
    return ids_to_train(raw, table, void_values, path)


def ids_to_train(
    raw: np.ndarray, table: ClassTable, void_values: tuple[int, ...], path: Path | str
) -> np.ndarray:
    valid = np.zeros(256, dtype=bool)
    valid[: table.num_classes] = True
    valid[table.ignore_index] = True
    lut = np.arange(256, dtype=np.uint8)
    for v in void_values:
        if 0 <= v < 256:
            valid[v] = True
            lut[v] = table.ignore_index
    present = np.unique(raw)
    bad = [int(v) for v in present if not (0 <= v < 256 and valid[v])]
    if bad:
        raise DatasetError(
            f"{path}: label values {bad[:10]} are outside the class table ({table.num_classes} classes, "
            f"ids 0..{table.num_classes - 1}, void {list(void_values) or 'none'}); add them to the class "
            "table or list them under void_values"
        )
    return lut[raw.astype(np.uint8)]


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _all_table_colours(rgb: np.ndarray, table: ClassTable) -> bool:
    try:
        table.decolorize(rgb)
        return True
    except DatasetError:
        return False
