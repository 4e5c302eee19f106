"""`cityscapes`: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` + `gtFine/.../*_gtFine_labelIds.png`.

Label ids map to the 19 train ids through cityscapesscripts' own label table; ids without a
train id become `ignore_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classes import ClassInfo, ClassTable
from pipeline.datasets.imageio import read_image, read_label
from pipeline.errors import DatasetError


@dataclass(frozen=True)
class CityscapesOptions:
    root: str = field(metadata={"help": "folder holding leftImg8bit/ and gtFine/"})
    splits: tuple[str, ...] = ("train", "val")


def cityscapes_table() -> tuple[ClassTable, np.ndarray]:
    """(19-class train-id table, uint8 LUT label id → train id with 255 for ignored)."""
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lab for lab in labels if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
    table = ClassTable(
        tuple(ClassInfo(lab.trainId, lab.name, tuple(lab.color)) for lab in train),
        source="cityscapes",
    )
    lut = np.full(256, 255, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    return table, lut


class CityscapesSource:
    name = "cityscapes"

    def __init__(self, options: CityscapesOptions, size: tuple[int, int]):
        self.root = Path(options.root)
        self.table, self.lut = cityscapes_table()
        self._id_table = ClassTable(
            tuple(ClassInfo(i, f"id{i}", (i, i, 255 - i)) for i in range(34)), ignore_index=255
        )  # raw labelIds 0..33 (-1 never appears in PNGs)
        for sub in ("leftImg8bit", "gtFine"):
            if not (self.root / sub).is_dir():
                raise DatasetError(
                    f"{self.root / sub} does not exist; prepare.options.root must hold leftImg8bit/ and gtFine/"
                )
        self._entries = {}
        for split in options.splits:
            img_dir = self.root / "leftImg8bit" / split
            if not img_dir.is_dir():
                raise DatasetError(
                    f"{img_dir} does not exist; remove '{split}' from prepare.options.splits"
                )
            items = []
            for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
                stem = img.name[: -len("_leftImg8bit.png")]
                lab = self.root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
                if not lab.is_file():
                    raise DatasetError(
                        f"{img}: image has no label {lab}; add it or remove the image"
                    )
                items.append((stem, img, lab))
            self._entries[split] = items
        if not any(self._entries.values()):
            raise DatasetError(f"{self.root}: the dataset is empty (no *_leftImg8bit.png found)")

    def entries(self) -> dict[str | None, list]:
        return self._entries

    def load(self, entry) -> tuple[str, np.ndarray, np.ndarray]:
        key, img_path, lab_path = entry
        image = read_image(img_path)
        raw = read_label(lab_path, self._id_table, "ids")
        mask = self.lut[raw]
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{img_path} and its label {lab_path} differ in size; they must match"
            )
        return key, image, mask
