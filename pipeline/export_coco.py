"""COCO exports: COCO-Stuff-style semantic JSON and COCO panoptic.

Semantic (`coco`): `images/{split}/{key}.png` + `annotations/stuff_{split}.json` with one
annotation per image and category present: compressed RLE from pycocotools, `area`, `bbox`,
`iscrowd: 0`. Category id = train id + 1 (COCO keeps 0 for "unlabeled"); void pixels get no
annotation. `pipeline.datasets.coco_stuff` (prepare.dataset=coco_stuff) reads it back.

Panoptic (`coco-panoptic`): semantic-only, so each class present in an image is one stuff
segment whose id is its category id: `panoptic/{split}/{key}.png` holds id = R + 256 G + 256² B
(0 = void) and `annotations/panoptic_{split}.json` the `segments_info`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.errors import DatasetError
from pipeline.export_common import decode_pair, run_shards, shard_paths
from pipeline.io_utils import atomic_output_dir
from pipeline.shards import iter_raw_shard, load_class_table


def segments(mask: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    """One RLE segment per class present in `mask` (uint8 [H, W]); void pixels are skipped."""
    h, w = mask.shape
    present = np.unique(mask)
    present = present[present < num_classes]
    if not len(present):
        return []
    # [H, W, K] binary masks, Fortran order as pycocotools wants; encoded in one call
    stack = np.asfortranarray((mask[:, :, None] == present[None, None, :]).astype(np.uint8))
    rles = mask_utils.encode(stack)
    areas, boxes = mask_utils.area(rles), mask_utils.toBbox(rles)
    return [
        {
            "category_id": int(c) + 1,
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "area": int(a),
            "bbox": [float(v) for v in b],
        }
        for c, rle, a, b in zip(present, rles, areas, boxes, strict=True)
    ]


def panoptic_png(mask: np.ndarray, num_classes: int) -> bytes:
    """uint8 [H, W] ids → RGB PNG of segment ids (class id + 1; void → 0)."""
    ids = np.where(mask < num_classes, mask.astype(np.uint32) + 1, 0)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _convert_shard(task: tuple[Path, Path, Path | None, int]) -> list[dict[str, Any]]:
    """Worker: copy images (and write panoptic PNGs) of one shard; return its records."""
    path, img_dir, pan_dir, num_classes = task
    records = []
    for key, files in iter_raw_shard(path):
        image_png, mask = decode_pair(path, key, files)
        (img_dir / f"{key}.png").write_bytes(image_png)
        if pan_dir is not None:
            (pan_dir / f"{key}.png").write_bytes(panoptic_png(mask, num_classes))
        h, w = mask.shape
        records.append({"key": key, "height": h, "width": w, "segs": segments(mask, num_classes)})
    return records


def export_coco(
    data_dir: Path,
    out_dir: Path,
    split: str = "train",
    panoptic: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> int:
    """Write a COCO-Stuff (or, with `panoptic`, COCO panoptic) export; returns the image count."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = load_class_table(data_dir)
    shards = shard_paths(data_dir, split)
    categories = [
        {"id": c.id + 1, "name": c.name, "supercategory": "stuff", "color": list(c.color)}
        | ({"isthing": 0} if panoptic else {})
        for c in table.classes
    ]
    with atomic_output_dir(out_dir) as tmp:
        img_dir = tmp / "images" / split
        img_dir.mkdir(parents=True)
        pan_dir = tmp / "panoptic" / split if panoptic else None
        if pan_dir is not None:
            pan_dir.mkdir(parents=True)
        tasks = [(p, img_dir, pan_dir, table.num_classes) for p in shards]
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        seen: set[str] = set()
        desc = f"export {'coco-panoptic' if panoptic else 'coco'}"
        for records in run_shards(_convert_shard, tasks, workers, progress, desc):
            for r in records:
                if r["key"] in seen:
                    raise DatasetError(f"{data_dir}: sample key {r['key']!r} appears twice")
                seen.add(r["key"])
                image_id = len(images) + 1
                name = f"{r['key']}.png"
                images.append(
                    {"id": image_id, "file_name": name, "height": r["height"], "width": r["width"]}
                )
                if panoptic:
                    info = [
                        {"id": s["category_id"], "category_id": s["category_id"], "area": s["area"]}
                        | {"bbox": s["bbox"], "iscrowd": 0}
                        for s in r["segs"]
                    ]
                    annotations.append(
                        {"image_id": image_id, "file_name": name, "segments_info": info}
                    )
                else:
                    for s in r["segs"]:
                        annotations.append(
                            {"id": len(annotations) + 1, "image_id": image_id, **s, "iscrowd": 0}
                        )
        doc = {
            "info": {"description": f"semsynth export of {data_dir.name}/{split}", "version": "1"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        ann = tmp / "annotations" / f"{'panoptic' if panoptic else 'stuff'}_{split}.json"
        ann.parent.mkdir()
        ann.write_text(json.dumps(doc, separators=(",", ":")))
        table.save(tmp / "classes.json")
    return len(images)
