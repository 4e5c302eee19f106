"""Bad input: a clear message naming the file and the problem, exit 2, nothing partial left."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_prepare(tmp_path: Path, root: Path | str, *extra: str, dataset: str = "paired_folders"):
    out = tmp_path / "data" / "prepared"
    args = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "prepare",
        "--quiet",
        "--params",
        str(REPO / "params.yaml"),
        "--set",
        f"prepare.dataset={dataset}",
        "--set",
        f"prepare.options={{root: '{root}'}}",
        "--set",
        f"prepare.out={out}",
        "--set",
        f"prepare.metrics={tmp_path / 'metrics.json'}",
        "--set",
        "prepare.size=[16, 16]",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO), out


def assert_failed_cleanly(r, out: Path, *needles: str):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    data = out.parent
    leftovers = [p.name for p in data.iterdir()] if data.exists() else []
    assert leftovers in ([], ["prepared"]), leftovers  # no temporary folders
    if "prepared" in leftovers:  # a previous good output is kept as it was
        assert (out / "KEEP").read_text() == "previous"


@pytest.fixture
def ds(tmp_path, make_pairs):
    root = make_pairs(tmp_path / "ds")
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "KEEP").write_text("previous")
    return root


def test_good_dataset_replaces_previous_output(tmp_path, ds):
    r, out = run_prepare(tmp_path, ds)
    assert r.returncode == 0, r.stderr
    assert not (out / "KEEP").exists() and (out / "classes.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]


def test_missing_folder(tmp_path):
    r, out = run_prepare(tmp_path, tmp_path / "nope")
    assert_failed_cleanly(r, out, str(tmp_path / "nope"), "does not exist")


def test_image_without_label(tmp_path, ds):
    (ds / "trainannot" / "f1.png").unlink()
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "train/f1.png", "image has no label")


def test_label_without_image(tmp_path, ds):
    (ds / "val" / "f2.png").unlink()
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "valannot/f2.png", "label has no image")


def test_corrupt_png(tmp_path, ds):
    p = ds / "val" / "f3.png"
    p.write_bytes(p.read_bytes()[:60])
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "val/f3.png", "cannot decode image")


def test_label_values_outside_the_table(tmp_path, ds):
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(ds / "valannot" / "f0.png")
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(
        r, out, "valannot/f0.png", "label values [7] are outside the class table", "void_values"
    )


def test_image_and_label_sizes_differ(tmp_path, ds):
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(ds / "trainannot" / "f2.png")
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "train/f2.png", "30x20", "30x21", "same size")


def test_empty_dataset(tmp_path):
    for d in ("train", "trainannot"):
        (tmp_path / "empty" / d).mkdir(parents=True)
    (tmp_path / "empty" / "classes.yaml").write_text("classes:\n  - {name: a, color: [1, 2, 3]}\n")
    r, out = run_prepare(tmp_path, tmp_path / "empty")
    assert_failed_cleanly(r, out, "empty", "the dataset is empty")


def test_missing_class_table(tmp_path, ds):
    (ds / "classes.yaml").unlink()
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "no class table", "prepare.options.class_table")


def test_safe_conversions_are_made(tmp_path, ds):
    """Grayscale, palette and opaque RGBA images; palette and 16-bit labels with small ids."""
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(ds / "train" / "f0.png")  # L
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).convert("P").save(ds / "train" / "f1.png")
    Image.fromarray(np.full((20, 30, 4), 255, np.uint8)).save(
        ds / "train" / "f2.png"
    )  # RGBA opaque
    Image.fromarray(np.full((20, 30), 2, np.uint16)).save(ds / "trainannot" / "f0.png")  # I;16
    Image.fromarray(np.full((20, 30), 1, np.uint8)).convert("P").save(ds / "trainannot" / "f1.png")
    r, out = run_prepare(tmp_path, ds)
    assert r.returncode == 0, r.stderr
    from pipeline.shards import load_split

    images, masks, keys = load_split(out, "train")
    k = {key: i for i, key in enumerate(keys)}
    assert (
        (images[k["f0"]] == 90).all()
        and (masks[k["f0"]] == 2).all()
        and (masks[k["f1"]] == 1).all()
    )


def test_rgb_colour_coded_labels_are_decoded(tmp_path, ds):
    Image.fromarray(np.tile(np.array([[[50, 0, 0]]], np.uint8), (20, 30, 1))).save(
        ds / "trainannot" / "f0.png"
    )
    r, out = run_prepare(tmp_path, ds)
    assert r.returncode == 0, r.stderr
    from pipeline.shards import load_split

    _, masks, keys = load_split(out, "train")
    assert (masks[keys.index("f0")] == 1).all()


@pytest.mark.parametrize(
    "make, needle",
    [
        (
            lambda p: Image.fromarray(np.full((20, 30, 4), 100, np.uint8)).save(p),
            "transparent pixels",
        ),
        (lambda p: Image.fromarray(np.full((20, 30), 3000, np.uint16)).save(p), "16/32-bit"),
    ],
)
def test_unsafe_images_are_refused(tmp_path, ds, make, needle):
    make(ds / "val" / "f1.png")
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "val/f1.png", needle)


def test_16bit_label_with_large_values_is_refused(tmp_path, ds):
    Image.fromarray(np.full((20, 30), 1000, np.uint16)).save(ds / "valannot" / "f1.png")
    r, out = run_prepare(tmp_path, ds)
    assert_failed_cleanly(r, out, "valannot/f1.png", "values up to 1000")


def test_unknown_dataset_name(tmp_path, ds):
    r, out = run_prepare(tmp_path, ds, dataset="imagenet")
    assert_failed_cleanly(r, out, "unknown dataset 'imagenet'", "paired_folders", "shapes")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("prepare.size=64", "prepare.size: expected a list"),
        ("prepare.sise=[1, 2]", "unknown key(s) ['sise']"),
        ("prepare.fit=squash", "prepare.fit: 'squash' is not one of"),
        ("prepare.val_fraction=1.5", "prepare.val_fraction 1.5 must be in (0, 1)"),
        ("prepare.options.colour=1", "prepare.options: unknown key(s) ['colour']"),
    ],
)
def test_bad_params(tmp_path, ds, override, needle):
    r, out = run_prepare(tmp_path, ds, "--set", override)
    assert_failed_cleanly(r, out, needle)
