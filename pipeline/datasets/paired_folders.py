"""`paired_folders`: an image folder and a label folder with matching file names.

CamVid (SegNet layout) is one: `train`/`trainannot`, `val`/`valannot`, `test`/`testannot`.
Without split folders, give `images` and `labels` and the splits are drawn by seed.
Labels are id PNGs or RGB colour-coded PNGs decoded through the class table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classes import load_class_table_file
from pipeline.datasets.imageio import read_image, read_label
from pipeline.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_LAYOUTS = {
    "train": ("train", "trainannot"),
    "val": ("val", "valannot"),
    "test": ("test", "testannot"),
}


@dataclass(frozen=True)
class PairedFoldersOptions:
    root: str = field(metadata={"help": "dataset folder"})
    class_table: str | None = field(
        default=None, metadata={"help": "JSON/YAML class table; default ROOT/classes.{json,yaml}"}
    )
    splits: dict[str, list[str]] | None = field(
        default=None,
        metadata={
            "help": "split -> [image_dir, label_dir] relative to root; default: SegNet layout"
        },
    )
    images: str | None = None  # single image folder (no own splits) ...
    labels: str | None = None  # ... and its label folder
    label_format: str = "auto"  # auto | ids | rgb
    label_suffix: str = ""  # label file stem = image stem + suffix (e.g. "_L" for CamVid originals)


class PairedFoldersSource:
    name = "paired_folders"

    def __init__(self, options: PairedFoldersOptions, size: tuple[int, int]):
        self.options = options
        self.root = Path(options.root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset folder {self.root} does not exist; set prepare.options.root"
            )
        table_path = options.class_table
        if table_path is None:
            found = [self.root / n for n in ("classes.json", "classes.yaml", "classes.yml")]
            found = [p for p in found if p.is_file()]
            if not found:
                raise DatasetError(
                    f"no class table for {self.root}: set prepare.options.class_table to a JSON/YAML "
                    "file with classes [{name, color}] (see datasets/camvid.yaml)"
                )
            table_path = found[0]
        self.table, self.void_values = load_class_table_file(table_path)
        if options.label_format not in ("auto", "ids", "rgb"):
            raise DatasetError(
                f"prepare.options.label_format must be auto, ids or rgb, got {options.label_format!r}"
            )
        self._entries = self._pair_all()

    def _layout(self) -> dict[str | None, tuple[Path, Path]]:
        o = self.options
        if o.splits:
            return {s: (self.root / d[0], self.root / d[1]) for s, d in o.splits.items()}
        if o.images or o.labels:
            if not (o.images and o.labels):
                raise DatasetError("prepare.options: give both images and labels folders")
            return {None: (self.root / o.images, self.root / o.labels)}
        found = {
            s: (self.root / i, self.root / lab)
            for s, (i, lab) in SPLIT_LAYOUTS.items()
            if (self.root / i).is_dir()
        }
        if not found:
            raise DatasetError(
                f"{self.root}: no split folders (train/trainannot, val/valannot, ...) found; set "
                "prepare.options.splits or prepare.options.images + labels"
            )
        return found

    def _pair_all(self) -> dict[str | None, list[tuple[str, Path, Path]]]:
        out = {}
        for split, (img_dir, lab_dir) in self._layout().items():
            for d, what in ((img_dir, "image"), (lab_dir, "label")):
                if not d.is_dir():
                    raise DatasetError(
                        f"{what} folder {d} does not exist (split {split or 'all'}); check the layout"
                    )
            images = {
                p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
            }
            labels = {
                p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
            }
            sfx = self.options.label_suffix
            missing_label = [images[s] for s in images if s + sfx not in labels]
            if missing_label:
                raise DatasetError(
                    f"{missing_label[0]}: image has no label in {lab_dir} ({len(missing_label)} such images); "
                    "add the label or remove the image"
                )
            stems = {s + sfx for s in images}
            missing_image = [p for s, p in labels.items() if s not in stems]
            if missing_image:
                raise DatasetError(
                    f"{missing_image[0]}: label has no image in {img_dir} ({len(missing_image)} such labels); "
                    "add the image or remove the label"
                )
            out[split] = [(s, images[s], labels[s + sfx]) for s in images]
        if not any(out.values()):
            raise DatasetError(f"{self.root}: the dataset is empty (no image/label pairs found)")
        return out

    def entries(self) -> dict[str | None, list[tuple[str, Path, Path]]]:
        return self._entries

    def load(self, entry: tuple[str, Path, Path]) -> tuple[str, np.ndarray, np.ndarray]:
        key, img_path, lab_path = entry
        image = read_image(img_path)
        mask = read_label(lab_path, self.table, self.options.label_format, self.void_values)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{img_path} is {image.shape[1]}x{image.shape[0]} but its label {lab_path} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH); they must be the same size"
            )
        return key, image, mask
