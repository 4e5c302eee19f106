"""Cityscapes export: `leftImg8bit/` + `gtFine/` folders the cityscapesscripts tools read.

Per sample, in `{split}/{city}/`: `{city}_{seq}_{frame}_leftImg8bit.png` (the image, copied),
`..._gtFine_labelIds.png`, `..._gtFine_color.png` and `..._gtFine_instanceIds.png` (16-bit;
semantic only, so instance ids = label ids). seq = shard index and frame = position in the
shard, so any worker names its files alone. `samples.json` maps file stems to sample keys.

Label ids: when the class table is Cityscapes' 19 train classes (prepared with
`prepare.dataset=cityscapes`), train ids map back to Cityscapes label ids (void → 0,
"unlabeled"). Otherwise the label id is the train id itself and void stays `ignore_index`;
`labels.json` writes that table in Cityscapes' Label fields, which `pipeline.compat` hands to the
cityscapesscripts evaluator.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.classes import ClassTable
from pipeline.compat import png16_bytes
from pipeline.errors import DatasetError
from pipeline.export_common import decode_pair, run_shards, shard_paths
from pipeline.io_utils import atomic_output_dir
from pipeline.shards import iter_raw_shard, load_class_table


def is_cityscapes_table(table: ClassTable) -> bool:
    from pipeline.datasets.cityscapes import cityscapes_table

    cs, _ = cityscapes_table()
    return table.names == cs.names and np.array_equal(table.colors, cs.colors)


def label_mapping(table: ClassTable) -> dict[str, Any]:
    """`labels.json`: the Cityscapes-style label list and the train id → label id LUT."""
    lut = np.zeros(256, dtype=np.uint8)
    if is_cityscapes_table(table):
        from cityscapesscripts.helpers.labels import labels, trainId2label

        for t in range(table.num_classes):
            lut[t] = trainId2label[t].id
        lut[table.num_classes :] = 0  # void → "unlabeled"
        entries = [
            {
                "name": lab.name,
                "id": lab.id,
                "trainId": lab.trainId,
                "category": lab.category,
                "categoryId": lab.categoryId,
                "hasInstances": lab.hasInstances,
                "ignoreInEval": lab.ignoreInEval,
                "color": list(lab.color),
            }
            for lab in labels
            if lab.id >= 0
        ]
        return {"table": "cityscapes", "labels": entries, "train_id_to_label_id": lut.tolist()}
    lut[:] = table.ignore_index
    lut[: table.num_classes] = np.arange(table.num_classes)
    entries = [
        {"name": c.name, "id": c.id, "trainId": c.id, "ignoreInEval": False, "color": list(c.color)}
        for c in table.classes
    ]
    entries.append(
        {
            "name": "void",
            "id": table.ignore_index,
            "trainId": 255,
            "ignoreInEval": True,
            "color": list(table.ignore_color),
        }
    )
    return {"table": "own", "labels": entries, "train_id_to_label_id": lut.tolist()}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _convert_shard(task: tuple[Path, int, Path, Path, str, np.ndarray, np.ndarray]) -> list:
    """Worker: write the four files of each sample of one shard; return [(stem, key, hist)]."""
    path, seq, img_dir, gt_dir, city, id_lut, color_lut = task
    out = []
    for frame, (key, files) in enumerate(iter_raw_shard(path)):
        image_png, mask = decode_pair(path, key, files)
        stem = f"{city}_{seq:06d}_{frame:06d}"
        ids = id_lut[mask]
        (img_dir / f"{stem}_leftImg8bit.png").write_bytes(image_png)
        (gt_dir / f"{stem}_gtFine_labelIds.png").write_bytes(_png(ids))
        (gt_dir / f"{stem}_gtFine_color.png").write_bytes(_png(color_lut[ids]))
        (gt_dir / f"{stem}_gtFine_instanceIds.png").write_bytes(png16_bytes(ids))
        out.append((stem, key))
    return out


def export_cityscapes(
    data_dir: Path,
    out_dir: Path,
    split: str = "train",
    city: str = "synth",
    workers: int = 2,
    progress: bool = True,
) -> int:
    """Write a Cityscapes-layout export of one split; returns the sample count."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = load_class_table(data_dir)
    shards = shard_paths(data_dir, split)
    mapping = label_mapping(table)
    id_lut = np.array(mapping["train_id_to_label_id"], dtype=np.uint8)
    color_lut = np.zeros((256, 3), dtype=np.uint8)  # label id → colour; unknown ids are black
    for lab in mapping["labels"]:
        color_lut[lab["id"]] = lab["color"]
    with atomic_output_dir(out_dir) as tmp:
        img_dir = tmp / "leftImg8bit" / split / city
        gt_dir = tmp / "gtFine" / split / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        tasks = [(p, i, img_dir, gt_dir, city, id_lut, color_lut) for i, p in enumerate(shards)]
        index: list[list[str]] = []
        seen: set[str] = set()
        for pairs in run_shards(_convert_shard, tasks, workers, progress, "export cityscapes"):
            for stem, key in pairs:
                if key in seen:
                    raise DatasetError(f"{data_dir}: sample key {key!r} appears twice")
                seen.add(key)
                index.append([stem, key])
        (tmp / "labels.json").write_text(json.dumps(mapping, indent=1) + "\n")
        (tmp / "samples.json").write_text(json.dumps({"split": split, "samples": index}) + "\n")
        table.save(tmp / "classes.json")
    return len(index)
