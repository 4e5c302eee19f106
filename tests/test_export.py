"""Export round trips: COCO via pycocotools, Cityscapes via cityscapesscripts, both vs the shards."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.compat import evaluate_cityscapes, read_png_ints
from pipeline.errors import ConfigError, DatasetError
from pipeline.export import FORMATS, ExportConfig, ExportFormat, export, get_format
from pipeline.shards import Sample, ShardWriter, iter_split, load_class_table, shard_name

REPO = Path(__file__).resolve().parents[1]

# pycocotools' decode trips numpy 2's __array__ copy deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _cfg(tmp: Path, **kw) -> ExportConfig:
    return ExportConfig(metrics=str(tmp / "export.json"), **kw)


@pytest.fixture(scope="module")
def exported(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    cfg = _cfg(out, formats=("coco", "coco-panoptic", "cityscapes"), workers=2)
    metrics = export(cfg, tiny_shapes, out, progress=False)
    assert metrics["coco_samples"] == metrics["cityscapes_samples"] == 48
    return out


@pytest.fixture(scope="module")
def shard_samples(tiny_shapes: Path) -> dict[str, Sample]:
    return {s.key: s for s in iter_split(tiny_shapes, "train")}


def _coco(path: Path):
    from pycocotools.coco import COCO

    return COCO(str(path))


def test_coco_annToMask_rebuilds_every_mask(exported, shard_samples, tiny_shapes):
    coco = _coco(exported / "coco/annotations/stuff_train.json")
    table = load_class_table(tiny_shapes)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == table.names
    imgs = coco.loadImgs(coco.getImgIds())
    assert sorted(Path(i["file_name"]).stem for i in imgs) == sorted(shard_samples)
    for img in imgs:
        sample = shard_samples[Path(img["file_name"]).stem]
        rebuilt = np.full((img["height"], img["width"]), table.ignore_index, np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        cats = [a["category_id"] for a in anns]
        assert len(cats) == len(set(cats)), "one annotation per image and category"
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            assert not (rebuilt[m] != table.ignore_index).any(), "segments must not overlap"
            rebuilt[m] = a["category_id"] - 1
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        np.testing.assert_array_equal(rebuilt, sample.mask)
        # the image is the shard's image, unchanged
        got = np.asarray(Image.open(exported / "coco/images/train" / img["file_name"]))
        np.testing.assert_array_equal(got, sample.image)


def test_coco_export_reads_back_through_prepare(exported, shard_samples, tmp_path):
    from pipeline.prepare import PrepareConfig, prepare

    opts = {
        "root": str(exported / "coco"),
        "splits": {"train": ["images/train", "annotations/stuff_train.json"]},
    }
    cfg = PrepareConfig(
        dataset="coco_stuff", options=opts, size=(32, 32), workers=0,
        out=str(tmp_path / "p"), metrics=str(tmp_path / "m.json"),
    )  # fmt: skip
    prepare(cfg, progress=False)
    # prepare draws a val split from a train-only dataset: read both back
    back = {s.key: s.mask for split in ("train", "val") for s in iter_split(tmp_path / "p", split)}
    assert back.keys() == shard_samples.keys()
    for k, s in shard_samples.items():
        np.testing.assert_array_equal(back[k], s.mask)


def test_coco_panoptic_pngs_and_segments(exported, shard_samples):
    doc = json.loads((exported / "coco_panoptic/annotations/panoptic_train.json").read_text())
    assert all(c["isthing"] == 0 for c in doc["categories"])
    for ann in doc["annotations"]:
        key = Path(ann["file_name"]).stem
        rgb = np.asarray(Image.open(exported / "coco_panoptic/panoptic/train" / ann["file_name"]))
        rgb = rgb.astype(np.int64)
        seg = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        mask = shard_samples[key].mask
        np.testing.assert_array_equal(seg, np.where(mask < 255, mask.astype(np.int64) + 1, 0))
        for s in ann["segments_info"]:
            assert s["area"] == int((seg == s["id"]).sum())
        assert sorted(s["id"] for s in ann["segments_info"]) == sorted(set(np.unique(seg)) - {0})


def test_cityscapes_files_equal_shards(exported, shard_samples, tiny_shapes):
    root = exported / "cityscapes"
    table = load_class_table(tiny_shapes)
    index = json.loads((root / "samples.json").read_text())["samples"]
    assert sorted(k for _, k in index) == sorted(shard_samples)
    for stem, key in index:
        gt = root / "gtFine/train/synth" / stem
        ids = read_png_ints(f"{gt}_gtFine_labelIds.png")
        np.testing.assert_array_equal(ids, shard_samples[key].mask)  # own table: id = train id
        np.testing.assert_array_equal(read_png_ints(f"{gt}_gtFine_instanceIds.png"), ids)
        color = np.asarray(Image.open(f"{gt}_gtFine_color.png"))
        np.testing.assert_array_equal(color, table.colorize(shard_samples[key].mask))
        img = np.asarray(Image.open(root / "leftImg8bit/train/synth" / f"{stem}_leftImg8bit.png"))
        np.testing.assert_array_equal(img, shard_samples[key].image)


def test_cityscapes_evaluates_itself_to_miou_1(exported):
    root = exported / "cityscapes"
    gts = sorted((root / "gtFine/train/synth").glob("*_gtFine_labelIds.png"))
    r = evaluate_cityscapes(gts, gts, root / "labels.json")
    assert r["miou"] == 1.0 and len(r["per_class"]) == 7
    assert r["pixels"] == 48 * 32 * 32
    # a wrong prediction must lower it (the evaluation can fail)
    bad = exported / "bad"
    bad.mkdir(exist_ok=True)
    preds = []
    for p in gts:
        ids = read_png_ints(p).astype(np.uint8)
        ids[:, :8] = np.where(ids[:, :8] == 0, 1, 0)
        Image.fromarray(ids).save(bad / p.name)
        preds.append(bad / p.name)
    assert evaluate_cityscapes(preds, gts, root / "labels.json")["miou"] < 0.95


def test_coco_and_cityscapes_agree(exported):
    coco = _coco(exported / "coco/annotations/stuff_train.json")
    by_key = {Path(i["file_name"]).stem: i for i in coco.loadImgs(coco.getImgIds())}
    index = json.loads((exported / "cityscapes/samples.json").read_text())["samples"]
    for stem, key in index:
        img = by_key[key]
        rebuilt = np.full((img["height"], img["width"]), 255, np.int32)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            rebuilt[coco.annToMask(a).astype(bool)] = a["category_id"] - 1
        lab = read_png_ints(
            exported / "cityscapes/gtFine/train/synth" / f"{stem}_gtFine_labelIds.png"
        )
        np.testing.assert_array_equal(rebuilt, lab)


def test_output_does_not_depend_on_worker_count(exported, tiny_shapes, tmp_path):
    export(_cfg(tmp_path, workers=0), tiny_shapes, tmp_path, progress=False)
    for rel in ("coco/annotations/stuff_train.json", "cityscapes/samples.json"):
        assert (tmp_path / rel).read_bytes() == (exported / rel).read_bytes()
    a = sorted((exported / "cityscapes").rglob("*.png"))
    b = sorted((tmp_path / "cityscapes").rglob("*.png"))
    assert [p.relative_to(exported) for p in a] == [p.relative_to(tmp_path) for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


def _cityscapes_shards(root: Path, n: int = 6) -> tuple[Path, list[np.ndarray]]:
    from pipeline.datasets.cityscapes import cityscapes_table

    table, _ = cityscapes_table()
    root.mkdir(parents=True)
    table.save(root / "classes.json")
    rng = np.random.default_rng(1)
    masks = []
    with ShardWriter(root / shard_name("train", 0), table) as w:
        for i in range(n):
            mask = rng.integers(0, 19, (16, 24), dtype=np.uint8)
            mask[:2] = 255  # void
            masks.append(mask)
            w.write(Sample(f"s{i}", mask, rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)))
    return root, masks


def test_cityscapes_table_uses_cityscapes_label_ids(tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    data, masks = _cityscapes_shards(tmp_path / "cs")
    export(_cfg(tmp_path, formats=("cityscapes",)), data, tmp_path / "out", progress=False)
    root = tmp_path / "out/cityscapes"
    assert json.loads((root / "labels.json").read_text())["table"] == "cityscapes"
    gts = sorted((root / "gtFine/train/synth").glob("*_labelIds.png"))
    for p, mask in zip(gts, masks, strict=True):
        ids = read_png_ints(p)
        assert ids[0, 0] == 0  # void → "unlabeled"
        expect = np.vectorize(lambda t: trainId2label[t].id if t < 19 else 0)(mask)
        np.testing.assert_array_equal(ids, expect)
    # Cityscapes' own label table (no labels.json): its instance/category path calls np.in1d
    assert evaluate_cityscapes(gts, gts)["miou"] == 1.0

    # and the project's Cityscapes reader reads the export back to the same train ids
    from pipeline.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        dataset="cityscapes", options={"root": str(root), "splits": ["train"]}, size=(16, 24),
        workers=0, out=str(tmp_path / "p"), metrics=str(tmp_path / "m.json"),
    )  # fmt: skip
    prepare(cfg, progress=False)
    back = [s.mask for s in iter_split(tmp_path / "p", "train")]
    # prepare draws a val split from a train-only dataset: compare the union by content
    back += [s.mask for s in iter_split(tmp_path / "p", "val")]
    assert sorted(m.tobytes() for m in back) == sorted(m.tobytes() for m in masks)


def test_failed_export_keeps_previous_output(exported, tiny_shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_shapes, data)
    out = tmp_path / "out"
    export(_cfg(tmp_path, formats=("coco",)), data, out, progress=False)
    before = (out / "coco/annotations/stuff_train.json").read_bytes()
    # a mask-only sample in the last shard: the export must fail and name the fix
    table = load_class_table(data)
    last = sorted(data.glob("train-*.tar"))[-1]
    with ShardWriter(last, table) as w:
        w.write(Sample("maskonly", np.zeros((32, 32), np.uint8)))
    with pytest.raises(DatasetError, match="images_per_mask"):
        export(_cfg(tmp_path, formats=("coco",), workers=2), data, out, progress=False)
    assert (out / "coco/annotations/stuff_train.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["coco"], "no temporary folder left"


def test_errors_name_the_fix(tiny_shapes, tmp_path):
    with pytest.raises(DatasetError, match="available splits: \\['train', 'val'\\]"):
        export(_cfg(tmp_path, split="test"), tiny_shapes, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="export.formats"):
        ExportConfig(formats=("yolo",))
    with pytest.raises(ConfigError, match="export.city"):
        ExportConfig(city="my_city")


def test_cli_exports_one_format(tiny_shapes, tmp_path, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(f"export:\n  data: {tiny_shapes}\n  out: ex\n  workers: 0\n")
    assert main(["export", "--format", "coco-panoptic", "--quiet"]) == 0
    assert sorted(p.name for p in Path("ex").iterdir()) == ["coco_panoptic"]
    metrics = json.loads(Path("metrics/export.json").read_text())
    assert metrics["coco_panoptic_samples"] == 48.0
    assert main(["export", "--set", "export.formats=[png]"]) == 2


def test_png_bytes_are_copied_not_reencoded(exported, tiny_shapes):
    import tarfile

    with tarfile.open(sorted(tiny_shapes.glob("train-*.tar"))[0]) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".image.png"))
        raw = tar.extractfile(m).read()
    key = m.name.split(".")[0]
    assert (exported / "coco/images/train" / f"{key}.png").read_bytes() == raw
    assert Image.open(io.BytesIO(raw)).mode == "RGB"


def test_unknown_format_lists_the_valid_names(tiny_shapes, tmp_path):
    with pytest.raises(ConfigError) as err:
        get_format("yolo")
    assert all(repr(name) in str(err.value) for name in ("coco", "coco-panoptic", "cityscapes"))
    # export() looks every name up before writing: nothing is half done
    with pytest.raises(ConfigError, match="'coco-panoptic'"):
        export(_cfg(tmp_path), tiny_shapes, tmp_path / "out", ["coco", "yolo"], progress=False)
    assert not (tmp_path / "out").exists()


def test_a_format_is_one_registry_entry(tiny_shapes, tmp_path, monkeypatch):
    calls = []

    def write(data_dir: Path, out_dir: Path, *, split, workers, progress, city) -> int:
        calls.append((data_dir, out_dir, split, workers, city))
        return 5

    monkeypatch.setitem(FORMATS, "toy", ExportFormat(write, "toy_out", options=("city",)))
    metrics = export(_cfg(tmp_path, formats=("toy",), workers=0), tiny_shapes, tmp_path)
    assert calls == [(tiny_shapes, tmp_path / "toy_out", "train", 0, "synth")]
    assert metrics["toy_out_samples"] == 5.0


@pytest.mark.parametrize(
    "module", ["pipeline.export_coco", "pipeline.export_cityscapes", "pipeline.export_common"]
)
def test_format_writers_do_not_import_the_stage(module):
    # a fresh interpreter: this process has pipeline.export loaded already
    code = f"import sys, {module}; assert 'pipeline.export' not in sys.modules, 'import cycle'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
