"""Cityscapes and COCO-Stuff readers on tiny hand-made datasets in their real layouts."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError
from pipeline.datasets import READERS, open_source
from pipeline.errors import DatasetError


def test_unknown_reader_lists_valid_names():
    with pytest.raises(
        ConfigError,
        match=r"valid names: \['cityscapes', 'coco_stuff', 'paired_folders', 'shapes'\]",
    ):
        open_source("voc", {}, (8, 8))
    assert set(READERS) == {"shapes", "paired_folders", "cityscapes", "coco_stuff"}


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (tmp_path / "gtFine" / split / "aachen").mkdir(parents=True)
        stem = f"aachen_000000_00000{0 if split == 'train' else 1}"
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(
            tmp_path / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png"
        )
        lab = np.zeros((8, 16), np.uint8)
        lab[:, :4] = 7  # road → train id 0
        lab[:, 4:8] = 26  # car → 13
        lab[:, 8:12] = 1  # ego vehicle → ignore
        lab[:, 12:] = 33  # bicycle → 18
        Image.fromarray(lab).save(
            tmp_path / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png"
        )
    src = open_source("cityscapes", {"root": str(tmp_path)}, (8, 16))
    assert (
        src.table.num_classes == 19
        and src.table.names[0] == "road"
        and src.table.names[13] == "car"
    )
    key, image, mask = src.load(src.entries()["train"][0])
    assert key == "aachen_000000_000000"
    assert mask[0].tolist() == [0] * 4 + [13] * 4 + [255] * 4 + [18] * 4


def test_cityscapes_missing_label(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        tmp_path / "leftImg8bit/train/x/x_0_0_leftImg8bit.png"
    )
    with pytest.raises(DatasetError, match="x_0_0_leftImg8bit.png: image has no label"):
        open_source("cityscapes", {"root": str(tmp_path), "splits": ["train"]}, (4, 4))


def test_coco_stuff_rle_and_polygons(tmp_path):
    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    rle_area = np.zeros((10, 12), np.uint8, order="F")
    rle_area[:, :6] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_area))
    rle["counts"] = rle["counts"].decode()
    ann = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12}],
        "categories": [
            {"id": 5, "name": "grass"},
            {"id": 9, "name": "sky"},
            {"id": 183, "name": "other"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 9,
                "segmentation": rle,
                "iscrowd": 0,
                "area": 60,
                "bbox": [0, 0, 6, 10],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 0,
                "area": 20,
                "bbox": [6, 0, 4, 5],
                "segmentation": [[6, 0, 10, 0, 10, 5, 6, 5]],
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    src = open_source(
        "coco_stuff",
        {
            "root": str(tmp_path),
            "splits": {"train": ["images", "ann.json"]},
            "void_category_ids": [183],
        },
        (10, 12),
    )
    assert src.table.names == ["grass", "sky"]
    _, _, mask = src.load(src.entries()["train"][0])
    assert (mask[:, :6] == 1).all()  # sky via RLE
    assert (mask[1:4, 7:9] == 0).all()  # grass via polygon
    assert (mask[8:, 7:] == 255).all()  # unannotated → void


def test_coco_stuff_bad_json(tmp_path):
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(DatasetError, match="ann.json: not a valid COCO annotation file"):
        open_source(
            "coco_stuff",
            {"root": str(tmp_path), "splits": {"train": ["images", "ann.json"]}},
            (4, 4),
        )
