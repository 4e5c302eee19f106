import io

import numpy as np
import pytest
from PIL import Image

from pipeline.classes import (
    ClassInfo,
    ClassTable,
    load_class_table_file,
    mask_to_png_bytes,
    read_mask_png,
)
from pipeline.errors import DatasetError


@pytest.fixture
def table() -> ClassTable:
    return ClassTable.from_dict(
        {
            "classes": [
                {"name": "bg", "color": [0, 0, 10]},
                {"name": "a", "color": [200, 0, 0]},
                {"name": "b", "color": [0, 200, 0]},
            ]
        }
    )


def test_colorize_decolorize_round_trip_keeps_ignore(table):
    mask = np.array([[0, 1, 2], [255, 2, 1]], dtype=np.uint8)
    rgb = table.colorize(mask)
    assert rgb.shape == (2, 3, 3)
    assert rgb[0, 1].tolist() == [200, 0, 0] and rgb[1, 0].tolist() == [0, 0, 0]
    assert (table.decolorize(rgb) == mask).all()


def test_decolorize_rejects_off_table_colours_and_names_them(table):
    rgb = table.colorize(np.zeros((4, 4), np.uint8))
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(
        DatasetError, match=r"1 pixels have colours not in the class table.*\[1, 2, 3\]"
    ):
        table.decolorize(rgb, source="x.png")


def test_quantize_picks_nearest_colour_and_reports_distance(table):
    ids, dist = table.quantize(np.array([[190.0, 10.0, 0.0], [0.0, 0.0, 0.0]]))
    assert ids.tolist() == [1, 0]
    assert dist[0] == pytest.approx(np.sqrt(10**2 + 10**2))


def test_palette_png_stores_ids_and_shows_colours(table, tmp_path):
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    data = mask_to_png_bytes(mask, table)
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P"
    assert np.array(img).tolist() == mask.tolist()
    assert np.array(img.convert("RGB"))[0, 1].tolist() == [200, 0, 0]
    (tmp_path / "m.png").write_bytes(data)
    assert (read_mask_png(tmp_path / "m.png") == mask).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"classes": []}, "no classes"),
        (
            {"classes": [{"name": "a", "color": [1, 1, 1]}, {"name": "b", "color": [1, 1, 1]}]},
            "colours must be unique",
        ),
        (
            {"classes": [{"name": "a", "color": [1, 1, 1]}, {"name": "a", "color": [2, 1, 1]}]},
            "names must be unique",
        ),
        ({"classes": [{"name": "a", "color": [1, 1, 300]}]}, "not RGB"),
        ({"classes": [{"name": "a"}]}, "needs 'name' and 'color'"),
        ({"classes": [{"name": "a", "color": [1, 1, 1]}], "colours": 1}, "unknown key"),
        ({"classes": [{"name": "a", "color": [1, 1, 1]}], "ignore_index": 0}, "ignore_index"),
    ],
)
def test_bad_class_tables_are_refused(bad, match):
    with pytest.raises(DatasetError, match=match):
        ClassTable.from_dict(bad, source="t.json")


def test_yaml_table_with_void_values(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("classes:\n  - {name: sky, color: [1, 2, 3]}\nvoid_values: [11]\n")
    table, void = load_class_table_file(p)
    assert table.names == ["sky"] and void == (11,)
    table.save(tmp_path / "c.json")
    assert ClassTable.load(tmp_path / "c.json") == table


def test_ids_must_be_in_order():
    with pytest.raises(DatasetError, match="expected 0"):
        ClassTable((ClassInfo(1, "a", (1, 1, 1)),))
