"""The class table (`classes.json`): ordered classes with ids, names and RGB colours.

Masks are uint8 arrays of train ids 0..C-1, with `ignore_index` (255 by default) for void.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pipeline.errors import DatasetError
from pipeline.io_utils import atomic_write_bytes, atomic_write_json

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: RGB


@dataclass(frozen=True)
class ClassTable:
    """Ordered classes; ids are 0..C-1 in order. `ignore_color` draws void pixels."""

    classes: tuple[ClassInfo, ...]
    ignore_index: int = 255
    ignore_color: RGB = (0, 0, 0)
    source: str = field(default="", compare=False)  # where it was read from, for messages

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        if not self.classes:
            raise DatasetError(f"class table{where} has no classes; list at least one")
        if len(self.classes) > 255:
            raise DatasetError(f"class table{where} has {len(self.classes)} classes; max 255")
        for i, c in enumerate(self.classes):
            if c.id != i:
                raise DatasetError(
                    f"class table{where}: class {c.name!r} has id {c.id}, expected {i} "
                    "(ids must be 0..C-1 in order)"
                )
            if len(c.color) != 3 or not all(0 <= v <= 255 for v in c.color):
                raise DatasetError(
                    f"class table{where}: class {c.name!r} colour {c.color} is not RGB 0..255"
                )
        if len({c.name for c in self.classes}) != len(self.classes):
            raise DatasetError(f"class table{where}: class names must be unique")
        if len({c.color for c in self.classes}) != len(self.classes):
            raise DatasetError(
                f"class table{where}: class colours must be unique (decoding needs it)"
            )
        if not len(self.classes) <= self.ignore_index <= 255:
            raise DatasetError(
                f"class table{where}: ignore_index {self.ignore_index} must be in [C, 255]"
            )

    # ---- basic views -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """uint8 [C, 3]."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    def lut(self) -> np.ndarray:
        """uint8 [256, 3]: colour of every possible mask value (unknown values draw ignore_color)."""
        lut = np.tile(np.array(self.ignore_color, dtype=np.uint8), (256, 1))
        lut[: self.num_classes] = self.colors
        return lut

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes],
            "ignore_index": self.ignore_index,
            "ignore_color": list(self.ignore_color),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> ClassTable:
        where = f" in {source}" if source else ""
        if not isinstance(d, dict) or "classes" not in d:
            raise DatasetError(f"class table{where} must be a mapping with a 'classes' list")
        allowed = {"classes", "ignore_index", "ignore_color", "void_values"}
        unknown = set(d) - allowed
        if unknown:
            raise DatasetError(
                f"class table{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        classes = []
        for i, c in enumerate(d["classes"]):
            try:
                classes.append(
                    ClassInfo(
                        int(c.get("id", i)), str(c["name"]), tuple(int(v) for v in c["color"])
                    )
                )
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DatasetError(
                    f"class table{where}: entry {i} ({c!r}) needs 'name' and 'color' [r, g, b]: {e}"
                ) from None
        return cls(
            classes=tuple(classes),
            ignore_index=int(d.get("ignore_index", 255)),
            ignore_color=tuple(int(v) for v in d.get("ignore_color", (0, 0, 0))),
            source=source,
        )

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """Read a class table from JSON or YAML (`classes.json`, or a user's own table)."""
        return load_class_table_file(path)[0]

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    # ---- colour coding -----------------------------------------------------------------
    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """uint8 [..., H, W] ids → uint8 [..., H, W, 3] RGB."""
        return self.lut()[np.asarray(mask, dtype=np.uint8)]

    def decolorize(self, rgb: np.ndarray, source: str = "") -> np.ndarray:
        """Exact RGB colour-coded map → ids. Colours not in the table are an error."""
        rgb = np.asarray(rgb, dtype=np.uint8)
        code = _pack(rgb)
        table = {int(_pack(np.array(c.color, np.uint8))): c.id for c in self.classes}
        table.setdefault(int(_pack(np.array(self.ignore_color, np.uint8))), self.ignore_index)
        keys = np.array(sorted(table), dtype=np.int64)
        vals = np.array([table[k] for k in keys], dtype=np.uint8)
        pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
        ok = keys[pos] == code
        if not ok.all():
            bad = np.unique(rgb[~ok].reshape(-1, 3), axis=0)[:5].tolist()
            raise DatasetError(
                f"{source or 'colour-coded label'}: {int((~ok).sum())} pixels have colours not in the "
                f"class table (e.g. {bad}); add them to the table or fix the label image"
            )
        return vals[pos]

    def quantize(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float or uint8 RGB [..., 3] in 0..255 → (nearest class ids, distance to that colour)."""
        x = np.asarray(rgb, dtype=np.float32)[..., None, :]
        d = np.sqrt(((x - self.colors.astype(np.float32)) ** 2).sum(-1))  # [..., C]
        ids = d.argmin(-1)
        return ids.astype(np.uint8), np.take_along_axis(d, ids[..., None], -1)[..., 0]


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def load_class_table_file(path: str | Path) -> tuple[ClassTable, tuple[int, ...]]:
    """Read a JSON/YAML class table; also return its optional `void_values`.

    `void_values` lists raw label values of a source dataset that mean "unlabelled" (CamVid's
    11); readers map them to `ignore_index`. Prepared datasets never carry it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"class table file {path} does not exist; pass a JSON or YAML class table"
        )
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise DatasetError(f"class table file {path} cannot be parsed: {e}") from None
    table = ClassTable.from_dict(d, source=str(path))
    void = tuple(int(v) for v in (d.get("void_values") or ()))
    return table, void


# ---- palette PNGs ------------------------------------------------------------------------
def mask_to_png_bytes(
    mask: np.ndarray, table: ClassTable | None = None, compress_level: int = 1
) -> bytes:
    """Encode a uint8 id mask as a PNG; with a table, as a palette PNG that views in colour."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    img = Image.fromarray(mask)  # mode L: the stored bytes are the ids
    if table is not None:
        img = img.convert("P")  # same indices, now with a palette for viewers
        img.putpalette(table.lut().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_mask_png(path: str | Path, mask: np.ndarray, table: ClassTable | None = None) -> None:
    atomic_write_bytes(path, mask_to_png_bytes(mask, table))


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read an id mask PNG (mode L or P: the stored indices are the ids)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise DatasetError(f"{path}: mask PNG has mode {img.mode}; expected L or P (ids)")
        return np.array(img, dtype=np.uint8)
