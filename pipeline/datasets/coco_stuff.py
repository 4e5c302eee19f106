"""`coco_stuff`: COCO JSON with per-category segmentations (RLE or polygons) → id masks.

Categories, in id order, become train ids 0..C-1; pixels no annotation covers are void.
Annotations are painted in file order, so a later one wins where two overlap.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classes import ClassInfo, ClassTable
from pipeline.datasets.imageio import read_image
from pipeline.errors import DatasetError


@dataclass(frozen=True)
class CocoStuffOptions:
    root: str = field(metadata={"help": "dataset folder"})
    splits: dict[str, list[str]] = field(
        default_factory=lambda: {
            "train": ["images/train2017", "annotations/stuff_train2017.json"],
            "val": ["images/val2017", "annotations/stuff_val2017.json"],
        },
        metadata={"help": "split -> [image_dir, annotation_json] relative to root"},
    )
    void_category_ids: tuple[int, ...] = ()  # e.g. [183] for COCO-Stuff's "other"


def _palette(n: int) -> list[tuple[int, int, int]]:
    # evenly spread hues at two brightness levels: distinct colours for up to ~255 classes
    return [
        tuple(
            int(255 * c)
            for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.65, 0.95 if i % 2 else 0.7)
        )
        for i in range(n)
    ]


class CocoStuffSource:
    name = "coco_stuff"

    def __init__(self, options: CocoStuffOptions, size: tuple[int, int]):
        from pycocotools.coco import COCO

        self.root = Path(options.root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset folder {self.root} does not exist; set prepare.options.root"
            )
        self.cocos, self._entries, cats = {}, {}, {}
        for split, (img_dir, ann) in options.splits.items():
            ann_path = self.root / ann
            if not ann_path.is_file():
                raise DatasetError(
                    f"annotation file {ann_path} (split {split}) does not exist; fix prepare.options.splits"
                )
            try:
                import contextlib
                import io

                with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                    coco = COCO(str(ann_path))
            except Exception as e:
                raise DatasetError(f"{ann_path}: not a valid COCO annotation file ({e})") from None
            self.cocos[split] = coco
            for c in coco.loadCats(coco.getCatIds()):
                if c["id"] not in options.void_category_ids:
                    cats[c["id"]] = c["name"]
            self._entries[split] = [
                (
                    Path(img["file_name"]).stem,
                    split,
                    img["id"],
                    self.root / img_dir / img["file_name"],
                )
                for img in coco.loadImgs(sorted(coco.getImgIds()))
            ]
        if not cats:
            raise DatasetError(f"{self.root}: the annotation files define no categories")
        ids = sorted(cats)
        colors = _palette(len(ids))
        self.table = ClassTable(
            tuple(ClassInfo(i, cats[c], colors[i]) for i, c in enumerate(ids)), source="coco_stuff"
        )
        self.cat_to_train = {c: i for i, c in enumerate(ids)}
        self.void_ids = set(options.void_category_ids)
        if not any(self._entries.values()):
            raise DatasetError(
                f"{self.root}: the dataset is empty (no images in the annotation files)"
            )

    def entries(self) -> dict[str | None, list]:
        return self._entries

    def load(self, entry) -> tuple[str, np.ndarray, np.ndarray]:
        key, split, img_id, img_path = entry
        if not img_path.is_file():
            raise DatasetError(f"{img_path}: image listed in the annotations does not exist")
        image = read_image(img_path)
        coco = self.cocos[split]
        info = coco.loadImgs([img_id])[0]
        if (info["height"], info["width"]) != image.shape[:2]:
            raise DatasetError(
                f"{img_path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{info['width']}x{info['height']}; they must match"
            )
        mask = np.full(image.shape[:2], self.table.ignore_index, dtype=np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None)):
            cat = ann["category_id"]
            if cat in self.void_ids:
                continue
            if cat not in self.cat_to_train:
                raise DatasetError(f"{img_path}: annotation {ann['id']} has unknown category {cat}")
            mask[coco.annToMask(ann).astype(bool)] = self.cat_to_train[cat]
        return key, image, mask
