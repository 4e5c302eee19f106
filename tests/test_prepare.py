import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.prepare import PrepareConfig, fit_pair, prepare
from pipeline.shards import label_subset, list_shards, load_class_table, load_split

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw):
    base = dict(
        dataset="shapes",
        options={"n_train": 12, "n_val": 4},
        size=(24, 40),
        samples_per_shard=5,
        workers=0,
        out=str(tmp_path / "out"),
        metrics=str(tmp_path / "m.json"),
    )
    base.update(kw)
    return PrepareConfig(**base)


def test_tiny_shapes_fixture_layout(tiny_shapes):
    table = load_class_table(tiny_shapes)
    assert table.num_classes >= 6 and table.names[0] == "background"
    images, masks, _ = load_split(tiny_shapes, "train")
    assert images.shape == (48, 32, 32, 3) and masks.shape == (48, 32, 32)
    assert masks.max() < table.num_classes
    stats = json.loads((tiny_shapes / "stats.json").read_text())
    assert stats["counts"] == {"train": 48, "val": 16}
    assert sum(stats["pixel_counts"]["train"]) == 48 * 32 * 32


def test_shapes_is_deterministic_non_square_and_seeded(tmp_path):
    a = prepare(_cfg(tmp_path / "a"), progress=False)
    prepare(_cfg(tmp_path / "b", workers=2), progress=False)  # worker pool: same bytes
    prepare(_cfg(tmp_path / "c", options={"n_train": 12, "n_val": 4, "seed": 1}), progress=False)
    shards = lambda d: [p.read_bytes() for p in list_shards(tmp_path / d / "out", "train")]  # noqa: E731
    assert shards("a") == shards("b")
    assert shards("a") != shards("c")
    assert len(shards("a")) == 3  # 12 pairs, 5 per shard
    images, masks, _ = load_split(tmp_path / "a" / "out", "val")
    assert images.shape == (4, 24, 40, 3)
    assert (
        a["n_train"] == 12
        and abs(sum(v for k, v in a.items() if k.startswith("train_frac_")) - 1) < 1e-4
    )


def test_train_fraction_keeps_the_segmenters_label_subset_and_the_whole_val(tmp_path):
    prepare(_cfg(tmp_path / "full", split_seed=3), progress=False)
    prepare(_cfg(tmp_path / "quarter", split_seed=3, train_fraction=0.25), progress=False)
    _, _, keys = load_split(tmp_path / "full" / "out", "train")
    _, _, kept = load_split(tmp_path / "quarter" / "out", "train")
    # the pairs a label-scarce run trains every stage on are those train_segmenter's
    # real_fraction 0.25 draws for seed 3 from the full split: the two experiments compare
    assert kept == [keys[i] for i in label_subset(len(keys), 0.25, 3)] and len(kept) == 3
    assert (
        load_split(tmp_path / "quarter" / "out", "val")[2]
        == load_split(tmp_path / "full" / "out", "val")[2]
    )


def test_image_is_not_a_function_of_the_mask(tiny_shapes):
    """Same class, different samples → different colours: a segmenter must learn shape."""
    images, masks, _ = load_split(tiny_shapes, "train")
    means = [
        images[i][masks[i] == 0].mean(0) for i in range(len(masks)) if (masks[i] == 0).sum() > 50
    ]
    assert np.std(np.array(means), axis=0).min() > 20


def test_fit_pair_resize_and_crop():
    image = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[:, 40:] = 3
    image[:, 40:] = 255
    i, m = fit_pair(image, mask, (30, 40), "resize")
    assert i.shape == (30, 40, 3) and set(np.unique(m)) == {0, 3}  # nearest: no blended ids
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[:, ::2] = 255
    small, _ = fit_pair(stripes, np.zeros((8, 8), np.uint8), (4, 4), "resize")
    assert 100 < small.mean() < 155 and small.std() < 30  # antialiased, not nearest-sampled
    i, m = fit_pair(image, mask, (40, 40), "crop")  # 60x80 → 40x53 → centre 40x40
    assert i.shape == (40, 40, 3) and (m[:, :20] == 0).all() and (m[:, -10:] == 3).all()


def test_dataset_without_splits_is_split_by_seed(tmp_path, make_pairs):
    root = make_pairs(tmp_path / "ds", n=10, layout="flat")
    cfg = _cfg(
        tmp_path,
        dataset="paired_folders",
        options={"root": str(root), "images": "img", "labels": "lab"},
        val_fraction=0.3,
        size=(16, 16),
    )
    m = prepare(cfg, progress=False)
    assert (m["n_train"], m["n_val"]) == (7, 3)
    _, _, keys1 = load_split(tmp_path / "out", "val")
    prepare(cfg, progress=False)
    _, _, keys2 = load_split(tmp_path / "out", "val")
    assert keys1 == keys2


def test_cli_prints_what_it_made(tmp_path):
    out = tmp_path / "prep"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "prepare",
            "--params",
            str(REPO / "params.yaml"),
            "--set",
            "prepare.options={n_train: 8, n_val: 2}",
            "--set",
            f"prepare.out={out}",
            "--set",
            f"prepare.metrics={tmp_path / 'm.json'}",
            "--set",
            "prepare.workers=0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    # status on stderr, the metrics JSON alone on stdout (`semsynth prepare | jq` works)
    assert "prepare: prepared shapes at 64x64" in r.stderr and "train 8, val 2 pairs" in r.stderr
    assert json.loads(r.stdout)["n_train"] == 8.0
    assert json.loads((tmp_path / "m.json").read_text())["n_train"] == 8.0


def test_camvid_frequencies_match_its_readme(camvid, tmp_path):
    readme = {
        "road": 31.7,
        "building": 23.3,
        "sky": 16.9,
        "tree": 9.7,
        "car": 5.9,
        "pavement": 4.5,
        "void": 4.0,
        "sign": 1.2,
        "fence": 1.1,
        "pole": 1.0,
        "pedestrian": 0.6,
        "bicyclist": 0.3,
    }
    cfg = _cfg(
        tmp_path,
        dataset="paired_folders",
        options={"root": str(camvid), "class_table": str(REPO / "datasets/camvid.yaml")},
        size=(96, 128),
        samples_per_shard=256,
        workers=2,
    )
    m = prepare(cfg, progress=False)
    assert (m["n_train"], m["n_val"]) == (367, 101)
    for name, pct in readme.items():
        assert abs(100 * m[f"train_frac_{name}"] - pct) < 1.0, name
